"""Weights on disk: safetensors with JSON metadata, written atomically, read without pickle.

A saved model carries what is needed to rebuild it (``architecture``, ``num_classes``, input
``mean``/``std``), so ``load_model(path)`` needs no other flag.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from ..errors import CheckpointError

FORMAT_VERSION = "1"


def atomic_write(path: str | os.PathLike, write) -> Path:
    """Call ``write(tmp_path)`` then fsync and rename, so ``path`` is never half-written."""
    path = Path(path)
    if path.exists() and path.is_dir():
        raise IsADirectoryError(f"cannot write {path}: it is a directory")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual file mode
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def save_state_dict(state: dict[str, torch.Tensor], path: str | os.PathLike,
                    metadata: dict[str, Any] | None = None) -> Path:
    """Write tensors as safetensors; metadata values are stored JSON-encoded."""
    tensors = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    meta = {"format_version": FORMAT_VERSION}
    meta.update({k: json.dumps(v) for k, v in (metadata or {}).items()})
    return atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=meta))


def read_safetensors(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Tensors and decoded metadata of a safetensors file, with a clear error if it is damaged."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        state = load_file(str(path))
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as fh:
            raw = fh.metadata() or {}
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path} is not a readable safetensors file ({exc})") from None
    meta: dict[str, Any] = {}
    for key, value in raw.items():
        try:
            meta[key] = json.loads(value)
        except json.JSONDecodeError:
            meta[key] = value
    return state, meta


def model_metadata(model: nn.Module, **extra: Any) -> dict[str, Any]:
    """Metadata that lets :func:`load_model` rebuild a registered segmentor."""
    from ..models import IMAGENET_MEAN, IMAGENET_STD

    meta = {
        "architecture": getattr(model, "model_name", type(model).__name__),
        "num_classes": getattr(model, "num_classes", None),
        "mean": list(getattr(model, "input_mean", IMAGENET_MEAN)),
        "std": list(getattr(model, "input_std", IMAGENET_STD)),
    }
    options = getattr(model, "model_options", None)
    if options:  # hf:/timm: networks: their configuration, so the file alone rebuilds them
        meta["model_options"] = options
    meta.update(extra)
    return meta


def save_model(model: nn.Module, path: str | os.PathLike, **extra_metadata: Any) -> Path:
    """Save a segmentor's weights with the metadata needed to rebuild it."""
    return save_state_dict(model.state_dict(), path, model_metadata(model, **extra_metadata))


def load_model(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> nn.Module:
    """Rebuild a saved student or teacher from its safetensors file alone."""
    from ..models import create_model

    state, meta = read_safetensors(path)
    arch, num_classes = meta.get("architecture"), meta.get("num_classes")
    if not arch or num_classes is None:
        raise CheckpointError(f"{path} is not a transkd model file: its metadata has no "
                              "architecture/num_classes (adapters or a foreign file?)")
    options = meta.get("model_options") or {}
    if not isinstance(options, dict):
        raise CheckpointError(f"{path} has malformed model_options metadata")
    model = create_model(arch, num_classes=int(num_classes), **options)
    load_state_strict(model, state, source=str(path))
    if "mean" in meta and "std" in meta:
        model.input_mean, model.input_std = tuple(meta["mean"]), tuple(meta["std"])
    elif isinstance(meta.get("protocol_options"), dict):  # no mean/std: the run's protocol says
        protocol = meta["protocol_options"]
        if protocol.get("normalize") is False:
            model.input_mean, model.input_std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
        elif "mean" in protocol and "std" in protocol:
            model.input_mean, model.input_std = tuple(protocol["mean"]), tuple(protocol["std"])
    return model.to(map_location)


def load_state_strict(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load every tensor or fail with a sentence listing missing, unexpected and misshaped keys."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    misshaped = sorted(f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
                       for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or misshaped:
        parts = []
        for label, keys in (("missing", missing), ("unexpected", unexpected),
                            ("wrong shape", misshaped)):
            if keys:
                shown = ", ".join(keys[:8]) + (f" and {len(keys) - 8} more" if len(keys) > 8 else "")
                parts.append(f"{len(keys)} {label} ({shown})")
        name = getattr(model, "model_name", type(model).__name__)
        raise CheckpointError(f"{source} does not fit {name}: " + "; ".join(parts))
    model.load_state_dict(state, strict=True)


def torch_load_tensors(path: str | os.PathLike) -> dict[str, Any]:
    """Read a ``.pth``/``.pt`` file with ``weights_only=True``: pickled code is refused."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # UnpicklingError, RuntimeError on corrupt zip, EOFError on truncation
        reason = str(exc).splitlines()[0] if str(exc).strip() else type(exc).__name__
        if reason.lower().startswith("weights only load failed"):  # torch's advice is unsafe
            reason = "it holds pickled Python objects, which could run code when loaded; refused"
        raise CheckpointError(f"{path} cannot be loaded safely as plain tensors: {reason}") from None
