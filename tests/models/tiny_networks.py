"""Tiny random transformers models saved into a folder, as a user's ``hf:<folder>`` would be.

Nothing is downloaded: every model is built from a small configuration and ``save_pretrained``.
"""

from __future__ import annotations

from pathlib import Path

import torch

LABELS = {0: "road", 1: "car", 2: "sky", 3: "tree", 4: "person"}


def segformer_config(num_labels: int = 5):
    from transformers import SegformerConfig

    return SegformerConfig(depths=[1, 1, 1, 1], hidden_sizes=[8, 16, 24, 32],
                           num_attention_heads=[1, 1, 1, 1], decoder_hidden_size=16,
                           num_labels=num_labels, id2label=dict(list(LABELS.items())[:num_labels]),
                           label2id={v: k for k, v in list(LABELS.items())[:num_labels]})


def upernet_config(backbone: str = "convnext", num_labels: int = 5):
    from transformers import ConvNextConfig, SwinConfig, UperNetConfig

    stages = ["stage1", "stage2", "stage3", "stage4"]
    if backbone == "convnext":
        backbone_config = ConvNextConfig(hidden_sizes=[8, 16, 24, 32], depths=[1, 1, 1, 1],
                                         out_features=stages)
    else:
        backbone_config = SwinConfig(embed_dim=8, depths=[1, 1, 1, 1], num_heads=[1, 1, 1, 1],
                                     window_size=4, out_features=stages)
    return UperNetConfig(backbone_config=backbone_config, hidden_size=16, auxiliary_channels=8,
                         num_labels=num_labels)


def vit_config(kind: str, num_labels: int = 5):
    from transformers import BeitConfig, DPTConfig

    common = dict(hidden_size=16, num_hidden_layers=4, num_attention_heads=2, intermediate_size=32,
                  image_size=64, patch_size=16, num_labels=num_labels, use_auxiliary_head=False)
    if kind == "dpt":
        return DPTConfig(backbone_out_indices=[0, 1, 2, 3], neck_hidden_sizes=[8, 16, 16, 16],
                         fusion_hidden_size=16, reassemble_factors=[4, 2, 1, 0.5], **common)
    return BeitConfig(out_indices=[0, 1, 2, 3], use_relative_position_bias=True, pool_scales=[1, 2],
                      auxiliary_channels=8, **common)


def save_hf(config, folder: Path, seed: int = 0) -> Path:
    """A random model of ``config`` saved into ``folder`` (returned)."""
    import transformers

    from transkd.models.hf import FAMILIES

    torch.manual_seed(seed)
    model = getattr(transformers, FAMILIES[config.model_type].model_class)(config)
    model.save_pretrained(folder)
    return folder
