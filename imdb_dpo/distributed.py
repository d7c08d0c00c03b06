"""Process layout under `accelerate launch` / `torchrun` (one process per GPU, or gloo on CPU)."""

import torch
from accelerate import PartialState


def process_state() -> PartialState:
    """The launcher's process group (a single process when started with plain `python`)."""
    return PartialState(cpu=not torch.cuda.is_available())


def is_main_process() -> bool:
    return process_state().is_main_process
