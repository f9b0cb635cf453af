"""One writer per run folder: an advisory lock that a crashed run cannot leave stuck.

Two processes training into the same folder would overwrite each other's checkpoints and
metrics (a second `--resume auto` started by hand or by a scheduler that thinks the first one
died). The main process of a run holds an exclusive POSIX record lock (``lockf``) on
``<run>/.transkd.lock`` for as long as it trains; the file also records who holds it (pid, host,
start time, command) so the refusal can name the other process. The kernel releases the lock when
its process ends, however it ends (SIGKILL, out of memory), so a stale file never blocks a later
run: only a live holder does. A record lock rather than ``flock``: it belongs to the process, not
to the open file, so data-loader workers forked from it do not keep it alive after the trainer
died; and NFS honours it across machines (through its lock manager). Where ``fcntl`` does not
exist (Windows) runs are not locked.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import json
import os
import socket
import sys
from pathlib import Path

from ..errors import ConfigError

try:
    import fcntl
except ImportError:  # Windows: no advisory locks of this kind
    fcntl = None  # type: ignore[assignment]

LOCK_NAME = ".transkd.lock"


class RunInUseError(ConfigError):
    """The run folder is being written by another live process."""


def _holder(path: Path) -> str:
    """Who holds the lock, as far as the file says."""
    try:
        info = json.loads(path.read_text(encoding="utf-8") or "{}")
    except (OSError, ValueError):
        info = {}
    if not isinstance(info, dict) or "pid" not in info:
        return "another process"
    where = f" on {info['host']}" if info.get("host") and info["host"] != socket.gethostname() else ""
    since = f", started {info['started']}" if info.get("started") else ""
    return f"process {info['pid']}{where}{since}"


def _refusal(run_dir: Path) -> RunInUseError:
    return RunInUseError(f"output folder {run_dir} is in use by {_holder(run_dir / LOCK_NAME)}; "
                         "wait for that run to end or stop it, or choose another folder with --output")


def check_not_in_use(run_dir: Path) -> None:
    """Raise :class:`RunInUseError` if a live process holds ``run_dir``'s lock (checks only)."""
    path = run_dir / LOCK_NAME
    if fcntl is None or not path.is_file():
        return
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        fcntl.lockf(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EACCES, errno.EAGAIN):
            raise _refusal(run_dir) from None
    finally:
        os.close(fd)  # also drops the shared lock just taken


class RunLock:
    """Context manager: hold ``run_dir``'s lock, or raise :class:`RunInUseError`."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir)
        self.fd: int | None = None

    def __enter__(self) -> RunLock:
        if fcntl is None:
            return self
        self.run_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.run_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EACCES, errno.EAGAIN):
                raise _refusal(self.run_dir) from None
            raise
        started = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
        info = {"pid": os.getpid(), "host": socket.gethostname(), "started": started,
                "command": " ".join(sys.argv)}
        os.ftruncate(fd, 0)
        os.write(fd, (json.dumps(info) + "\n").encode())
        self.fd = fd
        return self

    def __exit__(self, *exc: object) -> None:
        if self.fd is not None:
            with contextlib.suppress(OSError):
                fcntl.lockf(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None
