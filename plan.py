"""The plan of a preset before any work: per stage its runs, optimizer steps, checkpoints, disk written and kept,
peak GPU memory and GPU hours on one H100 (or the card --gpu names), and the totals (imdb_dpo/planning/plan.py computes them).

    python plan.py gpt2-large            # or: ./run_pipeline.sh gpt2-large --plan
    python plan.py tiny
    python plan.py path/to/my_preset     # any folder of stage configs named as configs/<preset>/ names them
    python plan.py gpt2-large --gpus 8   # also the wall-clock hours on one node with 8 GPUs
    python plan.py gpt2-large --gpu a100-40gb   # the pass sizes, peaks and hours on another card
"""

import dataclasses
import sys

from imdb_dpo.launch.cli import run_stage
from imdb_dpo.configuration.arguments import ConfigError
from imdb_dpo.planning import cards
from imdb_dpo.planning.plan import build, render


@dataclasses.dataclass
class PlanArguments:
    preset: str = dataclasses.field(default="", metadata={"help": "A folder of configs/, e.g. gpt2-large or tiny."})
    eval_precision: str = dataclasses.field(
        default="", metadata={"help": "Plan every evaluation (eval.yaml and each stage's frontier_eval) at this "
                                      "eval_precision, fp32 or tf32, instead of the configs' own."})
    gpu: str = dataclasses.field(
        default="h100", metadata={"help": "The card of each run: its memory fits the auto pass sizes and its datasheet "
                                          "rates time the stages (h100, h200, a100-80gb, a100-40gb, l40s, rtx-a6000, "
                                          "rtx4090, rtx3090: imdb_dpo/planning/cards.py)."})
    gpus: str = dataclasses.field(
        default="", metadata={"help": "Also print the wall-clock hours on one node with this many GPUs, as "
                                      "./run_pipeline.sh <preset> --gpus N runs it."})


def main(args: PlanArguments) -> int:
    if not args.preset:
        raise ConfigError("name the preset: python plan.py --preset gpt2-large (a folder of configs/)")
    if args.eval_precision:
        from imdb_dpo.configuration.precision import EVAL_PRECISIONS

        if args.eval_precision not in EVAL_PRECISIONS:
            raise ConfigError(f"--eval_precision {args.eval_precision!r}: plan every evaluation at fp32 or tf32, or "
                              "leave the flag out for the configs' own eval_precision")
    overrides = {"eval_precision": args.eval_precision} if args.eval_precision else {}
    preset = build(args.preset, overrides, cards.card(args.gpu))
    if args.gpus:
        from imdb_dpo.launch.gpu_pool import parse_gpus

        preset.gpus = parse_gpus(args.gpus)
    print(render(preset))
    return 0


if __name__ == "__main__":
    argv = sys.argv[1:]
    if argv and not argv[0].startswith("-"):
        argv = ["--preset", argv[0], *argv[1:]]
    sys.exit(run_stage(main, (PlanArguments,), argv))

