"""Baseline: online RL from the SFT model with TRL's RLOOTrainer, swept over the KL coefficient.

    python rloo.py --config configs/gpt2-large/rloo.yaml                  # the config's sweep (--kl_coefs)
    python rloo.py --config configs/gpt2-large/rloo.yaml --kl_coefs 0.05  # one run (a SLURM array task)

RLOO maximises reward - beta * KL(policy || SFT), the objective of PPO in the DPO paper. It samples on the prompts
of stage 2's pair file (their exact token ids), with the sampling settings of the config (the presets use stage 2's:
temperature 1, no top-k/top-p, the same max_new_tokens as max_completion_length). Its reward is one of two:

- stage 2's reward (the paper's PPO-GT): the sentiment classifier's POSITIVE probability of prompt + completion
  (VADER on the tiny preset). Runs go to <output_dir>/rloo_kl<coef>/ and are the frontier's `rloo` method.
- a learned reward model (the paper's PPO), when reward_model names a folder reward_model.py finished: its score of
  the prompt and completion ids (configs/<preset>/rloo_rm.yaml). Runs go to <output_dir>/rloo_rm_kl<coef>/ and are
  the frontier's `rloo_rm` method, whose evaluation records the learned score beside the true reward.

Each run checkpoints on checkpoint_schedule, resumes by itself, and is skipped once finished with the same settings
(--overwrite true replaces it once the new run has finished).
"""

import imdb_dpo.lifecycle.one_gpu  # noqa: F401  first: one GPU a stage without a launcher (before CUDA is touched)

import sys

from imdb_dpo.launch.cli import run_stage
from imdb_dpo.methods.rloo import STAGES, main

if __name__ == "__main__":
    sys.exit(run_stage(main, STAGES))
