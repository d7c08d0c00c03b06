#!/usr/bin/env bash
# Submits a whole preset as a chain of SLURM jobs, each starting when the one before succeeded:
#   SFT -> pair shards (array) -> merge -> reference log-probs -> DPO (array) --------------------+-> evaluation
#                                  merge -> RLOO (array) -----------------------------------------+
#                                  merge -> reward model -> RLOO on it (array) -------------------+
#                                  merge -> Preferred-FT (array) ---------------------------------+
#                                  merge -> Unlikelihood (array) ---------------------------------+
#                                  merge -> KTO, ORPO, ORPO from the base model, CPO, SimPO (an array each) -+
# Each array has one task per run of its config: a value of the sweep (betas, kl_coefs, alphas) and a seed (seeds).
# (Each baseline and later method only where the preset has its config: rloo.yaml, reward_model.yaml and rloo_rm.yaml,
# preferred_ft.yaml, unlikelihood.yaml, kto.yaml, orpo.yaml, orpo_base.yaml, cpo.yaml, simpo.yaml, online_dpo.yaml.)
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
python -c "import imdb_dpo.sweep_tasks" 2>/dev/null || {
  echo "$(command -v python) cannot import the project: activate its environment (python3 -m venv .venv &&" \
       ". .venv/bin/activate && pip install -r requirements.txt)" >&2; exit 2; }
# The runs of a stage's array: one per value of its sweep and seed, in the stage's order (imdb_dpo/sweep_tasks.py).
tasks() { python -m imdb_dpo.sweep_tasks "configs/$preset/$1.yaml" "$2" "${3:-count}"; }
dpo_runs=$(tasks dpo betas) || exit 2
rloo_runs=0 rm_runs=0 pft_runs=0 ul_runs=0
[ -f "configs/$preset/rloo.yaml" ] && { rloo_runs=$(tasks rloo kl_coefs) || exit 2; }
if [ -f "configs/$preset/rloo_rm.yaml" ]; then
  [ -f "configs/$preset/reward_model.yaml" ] || { echo "configs/$preset/rloo_rm.yaml needs configs/$preset/reward_model.yaml" >&2; exit 2; }
  rm_runs=$(tasks rloo_rm kl_coefs) || exit 2
fi
[ -f "configs/$preset/preferred_ft.yaml" ] && { pft_runs=$(tasks preferred_ft -) || exit 2; }
[ -f "configs/$preset/unlikelihood.yaml" ] && { ul_runs=$(tasks unlikelihood alphas) || exit 2; }
declare -A method_runs  # train.py's methods that sweep beta (slurm/train.sbatch)
for method in kto orpo orpo_base cpo simpo online_dpo; do
  if [ -f "configs/$preset/$method.yaml" ]; then method_runs[$method]=$(tasks "$method" betas) || exit 2; fi
done
# ARRAY_LIMIT=n: at most n tasks of each training array at once (each running task holds two checkpoints on disk).
throttle=${ARRAY_LIMIT:+%$ARRAY_LIMIT}
submit() { sbatch --parsable ${SBATCH_EXTRA:-} "$@"; }

sft=$(submit slurm/sft.sbatch "$preset")
pairs=$(submit --dependency=afterok:"$sft" --array=0-$((shards - 1)) slurm/pairs.sbatch "$preset" "$shards")
merge=$(submit --dependency=afterok:"$pairs" slurm/merge_pairs.sbatch "$preset" "$shards")
reference=$(submit --dependency=afterok:"$merge" slurm/dpo_reference.sbatch "$preset")
dpo=$(submit --dependency=afterok:"$reference" --array=0-$((dpo_runs - 1))$throttle slurm/dpo.sbatch "$preset")
trained=$dpo
rloo=none reward_model=none rloo_rm=none preferred_ft=none unlikelihood=none
if [ "$rloo_runs" -gt 0 ]; then
  # RLOO_CONFIG set here too: one exported in the submitting shell would otherwise reach this job.
  rloo=$(submit --dependency=afterok:"$merge" --export=ALL,RLOO_CONFIG=rloo --array=0-$((rloo_runs - 1))$throttle \
    slurm/rloo.sbatch "$preset")
  trained=$trained:$rloo
fi
if [ -f "configs/$preset/reward_model.yaml" ]; then
  reward_model=$(submit --dependency=afterok:"$merge" slurm/reward_model.sbatch "$preset")
  trained=$trained:$reward_model
fi
if [ "$rm_runs" -gt 0 ]; then
  rloo_rm=$(submit --dependency=afterok:"$reward_model" --job-name=rloo_rm --export=ALL,RLOO_CONFIG=rloo_rm \
    --array=0-$((rm_runs - 1))$throttle slurm/rloo.sbatch "$preset")
  trained=$trained:$rloo_rm
fi
if [ "$pft_runs" -gt 0 ]; then
  preferred_ft=$(submit --dependency=afterok:"$merge" --array=0-$((pft_runs - 1))$throttle slurm/preferred_ft.sbatch "$preset")
  trained=$trained:$preferred_ft
fi
if [ "$ul_runs" -gt 0 ]; then
  unlikelihood=$(submit --dependency=afterok:"$merge" --array=0-$((ul_runs - 1))$throttle slurm/unlikelihood.sbatch "$preset")
  trained=$trained:$unlikelihood
fi
declare -A method_jobs
for method in kto orpo orpo_base cpo simpo online_dpo; do
  [ -n "${method_runs[$method]:-}" ] || continue
  method_jobs[$method]=$(submit --dependency=afterok:"$merge" --job-name="$method" \
    --array=0-$((method_runs[$method] - 1))$throttle slurm/train.sbatch "$method" "$preset")
  trained=$trained:${method_jobs[$method]}
done
evaluation=$(submit --dependency=afterok:"$trained" slurm/eval.sbatch "$preset")
runs() {  # "<n> runs: <what they sweep>" of a submitted array
  if [ "$1" = none ]; then echo "not in the preset"; else echo "$2 run$([ "$2" -eq 1 ] || echo s): $(tasks "$3" "$4" describe)"; fi
}
printf 'sft %s\npairs %s (array of %s)\nmerge %s\nreference %s\ndpo %s (%s)\nrloo %s (%s)\nreward_model %s\nrloo_rm %s (%s)\npreferred_ft %s (%s)\nunlikelihood %s (%s)\n' \
  "$sft" "$pairs" "$shards" "$merge" "$reference" "$dpo" "$(runs "$dpo" "$dpo_runs" dpo betas)" \
  "$rloo" "$(runs "$rloo" "$rloo_runs" rloo kl_coefs)" "$reward_model" "$rloo_rm" "$(runs "$rloo_rm" "$rm_runs" rloo_rm kl_coefs)" \
  "$preferred_ft" "$(runs "$preferred_ft" "$pft_runs" preferred_ft -)" "$unlikelihood" "$(runs "$unlikelihood" "$ul_runs" unlikelihood alphas)"
for method in kto orpo orpo_base cpo simpo online_dpo; do
  if [ -n "${method_jobs[$method]:-}" ]; then
    printf '%s %s (%s)\n' "$method" "${method_jobs[$method]}" \
      "$(runs "${method_jobs[$method]}" "${method_runs[$method]}" "$method" betas)"
  fi
done
printf 'eval %s\n' "$evaluation"
