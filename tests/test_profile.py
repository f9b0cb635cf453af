"""Sizes: the paper-convention MAC counter, the flop counter with attention, and the pinned sizes."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from transkd import create_model
from transkd.distill import Distiller, DistillMethod, NetworkInfo
from transkd.errors import ConfigError
from transkd.profile import (
    count_flops_total,
    count_macs_conv_linear,
    count_params,
    eval_mode,
    flop_counter_mode,
    layer_macs,
    profile_distiller,
    profile_model,
)


class Toy(nn.Module):
    """Every counted layer type once, plus uncounted functional work."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)            # bias
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.relu = nn.ReLU()
        self.gelu = nn.GELU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.up = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)
        self.norm = nn.LayerNorm(8)
        self.plain_norm = nn.LayerNorm(8, elementwise_affine=False)
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn(self.dw(self.conv(x))))        # (1, 8, 5, 5)
        x = self.gelu(x) + self.pool(x)
        x = self.up(x)                                       # (1, 8, 10, 10)
        x = F.interpolate(x, scale_factor=0.5, mode="bilinear")
        tokens = self.plain_norm(self.norm(x.flatten(2).transpose(1, 2)))   # (1, 25, 8)
        attn = (tokens @ tokens.transpose(1, 2)).softmax(-1)
        return self.fc(attn @ tokens)                        # (1, 25, 4)


def test_toy_breakdown_matches_hand_count() -> None:
    macs = count_macs_conv_linear(Toy().eval(), torch.randn(1, 3, 5, 5))
    assert macs.breakdown == {
        "conv": 200 * 3 * 9 + 200 * 1 * 9,   # 8×5×5 outputs × in/groups × 3×3
        "conv_bias": 200,                    # one per output element of the biased conv
        "norm": 200 * 2 + 25 * 8 * 2 + 25 * 8,   # BN affine, LayerNorm affine, LayerNorm plain
        "activation": 200,                   # ReLU; GELU is free
        "pool": 200,                         # per input element
        "upsample": 800,                     # per output element of nn.Upsample
        "linear": 25 * 4 * 8,                # outputs × in_features, bias free
    }
    assert macs.total == sum(macs.breakdown.values())
    assert macs.weights_only == 200 * 3 * 9 + 200 * 9 + 25 * 4 * 8


def test_layer_rules_for_transposed_conv_subclass_and_repeated_calls() -> None:
    deconv = nn.ConvTranspose2d(4, 2, 2, stride=2)
    out = deconv(torch.randn(1, 4, 3, 3))
    assert layer_macs(deconv, (torch.randn(1, 4, 3, 3),), out) == {
        "conv": 9 * 4 * 2 * 4, "conv_bias": out.numel()}

    class SafeBN(nn.BatchNorm2d):
        pass

    twice = nn.Linear(3, 5)
    model = nn.ModuleDict({"bn": SafeBN(3), "fc": twice})
    macs = count_macs_conv_linear(lambda x: model.fc(model.fc.weight.new_ones(2, 3)) + model.fc(x),
                                  torch.randn(2, 3), modules=[model])
    assert macs.breakdown == {"linear": 2 * (2 * 5 * 3)}
    assert layer_macs(model.bn, (torch.randn(1, 3, 2, 2),), None) == {"norm": 24}


def test_plain_callable_needs_modules() -> None:
    with pytest.raises(TypeError, match="modules"):
        count_macs_conv_linear(lambda x: x, torch.zeros(1))


def test_flop_counter_counts_cpu_attention_like_explicit_matmuls() -> None:
    q, k, v = torch.randn(1, 2, 64, 32), torch.randn(1, 2, 16, 32), torch.randn(1, 2, 16, 32)
    fused = count_flops_total(lambda: F.scaled_dot_product_attention(q, k, v), ())
    explicit = count_flops_total(lambda: ((q @ k.transpose(-2, -1)).softmax(-1)) @ v, ())
    assert fused == explicit == 2 * 2 * (2 * 64 * 16 * 32)
    assert count_flops_total(nn.Linear(6, 4), torch.randn(2, 7, 6)) == 2 * 2 * 7 * 4 * 6


@pytest.mark.parametrize("backend", ["blas", "onednn"])
def test_flop_counter_counts_linear_layers_on_either_cpu_matmul(backend) -> None:
    """``models.linear`` may run oneDNN's kernel, which torch's table does not list: the count is
    the same hand count (forward 2·rows·in·out; backward twice that) on both libraries."""
    from transkd.models.linear import Linear, set_cpu_matmul_backend

    set_cpu_matmul_backend(backend)
    try:
        x = torch.randn(2, 7, 6, requires_grad=True)
        mode = flop_counter_mode()
        with mode:
            y = Linear(6, 4)(x)
        assert mode.get_total_flops() == 2 * 2 * 7 * 6 * 4
        mode = flop_counter_mode()
        with mode:
            y.sum().backward()
        assert mode.get_total_flops() == 2 * (2 * 2 * 7 * 6 * 4)
    finally:
        set_cpu_matmul_backend(None)


@pytest.mark.parametrize("groups", [1, 4, 16])
def test_flop_counter_backward_of_grouped_convolution_costs_its_forward_per_gradient(groups) -> None:
    conv = nn.Conv2d(16, 16, 3, padding=1, groups=groups)
    forward = 2 * (2 * 16 * 8 * 8) * (16 // groups) * 9  # output elements × MACs each
    for needs_input_grad, gradients in ((True, 2), (False, 1)):  # weight always; input if asked
        x = torch.randn(2, 16, 8, 8, requires_grad=needs_input_grad)
        mode = flop_counter_mode()
        with mode:
            conv(x).sum().backward()
        counts = {str(op): n for op, n in mode.get_flop_counts()["Global"].items()}
        assert counts["aten.convolution"] == forward
        assert counts["aten.convolution_backward"] == gradients * forward


def test_flop_counter_counts_cpu_attention_backward() -> None:
    q, k, v = (torch.randn(1, 2, 64, 32, requires_grad=True), torch.randn(1, 2, 16, 32, requires_grad=True),
               torch.randn(1, 2, 16, 32, requires_grad=True))
    mode = flop_counter_mode()
    with mode:
        F.scaled_dot_product_attention(q, k, v).sum().backward()
    forward = 2 * 2 * (2 * 64 * 16 * 32)
    # torch's convention for a flash backward: five matrix products (q·kᵀ recomputed) = 2.5×.
    assert mode.get_total_flops() == forward + 5 * forward // 2


def test_count_params_counts_shared_tensors_once() -> None:
    fc = nn.Linear(3, 4)
    shared = nn.Sequential(fc, nn.ReLU(), fc)
    assert count_params(shared) == 16
    assert count_params([*fc.parameters(), *shared.parameters()]) == 16


def test_eval_mode_restores_each_module() -> None:
    model = nn.Sequential(nn.Dropout(), nn.BatchNorm1d(2))
    model.train()
    model[1].eval()
    with eval_mode(model):
        assert not any(m.training for m in model.modules())
    assert [m.training for m in model.modules()] == [True, True, False]


def test_profile_model_small_input_keys_and_mode() -> None:
    result = profile_model("segformer_b0", 3, (64, 64))
    assert result["input_size"] == [1, 3, 64, 64]
    assert result["params"] == count_params(create_model("segformer_b0", num_classes=3))
    assert result["macs_total"] == result["flops_total"] // 2
    # Attention products make the total exceed the pure conv+linear weight products.
    assert result["macs_total"] > result["macs_breakdown"]["conv"] + result["macs_breakdown"]["linear"]
    assert set(result["convention"]) == {"macs_conv_linear", "flops_total", "macs_total"}


@pytest.mark.parametrize("name, classes, size, message", [
    ("mit_b0", 3, (64, 64), "unknown segmentation model"),
    ("segformer_b0", 3, (0, 64), "positive"),
    ("segformer_b0", 3, (8, 8), "failed on input size 8x8"),
])
def test_profile_model_rejects_bad_input(name, classes, size, message) -> None:
    with pytest.raises(ConfigError, match=message):
        profile_model(name, classes, size)


@pytest.mark.slow
@pytest.mark.parametrize("name, params, params_m, gmacs, gmacs_total", [
    ("segformer_b0", 3_719_284, "3.72", "13.67", "17.77"),
    ("segformer_b2", 27_362_004, "27.36", "113.84", "129.19"),
])
def test_paper_sizes_at_512x1024(name, params, params_m, gmacs, gmacs_total) -> None:
    result = profile_model(name, 20, (512, 1024))
    assert result["params"] == params
    assert f"{result['params'] / 1e6:.2f}" == params_m
    assert f"{result['macs_conv_linear'] / 1e9:.2f}" == gmacs
    assert f"{result['macs_total'] / 1e9:.2f}" == gmacs_total


class TinyAdapter(DistillMethod):
    """A 1×1 conv on the stage-1 map and a linear on the stage-4 tokens."""

    name = "tiny_adapter"

    @dataclass
    class Options:
        width: int = 8

    def __init__(self, student: NetworkInfo, teacher: NetworkInfo | None, options: Options) -> None:
        super().__init__(student, teacher, options)
        self.conv = nn.Conv2d(student.widths[0], options.width, 1, bias=False)
        self.fc = nn.Linear(student.widths[-1], options.width)

    def loss_terms(self, ctx):
        mapped = self.conv(ctx.student.features[0])
        tokens = self.fc(ctx.student.embeddings[-1])
        reference = ctx.teacher.features[0].mean()
        return {"tiny": mapped.mean() + tokens.mean() - reference}


def test_profile_distiller_counts_student_and_adapters_not_teacher() -> None:
    student = create_model("segformer_b0", num_classes=3)
    teacher = create_model("segformer_b1", num_classes=3)
    method = TinyAdapter(NetworkInfo.of(student), NetworkInfo.of(teacher), TinyAdapter.Options())
    distiller = Distiller(student, teacher, [method]).train()
    sizes = profile_distiller(distiller, (64, 64))
    plain = profile_model("segformer_b0", 3, (64, 64))
    # Stage 1 of a 64×64 input is 16×16 (32 channels); stage 4 has 2×2 = 4 tokens of width 256.
    adapter_macs = 16 * 16 * 8 * 32 + 4 * 8 * 256
    assert sizes["macs_conv_linear_adapters"] == adapter_macs
    assert sizes["macs_conv_linear_training"] == plain["macs_conv_linear"] + adapter_macs
    assert sizes["params_adapters"] == 32 * 8 + 256 * 8 + 8
    assert sizes["params_training"] == plain["params"] + sizes["params_adapters"]
    assert sizes["method"] == "tiny_adapter"
    assert distiller.training and distiller.student.training and not teacher.training


def test_profile_distiller_without_method_is_the_plain_student() -> None:
    student = create_model("segformer_b0", num_classes=3)
    sizes = profile_distiller(Distiller(student, None, []), (64, 64))
    plain = profile_model("segformer_b0", 3, (64, 64))
    assert sizes["params_training"] == plain["params"]
    assert sizes["macs_conv_linear_training"] == plain["macs_conv_linear"]
    assert sizes["params_adapters"] == sizes["macs_conv_linear_adapters"] == 0
