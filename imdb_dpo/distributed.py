"""Process layout under `accelerate launch` / `torchrun` (one process per GPU, or gloo on CPU)."""

import torch
from accelerate import PartialState


def process_state() -> PartialState:
    """The launcher's process group (a single process when started with plain `python`)."""
    return PartialState(cpu=not torch.cuda.is_available())


def is_main_process() -> bool:
    return process_state().is_main_process


def any_process(flag: bool) -> bool:
    """True on every process when `flag` is true on any. Call it where all processes meet: ranks that own
    different numbers of batches must not exchange anything inside their batch loops."""
    from accelerate.utils import gather_object

    state = process_state()
    return any(gather_object([flag])) if state.num_processes > 1 else flag
