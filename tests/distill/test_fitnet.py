import pytest
import torch
import torch.nn.functional as F
from baseline_helpers import (
    assert_scalar_terms,
    backward_and_collect,
    build_method,
    fake_context,
)
from make_fixtures import build_case

from transkd.distill import fitnet, kd  # noqa: F401  (registers "fitnet" and "kd")
from transkd.distill.kd import pixelwise_kl
from transkd.errors import ConfigError


def test_default_hint_is_the_last_stage_with_weight_10():
    method = build_method("fitnet")
    assert method.options.loss_weight == 10.0 and method.stages == (4,)
    regressor = method.regressors["stage4"]
    assert (regressor.in_channels, regressor.out_channels, regressor.kernel_size) == (32, 64, (1, 1))
    assert regressor.bias is None
    assert list(method.regressors) == ["stage4"]


def test_zero_regressor_gives_weighted_mean_square_of_the_hint():
    method = build_method("fitnet", stages=[2, 4], loss_weight=3.0)
    for regressor in method.regressors.values():
        torch.nn.init.zeros_(regressor.weight)
    ctx = fake_context()
    hints = ctx.teacher.features
    expected = 3.0 * (hints[1].pow(2).mean() + hints[3].pow(2).mean()) / 2
    assert method.loss_terms(ctx)["fitnet"].item() == pytest.approx(expected.item(), rel=1e-6)


def test_term_matches_mse_and_gradients_reach_regressors_and_guided_stages():
    method = build_method("fitnet", stages=[3])
    ctx = fake_context()
    terms = backward_and_collect(method, ctx)
    assert_scalar_terms(terms, {"fitnet"})
    with torch.no_grad():
        guided = method.regressors["stage3"](ctx.student.features[2])
    assert terms["fitnet"].item() == pytest.approx(10.0 * F.mse_loss(guided, ctx.teacher.features[2]).item(),
                                                   rel=1e-6)
    assert method.regressors["stage3"].weight.grad.abs().sum() > 0
    assert ctx.student.features[2].grad.abs().sum() > 0
    assert all(ctx.student.features[i].grad is None for i in (0, 1, 3))


@pytest.mark.parametrize("options, message", [
    ({"stages": []}, "at least one stage"),
    ({"stages": [0]}, "counts stages from 1"),
    ({"stages": [4, 4]}, "twice"),
    ({"stages": [5]}, "beyond"),
    ({"stages": 4}, "must be a list of integers, got 4"),
    ({"loss_weight": -1}, "loss_weight"),
])
def test_invalid_options_are_rejected(options, message):
    with pytest.raises(ConfigError, match=message):
        build_method("fitnet", **options)


def test_combines_with_kd_each_with_its_options():
    distiller, images, targets = build_case("fitnet+kd", fitnet={"stages": [2, 4]}, kd={"loss_weight": 0.5})
    assert list(distiller.methods) == ["fitnet", "kd"]
    assert sorted(distiller.methods["fitnet"].regressors) == ["stage2", "stage4"]
    out = distiller(images, targets)
    assert {"ce", "fitnet", "kd", "loss", "logits"} == set(out)
    with torch.no_grad():
        student = distiller.student(images, return_features=True)
        teacher = distiller.teacher(images, return_features=True)
    expected_kd = 0.5 * pixelwise_kl(student.logits, teacher.logits)
    assert out["kd"].item() == pytest.approx(expected_kd.item(), rel=1e-5)
    total = out["ce"] + out["fitnet"] + out["kd"]
    assert out["loss"].item() == pytest.approx(total.item(), rel=1e-6)

