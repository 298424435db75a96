"""How a run stops early: Ctrl-C (finish the step, save, stop) and divergence (NaN/inf)."""
import os
import signal
import threading

import numpy as np

from .runs import LAST


class TrainingDiverged(RuntimeError):
    """The loss (or a weight) became NaN or infinite; the last good checkpoint was kept."""


class TrainingInterrupted(Exception):
    """Raised to the caller after Ctrl-C when the state was saved (``.checkpoint``)."""

    def __init__(self, message, checkpoint=None):
        super().__init__(message)
        self.checkpoint = checkpoint


class StopRequest:
    """Turns the first Ctrl-C (SIGINT, or SIGUSR1: what ``npfcn train --procs`` passes
    on to its MPI ranks) into a request to stop after the current step.

    The loop polls ``requested``; a second one raises KeyboardInterrupt at
    once.  Only the main thread can install signal handlers; elsewhere this does
    nothing and a KeyboardInterrupt is handled by the loop itself.
    """

    SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGUSR1") if hasattr(signal, name))

    def __init__(self, stream):
        self.requested = False
        self.stream = stream
        self.previous = {}

    def _handler(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        self.stream.write("\nCtrl-C: stopping after this step and saving a checkpoint "
                          "(press Ctrl-C again to abort without saving)\n")
        self.stream.flush()

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self.previous = {number: signal.signal(number, self._handler) for number in self.SIGNALS}
        return self

    def __exit__(self, *exc):
        for number, handler in self.previous.items():
            signal.signal(number, handler)
        self.previous = {}
        return False


def first_non_finite(model):
    """The name of the first parameter holding a NaN or inf, or None."""
    for name, value in model.params.items():
        if not np.all(np.isfinite(value)):
            return name
    return None


def diverged_message(what, run_dir, epoch, step, global_step):
    """The message of TrainingDiverged: what went wrong where, and what was kept."""
    last = os.path.join(run_dir, LAST)
    kept = (f"the last good checkpoint {last} was kept" if os.path.exists(last)
            else "no checkpoint had been written yet")
    return (f"{what} at epoch {epoch}, step {step} (global step {global_step}); "
            f"training stopped and {kept} (try a lower --lr)")
