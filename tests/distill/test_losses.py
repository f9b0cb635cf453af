"""Hierarchical context loss against values computed by hand."""

from __future__ import annotations

import pytest
import torch

from transkd.distill.losses import HCL_LEVELS, hcl_loss, hcl_stage_loss


def as_map(rows: list[list[float]]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32)[None, None]


def left_half_ones(height: int, width: int) -> torch.Tensor:
    x = torch.zeros(1, 1, height, width)
    x[..., : width // 2] = 1.0
    return x


def test_levels_and_weights_are_the_papers():
    assert HCL_LEVELS == ((4, 0.5), (2, 0.25), (1, 0.125))


def test_two_by_two_map_uses_only_the_global_level():
    # Levels 4 and 2 are not smaller than the height 2, so only the 1×1 level is added:
    # MSE = (1+4+9+16)/4 = 7.5; pooled mean 2.5 → 6.25; (7.5 + 6.25/8) / (1 + 1/8).
    student = as_map([[1, 2], [3, 4]])
    loss = hcl_stage_loss(student, torch.zeros_like(student))
    assert loss.item() == pytest.approx((7.5 + 6.25 / 8) / 1.125, rel=1e-6)
    assert loss.item() == pytest.approx(7.3611111, rel=1e-6)


def test_eight_by_eight_map_uses_every_level():
    # Left half ones, teacher zeros: MSE 0.5 at full size, 4×4 and 2×2 (the halves survive
    # pooling), 0.25 at 1×1. (0.5 + 0.5/2 + 0.5/4 + 0.25/8) / (1 + 1/2 + 1/4 + 1/8).
    student = left_half_ones(8, 8)
    loss = hcl_stage_loss(student, torch.zeros_like(student))
    assert loss.item() == pytest.approx(0.90625 / 1.875, rel=1e-6)


def test_pooling_removes_fine_detail():
    # A ±1 checkerboard averages to zero in every pooled level: only the full-size MSE (1) stays.
    board = (torch.arange(8)[:, None] + torch.arange(8)[None, :]) % 2 * 2.0 - 1.0
    loss = hcl_stage_loss(board[None, None], torch.zeros(1, 1, 8, 8))
    assert loss.item() == pytest.approx(1.0 / 1.875, rel=1e-6)


def test_levels_are_chosen_by_height_for_wide_maps():
    # 4×8 map: the 4×4 level is not smaller than the height 4; 2×2 and 1×1 are used.
    student = left_half_ones(4, 8)
    loss = hcl_stage_loss(student, torch.zeros_like(student))
    assert loss.item() == pytest.approx((0.5 + 0.5 / 4 + 0.25 / 8) / 1.375, rel=1e-6)


def test_mean_over_batch_and_channels():
    student = torch.stack([left_half_ones(8, 8)[0], torch.zeros(1, 8, 8)])  # (2, 1, 8, 8)
    loss = hcl_stage_loss(student, torch.zeros_like(student))
    assert loss.item() == pytest.approx(0.5 * 0.90625 / 1.875, rel=1e-6)


def test_sum_over_stages_symmetry_and_zero():
    a, b = as_map([[1, 2], [3, 4]]), left_half_ones(8, 8)
    total = hcl_loss([a, b], [torch.zeros_like(a), torch.zeros_like(b)])
    assert total.item() == pytest.approx(7.3611111 + 0.90625 / 1.875, rel=1e-6)
    x, y = torch.randn(2, 3, 8, 8), torch.randn(2, 3, 8, 8)
    assert hcl_stage_loss(x, y).item() == pytest.approx(hcl_stage_loss(y, x).item(), rel=1e-6)
    assert hcl_stage_loss(x, x).item() == 0.0


def test_half_precision_inputs_give_a_float32_loss():
    x = torch.randn(1, 2, 8, 8)
    loss = hcl_stage_loss(x.half(), torch.zeros(1, 2, 8, 8).half())
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(hcl_stage_loss(x.half().float(), torch.zeros(1, 2, 8, 8)).item())


def test_stage_counts_must_match():
    with pytest.raises(ValueError):
        hcl_loss([torch.zeros(1, 1, 2, 2)], [torch.zeros(1, 1, 2, 2)] * 2)


def test_gradient_flows_to_the_student_only():
    student = torch.randn(1, 2, 8, 8, requires_grad=True)
    teacher = torch.randn(1, 2, 8, 8)
    hcl_loss([student], [teacher]).backward()
    assert student.grad is not None and student.grad.abs().sum() > 0


def _hcl_written_out(student: torch.Tensor, teacher: torch.Tensor, level_weights: str) -> torch.Tensor:
    """The stage loss as its docstring states it, through adaptive pooling and autograd."""
    loss, total, halved = torch.nn.functional.mse_loss(student, teacher), 1.0, 1.0
    for size, weight in HCL_LEVELS:
        if size >= student.shape[2]:
            continue
        if level_weights == "halved":
            halved /= 2.0
            weight = halved
        pool = torch.nn.functional.adaptive_avg_pool2d
        loss = loss + weight * torch.nn.functional.mse_loss(pool(student, size), pool(teacher, size))
        total += weight
    return loss / total


@pytest.mark.parametrize("shape", [(2, 3, 16, 32), (2, 5, 8, 8), (1, 2, 4, 12), (2, 3, 12, 20),
                                   (2, 3, 9, 13), (1, 2, 2, 6)])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("level_weights", ["fixed", "halved"])
def test_value_and_gradient_match_the_formula_through_autograd(shape, channels_last, level_weights):
    # Maps that every pooled size divides take a hand-written backward; the others (9×13) do not.
    generator = torch.Generator().manual_seed(sum(shape))
    student = torch.randn(*shape, generator=generator, dtype=torch.float64)
    teacher = torch.randn(*shape, generator=generator, dtype=torch.float64)
    if channels_last:
        student = student.to(memory_format=torch.channels_last)
    student.requires_grad_()
    loss = hcl_stage_loss(student, teacher, level_weights=level_weights)
    (grad,) = torch.autograd.grad(3.0 * loss, student)
    leaf = student.detach().clone().requires_grad_()
    expected = _hcl_written_out(leaf, teacher, level_weights)
    (expected_grad,) = torch.autograd.grad(3.0 * expected, leaf)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-12)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-10, atol=1e-14)


def test_gradcheck_on_a_divisible_map():
    student = torch.randn(1, 2, 8, 4, dtype=torch.float64, requires_grad=True)
    teacher = torch.randn(1, 2, 8, 4, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda s: hcl_stage_loss(s, teacher), (student,))
