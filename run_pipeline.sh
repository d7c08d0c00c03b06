#!/usr/bin/env bash
# Runs every stage that configs/<preset>/ defines, in order. Each stage skips the work it already
# finished and resumes unfinished work, so running this again after an interruption simply continues.
# Outputs go to $OUTPUT_ROOT/outputs/<preset>/ and pair files to $OUTPUT_ROOT/generations/<preset>/
# (OUTPUT_ROOT defaults to this repository).
set -euo pipefail
usage="usage: ./run_pipeline.sh <preset> [--plan]   (a folder of configs/, e.g. tiny or gpt2-large; --plan prints what it will cost and runs nothing)"
preset=${1:?$usage}
repo=$(cd "$(dirname "$0")" && pwd)
export OUTPUT_ROOT=$(realpath -m "${OUTPUT_ROOT:-$repo}")
configs=$repo/configs/$preset
python=${PYTHON:-python}
case "$#:${2:-}" in
  1:) ;;
  2:--plan) [ -d "$configs" ] && folder=$preset || folder=$(realpath -m "$preset")  # a preset's name, or a folder
            cd "$repo" && exec "$python" plan.py "$folder" ;;
  *) echo "$usage" >&2; exit 2 ;;
esac
[ -d "$configs" ] || { echo "no preset '$preset': $configs does not exist" >&2; exit 2; }
cd "$repo"

if [ -f "$configs/base.yaml" ]; then
  echo "== tiny base model and data ($configs/base.yaml)"
  "$python" -m imdb_dpo.tiny --config "$configs/base.yaml"
fi
# After DPO come the paper's baselines (a preset without their configs skips them): RLOO on the true reward,
# the learned reward model and RLOO on it (rloo_rm.yaml, run by rloo.py), Preferred-FT and Unlikelihood.
for stage in sft preference_pairs dpo rloo reward_model rloo_rm preferred_ft unlikelihood eval; do
  script=$stage.py
  [ "$stage" = rloo_rm ] && script=rloo.py
  if [ -f "$configs/$stage.yaml" ]; then
    echo "== $stage ($configs/$stage.yaml)"
    started=$SECONDS
    "$python" "$script" --config "$configs/$stage.yaml"
    echo "== $stage: $((SECONDS - started)) s"
  fi
done
echo "== done in $SECONDS s: outputs in $OUTPUT_ROOT/outputs/$preset"
