"""Pass sizes fitted to the card: `auto` for every size that changes no result.

How many rows a pass holds is a performance knob, not a setting of the experiment: gradient accumulation keeps
examples_per_step (transformers divides the loss by the items of the whole step), every sample has its own random
stream (imdb_dpo/models/sampling.py), the KL, reward and reference passes are per row, and activation checkpointing
recomputes what it drops. So a config may say `auto` for any of FITTED, and before a stage loads anything it takes
the largest sizes whose memory estimate (imdb_dpo/planning/costs.py, the one its memory check uses), plus the
allocator's margin, fits the device's free memory: it lowers, one step at a time, the size of whichever step is the
peak, and turns activation checkpointing on only where one row a pass does not fit without it. An explicit number
wins; on a CPU, `auto` is the field's default (capped as below). `plan.py --gpu KIND` fits the same way to a card of
imdb_dpo/planning/cards.py.

`IMDB_DPO_GPU_MEMORY=<GiB>` fits (and checks) against that much free memory instead of the device's, on any device:
to leave room on a shared GPU, to see a smaller card's sizes, and in the tests, which run the tiny preset on a
simulated small card.
"""

import dataclasses
import os

from imdb_dpo.configuration.errors import ConfigError

AUTO = "auto"
MEMORY_VARIABLE = "IMDB_DPO_GPU_MEMORY"
# The most a fit tries of each size. Beyond a few hundred rows a decode step, the KL pass and the classifier are
# compute-bound (docs/cost.md): more rows a pass would only hold more memory. The training pass is capped by its
# share of examples_per_step instead (a pass never spans two optimizer steps).
MOST = {"batch_size": 256, "kl_batch_size": 256, "reward_batch_size": 512, "precompute_ref_batch_size": 512}
ROWS = "per_device_train_batch_size"
CHECKPOINTING = "activation_checkpointing"
FITTED = (ROWS, CHECKPOINTING, *MOST)

LAST: dict = {}  # this process's last fit, as its manifests record it ("performance")


def take_auto(config: dict, argv: list[str], known: set[str]) -> tuple[dict, list[str], set[str]]:
    """(config, argv) without the `auto` values of FITTED sizes, and the names that are auto: given so in the config
    and not overridden on the command line, or given so on the command line. What is removed falls back to the
    field's default, the size a CPU uses (activation checkpointing: off). Any other field's `auto` is left to its
    own parser (TRL's dtype takes auto; an int setting refuses it, naming the setting)."""
    autos = {key for key, value in config.items() if key in FITTED and _is_auto(value)}
    config = {key: value for key, value in config.items() if key not in autos}
    kept, i = [], 0
    while i < len(argv):
        arg = argv[i]
        name, value, width = None, None, 1
        if arg.startswith("--"):
            name = arg[2:].split("=", 1)[0].replace("-", "_")
            if "=" in arg:
                value = arg.split("=", 1)[1]
            elif i + 1 < len(argv):
                value, width = argv[i + 1], 2
        if name in known and name in FITTED:
            autos.discard(name)  # given on the command line: its value wins over the config's
            if value is not None and _is_auto(value):
                autos.add(name)
                config.pop(name, None)
                i += width
                continue
        kept.append(arg)
        i += 1
    if CHECKPOINTING in autos:  # off: TRL's configs would otherwise turn the deprecated gradient_checkpointing on
        config[CHECKPOINTING] = False
    return config, kept, autos


def _is_auto(value) -> bool:
    return isinstance(value, str) and value.strip().lower() == AUTO


def auto_sizes(obj) -> tuple[str, ...]:
    """The fields of a parsed config that are `auto` (parse_config marks them)."""
    return getattr(obj, "auto_sizes", ())


def check_rows_auto(script_args, training_args) -> None:
    if ROWS in auto_sizes(training_args) and script_args.examples_per_step is None:
        raise ConfigError(f"{ROWS}: auto needs examples_per_step, the examples of one optimizer step, which the fit "
                          "splits into passes; set examples_per_step (the presets' 64), or give "
                          f"{ROWS} a number")


@dataclasses.dataclass
class Knob:
    """One `auto` size of one config: the sizes it may take, largest first."""
    label: str
    obj: object
    name: str

    def candidates(self) -> list:
        if self.name == CHECKPOINTING:
            return [False, True]
        if self.name == ROWS:  # the divisors that split the step's share evenly, as batch_size.derived_batch does
            from imdb_dpo.configuration.batch_size import per_process_batch

            share = self.obj.per_device_train_batch_size * self.obj.gradient_accumulation_steps
            return sorted({per_process_batch(share, 1, most)[0] for most in range(1, share + 1)}, reverse=True)
        most = MOST[self.name]
        prompts = getattr(self.obj, "num_prompts", None)
        if prompts:  # a pass of more rows than there are would be a pass of all of them
            most = min(most, prompts * (1 if self.name == "batch_size" else self.obj.samples_per_prompt))
        sizes = [most] + [2**k for k in range(most.bit_length() - 1, -1, -1) if 2**k < most]
        return sizes

    @property
    def value(self):
        return getattr(self.obj, self.name)

    def set(self, value) -> None:
        if self.name == CHECKPOINTING:  # the deprecated alias mirrors it, as TrainingArguments.__post_init__ leaves it
            self.obj.activation_checkpointing = self.obj.gradient_checkpointing = value
        elif self.name == ROWS:
            set_rows(self.obj, value)
        else:
            setattr(self.obj, self.name, value)

    def lower(self) -> bool:
        """Take the next smaller size (checkpointing: on); False where this is the least."""
        sizes = self.candidates()
        at = sizes.index(self.value) if self.value in sizes else -1
        if at + 1 >= len(sizes):
            return False
        self.set(sizes[at + 1])
        return True


def set_rows(training_args, rows: int) -> None:
    """`rows` a pass and the accumulation that keeps the step's examples (and, for the trainers that sample a
    generation batch, its steps_per_generation and size), as batch_size.derived_batch derives them."""
    share = training_args.per_device_train_batch_size * training_args.gradient_accumulation_steps
    ratio = None
    if getattr(training_args, "steps_per_generation", None):
        ratio = training_args.steps_per_generation // training_args.gradient_accumulation_steps
    training_args.per_device_train_batch_size = rows
    training_args.gradient_accumulation_steps = share // rows
    if ratio:
        training_args.steps_per_generation = ratio * training_args.gradient_accumulation_steps
        training_args.generation_batch_size = rows * training_args.world_size * training_args.steps_per_generation


@dataclasses.dataclass
class Fit:
    """What a fit chose: each auto size, the budget it fitted, and whether the estimate fits it."""
    sizes: dict
    budget: int | None
    where: str
    fits: bool = True

    def describe(self) -> str:
        parts = []
        for label, value in self.sizes.items():
            if label.endswith(CHECKPOINTING):
                parts.append(f"{label} {'on' if value else 'off'}")
            else:  # None: the trainer's own default (DPO's reference pass: per_device_eval_batch_size)
                parts.append(f"{label} {'its default' if value is None else value}")
        return ", ".join(parts)


def knobs_of(configs: dict) -> list[Knob]:
    return [Knob(f"{label}.{name}" if label else name, obj, name)
            for label, obj in configs.items() if obj is not None for name in auto_sizes(obj)]


def fit(estimate, budget: int | None, where: str, configs: dict, margin: float):
    """Set every auto size of `configs` ({label: parsed config}) to the largest whose estimate (`estimate()`, a
    costs.Peak read from those configs) times 1 + margin fits `budget` bytes; without a budget (a CPU), the
    defaults stay. Returns (the peak at the chosen sizes, the Fit)."""
    knobs = knobs_of(configs)
    if knobs and budget is not None:
        for knob in knobs:
            knob.set(knob.candidates()[0])
        by_field = {(id(k.obj), k.name): k for k in knobs}
        while True:
            peak = estimate()
            if peak.memory.total * (1 + margin) <= budget:
                break
            knob = by_field.get((id(peak.knob[0]), peak.knob[1])) if peak.knob else None
            if knob and knob.lower():
                continue
            checkpointing = by_field.get((id(peak.knob[0]), CHECKPOINTING)) if peak.knob else None
            if peak.knob and peak.knob[1] == ROWS and checkpointing and not checkpointing.value:
                checkpointing.set(True)  # only where the fewest rows a pass do not fit without it: it costs a third more
                if knob:
                    knob.set(knob.candidates()[0])
                continue
            break
    peak = estimate()
    result = Fit({k.label: k.value for k in knobs}, budget, where,
                 budget is None or peak.memory.total * (1 + margin) <= budget)
    return peak, result
