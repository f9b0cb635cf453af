"""The channels-last convolution: same values and gradients as ``F.conv2d`` through autograd."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from transkd.models.conv import Conv2d, conv2d

CL = torch.channels_last

# (in, out, kernel, stride, padding, bias, input needs a gradient)
CASES = [
    (6, 10, 1, 1, 0, True, True),      # pointwise: the weight gradient is one matrix product
    (6, 10, 1, 1, 0, False, False),
    (5, 7, 3, 1, 1, False, True),      # CSF's expand convolution
    (5, 7, 3, 2, 1, True, True),       # a stride-2 patch embedding
    (3, 8, 7, 4, 3, True, False),      # the first patch embedding: no input gradient
    (4, 4, 4, 4, 0, True, True),       # a spatial-reduction convolution
    (6, 9, 1, 2, 0, True, True),       # 1×1 but strided: the NCHW path
]


def _uses_fast_path(y: torch.Tensor) -> bool:
    return "ChannelsLastConv2d" in type(y.grad_fn).__name__


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("case", CASES, ids=lambda c: "k{2}s{3}p{4}{5}{6}".format(*c))
def test_values_and_gradients_match_autograd(case, dtype):
    cin, cout, k, stride, pad, with_bias, input_grad = case
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, cin, 13, 17, generator=gen, dtype=dtype).contiguous(memory_format=CL)
    w = torch.randn(cout, cin, k, k, generator=gen, dtype=dtype)
    b = torch.randn(cout, generator=gen, dtype=dtype) if with_bias else None
    def leaves():
        return (x.clone().requires_grad_(input_grad), w.clone().requires_grad_(),
                None if b is None else b.clone().requires_grad_())

    xo, wo, bo = ours_in = leaves()
    xr, wr, br = ref_in = leaves()
    ours = conv2d(xo, wo, bo, stride, pad)
    ref = F.conv2d(xr, wr, br, stride, pad)
    assert _uses_fast_path(ours)
    grad = torch.randn(ref.shape, generator=gen, dtype=dtype).contiguous(memory_format=CL)
    ours.backward(grad)
    ref.backward(grad)
    tol = {"rtol": 1e-10, "atol": 1e-10} if dtype == torch.float64 else {"rtol": 1e-4, "atol": 1e-4}
    torch.testing.assert_close(ours, ref, **tol)
    for a, r in zip(ours_in, ref_in):
        if r is None:
            continue
        assert (a.grad is None) == (r.grad is None)
        if r.grad is not None:
            torch.testing.assert_close(a.grad, r.grad, **tol)


def test_gradcheck():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, 5, 6, generator=gen, dtype=torch.float64).contiguous(memory_format=CL)
    w = torch.randn(4, 3, 3, 3, generator=gen, dtype=torch.float64)
    b = torch.randn(4, generator=gen, dtype=torch.float64)
    x, w, b = (t.requires_grad_() for t in (x, w, b))
    assert torch.autograd.gradcheck(lambda x, w, b: conv2d(x, w, b, 1, 1), (x, w, b))
    w1 = torch.randn(4, 3, 1, 1, generator=gen, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, w, b: conv2d(x, w, b), (x, w1, b))


def test_other_cases_run_plain_conv2d():
    x = torch.randn(2, 4, 8, 8)
    w = torch.randn(4, 4, 3, 3, requires_grad=True)
    assert not _uses_fast_path(conv2d(x, w, padding=1))                      # NCHW input
    xc = x.contiguous(memory_format=CL)
    assert not _uses_fast_path(conv2d(xc, w[:, :1], padding=1, groups=4))    # grouped
    assert not _uses_fast_path(conv2d(xc, w, padding=2, dilation=2))         # dilated
    with torch.no_grad():
        assert conv2d(xc, w, padding=1).grad_fn is None
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not _uses_fast_path(conv2d(xc, w, padding=1))
    assert _uses_fast_path(conv2d(xc, w, padding=1))


def test_module_is_a_drop_in_conv2d():
    torch.manual_seed(0)
    plain = nn.Conv2d(4, 6, 3, padding=1)
    ours = Conv2d(4, 6, 3, padding=1)
    ours.load_state_dict(plain.state_dict())
    assert ours.state_dict().keys() == plain.state_dict().keys()
    x = torch.randn(2, 4, 9, 7).contiguous(memory_format=CL)
    torch.testing.assert_close(ours(x), plain(x))
    same = Conv2d(4, 6, 3, padding="same")  # string padding: nn.Conv2d's own forward
    same.load_state_dict(plain.state_dict())
    torch.testing.assert_close(same(x), plain(x))
