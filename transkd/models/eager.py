"""Whether code runs eagerly: the CPU fast paths of ``conv.py`` and ``linear.py`` are custom
autograd functions and oneDNN calls that tracing, ONNX export and ``torch.compile`` must not see
(those get the plain ``torch.nn.functional`` op, which they know how to record or lower)."""

from __future__ import annotations

import torch


def compiling_or_exporting() -> bool:
    """True under ``torch.jit`` tracing, ONNX export or ``torch.compile``."""
    return (torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()
            or torch.compiler.is_compiling())
