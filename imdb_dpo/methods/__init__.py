"""The registry of methods: every module of this package that declares `METHODS` adds its methods, and every list of
methods in the project (the pipeline's stages, train.py's choices, the plan's rows, the evaluation's folders, the
plot's families, the GPU check, the SLURM arrays and --gpus runs) is read from here.

A method is run by `python train.py <key> --config configs/<preset>/<key>.yaml`; its runs are the folders of
`<runs_root>/<key>/` whose manifest's `stage` is its key, which is how eval.py finds them. To add one, write a module
here that declares a `Method`, and its two configs (README.md, "Add your own method", walks through one).
"""

import dataclasses
import functools
import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass(frozen=True)
class GPUCheck:
    """How benchmarks/gpu_check.py runs one short run of a method beside the preset's config: its flags
    ({classifier}, {reward_model} and {frontier_eval} are the check's own), those on a GPU and in the CPU dry run
    alone, the run folder it makes, and whether the CPU dry run (CI) runs it. With `like`, the check does not run it
    and projects its hours at that method's rate (the same trainer and shapes)."""
    flags: tuple[str, ...] = ()
    run: str = ""
    on_cpu: bool = False
    gpu_flags: tuple[str, ...] = ()
    cpu_flags: tuple[str, ...] = ()
    like: str = ""


@dataclass(frozen=True, kw_only=True)
class Method:
    key: str         # configs/<preset>/<key>.yaml, `train.py <key>`, the manifest's stage, summary.csv's `method`
    title: str       # how tables, legends and messages name it
    order: int       # its place in the pipeline, the plan and the report (after SFT and the pairs, before eval)
    stages: tuple    # the dataclasses TrlParser reads its config and command line into
    main: Callable   # main(*parsed) -> exit status: the whole stage (a sweep of runs)
    plan: Callable   # plan(preset, key, *parsed) -> imdb_dpo.planning.plan.Row: its runs' steps, disk, memory and hours
    sweep: str = "betas"  # the config's list of runs (one run per value and seed); "-": none, a run per seed
    needs: tuple[str, ...] = ("preference_pairs",)  # the stages whose outputs it reads (it starts after them)
    shared_pass: tuple[str, ...] = ()  # flags of a pass its runs share, run once before them where the config asks
    shared_pass_name: str = "shared"  # that pass's stage is <key>_<name> (its log, its SLURM job)
    shares_pass: Callable = lambda config: False  # (its config as a dict) -> whether the runs share that pass
    on_frontier: bool = True  # False: a stage other methods read (the learned reward model), not a frontier point
    parameter: str = ""  # what summary.csv's `beta` column holds for it ("" when it has none)
    parameter_field: str = ""  # the field of its trainer config that holds that parameter
    style: dict = field(default_factory=dict)  # the plot family: a colour map (a shade per run) or one colour
    loss_field: str = ""  # the trainer config's loss choice, where the method has several (each its own family)
    default_loss: str = "sigmoid"  # the loss that is the method itself (any other is a family of its own)
    check: Callable = lambda script_args, training_args: None  # what the plan refuses before any work
    gpu_check: GPUCheck | None = None  # None: benchmarks/gpu_check.py does not run it
    recipe: object = None  # a method run by methods/recipe.py: its Recipe (examples, trainer, memory, run name)
    # What its plan counts in stage 2's completions.jsonl: (its records) -> {name: count}, and the most of each that
    # stage 2's settings allow before the file exists: (prompts, samples per prompt) -> {name: count}.
    completion_counts: Callable | None = None
    most_completion_counts: Callable | None = None

    @property
    def command(self) -> str:
        return f"train.py {self.key}"


@functools.cache
def registry() -> dict[str, Method]:
    """Every method, by key, in pipeline order. Read on first use (not at import): the method modules import the
    stages' machinery, which looks methods up here."""
    found = []
    for module in pkgutil.iter_modules(__path__):
        found += getattr(importlib.import_module(f"{__name__}.{module.name}"), "METHODS", ())
    keys = [m.key for m in found]
    assert len(set(keys)) == len(keys), f"a method key is declared twice: {keys}"
    return {m.key: m for m in sorted(found, key=lambda m: m.order)}


def method(key: str) -> Method | None:
    return registry().get(key)


def frontier_methods() -> list[Method]:
    """The methods whose runs are points of the frontier, in order."""
    return [m for m in registry().values() if m.on_frontier]


def with_key(method_: Method, **changes) -> Method:
    """A second method on the same machinery (e.g. ORPO from the base model)."""
    return dataclasses.replace(method_, **changes)
