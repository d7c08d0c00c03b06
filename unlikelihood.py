"""Baseline: Unlikelihood (Welleck et al. 2019) from the SFT model on the pair file, swept over alpha.

    python unlikelihood.py --config configs/gpt2-large/unlikelihood.yaml                # the config's sweep (--alphas)
    python unlikelihood.py --config configs/gpt2-large/unlikelihood.yaml --alphas 1     # one run (a SLURM array task)

The DPO paper's baseline that raises the chosen completion's likelihood and pushes the rejected one's tokens down
with -log(1 - p), weighted by alpha (imdb_dpo/methods/unlikelihood.py has the loss). It trains on every pair of
stage 2's pair file by its exact token ids, with no reference model. Each run goes to
<output_dir>/unlikelihood_alpha<alpha>/, checkpoints on checkpoint_schedule, resumes by itself, and is skipped once
finished with the same settings (--overwrite true replaces it once the new run has finished).
"""

import imdb_dpo.lifecycle.one_gpu  # noqa: F401  first: one GPU a stage without a launcher (before CUDA is touched)

import sys

from imdb_dpo.launch.cli import run_stage
from imdb_dpo.methods.unlikelihood import STAGES, main

if __name__ == "__main__":
    sys.exit(run_stage(main, STAGES))
