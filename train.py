"""One entry point for every method of the registry (imdb_dpo/methods): `python train.py <method> --config <config>`.

    python train.py kto --config configs/gpt2-large/kto.yaml
    python train.py simpo --config configs/gpt2-large/simpo.yaml --betas 2.0

The paper's stages keep their own scripts too (`python dpo.py ...` is `python train.py dpo ...`). README.md's table
of methods says what each optimises and from what data.
"""

import imdb_dpo.lifecycle.one_gpu  # noqa: F401  first: one GPU a stage without a launcher (before CUDA is touched)

import sys

from imdb_dpo.launch.cli import EXIT_USER_ERROR, run_stage
from imdb_dpo.methods import registry


def main(argv: list[str]) -> int:
    name = argv[0] if argv else ""
    method = registry().get(name)
    if method:
        return run_stage(method.main, method.stages, argv[1:], f"train.py {name}")
    problem = f"no method {name!r}" if name and not name.startswith("-") else "no method given"
    print(f"error: {problem}.\nusage: python train.py <method> --config <config.yaml> [--flag value ...], where "
          f"<method> is one of {', '.join(registry())} (e.g. python train.py dpo --config configs/tiny/dpo.yaml)",
          file=sys.stderr)
    return EXIT_USER_ERROR


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
