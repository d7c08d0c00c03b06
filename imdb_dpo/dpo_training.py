"""What the project adds to TRL's DPOTrainer: exact sampled token ids, a NaN guard, lean old checkpoints."""

import glob
import math
import os
import re

from transformers import TrainerCallback
from trl import DPOTrainer

from .cli import UserError
from .pairs import REQUIRED_IDS


class LossNotFinite(UserError, FloatingPointError):
    """The DPO loss became NaN or infinite; the message says what to change."""


def run_name(loss_type: str, beta: float, label_smoothing: float = 0.0, use_peft: bool = False) -> str:
    """A run directory name that shows loss and beta at a glance, e.g. `sigmoid_beta0.1` or `robust_beta0.1_ls0.2`."""
    name = f"{loss_type}_beta{beta:g}"
    if label_smoothing:
        name += f"_ls{label_smoothing:g}"
    return name + ("_lora" if use_peft else "")


def checkpoint_steps(run_dir: str) -> list[tuple[int, str]]:
    """(step, path) of every `checkpoint-N` directory of a run, in step order."""
    found = []
    for path in glob.glob(os.path.join(run_dir, "checkpoint-*")):
        match = re.fullmatch(r"checkpoint-(\d+)", os.path.basename(path))
        if match and os.path.isdir(path):
            found.append((int(match.group(1)), path))
    return sorted(found)


def resumable_checkpoint(run_dir: str) -> str | None:
    """The newest checkpoint the Trainer finished writing, or None. The Trainer writes `trainer_state.json` last,
    so a checkpoint without it was cut short (a kill or a full disk during the save) and is passed over; resuming
    rewrites it when training reaches that step again."""
    complete = [path for _, path in checkpoint_steps(run_dir) if os.path.isfile(os.path.join(path, "trainer_state.json"))]
    return complete[-1] if complete else None


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


class DropOptimizerFromOldCheckpoints(TrainerCallback):
    """Keeps every checkpoint's weights for the evaluation but the optimizer state of the newest one only,
    which is all that resuming needs (for GPT-2 Large this saves about 6 GB a checkpoint)."""

    def on_save(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        for _, path in checkpoint_steps(args.output_dir)[:-1]:
            for name in ("optimizer.pt", "optimizer.bin"):
                if os.path.exists(os.path.join(path, name)):
                    os.remove(os.path.join(path, name))

