"""Resumable training checkpoints: written atomically, read without unpickling code.

A checkpoint is a ``torch.save`` dictionary of tensors and plain Python values only (NumPy and
Python RNG states are stored as lists and ints), so :func:`load_checkpoint` reads it with
``weights_only=True``. It holds the trainable part of the Distiller (student + adapters; the
teacher is never included), the optimiser, the schedule step, the gradient scaler, every RNG
state and the data position (epoch and batches consumed in it). The file is written to a
temporary name, fsynced and renamed, so the previous good checkpoint survives until the new one
is complete; weights that are not finite are never written.

Each checkpoint stores a SHA-256 digest of its contents, so damage that leaves the archive
readable (a flipped bit in tensor data) is still detected on load. The checkpoint it replaces
is kept as ``previous.pt`` next to ``last.pt``; resuming falls back to it when ``last.pt`` is
truncated or corrupt.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import CheckpointError, DiskFullError
from ..weights.io import atomic_write, deployable_file_name, save_model, save_state_dict

CHECKPOINT_FORMAT = "transkd-train-checkpoint"
CHECKPOINT_VERSION = 1
LAST_NAME = "last.pt"
PREVIOUS_NAME = "previous.pt"


def capture_rng_state() -> dict[str, Any]:
    """RNG states of torch (CPU and CUDA), NumPy and Python as tensors, lists and ints."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": str(kind), "keys": [int(k) for k in keys], "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": {"version": int(version), "internal": [int(v) for v in internal],
                   "gauss_next": gauss_next},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state`."""
    torch.set_rng_state(state["torch"])
    numpy_state = state["numpy"]
    np.random.set_state((numpy_state["kind"], np.asarray(numpy_state["keys"], dtype=np.uint32),
                         numpy_state["pos"], numpy_state["has_gauss"],
                         numpy_state["cached_gaussian"]))
    py = state["python"]
    random.setstate((py["version"], tuple(py["internal"]), py["gauss_next"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def non_finite_tensors(state: dict[str, torch.Tensor]) -> list[str]:
    """Names of floating-point tensors holding NaN or inf (one fused max-abs pass first)."""
    names = [k for k, v in state.items() if torch.is_tensor(v) and v.is_floating_point() and v.numel()]
    if not names:
        return []
    peaks = torch._foreach_norm([state[k].detach() for k in names], float("inf"))
    finite = torch.isfinite(torch.stack([p.float().cpu() for p in peaks]))
    return [name for name, ok in zip(names, finite.tolist()) if not ok]


def contents_digest(value: Any) -> str:
    """SHA-256 over every tensor's bytes, dtype and shape and every plain value, in order."""
    digest = hashlib.sha256()
    _feed(digest, value)
    return digest.hexdigest()


def _feed(digest, value: Any) -> None:
    if torch.is_tensor(value):
        tensor = value.detach().cpu().contiguous()
        digest.update(f"T{tensor.dtype}{tuple(tensor.shape)};".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy())
    elif isinstance(value, dict):
        digest.update(f"D{len(value)};".encode())
        for key, item in value.items():
            _feed(digest, key)
            _feed(digest, item)
    elif isinstance(value, (list, tuple)):
        digest.update(f"{type(value).__name__[0]}{len(value)};".encode())
        for item in value:
            _feed(digest, item)
    else:
        digest.update(f"{type(value).__name__}:{value!r};".encode())


def save_checkpoint(path: str | Path, checkpoint: dict[str, Any], keep: int = 2) -> Path:
    """Write a training checkpoint atomically; refuse weights with NaN/inf.

    ``keep`` bounds how many checkpoints the folder holds: once the new file is fully written,
    the one it replaces becomes ``previous.pt`` (``keep`` ≥ 2; a hard link, so ``path`` itself
    is never missing) or is dropped (``keep`` = 1: the atomic write still protects it until the
    new one is complete); ``keep`` > 2 also keeps the newest checkpoints as ``step_<n>.pt``
    (hard links of the same files, ``keep`` of them in all, ``last.pt``'s and ``previous.pt``'s
    included). The free space is checked before writing: a checkpoint that cannot fit is refused
    with one sentence and nothing is touched."""
    path = Path(path)
    bad = non_finite_tensors(checkpoint["model"])
    if bad:
        raise CheckpointError(f"refusing to write {path}: {len(bad)} weight tensor(s) are not "
                              f"finite (first: {bad[0]})")
    payload = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, **checkpoint}
    payload["digest"] = contents_digest(payload)
    for stale in path.parent.glob(f".{path.name}.*.tmp"):  # left by a process killed mid-write
        stale.unlink(missing_ok=True)
    check_free_space(path, payload)

    def write(tmp: str) -> None:
        with open(tmp, "wb") as fh:  # a file object: a full disk surfaces as OSError(ENOSPC)
            torch.save(payload, fh)
        if keep >= 2:
            _keep_as_previous(path)

    atomic_write(path, write)
    if keep == 1:
        path.with_name(PREVIOUS_NAME).unlink(missing_ok=True)
    if keep > 2:
        _keep_steps(path, int(checkpoint.get("position", {}).get("step", 0)), keep)
    return path


def _tensor_bytes(value: Any) -> int:
    if torch.is_tensor(value):
        return value.numel() * value.element_size()
    if isinstance(value, dict):
        return sum(_tensor_bytes(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(_tensor_bytes(v) for v in value)
    return 0


def check_free_space(path: Path, payload: dict[str, Any]) -> None:
    """Refuse to start writing a checkpoint that cannot fit (its tensors plus 5 % and 1 MiB of
    archive overhead), so a nearly full disk stops the run before the write, not during it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    needed = int(_tensor_bytes(payload) * 1.05) + (1 << 20)
    free = shutil.disk_usage(path.parent).free
    if free < needed:
        kept = f"the previous {path.name} is unchanged" if path.exists() else "nothing was written"
        raise DiskFullError(path, kept, reason=f"it needs about {needed / 2**20:.0f} MiB and "
                                               f"{free / 2**20:.0f} MiB are free")


def _keep_steps(path: Path, step: int, keep: int) -> None:
    """Link ``path`` as ``step_<step>.pt`` and drop all but the newest ``keep`` such links."""
    snapshot = path.with_name(f"step_{step:09d}.pt")
    snapshot.unlink(missing_ok=True)
    try:
        os.link(path, snapshot)
    except OSError:  # no hard links here: a copy would double the disk use, so keep none
        return
    for old in sorted(path.parent.glob("step_*.pt"))[:-keep]:
        old.unlink(missing_ok=True)


def _keep_as_previous(path: Path) -> None:
    """``previous.pt`` := the current ``path`` (about to be replaced by the new checkpoint)."""
    if not path.is_file():
        return
    previous = path.with_name(PREVIOUS_NAME)
    staging = path.with_name(f".{PREVIOUS_NAME}.tmp")
    if staging.exists():
        staging.unlink()
    try:
        os.link(path, staging)
    except OSError:  # no hard links on this file system: move it (resume looks here too)
        os.replace(path, previous)
        return
    os.replace(staging, previous)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a training checkpoint safely (``weights_only=True``), check its format and digest."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        data = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "weights only load failed" in str(exc).lower():
            raise CheckpointError(f"checkpoint {path} holds pickled Python objects, which could run "
                                  "code when loaded; refusing to load it") from None
        raise CheckpointError(f"checkpoint {path} is damaged (truncated or corrupt: "
                              f"{_first_line(exc)})") from None
    except Exception as exc:  # RuntimeError on a broken zip archive, EOFError on truncation
        raise CheckpointError(f"checkpoint {path} is damaged (truncated or corrupt: "
                              f"{_first_line(exc)})") from None
    if not isinstance(data, dict) or data.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not a transkd training checkpoint (to start from "
                              "model weights, use model.init instead of --resume)")
    if data.get("version") != CHECKPOINT_VERSION:
        raise CheckpointError(f"{path} has checkpoint version {data.get('version')}, this "
                              f"transkd reads version {CHECKPOINT_VERSION}")
    stored = data.pop("digest", None)
    if stored is not None and stored != contents_digest(data):
        raise CheckpointError(f"checkpoint {path} is damaged (corrupt: its contents do not match "
                              "the digest written with it)")
    for key in ("model", "optimizer", "schedule", "rng", "position"):
        if key not in data:
            raise CheckpointError(f"{path} is incomplete: it has no {key!r} entry")
    return data


def _first_line(exc: BaseException) -> str:
    """The first sentence of an error message (PyTorch's zip errors run on with advice)."""
    text = str(exc).strip()
    return text.splitlines()[0].split(". ")[0].rstrip(".") if text else type(exc).__name__


def export_weights(student: nn.Module, adapters: nn.Module | None, directory: str | Path,
                   metadata: dict[str, Any]) -> Path:
    """Write the deployable network (+ ``adapters.safetensors`` if any): ``student.safetensors``
    when distilled (``adapters`` given), ``model.safetensors`` when trained alone."""
    directory = Path(directory)
    bad = non_finite_tensors(student.state_dict())
    if bad:
        raise CheckpointError(f"refusing to export {directory}: student weight {bad[0]} is not finite")
    path = save_model(student, directory / deployable_file_name(adapters is not None), **metadata)
    if adapters is not None and len(list(adapters.parameters())) > 0:
        save_state_dict(adapters.state_dict(), directory / "adapters.safetensors",
                        {"student": getattr(student, "model_name", ""), **metadata})
    return path


def resolve_resume(resume: str | None, checkpoint_dir: Path) -> Path | None:
    """The checkpoint to resume from: a path, ``"auto"`` (the run's last checkpoint if any), or none."""
    if resume is None:
        return None
    if resume == "auto":
        for name in (LAST_NAME, PREVIOUS_NAME):  # previous.pt alone: killed while rotating
            if (checkpoint_dir / name).is_file():
                return checkpoint_dir / name
        return None
    path = Path(resume)
    if path.is_dir():
        path = path / "checkpoints" / LAST_NAME
    if not path.is_file():
        raise CheckpointError(f"--resume {resume}: no checkpoint file at {path}")
    return path


def verify_resume(path: Path) -> tuple[Path, str | None, dict[str, Any]]:
    """Check the resume checkpoint before anything is written: ``(checkpoint to use, note,
    its contents)``.

    A damaged ``last.pt`` gives way to the ``previous.pt`` next to it, and the note says so;
    with no usable previous checkpoint the error names the damaged file."""
    try:
        return path, None, load_checkpoint(path)
    except CheckpointError as exc:
        previous = path.with_name(PREVIOUS_NAME)
        if "is damaged" not in str(exc) or path.name != LAST_NAME:
            raise
        if not previous.is_file():
            raise CheckpointError(f"{exc} and there is no previous checkpoint to fall back to") from None
        try:
            data = load_checkpoint(previous)
        except CheckpointError as second:
            raise CheckpointError(f"{exc}, and the previous checkpoint is unusable too: "
                                  f"{second}") from None
        return previous, f"warning: {exc}; falling back to the previous checkpoint", data
