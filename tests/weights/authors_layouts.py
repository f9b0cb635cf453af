"""Random state dicts named as the TransKD authors' code names its PVTv2 and LVT students.

Written from reading their model definitions (``train/models/pvtv2/`` and ``train/models/lvt/``
of RuipingL/TransKD), not from transkd's key maps, so a test that converts them checks the maps.
"""

from __future__ import annotations

import torch

LVT_WIDTHS = (64, 64, 160, 256)
LVT_HEADS = (2, 2, 5, 8)
LVT_MLP = (4, 8, 4, 4)
LVT_SR = (8, 4, 2, 1)  # as the authors pass them; stage 1's CSA has no reduction
PVTV2_B0 = dict(widths=(32, 64, 160, 256), depths=(2, 2, 2, 2), mlp=(8, 8, 4, 4), sr=(8, 4, 2, 1))


def _random(shapes: dict[str, tuple[int, ...]], seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for key, shape in shapes.items():
        if key.endswith("num_batches_tracked"):
            out[key] = torch.tensor(7)
        elif key.endswith("running_var"):
            out[key] = torch.rand(shape, generator=gen) + 0.5
        else:
            out[key] = torch.randn(shape, generator=gen) * 0.1
    return out


def _bn(prefix: str, channels: int) -> dict[str, tuple[int, ...]]:
    return {f"{prefix}.{p}": (channels,) for p in ("weight", "bias", "running_mean", "running_var")} | {
        f"{prefix}.num_batches_tracked": ()}


def lvt_state(num_classes: int = 19, seed: int = 0, head: bool = True) -> dict[str, torch.Tensor]:
    """``lvt(rasa_cfg)`` as the authors build their student: ``backbone.{stage}.{0: patch embed,
    1: blocks}``, CSA in stage 1 (``attn.attn``, ``attn.weight``), RASA after it (``attn.q/kv/sr/
    norm/ds``; no q/kv/ds bias), 1×1-conv MLPs with ``depconv`` past stage 1, the flat All-MLP head."""
    shapes: dict[str, tuple[int, ...]] = {}
    in_chans = 3
    for stage, dim in enumerate(LVT_WIDTHS):
        kernel = 7 if stage == 0 else 3
        embed = f"backbone.{stage}.0"
        shapes |= {f"{embed}.proj.weight": (dim, in_chans, kernel, kernel), f"{embed}.proj.bias": (dim,),
                   f"{embed}.norm.weight": (dim,), f"{embed}.norm.bias": (dim,)}
        hidden = dim * LVT_MLP[stage]
        for block in range(2):
            p = f"backbone.{stage}.1.{block}"
            for norm in ("norm1", "norm2"):
                shapes |= {f"{p}.{norm}.weight": (dim,), f"{p}.{norm}.bias": (dim,)}
            shapes |= {f"{p}.attn.proj.weight": (dim, dim), f"{p}.attn.proj.bias": (dim,)}
            if stage == 0:
                shapes |= {f"{p}.attn.attn.weight": (81 * LVT_HEADS[0], dim),
                           f"{p}.attn.attn.bias": (81 * LVT_HEADS[0],),
                           f"{p}.attn.weight.weight": (9 * dim, dim, 1, 1),
                           f"{p}.mlp.fc1.weight": (hidden, dim), f"{p}.mlp.fc1.bias": (hidden,),
                           f"{p}.mlp.fc2.weight": (dim, hidden), f"{p}.mlp.fc2.bias": (dim,)}
                continue
            sr = LVT_SR[stage]
            shapes |= {f"{p}.attn.q.weight": (dim, dim), f"{p}.attn.kv.weight": (2 * dim, dim),
                       f"{p}.attn.ds.weight": (dim, 1, 3, 3),
                       f"{p}.mlp.fc1.weight": (hidden, dim, 1, 1), f"{p}.mlp.fc1.bias": (hidden,),
                       f"{p}.mlp.depconv.weight": (hidden, 1, 3, 3), f"{p}.mlp.depconv.bias": (hidden,),
                       f"{p}.mlp.fc2.weight": (dim, hidden, 1, 1), f"{p}.mlp.fc2.bias": (dim,)}
            if sr > 1:
                shapes |= {f"{p}.attn.sr.weight": (dim, dim, sr, sr), f"{p}.attn.sr.bias": (dim,),
                           f"{p}.attn.norm.weight": (dim,), f"{p}.attn.norm.bias": (dim,)}
        in_chans = dim
    if head:
        for i, dim in enumerate(LVT_WIDTHS, start=1):
            shapes |= {f"linear_c{i}.proj.weight": (256, dim), f"linear_c{i}.proj.bias": (256,)}
        shapes |= {"linear_fuse.conv.weight": (256, 1024, 1, 1), **_bn("linear_fuse.bn", 256),
                   "linear_pred.weight": (num_classes, 256, 1, 1), "linear_pred.bias": (num_classes,)}
    return _random(shapes, seed)


def pvtv2_b0_authors_state(num_classes: int = 19, seed: int = 0) -> dict[str, torch.Tensor]:
    """``build_pvts('pvt_v2_b0')``: whai362's backbone under ``backbone.``, mmseg's FPN neck under
    ``neck.`` and the FPN head under ``head.``, every ConvModule built without a norm (so with a
    bias), Upsample layers between the tower convolutions past level 1."""
    cfg = PVTV2_B0
    shapes: dict[str, tuple[int, ...]] = {}
    in_chans = 3
    for i, (dim, depth) in enumerate(zip(cfg["widths"], cfg["depths"])):
        kernel = 7 if i == 0 else 3
        s = i + 1
        shapes |= {f"backbone.patch_embed{s}.proj.weight": (dim, in_chans, kernel, kernel),
                   f"backbone.patch_embed{s}.proj.bias": (dim,),
                   f"backbone.patch_embed{s}.norm.weight": (dim,),
                   f"backbone.patch_embed{s}.norm.bias": (dim,),
                   f"backbone.norm{s}.weight": (dim,), f"backbone.norm{s}.bias": (dim,)}
        hidden = dim * cfg["mlp"][i]
        for j in range(depth):
            p = f"backbone.block{s}.{j}"
            shapes |= {f"{p}.norm1.weight": (dim,), f"{p}.norm1.bias": (dim,),
                       f"{p}.norm2.weight": (dim,), f"{p}.norm2.bias": (dim,),
                       f"{p}.attn.q.weight": (dim, dim), f"{p}.attn.q.bias": (dim,),
                       f"{p}.attn.kv.weight": (2 * dim, dim), f"{p}.attn.kv.bias": (2 * dim,),
                       f"{p}.attn.proj.weight": (dim, dim), f"{p}.attn.proj.bias": (dim,),
                       f"{p}.mlp.fc1.weight": (hidden, dim), f"{p}.mlp.fc1.bias": (hidden,),
                       f"{p}.mlp.dwconv.dwconv.weight": (hidden, 1, 3, 3),
                       f"{p}.mlp.dwconv.dwconv.bias": (hidden,),
                       f"{p}.mlp.fc2.weight": (dim, hidden), f"{p}.mlp.fc2.bias": (dim,)}
            sr = cfg["sr"][i]
            if sr > 1:
                shapes |= {f"{p}.attn.sr.weight": (dim, dim, sr, sr), f"{p}.attn.sr.bias": (dim,),
                           f"{p}.attn.norm.weight": (dim,), f"{p}.attn.norm.bias": (dim,)}
        in_chans = dim
        shapes |= {f"neck.lateral_convs.{i}.conv.weight": (256, dim, 1, 1),
                   f"neck.lateral_convs.{i}.conv.bias": (256,),
                   f"neck.fpn_convs.{i}.conv.weight": (256, 256, 3, 3),
                   f"neck.fpn_convs.{i}.conv.bias": (256,)}
        length = max(1, i)
        for k in range(length):
            index = 2 * k if i > 0 else k  # an nn.Upsample follows each conv past level 1
            shapes |= {f"head.scale_heads.{i}.{index}.conv.weight": (128, 256 if k == 0 else 128, 3, 3),
                       f"head.scale_heads.{i}.{index}.conv.bias": (128,)}
    shapes |= {"head.conv_seg.weight": (num_classes, 128, 1, 1), "head.conv_seg.bias": (num_classes,)}
    return _random(shapes, seed)
