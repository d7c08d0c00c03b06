#!/usr/bin/env bash
# Submits a whole preset as a chain of SLURM jobs, each starting when the one before succeeded:
#   SFT -> pair shards (array) -> merge -> reference log-probs -> DPO (array over betas) -+-> evaluation
#                                  merge -> RLOO (array over KL coefficients) ---------------+
#                                  merge -> reward model -> RLOO on it (array) --------------+
#                                  merge -> Preferred-FT ------------------------------------+
#                                  merge -> Unlikelihood (array over alphas) ----------------+
# (Each baseline only where the preset has its config: rloo.yaml, reward_model.yaml and rloo_rm.yaml,
# preferred_ft.yaml, unlikelihood.yaml.)
# Usage, from the repo root: slurm/submit_preset.sh <preset> [number of pair shards, default 4]
# Extra sbatch options for every job (partition, account, ...) go in SBATCH_EXTRA.
set -euo pipefail
preset=${1:?usage: slurm/submit_preset.sh <preset> [num_shards]}
shards=${2:-4}
cd "$(dirname "$0")/.."
[ -d "configs/$preset" ] || { echo "no preset configs/$preset" >&2; exit 2; }
[ -f .venv/bin/activate ] && . .venv/bin/activate   # the project's environment, as the job scripts use it
betas=$(python -c "import sys, yaml; print(*yaml.safe_load(open(sys.argv[1]))['betas'])" "configs/$preset/dpo.yaml") || {
  echo "could not read betas from configs/$preset/dpo.yaml with $(command -v python): activate the project's" \
       "environment (python3 -m venv .venv && . .venv/bin/activate && pip install -r requirements.txt)" >&2; exit 2; }
read -r -a beta_list <<< "$betas"
coefs=""
if [ -f "configs/$preset/rloo.yaml" ]; then
  coefs=$(python -c "import sys, yaml; print(*yaml.safe_load(open(sys.argv[1]))['kl_coefs'])" "configs/$preset/rloo.yaml") || {
    echo "could not read kl_coefs from configs/$preset/rloo.yaml" >&2; exit 2; }
fi
read -r -a coef_list <<< "$coefs"
rm_coefs=""
if [ -f "configs/$preset/rloo_rm.yaml" ]; then
  [ -f "configs/$preset/reward_model.yaml" ] || { echo "configs/$preset/rloo_rm.yaml needs configs/$preset/reward_model.yaml" >&2; exit 2; }
  rm_coefs=$(python -c "import sys, yaml; print(*yaml.safe_load(open(sys.argv[1]))['kl_coefs'])" "configs/$preset/rloo_rm.yaml") || {
    echo "could not read kl_coefs from configs/$preset/rloo_rm.yaml" >&2; exit 2; }
fi
read -r -a rm_coef_list <<< "$rm_coefs"
alphas=""
if [ -f "configs/$preset/unlikelihood.yaml" ]; then
  alphas=$(python -c "import sys, yaml; print(*yaml.safe_load(open(sys.argv[1]))['alphas'])" "configs/$preset/unlikelihood.yaml") || {
    echo "could not read alphas from configs/$preset/unlikelihood.yaml" >&2; exit 2; }
fi
read -r -a alpha_list <<< "$alphas"
submit() { sbatch --parsable ${SBATCH_EXTRA:-} "$@"; }

sft=$(submit slurm/sft.sbatch "$preset")
pairs=$(submit --dependency=afterok:"$sft" --array=0-$((shards - 1)) slurm/pairs.sbatch "$preset" "$shards")
merge=$(submit --dependency=afterok:"$pairs" slurm/merge_pairs.sbatch "$preset" "$shards")
reference=$(submit --dependency=afterok:"$merge" slurm/dpo_reference.sbatch "$preset")
dpo=$(submit --dependency=afterok:"$reference" --array=0-$((${#beta_list[@]} - 1)) slurm/dpo.sbatch "$preset" "${beta_list[@]}")
trained=$dpo
rloo=none reward_model=none rloo_rm=none preferred_ft=none unlikelihood=none
if [ ${#coef_list[@]} -gt 0 ]; then
  # RLOO_CONFIG set here too: one exported in the submitting shell would otherwise reach this job.
  rloo=$(submit --dependency=afterok:"$merge" --export=ALL,RLOO_CONFIG=rloo --array=0-$((${#coef_list[@]} - 1)) \
    slurm/rloo.sbatch "$preset" "${coef_list[@]}")
  trained=$trained:$rloo
fi
if [ -f "configs/$preset/reward_model.yaml" ]; then
  reward_model=$(submit --dependency=afterok:"$merge" slurm/reward_model.sbatch "$preset")
  trained=$trained:$reward_model
fi
if [ ${#rm_coef_list[@]} -gt 0 ]; then
  rloo_rm=$(submit --dependency=afterok:"$reward_model" --job-name=rloo_rm --export=ALL,RLOO_CONFIG=rloo_rm \
    --array=0-$((${#rm_coef_list[@]} - 1)) slurm/rloo.sbatch "$preset" "${rm_coef_list[@]}")
  trained=$trained:$rloo_rm
fi
if [ -f "configs/$preset/preferred_ft.yaml" ]; then
  preferred_ft=$(submit --dependency=afterok:"$merge" slurm/preferred_ft.sbatch "$preset")
  trained=$trained:$preferred_ft
fi
if [ ${#alpha_list[@]} -gt 0 ]; then
  unlikelihood=$(submit --dependency=afterok:"$merge" --array=0-$((${#alpha_list[@]} - 1)) slurm/unlikelihood.sbatch "$preset" "${alpha_list[@]}")
  trained=$trained:$unlikelihood
fi
evaluation=$(submit --dependency=afterok:"$trained" slurm/eval.sbatch "$preset")
printf 'sft %s\npairs %s (array of %s)\nmerge %s\nreference %s\ndpo %s (betas %s)\nrloo %s (KL coefficients %s)\nreward_model %s\nrloo_rm %s (KL coefficients %s)\npreferred_ft %s\nunlikelihood %s (alphas %s)\neval %s\n' \
  "$sft" "$pairs" "$shards" "$merge" "$reference" "$dpo" "$betas" "$rloo" "${coefs:-none}" "$reward_model" "$rloo_rm" "${rm_coefs:-none}" "$preferred_ft" "$unlikelihood" "${alphas:-none}" "$evaluation"
