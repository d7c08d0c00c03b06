"""The tasks of a SLURM array over a stage's sweep: one per (value, seed) of its config, in the order the stage
itself runs them, so that task i of an array is exactly the i-th run of `python <stage>.py --config <config>`.

    python -m imdb_dpo.launch.sweep_tasks configs/gpt2-large/dpo.yaml betas count     # 12: 4 betas x 3 seeds
    python -m imdb_dpo.launch.sweep_tasks configs/gpt2-large/dpo.yaml betas task 5    # --betas 0.1 --seeds 2
    python -m imdb_dpo.launch.sweep_tasks configs/gpt2-large/dpo.yaml betas describe  # betas 0.05 0.1 1.0 5.0 x seeds 0 1 2
    python -m imdb_dpo.launch.sweep_tasks configs/gpt2-large/dpo.yaml dpo count       # the method's own sweep (betas)
    python -m imdb_dpo.launch.sweep_tasks jobs configs/gpt2-large                     # the preset's SLURM jobs, a line each

The field is the sweep's list (betas, kl_coefs, alphas), - for a stage with no sweep (Preferred-FT), or a method's
key (its own sweep, imdb_dpo/methods). A config without the list runs its single value; one without `seeds` runs
one seed. The stage checks the values themselves.
"""

import contextlib
import re
import sys

from imdb_dpo.configuration.arguments import ConfigError, strict_yaml
from imdb_dpo.configuration.errors import UserError

NAMES = {"betas": "betas", "kl_coefs": "KL coefficients", "alphas": "alphas"}


def check_numbers(values: list, key: str, where: str = "") -> None:
    """Refuse a sweep entry that is not a number (YAML reads `1e-1` as text, `true` as a bool); `where` prefixes the
    message (the config's path and a colon)."""
    odd = [v for v in values if isinstance(v, bool) or not isinstance(v, (int, float))]
    if odd:
        raise ConfigError(f"{where}{key} entry {odd[0]!r} is not a number; write each as a number with a dot (YAML "
                          "reads 1e-1 as text: write 1.0e-1 or 0.1)")


def listed(config: dict, path: str, key: str) -> list:
    """The config's list `key`; [None] where it is unset or empty (the stage then runs one value)."""
    values = config.get(key)
    if values is None or values == []:
        return [None]
    if not isinstance(values, list):
        raise ConfigError(f"{path}: {key} is {values!r}, not a list; write {key}: [{values}] (the stage refuses it too)")
    check_numbers(values, key, f"{path}: ")
    if len({repr(v) for v in values}) != len(values):
        raise ConfigError(f"{path}: {key}={values} gives a value twice: two array tasks would train the same run at "
                          "once; give each value once")
    return values


def sweep_runs(values: list, seeds: list) -> list[tuple]:
    """(value, seed) of each run of a sweep, in the order the stage runs them (training_runs.train_sweep): each
    value's seeds in turn."""
    return [(value, seed) for value in values for seed in seeds]


def quiet_registry() -> dict:
    """The registry, read with stdout kept for this module's answer: a library may print on import (wandb's offline
    notice), and the job scripts read stdout."""
    from imdb_dpo.methods import registry

    with contextlib.redirect_stdout(sys.stderr):
        return registry()


def method_sweep(field: str) -> str:
    """A method's key names its sweep's list; any other field is itself."""
    return quiet_registry()[field].sweep if field in quiet_registry() else field


def tasks(path: str, field: str) -> list[tuple]:
    """(value, seed) of each run of the config at `path`, in the stage's order (None: the flag is not needed)."""
    field = method_sweep(field) if field not in (*NAMES, "-") else field
    if field not in (*NAMES, "-"):
        raise ConfigError(f"field {field!r}: name the stage's sweep, one of {', '.join(NAMES)}, or - for a stage "
                          "without one (Preferred-FT)")
    config = strict_yaml(path) or {}
    if not isinstance(config, dict):
        raise ConfigError(f"{path}: the file must be a YAML mapping of key: value")
    other = [name for name in NAMES if name != field and name in config]
    if other:
        raise ConfigError(f"{path} sweeps {other[0]}, not {'nothing' if field == '-' else field}: name {other[0]} as "
                          "the field, or the array would run all of them in every task")
    values = [None] if field == "-" else listed(config, path, field)
    return sweep_runs(values, listed(config, path, "seeds"))


def jobs(folder: str) -> list[str]:
    """The SLURM jobs of the preset in `folder` after its pairs, a tab-separated line each, in the registry's order:
    method, runs, the stages it waits for (comma-separated), its shared pass's name and flags (- where its runs
    share none), and what the runs sweep."""
    import os

    registry = quiet_registry
    if not os.path.isdir(folder):
        raise ConfigError(f"{folder}: no such folder; name a preset's folder of configs, e.g. configs/gpt2-large")
    present = {key for key in registry() if os.path.isfile(os.path.join(folder, f"{key}.yaml"))}
    if not present:
        raise ConfigError(f"{folder} holds no method's config (<method>.yaml, one of {', '.join(registry())}): it is "
                          "not a preset")
    lines = []
    for method in registry().values():
        if method.key not in present:
            continue
        config = os.path.join(folder, f"{method.key}.yaml")
        missing = [need for need in method.needs if need in registry() and need not in present]
        if missing:
            raise ConfigError(f"{config} reads the output of {missing[0]}: add {os.path.join(folder, missing[0])}.yaml "
                              f"to the preset, or remove {method.key}.yaml")
        runs = tasks(config, method.sweep)
        settings = strict_yaml(config) or {}
        shared = (method.shared_pass and len(runs) > 1 and isinstance(settings, dict) and method.shares_pass(settings))
        lines.append("\t".join([method.key, str(len(runs)), ",".join(method.needs),
                                f"{method.key}_{method.shared_pass_name}" if shared else "-",
                                " ".join(method.shared_pass) if shared else "-", describe(config, method.sweep)]))
    return lines


def flags(field: str, value, seed) -> str:
    return " ".join(([f"--{field} {value}"] if value is not None else []) +
                    ([f"--seeds {seed}"] if seed is not None else []))


def describe(path: str, field: str) -> str:
    runs = tasks(path, field)
    values = list(dict.fromkeys(v for v, _ in runs if v is not None))
    seeds = list(dict.fromkeys(s for _, s in runs if s is not None))
    parts = ([f"{NAMES.get(field, field)} {' '.join(map(str, values))}"] if values else []) + (
        [f"seeds {' '.join(map(str, seeds))}"] if seeds else [])
    return " x ".join(parts) or "one run"


def main(argv: list[str]) -> int:
    usage = ("usage: python -m imdb_dpo.launch.sweep_tasks <config> <field, method or -> count | describe | task <index>, "
             "or: python -m imdb_dpo.launch.sweep_tasks jobs <preset folder>")
    if len(argv) == 2 and argv[0] == "jobs":
        try:
            print("\n".join(jobs(argv[1])))
        except UserError as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
        return 0
    if len(argv) < 3 or argv[2] not in ("count", "describe", "task") or (argv[2] == "task") != (len(argv) == 4):
        print(usage, file=sys.stderr)
        return 2
    path, field, what = argv[:3]
    try:
        field = field if field in (*NAMES, "-") else method_sweep(field)
        runs = tasks(path, field)
        if what == "count":
            print(len(runs))
        elif what == "describe":
            print(describe(path, field))
        else:
            if not re.fullmatch(r"[0-9]+", argv[3]) or int(argv[3]) >= len(runs):
                raise ConfigError(f"task {argv[3]!r}: {path} has {len(runs)} runs ({describe(path, field)}), tasks 0 to "
                                  f"{len(runs) - 1}; submit the array with --array=0-{len(runs) - 1}")
            print(flags(field, *runs[int(argv[3])]))
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except OSError as error:
        print(f"error: {path}: cannot read the config ({error.strerror}); name the preset's config file", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
