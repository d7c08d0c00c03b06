"""How stages are started: one stage from its command line, the whole pipeline, a node's GPUs as a pool, and the
tasks of the SLURM arrays."""
