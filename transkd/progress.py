"""Progress of a long command, wherever its output goes.

On a terminal it is a tqdm bar with a rate and an ETA, on standard error. Where the output is a
log file (a cluster job, CI, ``| tee``) a bar is unreadable, so :class:`Progress` prints a plain
line every ``interval`` units instead (``step 40/200 (20%), loss 0.4312, lr 6.0e-04, 12.5
images/s, elapsed 1m02s, ETA 4m08s``), on standard output with the command's other news
(validation scores); without them a run would be silent until its first validation. Standard
error then holds only warnings and errors: a failing command ends with its one sentence there.
"""

from __future__ import annotations

import math
import os
import sys
import time
from typing import Any, TextIO

from tqdm import tqdm


def duration(seconds: float) -> str:
    """``42s``, ``3m05s``, ``2h07m``: short enough for a progress line."""
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def _field(name: str, value: Any) -> str:
    """One ``name value`` pair of a line; rates read as ``12.5 images/s``."""
    if isinstance(value, float):
        if name.endswith("/s"):
            return f"{value:.1f} {name}"
        text = f"{value:.2e}" if name == "lr" else f"{value:.4f}"
        return f"{name} {text}"
    return f"{name} {value}"


class Progress:
    """Progress over ``total`` units (steps, batches, images) that started at ``initial``.

    ``enabled=False`` (``--no-progress``, a non-main process) shows nothing. The bar goes to
    ``bar_stream`` (standard error) when that is a terminal; otherwise a line goes to
    ``line_stream`` (standard output) every ``interval`` units (0: no lines; the caller reports
    progress its own way there). ``tty`` overrides the terminal test; ``quiet_for``
    seconds pass before the first line, so that a short job leaves no lines in the log.
    """

    def __init__(self, total: int, *, initial: int = 0, description: str = "", unit: str = "step",
                 enabled: bool = True, interval: int = 10, bar_stream: TextIO | None = None,
                 line_stream: TextIO | None = None, tty: bool | None = None,
                 quiet_for: float = 0.0) -> None:
        self.total = max(0, int(total))
        self.count = int(initial)
        self.description = description
        self.unit = unit
        self.interval = max(0, int(interval))
        self.bar_stream = bar_stream if bar_stream is not None else sys.stderr
        self.line_stream = line_stream
        self.enabled = enabled
        self.tty = _isatty(self.bar_stream) if tty is None else tty
        self.quiet_for = quiet_for
        self.fields: dict[str, Any] = {}
        self._start_count = self.count
        self._start = time.perf_counter()
        self._bar: tqdm | None = None
        if enabled and self.tty:
            self._bar = tqdm(total=self.total, initial=self.count, desc=description or None, unit=unit,
                             file=self.bar_stream, dynamic_ncols=True, leave=False)

    @property
    def lines(self) -> bool:
        """Whether this progress prints plain lines (enabled, and not on a terminal)."""
        return self.enabled and not self.tty

    @property
    def bar(self) -> bool:
        """Whether a bar is on screen (lines printed meanwhile must go through :meth:`write`)."""
        return self._bar is not None

    def update(self, count: int = 1, **fields: Any) -> None:
        """``count`` more units done; ``fields`` (loss, lr, images/s) are shown from now on."""
        self.count += count
        if fields:
            self.fields.update(fields)
        if self._bar is not None:
            if fields:
                self._bar.set_postfix({k: _short(v) for k, v in self.fields.items()}, refresh=False)
            self._bar.update(count)
        elif self.lines and self.interval and count > 0 and (
                self.count % self.interval == 0 or self.count >= self.total > self.count - count) \
                and time.perf_counter() - self._start >= self.quiet_for:
            self._emit()

    def set_total(self, total: int) -> None:
        """Change the number of units (work found done already, or added)."""
        self.total = max(0, int(total))
        if self._bar is not None:
            self._bar.total = self.total
            self._bar.refresh()

    def eta(self) -> float:
        """Seconds left at the rate of this session so far (inf before the first unit)."""
        done = self.count - self._start_count
        if done <= 0:
            return math.inf
        return (time.perf_counter() - self._start) / done * max(0, self.total - self.count)

    def line(self) -> str:
        """The plain progress line for the current state."""
        percent = f" ({100 * self.count / self.total:.0f}%)" if self.total else ""
        parts = [f"{self.unit} {self.count}/{self.total}{percent}"]
        parts += [_field(name, value) for name, value in self.fields.items()]
        parts.append(f"elapsed {duration(time.perf_counter() - self._start)}")
        if self.count < self.total:
            parts.append(f"ETA {duration(self.eta())}")
        prefix = f"{self.description}: " if self.description else ""
        return prefix + ", ".join(parts)

    def write(self, message: str, stream: TextIO | None = None) -> None:
        """Print a line above the bar without breaking it (``stream`` defaults to stdout)."""
        stream = stream if stream is not None else sys.stdout
        if self._bar is not None:
            tqdm.write(message, file=stream)
        else:
            print(message, file=stream, flush=True)

    def _emit(self) -> None:
        print(self.line(), file=self.line_stream if self.line_stream is not None else sys.stdout,
              flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.2e}" if abs(value) < 1e-3 and value else f"{value:.4g}"
    return str(value)


def _isatty(stream: TextIO) -> bool:
    """A terminal a bar can be drawn on: a pseudo-terminal of width 0 (some CI runners) is not."""
    try:
        return bool(stream.isatty()) and os.get_terminal_size(stream.fileno()).columns > 0
    except (AttributeError, ValueError, OSError):  # no isatty or fileno, a closed stream, no size
        return False
