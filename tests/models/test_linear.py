"""The oneDNN linear layer: the values and gradients of x·Wᵀ + b, and when it is (not) used."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from transkd.errors import ConfigError
from transkd.models import linear as linear_module
from transkd.models.linear import Linear, cpu_matmul_backend, linear, set_cpu_matmul_backend

needs_onednn = pytest.mark.skipif(linear_module._onednn_linear() is None,
                                  reason="this PyTorch build has no oneDNN linear kernel")


@pytest.fixture
def backend(monkeypatch):
    """Set the backend for one test; the process's own choice comes back afterwards."""
    monkeypatch.delenv(linear_module.ENV_VAR, raising=False)
    yield set_cpu_matmul_backend
    set_cpu_matmul_backend(None)


def _uses_onednn(y: torch.Tensor) -> bool:
    return "OneDNNLinear" in type(y.grad_fn).__name__


# (input shape, out features, bias, input needs a gradient, input transposed in memory)
CASES = [
    ((37, 24), 40, True, True, False),
    ((2, 53, 24), 17, True, True, False),    # tokens (B, N, C): the encoders' layout
    ((2, 53, 24), 17, False, False, False),  # first layer: no input gradient, no bias
    ((2, 53, 24), 48, True, True, True),     # a transposed view (the SegFormer head's tokens)
]


@needs_onednn
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{len(c[0])}d-{c[1]}-b{c[2]:d}-g{c[3]:d}-t{c[4]:d}")
def test_values_and_gradients_match_the_formula(case, backend):
    """Against x·Wᵀ + b and its gradients (g·W, gᵀ·x, Σg) computed in float64 by hand."""
    backend("onednn")
    shape, out_features, with_bias, input_grad, transposed = case
    gen = torch.Generator().manual_seed(0)
    if transposed:
        x = torch.randn(shape[0], shape[2], shape[1], generator=gen).transpose(1, 2)
    else:
        x = torch.randn(shape, generator=gen)
    w = torch.randn(out_features, shape[-1], generator=gen)
    b = torch.randn(out_features, generator=gen) if with_bias else None
    xo = x.clone().requires_grad_(input_grad) if not transposed else x.detach().requires_grad_(input_grad)
    wo = w.clone().requires_grad_()
    bo = None if b is None else b.clone().requires_grad_()
    y = linear(xo, wo, bo)
    assert _uses_onednn(y)
    g = torch.randn(y.shape, generator=gen)
    y.backward(g)

    x64, w64, g64 = x.double().reshape(-1, shape[-1]), w.double(), g.double().reshape(-1, out_features)
    expected = x64 @ w64.t() + (0 if b is None else b.double())
    tol = {"rtol": 1e-5, "atol": 1e-5}
    torch.testing.assert_close(y.double().reshape(-1, out_features), expected, **tol)
    torch.testing.assert_close(wo.grad.double(), g64.t() @ x64, **tol)
    if input_grad:
        torch.testing.assert_close(xo.grad.double().reshape(-1, shape[-1]), g64 @ w64, **tol)
        assert xo.grad.shape == x.shape
    else:
        assert xo.grad is None
    if with_bias:
        torch.testing.assert_close(bo.grad.double(), g64.sum(0), **tol)


@needs_onednn
def test_frozen_weight_and_no_grad(backend):
    """A frozen layer (the teacher's) passes only the input gradient; without autograd the
    plain kernel answers, with the values of ``F.linear``."""
    backend("onednn")
    layer = Linear(12, 7)
    layer.requires_grad_(False)
    x = torch.randn(3, 5, 12, requires_grad=True)
    y = layer(x)
    assert _uses_onednn(y)
    y.sum().backward()
    torch.testing.assert_close(x.grad, layer.weight.sum(0).expand_as(x))
    with torch.inference_mode():
        plain = layer(x.detach())
    assert plain.grad_fn is None
    torch.testing.assert_close(plain, F.linear(x.detach(), layer.weight, layer.bias))


@pytest.mark.parametrize("setting", ["blas", "onednn", "auto"])
def test_falls_back_to_f_linear(setting, backend, monkeypatch):
    """Float64, autocast and tracing never reach oneDNN; nor does anything when ``blas`` is
    chosen."""
    backend(setting)
    calls = []
    monkeypatch.setattr(linear_module, "_onednn_linear", lambda: calls.append(1))
    layer = Linear(6, 4)
    x = torch.randn(2, 6)
    layer.double()(x.double())
    layer.float()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert layer(x).dtype == torch.bfloat16
    torch.jit.trace(layer, x, check_trace=False)  # the check would rerun it eagerly
    assert calls == []
    if setting == "blas":
        assert not _uses_onednn(layer(x.requires_grad_()))
        assert calls == []


def test_choice_follows_the_environment_and_the_vendor(backend, monkeypatch):
    if linear_module._onednn_linear() is None:
        assert cpu_matmul_backend() == "blas"
        return
    monkeypatch.setattr(linear_module, "cpu_vendor", lambda: "AuthenticAMD")
    linear_module._resolve.cache_clear()
    assert cpu_matmul_backend() == "onednn"
    monkeypatch.setattr(linear_module, "cpu_vendor", lambda: "GenuineIntel")
    linear_module._resolve.cache_clear()
    assert cpu_matmul_backend() == "blas"
    assert "auto: GenuineIntel" in linear_module.describe_cpu_matmul()
    monkeypatch.setenv(linear_module.ENV_VAR, "onednn")
    assert cpu_matmul_backend() == "onednn"
    monkeypatch.setenv(linear_module.ENV_VAR, "BLAS")
    assert cpu_matmul_backend() == "blas"
    backend("onednn")  # the in-process setting wins over the environment
    assert cpu_matmul_backend() == "onednn"
    linear_module._resolve.cache_clear()


def test_an_unknown_setting_is_named(backend, monkeypatch):
    monkeypatch.setenv(linear_module.ENV_VAR, "mkl")
    with pytest.raises(ConfigError, match="TRANSKD_CPU_MATMUL='mkl' is not one of auto, onednn, blas"):
        cpu_matmul_backend()
    with pytest.raises(ConfigError, match="'cuda' is not one of"):
        set_cpu_matmul_backend("cuda")


def test_module_is_a_drop_in_linear():
    layer = Linear(5, 3, bias=False)
    assert isinstance(layer, nn.Linear)
    assert list(layer.state_dict()) == list(nn.Linear(5, 3, bias=False).state_dict()) == ["weight"]


@needs_onednn
def test_encoder_gradients_match_blas(backend):
    """A whole MiT block trains alike on both backends: one step's gradients agree to float
    rounding."""
    from transkd.models.layers import TransformerBlock

    torch.manual_seed(0)
    block = TransformerBlock(32, num_heads=2, mlp_ratio=4, sr_ratio=2)
    x = torch.randn(2, 8 * 12, 32)
    grads = {}
    for name in ("blas", "onednn"):
        backend(name)
        block.zero_grad()
        block(x, 8, 12).square().mean().backward()
        grads[name] = {k: p.grad.clone() for k, p in block.named_parameters()}
    for k in grads["blas"]:
        torch.testing.assert_close(grads["onednn"][k], grads["blas"][k], rtol=1e-4, atol=1e-6)
