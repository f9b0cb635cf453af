import math

import pytest
import torch
from baseline_helpers import (
    assert_scalar_terms,
    backward_and_collect,
    build_method,
    fake_context,
)
from make_fixtures import build_case

from transkd.distill import kd  # noqa: F401  (registers "kd")
from transkd.distill.kd import pixelwise_kl
from transkd.errors import ConfigError


def two_pixel_logits(temperature: float) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Pixel 0: teacher (ln 3, 0) vs student (0, 0); pixel 1: equal. Returns the expected loss."""
    teacher = torch.tensor([[[[math.log(3.0), 0.5]], [[0.0, -1.0]]]])   # (1, 2, 1, 2)
    student = torch.tensor([[[[0.0, 0.5]], [[0.0, -1.0]]]])
    # softmax((ln 3, 0) / T): p = 3^(1/T) / (3^(1/T) + 1); student is uniform
    p = 3 ** (1 / temperature) / (3 ** (1 / temperature) + 1)
    kl_pixel0 = p * math.log(p / 0.5) + (1 - p) * math.log((1 - p) / 0.5)
    return student, teacher, temperature ** 2 * kl_pixel0 / 2   # mean over the two pixels


@pytest.mark.parametrize("temperature", [1.0, 2.0, 4.0])
def test_pixelwise_kl_hand_computed(temperature):
    student, teacher, expected = two_pixel_logits(temperature)
    assert pixelwise_kl(student, teacher, temperature).item() == pytest.approx(expected, rel=1e-5)


def test_pixelwise_kl_value_at_t1():
    student, teacher, expected = two_pixel_logits(1.0)
    # 0.75·ln 1.5 + 0.25·ln 0.5 = 0.130812..., halved over two pixels
    assert expected == pytest.approx(0.0654060, abs=1e-7)
    assert pixelwise_kl(student, teacher).item() == pytest.approx(0.0654060, abs=1e-7)


def test_kl_is_zero_for_equal_logits_and_positive_otherwise():
    ctx = fake_context(student_is_teacher=True)
    assert pixelwise_kl(ctx.student.logits, ctx.teacher.logits, 4.0).item() == pytest.approx(0, abs=1e-6)
    other = fake_context()
    assert pixelwise_kl(other.student.logits, other.teacher.logits).item() > 0


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="differ in shape"):
        pixelwise_kl(torch.zeros(1, 3, 4, 4), torch.zeros(1, 3, 8, 8))


def test_method_defaults_weight_and_gradients():
    method = build_method("kd")
    assert (method.options.temperature, method.options.loss_weight) == (1.0, 1.0)
    assert not list(method.parameters())
    ctx = fake_context()
    terms = backward_and_collect(method, ctx)
    assert_scalar_terms(terms, {"kd"})
    assert terms["kd"].item() == pytest.approx(pixelwise_kl(ctx.student.logits, ctx.teacher.logits).item())
    assert ctx.student.logits.grad is not None and ctx.student.logits.grad.abs().sum() > 0
    assert all(f.grad is None for f in ctx.student.features)

    heavier = build_method("kd", temperature=2, loss_weight=0.5)
    expected = 0.5 * pixelwise_kl(ctx.student.logits, ctx.teacher.logits, 2.0)
    assert heavier.loss_terms(ctx)["kd"].item() == pytest.approx(expected.item(), rel=1e-6)


@pytest.mark.parametrize("options, message", [
    ({"temperature": 0}, "temperature"),
    ({"temperature": float("nan")}, "temperature"),
    ({"loss_weight": -1}, "loss_weight"),
    ({"temprature": 2.0}, "unknown option"),
    ({"temperature": "hot"}, "must be a number"),
])
def test_invalid_options_are_rejected(options, message):
    with pytest.raises(ConfigError, match=message):
        build_method("kd", **options)


def test_combines_with_transkd_base():
    distiller, images, targets = build_case("transkd_base+kd", kd={"temperature": 2.0})
    out = distiller(images, targets)
    assert {"ce", "hcl", "kd", "loss"} <= set(out)
    assert list(distiller.methods) == ["transkd_base", "kd"]
    assert distiller.methods["kd"].options.temperature == 2.0

