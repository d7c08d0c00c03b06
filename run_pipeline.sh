#!/usr/bin/env bash
# Runs every stage that configs/<preset>/ defines, in order. Each stage skips the work it already
# finished and resumes unfinished work, so running this again after an interruption simply continues.
# Outputs go to $OUTPUT_ROOT/outputs/<preset>/ and pair files to $OUTPUT_ROOT/generations/<preset>/
# (OUTPUT_ROOT defaults to this repository).
set -euo pipefail
usage="usage: ./run_pipeline.sh <preset> [--plan [--gpu KIND]] [--gpus N]   (a folder of configs/, e.g. tiny or gpt2-large; --plan prints what it will cost and runs nothing, --gpu KIND on that card (h100, a100-40gb, rtx4090, ...: python plan.py --help); --gpus N runs N runs at once, one per GPU of this node, each logged to \$OUTPUT_ROOT/outputs/<preset>/logs/)"
preset=${1:?$usage}
case "$preset" in -h|--help) echo "$usage"; exit 0 ;; esac
shift
plan=0 gpus=() gpu=()
while [ $# -gt 0 ]; do
  case "$1" in
    --plan) plan=1 ;;
    --gpus) gpus=(--gpus "${2:-}"); [ $# -gt 1 ] && shift ;;  # the value is checked by the Python side
    --gpus=*) gpus=(--gpus "${1#--gpus=}") ;;
    --gpu) gpu=(--gpu "${2:-}"); [ $# -gt 1 ] && shift ;;  # the card a plan is for: plan.py checks the name
    --gpu=*) gpu=(--gpu "${1#--gpu=}") ;;
    -h|--help) echo "$usage"; exit 0 ;;
    *) echo "$usage" >&2; exit 2 ;;
  esac
  shift
done
repo=$(cd "$(dirname "$0")" && pwd)
export OUTPUT_ROOT=$(realpath -m "${OUTPUT_ROOT:-$repo}")
configs=$repo/configs/$preset
python=${PYTHON:-python}
[ -d "$configs" ] && folder=$preset || folder=$(realpath -m -- "$preset")  # a preset's name, or a folder
# plan.py takes --gpus N too: the wall-clock time of the runs on N GPUs.
if [ "$plan" = 1 ]; then cd "$repo" && exec "$python" plan.py "$folder" ${gpu[@]+"${gpu[@]}"} ${gpus[@]+"${gpus[@]}"}; fi
# A run fits its pass sizes to the GPU it finds (configs say auto); --gpu only names the card a plan is for.
if [ ${#gpu[@]} -gt 0 ]; then echo "--gpu plans for a card (with --plan); a run fits its pass sizes to the GPU it is on" >&2; exit 2; fi
[ -d "$configs" ] || [ -d "$folder" ] || { echo "no preset '$preset': $configs does not exist" >&2; exit 2; }
cd "$repo"
# Every stage whose config the preset has, in order (imdb_dpo/launch/pipeline.py: sft, pairs, every method of the
# registry, eval); on a CPU machine in one process, with a GPU each stage in a fresh one;
# with --gpus N, N runs at once, one per GPU (imdb_dpo/launch/gpu_pool.py).
exec "$python" -m imdb_dpo.launch.pipeline "$folder" ${gpus[@]+"${gpus[@]}"}
