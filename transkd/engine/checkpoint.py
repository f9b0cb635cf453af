"""Resumable training checkpoints: written atomically, read without unpickling code.

A checkpoint is a ``torch.save`` dictionary of tensors and plain Python values only (NumPy and
Python RNG states are stored as lists and ints), so :func:`load_checkpoint` reads it with
``weights_only=True``. It holds the trainable part of the Distiller (student + adapters; the
teacher is never included), the optimiser, the schedule step, the gradient scaler, every RNG
state and the data position (epoch and batches consumed in it). The file is written to a
temporary name, fsynced and renamed, so the previous good checkpoint survives until the new one
is complete; weights that are not finite are never written.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import CheckpointError
from ..weights.io import atomic_write, save_model, save_state_dict, torch_load_tensors

CHECKPOINT_FORMAT = "transkd-train-checkpoint"
CHECKPOINT_VERSION = 1


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


def save_checkpoint(path: str | Path, checkpoint: dict[str, Any]) -> Path:
    """Write a training checkpoint atomically; refuse weights with NaN/inf."""
    bad = non_finite_tensors(checkpoint["model"])
    if bad:
        raise CheckpointError(f"refusing to write {path}: {len(bad)} weight tensor(s) are not "
                              f"finite (first: {bad[0]})")
    payload = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, **checkpoint}
    return atomic_write(path, lambda tmp: torch.save(payload, tmp))


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a training checkpoint safely (``weights_only=True``) and check its format."""
    data = torch_load_tensors(path)
    if not isinstance(data, dict) or data.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not a transkd training checkpoint (to start from "
                              "model weights, use model.init instead of --resume)")
    if data.get("version") != CHECKPOINT_VERSION:
        raise CheckpointError(f"{path} has checkpoint version {data.get('version')}, this "
                              f"transkd reads version {CHECKPOINT_VERSION}")
    for key in ("model", "optimizer", "schedule", "rng", "position"):
        if key not in data:
            raise CheckpointError(f"{path} is incomplete: it has no {key!r} entry")
    return data


def export_weights(student: nn.Module, adapters: nn.Module | None, directory: str | Path,
                   metadata: dict[str, Any]) -> Path:
    """Write the deployable ``student.safetensors`` (+ ``adapters.safetensors`` if any)."""
    directory = Path(directory)
    bad = non_finite_tensors(student.state_dict())
    if bad:
        raise CheckpointError(f"refusing to export {directory}: student weight {bad[0]} is not finite")
    path = save_model(student, directory / "student.safetensors", **metadata)
    if adapters is not None and len(list(adapters.parameters())) > 0:
        save_state_dict(adapters.state_dict(), directory / "adapters.safetensors",
                        {"student": getattr(student, "model_name", ""), **metadata})
    return path


def resolve_resume(resume: str | None, checkpoint_dir: Path) -> Path | None:
    """The checkpoint to resume from: a path, ``"auto"`` (the run's last checkpoint if any), or none."""
    if resume is None:
        return None
    if resume == "auto":
        last = checkpoint_dir / "last.pt"
        return last if last.is_file() else None
    path = Path(resume)
    if path.is_dir():
        path = path / "checkpoints" / "last.pt"
    if not path.is_file():
        raise CheckpointError(f"--resume {resume}: no checkpoint file at {path}")
    return path
