"""A learned reward model: TRL's RewardTrainer (Bradley-Terry) on stage 2's pairs, the model the paper's PPO optimises.

    python reward_model.py --config configs/gpt2-large/reward_model.yaml

It starts from the SFT model (the paper's choice; any sequence-classification checkpoint with the pairs' tokenizer
will do) with a new scalar head, trains on the pairs' exact token ids, holds out validation_fraction of the prompts
with all their pairs, evaluates pair accuracy on them at each evaluation (each epoch in the presets) and keeps the
best (load_best_model_at_end, metric_for_best_model: eval_accuracy). The model goes to output_dir itself; rloo.py
optimises it when its reward_model names that folder. Like every training stage it resumes by itself, and is
skipped once finished with the same settings (--overwrite true replaces it once the new run has finished).
"""

import imdb_dpo.lifecycle.one_gpu  # noqa: F401  first: one GPU a stage without a launcher (before CUDA is touched)

import sys

from imdb_dpo.launch.cli import run_stage
from imdb_dpo.methods.reward_model import STAGES, main

if __name__ == "__main__":
    sys.exit(run_stage(main, STAGES))
