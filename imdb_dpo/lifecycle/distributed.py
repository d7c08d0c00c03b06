"""Process layout under `accelerate launch` / `torchrun` (one process per GPU, or gloo on CPU)."""

import contextlib
import os

import torch
from accelerate import PartialState


def process_state(use_cpu: bool = False) -> PartialState:
    """The launcher's process group (a single process when started with plain `python`).

    The first call in a process decides its device: the CPU when `use_cpu` (the stage's setting, which a machine
    with a GPU must honour) or when there is no GPU, else the process's GPU. Later calls return that same state,
    as the training stages' `TrainingArguments.distributed_state` does."""
    return PartialState(cpu=use_cpu or not torch.cuda.is_available())


def is_main_process() -> bool:
    return process_state().is_main_process


def any_process(flag: bool) -> bool:
    """True on every process when `flag` is true on any. Call it where all processes meet: ranks that own
    different numbers of batches must not exchange anything inside their batch loops."""
    from accelerate.utils import gather_object

    state = process_state()
    return any(gather_object([flag])) if state.num_processes > 1 else flag


def least_over_processes(value: int) -> int:
    """The smallest of every process's `value` (on every process): e.g. the free memory the pass sizes are fitted to,
    so that all processes of a launch take the same sizes (DDP needs the same accumulation on each)."""
    from accelerate.utils import gather_object

    state = process_state()
    return min(gather_object([value])) if state.num_processes > 1 else value


def sharded_launch() -> str:
    """The launcher's sharding of the model ("FSDP", "DeepSpeed"), "" for one process or DDP (accelerate's settings,
    read from the environment `accelerate launch` sets)."""
    if os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true":
        return "FSDP"
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true":
        return "DeepSpeed"
    return ""


@contextlib.contextmanager
def main_process_first():
    """The main process runs the block first (a data set it loads into the shared cache, which the others then read
    ready-made), then the others. Unlike accelerate's, a main process that raises inside still releases the others,
    which then meet the same error themselves instead of waiting at a barrier until NCCL's timeout."""
    if int(os.environ.get("WORLD_SIZE", "1")) == 1:  # one process: nothing to order (and no state to create here,
        yield  # whose first creation would decide the device before the stage's use_cpu does)
        return
    state = process_state()
    if not state.is_main_process:
        state.wait_for_everyone()
    try:
        yield
    finally:
        if state.is_main_process:
            state.wait_for_everyone()
