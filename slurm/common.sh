# Sourced by every job script in slurm/. Runs a stage so that a time limit or a preemption loses nothing.
#
# The job asks SLURM for SIGUSR1 some minutes before its time limit (--signal=B:USR1@SECONDS, sent to this
# batch shell). On USR1 (or TERM, a preemption) this shell creates the stop file named in
# $IMDB_DPO_STOP_FILE; every process of the stage, under accelerate or srun too, sees it at its next step or
# batch boundary, saves a checkpoint or flushes its batch, exits with status 75 and leaves
# "$IMDB_DPO_STOP_FILE.saved" (under accelerate/torchrun the status itself is lost: they report 1). The job
# then requeues itself (scontrol requeue) and, when it starts again, the stage resumes from what it saved.

set -uo pipefail
cd "${SLURM_SUBMIT_DIR:-.}"                       # sbatch copies this script away: submit from the repo root
[ -f .venv/bin/activate ] && . .venv/bin/activate
export OUTPUT_ROOT=${OUTPUT_ROOT:-$PWD}
export PYTHONUNBUFFERED=1
STOP_DIR=$OUTPUT_ROOT/.slurm_stop
export IMDB_DPO_STOP_FILE=$STOP_DIR/${SLURM_JOB_ID:-local}

# The GPUs this job has on this node: SLURM's count, else CUDA_VISIBLE_DEVICES's entries, else nvidia-smi's list.
allocated_gpus() {
  if [ -n "${SLURM_GPUS_ON_NODE:-}" ]; then echo "$SLURM_GPUS_ON_NODE"
  elif [ -n "${CUDA_VISIBLE_DEVICES:-}" ]; then echo "$CUDA_VISIBLE_DEVICES" | tr ',' '\n' | grep -c .
  else nvidia-smi -L 2>/dev/null | grep -c GPU
  fi
}

# How a stage starts, from LAUNCH: "python" (the default: one process, one GPU), "accelerate" (one process per GPU
# of this allocation, configs/accelerate/ddp.yaml or $ACCELERATE_CONFIG), "multinode" (that on every node of the
# job, through srun), or a command of your own. An `accelerate launch` is given the allocation's process count and
# an srun --kill-on-bad-exit, so that one failed process ends the job instead of leaving the others waiting in NCCL.
launch_command() {
  local launch=${LAUNCH:-python}
  case "$launch" in
    accelerate) launch="accelerate launch --config_file ${ACCELERATE_CONFIG:-configs/accelerate/ddp.yaml}" ;;
    multinode) launch="srun --ntasks-per-node=1 slurm/multinode_launch.sh" ;;
  esac
  if [[ "$launch" == "accelerate launch"* && "$launch" != *--num_processes* ]]; then
    local gpus
    gpus=$(allocated_gpus)
    if [ "${gpus:-0}" -lt 1 ]; then
      echo "error: LAUNCH=${LAUNCH} starts one process per GPU, but this job has no GPU: submit it with --gres=gpu:N" >&2
      return 2
    fi
    launch="$launch --num_processes $gpus"
  fi
  if [[ "$launch" == srun* && "$launch" != *kill-on-bad-exit* ]]; then
    launch="srun --kill-on-bad-exit=1${launch#srun}"
  fi
  echo "$launch"
}
LAUNCH=$(launch_command) || exit 2

# Runs the stage "$@" in the background with $1 as the USR1/TERM handler, and waits until it has really exited
# (`wait` returns early when a trapped signal arrives); its exit status is left in $stage_status. The handler
# sees the stage's pid as $child.
_run_stage_with_handler() {
  local handler=$1; shift
  echo "$(date +%FT%T) job ${SLURM_JOB_ID:-?} (restart ${SLURM_RESTART_COUNT:-0}): $*"
  trap "$handler" USR1 TERM
  "$@" &
  child=$!
  while true; do
    wait "$child"; stage_status=$?
    kill -0 "$child" 2>/dev/null || break
  done
  trap - USR1 TERM
}

# Requeues the job when $1 is 1 (saying $2), else exits with the stage's status.
_requeue_or_exit() {
  if [ "$1" -eq 1 ]; then
    echo "$(date +%FT%T) $2; requeueing job $SLURM_JOB_ID"
    scontrol requeue "$SLURM_JOB_ID"
    exit 0
  fi
  echo "$(date +%FT%T) stage exited with status $stage_status"
  exit "$stage_status"
}

run_requeueable() {
  mkdir -p "$STOP_DIR"
  rm -f "$IMDB_DPO_STOP_FILE" "$IMDB_DPO_STOP_FILE.saved"
  _run_stage_with_handler 'echo "$(date +%FT%T) signal: asking the stage to save and stop"; touch "$IMDB_DPO_STOP_FILE"' "$@"
  local saved=0
  [ "$stage_status" -eq 75 ] || [ -f "$IMDB_DPO_STOP_FILE.saved" ] && saved=1
  rm -f "$IMDB_DPO_STOP_FILE" "$IMDB_DPO_STOP_FILE.saved"
  _requeue_or_exit "$saved" "the stage saved its progress"
}

# For a stage that cannot save midway (the reference log-prob pass, which TRL caches only once complete): on the
# warning or a preemption, stop it and requeue the job, which then starts that pass over.
run_restartable() {
  requeue=0
  _run_stage_with_handler 'echo "$(date +%FT%T) signal: stopping the stage; the requeued job starts it over"; requeue=1; kill -TERM "$child" 2>/dev/null' "$@"
  _requeue_or_exit "$requeue" "the stage was stopped"
}
