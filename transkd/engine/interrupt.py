"""Ctrl-C, SIGTERM and SIGUSR1 as a request to stop at the next step boundary.

SIGTERM is what Kubernetes, Docker and SLURM send before they kill a job; SIGUSR1 is what SLURM
sends ahead of the time limit when asked to (``#SBATCH --signal=B:USR1@120``). Every rank of a
torchrun job stops at the same step (the flag is OR-ed across ranks), the run's checkpoint holds
every rank's random state, and the command exits with ``128 + signal number`` (130 after Ctrl-C,
143 after SIGTERM, 138 after SIGUSR1), so a job script can tell a pre-emption from a failure and
requeue; the next start with ``--resume auto`` continues exactly.

A ``KeyboardInterrupt`` raised wherever the signal lands can be lost: Python swallows (and
only prints) an exception raised in a finaliser or a weak-reference callback, and a library may
catch it. So the trainer installs handlers that only set a flag, and checks the flag between
optimiser steps, where stopping leaves a consistent, resumable checkpoint. A second signal
means "stop now" and raises ``KeyboardInterrupt`` at once (the trainer still saves the last
completed step).
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from types import FrameType

#: Signals that stop a run: Ctrl-C and the schedulers' pre-emption notices.
STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGUSR1")
                     if hasattr(signal, name))


def exit_code(signal_name: str | None) -> int:
    """The shell's code for a process stopped by ``signal_name`` (130 when unknown: Ctrl-C)."""
    try:
        return 128 + int(signal.Signals[signal_name]) if signal_name else 130
    except KeyError:
        return 130
NOTICE = b"\nstopping after the current step (send the signal again to stop at once)\n"


class StopRequest:
    """Context manager: while inside, SIGINT/SIGTERM set :attr:`requested` instead of raising.

    Outside the main thread signal handlers cannot be installed; there the default behaviour
    (``KeyboardInterrupt``) stays.
    """

    def __init__(self, notice: bool = True) -> None:
        self.requested: str | None = None
        self.notice = notice
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested is not None:
            raise KeyboardInterrupt
        self.requested = signal.Signals(signum).name
        if self.notice:
            with contextlib.suppress(OSError):
                os.write(2, NOTICE)  # async-signal-safe, unlike print

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for signum in STOP_SIGNALS:
                if signal.getsignal(signum) is signal.SIG_IGN:  # e.g. a background job: keep ignoring
                    continue
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous.clear()
