"""Baseline: Preferred-FT, supervised fine-tuning of the SFT model on the chosen completions of the pair file.

    python preferred_ft.py --config configs/gpt2-large/preferred_ft.yaml

The DPO paper's simplest baseline: every distinct (prompt, chosen completion) of stage 2's pairs, trained on with
TRL's SFTTrainer on the exact sampled token ids, the loss on the completion only (a completion ends with EOS only
where the model ended it). The run goes to <output_dir>/preferred_ft/, checkpoints on checkpoint_schedule, resumes
by itself, and is skipped once finished with the same settings (--overwrite true replaces it once the new run has
finished).
"""

import imdb_dpo.lifecycle.one_gpu  # noqa: F401  first: one GPU a stage without a launcher (before CUDA is touched)

import sys

from imdb_dpo.launch.cli import run_stage
from imdb_dpo.methods.preferred_ft import STAGES, main

if __name__ == "__main__":
    sys.exit(run_stage(main, STAGES))
