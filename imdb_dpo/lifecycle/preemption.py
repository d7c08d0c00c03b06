"""Stopping cleanly before a time limit or on preemption, without losing work.

A stop is requested by SIGUSR1 or SIGTERM sent to the process, by a first Ctrl-C (SIGINT; a second one stops at
once, losing the work since the last save), or by the file named in the environment variable `IMDB_DPO_STOP_FILE`
appearing. The SLURM job scripts use the file: under `accelerate launch`
or `srun` the launcher would die of a forwarded SIGUSR1, while every rank can see a file.

Trainer stages check at each optimizer-step boundary (all ranks agree through an all-reduce, so they
stop at the same step), save a checkpoint and stop; generation stages check between batches, after
flushing. The process then exits with `EXIT_RESUMABLE` (see `exit_resumable`), which a job script answers
with a requeue.
"""

import os
import signal

import torch
import torch.distributed as dist
from transformers import TrainerCallback

EXIT_RESUMABLE = 75  # EX_TEMPFAIL: try again later
STOP_FILE_VARIABLE = "IMDB_DPO_STOP_FILE"
SAVED_SUFFIX = ".saved"


def exit_resumable() -> int:
    """Report that the stage saved its work and should be started again; returns `EXIT_RESUMABLE`.

    torchrun and `accelerate launch` turn any non-zero exit of a worker into a failure of their own, so the
    status never reaches the job script; the main process also leaves `<stop file>.saved` for it to see."""
    from imdb_dpo.lifecycle.distributed import is_main_process

    stop_file = os.environ.get(STOP_FILE_VARIABLE)
    if stop_file and is_main_process():
        with open(stop_file + SAVED_SUFFIX, "w") as f:
            f.write("saved\n")
    return EXIT_RESUMABLE


class StopRequest:
    def __init__(self, signals=(signal.SIGUSR1, signal.SIGTERM, signal.SIGINT)):
        self.reason = None
        self.stop_file = os.environ.get(STOP_FILE_VARIABLE)
        for signum in signals:
            signal.signal(signum, self._handle)

    def _handle(self, signum, frame):
        if signum == signal.SIGINT and self.reason == "SIGINT":
            raise KeyboardInterrupt  # the second Ctrl-C: the user will not wait for the save
        self.reason = signal.Signals(signum).name
        again = " (Ctrl-C again stops at once, losing the work since the last save)" if signum == signal.SIGINT else ""
        print(f"\n{self.reason} received: finishing the current step, saving and exiting (the same command then "
              f"resumes){again}", flush=True)

    @property
    def requested(self) -> bool:
        if self.reason is None and self.stop_file and os.path.exists(self.stop_file):
            self.reason = f"stop file {self.stop_file}"
            print(f"\n{self.reason} appeared: finishing the current step, saving and exiting (the same command then "
                  "resumes)", flush=True)
        return self.reason is not None

    def requested_on_any_rank(self) -> bool:
        return on_any_rank(self.requested)


def on_any_rank(local: bool) -> bool:
    """True on every process when `local` is true on any (where all processes meet, e.g. at a step's end)."""
    if not (dist.is_available() and dist.is_initialized()):
        return local
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    flag = torch.tensor([int(local)], device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return bool(flag.item())


class SaveAndStopOnSignal(TrainerCallback):
    """Turns a stop request into a checkpoint at the end of the current optimizer step, then a stop."""

    def __init__(self, stop: StopRequest):
        self.stop = stop
        self.stopping = False

    def on_step_end(self, args, state, control, **kwargs):
        if self.stop.requested_on_any_rank():
            self.stop.reason = self.stop.reason or "another rank's stop request"
            self.stopping = True  # on every rank alike, unlike stop.requested
            control.should_save = True
            control.should_training_stop = True
        return control

    def on_epoch_end(self, args, state, control, **kwargs):
        # A stop ends the epoch loop early, and with eval_strategy epoch the Trainer would evaluate there as at an
        # epoch's end: an evaluation no uninterrupted run makes, which load_best_model_at_end could then keep.
        if self.stopping and abs(state.epoch - round(state.epoch)) > 1e-6:
            control.should_evaluate = False
        return control
