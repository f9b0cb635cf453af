"""Hugging Face transformers segmentors behind transkd's network contract (``hf:<folder or hub id>``).

The wrapped model runs its own forward unchanged; stage maps and patch embeddings are read by
forward hooks registered only for a call that asks for them, so a plain forward costs what the
bare model costs. Which module holds what is a per-family fact (see ``FAMILIES``):

- stage maps: the list of maps the family's decode head receives (SegFormer's encoder states,
  UperNet's backbone maps, BEiT's four FPN maps, DPT's four fused neck maps), or for a
  universal segmentor (Mask2Former) the pixel decoder's maps and its stride-4 mask features;
- patch embeddings: the outputs of the family's patch-embedding modules (SegFormer's per-stage
  embedders, Swin's embedding and patch-merging layers, a ViT's patch projection);
- logits: the model's own; a universal segmentor's per-pixel class scores
  ``Σ_q softmax(class_q)[k] · sigmoid(mask_q)`` are normalised over classes and returned as
  log-probabilities, so that any softmax-based method reads them as the teacher's distribution.

Loading never runs code from a folder: a configuration that asks for remote code, or of a model
type outside ``FAMILIES``, is refused, and ``trust_remote_code`` is never passed.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError
from .segmentor import IMAGENET_MEAN, IMAGENET_STD, SegmentationOutput, check_input
from .tokens import grid_of

HALF = (0.5, 0.5, 0.5)


@dataclass(frozen=True)
class Family:
    """Where one transformers family keeps what the contract exposes."""

    model_class: str
    feature_module: str | None           # its first positional input is the list of stage maps
    embedding_pattern: str | None        # regex over module names
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    universal: bool = False
    interpolate_pos_encoding: bool = False


FAMILIES: dict[str, Family] = {
    "segformer": Family("SegformerForSemanticSegmentation", "decode_head",
                        r"segformer\.(stages\.\d+\.patch_embeddings|encoder\.patch_embeddings\.\d+)"),
    "upernet": Family("UperNetForSemanticSegmentation", "decode_head",
                      r"backbone\.(\w+\.)?(embeddings|encoder\.layers\.\d+\.downsample)"),
    "dpt": Family("DPTForSemanticSegmentation", "head", r"dpt\.embeddings\.patch_embeddings",
                  HALF, HALF),
    "beit": Family("BeitForSemanticSegmentation", "decode_head", r"beit\.embeddings\.patch_embeddings",
                   HALF, HALF, interpolate_pos_encoding=True),
    "data2vec-vision": Family("Data2VecVisionForSemanticSegmentation", "decode_head",
                              r"data2vec_vision\.embeddings\.patch_embeddings", HALF, HALF,
                              interpolate_pos_encoding=True),
    "mask2former": Family("Mask2FormerForUniversalSegmentation", None, None, universal=True),
}
#: Backbones of UperNet whose embedding modules are token patch embeddings (not a conv stem).
TOKEN_BACKBONES = ("swin", "swinv2", "donut-swin", "maskformer-swin")


def _transformers():
    # Deferred: transformers is an optional extra (``pip install "transkd[hf]"``) and slow to import.
    try:
        import transformers
    except ImportError:
        raise ConfigError("hf: models need the transformers package: pip install 'transkd[hf]'") from None
    return transformers


class HFSegmentor(nn.Module):
    """A transformers segmentation model that answers like a transkd segmentor."""

    def __init__(self, model: nn.Module, family: Family, *, name: str,
                 input_mean: tuple[float, ...], input_std: tuple[float, ...]) -> None:
        super().__init__()
        self.model = model
        self.family = family
        self.model_name = name
        config = model.config
        self.num_classes = int(config.num_labels)
        labels = {int(k): str(v) for k, v in (config.id2label or {}).items()}
        self.class_names = tuple(labels.get(i, f"class_{i}") for i in range(self.num_classes))
        self.in_chans = int(getattr(config, "num_channels", 3) or 3)
        self.input_mean, self.input_std = tuple(input_mean), tuple(input_std)
        self.probe_size = 128
        pattern = family.embedding_pattern
        backbone = getattr(config, "backbone_config", None)
        if config.model_type == "upernet" and getattr(backbone, "model_type", None) not in TOKEN_BACKBONES:
            pattern = None  # ConvNeXt/ResNet backbones open with a conv stem, not patch embeddings
        self._embedders = ([m for n, m in model.named_modules() if re.fullmatch(pattern, n)]
                           if pattern else [])

    @property
    def model_options(self) -> dict[str, Any]:
        """What :func:`build_hf` needs to rebuild this network without its folder or the hub."""
        return {"config": json.loads(self.model.config.to_json_string(use_diff=False))}

    def _run(self, x: torch.Tensor, hidden: bool = False):
        kwargs: dict[str, Any] = {"pixel_values": x}
        if self.family.interpolate_pos_encoding:
            kwargs["interpolate_pos_encoding"] = True
        if hidden:
            kwargs["output_hidden_states"] = True
        return self.model(**kwargs)

    def _logits(self, out) -> torch.Tensor:
        if not self.family.universal:
            return out.logits
        return universal_log_probs(out.class_queries_logits, out.masks_queries_logits)

    def forward(self, x: torch.Tensor, return_features: bool = False):
        check_input(x, self.in_chans)
        if not return_features:
            return self._logits(self._run(x))
        maps: list[torch.Tensor] = []
        tokens: list[tuple[torch.Tensor, tuple[int, int]]] = []
        handles = []
        if self.family.feature_module is not None:
            head = self.model.get_submodule(self.family.feature_module)
            handles.append(head.register_forward_pre_hook(
                lambda module, args: maps.extend(t for t in args[0] if t.ndim == 4)))
        for module in self._embedders:
            handles.append(module.register_forward_hook(
                lambda module, args, output: tokens.append(as_tokens(output, x.shape[-2:]))))
        try:
            out = self._run(x, hidden=self.family.universal)
        finally:
            for handle in handles:
                handle.remove()
        if self.family.universal:
            maps = [t for t in (*out.pixel_decoder_hidden_states, out.pixel_decoder_last_hidden_state)
                    if t is not None and t.ndim == 4]
        maps = sorted(maps, key=lambda t: -t.shape[-1])  # shallow (large) to deep (small)
        return SegmentationOutput(self._logits(out), maps, [t for t, _ in tokens],
                                  [g for _, g in tokens])


def universal_log_probs(class_logits: torch.Tensor, mask_logits: torch.Tensor) -> torch.Tensor:
    """Per-pixel class log-probabilities (B, K, h, w) of a mask-classification model: class
    scores ``Σ_q softmax(c_q)[k] · sigmoid(m_q)`` ("no object" dropped), normalised over k."""
    scores = torch.einsum("bqk,bqhw->bkhw", class_logits.softmax(-1)[..., :-1], mask_logits.sigmoid())
    return torch.log(scores / scores.sum(1, keepdim=True).clamp_min(1e-12) + 1e-12)


def as_tokens(output, image_size: tuple[int, int]) -> tuple[torch.Tensor, tuple[int, int]]:
    """(tokens (B, N, C), grid) from what a patch-embedding module returned: a tensor, or a tuple
    of the tensor and its grid (``(t, h, w)`` or ``(t, (h, w))``)."""

    items = output if isinstance(output, tuple) else (output,)
    tensor = items[0]
    ints = [int(v) for item in items[1:] for v in (item if isinstance(item, (tuple, list)) else (item,))
            if isinstance(v, int)]
    if tensor.ndim == 4:  # (B, C, H, W) projection not yet flattened
        return tensor.flatten(2).transpose(1, 2), (int(tensor.shape[2]), int(tensor.shape[3]))
    grid = (ints[0], ints[1]) if len(ints) >= 2 else grid_of(tensor.shape[1], *image_size)
    if grid is None:
        raise ValueError(f"cannot tell the token grid of {tuple(tensor.shape)} embeddings")
    return tensor, grid


def _check_config(config: dict[str, Any], source: str) -> Family:
    """The family of a configuration, or one sentence saying why transkd will not build it."""
    if config.get("auto_map"):
        raise ConfigError(f"{source} needs code shipped with the model (auto_map), which transkd never "
                          "runs; convert it to a built-in transformers architecture first")
    model_type = config.get("model_type")
    if model_type not in FAMILIES:
        raise ConfigError(f"{source} is a {model_type!r} model; hf: supports "
                          f"{', '.join(sorted(FAMILIES))}")
    return FAMILIES[model_type]


def _normalisation(source: str, family: Family) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Mean/std of the model's image processor (``preprocessor_config.json``), else the family's."""
    from transformers.utils import cached_file

    try:
        path = cached_file(source, "preprocessor_config.json",
                           _raise_exceptions_for_missing_entries=False)
    except OSError:
        path = None
    if not path:
        return family.mean, family.std
    spec = json.loads(Path(path).read_text())
    if spec.get("do_normalize", True) is False:
        return (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    return (tuple(float(v) for v in spec.get("image_mean", family.mean)),
            tuple(float(v) for v in spec.get("image_std", family.std)))


def build_hf(source: str, num_classes: int | None = None, config: dict[str, Any] | None = None,
             input_mean: tuple[float, ...] | None = None,
             input_std: tuple[float, ...] | None = None) -> HFSegmentor:
    """``source``: a folder or hub id holding a transformers segmentation model.

    With ``config`` (a saved configuration) the network is rebuilt with fresh weights and
    ``source`` is not read: a saved student reloads from its ``.safetensors`` alone.
    ``num_classes`` different from the configuration's replaces the classifier (re-heads).
    """
    transformers = _transformers()
    name = f"hf:{source}"
    if config is not None:
        family = _check_config(config, name)
        config_class = transformers.CONFIG_MAPPING[config["model_type"]]
        hf_config = config_class.from_dict({k: v for k, v in config.items() if k != "model_type"})
        if num_classes is not None and num_classes != hf_config.num_labels:
            hf_config.num_labels = num_classes
        model = getattr(transformers, family.model_class)(hf_config)
        mean, std = family.mean, family.std
    else:
        local = Path(source) / "config.json"
        if local.is_file():
            _check_config(json.loads(local.read_text()), name)
        hf_config = transformers.AutoConfig.from_pretrained(source, trust_remote_code=False)
        family = _check_config(hf_config.to_dict(), name)
        rehead = num_classes is not None and num_classes != hf_config.num_labels
        if rehead:
            hf_config.num_labels = num_classes
        model = getattr(transformers, family.model_class).from_pretrained(
            source, config=hf_config, ignore_mismatched_sizes=rehead, trust_remote_code=False)
        mean, std = _normalisation(source, family)
    network = HFSegmentor(model.eval(), family, name=name, input_mean=input_mean or mean,
                          input_std=input_std or std)
    # Weights trained on images normalised this way: a training run feeds them so (see
    # normalisation_of); a network rebuilt from a saved configuration starts from fresh weights.
    network.owns_normalisation = config is None
    return network
