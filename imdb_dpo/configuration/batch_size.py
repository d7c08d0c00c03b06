"""Examples per optimizer step: a setting of the run, the same on one process or eight.

TrainingArguments count a step's examples as per_device_train_batch_size x gradient_accumulation_steps x processes,
so the same config on 8 GPUs would be another experiment (8 times the batch, an eighth of the steps, a warm-up longer
than the run). Here `examples_per_step` is what a run is, and what each process does to get there is derived:
per_device_train_batch_size is the most rows one forward pass may hold (what the memory check counts), and
gradient accumulation makes up the rest. Unset, it is per_device_train_batch_size x gradient_accumulation_steps: the
config's meaning on one process.
"""

from dataclasses import dataclass, field

from transformers import TrainingArguments

from imdb_dpo.configuration.errors import ConfigError


@dataclass
class BatchArguments:
    examples_per_step: int | None = field(
        default=None,
        metadata={"help": "Examples per optimizer step over all processes (pairs, reviews, completions or prompts, as "
                          "the stage trains on), whatever the number of processes: per_device_train_batch_size is then "
                          "the most rows a process takes in one pass and gradient accumulation is derived. Unset: "
                          "per_device_train_batch_size x gradient_accumulation_steps."},
    )


def per_process_batch(examples: int, processes: int, most_rows: int) -> tuple[int, int]:
    """(rows a pass, passes a step) for one process: the fewest passes of at most `most_rows` rows that split its
    share of `examples` evenly."""
    share = examples // processes
    passes = -(-share // most_rows)
    while share % passes:
        passes += 1
    return share // passes, passes


def derived_batch(script_args, training_args: TrainingArguments) -> dict:
    """The per_device_train_batch_size and gradient_accumulation_steps that give `examples_per_step` on this many
    processes (and, for a trainer that samples one generation batch per step, its steps_per_generation), or a
    ConfigError naming what to change. Sets script_args.examples_per_step to the value it resolves to."""
    rows, accumulation = training_args.per_device_train_batch_size, training_args.gradient_accumulation_steps
    if accumulation < 1:
        raise ConfigError(f"gradient_accumulation_steps={accumulation}: must be a finite number > 0")
    examples = script_args.examples_per_step
    if examples is None:
        examples = rows * accumulation
    elif accumulation != 1:
        raise ConfigError(f"examples_per_step={examples} and gradient_accumulation_steps={accumulation} are both set: "
                          "accumulation is derived from examples_per_step and the number of processes; remove "
                          "gradient_accumulation_steps (per_device_train_batch_size is the most rows a pass holds)")
    if rows < 1:
        raise ConfigError(f"per_device_train_batch_size={rows}: must be a finite number > 0 (the most rows a pass "
                          "holds)")
    if examples < 1:
        raise ConfigError(f"examples_per_step={examples}: must be a finite number > 0 (examples per optimizer step)")
    processes = training_args.world_size
    if examples % processes:
        raise ConfigError(f"examples_per_step={examples} does not divide among {processes} process(es): choose a "
                          f"multiple of {processes}, or launch a number of processes that divides {examples}")
    script_args.examples_per_step = examples
    most = rows
    rows, accumulation = per_process_batch(examples, processes, rows)
    if accumulation > 1 and rows < most // 2:  # e.g. a prime share: many small passes, slow
        print(f"note: examples_per_step={examples} on {processes} process(es) splits evenly only into {accumulation} "
              f"passes of {rows} rows (per_device_train_batch_size allows {most}); a share with a divisor near "
              f"{most} runs faster")
    derived = {"per_device_train_batch_size": rows, "gradient_accumulation_steps": accumulation}
    # RLOO-style trainers sample one generation batch per optimizer step unless told otherwise; their __post_init__ set
    # steps_per_generation from the accumulation it saw.
    if getattr(training_args, "steps_per_generation", None) is not None:
        ratio, left = divmod(training_args.steps_per_generation, training_args.gradient_accumulation_steps)
        if left:
            raise ConfigError(f"steps_per_generation={training_args.steps_per_generation} is not a multiple of "
                              f"gradient_accumulation_steps={training_args.gradient_accumulation_steps}: the "
                              "generation batch would not span whole optimizer steps")
        derived.update(steps_per_generation=ratio * accumulation, generation_batch_size=None)
    return derived
