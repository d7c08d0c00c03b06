"""What the project adds to TRL's DPOTrainer: exact sampled token ids and a NaN guard."""

import math

from trl import DPOTrainer

from ..errors import UserError
from ..pairs import REQUIRED_IDS


# What training_curves.png shows for a DPO run: (logged key or keys, panel title).
DPO_CURVES = [
    ("loss", "DPO loss"),
    ("rewards/margins", "reward margin (chosen - rejected)"),
    ("rewards/accuracies", "preference accuracy"),
    (("logps/chosen", "logps/rejected"), "log-prob of chosen / rejected"),
]


class LossNotFinite(UserError, FloatingPointError):
    """The DPO loss became NaN or infinite; the message says what to change."""


def run_name(loss_type: str, beta: float, label_smoothing: float = 0.0, use_peft: bool = False) -> str:
    """A run directory name that shows loss and beta at a glance, e.g. `sigmoid_beta0.1` or `robust_beta0.1_ls0.2`."""
    name = f"{loss_type}_beta{beta:g}"
    if label_smoothing:
        name += f"_ls{label_smoothing:g}"
    return name + ("_lora" if use_peft else "")


class PretokenizedDPOTrainer(DPOTrainer):
    """DPOTrainer on the token ids that were actually sampled.

    TRL re-tokenises `prompt + chosen` text and appends EOS to every completion. A completion cut at the
    length cap would then learn to stop, and re-tokenised text can differ from the sampled ids. Pair files
    carry `prompt_ids/chosen_ids/rejected_ids`, whose completions end with EOS only when the model ended
    them, so a data set with those columns is used as it is.
    """

    def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
        if set(REQUIRED_IDS) <= set(dataset.column_names):
            return dataset
        return super()._prepare_dataset(dataset, processing_class, args, dataset_name)

    def training_step(self, *args, **kwargs):
        loss = super().training_step(*args, **kwargs)
        if not math.isfinite(loss.item()):
            raise LossNotFinite(
                f"DPO loss is {loss.item()} at step {self.state.global_step + 1} of {self.args.output_dir}; the step "
                "was not applied and no checkpoint was written for it. Lower learning_rate, or train in bf16/fp32 "
                "rather than fp16, then rerun: training resumes from the last good checkpoint."
            )
        return loss
