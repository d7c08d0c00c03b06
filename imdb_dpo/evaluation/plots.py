"""Figures: training curves from the trainer state, and the reward-versus-KL frontier."""

import json
import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from imdb_dpo.evaluation.comparisons import default_loss, family_of, frontier_rows, method_of
from imdb_dpo.methods import frontier_methods, method as method_of_key
from imdb_dpo.evaluation.report import family_name
from imdb_dpo.models.reward import VADER  # noqa: E402

def plot_training_curves(trainer_state_path: str, output_path: str, title: str, curves: list) -> None:
    """One panel per `(key or keys, title)` of `curves`, over the optimizer steps of the trainer's log."""
    with open(trainer_state_path) as f:
        history = json.load(f)["log_history"]
    fig, axes = plt.subplots(1, len(curves), figsize=(4.2 * len(curves), 3.4), squeeze=False)
    for ax, (keys, label) in zip(axes[0], curves):
        for key in (keys,) if isinstance(keys, str) else keys:
            # Each key at the steps that logged it: training logs and evaluations (eval_*) come at different steps.
            points = [(entry["step"], entry[key]) for entry in history if key in entry]
            ax.plot([s for s, _ in points], [v for _, v in points], marker="o" if len(points) < 12 else None,
                    markersize=3, label=key.split("/")[-1])
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




def _beta_key(rows: list[dict]):
    try:
        return (0, float(rows[0]["beta"]))
    except (TypeError, ValueError):
        return (1, 0.0)


def _run_label(method: str, rows: list[dict]) -> str:
    row = rows[0]
    declared = method_of_key(method)
    if not declared:
        return f"{method} {row['run']}"
    label = declared.title
    if declared.parameter and row["beta"] != "":
        label += f" {declared.parameter}={row['beta']}"
    loss = row.get("loss_type") or default_loss(method)
    return label + ("" if loss == default_loss(method) else f" ({loss})")


# The DPO paper's Figure 2 (IMDb): KL 0-20 nats, reward 0.4-1.0.
PAPER_VIEW = {"kl": (0.0, 20.0), "reward": (0.4, 1.0)}


def paper_view_hides(summary: list[dict]) -> int | None:
    """How many points the paper's view leaves out, or None where the data do not allow that view: the SFT model
    and at least two checkpoints must lie inside it."""
    def inside(r):
        return (PAPER_VIEW["kl"][0] <= float(r["kl_mean"]) <= PAPER_VIEW["kl"][1]
                and PAPER_VIEW["reward"][0] <= float(r["reward_mean"]) <= PAPER_VIEW["reward"][1])

    sft = [r for r in summary if r["run"] == "sft"]
    trained = [r for r in summary if method_of_key(method_of(r))]
    if not (sft and all(inside(r) for r in sft) and sum(inside(r) for r in trained) >= 2):
        return None
    return sum(not inside(r) for r in summary)


def plot_frontier(summary: list[dict], output_path: str, title: str = "reward vs KL", view: str = "paper") -> list[str]:
    """Reward against KL(pi || pi_ref) from the summary rows alone; returns the legend's labels.

    `view` "paper" draws the paper's axes (KL 0-20 nats, linear; reward 0.4-1.0) where the data allow it (see
    `paper_view_hides`; the title counts the points left out), "full" every point on a KL axis that is logarithmic
    above 1 nat.

    One line per trained run through its checkpoints, each starting at the SFT model and each point labelled with
    its step: DPO runs solid with circles in shades of blue, RLOO runs dashed with triangles in shades of orange,
    Preferred-FT dotted with diamonds in green, Unlikelihood dash-dotted with squares in shades of purple (shades
    follow the method's parameter: beta, the KL coefficient, alpha). Best-of-N on the SFT model
    (labelled N=..., at its analytic KL bound), the SFT model and the base model if present. A point label that
    would overlap one already drawn is left out, so crowded checkpoints stay readable."""
    fig, ax = plt.subplots(figsize=(10, 5))
    by_run: dict[str, list[dict]] = {}
    for row in frontier_rows(summary):  # a setting run with several seeds: their mean, with the band between them
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
        label_points(rows, lambda r: f"N={r['step']}", color, offset=(4, -10))  # below the line, clear of run labels
    runs = {run: rows for run, rows in by_run.items() if method_of(rows[0]) not in ("sft", "base", "best_of_n")}
    families = {m.key: [] for m in frontier_methods()}
    for run, rows in runs.items():
        families.setdefault(method_of(rows[0]), []).append(run)
    for method, names in families.items():
        style = method_of_key(method).style if method_of_key(method) else {"fmt": "-.", "marker": "x"}
        names.sort(key=lambda run: (_beta_key(runs[run]), run))
        texts = [_run_label(method, runs[run]) for run in names]
        for i, run in enumerate(names):
            rows = runs[run]
            text = texts[i] if texts.count(texts[i]) == 1 else f"{texts[i]} [{run}]"  # e.g. a LoRA twin of a run
            if "cmap" in style:  # light to dark, never so light that the line fades into the background
                color = matplotlib.colormaps[style["cmap"]](0.45 + 0.5 * (i / (len(names) - 1) if len(names) > 1 else 0.5))
            else:
                color = style.get("color")
            seeds = rows[0].get("seed") == "mean"
            if seeds:
                text += " (mean of seeds; band: lowest to highest)"
            color = errorbar(sft + rows, fmt=style["fmt"], marker=style["marker"], markersize=4, color=color, label=text)
            if seeds:
                band = sorted(rows, key=lambda r: float(r["kl_mean"]))
                ax.fill_between([float(r["kl_mean"]) for r in band], [float(r["reward_lo"]) for r in band],
                                [float(r["reward_hi"]) for r in band], color=color, alpha=0.2, linewidth=0)
            label_points(rows, lambda r: r["step"], color, offset=(4, 4))
    if sft:
        errorbar(sft, fmt="*", color="black", markersize=12, label="SFT")
    if "base" in by_run:
        errorbar(by_run["base"], fmt="P", color="brown", markersize=9, label="base (pre-SFT)")
    hidden = paper_view_hides(summary) if view == "paper" else None
    if hidden is None:  # best-of-N lives below 2 nats and trained runs reach tens: a log scale past 1 nat shows both
        ax.set_xscale("symlog", linthresh=1.0)
        ax.set_xlabel("KL(policy || SFT reference), nats per sample (log scale above 1)")
    else:
        ax.set_xlim(*PAPER_VIEW["kl"])
        ax.set_ylim(*PAPER_VIEW["reward"])
        ax.set_xlabel("KL(policy || SFT reference), nats per sample")
        if hidden:
            title += f" (the paper's view; {hidden} point{'s' if hidden != 1 else ''} beyond it: see the full view)"
    ax.set_ylabel(reward_axis_label(summary[0]["reward_model"]))
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    # Beside the axes, not inside: with a dozen runs no corner of the plot is free of points.
    legend = ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0)
    fig.tight_layout()
    renderer, drawn = fig.canvas.get_renderer(), []
    (x0, x1), (y0, y1) = ax.get_xlim(), ax.get_ylim()
    for point, text, color, offset in labels:
        if not (x0 <= point[0] <= x1 and y0 <= point[1] <= y1):
            continue
        label = ax.annotate(text, point, xytext=offset, textcoords="offset points", fontsize=7, color=color)
        box = label.get_window_extent(renderer)
        if any(box.overlaps(other) for other in drawn):
            label.remove()
        else:
            drawn.append(box)
    fig.savefig(output_path, dpi=120)
    plt.close(fig)
    return [text.get_text() for text in legend.get_texts()]


def _family_color(method: str, i: int = 0, n: int = 1):
    style = method_of_key(method).style if method_of_key(method) else {"color": "gray"}
    if "cmap" in style:
        return matplotlib.colormaps[style["cmap"]](0.45 + 0.5 * (i / (n - 1) if n > 1 else 0.5))
    return style.get("color", "gray")


def plot_overoptimisation(summary: list[dict], fits: list[dict], output_path: str) -> bool:
    """Against d = sqrt(KL): the learned-reward runs' true reward and proxy score (where there are any), and each
    method's reward gain over SFT with its fitted Gao et al. curve. False (nothing drawn) without points to show."""
    from imdb_dpo.evaluation.fits import curve

    import numpy as np

    proxied = {}
    for r in summary:
        if r.get("proxy_reward_mean", "") != "":
            proxied.setdefault(r["run"], []).append(r)
    sft = [float(r["reward_mean"]) for r in summary if r["run"] == "sft"]
    if not (proxied or fits) or not sft:
        return False
    panels = (["fooled"] if proxied else []) + (["fits"] if fits else [])
    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 4.6), squeeze=False)
    for ax, panel in zip(axes[0], panels):
        if panel == "fooled":
            twin = ax.twinx()
            for i, (run, rows) in enumerate(sorted(proxied.items())):
                rows = sorted(rows, key=lambda r: float(r["step"]))
                d = [math.sqrt(max(float(r["kl_mean"]), 0.0)) for r in rows]
                color = _family_color(method_of(rows[0]), i, len(proxied))
                ax.plot(d, [float(r["reward_mean"]) for r in rows], "-o", color=color, markersize=4,
                        label=f"{run}: true reward")
                twin.plot(d, [float(r["proxy_reward_mean"]) for r in rows], "--v", color=color, markersize=4,
                          alpha=0.8, label=f"{run}: learned RM score")
            ax.axhline(sft[0], color="black", linewidth=0.8, linestyle=":", label="SFT true reward")
            ax.set_xlabel("d = sqrt(KL(policy || SFT)), sqrt(nats)")
            ax.set_ylabel(reward_axis_label(summary[0]["reward_model"]))
            twin.set_ylabel("learned reward model's score (logit)")
            ax.set_title("RL on the learned reward model: proxy vs true reward", fontsize=10)
            handles = ax.get_legend_handles_labels()
            more = twin.get_legend_handles_labels()
            ax.legend(handles[0] + more[0], handles[1] + more[1], fontsize=7, loc="best")
        else:
            variants = [f["method"] for f in fits if "/" in f["method"]]  # DPO losses: shades of DPO's map
            for f in fits:
                rows = [r for r in summary if family_of(r) == f["method"] and float(r["kl_mean"]) > 0]
                d = np.array([math.sqrt(float(r["kl_mean"])) for r in rows])
                gain = np.array([float(r["reward_mean"]) - sft[0] for r in rows])
                method = f["method"].partition("/")[0]
                shade = (variants.index(f["method"]) + 1, len(variants) + 1) if f["method"] in variants else (0, 1)
                color = _family_color(method, *shade) if method != "best_of_n" else "gray"
                ax.scatter(d, gain, color=color, s=12)
                grid = np.linspace(1e-3, d.max() * 1.1, 200)
                name = family_name(f["method"])
                ax.plot(grid, curve(f, f["form"], grid), color=color,
                        label=f"{name}: a={f['a']:.3g}, b={f['b']:.3g}, R²={f['r2']:.2f}")
            ax.axhline(0, color="black", linewidth=0.8)
            ax.set_xlabel("d = sqrt(KL(policy || SFT)), sqrt(nats)")
            ax.set_ylabel("reward gain over SFT")
            ax.set_title("Gao et al.'s forms: d(a - b log d) for trained policies, d(a - b d) for best-of-N",
                         fontsize=10)
            ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.15), ncol=2)  # below: clear of points
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(output_path, dpi=110)
    plt.close(fig)
    return True
