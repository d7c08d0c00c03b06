"""Stopping cleanly on SIGUSR1 (SLURM's warning before the time limit) or SIGTERM (preemption).

The signal only sets a flag. Trainer stages check it at the next step boundary, save a checkpoint and
stop; generation stages check it between batches after flushing. The process then exits with
`EXIT_RESUMABLE`, which tells a job script that the work is unfinished and should be requeued.
"""

import signal

from transformers import TrainerCallback

EXIT_RESUMABLE = 75  # EX_TEMPFAIL: try again later


class StopRequest:
    def __init__(self, signals=(signal.SIGUSR1, signal.SIGTERM)):
        self.signal_name = None
        for signum in signals:
            signal.signal(signum, self._handle)

    def _handle(self, signum, frame):
        self.signal_name = signal.Signals(signum).name
        print(f"\n{self.signal_name} received: finishing the current step, saving and exiting", flush=True)

    @property
    def requested(self) -> bool:
        return self.signal_name is not None


class SaveAndStopOnSignal(TrainerCallback):
    """Turns a stop request into a checkpoint at the end of the current optimizer step, then a stop."""

    def __init__(self, stop: StopRequest):
        self.stop = stop

    def on_step_end(self, args, state, control, **kwargs):
        if self.stop.requested:
            control.should_save = True
            control.should_training_stop = True
        return control
