import copy

import pytest
import torch
from torch import nn

from transkd.config import load_config
from transkd.engine import run as run_module
from transkd.engine.optim import GroupRule, check_resumable, parameter_groups
from transkd.engine.schedule import LRSchedule, ScheduleSpec
from transkd.errors import ConfigError
from transkd.models import create_model

SEGFORMER = GroupRule(head_lr_mult=10.0, no_decay=("norm", "pos_embed"))


def tiny_segformer():
    torch.manual_seed(0)
    return create_model("segformer_b0", num_classes=3)


def expected_membership(model):
    """Written from the recipe, independently of the code: norm layers by type, head by name."""
    norm_ids = {id(p) for m in model.modules()
                if isinstance(m, (nn.LayerNorm, nn.BatchNorm2d)) for p in m.parameters(recurse=False)}
    expected = {}
    for name, p in model.named_parameters():
        side = "head" if name.startswith("decode_head.") else "backbone"
        expected[name] = f"{side}_no_decay" if id(p) in norm_ids else side
    return expected


def membership(groups, model):
    group_of = {id(p): g["name"] for g in groups for p in g["params"]}
    return {name: group_of[id(p)] for name, p in model.named_parameters()}


def test_segformer_recipe_splits_a_mit_b0_segmentor_into_four_groups():
    model = tiny_segformer()
    groups = parameter_groups(model, lr=6e-5, weight_decay=0.01, rule=SEGFORMER, student_prefix="")
    assert [g["name"] for g in groups] == ["backbone", "backbone_no_decay", "head", "head_no_decay"]
    assert membership(groups, model) == expected_membership(model)
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    by_name = {g["name"]: g for g in groups}
    assert by_name["backbone"]["lr"] == pytest.approx(6e-5)
    assert by_name["head"]["lr"] == by_name["head_no_decay"]["lr"] == pytest.approx(6e-4)
    assert by_name["backbone_no_decay"]["weight_decay"] == by_name["head_no_decay"]["weight_decay"] == 0
    assert by_name["backbone"]["weight_decay"] == by_name["head"]["weight_decay"] == 0.01
    assert "encoder.stages.0.blocks.0.norm1.weight" in {
        n for n, g in membership(groups, model).items() if g == "backbone_no_decay"}


def test_defaults_keep_one_group_in_parameter_order():
    model = tiny_segformer()
    groups = parameter_groups(model, lr=1e-3, weight_decay=0.01, rule=GroupRule(), student_prefix="")
    assert len(groups) == 1 and groups[0]["name"] == "backbone"
    assert [id(p) for p in groups[0]["params"]] == [id(p) for p in model.parameters()]


def test_an_adamw_step_decays_each_group_by_its_own_rate():
    """With zero gradients AdamW's update is the decoupled decay alone: p ← p (1 − lr·wd)."""
    model = tiny_segformer()
    lr, wd = 1e-2, 0.1
    groups = parameter_groups(model, lr=lr, weight_decay=wd, rule=SEGFORMER, student_prefix="")
    optimizer = torch.optim.AdamW(groups, lr=lr, weight_decay=wd)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()
    for name, p in model.named_parameters():
        group = expected_membership(model)[name]
        rate = lr * (10 if group.startswith("head") else 1)
        factor = 1.0 if group.endswith("no_decay") else 1.0 - rate * wd
        torch.testing.assert_close(p.detach(), before[name] * factor, msg=name)


def test_the_schedule_scales_every_group_from_its_own_base_rate():
    model = tiny_segformer()
    optimizer = torch.optim.AdamW(parameter_groups(model, 6e-5, 0.01, SEGFORMER, student_prefix=""))
    spec = ScheduleSpec(kind="standard", total_steps=100, steps_per_epoch=10, warmup_iters=10)
    schedule = LRSchedule(optimizer, spec)
    for step in (0, 5, 10, 50, 99):
        schedule.apply(step)
        warm = 1 - (1 - step / 10) * (1 - 1e-6) if step < 10 else 1.0
        base = 6e-5 * (1 - step / 100) * warm
        for group in optimizer.param_groups:
            mult = 10 if group["name"].startswith("head") else 1
            assert group["lr"] == pytest.approx(base * mult, rel=1e-9)
        assert schedule.current_lr() == pytest.approx(base, rel=1e-9)


def _steps(model, optimizer, schedule, inputs, start, count):
    for step in range(start, start + count):
        schedule.apply(step)
        optimizer.zero_grad()
        model(inputs[step % len(inputs)]).square().mean().backward()
        optimizer.step()


def test_groups_survive_an_optimizer_state_dict_round_trip():
    torch.manual_seed(1)
    inputs = [torch.randn(1, 3, 32, 32) for _ in range(3)]
    spec = ScheduleSpec(kind="standard", total_steps=6, steps_per_epoch=6, warmup_iters=2)

    def fresh(model):
        optimizer = torch.optim.AdamW(parameter_groups(model, 1e-3, 0.01, SEGFORMER, student_prefix=""))
        return optimizer, LRSchedule(optimizer, spec)

    straight = tiny_segformer().eval()
    optimizer, schedule = fresh(straight)
    _steps(straight, optimizer, schedule, inputs, 0, 6)

    first = tiny_segformer().eval()
    optimizer, schedule = fresh(first)
    _steps(first, optimizer, schedule, inputs, 0, 3)
    saved = copy.deepcopy((first.state_dict(), optimizer.state_dict(), schedule.state_dict()))
    resumed = tiny_segformer().eval()
    resumed.load_state_dict(saved[0])
    optimizer, schedule = fresh(resumed)
    check_resumable(saved[1]["param_groups"], optimizer.param_groups, "last.pt")
    optimizer.load_state_dict(saved[1])
    schedule.load_state_dict(saved[2])
    assert [g["initial_lr"] for g in optimizer.param_groups] == pytest.approx([1e-3, 1e-3, 1e-2, 1e-2])
    _steps(resumed, optimizer, schedule, inputs, 3, 3)
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_resuming_with_other_groups_is_refused_naming_the_keys():
    model = tiny_segformer()
    one = torch.optim.AdamW(parameter_groups(model, 1e-3, 0.01, GroupRule(), student_prefix=""))
    four = parameter_groups(model, 1e-3, 0.01, SEGFORMER, student_prefix="")
    with pytest.raises(ConfigError, match="optim.head_lr_mult and optim.no_decay"):
        check_resumable(one.state_dict()["param_groups"], four, "run/checkpoints/last.pt")


def test_bad_group_settings_name_the_key():
    model = tiny_segformer()
    with pytest.raises(ConfigError, match="'optim.no_decay' entry 'nosuch.*'"):
        parameter_groups(model, 1e-3, 0.01, GroupRule(no_decay=("nosuch.*",)), student_prefix="")
    with pytest.raises(ConfigError, match="'optim.head_lr_mult' is 10, but the network has no"):
        parameter_groups(nn.Linear(2, 2), 1e-3, 0.01, GroupRule(head_lr_mult=10.0), student_prefix="")
    pattern = GroupRule(no_decay=("encoder.stages.0.*",))
    groups = parameter_groups(model, 1e-3, 0.01, pattern, student_prefix="")
    exempt = {n for n, g in membership(groups, model).items() if g == "backbone_no_decay"}
    assert exempt == {n for n, _ in model.named_parameters() if n.startswith("encoder.stages.0.")}
    for override, message in (("optim.head_lr_mult=0", "config key 'optim.head_lr_mult' must be in"),
                              ("optim.no_decay=['']", "config key 'optim.no_decay' must list")):
        with pytest.raises(ConfigError, match=message):
            load_config(None, [override])


def test_a_training_run_keeps_the_head_at_ten_times_the_rate_in_its_checkpoint(tmp_path):
    """Through the trainer: the head gets 10x, norms and biases no decay, and the
    checkpoint keeps the groups."""
    config = load_config(None, [
        "data.options={length: 4, size: [32, 64]}", "data.val_options={length: 2}",
        "protocol.image_size=[32, 64]", "train.batch_size=2", "train.epochs=1",
        "train.num_workers=0", "train.tensorboard=false",
        "optim.head_lr_mult=10", "optim.no_decay=[norm, pos_embed, bias]",
        f"output.dir={tmp_path / 'run'}"])
    result = run_module.run(config)
    assert result.status == "completed"
    checkpoint = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)
    groups = checkpoint["optimizer"]["param_groups"]
    assert [g["name"] for g in groups] == ["backbone", "backbone_no_decay", "head", "head_no_decay"]
    rates = {g["name"]: g["initial_lr"] for g in groups}
    assert rates["head"] == pytest.approx(10 * rates["backbone"]) and rates["backbone"] == pytest.approx(6e-5)
    decay = {g["name"]: g["weight_decay"] for g in groups}
    assert decay == {"backbone": 0.01, "backbone_no_decay": 0.0, "head": 0.01, "head_no_decay": 0.0}


def test_only_the_students_head_is_the_head_and_adapters_learn_at_the_base_rate():
    """Inside a Distiller the student sits under ``student.``; an adapter named ``head`` is not it."""
    trained = nn.ModuleDict({"student": tiny_segformer(),
                             "methods": nn.ModuleDict({"m": nn.ModuleDict({"head": nn.Linear(4, 4)})})})
    groups = parameter_groups(trained, 1e-3, 0.01, SEGFORMER)
    group_of = {id(p): g["name"] for g in groups for p in g["params"]}
    for name, p in trained.named_parameters():
        head = name.startswith("student.decode_head.")
        assert group_of[id(p)].startswith("head") == head, name
