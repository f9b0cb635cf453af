"""What a checkpoint from elsewhere holds: its tensors, their naming, and the registered network
their shapes describe.

Reading (:func:`read_source`) accepts a ``.pth``/``.pt``/``.bin`` file (loaded with
``weights_only=True``), a ``.safetensors`` file (ours or anyone's) or a Hugging Face model folder
(``config.json`` + ``model.safetensors``/``pytorch_model.bin``, sharded or not). Inside a
distillation checkpoint it keeps the student only: a student held under a key (``{"s_net": {...}}``)
or under a key prefix (the TransKD authors' distiller saves ``student.``, ``skfs.``,
``embed1_linearproject.``; DataParallel adds ``module.``).

Inference (:func:`infer_structure`, :func:`match_architecture`) reads stage widths, blocks per
stage, MLP and spatial-reduction ratios and the decode head from the tensors through the same
name maps the conversion uses, or from ``config.json`` for a Hugging Face folder, and names the
one registered model with that shape. Attention head counts are not visible in weights, so for
tensor-only files they are assumed to be the ones the registered encoder of that shape uses.
The TransKD authors' LVT layout (``backbone.{stage}.0.proj``) is read through its own name map,
and a Semantic FPN head without BatchNorm is the authors' PVTv2 head (``*_authors_fpn``).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError, ConfigError
from ..models import IMAGENET_MEAN, IMAGENET_STD, get_entry, list_models
from ..models.lvt import LVT_CONFIGS
from ..models.mit import MIT_CONFIGS
from ..models.pvtv2 import PVTV2_CONFIGS
from .convert import (
    FORMATS,
    _canonical_key,
    _hf_layout_of,
    _name_map,
    _shown,
    detect_format,
    read_weights,
    unwrap_state_dict,
)
from .io import read_safetensors

#: Attribute names distillation code gives the student; the TransKD authors use ``student``.
STUDENT_NAMES = ("student", "s_net", "student_model", "student_net", "model_s", "net_s", "snet")
_CONTAINERS = ("state_dict", "model")
#: Weight files of a Hugging Face folder, in the order ``from_pretrained`` prefers them.
HF_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                   "pytorch_model.bin.index.json")
#: The Hugging Face SegformerConfig defaults, for config.json files that leave a field out.
_HF_DEFAULTS: dict[str, Any] = {
    "num_channels": 3, "num_encoder_blocks": 4, "depths": [2, 2, 2, 2], "sr_ratios": [8, 4, 2, 1],
    "hidden_sizes": [32, 64, 160, 256], "patch_sizes": [7, 3, 3, 3], "strides": [4, 2, 2, 2],
    "num_attention_heads": [1, 2, 5, 8], "mlp_ratios": [4, 4, 4, 4], "hidden_act": "gelu",
    "decoder_hidden_size": 256,
}
#: What every transkd encoder is built with and a config.json could say otherwise.
_FIXED_HF_FIELDS = {"num_channels": 3, "num_encoder_blocks": 4, "patch_sizes": [7, 3, 3, 3],
                    "strides": [4, 2, 2, 2], "hidden_act": "gelu"}
_AUTHORS_HEAD = re.compile(r"(linear_c[1-4]|linear_fuse|linear_pred|head\.scale_heads|head\.conv_seg)\.")
#: The authors' LVT: ``backbone.{stage}.0`` is a stage's patch embedding (``backbone.`` stripped).
_LVT_PATCH = re.compile(r"[0-3]\.0\.proj\.weight$")
_GENERIC_LABEL = re.compile(r"LABEL_\d+")


# ----------------------------------------------------------------------------- reading


@dataclass
class SourceCheckpoint:
    """Tensors of one network, as named in the source, and what the source said about them.

    ``metadata``: a transkd ``.safetensors`` file's metadata (empty for foreign files);
    ``hf_config``/``hf_preprocessor``: a Hugging Face folder's ``config.json`` and
    ``preprocessor_config.json``; ``student``: where the student was found in a distillation
    checkpoint; ``left_out``: what else that checkpoint held (teacher, adapters), not converted.
    """

    path: Path
    state: dict[str, torch.Tensor]
    naming: str
    metadata: dict[str, Any] = field(default_factory=dict)
    hf_config: dict[str, Any] | None = None
    hf_preprocessor: dict[str, Any] | None = None
    student: str | None = None
    left_out: list[str] = field(default_factory=list)

    @property
    def authors_layout(self) -> bool:
        """Saved by the TransKD authors' code: flat NVlabs names or their distiller's ``student.``."""
        return self.naming == "nvlabs" and (
            self.student == "student." or any(_AUTHORS_HEAD.match(k) for k in self.state))


def read_source(path: str | os.PathLike, source: str = "auto",
                prefix: str | None = None) -> SourceCheckpoint:
    """Read ``path`` without unpickling code and keep the one network it holds (the student)."""
    path = Path(path)
    if source != "auto" and source not in FORMATS:
        raise ConfigError(f"unknown --source {source!r}; choose auto or one of {', '.join(FORMATS)}")
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    metadata: dict[str, Any] = {}
    hf_config = hf_preprocessor = None
    if path.is_dir():
        raw, hf_config, hf_preprocessor = _read_hf_folder(path)
    elif path.suffix == ".safetensors":
        raw, metadata = read_safetensors(path)
    else:
        raw = read_weights(path)
    state, student, left_out = select_student(raw, prefix, str(path))
    naming = detect_format(state) if source == "auto" else source
    return SourceCheckpoint(path, state, naming, metadata, hf_config, hf_preprocessor, student, left_out)


def _read_hf_folder(path: Path) -> tuple[dict, dict[str, Any], dict[str, Any] | None]:
    config = _read_json(path / "config.json", f"{path} is a folder without config.json; a Hugging "
                        "Face model folder holds config.json and model.safetensors or pytorch_model.bin")
    preprocessor_path = path / "preprocessor_config.json"
    preprocessor = _read_json(preprocessor_path, "") if preprocessor_path.is_file() else None
    weights = next((path / name for name in HF_WEIGHT_FILES if (path / name).is_file()), None)
    if weights is None:
        raise CheckpointError(f"{path} has config.json but no weights (looked for "
                              f"{', '.join(HF_WEIGHT_FILES)})")
    if not weights.name.endswith(".index.json"):
        return read_weights(weights), config, preprocessor
    weight_map = _read_json(weights, "").get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise CheckpointError(f"{weights} has no 'weight_map' naming its shard files")
    state: dict[str, torch.Tensor] = {}
    for shard in sorted(set(weight_map.values())):
        state.update(unwrap_state_dict(read_weights(path / shard), str(path / shard)))
    return state, config, preprocessor


def _read_json(path: Path, missing_message: str) -> dict[str, Any]:
    if not path.is_file():
        raise CheckpointError(missing_message)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path} is not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} must hold a JSON object, found {type(data).__name__}")
    return data


def select_student(obj: Any, prefix: str | None = None,
                   name: str = "checkpoint") -> tuple[dict[str, torch.Tensor], str | None, list[str]]:
    """(tensors, where the student was, what else was there) for a model or distillation checkpoint.

    ``prefix`` names the network to keep (``"student"``, ``"t_net."``); by default the first of
    :data:`STUDENT_NAMES` found as a key or a key prefix, else the whole state.
    """
    wanted = (prefix.rstrip("."),) if prefix else STUDENT_NAMES
    for _ in range(4):  # a student held under a key, maybe inside containers
        if not isinstance(obj, Mapping):
            break
        held = next((k for k in wanted if isinstance(obj.get(k), Mapping)), None)
        if held is not None:
            others = sorted(str(k) for k, v in obj.items() if k != held and isinstance(v, Mapping))
            return unwrap_state_dict(obj[held], name), str(held), others
        inner = next((obj[k] for k in _CONTAINERS if isinstance(obj.get(k), Mapping)), None)
        if inner is None:
            break
        obj = inner
    state = unwrap_state_dict(obj, name)
    found = [p + "." for p in wanted if any(k.startswith(p + ".") for k in state)]
    if not found:
        if prefix:
            tops = sorted({k.split(".", 1)[0] for k in state})
            raise CheckpointError(f"{name} has no tensors under {prefix!r}; its top-level names are "
                                  f"{_shown(tops, 8)}")
        return state, None, []
    if len(found) > 1:
        raise CheckpointError(f"{name} holds networks under {' and '.join(map(repr, found))}; pass --prefix "
                              "to choose one")
    student = found[0]
    kept = unwrap_state_dict({k[len(student):]: v for k, v in state.items() if k.startswith(student)},
                             f"{name} ({student})")
    others = sorted({k.split(".", 1)[0] for k in state if not k.startswith(student)})
    return kept, student, others


# ----------------------------------------------------------------------------- structure


@dataclass(frozen=True)
class Structure:
    """The shape of a hierarchical encoder (+ decode head) as read from weights or a config.

    ``head``: ``"segformer"`` (All-MLP), ``"fpn"`` (Semantic FPN), ``"fpn_authors"`` (Semantic
    FPN without norm, the TransKD authors' PVTv2 head) or None (encoder only);
    ``head_width``: the All-MLP embedding width D, or the FPN neck's channels;
    ``num_heads``: None when the source cannot tell (weights alone).
    """

    widths: tuple[int, ...]
    depths: tuple[int, ...]
    mlp_ratios: tuple[float, ...]
    sr_ratios: tuple[int, ...]
    head: str | None = None
    head_width: int | None = None
    num_classes: int | None = None
    num_heads: tuple[int, ...] | None = None

    def fits(self, config) -> bool:
        """Whether a transkd :class:`~transkd.models.EncoderConfig` has this shape."""
        return (self.widths == tuple(config.embed_dims) and self.depths == tuple(config.depths)
                and self.mlp_ratios == tuple(float(r) for r in config.mlp_ratios)
                and self.sr_ratios == tuple(config.sr_ratios)
                and (self.num_heads is None or self.num_heads == tuple(config.num_heads)))

    def describe(self) -> str:
        """``stage widths 32/64/160/256, blocks 2/2/2/2, MLP ratio 4/4/4/4, ..., 19 classes``."""
        parts = [f"stage widths {_slashed(self.widths)}", f"blocks {_slashed(self.depths)}",
                 f"MLP ratio {_slashed(self.mlp_ratios)}", f"SR ratio {_slashed(self.sr_ratios)}"]
        if self.num_heads is not None:
            parts.append(f"heads {_slashed(self.num_heads)}")
        if self.head == "segformer":
            parts.append(f"All-MLP head D={self.head_width}")
        elif self.head == "fpn":
            parts.append(f"Semantic FPN head ({self.head_width} channels)")
        elif self.head == "fpn_authors":
            parts.append(f"Semantic FPN head without norm ({self.head_width} channels)")
        else:
            parts.append("no decode head")
        if self.num_classes is not None:
            parts.append(f"{self.num_classes} classes")
        return ", ".join(parts)


def _slashed(values) -> str:
    return "/".join(f"{v:g}" if isinstance(v, float) else str(v) for v in values)


def infer_structure(source: SourceCheckpoint) -> tuple[Structure, str]:
    """The structure and where it was read from (``"config.json"`` or ``"the tensors"``)."""
    if source.hf_config is not None:
        return structure_from_hf_config(source.hf_config, source.state, source.path), "config.json"
    return structure_from_state(source.state, source.naming, str(source.path)), "the tensors"


def structure_from_state(state: Mapping[str, torch.Tensor], naming: str,
                         name: str = "state dict") -> Structure:
    """Read the structure off the tensors' shapes, through the name map of ``naming``."""
    canonical = {_canonical_key(k, naming): k for k in state}
    lvt = naming == "nvlabs" and any(_LVT_PATCH.match(k) for k in canonical)
    names = _name_map(naming, _hf_layout_of(canonical) if naming == "hf" else "legacy", lvt)

    def weight(module: str) -> torch.Tensor | None:
        found = names(module, [False])  # only level 1 of an FPN head is asked for: no upsampling
        if found is None or len(found[0]) != 1:
            return None
        key = canonical.get(f"{found[0][0]}.weight")
        return None if key is None else state[key]

    widths, depths, mlp_ratios, sr_ratios = [], [], [], []
    for i in range(4):
        stage = f"encoder.stages.{i}"
        proj = weight(f"{stage}.patch_embed.proj")
        if proj is None:
            break
        widths.append(int(proj.shape[0]))
        depth = 0
        while weight(f"{stage}.blocks.{depth}.norm1") is not None:
            depth += 1
        depths.append(depth)
        fc1, sr = weight(f"{stage}.blocks.0.mlp.fc1"), weight(f"{stage}.blocks.0.attn.sr")
        mlp_ratios.append(fc1.shape[0] / widths[-1] if fc1 is not None else float("nan"))
        sr_ratios.append(int(sr.shape[-1]) if sr is not None else 1)
    if len(widths) != 4:
        raise CheckpointError(f"cannot infer the architecture of {name}: it has {len(widths)} of the "
                              f"4 stage patch embeddings in {naming} naming; pass --model")

    head = head_width = num_classes = None
    projection, classifier = weight("decode_head.linear_c.0.proj"), weight("decode_head.classifier")
    lateral, fpn_classifier = (weight("decode_head.neck.lateral_convs.0"),
                               weight("decode_head.head.classifier"))
    if projection is not None:
        head, head_width = "segformer", int(projection.shape[0])
        num_classes = None if classifier is None else int(classifier.shape[0])
    elif lateral is not None and fpn_classifier is not None:
        normed = weight("decode_head.head.scale_heads.0.0.bn") is not None
        head = "fpn" if normed else "fpn_authors"
        head_width, num_classes = int(lateral.shape[0]), int(fpn_classifier.shape[0])
    return Structure(tuple(widths), tuple(depths), tuple(mlp_ratios), tuple(sr_ratios), head,
                     head_width, num_classes)


def structure_from_hf_config(config: Mapping[str, Any], state: Mapping[str, torch.Tensor],
                             name: str | os.PathLike = "config.json") -> Structure:
    """Structure from a Segformer ``config.json``; the head is there if the weights hold one."""
    where = f"{name}/config.json" if Path(name).is_dir() else str(name)
    if config.get("model_type") != "segformer":
        raise CheckpointError(f"{where} has model_type {config.get('model_type')!r}; only "
                              "Hugging Face Segformer folders can be converted")
    values = {**_HF_DEFAULTS, **config}
    for key, expected in _FIXED_HF_FIELDS.items():
        if values[key] != expected:
            raise CheckpointError(f"{where} sets {key} to {values[key]!r}; transkd encoders use "
                                  f"{expected!r}")
    has_head = any(_canonical_key(k, "hf").startswith("decode_head.") for k in state)
    id2label = values.get("id2label") or {}
    num_classes = len(id2label) if id2label else values.get("num_labels")
    return Structure(
        tuple(values["hidden_sizes"]), tuple(values["depths"]),
        tuple(float(r) for r in values["mlp_ratios"]), tuple(values["sr_ratios"]),
        "segformer" if has_head else None, values["decoder_hidden_size"] if has_head else None,
        int(num_classes) if has_head and num_classes else None, tuple(values["num_attention_heads"]))


def hf_class_names(config: Mapping[str, Any]) -> list[str] | None:
    """Class names from ``id2label``, unless they are the generic ``LABEL_<i>`` names HF fills in."""
    id2label = config.get("id2label") or {}
    try:
        names = [str(id2label[str(i)] if str(i) in id2label else id2label[i])
                 for i in range(len(id2label))]
    except KeyError:
        return None
    if not names or all(_GENERIC_LABEL.fullmatch(n) for n in names):
        return None
    return names


# ----------------------------------------------------------------------------- registered models


def encoder_configs() -> dict:
    """Registered encoder name → its :class:`~transkd.models.EncoderConfig`."""
    known = {**MIT_CONFIGS, **PVTV2_CONFIGS, **LVT_CONFIGS}
    return {name: known[name] for name in list_models(kind="encoder") if name in known}


def encoder_of(name: str) -> str:
    """The encoder a registered model is built on: ``segformer_b2`` → ``mit_b2``,
    ``pvtv2_b0_fpn`` → ``pvtv2_b0``, an encoder → itself (the registry's naming rule)."""
    entry = get_entry(name)
    if entry.kind == "encoder":
        return name
    if entry.family == "segformer":
        encoder = "mit_" + name.removeprefix("segformer_")
    elif entry.family == "pvtv2":
        encoder = name.removesuffix("_fpn").removesuffix("_authors")
    elif entry.family == "lvt":
        encoder = name.removesuffix("_mlp")
    else:
        raise ConfigError(f"cannot tell which encoder {name} is built on")
    return get_entry(encoder).name


def head_of(name: str) -> str | None:
    """The decode head a registered segmentor carries, in :class:`Structure`'s words (None for a
    family whose head the weight maps do not know)."""
    family = get_entry(name).family
    if family in ("segformer", "lvt"):
        return "segformer"
    if family == "pvtv2":
        return "fpn_authors" if name.endswith("_authors_fpn") else "fpn"
    return None


def match_architecture(structure: Structure, encoder_only: bool = False) -> str:
    """The one registered model with this structure (its encoder if ``encoder_only``)."""
    configs = encoder_configs()
    encoders = [n for n, config in configs.items() if structure.fits(config)]
    if not encoders:
        raise CheckpointError(f"no registered encoder has {structure.describe()}; pass --model "
                              f"(known encoders: {', '.join(configs)})")
    if structure.head is None or encoder_only:
        if len(encoders) > 1:
            raise CheckpointError(f"the weights fit {' and '.join(encoders)} alike; pass --model to "
                                  "choose")
        return encoders[0]
    matches = [n for n in list_models(kind="segmentor")
               if head_of(n) == structure.head and encoder_of(n) in encoders]
    if len(matches) != 1:
        raise CheckpointError(f"no registered segmentation model pairs encoder "
                              f"{' or '.join(encoders)} with a {structure.head} head; pass --model")
    return matches[0]


# ----------------------------------------------------------------------------- input statistics

_IDENTITY = ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))


def input_normalization(source: SourceCheckpoint) -> tuple[tuple[float, ...], tuple[float, ...], str]:
    """(mean, std, why) of the inputs the source network was trained on, in [0, 1] pixel units.

    The TransKD authors feed ``ToTensor()`` pixels without mean/std, while NVlabs, mmseg and Hugging
    Face train with ImageNet statistics; a checkpoint's naming tells the two apart.
    """
    meta = source.metadata
    if isinstance(meta.get("mean"), list) and isinstance(meta.get("std"), list):
        return tuple(meta["mean"]), tuple(meta["std"]), f"as recorded in {source.path.name}"
    processor = source.hf_preprocessor
    if processor is not None:
        if processor.get("do_normalize") is False:
            return (*_IDENTITY, "preprocessor_config.json turns normalisation off")
        if "image_mean" in processor and "image_std" in processor:
            return (tuple(float(v) for v in processor["image_mean"]),
                    tuple(float(v) for v in processor["image_std"]), "from preprocessor_config.json")
    if source.authors_layout:
        return (*_IDENTITY, "the TransKD authors train on [0, 1] pixels without mean/std")
    return IMAGENET_MEAN, IMAGENET_STD, "ImageNet statistics, as NVlabs, mmseg and Hugging Face train"
