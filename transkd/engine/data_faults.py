"""A data-loader failure told as one sentence naming the worker and the sample.

PyTorch re-raises a worker's exception in the trainer with the worker's whole traceback in the
message ("Caught DatasetError in DataLoader worker process 1. Original Traceback ..."), and a
worker that dies outright (SIGKILL, the out-of-memory killer, a segfault in a decoder) only as
"DataLoader worker (pid(s) 1234) exited unexpectedly". Neither says which file was at fault;
this module does, from what :class:`~transkd.engine.distributed.EpochIndexedDataset` notes.
"""

from __future__ import annotations

import re

from ..errors import DatasetError
from .distributed import EpochIndexedDataset

_CAUGHT = re.compile(r"Caught (\w+) in DataLoader worker process (\d+)")
_DIED = re.compile(r"DataLoader worker \(pid\(s\) ([\d, ]+)\)|DataLoader worker \(pid (\d+)\)")


def data_fault(exc: BaseException, dataset: EpochIndexedDataset) -> BaseException:
    """The error to raise instead of ``exc`` (``exc`` itself when it is not a data fault)."""
    message = str(exc)
    caught = _CAUGHT.search(message)
    if caught is not None and isinstance(exc, DatasetError):
        original = message.strip().splitlines()[-1]
        original = original.split(": ", 1)[1] if ": " in original else original
        return DatasetError(f"data loader worker {caught.group(2)}: {original}")
    died = _DIED.search(message)
    if died is None:
        return exc
    pids = {int(p) for p in re.findall(r"\d+", died.group(1) or died.group(2))}
    first = message.strip().splitlines()[0].rstrip(".")
    reading = dataset.reading(pids)
    if not reading:
        return DatasetError(f"{first}, between samples; check the machine's memory (a worker "
                            "killed by the out-of-memory killer looks like this) or lower "
                            "train.num_workers")
    worker, pid, index = reading[0]
    describe = getattr(dataset.dataset, "describe", None)
    sample = describe(index) if describe is not None else f"sample {index}"
    return DatasetError(f"data loader worker {worker} (pid {pid}) died while reading {sample}: "
                        f"{first}; check that file, the machine's memory, or set "
                        "train.num_workers=0 to see the error in the main process")
