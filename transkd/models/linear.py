"""A linear layer whose fp32 CPU matrix products run on oneDNN where it beats the BLAS.

PyTorch's x86 builds send every fp32 ``F.linear`` on the CPU to MKL's sgemm, which on AMD CPUs does
not run its best kernels; oneDNN (the library behind PyTorch's CPU convolutions) does. On an AMD
EPYC (Zen 4, AVX-512, 2 threads) a 2048² product ran at 203 against 167 GFLOP/s, the wide
token-wise products of a MiT encoder up to 1.6× faster (MiT-B2's stage-1 ``fc2``, 16384×256 → 64:
3.8 against 6.3 ms) and MiT-B2's whole forward at 2×3×256×512 took 286 instead of 303 ms
(``benchmarks/cpu_matmul.py``; some small products are slower, e.g. 0.92× at 4096×128 → 128).

:func:`linear` is ``F.linear`` with the product taken by oneDNN (``mkldnn::_linear_pointwise``,
the kernel ``torch.compile`` itself emits for CPU linears) when :func:`cpu_matmul_backend` says
``onednn``. Under autograd the input gradient (``grad @ weight``) goes to oneDNN too; the weight
gradient (``gradᵀ @ input``, whose operands oneDNN would read transposed) stays with the BLAS,
which was faster for it at every MiT shape measured. Both are fp32 products of the same terms,
summed in another order: results agree with ``F.linear`` to float rounding (tested against a
float64 computation).

The choice (environment variable ``TRANSKD_CPU_MATMUL``): ``auto`` (default) takes oneDNN on AMD
x86 CPUs and PyTorch's BLAS elsewhere (on Intel CPUs MKL is the vendor's own tuned library);
``onednn`` or ``blas`` force one. Everything else runs ``F.linear`` unchanged: other dtypes,
autocast, tracing, ONNX export, ``torch.compile``, and devices other than the CPU.
"""

from __future__ import annotations

import functools
import os
import platform

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from .eager import compiling_or_exporting

#: Environment variable: ``auto``, ``onednn`` or ``blas`` (see the module docstring).
ENV_VAR = "TRANSKD_CPU_MATMUL"
BACKENDS = ("auto", "onednn", "blas")

_override: str | None = None


@functools.cache
def _onednn_linear():
    """oneDNN's linear kernel, or None where this PyTorch build has none."""
    try:
        if not torch.backends.mkldnn.is_available():
            return None
        return torch.ops.mkldnn._linear_pointwise.default
    except (AttributeError, RuntimeError):
        return None


@functools.cache
def cpu_vendor() -> str:
    """The x86 vendor string (``AuthenticAMD``, ``GenuineIntel``), or '' where unknown."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("vendor_id"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return ""


def _requested(override: str | None, env_value: str | None) -> str:
    if override is not None:
        return override
    value = (env_value or "auto").strip().lower() or "auto"
    if value not in BACKENDS:
        raise ConfigError(f"{ENV_VAR}={value!r} is not one of {', '.join(BACKENDS)}")
    return value


def cpu_matmul_backend() -> str:
    """``onednn`` or ``blas``: what takes the fp32 CPU products of :func:`linear` now."""
    return _resolve(_override, os.environ.get(ENV_VAR))


@functools.lru_cache(maxsize=8)
def _resolve(override: str | None, env_value: str | None) -> str:
    # Called per linear layer: cached on what it reads, so a changed setting still counts.
    requested = _requested(override, env_value)
    if requested == "blas" or _onednn_linear() is None:
        return "blas"
    if requested == "onednn":
        return "onednn"
    return "onednn" if cpu_vendor() == "AuthenticAMD" else "blas"


def describe_cpu_matmul() -> str:
    """The backend with why, for the record of a measurement."""
    requested = _requested(_override, os.environ.get(ENV_VAR))
    backend = cpu_matmul_backend()
    if requested == "auto":
        vendor = cpu_vendor() or "unknown CPU vendor"
        return f"{backend} (auto: {vendor})"
    return backend if backend == requested else f"{backend} ({requested} requested, not available)"


def set_cpu_matmul_backend(name: str | None) -> None:
    """Force a backend in this process (``None``: back to the environment's choice); for
    benchmarks that compare both side by side."""
    global _override
    if name is not None and name not in BACKENDS:
        raise ConfigError(f"CPU matmul backend {name!r} is not one of {', '.join(BACKENDS)}")
    _override = name


def _wants_onednn(x: torch.Tensor, weight: torch.Tensor) -> bool:
    return (not compiling_or_exporting() and x.device.type == "cpu" and x.dtype == torch.float32
            and weight.dtype == torch.float32 and x.dim() >= 2 and x.numel() > 0
            and not torch.is_autocast_enabled("cpu") and cpu_matmul_backend() == "onednn")


class _OneDNNLinear(torch.autograd.Function):
    """oneDNN forward and input gradient; BLAS weight gradient (see the module docstring)."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return _onednn_linear()(x, weight, bias, "none", [], "")

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        want_input, want_weight, want_bias = ctx.needs_input_grad
        rows = grad.reshape(-1, grad.shape[-1])
        grad_input = grad_weight = grad_bias = None
        if want_input:
            # grad @ weight is a linear layer whose weight is weightᵀ (out = in·Wᵀ).
            grad_input = _onednn_linear()(rows, weight.t(), None, "none", [], "").view(x.shape)
        if want_weight:
            grad_weight = rows.t() @ x.reshape(-1, x.shape[-1])
        if want_bias and ctx.has_bias:
            grad_bias = rows.sum(0)
        return grad_input, grad_weight, grad_bias


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear``, through oneDNN for fp32 CPU tensors when :func:`cpu_matmul_backend` says so."""
    if not _wants_onednn(x, weight):
        return F.linear(x, weight, bias)
    if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad
                                    or (bias is not None and bias.requires_grad)):
        return _OneDNNLinear.apply(x, weight, bias)
    return _onednn_linear()(x, weight, bias, "none", [], "")


class Linear(nn.Linear):
    """``nn.Linear`` (same parameters and state-dict keys) that runs through :func:`linear`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias)
