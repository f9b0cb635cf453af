"""Where training numbers go: a JSONL file (one record per line) and TensorBoard events (the
progress shown while training is :mod:`transkd.progress`). Only the main process (rank 0)
writes anything.

JSONL records carry ``"kind"``: ``"train"`` (every loss term, lr, step/data time), ``"val"``
(mIoU, pixel accuracy, per-class IoU), ``"teacher_val"`` (the teacher's own score, logged once
at the start of distillation), ``"agreement"`` (validation without a labelled split: the
student's agreement with the teacher), ``"data"`` (labelled and unlabelled images each epoch
used, in runs with unlabelled images), ``"event"`` (skipped non-finite steps, interruption,
resume, the run's data).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

from ..errors import DiskFullError
from ..jsonsafe import json_safe
from ..weights.io import disk_full


class MetricsLogger:
    """Append-only metrics sink; a disabled logger (non-main rank) accepts and drops records."""

    def __init__(self, run_dir: Path | None, enabled: bool = True, tensorboard: bool = True) -> None:
        self.enabled = enabled and run_dir is not None
        self.path = Path(run_dir) / "metrics.jsonl" if self.enabled else None
        self._file = None
        self._writer = None
        if self.enabled:
            drop_partial_record(self.path)
            self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 (kept open for the run)
            if tensorboard:
                from torch.utils.tensorboard import SummaryWriter

                self._writer = SummaryWriter(log_dir=str(Path(run_dir) / "tensorboard"))

    def log(self, kind: str, step: int, /, **values: Any) -> None:
        if not self.enabled:
            return
        values.pop("step", None)
        record = {"kind": kind, "step": step, "time": round(time.time(), 3), **values}
        try:
            self._file.write(json.dumps(json_safe(record)) + "\n")
            self._file.flush()
        except OSError as exc:
            if not disk_full(exc):
                raise
            raise DiskFullError(self.path, "the records before are kept") from None
        if self._writer is not None:
            for key, value in values.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool) and key != "epoch":
                    self._writer.add_scalar(f"{kind}/{key}", value, step)
                elif key == "iou" and isinstance(value, (list, tuple)):
                    for index, iou in enumerate(value):
                        if isinstance(iou, float) and math.isfinite(iou):
                            self._writer.add_scalar(f"{kind}/iou_{index:02d}", iou, step)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def drop_partial_record(path: Path) -> None:
    """Cut a last line left unfinished by a killed process, so appending to the file (when a
    run resumes) keeps one complete JSON record per line."""
    if not path.is_file():
        return
    with open(path, "rb+") as fh:
        size = fh.seek(0, 2)
        if size == 0:
            return
        fh.seek(size - 1)
        if fh.read(1) == b"\n":
            return
        fh.seek(0)
        data = fh.read()
        fh.truncate(data.rfind(b"\n") + 1)


# Records that measure a step; an event (resumed, skipped, stopped) is history and always kept.
MEASUREMENT_KINDS = ("train", "val", "teacher_val", "agreement", "data")


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """The records of a ``metrics.jsonl`` file, one per (kind, step).

    A run resumed after a crash logs again the steps since its last checkpoint; the later record
    of a (kind, step) pair is the one the resumed run continued from, so it replaces the earlier.
    """
    with open(path, encoding="utf-8") as fh:
        records = [json.loads(line) for line in fh if line.strip()]
    def key(record: Any) -> tuple[Any, int] | None:
        measured = isinstance(record, dict) and record.get("kind") in MEASUREMENT_KINDS
        return (record["kind"], record["step"]) if measured and isinstance(record.get("step"), int) else None

    last = {key(r): i for i, r in enumerate(records) if key(r) is not None}
    return [r for i, r in enumerate(records) if key(r) is None or last[key(r)] == i]

