import pytest
import torch

from transkd.engine.schedule import LRSchedule, ScheduleSpec, lr_factor


def test_paper_schedule_steps_once_per_epoch_and_reaches_zero_at_the_training_length():
    spec = ScheduleSpec(kind="paper", total_steps=40, steps_per_epoch=4)
    factors = [lr_factor(spec, step) for step in range(40)]
    assert factors[:4] == [1.0] * 4  # constant within epoch 0
    assert factors[4] == pytest.approx(0.9)  # (1 - 1/10)^1
    assert factors[39] == pytest.approx(0.1)
    assert lr_factor(spec, 40) == 0.0


def test_paper_faithful_horizon_1500_of_1000_epochs_never_reaches_zero():
    spec = ScheduleSpec(kind="paper", total_steps=1000, steps_per_epoch=1, horizon=1500)
    assert lr_factor(spec, 999) == pytest.approx(1 - 999 / 1500)
    assert lr_factor(spec, 1000) == pytest.approx(1 / 3)


def test_standard_schedule_warms_up_linearly_then_decays_polynomially():
    spec = ScheduleSpec(kind="standard", total_steps=100, steps_per_epoch=7, warmup_iters=10,
                        warmup_ratio=1e-6, power=1.0)
    assert lr_factor(spec, 0) == pytest.approx(1e-6)
    assert lr_factor(spec, 5) == pytest.approx((1 - 0.5 * (1 - 1e-6)) * 0.95)
    assert lr_factor(spec, 10) == pytest.approx(0.9)
    assert lr_factor(spec, 100) == 0.0
    ramp = [lr_factor(spec, s) for s in range(11)]
    assert ramp == sorted(ramp)


def test_min_lr_ratio_floors_the_decay():
    spec = ScheduleSpec(kind="standard", total_steps=10, steps_per_epoch=1, warmup_iters=0,
                        min_lr_ratio=0.1)
    assert lr_factor(spec, 10) == pytest.approx(0.1)


def test_schedule_state_is_the_step_and_restores_the_rate():
    params = [torch.nn.Parameter(torch.zeros(1))]
    opt = torch.optim.AdamW(params, lr=1e-3)
    spec = ScheduleSpec(kind="standard", total_steps=50, steps_per_epoch=5, warmup_iters=5)
    schedule = LRSchedule(opt, spec)
    schedule.apply(20)
    state = schedule.state_dict()
    opt2 = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
    restored = LRSchedule(opt2, spec)
    restored.load_state_dict(state)
    assert opt2.param_groups[0]["lr"] == pytest.approx(opt.param_groups[0]["lr"])
    assert opt.param_groups[0]["lr"] == pytest.approx(1e-3 * 0.6)


def test_unknown_kind_is_rejected():
    with pytest.raises(ValueError, match="unknown schedule kind"):
        lr_factor(ScheduleSpec(kind="cosine", total_steps=1, steps_per_epoch=1), 0)
