"""Checkpoints of the runs that the frontier evaluates: where they are, which one resumes, which steps to save.

The reward-versus-KL frontier is traced by evaluating the policy at the steps of `checkpoint_schedule` (in memory
with frontier_eval, else from checkpoints saved there), so they decide where its points lie. Saving every
`save_steps` puts the first point far from the SFT model; 'log+steps' (the default) adds log-spaced early steps
(1, 2, 4, ...), but under a warm-up those learn almost nothing; 'lr-log' (the presets) places the points where
the learning so far, the sum of the learning rates, doubles. With frontier_eval, checkpoints only resume a run
(`ResumeCheckpoints`, every resume_minutes).
"""

import bisect
import glob
import json
import math
import os
import re
import shutil
import time

import torch
from transformers import TrainerCallback

from imdb_dpo.configuration.arguments import ConfigError

SCHEDULES = {
    "lr-log": "the steps where the learning so far (the sum of the learning rates of the steps taken) reaches 1/2, "
              "1/4, 1/8, ... of the whole run's: schedule_points points, each after twice the learning of the one "
              "before, the last step the last of them",
    "log+steps": "steps 1, 2, 4, ... below save_steps, then every save_steps, and the last step",
    "log": "steps 1, 2, 4, 8, ... to the end, and the last step: about log2(steps) + 2 checkpoints a run, whatever its length",
    "steps": "every save_steps and the last step (the Trainer's own schedule)",
}


def learning_so_far(training_args, max_steps: int) -> list[float]:
    """`[C_0, ..., C_max_steps]`: C_n is the sum of the learning rates (relative to learning_rate) of the first n
    optimizer steps, from the scheduler the Trainer builds from the same settings. Under a warm-up the first steps
    learn almost nothing: C_1 is 0."""
    from transformers import get_scheduler

    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    try:
        scheduler = get_scheduler(training_args.lr_scheduler_type, optimizer,
                                  num_warmup_steps=training_args.get_warmup_steps(max_steps),
                                  num_training_steps=max_steps, scheduler_specific_kwargs=training_args.lr_scheduler_kwargs)
    except (ValueError, TypeError) as error:
        raise ConfigError(f"checkpoint_schedule=lr-log needs the learning rates before training, which "
                          f"lr_scheduler_type={training_args.lr_scheduler_type!r} does not give ({error}); use another "
                          "checkpoint_schedule") from None
    sums = [0.0]
    for _ in range(max_steps):
        sums.append(sums[-1] + optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return sums


def checkpoint_schedule(kind: str, max_steps: int, save_steps: int, training_args=None, points: int = 11) -> list[int]:
    """The optimizer steps at which a run of `max_steps` steps is a point of the frontier, in order (`training_args`
    and `points` for 'lr-log')."""
    if kind not in SCHEDULES:
        raise ConfigError(f"checkpoint_schedule={kind!r}: use one of {sorted(SCHEDULES)}")
    if kind == "lr-log":
        learned = learning_so_far(training_args, max_steps)
        # The first step at which each target is reached; targets closer than a step share it.
        return sorted({max(bisect.bisect_left(learned, learned[-1] / 2 ** k), 1) for k in range(points)} | {max_steps})
    powers = {2 ** i for i in range(max_steps.bit_length()) if 2 ** i <= max_steps}
    every = set(range(save_steps, max_steps + 1, save_steps))
    if kind == "log":
        steps = powers
    elif kind == "steps":
        steps = every
    else:
        steps = {s for s in powers if s < save_steps} | every
    return sorted(steps | {max_steps})


def schedule_of(script_args, training_args):
    """The run's schedule as a function of its length (`max_steps` -> steps), or None for a run without one."""
    kind = getattr(script_args, "checkpoint_schedule", None)
    if kind is None:
        return None
    points = getattr(script_args, "schedule_points", 11)
    return lambda max_steps: checkpoint_schedule(kind, max_steps, save_interval(training_args.save_steps, max_steps),
                                                 training_args, points)


def save_interval(save_steps: float, max_steps: int) -> int:
    """The Trainer's save_steps in steps: a number below 1 is a fraction of the run."""
    return int(save_steps) if save_steps >= 1 else max(1, round(save_steps * max_steps))


def off_schedule(checkpoint: str, schedule) -> bool:
    """Whether a complete checkpoint was saved by a stop request at a step the run's `schedule` (see `schedule_of`)
    does not name: it exists only to resume the run, so it is neither evaluated nor kept once the run has moved past
    it. None: the run has no schedule (the Trainer's own saves)."""
    if schedule is None:
        return False
    with open(os.path.join(checkpoint, "trainer_state.json")) as f:
        state = json.load(f)
    return state["global_step"] not in schedule(state["max_steps"])


def check_schedule(script_args, training_args) -> None:
    kind = script_args.checkpoint_schedule
    checkpoint_schedule(kind, 2, 1, training_args, 1)  # the name, and that the learning rates are known before training
    points = getattr(script_args, "schedule_points", 11)
    if isinstance(points, bool) or not isinstance(points, int) or points < 1:
        raise ConfigError(f"schedule_points={points!r}: a whole number >= 1 (the points of an lr-log schedule)")
    check_resume_minutes(script_args)
    if training_args.save_strategy != "steps":
        raise ConfigError(f"checkpoint_schedule={kind!r} needs save_strategy: steps (got {training_args.save_strategy!r}); "
                          "the frontier is traced by the checkpoints")


def check_resume_minutes(script_args) -> None:
    """resume_minutes: a number of minutes >= 0, and only where it does something (with frontier_eval)."""
    minutes = script_args.resume_minutes
    if isinstance(minutes, bool) or not isinstance(minutes, (int, float)) or not (math.isfinite(minutes) and minutes >= 0):
        raise ConfigError(f"resume_minutes={minutes!r}: the minutes between the checkpoints that resume a run, a number "
                          ">= 0 (0: none but a stop's); fix it in the config or on the command line")
    default = type(script_args).__dataclass_fields__["resume_minutes"].default
    if minutes != default and not script_args.frontier_eval:
        raise ConfigError(f"resume_minutes={minutes:g} does nothing without frontier_eval: a checkpoint is then saved at "
                          "each point of checkpoint_schedule (and on a stop) and kept for eval.py. Set frontier_eval "
                          "to the evaluation's config, or leave resume_minutes out")


class ScheduledCheckpoints(TrainerCallback):
    """Saves at exactly the steps of `checkpoint_schedule` (a stop request still saves where it stops).

    It must come before `SaveAndStopOnSignal` among the callbacks: it decides `should_save` for the step, and the
    stop request may then add a save."""

    def __init__(self, schedule):
        self.schedule = schedule
        self.steps: set[int] = set()

    def on_train_begin(self, args, state, control, **kwargs):
        self.steps = set(self.schedule(state.max_steps))

    def on_step_end(self, args, state, control, **kwargs):
        control.should_save = state.global_step in self.steps
        return control


class ResumeCheckpoints(TrainerCallback):
    """Where the policy is evaluated in memory, checkpoints only resume a run: one every `minutes` of it (0: none but a
    stop's), each deleting the one before once it is complete. Every process takes the same decision."""

    def __init__(self, minutes: float):
        self.minutes, self.last = minutes, time.monotonic()

    def on_train_begin(self, args, state, control, **kwargs):
        self.last = time.monotonic()

    def on_step_end(self, args, state, control, **kwargs):
        from imdb_dpo.lifecycle.preemption import on_any_rank

        control.should_save = on_any_rank(self.minutes > 0 and time.monotonic() - self.last >= 60 * self.minutes)
        return control

    def on_save(self, args, state, control, **kwargs):
        self.last = time.monotonic()
        if state.is_world_process_zero:
            complete = [step for step, path in checkpoint_steps(args.output_dir) if is_complete(path)]
            drop_checkpoints(args.output_dir, keep=set(complete[-1:]))


def checkpoint_steps(run_dir: str) -> list[tuple[int, str]]:
    """(step, path) of every `checkpoint-N` directory of a run, in step order."""
    found = []
    for path in glob.glob(os.path.join(run_dir, "checkpoint-*")):
        match = re.fullmatch(r"checkpoint-(\d+)", os.path.basename(path))
        if match and os.path.isdir(path):
            found.append((int(match.group(1)), path))
    return sorted(found)


def drop_checkpoints(run_dir: str, keep=()) -> None:
    """Delete every checkpoint of a run's folder but those of the steps in `keep`, and whatever a kill left of an
    earlier such deletion: each is renamed to a hidden name first, so that no half-deleted checkpoint ever looks
    like one."""
    for step, path in checkpoint_steps(run_dir):
        if step not in keep:
            os.rename(path, os.path.join(run_dir, f".checkpoint-{step}.deleting"))
    for path in glob.glob(os.path.join(run_dir, ".checkpoint-*.deleting")):
        shutil.rmtree(path)


WEIGHT_FILES = ("*.safetensors", "*.safetensors.index.json", "pytorch_model*.bin", "adapter_model.bin")


def drop_weights(run_dir: str) -> None:
    """Delete the weights of the model saved in `run_dir` itself (not its checkpoints'), keeping its config,
    tokenizer, trainer state and manifest."""
    for pattern in WEIGHT_FILES:
        for path in glob.glob(os.path.join(run_dir, pattern)):
            os.remove(path)


def is_complete(checkpoint: str) -> bool:
    """Whether the Trainer finished writing `checkpoint`: it writes `trainer_state.json` last."""
    return os.path.isfile(os.path.join(checkpoint, "trainer_state.json"))


def resumable_checkpoint(run_dir: str) -> str | None:
    """The newest checkpoint the Trainer finished writing, or None. A checkpoint without `trainer_state.json` was cut
    short (a kill or a full disk during the save) and is passed over; resuming rewrites it when training reaches that
    step again."""
    complete = [path for _, path in checkpoint_steps(run_dir) if is_complete(path)]
    if complete and int(os.environ.get("RANK", "0")) == 0:
        print(f"resuming {run_dir} from {os.path.basename(complete[-1])}", flush=True)
    return complete[-1] if complete else None


class DropOptimizerFromOldCheckpoints(TrainerCallback):
    """Keeps every checkpoint's weights for the evaluation but the optimizer state of the newest one only,
    which is all that resuming needs (for GPT-2 Large this saves about 6 GB a checkpoint)."""

    def on_save(self, args, state, control, **kwargs):
        if not state.is_world_process_zero:
            return
        for _, path in checkpoint_steps(args.output_dir)[:-1]:
            for name in ("optimizer.pt", "optimizer.bin"):
                if os.path.exists(os.path.join(path, name)):
                    os.remove(os.path.join(path, name))
