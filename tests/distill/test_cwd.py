import math

import pytest
import torch
from baseline_helpers import (
    TEACHER_WIDTHS,
    assert_scalar_terms,
    backward_and_collect,
    build_method,
    fake_context,
)
from torch import nn

from transkd.distill import cwd  # noqa: F401  (registers "cwd")
from transkd.distill.cwd import channel_wise_divergence
from transkd.errors import ConfigError


def spatial_kl_ln3(tau: float) -> float:
    """KL between softmax((ln 3, 0)/τ) and the uniform distribution over two locations."""
    p = 3 ** (1 / tau) / (3 ** (1 / tau) + 1)
    return p * math.log(p / 0.5) + (1 - p) * math.log((1 - p) / 0.5)


@pytest.mark.parametrize("tau", [1.0, 4.0])
def test_channel_wise_divergence_hand_computed(tau):
    # N = 1, C = 2, H·W = 2: channel 0 differs (teacher (ln 3, 0), student flat), channel 1 agrees.
    teacher = torch.tensor([[[[math.log(3.0), 0.0]], [[1.0, -2.0]]]])
    student = torch.tensor([[[[0.7, 0.7]], [[1.0, -2.0]]]])
    expected = tau ** 2 * spatial_kl_ln3(tau) / 2      # summed over channels, divided by N·C = 2
    assert channel_wise_divergence(student, teacher, tau).item() == pytest.approx(expected, rel=1e-5)


def test_softmax_runs_over_locations_not_channels():
    # A shift per channel leaves every spatial distribution unchanged: zero loss (unlike KD).
    ctx = fake_context()
    teacher = ctx.teacher.logits
    shifted = teacher + torch.arange(teacher.shape[1], dtype=torch.float32).view(1, -1, 1, 1)
    assert channel_wise_divergence(shifted, teacher, 4.0).item() == pytest.approx(0, abs=1e-6)
    assert channel_wise_divergence(ctx.student.logits, teacher, 4.0).item() > 0


def test_normalised_by_batch_and_channels():
    ctx = fake_context()
    s, t = ctx.student.logits, ctx.teacher.logits
    single = channel_wise_divergence(s[:1], t[:1], 4.0)
    doubled = channel_wise_divergence(torch.cat([s[:1], s[:1]]), torch.cat([t[:1], t[:1]]), 4.0)
    assert doubled.item() == pytest.approx(single.item(), rel=1e-6)


def test_default_is_the_published_logit_setting():
    method = build_method("cwd")
    opts = method.options
    assert (opts.on, opts.tau, opts.loss_weight) == ("logits", 4.0, 3.0)
    assert not list(method.parameters())
    ctx = fake_context()
    terms = backward_and_collect(method, ctx)
    assert_scalar_terms(terms, {"cwd"})
    expected = 3.0 * channel_wise_divergence(ctx.student.logits, ctx.teacher.logits, 4.0)
    assert terms["cwd"].item() == pytest.approx(expected.item(), rel=1e-6)


def test_features_use_adapters_and_average_over_stages():
    method = build_method("cwd", on="features", feature_stages=[4, 2], feature_weight=10.0)
    assert sorted(method.adapters) == ["stage2", "stage4"]
    adapter = method.adapters["stage4"]
    assert isinstance(adapter, nn.Conv2d) and adapter.bias is None
    assert (adapter.in_channels, adapter.out_channels) == (32, 64)
    ctx = fake_context()
    terms = backward_and_collect(method, ctx)
    assert_scalar_terms(terms, {"cwd_feat"})
    with torch.no_grad():
        per_stage = [channel_wise_divergence(method.adapters[f"stage{i}"](ctx.student.features[i - 1]),
                                             ctx.teacher.features[i - 1], 4.0) for i in (2, 4)]
    assert terms["cwd_feat"].item() == pytest.approx(10.0 * sum(per_stage).item() / 2, rel=1e-5)
    for name, param in method.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name
    assert ctx.student.features[1].grad is not None and ctx.student.features[3].grad is not None
    assert ctx.student.features[0].grad is None and ctx.student.logits.grad is None


def test_both_terms_and_zero_when_student_equals_teacher():
    method = build_method("cwd", student_widths=TEACHER_WIDTHS, on="both")
    assert all(isinstance(a, nn.Identity) for a in method.adapters.values())
    assert len(method.adapters) == 4
    terms = method.loss_terms(fake_context(student_is_teacher=True))
    assert_scalar_terms(terms, {"cwd", "cwd_feat"})
    assert terms["cwd"].item() == pytest.approx(0, abs=1e-5)
    assert terms["cwd_feat"].item() == pytest.approx(0, abs=1e-5)


@pytest.mark.parametrize("options, message", [
    ({"on": "pixels"}, "'on' for method 'cwd' must be one of"),
    ({"tau": 0}, "tau"),
    ({"loss_weight": -3}, "loss_weight"),
    ({"feature_weight": float("inf")}, "feature_weight"),
    ({"feature_stages": []}, "at least one stage"),
    ({"feature_stages": [0]}, "counts stages from 1"),
    ({"feature_stages": [2, 2]}, "twice"),
    ({"on": "features", "feature_stages": [5]}, "beyond"),
])
def test_invalid_options_are_rejected(options, message):
    with pytest.raises(ConfigError, match=message):
        build_method("cwd", **options)

