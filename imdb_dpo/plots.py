"""Figures: DPO training curves from the trainer state, and the reward-versus-KL frontier."""

import json

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from .reward import VADER  # noqa: E402

CURVES = [
    ("loss", "DPO loss"),
    ("rewards/margins", "reward margin (chosen - rejected)"),
    ("rewards/accuracies", "preference accuracy"),
    (("logps/chosen", "logps/rejected"), "log-prob of chosen / rejected"),
]


def plot_training_curves(trainer_state_path: str, output_path: str, title: str) -> None:
    with open(trainer_state_path) as f:
        history = [entry for entry in json.load(f)["log_history"] if "loss" in entry]
    fig, axes = plt.subplots(1, len(CURVES), figsize=(4.2 * len(CURVES), 3.4))
    steps = [entry["step"] for entry in history]
    for ax, (keys, label) in zip(axes, CURVES):
        for key in (keys,) if isinstance(keys, str) else keys:
            ax.plot(steps, [entry.get(key, float("nan")) for entry in history], label=key.split("/")[-1])
        ax.set_title(label, fontsize=10)
        ax.set_xlabel("optimizer step")
        ax.grid(alpha=0.3)
        if not isinstance(keys, str):
            ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(output_path, dpi=110)
    plt.close(fig)


def reward_axis_label(reward_model: str) -> str:
    if reward_model == VADER:  # a lexicon score, not a probability
        return "mean reward\nVADER compound score mapped to [0, 1]"
    return f"mean reward\nP(POSITIVE) under {reward_model}"


def plot_frontier(summary: list[dict], output_path: str, title: str = "reward vs KL") -> None:
    """Reward against KL(pi || pi_ref) from the summary rows alone: one line per DPO run through its
    checkpoints (starting at the SFT model, each point labelled with its step), best-of-N on the SFT model
    (labelled N=..., at its analytic KL bound), and the base model if present. A point label that would
    overlap one already drawn is left out, so crowded checkpoints stay readable."""
    fig, ax = plt.subplots(figsize=(7.5, 5))
    by_run: dict[str, list[dict]] = {}
    for row in summary:
        by_run.setdefault(row["run"], []).append(row)
    sft = by_run.get("sft", [])
    labels = []  # (point, text, color, offset): drawn last, as overlaps are only known once the limits are final

    def errorbar(rows, **style):
        rows = sorted(rows, key=lambda r: float(r["step"]))
        x = [float(r["kl_mean"]) for r in rows]
        y = [float(r["reward_mean"]) for r in rows]
        xerr = [[xi - float(r["kl_lo"]) for xi, r in zip(x, rows)], [float(r["kl_hi"]) - xi for xi, r in zip(x, rows)]]
        yerr = [[yi - float(r["reward_lo"]) for yi, r in zip(y, rows)], [float(r["reward_hi"]) - yi for yi, r in zip(y, rows)]]
        return ax.errorbar(x, y, xerr=xerr, yerr=yerr, capsize=2, **style).lines[0].get_color()

    def label_points(rows, text, color, offset):
        labels.extend(((float(r["kl_mean"]), float(r["reward_mean"])), text(r), color, offset) for r in rows)

    if "best_of_n" in by_run:
        rows = by_run["best_of_n"]
        color = errorbar(rows, fmt="--", color="gray", marker="s", markersize=4,
                         label="best-of-N on SFT (KL: analytic bound)")
        label_points(rows, lambda r: f"N={r['step']}", color, offset=(4, -10))  # below the line, clear of DPO labels
    for run in sorted(r for r in by_run if r not in ("sft", "base", "best_of_n")):
        rows = by_run[run]
        color = errorbar(sft + rows, fmt="-", marker="o", markersize=4, label=f"{run} (beta={rows[0]['beta']})")
        label_points(rows, lambda r: r["step"], color, offset=(4, 4))
    if sft:
        errorbar(sft, fmt="*", color="black", markersize=12, label="SFT")
    if "base" in by_run:
        errorbar(by_run["base"], fmt="P", color="brown", markersize=9, label="base (pre-SFT)")
    # Best-of-N lives below 2 nats and DPO runs reach tens: a log scale past 1 nat shows both.
    ax.set_xscale("symlog", linthresh=1.0)
    ax.set_xlabel("KL(policy || SFT reference), nats per sample (log scale above 1)")
    ax.set_ylabel(reward_axis_label(summary[0]["reward_model"]))
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    renderer, drawn = fig.canvas.get_renderer(), []
    for point, text, color, offset in labels:
        label = ax.annotate(text, point, xytext=offset, textcoords="offset points", fontsize=7, color=color)
        box = label.get_window_extent(renderer)
        if any(box.overlaps(other) for other in drawn):
            label.remove()
        else:
            drawn.append(box)
    ax.legend(fontsize=8, loc="best")
    fig.savefig(output_path, dpi=120)
    plt.close(fig)
