import math

import pytest
import torch
from baseline_helpers import (
    CLASSES,
    TEACHER_WIDTHS,
    assert_scalar_terms,
    backward_and_collect,
    build_method,
    fake_context,
)

from transkd.distill import ifvd  # noqa: F401  (registers "ifvd")
from transkd.distill.ifvd import ifv_loss
from transkd.errors import ConfigError


def pixels(*vectors) -> torch.Tensor:
    """A (1, C, 1, N) map from N per-pixel feature vectors."""
    return torch.tensor(vectors, dtype=torch.float32).t().reshape(1, -1, 1, len(vectors))


def test_hand_computed_three_pixels():
    # labels (0, 0, 1). Student: class-0 prototype (0.5, 0.5) → cos 1/√2 for both pixels; the
    # lone class-1 pixel is its own prototype → 1. Teacher: class-0 pixels agree → 1, 1, 1.
    student = pixels([1.0, 0.0], [0.0, 1.0], [1.0, 1.0])
    teacher = pixels([1.0, 0.0], [2.0, 0.0], [2.0, 3.0])
    labels = torch.tensor([[[0, 0, 1]]])
    expected = 2 * (1 - 1 / math.sqrt(2)) ** 2 / 3
    assert ifv_loss(student, teacher, labels, num_classes=2).item() == pytest.approx(expected, rel=1e-6)


def test_ignored_pixels_join_no_prototype_and_no_mean():
    student = pixels([1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [-5.0, 7.0])
    teacher = pixels([1.0, 0.0], [2.0, 0.0], [2.0, 3.0], [9.0, 1.0])
    labels = torch.tensor([[[0, 0, 1, 255]]])
    expected = 2 * (1 - 1 / math.sqrt(2)) ** 2 / 3
    assert ifv_loss(student, teacher, labels, num_classes=2).item() == pytest.approx(expected, rel=1e-6)
    all_ignored = torch.full_like(labels, 255)
    assert ifv_loss(student, teacher, all_ignored, num_classes=2).item() == 0.0


def test_labels_are_nearest_resized_to_the_map():
    ctx = fake_context()
    student, teacher = ctx.student.features[2], ctx.teacher.features[2]      # 4×4 maps
    small = torch.randint(0, CLASSES, (2, 4, 4), generator=torch.Generator().manual_seed(3))
    small[0, 0, 0] = 255
    large = small.repeat_interleave(8, dim=1).repeat_interleave(8, dim=2)     # 32×32 blocks
    assert ifv_loss(student, teacher, large, CLASSES).item() == pytest.approx(
        ifv_loss(student, teacher, small, CLASSES).item(), rel=1e-6)


def test_width_free_and_zero_for_the_teacher_itself():
    ctx = fake_context()
    teacher = ctx.teacher.features[3]
    scaled_copy = torch.cat([teacher, teacher, teacher], dim=1) * 0.1        # other width, same cosines
    assert ifv_loss(scaled_copy, teacher, ctx.targets, CLASSES).item() == pytest.approx(0, abs=1e-6)
    method = build_method("ifvd", student_widths=TEACHER_WIDTHS)
    term = method.loss_terms(fake_context(student_is_teacher=True))["ifvd"]
    assert term.item() == pytest.approx(0, abs=1e-5)


def test_default_term_and_gradients():
    method = build_method("ifvd")
    assert (method.options.loss_weight, method.options.stage) == (200.0, 4)
    assert not list(method.parameters())
    ctx = fake_context()
    terms = backward_and_collect(method, ctx)
    assert_scalar_terms(terms, {"ifvd"})
    expected = 200.0 * ifv_loss(ctx.student.features[3], ctx.teacher.features[3], ctx.targets, CLASSES)
    assert terms["ifvd"].item() == pytest.approx(expected.item(), rel=1e-6)
    assert terms["ifvd"].item() > 0
    assert ctx.student.features[3].grad.abs().sum() > 0
    assert ctx.student.logits.grad is None


@pytest.mark.parametrize("options, message", [
    ({"stage": 0}, "counts stages from 1"),
    ({"stage": 5}, "beyond"),
    ({"stage": 2.5}, "must be an integer"),
    ({"loss_weight": -1}, "loss_weight"),
])
def test_invalid_options_are_rejected(options, message):
    with pytest.raises(ConfigError, match=message):
        build_method("ifvd", **options)



def test_mixed_precision_keeps_the_sums_in_fp32():
    ctx = fake_context()
    args = (ctx.student.features[3].detach(), ctx.teacher.features[3], ctx.targets, CLASSES)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = ifv_loss(*args)
    assert mixed.dtype == torch.float32
    assert mixed.item() == pytest.approx(ifv_loss(*args).item(), rel=1e-6)
