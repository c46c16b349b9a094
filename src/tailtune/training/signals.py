"""SIGTERM / SIGINT during training: save at the next step and stop (a second SIGINT quits).
After training (selection, checkpoint, final evaluation, results): stop at once, saying what is kept."""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable

from tailtune.training.trainer import Trainer, TrainingInterrupted


class _Handlers:
    """A context that routes SIGTERM / SIGINT to ``_handle`` (main thread only; the previous
    handlers come back on exit)."""

    def __init__(self):
        self.previous: dict = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self.previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        raise NotImplementedError

    def _restore(self) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)

    def __exit__(self, *exc):
        self._restore()
        return False


class SignalStop(_Handlers):
    """SIGTERM / SIGINT ask the trainer to save and stop at the next step; a second SIGINT quits."""

    def __init__(self, trainer: Trainer):
        super().__init__()
        self.trainer = trainer

    def _handle(self, signum, frame):
        if self.trainer.stop_signal is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.trainer.stop_signal = signum


class StopNow(_Handlers):
    """SIGTERM / SIGINT stop at once with TrainingInterrupted(``say(signum)``): after training there is
    no step to finish, and what the signal leaves (the saved state, a complete checkpoint) is
    what the message says."""

    def __init__(self, say: Callable[[int], str]):
        super().__init__()
        self.say = say

    def _handle(self, signum, frame):
        self._restore()  # a second signal while the message is made: the default
        raise TrainingInterrupted(self.say(signum), signum)
