"""A transkd model as a Hugging Face Segformer folder: ``config.json``,
``preprocessor_config.json`` and ``model.safetensors`` that ``SegformerForSemanticSegmentation``
(``SegformerModel`` for an encoder) loads without transkd installed.

Keys use the transformers 4.x layout, which transformers 5.x renames on load. The folder is
written next to its destination and renamed into place, so a failure leaves no half-written model.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from safetensors.torch import save_file
from torch import nn

from ..errors import ConfigError
from ..models.heads import SegFormerHead
from .convert import export_state_dict


def write_hf_folder(model: nn.Module, out: str | os.PathLike, classes: dict[str, Any]) -> int:
    """Write ``model`` (a segmentor or an encoder) as a Segformer folder; return the tensor count.

    ``classes`` is the class metadata (``class_names``, ``void_as_extra_class``) that becomes
    ``id2label``; without names that fit, labels are ``LABEL_<i>`` as transformers names them.
    """
    out = Path(out)
    encoder = model if getattr(model, "num_classes", None) is None else model.encoder
    if encoder is not model and not isinstance(model.decode_head, SegFormerHead):
        raise ConfigError(f"--to hf: Hugging Face Segformer has no decode head like "
                          f"{model.model_name}'s; add --encoder-only to export its encoder as a "
                          "SegformerModel")
    state = {k: v.contiguous() for k, v in export_state_dict(model, "hf", hf_layout="legacy").items()}
    config = hf_config(model, classes)
    preprocessor = hf_preprocessor(model)
    write_folder_atomically(out, {
        "config.json": lambda p: p.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8"),
        "preprocessor_config.json":
            lambda p: p.write_text(json.dumps(preprocessor, indent=2) + "\n", encoding="utf-8"),
        "model.safetensors": lambda p: save_file(state, str(p), metadata={"format": "pt"}),
    })
    return len(state)


def hf_config(model: nn.Module, classes: dict[str, Any]) -> dict[str, Any]:
    """A Segformer ``config.json`` describing ``model`` (fields as SegformerConfig names them)."""
    encoder = model if getattr(model, "num_classes", None) is None else model.encoder
    cfg = encoder.config
    config: dict[str, Any] = {
        "architectures": ["SegformerModel" if encoder is model else "SegformerForSemanticSegmentation"],
        "model_type": "segformer", "num_channels": cfg.in_chans, "num_encoder_blocks": 4,
        "depths": list(cfg.depths), "sr_ratios": list(cfg.sr_ratios),
        "hidden_sizes": list(cfg.embed_dims), "patch_sizes": [7, 3, 3, 3], "strides": [4, 2, 2, 2],
        "num_attention_heads": list(cfg.num_heads),
        "mlp_ratios": [int(r) if float(r).is_integer() else r for r in cfg.mlp_ratios],
        "hidden_act": "gelu", "hidden_dropout_prob": cfg.drop_rate,
        "attention_probs_dropout_prob": cfg.attn_drop_rate, "drop_path_rate": cfg.drop_path_rate,
        "initializer_range": 0.02, "layer_norm_eps": cfg.block_eps, "reshape_last_stage": True,
    }
    if encoder is not model:
        names = list(classes.get("class_names") or [])
        labels = names + ["void"] if classes.get("void_as_extra_class") else names
        if len(labels) != model.num_classes:
            labels = [f"LABEL_{i}" for i in range(model.num_classes)]
        config.update({
            "decoder_hidden_size": model.decode_head.linear_c[0].proj.out_features,
            "classifier_dropout_prob": model.decode_head.dropout.p, "semantic_loss_ignore_index": 255,
            "id2label": {str(i): name for i, name in enumerate(labels)},
            "label2id": {name: i for i, name in enumerate(labels)},
        })
    return config


def hf_preprocessor(model: nn.Module) -> dict[str, Any]:
    """A SegformerImageProcessor config with the model's input statistics and no resizing."""
    mean, std = list(model.input_mean), list(model.input_std)
    return {"image_processor_type": "SegformerImageProcessor", "do_resize": False,
            "do_rescale": True, "rescale_factor": 1 / 255,
            "do_normalize": (mean, std) != ([0.0] * 3, [1.0] * 3),
            "image_mean": mean, "image_std": std, "do_reduce_labels": False}


def write_folder_atomically(out: Path, files: dict[str, Callable[[Path], None]]) -> None:
    """Write every file into a hidden sibling folder, then rename it to ``out`` in one step;
    a replaced ``out`` is removed only after the new one is in place."""
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    old = None
    try:
        for name, write in files.items():
            write(staging / name)
            with open(staging / name, "rb+") as fh:
                os.fsync(fh.fileno())
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
            os.replace(out, old / out.name)
        os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if old is not None and (old / out.name).exists() and not out.exists():
            os.replace(old / out.name, out)
        raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
