"""Key maps between transkd weights and the layouts other codebases save.

Supported namings (``source``/``fmt``):

- ``"nvlabs"``: NVlabs SegFormer, the TransKD authors' code and whai362's PVTv2 (``patch_embed1``,
  ``block1.0.attn.q``, ``norm1``; head ``linear_c4``/``linear_fuse``/``linear_pred``), with or
  without ``backbone.``/``decode_head.`` prefixes; ImageNet ``mit_b*.pth``/``pvt_v2_b*.pth`` files;
  mmseg's Semantic FPN (``neck.lateral_convs.{i}.conv``, ``decode_head.scale_heads``,
  ``decode_head.conv_seg``), also as the authors' PVTv2 wrapper names it (``head.scale_heads``,
  convolutions with bias and no norm); the authors' LVT (``backbone.{stage}.0`` patch embedding,
  ``backbone.{stage}.1.{block}`` blocks with CSA's ``attn.attn``/``attn.weight``, RASA's
  ``attn.ds`` and 1×1-conv MLPs with ``mlp.depconv``; flat All-MLP head).
- ``"hf"``: Hugging Face transformers Segformer, both the 4.x layout (``encoder.block``,
  ``attention.self.query``) and the 5.x layout (``stages.{i}.blocks``, ``attention.q_proj``).
- ``"mmseg"``: mmsegmentation 1.x MiT (``layers.{i}.0.projection``, ``attn.attn.in_proj_weight``,
  ``ffn.layers.0/1/4``) and its Semantic FPN. mmseg's own SegformerHead is *not* the NVlabs head
  (it puts a 1×1 conv + BatchNorm + ReLU where NVlabs has a Linear), so only its backbone maps.
- ``"transkd"``: this package's own names.

Every map is written once, from our key to the foreign one(s); importing inverts it over the
target model's keys, so an import is strict by construction: each foreign tensor must be claimed
by exactly one of ours, and each of ours must be found, or a :class:`CheckpointError` lists what
is missing and what is left over.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..errors import CheckpointError
from ..models.heads import SegFormerHead, SemanticFPNHead
from ..models.lvt import LVTEncoder
from ..models.mit import HierarchicalEncoder
from .io import load_state_strict, read_safetensors, torch_load_tensors

logger = logging.getLogger(__name__)

FORMATS = ("nvlabs", "hf", "mmseg", "transkd")
HF_LAYOUTS = ("legacy", "stages")
_CONTAINER_KEYS = ("state_dict", "model", "student")
_HEAD_PREFIXES = ("decode_head.", "neck.", "head.", "classifier.", "auxiliary_head.")

Tensors = list[torch.Tensor]


# ----------------------------------------------------------------------------- tensor transforms


def _same(tensors: Tensors) -> Tensors:
    return list(tensors)


def _cat(tensors: Tensors) -> Tensors:
    return [torch.cat(list(tensors), dim=0)]


def _chunk2(tensors: Tensors) -> Tensors:
    return list(tensors[0].chunk(2, dim=0))


def _qkv_to_ours(tensors: Tensors) -> Tensors:
    """mmseg/nn.MultiheadAttention stacks q, k, v; ours keeps q apart and k, v together."""
    dim = tensors[0].shape[0] // 3
    return [tensors[0][:dim], tensors[0][dim:]]


def _linear_to_conv(tensors: Tensors) -> Tensors:
    return [tensors[0].reshape(*tensors[0].shape, 1, 1)]


def _conv_to_linear(tensors: Tensors) -> Tensors:
    return [tensors[0].flatten(1)]


@dataclass(frozen=True)
class _Group:
    """Our tensors ``ours`` correspond to foreign tensors ``theirs`` through two inverse maps."""
    ours: tuple[str, ...]
    theirs: tuple[str, ...]
    to_ours: Callable[[Tensors], Tensors] = _same
    to_theirs: Callable[[Tensors], Tensors] = _same
    encoder: bool = True


# ----------------------------------------------------------------------------- per-format names
#
# A name map turns one of our module paths (canonical, segmentor form: ``encoder.stages...``,
# ``decode_head...``) into the foreign module path(s) and a kind that says how tensors convert:
# "same", "kv" (ours: one kv Linear; theirs: key and value Linears), "qkv" (theirs: one stacked
# in_proj for q, k, v) or "conv1x1" (theirs: a 1×1 conv where ours has a Linear).

_MapResult = tuple[tuple[str, ...], str] | None

_FPN_NECK = re.compile(r"decode_head\.neck\.(lateral_convs|fpn_convs)\.(\d+)$")
_FPN_SCALE = re.compile(r"decode_head\.head\.scale_heads\.(\d+)\.(\d+)\.(conv|bn)$")
_SEG_PROJ = re.compile(r"decode_head\.linear_c\.(\d+)\.proj$")
_SEG_FUSE = re.compile(r"decode_head\.fuse\.(conv|bn)$")
_PATCH = re.compile(r"encoder\.stages\.(\d+)\.patch_embed\.(proj|norm)$")
_BLOCK = re.compile(r"encoder\.stages\.(\d+)\.blocks\.(\d+)\.(.+)$")
_STAGE_NORM = re.compile(r"encoder\.stages\.(\d+)\.norm$")


def _fpn_names(module: str, upsampling: list[bool]) -> _MapResult:
    """mmseg Semantic FPN: ConvModules (``.conv``), Upsample layers interleaved in scale heads."""
    if m := _FPN_NECK.match(module):
        return (f"neck.{m[1]}.{m[2]}.conv",), "same"
    if m := _FPN_SCALE.match(module):
        level, conv = int(m[1]), int(m[2])
        index = 2 * conv if upsampling[level] else conv
        return (f"decode_head.scale_heads.{level}.{index}.{m[3]}",), "same"
    if module == "decode_head.head.classifier":
        return ("decode_head.conv_seg",), "same"
    return None


def _nvlabs_names(module: str, upsampling: list[bool]) -> _MapResult:
    if m := _PATCH.match(module):
        return (f"patch_embed{int(m[1]) + 1}.{m[2]}",), "same"
    if m := _BLOCK.match(module):
        return (f"block{int(m[1]) + 1}.{m[2]}.{m[3]}",), "same"
    if m := _STAGE_NORM.match(module):
        return (f"norm{int(m[1]) + 1}",), "same"
    if m := _SEG_PROJ.match(module):
        return (f"decode_head.linear_c{int(m[1]) + 1}.proj",), "same"
    if m := _SEG_FUSE.match(module):
        return (f"decode_head.linear_fuse.{m[1]}",), "same"
    if module == "decode_head.classifier":
        return ("decode_head.linear_pred",), "same"
    return _fpn_names(module, upsampling)


_HF_BLOCK = {
    "legacy": {
        "norm1": "layer_norm_1", "norm2": "layer_norm_2", "attn.q": "attention.self.query",
        "attn.kv": ("attention.self.key", "attention.self.value"), "attn.sr": "attention.self.sr",
        "attn.norm": "attention.self.layer_norm", "attn.proj": "attention.output.dense",
        "mlp.fc1": "mlp.dense1", "mlp.dwconv.dwconv": "mlp.dwconv.dwconv", "mlp.fc2": "mlp.dense2",
    },
    "stages": {
        "norm1": "layernorm_before", "norm2": "layernorm_after", "attn.q": "attention.q_proj",
        "attn.kv": ("attention.k_proj", "attention.v_proj"),
        "attn.sr": "attention.sequence_reduction.sequence_reduction",
        "attn.norm": "attention.sequence_reduction.layer_norm", "attn.proj": "attention.o_proj",
        "mlp.fc1": "mlp.fc1", "mlp.dwconv.dwconv": "mlp.dwconv.dwconv", "mlp.fc2": "mlp.fc2",
    },
}


_LVT_BLOCK = {"attn.attention": ("attn.attn", "same"), "attn.value": ("attn.weight", "same"),
              "mlp.dwconv.dwconv": ("mlp.depconv", "same")}


def _lvt_authors_names(module: str, upsampling: list[bool]) -> _MapResult:
    """The authors' LVT: ``backbone.{i}`` is (patch embedding, blocks); MLPs past stage 1 are 1×1 convs."""
    if m := _PATCH.match(module):
        return (f"{m[1]}.0.{m[2]}",), "same"
    if m := _BLOCK.match(module):
        stage, rest = int(m[1]), m[3]
        theirs, kind = _LVT_BLOCK.get(rest, (rest, "same"))
        if rest in ("mlp.fc1", "mlp.fc2") and stage > 0:
            kind = "conv1x1"
        return (f"{stage}.1.{m[2]}.{theirs}",), kind
    if _FPN_NECK.match(module) or _FPN_SCALE.match(module) or module == "decode_head.head.classifier":
        return None
    return _nvlabs_names(module, upsampling)


def _hf_names(layout: str) -> Callable[[str, list[bool]], _MapResult]:
    legacy = layout == "legacy"

    def names(module: str, upsampling: list[bool]) -> _MapResult:
        if m := _PATCH.match(module):
            part = {"proj": "proj", "norm": "layer_norm"}[m[2]]
            stem = f"encoder.patch_embeddings.{m[1]}" if legacy else f"stages.{m[1]}.patch_embeddings"
            return (f"{stem}.{part}",), "same"
        if m := _BLOCK.match(module):
            sub = _HF_BLOCK[layout].get(m[3])
            if sub is None:
                return None
            stem = f"encoder.block.{m[1]}.{m[2]}" if legacy else f"stages.{m[1]}.blocks.{m[2]}"
            if isinstance(sub, tuple):
                return tuple(f"{stem}.{s}" for s in sub), "kv"
            return (f"{stem}.{sub}",), "same"
        if m := _STAGE_NORM.match(module):
            return (f"encoder.layer_norm.{m[1]}" if legacy else f"stages.{m[1]}.layer_norm",), "same"
        if m := _SEG_PROJ.match(module):
            family = "linear_c" if legacy else "linear_projections"
            return (f"decode_head.{family}.{m[1]}.proj",), "same"
        if m := _SEG_FUSE.match(module):
            return ({"conv": "decode_head.linear_fuse", "bn": "decode_head.batch_norm"}[m[1]],), "same"
        if module == "decode_head.classifier":
            return ("decode_head.classifier",), "same"
        return None

    return names


_MMSEG_BLOCK = {
    "norm1": ("norm1", "same"), "norm2": ("norm2", "same"), "attn.q": ("attn.attn", "qkv"),
    "attn.kv": ("attn.attn", "qkv"), "attn.proj": ("attn.attn.out_proj", "same"),
    "attn.sr": ("attn.sr", "same"), "attn.norm": ("attn.norm", "same"),
    "mlp.fc1": ("ffn.layers.0", "conv1x1"), "mlp.dwconv.dwconv": ("ffn.layers.1", "same"),
    "mlp.fc2": ("ffn.layers.4", "conv1x1"),
}


def _mmseg_names(module: str, upsampling: list[bool]) -> _MapResult:
    if m := _PATCH.match(module):
        return (f"layers.{m[1]}.0.{'projection' if m[2] == 'proj' else 'norm'}",), "same"
    if m := _BLOCK.match(module):
        found = _MMSEG_BLOCK.get(m[3])
        if found is None:
            return None
        return (f"layers.{m[1]}.1.{m[2]}.{found[0]}",), found[1]
    if m := _STAGE_NORM.match(module):
        return (f"layers.{m[1]}.2",), "same"
    return _fpn_names(module, upsampling)


def _transkd_names(module: str, upsampling: list[bool]) -> _MapResult:
    return (module,), "same"


# ----------------------------------------------------------------------------- the target model


@dataclass(frozen=True)
class _Target:
    """Our state in canonical (segmentor) naming, and what kind of network it belongs to."""
    state: dict[str, torch.Tensor]
    is_encoder: bool
    head: str | None  # "segformer", "fpn" or None
    upsampling: list[bool]
    name: str
    lvt: bool = False


def _describe_target(model: nn.Module) -> _Target:

    name = getattr(model, "model_name", type(model).__name__)
    if isinstance(model, (HierarchicalEncoder, LVTEncoder)):
        state = {f"encoder.{k}": v for k, v in model.state_dict().items()}
        return _Target(state, True, None, [], name, isinstance(model, LVTEncoder))
    encoder, head = getattr(model, "encoder", None), getattr(model, "decode_head", None)
    if not isinstance(encoder, (HierarchicalEncoder, LVTEncoder)):
        raise TypeError(f"cannot convert weights for {name}: expected a transkd segmentor or encoder")
    if isinstance(head, SegFormerHead):
        kind, upsampling = "segformer", []
    elif isinstance(head, SemanticFPNHead):
        kind, upsampling = "fpn", list(head.head.upsample_levels)
    else:
        raise TypeError(f"cannot convert weights for {name}: its decode head "
                        f"{type(head).__name__} has no key map")
    return _Target(dict(model.state_dict()), False, kind, upsampling, name,
                   isinstance(encoder, LVTEncoder))


def _name_map(fmt: str, hf_layout: str, lvt: bool = False) -> Callable[[str, list[bool]], _MapResult]:
    """The name map of ``fmt``; for an LVT network only the authors' and our own namings exist."""
    if lvt:
        return {"nvlabs": _lvt_authors_names, "transkd": _transkd_names}[fmt]
    return {"nvlabs": _nvlabs_names, "hf": _hf_names(hf_layout), "mmseg": _mmseg_names,
            "transkd": _transkd_names}[fmt]


def _build_groups(target: _Target, fmt: str, hf_layout: str) -> tuple[list[_Group], list[str]]:
    """Groups covering every key of ``target``; also the module paths the format cannot name."""
    if target.lvt and fmt not in ("nvlabs", "transkd"):
        raise CheckpointError(f"{fmt} naming has no LVT network, not even its encoder; use nvlabs "
                              "(the TransKD authors' LVT names) or transkd")
    names = _name_map(fmt, hf_layout, target.lvt)
    groups, unnamed, claimed = [], [], set()
    for key in target.state:
        if key in claimed:
            continue
        module, param = key.rsplit(".", 1)
        is_encoder = key.startswith("encoder.")
        found = names(module, target.upsampling)
        if found is None:
            unnamed.append(key)
            continue
        theirs, kind = found
        if kind == "same":
            group = _Group((key,), (f"{theirs[0]}.{param}",), encoder=is_encoder)
        elif kind == "kv":
            group = _Group((key,), tuple(f"{t}.{param}" for t in theirs), _cat, _chunk2, is_encoder)
        elif kind == "conv1x1":
            convert = param == "weight"
            group = _Group((key,), (f"{theirs[0]}.{param}",),
                           _conv_to_linear if convert else _same,
                           _linear_to_conv if convert else _same, is_encoder)
        else:  # "qkv": claim our q and kv of the same attention together
            attn = module.rsplit(".", 1)[0]
            ours = (f"{attn}.q.{param}", f"{attn}.kv.{param}")
            group = _Group(ours, (f"{theirs[0]}.in_proj_{param}",), _qkv_to_ours, _cat, is_encoder)
        claimed.update(group.ours)
        groups.append(group)
    return groups, unnamed


def _unsupported_head_reason(fmt: str, target: _Target) -> str:
    if fmt == "mmseg":
        return ("mmseg's SegformerHead applies a 1x1 conv + BatchNorm + ReLU to each stage where the "
                "NVlabs SegFormer head (ours) applies a plain Linear, so its decode-head weights "
                "cannot be mapped exactly; only the backbone can be")
    return (f"{fmt} naming has no {target.head} decode head (Hugging Face Segformer only has the "
            "All-MLP head), so only the encoder can be mapped")


# ----------------------------------------------------------------------------- reading


def read_weights(path: str | os.PathLike) -> dict:
    """Read ``.safetensors`` without pickle, anything else with ``torch.load(weights_only=True)``."""
    path = Path(path)
    if path.suffix == ".safetensors":
        return read_safetensors(path)[0]
    return torch_load_tensors(path)


def unwrap_state_dict(obj, source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """The tensor dict inside common containers, with DataParallel's ``module.`` prefixes removed."""
    for _ in range(4):
        if not isinstance(obj, Mapping) or not obj:
            kind = "empty" if isinstance(obj, Mapping) else type(obj).__name__
            raise CheckpointError(f"{source} holds no state dict (found {kind})")
        # A container key wins over loose tensors beside it (the TransKD authors' training
        # checkpoints keep ``best_acc`` as a 0-d tensor next to ``state_dict``).
        inner = next((obj[k] for k in _CONTAINER_KEYS if isinstance(obj.get(k), Mapping)), None)
        if inner is not None:
            obj = inner
            continue
        if any(isinstance(v, torch.Tensor) for v in obj.values()):
            break
        raise CheckpointError(
            f"{source} holds no state dict: its top-level keys are {_shown(list(obj), 8)}, "
            f"expected tensors or one of {', '.join(_CONTAINER_KEYS)}")
    not_tensors = [k for k, v in obj.items() if not isinstance(v, torch.Tensor)]
    if not_tensors:
        raise CheckpointError(f"{source} mixes tensors with other values under "
                              f"{_shown(not_tensors, 5)}")
    state = {}
    for key, value in obj.items():
        stripped = key
        while stripped.startswith("module."):
            stripped = stripped[len("module."):]
        if stripped in state:
            raise CheckpointError(f"{source} has the key {stripped!r} twice (with and without 'module.')")
        state[stripped] = value
    return state


def detect_format(state: Mapping[str, torch.Tensor]) -> str:
    """Tell which naming a (unwrapped) state dict uses, from its keys."""
    keys = list(state)
    checks = (
        ("transkd", r"^(encoder\.)?stages\.\d+\.patch_embed\.proj\."),
        ("hf", r"^(segformer\.)?(encoder\.(patch_embeddings|block)\.|stages\.\d+\.patch_embeddings\.)"),
        ("mmseg", r"^(backbone\.)?layers\.\d+\.0\.projection\."),
        ("nvlabs", r"^((backbone\.)?patch_embed[1-4]|backbone\.[0-3]\.0\.proj)\."),
    )
    for fmt, pattern in checks:
        if any(re.match(pattern, k) for k in keys):
            return fmt
    raise CheckpointError(f"cannot tell which naming this state dict uses (first keys: "
                          f"{_shown(keys, 4)}); pass source= one of {', '.join(FORMATS)}")


def _hf_layout_of(keys) -> str:
    legacy = re.compile(r"^(encoder\.(patch_embeddings|block|layer_norm)\.|decode_head\.linear_c\.)")
    return "legacy" if any(legacy.match(k) for k in keys) else "stages"


def _canonical_key(key: str, fmt: str) -> str:
    """Foreign key with its wrapper prefixes normalised to the form the name maps produce."""
    if fmt in ("nvlabs", "mmseg") and key.startswith("backbone."):
        return key[len("backbone."):]
    if fmt == "nvlabs":
        if re.match(r"(linear_c[1-4]|linear_fuse|linear_pred)\.", key):
            return "decode_head." + key  # the TransKD authors' flat SegFormer
        if re.match(r"head\.(scale_heads|conv_seg)\.", key):
            return "decode_head." + key[len("head."):]  # the authors' PVTv2 wrapper
    if fmt == "hf" and key.startswith("segformer."):
        return key[len("segformer."):]
    if fmt == "transkd" and key.startswith("stages."):
        return "encoder." + key
    return key


# ----------------------------------------------------------------------------- import


class ConvertedState(dict):
    """A state dict in our naming, plus what the conversion decided.

    ``encoder_only``: the keys cover the encoder only (``encoder.``-prefixed for a segmentor);
    ``notes``: foreign tensors that were deliberately dropped, and why.
    """

    def __init__(self, state: dict, source_format: str, encoder_only: bool, notes: list[str]):
        super().__init__(state)
        self.source_format = source_format
        self.encoder_only = encoder_only
        self.notes = notes


def convert_state_dict(state, target_model: nn.Module, source: str = "auto", *,
                       encoder_only: bool | None = None, name: str = "state dict") -> ConvertedState:
    """Map a foreign state dict onto ``target_model``'s keys, strictly.

    ``encoder_only=None`` loads the whole model when the source has decode-head weights and the
    encoder alone when it has none (an ImageNet file); ``True`` ignores any head weights.
    """
    if source != "auto" and source not in FORMATS:
        raise CheckpointError(f"unknown weight naming {source!r}; choose auto or one of {', '.join(FORMATS)}")
    raw = unwrap_state_dict(state, name)
    fmt = detect_format(raw) if source == "auto" else source
    target = _describe_target(target_model)

    canonical: dict[str, str] = {}  # canonical foreign key -> key as written in the source
    for key in raw:
        canon = _canonical_key(key, fmt)
        if canon in canonical:
            raise CheckpointError(f"{name} has {key!r} and {canonical[canon]!r}, two names for one tensor")
        canonical[canon] = key
    hf_layout = _hf_layout_of(canonical) if fmt == "hf" else "legacy"
    groups, unnamed = _build_groups(target, fmt, hf_layout)

    notes: list[str] = []
    droppable = _droppable(canonical, fmt, target)
    notes.extend(f"dropped {canonical[key]} ({why})" for key, why in droppable.items())
    head_keys = [k for k in canonical if k.startswith(_HEAD_PREFIXES) and k not in droppable]

    if target.is_encoder:
        encoder_only = True
    elif encoder_only is None:
        encoder_only = not head_keys
        if encoder_only:
            notes.append("the source has no decode-head weights: converted the encoder only")
    if unnamed and not encoder_only:
        raise CheckpointError(f"{name} cannot be loaded into {target.name}: "
                              f"{_unsupported_head_reason(fmt, target)}; pass encoder_only=True "
                              "to load the encoder alone")
    if encoder_only:
        groups = [g for g in groups if g.encoder]
        if head_keys:
            notes.append(f"dropped {len(head_keys)} decode-head tensors "
                         f"({_shown(head_keys, 3)}): loading the encoder only")
            droppable.update(dict.fromkeys(head_keys, "decode head"))

    prefixed = any(k.startswith(("backbone.", "segformer.")) for k in raw)
    display = {t: (_export_prefix(t, fmt, target) if prefixed else "") + t
               for g in groups for t in g.theirs}
    converted = _apply_import(raw, canonical, groups, droppable, display, target, fmt, name,
                              notes)
    if target.is_encoder:
        converted = {k[len("encoder."):]: v for k, v in converted.items()}
    for note in notes:
        logger.info("%s: %s", name, note)
    return ConvertedState(converted, fmt, encoder_only and not target.is_encoder, notes)


def _droppable(canonical: Mapping[str, str], fmt: str, target: _Target) -> dict[str, str]:
    """Foreign tensors with no counterpart by design: classification heads, an unused conv_seg."""
    classifier = {"nvlabs": "head.", "hf": "classifier."}.get(fmt)
    dropped = {}
    for key in canonical:
        if classifier and key in (classifier + "weight", classifier + "bias"):
            dropped[key] = "ImageNet classifier"
        elif fmt == "nvlabs" and target.lvt and key in ("norm.weight", "norm.bias"):
            dropped[key] = "final norm of LVT's ImageNet classifier"
        elif fmt == "nvlabs" and target.head != "fpn" and key.startswith("decode_head.conv_seg."):
            dropped[key] = "conv_seg of mmseg's base head, unused by the SegFormer head"
    return dropped


def _apply_import(raw, canonical, groups, droppable, display, target: _Target, fmt: str,
                  name: str, notes: list[str]) -> dict[str, torch.Tensor]:
    expected = {t for g in groups for t in g.theirs}
    missing, misshaped, converted = [], [], {}
    for group in groups:
        absent = [t for t in group.theirs if t not in canonical]
        if absent and all(t.endswith("num_batches_tracked") for t in absent) and len(group.ours) == 1:
            converted[group.ours[0]] = torch.zeros_like(target.state[group.ours[0]])
            notes.append(f"{display[absent[0]]} absent: BatchNorm step counter set to 0")
            continue
        if absent:
            missing.extend(display[t] for t in absent)
            continue
        wanted = group.to_theirs([target.state[k].to("meta") for k in group.ours])
        found = [raw[canonical[t]] for t in group.theirs]
        bad = [f"{canonical[t]} {tuple(f.shape)} vs {tuple(w.shape)}"
               for t, f, w in zip(group.theirs, found, wanted) if f.shape != w.shape]
        if bad:
            misshaped.extend(bad)
            continue
        converted.update(zip(group.ours, group.to_ours(found)))
    unexpected = [canonical[k] for k in canonical if k not in expected and k not in droppable]
    if missing or unexpected or misshaped:
        parts = [f"{len(keys)} {label} ({_shown(sorted(keys), 8)})" for label, keys in
                 (("missing", missing), ("unexpected", unexpected), ("wrong shape", misshaped)) if keys]
        raise CheckpointError(f"{name} (read as {fmt} naming) does not fit {target.name}: "
                              + "; ".join(parts))
    return converted


def load_converted(model: nn.Module, checkpoint, source: str = "auto", *,
                   encoder_only: bool | None = None) -> ConvertedState:
    """Read a foreign checkpoint (path or state dict), convert it and load it into ``model``."""
    name = str(checkpoint) if isinstance(checkpoint, (str, os.PathLike)) else "state dict"
    if isinstance(checkpoint, (str, os.PathLike)):
        checkpoint = read_weights(checkpoint)
    state = convert_state_dict(checkpoint, model, source, encoder_only=encoder_only, name=name)
    if state.encoder_only:
        encoder_state = {k[len("encoder."):]: v for k, v in state.items()}
        load_state_strict(model.encoder, encoder_state, source=name)
    else:
        load_state_strict(model, dict(state), source=name)
    return state


# ----------------------------------------------------------------------------- export


def installed_hf_layout() -> str:
    """The Segformer layout of the installed transformers; the 4.x one if it is not installed."""
    try:
        # deferred: transformers is optional and slow to import
        from transformers.models.segformer import modeling_segformer
    except ImportError:
        return "legacy"
    return "stages" if hasattr(modeling_segformer, "SegformerStage") else "legacy"


def _export_prefix(key: str, fmt: str, target: _Target) -> str:
    if key.startswith(_HEAD_PREFIXES) or target.is_encoder or fmt == "transkd":
        return ""
    return "segformer." if fmt == "hf" else "backbone."


def export_state_dict(model: nn.Module, fmt: str = "nvlabs", *, hf_layout: str = "auto",
                      encoder_only: bool = False) -> dict[str, torch.Tensor]:
    """Our weights under another codebase's names (the inverse of :func:`convert_state_dict`).

    ``nvlabs``/``mmseg`` segmentors get ``backbone.``/``decode_head.`` keys, encoders bare keys
    (as ImageNet files); ``hf`` follows ``SegformerForSemanticSegmentation`` (``segformer.`` prefix)
    or ``SegformerModel`` for an encoder, in the installed transformers' layout unless
    ``hf_layout`` is ``"legacy"`` (4.x) or ``"stages"`` (5.x).
    """
    if fmt not in FORMATS:
        raise CheckpointError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if hf_layout == "auto":
        hf_layout = installed_hf_layout() if fmt == "hf" else "legacy"
    elif hf_layout not in HF_LAYOUTS:
        raise CheckpointError(f"unknown hf_layout {hf_layout!r}; choose auto, legacy or stages")
    target = _describe_target(model)
    groups, unnamed = _build_groups(target, fmt, hf_layout)
    if unnamed and not encoder_only:
        raise CheckpointError(f"cannot export {target.name} in {fmt} naming: "
                              f"{_unsupported_head_reason(fmt, target)}; pass encoder_only=True")
    out = {}
    for group in groups:
        if encoder_only and not group.encoder:
            continue
        tensors = group.to_theirs([target.state[k].detach() for k in group.ours])
        for key, tensor in zip(group.theirs, tensors):
            if fmt == "transkd" and target.is_encoder:
                key = key[len("encoder."):]
            prefix = _export_prefix(key, fmt, target)
            if target.lvt and fmt == "nvlabs" and key.startswith("decode_head."):
                key = key[len("decode_head."):]  # the authors' LVT keeps its head flat
            out[prefix + key] = tensor
    return out


def _shown(items: list, limit: int) -> str:
    shown = ", ".join(str(i) for i in items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")
