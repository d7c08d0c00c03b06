#!/usr/bin/env bash
# Run by srun, once per node, inside a job: starts accelerate's launcher for this node's GPUs, all nodes
# joining one process group. A job script runs it for LAUNCH=multinode (slurm/common.sh):
#   LAUNCH=multinode sbatch --nodes=2 --gres=gpu:8 --array=0-11 slurm/train.sbatch dpo gpt2-large
# The stop file sits under OUTPUT_ROOT, which must be on storage every node sees.
set -euo pipefail
head_node=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
gpus_per_node=${GPUS_PER_NODE:-${SLURM_GPUS_ON_NODE:-$(nvidia-smi -L | grep -c GPU)}}
exec accelerate launch --config_file "${ACCELERATE_CONFIG:-configs/accelerate/ddp.yaml}" \
  --num_machines "$SLURM_NNODES" --num_processes $((SLURM_NNODES * gpus_per_node)) --machine_rank "$SLURM_NODEID" \
  --main_process_ip "$head_node" --main_process_port "${MAIN_PROCESS_PORT:-29500}" "$@"
