"""Stage 3: DPO from the SFT model (also the frozen reference), swept over beta, with TRL's DPOTrainer.

    python dpo.py --config configs/gpt2-large/dpo.yaml                 # the config's sweep (--betas)
    python dpo.py --config configs/gpt2-large/dpo.yaml --betas 0.1     # one run (a SLURM array task)

Each run goes to <output_dir>/<loss>_beta<beta>/ with the frontier's points on checkpoint_schedule (the presets:
lr-log), each evaluated in memory where frontier_eval names the evaluation's config (the presets do; checkpoints are
then written only to resume) or else saved as a checkpoint for eval.py, resumes by itself, and is skipped once finished with the same settings (--overwrite true
replaces it once the new run has finished). Reference log-probs are computed once and cached (TRL's
precompute_ref_log_probs), so every beta of the sweep reuses them.
"""

import imdb_dpo.lifecycle.one_gpu  # noqa: F401  first: one GPU a stage without a launcher (before CUDA is touched)

import sys

from imdb_dpo.launch.cli import run_stage
from imdb_dpo.methods.dpo import STAGES, main

if __name__ == "__main__":
    sys.exit(run_stage(main, STAGES))
