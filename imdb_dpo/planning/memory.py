"""Running out of GPU memory is an error that names the setting to lower, never a silently skipped model."""

import contextlib

import torch

from imdb_dpo.configuration.errors import UserError, first_line


class OutOfMemory(UserError, RuntimeError):
    """The device ran out of memory; the message names what was being done and the setting to lower."""


@contextlib.contextmanager
def naming_the_fix(doing: str, fix: str):
    """Turn `torch.OutOfMemoryError` raised inside the block into an `OutOfMemory` message: what ran out
    (`doing`) and what to change (`fix`). Work already finished stays on disk, so the same command resumes."""
    try:
        yield
    except torch.OutOfMemoryError as error:
        raise OutOfMemory(f"out of memory while {doing} ({first_line(error, default='out of memory')}). {fix}. "
                          "Finished work is kept on disk; run the command again after the change (or on a device "
                          "with more free memory: nvidia-smi shows what else holds it)") from error
