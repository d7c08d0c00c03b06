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
LAUNCH=${LAUNCH:-python}                          # e.g. LAUNCH="accelerate launch --config_file configs/accelerate/ddp.yaml"
STOP_DIR=$OUTPUT_ROOT/.slurm_stop
export IMDB_DPO_STOP_FILE=$STOP_DIR/${SLURM_JOB_ID:-local}

run_requeueable() {
  mkdir -p "$STOP_DIR"
  rm -f "$IMDB_DPO_STOP_FILE" "$IMDB_DPO_STOP_FILE.saved"
  echo "$(date +%FT%T) job ${SLURM_JOB_ID:-?} (restart ${SLURM_RESTART_COUNT:-0}): $*"
  trap 'echo "$(date +%FT%T) signal: asking the stage to save and stop"; touch "$IMDB_DPO_STOP_FILE"' USR1 TERM
  "$@" &
  local child=$! status
  # `wait` returns early when a trapped signal arrives; keep waiting until the stage has really exited.
  while true; do
    wait "$child"; status=$?
    kill -0 "$child" 2>/dev/null || break
  done
  trap - USR1 TERM
  local saved=0
  [ "$status" -eq 75 ] || [ -f "$IMDB_DPO_STOP_FILE.saved" ] && saved=1
  rm -f "$IMDB_DPO_STOP_FILE" "$IMDB_DPO_STOP_FILE.saved"
  if [ "$saved" -eq 1 ]; then
    echo "$(date +%FT%T) the stage saved its progress; requeueing job $SLURM_JOB_ID"
    scontrol requeue "$SLURM_JOB_ID"
    exit 0
  fi
  echo "$(date +%FT%T) stage exited with status $status"
  exit "$status"
}

# For a stage that cannot save midway (the reference log-prob pass, which TRL caches only once complete): on the
# warning or a preemption, stop it and requeue the job, which then starts that pass over.
run_restartable() {
  echo "$(date +%FT%T) job ${SLURM_JOB_ID:-?} (restart ${SLURM_RESTART_COUNT:-0}): $*"
  local requeue=0
  trap 'echo "$(date +%FT%T) signal: stopping the stage; the requeued job starts it over"; requeue=1; kill -TERM "$child" 2>/dev/null' USR1 TERM
  "$@" &
  local child=$! status
  while true; do
    wait "$child"; status=$?
    kill -0 "$child" 2>/dev/null || break
  done
  trap - USR1 TERM
  if [ "$requeue" -eq 1 ]; then
    echo "$(date +%FT%T) requeueing job $SLURM_JOB_ID"
    scontrol requeue "$SLURM_JOB_ID"
    exit 0
  fi
  echo "$(date +%FT%T) stage exited with status $status"
  exit "$status"
}
