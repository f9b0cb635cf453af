"""LVT's attention layers against direct computations of their formulas (LVT, Yang et al. 2022)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from transkd.models.lvt import AtrousDepthwise, ConvSelfAttention, RecursiveAtrousSelfAttention


def csa_reference(csa: ConvSelfAttention, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """CSA with nn.Unfold/F.fold and explicit loops over window offsets."""
    batch, _, dim = x.shape
    heads = csa.num_heads
    d = dim // heads
    grid = x.transpose(1, 2).reshape(batch, dim, height, width)
    h, w = math.ceil(height / 2), math.ceil(width / 2)
    pooled = F.avg_pool2d(grid, 2, 2, ceil_mode=True).flatten(2).transpose(1, 2)
    logits = (pooled @ csa.attention.weight.T + csa.attention.bias).reshape(batch, h * w, heads, 9, 9)
    attn = (logits * d ** -0.5).softmax(-1)  # (B, n, heads, 9 targets, 9 sources)
    windows = F.unfold(grid, 3, padding=1, stride=2).reshape(batch, dim, 9, h * w)
    weight = csa.value.weight.reshape(9, dim, dim)
    out = torch.zeros(batch, dim, 9, h * w)
    for k in range(9):  # value map of source offset k
        v = torch.einsum("oi,bin->bon", weight[k], windows[:, :, k])
        for head in range(heads):
            part = slice(head * d, (head + 1) * d)
            # target offset t gets sum_k attn[t, k] * v_k
            out[:, part] += torch.einsum("bnt,bcn->bctn", attn[:, :, head, :, k], v[:, part])
    folded = F.fold(out.reshape(batch, dim * 9, h * w), (height, width), 3, padding=1, stride=2)
    tokens = folded.flatten(2).transpose(1, 2)
    return tokens @ csa.proj.weight.T + csa.proj.bias


def test_conv_self_attention_matches_unfold_and_fold():
    torch.manual_seed(0)
    csa = ConvSelfAttention(8, 2).eval()
    for height, width in ((6, 8), (5, 7)):
        x = torch.randn(2, height * width, 8)
        with torch.no_grad():
            assert torch.allclose(csa(x, height, width), csa_reference(csa, x, height, width),
                                  atol=1e-5)


def test_atrous_depthwise_sums_silu_of_each_dilation():
    torch.manual_seed(0)
    layer = AtrousDepthwise(4, (1, 3, 5))
    x = torch.randn(1, 4, 9, 11)
    expected = torch.zeros_like(x)
    padded = F.pad(x, (5, 5, 5, 5))
    for rate in (1, 3, 5):
        conv = torch.zeros_like(x)
        for i in range(3):
            for j in range(3):
                dy, dx = (i - 1) * rate + 5, (j - 1) * rate + 5
                conv += layer.weight[:, 0, i, j][None, :, None, None] * padded[:, :, dy:dy + 9, dx:dx + 11]
        expected += conv * torch.sigmoid(conv)
    with torch.no_grad():
        assert torch.allclose(layer(x), expected, atol=1e-5)


def test_rasa_applies_attention_recursively_to_output_plus_input():
    torch.manual_seed(0)
    rasa = RecursiveAtrousSelfAttention(8, 2, sr_ratio=2, rates=(1, 3), recursions=2).eval()
    height, width = 4, 6
    x = torch.randn(1, height * width, 8)

    def attend(t: torch.Tensor) -> torch.Tensor:  # one pass, written out
        q = rasa.ds(rasa.q(t).transpose(1, 2).reshape(1, 8, height, width)).flatten(2).transpose(1, 2)
        reduced = rasa.sr(t.transpose(1, 2).reshape(1, 8, height, width)).flatten(2).transpose(1, 2)
        k, v = rasa.kv(rasa.norm(reduced)).chunk(2, dim=-1)
        heads = [((q[..., s] @ k[..., s].transpose(1, 2)) * 4 ** -0.5).softmax(-1) @ v[..., s]
                 for s in (slice(0, 4), slice(4, 8))]
        return rasa.proj(torch.cat(heads, dim=-1))

    with torch.no_grad():
        first = F.silu(attend(x))
        expected = F.silu(attend(first + x))
        assert torch.allclose(rasa(x, height, width), expected, atol=1e-5)


@pytest.mark.slow  # the torch.export-based exporter traces symbolically: several seconds of CPU
def test_lvt_exports_to_onnx_with_dynamic_sizes(tmp_path):
    """CSA's window unfold and fold are convolutions, so the graph follows any input size."""
    pytest.importorskip("onnxruntime")
    from transkd.deploy.export import check_parity, export_onnx
    from transkd.models import create_model

    torch.manual_seed(0)
    model = create_model("lvt_mlp", num_classes=3).eval()
    out = tmp_path / "lvt.onnx"
    export_onnx(model, out, input_size=(64, 96))
    checks = check_parity(model, out, [(1, 97, 131), (2, 64, 96)], seed=1)
    assert [c.output_shape for c in checks] == [(1, 3, 25, 33), (2, 3, 16, 24)]
    assert max(c.max_abs_diff for c in checks) < 1e-4
