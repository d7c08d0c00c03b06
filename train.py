"""One entry point for every trained method on the frontier: `python train.py <method> --config <config>`.

    python train.py kto --config configs/gpt2-large/kto.yaml
    python train.py simpo --config configs/gpt2-large/simpo.yaml --betas 2.0

The paper's stages keep their own scripts (dpo.py, rloo.py, reward_model.py, preferred_ft.py, unlikelihood.py) and
are run the same way through here (`train.py dpo ...` is `dpo.py ...`); the methods that followed DPO live in
imdb_dpo/methods as recipes over one stage (imdb_dpo/methods/recipe.py). README.md's table of methods says what each
optimises and from what data.
"""

import imdb_dpo.one_gpu  # noqa: F401  first: one GPU a stage without a launcher (before CUDA is touched)

import importlib
import sys

from imdb_dpo.cli import EXIT_USER_ERROR, run_stage
from imdb_dpo.methods.kto import RECIPE as KTO
from imdb_dpo.methods.online_dpo import RECIPE as ONLINE_DPO
from imdb_dpo.methods.recipe import run_recipe
from imdb_dpo.methods.reference_free import RECIPES as REFERENCE_FREE

RECIPES = {"kto": KTO, **REFERENCE_FREE, "online_dpo": ONLINE_DPO}
SCRIPTS = ("dpo", "rloo", "reward_model", "preferred_ft", "unlikelihood")  # the paper's stages: <name>.py
USAGE = (f"usage: python train.py <method> --config <config.yaml> [--flag value ...], where <method> is one of "
         f"{', '.join(SCRIPTS + tuple(RECIPES))} (e.g. python train.py kto --config configs/tiny/kto.yaml)")


def main(argv: list[str]) -> int:
    method = argv[0] if argv else ""
    if method in SCRIPTS:
        script = importlib.import_module(method)
        return run_stage(script.main, script.STAGES, argv[1:], f"train.py {method}")
    if method in RECIPES:
        recipe = RECIPES[method]
        return run_stage(lambda *parsed: run_recipe(recipe, *parsed), recipe.stages, argv[1:], f"train.py {method}")
    problem = f"no method {method!r}" if method and not method.startswith("-") else "no method given"
    print(f"error: {problem}.\n{USAGE}", file=sys.stderr)
    return EXIT_USER_ERROR


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
