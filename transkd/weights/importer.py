"""Bring a checkpoint from elsewhere into a transkd ``.safetensors`` file, or write a transkd
model in another codebase's naming: what ``transkd convert`` runs, callable from Python.

Sources: a TransKD authors' release (student or teacher ``.pth``, with or without ``module.``
prefixes or a distiller around the student), NVlabs/mmseg weights, a Hugging Face Segformer
folder, or a transkd ``.safetensors``. Pickles are read with ``weights_only=True``.

Output files carry the same metadata as a trained model (``architecture``, ``num_classes``,
``mean``, ``std``, optional ``class_names``/``dataset``/``palette``/``void_as_extra_class``) plus
``kind`` (``"segmentor"`` or ``"encoder"``), ``source_format`` and ``converted_from``. An encoder
file (``kind: "encoder"``, ``architecture`` an encoder name such as ``mit_b0``, no
``num_classes``) holds the encoder's own keys and is what ``model.init`` loads into a segmentor's
encoder. Error messages name the ``transkd convert`` option matching each keyword argument.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..data import dataset_class
from ..errors import CheckpointError, ConfigError
from ..models import IMAGENET_MEAN, IMAGENET_STD, create_model, get_entry
from ..models.heads import SegFormerHead
from ..models.lvt import LVTEncoder
from .convert import convert_state_dict, export_state_dict
from .hf import write_hf_folder
from .infer import (
    SourceCheckpoint,
    Structure,
    encoder_of,
    hf_class_names,
    infer_structure,
    input_normalization,
    match_architecture,
    read_source,
)
from .io import atomic_write, load_state_strict, model_metadata, save_state_dict

#: Output namings (``to``) and how a summary names what they write.
TARGETS = {"transkd": "transkd safetensors", "nvlabs": "NVlabs naming, torch.save",
           "mmseg": "mmseg naming, torch.save", "hf": "Hugging Face folder"}
#: Namings a source can be read in (``source``); ``auto`` detects it.
SOURCES = ("auto", "nvlabs", "hf", "mmseg", "transkd")
#: Input normalisations (``input_norm``); ``auto`` is what the source's origin implies.
INPUT_NORMS = ("auto", "imagenet", "none")
HF_EPS_NOTE = ("Hugging Face Segformer runs its block LayerNorms with eps 1e-5 where transkd and "
               "NVlabs use 1e-6, so its logits differ slightly from transkd's on the same weights")


@dataclass
class ImportResult:
    """What was written, for a summary: the model, its size, its input statistics and classes."""

    path: Path
    target: str
    architecture: str
    num_classes: int | None
    tensors: int
    parameters: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    input_reason: str
    classes: str
    notes: tuple[str, ...]
    hf_note: str | None = None


def import_checkpoint(src: str | os.PathLike, output: str | os.PathLike, *, model: str | None = None,
                      num_classes: int | None = None, source: str = "auto", prefix: str | None = None,
                      encoder_only: bool = False, class_names: str | os.PathLike | None = None,
                      dataset: str | None = None, input_norm: str = "auto", to: str = "transkd",
                      force: bool = False,
                      announce: Callable[[str, str], None] | None = None) -> ImportResult:
    """Convert ``src`` into ``output`` (``to``: transkd, nvlabs, mmseg or hf) and return a summary.

    Without ``model``/``num_classes`` the architecture is inferred from the tensors (config.json for
    a Hugging Face folder). ``announce(label, text)`` hears what was found as soon as it is known
    (``source``, ``inferred``, each ``note``), so a caller can show it before a later step fails.
    """
    say = announce or (lambda label, text: None)
    out = Path(output)
    check_output(out, to, force)
    if num_classes is not None and num_classes < 1:
        raise ConfigError(f"--num-classes must be at least 1, got {num_classes}")
    if class_names is not None and dataset is not None:
        raise ConfigError("--class-names and --dataset both name the classes; give one")
    if model is not None:
        get_entry(model)  # an unknown name fails before SRC is read, listing the known ones
    say("reading", str(src))  # each step is announced when it starts: a large source takes a while
    checkpoint = read_source(src, source, prefix)
    say("source", describe_source(checkpoint))
    architecture, structure = choose_architecture(checkpoint, model, encoder_only, say)
    classes_out = resolve_classes(checkpoint, architecture, structure, num_classes)
    network, notes = load_into_model(checkpoint, architecture, classes_out)
    for note in notes:
        say("note", note)
    mean, std, why = resolve_input_norm(input_norm, checkpoint)
    network.input_mean, network.input_std = mean, std
    classes, classes_line = class_metadata(checkpoint, network, dataset, class_names)
    say("writing", f"{out} ({to} naming)")
    written = write_output(network, architecture, checkpoint, out, to, classes)
    return ImportResult(path=out, target=to, architecture=architecture,
                        num_classes=getattr(network, "num_classes", None), tensors=written,
                        parameters=sum(p.numel() for p in network.parameters()), mean=tuple(mean),
                        std=tuple(std), input_reason=why, classes=classes_line, notes=tuple(notes),
                        hf_note=HF_EPS_NOTE if "hf" in (to, checkpoint.naming) else None)


# ----------------------------------------------------------------------------- checks and choices


def check_output(out: Path, target: str, force: bool) -> None:
    """Refuse an output name that does not fit ``target``, or an existing one without ``force``."""
    if target not in TARGETS:
        raise ConfigError(f"--to {target!r} is not a known naming; choose one of {', '.join(TARGETS)}")
    if target == "transkd" and out.suffix != ".safetensors":
        raise ConfigError(f"--output {out} must end in .safetensors (or choose another naming with --to)")
    if target in ("nvlabs", "mmseg") and out.suffix == ".safetensors":
        raise ConfigError(f"--to {target} writes a torch.save file; name --output with .pth, not "
                          ".safetensors")
    if target == "hf" and out.suffix in (".safetensors", ".pth", ".pt", ".bin"):
        raise ConfigError(f"--to hf writes a folder (config.json + model.safetensors); name --output "
                          f"as a folder, not {out.name}")
    if target == "hf" and out.is_dir() and any(out.iterdir()) and not (out / "config.json").is_file():
        raise ConfigError(f"--output {out} is a folder that is not a model folder (no config.json); "
                          "refusing to replace it")
    if target != "hf" and out.is_dir():
        raise ConfigError(f"--output {out} is a folder; name a file")
    if out.exists() and not force:
        raise ConfigError(f"--output {out} already exists; pass --force to replace it")


def describe_source(source: SourceCheckpoint) -> str:
    """``x.pth: nvlabs naming (the TransKD authors' layout), student under 'student.'; ...``."""
    parts = [f"{source.path}: {source.naming} naming"]
    if source.authors_layout:
        parts[0] += " (the TransKD authors' layout)"
    if source.hf_config is not None:
        parts[0] += " (Hugging Face folder)"
    if source.student is not None:
        where = "prefix" if source.student.endswith(".") else "key"
        parts.append(f"kept the network under {where} {source.student!r}")
        if source.left_out:
            parts.append(f"left out {', '.join(source.left_out)}")
    return "; ".join(parts)


def choose_architecture(source: SourceCheckpoint, model: str | None, encoder_only: bool,
                        say: Callable[[str, str], None]) -> tuple[str, Structure | None]:
    """(model name, inferred structure or None): ``model``, the source's metadata, else inference."""
    named = model or source.metadata.get("architecture")
    if named:
        return (encoder_of(named) if encoder_only else named), None
    structure, origin = infer_structure(source)
    architecture = match_architecture(structure, encoder_only=encoder_only)
    say("inferred", f"{architecture} from {origin}: {structure.describe()}")
    return architecture, structure


def resolve_classes(source: SourceCheckpoint, architecture: str, structure: Structure | None,
                    num_classes: int | None) -> int | None:
    """Output classes: ``num_classes``, the source's metadata or classifier shape; None for an encoder."""
    if get_entry(architecture).kind == "encoder":
        if num_classes is not None:
            raise ConfigError(f"--num-classes: {architecture} is an encoder and has no classes")
        return None
    stored = source.metadata.get("num_classes")
    if stored is None:
        if structure is None:
            try:
                structure, _ = infer_structure(source)
            except CheckpointError:
                structure = None
        stored = structure.num_classes if structure is not None else None
    if num_classes is not None:
        if stored is not None and int(stored) != num_classes:
            raise CheckpointError(f"--num-classes {num_classes} does not match {source.path}, "
                                  f"whose classifier predicts {stored} classes")
        return num_classes
    if stored is None:
        raise ConfigError(f"cannot tell how many classes {source.path} predicts; pass --num-classes")
    return int(stored)


def load_into_model(source: SourceCheckpoint, architecture: str,
                    num_classes: int | None) -> tuple[nn.Module, list[str]]:
    """The transkd model with the source's weights, strictly; and the conversion's notes."""
    model = create_model(architecture) if num_classes is None else \
        create_model(architecture, num_classes=num_classes)
    state = convert_state_dict(source.state, model, source.naming, name=str(source.path))
    if state.encoder_only:
        raise CheckpointError(f"{source.path} holds no decode-head weights for {architecture}; pass "
                              f"--encoder-only (or --model {encoder_of(architecture)}) to write an "
                              "encoder file")
    load_state_strict(model, dict(state), source=str(source.path))
    return model.eval(), list(state.notes)


def resolve_input_norm(choice: str, source: SourceCheckpoint
                       ) -> tuple[tuple[float, ...], tuple[float, ...], str]:
    """(mean, std, why) for ``choice``: imagenet, none, or what the source's origin implies."""
    if choice == "imagenet":
        return IMAGENET_MEAN, IMAGENET_STD, "--input-norm imagenet"
    if choice == "none":
        return (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), "--input-norm none"
    if choice != "auto":
        raise ConfigError(f"--input-norm {choice!r} is not one of {', '.join(INPUT_NORMS)}")
    mean, std, why = input_normalization(source)
    return mean, std, f"{why}; change with --input-norm"


def class_metadata(source: SourceCheckpoint, model: nn.Module, dataset: str | None,
                   class_names: str | os.PathLike | None) -> tuple[dict[str, Any], str]:
    """Metadata naming the classes, and a line saying what was recorded."""
    num_outputs = getattr(model, "num_classes", None)
    if num_outputs is None:
        if dataset or class_names:
            raise ConfigError("--dataset/--class-names: an encoder file has no classes to name")
        return {}, ""
    meta: dict[str, Any] = {}
    if dataset:
        dataset_type = dataset_class(dataset)
        names = list(dataset_type.class_names)
        if not names:
            raise ConfigError(f"--dataset {dataset} reads its classes from its folder; pass "
                              "--class-names FILE instead")
        meta = {"dataset": dataset, "class_names": names}
        if len(dataset_type.palette) >= len(names):
            meta["palette"] = [list(c) for c in dataset_type.palette[:len(names)]]
        origin = f"dataset {dataset}"
    elif class_names:
        meta, origin = {"class_names": read_class_names(class_names)}, str(class_names)
    elif isinstance(source.metadata.get("class_names"), list):
        keep = ("dataset", "class_names", "palette", "void_as_extra_class")
        meta = {k: source.metadata[k] for k in keep if k in source.metadata}
        origin = f"{source.path.name} metadata"
    elif source.hf_config is not None and hf_class_names(source.hf_config):
        meta, origin = {"class_names": hf_class_names(source.hf_config)}, "config.json id2label"
    else:
        return {}, "no names recorded (add --dataset NAME or --class-names FILE)"
    names = meta["class_names"]
    if len(names) == num_outputs:
        meta["void_as_extra_class"] = False
        return meta, f"{len(names)} names from {origin}"
    if len(names) == num_outputs - 1:
        meta["void_as_extra_class"] = True
        return meta, f"{len(names)} names from {origin} + void as output {num_outputs - 1}"
    raise ConfigError(f"{origin} names {len(names)} classes but the model predicts {num_outputs}")


def read_class_names(path: str | os.PathLike) -> list[str]:
    """One class name per line; blank lines are skipped."""
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"--class-names {file} does not exist")
    names = [line.strip() for line in file.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not names:
        raise ConfigError(f"--class-names {file} holds no names (expected one per line)")
    return names


# ----------------------------------------------------------------------------- writing


def write_output(model: nn.Module, architecture: str, source: SourceCheckpoint, out: Path, target: str,
                 classes: dict[str, Any]) -> int:
    """Write ``model`` to ``out`` in ``target`` naming; return how many tensors were written."""
    is_encoder = getattr(model, "num_classes", None) is None
    if target == "transkd":
        provenance = {"kind": "encoder" if is_encoder else "segmentor",
                      "source_format": source.naming, "converted_from": source.path.name}
        metadata = model_metadata(model, **provenance, **classes)
        if is_encoder:
            metadata["architecture"] = architecture
            metadata.pop("num_classes")
        state = model.state_dict()
        save_state_dict(state, out, metadata)
        return len(state)
    if target in ("hf", "mmseg") and isinstance(getattr(model, "encoder", model), LVTEncoder):
        raise ConfigError(f"--to {target}: {target} has no LVT network; use --to nvlabs (the TransKD "
                          "authors' LVT names) or --to transkd")
    if target == "hf":
        return write_hf_folder(model, out, classes)
    if target == "mmseg" and not is_encoder and isinstance(model.decode_head, SegFormerHead):
        raise ConfigError("--to mmseg: mmseg's SegformerHead is not the NVlabs All-MLP head, so only "
                          "the encoder maps; add --encoder-only, or use --to nvlabs")
    state = export_state_dict(model, target)
    atomic_write(out, lambda tmp: torch.save(state, tmp))
    return len(state)
