"""Weights on disk: safetensors with JSON metadata, written atomically, read without pickle.

A saved model carries what is needed to rebuild it (``architecture``, ``num_classes``, input
``mean``/``std``), so ``load_model(path)`` needs no other flag. :func:`load_model` is the one way
a saved network comes back, from its file or from a run folder.

In a run folder, ``best/`` and ``last/`` each hold the deployable network: ``model.safetensors``
when it was trained alone (a teacher or a plain baseline, ``transkd train``) and
``student.safetensors`` when it was distilled (``transkd distill``). Earlier versions named both
``student.safetensors``; such folders still load.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from ..errors import CheckpointError, DiskFullError
from ..jsonsafe import json_safe
from ..models import create_model, normalisation_of

FORMAT_VERSION = "1"
#: The deployable network of a run trained alone, and of a distillation run.
MODEL_FILE, STUDENT_FILE = "model.safetensors", "student.safetensors"
#: Where a run folder keeps its deployable network, in order of preference.
RUN_FOLDER_FILES = tuple(f"{which}/{name}" for which in ("best", "last")
                         for name in (MODEL_FILE, STUDENT_FILE)) + (MODEL_FILE, STUDENT_FILE)
PICKLE_SUFFIXES = (".pt", ".pth", ".ckpt")


def deployable_file_name(distilled: bool) -> str:
    """The file name a run gives its deployable network: by role, so a teacher is no "student"."""
    return STUDENT_FILE if distilled else MODEL_FILE


def atomic_write(path: str | os.PathLike, write) -> Path:
    """Call ``write(tmp_path)`` then fsync and rename, so ``path`` is never half-written.

    A full disk (or quota) is :class:`DiskFullError`, one sentence naming ``path``; the
    temporary file is removed and a previous ``path`` is left as it was."""
    path = Path(path)
    if path.exists() and path.is_dir():
        raise IsADirectoryError(f"cannot write {path}: it is a directory")
    path.parent.mkdir(parents=True, exist_ok=True)
    existed = path.exists()
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual file mode
        os.replace(tmp, path)
    except BaseException as exc:
        full = isinstance(exc, Exception) and disk_full(exc, path.parent)
        if os.path.exists(tmp):
            os.unlink(tmp)
        if full:
            kept = f"the previous {path.name} is unchanged" if existed else "nothing was written"
            raise DiskFullError(path, kept) from None
        raise
    return path


#: errno values of a full disk and of an exhausted quota.
FULL_ERRNOS = frozenset({errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)})


def disk_full(exc: BaseException, folder: str | os.PathLike | None = None) -> bool:
    """Whether ``exc`` (or an error it was raised from) means the disk or quota is full.

    Writers wrap the ``OSError``: safetensors in its own error with the OS text, ``torch.save``
    in a ``RuntimeError`` (with the ``OSError`` as context when it writes to a file object, with
    nothing when it writes to a path; then ``folder`` having no free space decides)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in FULL_ERRNOS:
            return True
        text = str(current)
        if "No space left on device" in text or "Disk quota exceeded" in text:
            return True
        current = current.__cause__ or current.__context__
    if folder is not None and not isinstance(exc, OSError):
        try:
            return shutil.disk_usage(folder).free == 0
        except OSError:
            return False
    return False


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def save_state_dict(state: dict[str, torch.Tensor], path: str | os.PathLike,
                    metadata: dict[str, Any] | None = None) -> Path:
    """Write tensors as safetensors; metadata values are stored JSON-encoded (non-finite as null)."""
    tensors = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    meta = {"format_version": FORMAT_VERSION}
    meta.update({k: json.dumps(json_safe(v)) for k, v in (metadata or {}).items()})
    return atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=meta))


def read_safetensors(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Tensors and decoded metadata of a safetensors file, with a clear error if it is damaged."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        state = load_file(str(path))
        with safe_open(str(path), framework="pt") as fh:
            raw = fh.metadata() or {}
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path} is not a readable safetensors file ({exc})") from None
    return state, _decoded(raw)


def read_metadata(path: str | os.PathLike) -> dict[str, Any] | None:
    """Decoded metadata of a safetensors file without reading its tensors; None if unreadable."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            raw = handle.metadata() or {}
    except Exception:  # any damage: load_model gives the one-sentence error
        return None
    return _decoded(raw)


def _decoded(raw: dict[str, str]) -> dict[str, Any]:
    meta: dict[str, Any] = {}
    for key, value in raw.items():
        try:
            meta[key] = json.loads(value)
        except json.JSONDecodeError:
            meta[key] = value
    return meta


def class_names_of(metadata: dict[str, Any], num_outputs: int) -> tuple[str, ...]:
    """The predictable classes: the saved names if they fit the outputs, else ``class_<i>``
    (one fewer when the last output is the paper's void class)."""
    names = metadata.get("class_names")
    if (isinstance(names, list) and 0 < len(names) <= num_outputs
            and all(isinstance(n, str) for n in names)):
        return tuple(names)
    count = num_outputs - 1 if metadata.get("void_as_extra_class") is True and num_outputs > 1 \
        else num_outputs
    return tuple(f"class_{i}" for i in range(count))


def model_metadata(model: nn.Module, **extra: Any) -> dict[str, Any]:
    """Metadata that lets :func:`load_model` rebuild a registered segmentor."""
    meta = {
        "architecture": getattr(model, "model_name", type(model).__name__),
        "num_classes": getattr(model, "num_classes", None),
        "mean": list(normalisation_of(model)[0]),
        "std": list(normalisation_of(model)[1]),
    }
    options = getattr(model, "model_options", None)
    if options:  # hf:/timm: networks: their configuration, so the file alone rebuilds them
        meta["model_options"] = options
    meta.update(extra)
    return meta


def save_model(model: nn.Module, path: str | os.PathLike, **extra_metadata: Any) -> Path:
    """Save a segmentor's weights with the metadata needed to rebuild it."""
    return save_state_dict(model.state_dict(), path, model_metadata(model, **extra_metadata))


def model_file(path: str | os.PathLike, last: bool = False) -> Path:
    """The ``.safetensors`` behind ``path``: the file itself, or a run folder's deployable network
    (``best/`` first, then ``last/``; ``last=True`` takes ``last/`` only). A ``model.safetensors``
    that an earlier version saved as ``student.safetensors`` is found under that name."""
    path = Path(path)
    if path.is_dir():
        candidates = [f for f in RUN_FOLDER_FILES if f.startswith("last/")] if last else RUN_FOLDER_FILES
        for candidate in candidates:
            if (path / candidate).is_file():
                return path / candidate
        raise CheckpointError(f"{path} is a folder without a deployable network (looked for "
                              f"{', '.join(candidates)})")
    if not path.exists():
        if path.name == MODEL_FILE and (path.parent / STUDENT_FILE).is_file():  # an earlier version's run
            return path.parent / STUDENT_FILE
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise CheckpointError(f"{path} is a PyTorch checkpoint ({path.suffix}), not a deployable model; "
                              "use a run's best/ .safetensors file ('transkd convert' turns external "
                              "weights into one)")
    return path


def load_model(path: str | os.PathLike, map_location: str | torch.device = "cpu",
               last: bool = False) -> nn.Module:
    """Rebuild a saved network from its safetensors file alone, or from a run folder (its best
    network; ``last=True``: the last one). Nothing in the file is executed."""
    path = model_file(path, last)
    state, meta = read_safetensors(path)
    arch, num_classes = meta.get("architecture"), meta.get("num_classes")
    if not arch and "student" in meta:
        raise CheckpointError(f"{path} holds training-only distillation adapters, not a student; "
                              "use the student.safetensors next to it")
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
