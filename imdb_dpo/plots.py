"""Figures: DPO training curves from the trainer state, and the reward-versus-KL frontier."""

import json

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

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
