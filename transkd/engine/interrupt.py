"""Ctrl-C and SIGTERM as a request to stop at the next step boundary.

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

#: Signals that stop a run: Ctrl-C and the scheduler's pre-emption notice.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
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
