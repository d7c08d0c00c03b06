#!/usr/bin/env bash
# Submits a whole preset as a chain of SLURM jobs, each starting when the ones it reads have succeeded:
#   SFT -> pair shards (array) -> merge -> every method of the preset (an array each) -> evaluation
# The methods and what each waits for come from the registry (imdb_dpo/methods; python -m imdb_dpo.launch.sweep_tasks jobs
# configs/<preset> lists them): each runs where the preset has its config, after the stages it reads (RLOO on the
# learned reward model after the reward model), DPO's runs after their one shared reference pass. Each array has one
# task per run of its config: a value of its sweep (betas, kl_coefs, alphas) and a seed (seeds).
# Usage, from the repo root: slurm/submit_preset.sh <preset> [number of pair shards, default 4]
# Extra sbatch options for every job (partition, account, ...) go in SBATCH_EXTRA; ARRAY_LIMIT=n runs at most n
# tasks of each training array at once.
set -euo pipefail
preset=${1:?usage: slurm/submit_preset.sh <preset> [num_shards]}
shards=${2:-4}
# Checked before the first sbatch: a bad value would otherwise stop the chain half submitted.
[[ "$shards" =~ ^[1-9][0-9]*$ ]] || { echo "number of pair shards '$shards': a whole number >= 1" >&2; exit 2; }
[[ -z "${ARRAY_LIMIT:-}" || "$ARRAY_LIMIT" =~ ^[1-9][0-9]*$ ]] || {
  echo "ARRAY_LIMIT='$ARRAY_LIMIT': a whole number >= 1 (tasks of each array at once), or unset for no limit" >&2; exit 2; }
cd "$(dirname "$0")/.."
[ -d "configs/$preset" ] || { echo "no preset configs/$preset" >&2; exit 2; }
[ -f .venv/bin/activate ] && . .venv/bin/activate   # the project's environment, as the job scripts use it
python -c "import imdb_dpo.launch.sweep_tasks" 2>/dev/null || {
  echo "$(command -v python) cannot import the project: activate its environment (python3 -m venv .venv &&" \
       ". .venv/bin/activate && pip install -r requirements.txt)" >&2; exit 2; }
# The preset's methods, a line each: method, runs, the stages it reads, its shared pass and that pass's flags, what it
# sweeps (checked before the first sbatch: a bad config would otherwise stop the chain half submitted).
methods=$(python -m imdb_dpo.launch.sweep_tasks jobs "configs/$preset") || exit 2
# ARRAY_LIMIT=n: at most n tasks of each training array at once (each running task holds two checkpoints on disk).
throttle=${ARRAY_LIMIT:+%$ARRAY_LIMIT}
submit() { sbatch --parsable ${SBATCH_EXTRA:-} "$@"; }

sft=$(submit slurm/sft.sbatch "$preset")
pairs=$(submit --dependency=afterok:"$sft" --array=0-$((shards - 1)) slurm/pairs.sbatch "$preset" "$shards")
merge=$(submit --dependency=afterok:"$pairs" slurm/merge_pairs.sbatch "$preset" "$shards")
declare -A job=([sft]=$sft [preference_pairs]=$merge)
printf 'sft %s\npairs %s (array of %s)\nmerge %s\n' "$sft" "$pairs" "$shards" "$merge"
trained=""
while IFS=$'\t' read -r method runs needs shared shared_flags sweep; do
  [ -n "$method" ] || continue
  after=""
  for need in ${needs//,/ }; do after=$after:${job[$need]}; done
  if [ "$shared" != - ]; then  # one pass the runs share, before them (DPO's cached reference log-probs)
    # shellcheck disable=SC2086  # the pass's flags are words
    pass=$(submit --dependency=afterok"$after" --job-name="$shared" slurm/train.sbatch "$method" "$preset" $shared_flags)
    printf '%s %s\n' "$shared" "$pass"
    after=:$pass
  fi
  job[$method]=$(submit --dependency=afterok"$after" --job-name="$method" --array=0-$((runs - 1))$throttle \
    slurm/train.sbatch "$method" "$preset")
  trained=$trained:${job[$method]}
  printf '%s %s (%s run%s: %s)\n' "$method" "${job[$method]}" "$runs" "$([ "$runs" -eq 1 ] || echo s)" "$sweep"
done <<< "$methods"
evaluation=$(submit --dependency=afterok"${trained:-:$merge}" slurm/eval.sbatch "$preset")
printf 'eval %s\n' "$evaluation"
