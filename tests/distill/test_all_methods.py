"""Contract every registered distillation method must keep (methods are picked up from
``list_methods()``, so a newly registered method is tested without editing this file)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from make_fixtures import (
    CLASSES,
    DTYPE,
    PINNED_ABS,
    PINNED_REL,
    STEPS,
    STUDENT,
    build_case,
    fixture_path,
    make_optimizer,
    run_steps,
    teacher_model,
)

import transkd
from transkd import create_model, list_methods
from transkd.engine.checkpoint import export_weights
from transkd.weights import read_safetensors

METHODS = list_methods()


def snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


@pytest.mark.parametrize("method", METHODS)
def test_step_terms_finite_and_gradients_reach_student_and_adapters_only(method, device, request):
    distiller, images, targets = build_case(method)
    request.addfinalizer(distiller.cpu)  # the cached teacher is shared by every case of the process
    distiller.to(device)
    images, targets = images.to(device), targets.to(device)
    out = distiller(images, targets)
    assert {"ce", "loss", "logits"} <= set(out)
    terms = {k: v for k, v in out.items() if k not in ("loss", "logits")}
    for name, value in terms.items():
        assert value.dim() == 0 and value.dtype == torch.float32 and value.device == images.device, name
        assert math.isfinite(value.item()), f"{method}: term {name} is {value.item()}"
    assert out["loss"].item() == pytest.approx(sum(v.item() for v in terms.values()), rel=1e-6)
    assert out["logits"].shape == (images.shape[0], CLASSES, images.shape[2] // 4, images.shape[3] // 4)

    out["loss"].backward()
    for name, param in distiller.student.named_parameters():
        assert param.grad is not None, f"{method}: no gradient reaches student {name}"
        assert torch.isfinite(param.grad).all(), f"{method}: non-finite gradient in student {name}"
    for name, param in distiller.methods.named_parameters():
        assert param.grad is not None, f"{method}: no gradient reaches adapter {name}"
        assert torch.isfinite(param.grad).all(), f"{method}: non-finite gradient in adapter {name}"
    for name, param in teacher_model().named_parameters():
        assert param.grad is None, f"{method}: teacher {name} has a gradient"
        if distiller.teacher is not None:
            assert not param.requires_grad, f"{method}: teacher {name} requires a gradient"


@pytest.mark.parametrize("method", METHODS)
def test_teacher_frozen_and_losses_match_pinned_values(method):
    path = fixture_path(method)
    assert path.is_file(), (f"no pinned losses for {method!r}: run "
                            f"`python tests/distill/make_fixtures.py --method {method}`")
    distiller, images, targets = build_case(method, dtype=DTYPE)
    teacher = teacher_model(dtype=DTYPE)
    teacher_before, student_before = snapshot(teacher), snapshot(distiller.student)

    history = run_steps(distiller, images, targets)

    for key, value in snapshot(teacher).items():
        assert torch.equal(value, teacher_before[key]), f"{method}: teacher {key} changed"
    if distiller.teacher is not None:
        assert distiller.teacher is teacher and not teacher.training
    changed = [k for k, v in snapshot(distiller.student).items() if not torch.equal(v, student_before[k])]
    assert changed, f"{method}: the optimiser did not move the student"

    pinned = json.loads(path.read_text())["steps"]
    assert len(pinned) == len(history) == STEPS
    for step, (got, want) in enumerate(zip(history, pinned)):
        assert set(got) == set(want), f"{method} step {step}: terms {sorted(got)} != {sorted(want)}"
        # float64 case: the tolerance comes from float64 rounding, not from one CPU's kernels.
        for key in want:
            assert got[key] == pytest.approx(want[key], rel=PINNED_REL, abs=PINNED_ABS), \
                f"{method} step {step} {key}"


@pytest.mark.parametrize("method", METHODS)
def test_deployable_student_is_the_plain_model(method):
    distiller, _, _ = build_case(method)
    reference = create_model(STUDENT, num_classes=CLASSES)
    deployable = distiller.get_eval_model()
    assert deployable is distiller.student
    got = {k: tuple(v.shape) for k, v in deployable.state_dict().items()}
    assert got == {k: tuple(v.shape) for k, v in reference.state_dict().items()}
    student_ids = {id(p) for p in deployable.parameters()}
    adapter_ids = {id(p) for p in distiller.extra_parameters()}
    assert not student_ids & adapter_ids
    assert student_ids | adapter_ids == {id(p) for p in distiller.parameters()}
    if distiller.teacher is not None:
        assert not {id(p) for p in distiller.teacher.parameters()} & {id(p) for p in distiller.parameters()}


@pytest.mark.parametrize("method", METHODS)
def test_save_writes_student_and_adapters_separately(method, tmp_path):
    distiller, images, targets = build_case(method)
    optimizer = make_optimizer(distiller)
    distiller(images, targets)["loss"].backward()
    optimizer.step()
    adapters = distiller.methods if len(distiller.methods) else None
    student_path = export_weights(distiller.student, adapters, tmp_path, {"method": method})
    adapter_path = tmp_path / "adapters.safetensors"
    adapter_path = adapter_path if adapter_path.is_file() else None

    loaded = transkd.load_student(str(student_path))
    expected = distiller.student.state_dict()
    assert set(loaded.state_dict()) == set(expected)
    for key, value in loaded.state_dict().items():
        assert torch.equal(value, expected[key]), key

    adapters = distiller.methods.state_dict()
    if adapter_path is None:
        assert not adapters, f"{method}: adapters were not saved"
        return
    assert adapter_path != student_path
    state, meta = read_safetensors(adapter_path)
    assert set(state) == set(adapters)
    for key, value in state.items():
        assert torch.equal(value, adapters[key]), key
    assert meta["method"] == method
