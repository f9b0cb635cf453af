import json
import math

import pytest
import torch

from transkd.config import load_config
from transkd.engine import run as run_module
from transkd.engine.logging import read_metrics
from transkd.engine.run import execute, plan_run
from transkd.engine.trainer import NonFiniteLossError, Trainer
from transkd.errors import ConfigError
from transkd.weights.io import load_model, model_file, read_safetensors, save_model

TINY = [
    "data.options={length: 8, size: [32, 64]}",
    "data.val_options={length: 4}",
    "protocol.image_size=[32, 64]",
    "train.batch_size=2",
    "train.epochs=2",
    "train.num_workers=0",
    "train.tensorboard=false",
    "train.log_interval=1",
    "eval.batch_size=4",
]


def tiny_config(tmp_path, *extra, name="run"):
    return load_config(None, [*TINY, f"output.dir={tmp_path / name}", *extra])


def state_of(path):
    return read_safetensors(path)[0]


def test_plain_training_writes_the_run_folder(tmp_path):
    result = run_module.run(tiny_config(tmp_path))
    run_dir = tmp_path / "run"
    assert result.status == "completed" and result.steps == 8  # 2 epochs x 4 batches
    for name in ("config.yaml", "metrics.jsonl", "summary.json", "checkpoints/last.pt",
                 "best/model.safetensors", "last/model.safetensors"):
        assert (run_dir / name).is_file(), name
    records = read_metrics(run_dir / "metrics.jsonl")
    train = [r for r in records if r["kind"] == "train"]
    val = [r for r in records if r["kind"] == "val"]
    assert [r["step"] for r in train] == list(range(1, 9))
    assert {"ce", "loss", "lr", "step_time", "data_time"} <= set(train[0])
    assert [r["step"] for r in val] == [4, 8]  # every epoch
    assert len(val[0]["iou"]) == 10 and 0 <= val[0]["miou"] <= 1 and "confusion" in val[0]
    # the paper schedule is constant within an epoch and decays per epoch
    assert train[0]["lr"] == train[3]["lr"] == pytest.approx(6e-5)
    assert train[4]["lr"] == pytest.approx(3e-5)
    student = load_model(model_file(run_dir, last=True))
    _, meta = read_safetensors(model_file(run_dir, last=True))
    assert student.num_classes == 10 and meta["dataset"] == "synthetic"
    assert meta["protocol"] == "paper" and len(meta["class_names"]) == 10
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["best"]["miou"] == result.best["miou"]


@pytest.mark.slow  # two runs, one interrupted and resumed
def test_interrupted_run_resumes_bit_identically(tmp_path, monkeypatch):
    extra = ["train.epochs=2", "train.checkpoint_interval=100", "model.options={drop_path_rate: 0.2}"]
    reference = run_module.run(tiny_config(tmp_path, *extra, name="straight"))
    assert reference.status == "completed"

    calls = {"n": 0}
    original = Trainer._train_step

    def interrupting(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 6:  # mid-epoch 1, after 5 completed steps
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Trainer, "_train_step", interrupting)
    config = tiny_config(tmp_path, *extra, name="resumed")
    first = run_module.run(config)
    assert first.status == "interrupted" and first.steps == 5
    monkeypatch.setattr(Trainer, "_train_step", original)
    resumed = run_module.run(config, resume="auto")
    assert resumed.status == "completed" and resumed.steps == 8

    a = state_of(model_file(tmp_path / "straight", last=True))
    b = state_of(model_file(tmp_path / "resumed", last=True))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    def losses(name):
        return [r["loss"] for r in read_metrics(tmp_path / name / "metrics.jsonl") if r["kind"] == "train"]

    assert losses("resumed") == losses("straight")


def test_workers_do_not_change_the_result(tmp_path):
    run_module.run(tiny_config(tmp_path, "train.epochs=1", name="w0"))
    run_module.run(tiny_config(tmp_path, "train.epochs=1", "train.num_workers=2", name="w2"))
    a = state_of(model_file(tmp_path / "w0", last=True))
    b = state_of(model_file(tmp_path / "w2", last=True))
    assert all(torch.equal(a[k], b[k]) for k in a)


#: Batch-independent settings: no dropout, BatchNorm on running statistics, no shift padding
#: (which adds ignored pixels), and synthetic data without void pixels (seed 5), so a
#: cross-entropy averaged over micro-batches equals the one averaged over the whole batch.
#: AdamW's eps is raised from 1e-8 to 1e-6: its first step lr·g/(|g|+eps) would otherwise turn
#: round-off-level gradients (summation order) into steps of ±lr.
BATCH_INDEPENDENT = ["data.options={length: 8, size: [32, 64], seed: 5}", "protocol.max_shift=0",
                     "model.options={drop_path_rate: 0.0, dropout: 0.0}", "train.freeze_bn=true",
                     "optim.eps=1e-6"]


def test_grad_accumulation_matches_a_larger_batch(tmp_path):
    common = ["train.epochs=null", "train.iterations=1", "schedule.kind=constant", *BATCH_INDEPENDENT]
    run_module.run(tiny_config(tmp_path, *common, "train.batch_size=4", name="big"))
    run_module.run(tiny_config(tmp_path, *common, "train.batch_size=2", "train.grad_accum=2",
                               name="accum"))
    a = state_of(model_file(tmp_path / "big", last=True))
    b = state_of(model_file(tmp_path / "accum", last=True))
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_iteration_training_with_standard_schedule(tmp_path):
    config = tiny_config(tmp_path, "train.epochs=null", "train.iterations=6", "schedule.kind=standard",
                         "schedule.warmup_iters=2", "train.val_interval=3", "train.deterministic=true")
    result = run_module.run(config)
    assert not torch.are_deterministic_algorithms_enabled()  # restored after the run
    records = read_metrics(tmp_path / "run" / "metrics.jsonl")
    lrs = [r["lr"] for r in records if r["kind"] == "train"]
    assert lrs[0] == pytest.approx(6e-5 * 1e-6)
    assert lrs[2] == pytest.approx(6e-5 * 4 / 6)
    assert [r["step"] for r in records if r["kind"] == "val"] == [3, 6]
    assert result.steps == 6


def _save_teacher(tmp_path, num_classes=10):
    torch.manual_seed(0)
    from transkd.models import create_model

    teacher = create_model("segformer_b0", num_classes=num_classes)
    return save_model(teacher, tmp_path / "teacher.safetensors")


def test_distillation_logs_the_teacher_once_and_every_loss_term(tmp_path):
    teacher = _save_teacher(tmp_path)
    config = tiny_config(tmp_path, "distill.method=transkd_base", f"teacher.weights={teacher}",
                         "train.epochs=1")
    result = run_module.run(config)
    records = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert [r["kind"] for r in records].count("teacher_val") == 1
    assert result.teacher_val is not None and 0 <= result.teacher_val["miou"] <= 1
    train = [r for r in records if r["kind"] == "train"]
    assert {"ce", "hcl", "embed_1", "embed_4", "loss"} <= set(train[0])
    assert (tmp_path / "run" / "last" / "adapters.safetensors").is_file()
    # the deployable student is the plain network
    assert load_model(model_file(tmp_path / "run")).model_name == "segformer_b0"


def test_teacher_with_another_class_count_is_refused_before_any_output(tmp_path):
    teacher = _save_teacher(tmp_path, num_classes=19)
    config = tiny_config(tmp_path, "distill.method=transkd_base", f"teacher.weights={teacher}")
    with pytest.raises(Exception, match="predicts 19 classes but dataset 'synthetic' needs 10"):
        plan_run(config)
    assert not (tmp_path / "run").exists()


def test_batch_larger_than_the_dataset_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="train.batch_size 16 is larger than the 8 samples"):
        plan_run(tiny_config(tmp_path, "train.batch_size=16"))


def test_non_finite_loss_stops_with_the_step_and_term(tmp_path, monkeypatch):
    from transkd.distill import base

    original = base.cross_entropy_loss
    calls = {"n": 0}

    def poisoned(*args, **kwargs):
        calls["n"] += torch.is_grad_enabled()  # training steps; not the MAC count before training
        value = original(*args, **kwargs)
        return value * float("nan") if calls["n"] == 3 and torch.is_grad_enabled() else value

    monkeypatch.setattr("transkd.engine.build.cross_entropy_loss", poisoned)
    message = r"loss term 'ce' is nan at step 3 \(epoch 0, batch 3 of 4\)"
    with pytest.raises(NonFiniteLossError, match=message):
        run_module.run(tiny_config(tmp_path, name="stop"))

    calls["n"] = 0
    result = run_module.run(tiny_config(tmp_path, "train.nonfinite=skip", name="skip"))
    assert result.status == "completed" and result.skipped_steps == 1
    state = state_of(model_file(tmp_path / "skip", last=True))
    assert all(bool(torch.isfinite(v).all()) for v in state.values())
    events = [r for r in read_metrics(tmp_path / "skip" / "metrics.jsonl") if r["kind"] == "event"]
    assert events[0]["event"] == "skipped_non_finite"


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_runs_and_keeps_fp32_losses(tmp_path, precision, device):
    result = run_module.run(tiny_config(tmp_path, f"train.precision={precision}", "train.epochs=1",
                                        f"train.device={device.type}", "train.channels_last=true"))
    records = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert result.status == "completed"
    assert all(math.isfinite(r["loss"]) for r in records if r["kind"] == "train")
    peak = json.loads((tmp_path / "run" / "summary.json").read_text())["compute"]["peak_gpu_memory_mb"]
    assert (peak > 0) if device.type == "cuda" else peak is None


def test_distillation_runs_on_the_device(tmp_path, device):
    """A TransKD run trains, validates and saves on the device (pinned, non-blocking copies,
    channels-last) and gives the first-step loss of the CPU in fp32, up to the TF32 rounding of
    cuDNN's convolutions (on by default)."""
    teacher = _save_teacher(tmp_path)
    losses = []
    for index, where in enumerate(("cpu", device.type)):
        run_module.run(tiny_config(tmp_path, "distill.method=transkd_base", f"teacher.weights={teacher}",
                                   "train.epochs=1", f"train.device={where}",
                                   f"train.channels_last={'true' if where != 'cpu' else 'false'}",
                                   name=f"run-{index}"))
        records = read_metrics(tmp_path / f"run-{index}" / "metrics.jsonl")
        losses.append(next(r["loss"] for r in records if r["kind"] == "train"))
    assert losses[1] == pytest.approx(losses[0], rel=1e-2)


def test_resume_refuses_another_method(tmp_path):
    run_module.run(tiny_config(tmp_path, "train.epochs=1"))
    teacher = _save_teacher(tmp_path)
    config = tiny_config(tmp_path, "distill.method=transkd_base", f"teacher.weights={teacher}",
                         "train.epochs=1")
    plan = plan_run(config, resume="auto")
    with pytest.raises(Exception, match="trained with method 'none'"):
        execute(plan)


def test_read_metrics_keeps_the_resumed_record_of_a_repeated_step(tmp_path):
    """A run resumed from step 2 logs steps 3-4 again; the later records are the ones it continued."""
    lines = [{"kind": "train", "step": s, "loss": 1.0} for s in (2, 3, 4)]
    lines += [{"kind": "val", "step": 4, "miou": 0.1},
              {"kind": "event", "step": 2, "event": "resumed"}, {"kind": "event", "step": 2, "event": "note"}]
    lines += [{"kind": "train", "step": s, "loss": 0.5} for s in (3, 4)]
    lines += [{"kind": "val", "step": 4, "miou": 0.2}]
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in lines), encoding="utf-8")
    records = read_metrics(path)
    assert [(r["kind"], r["step"], r.get("loss", r.get("miou", r.get("event")))) for r in records] == [
        ("train", 2, 1.0), ("event", 2, "resumed"), ("event", 2, "note"),
        ("train", 3, 0.5), ("train", 4, 0.5), ("val", 4, 0.2)]


def test_a_run_shorter_than_its_warm_up_is_refused_with_the_fix(tmp_path):
    config = tiny_config(tmp_path, "train.iterations=6", "schedule.kind=standard")
    refusal = (r"^config key 'schedule.warmup_iters' \(1500\) is not shorter than the run "
               r"\(6 optimiser steps\).*--set schedule.warmup_iters=0")
    with pytest.raises(ConfigError, match=refusal):
        plan_run(config)
    plan_run(tiny_config(tmp_path, "train.iterations=6", "schedule.kind=standard", "schedule.warmup_iters=5"))
    plan_run(tiny_config(tmp_path, "train.iterations=6", "schedule.kind=constant"))
    assert not (tmp_path / "run").exists()


def test_an_epoch_run_shorter_than_its_warm_up_is_refused_before_training(tmp_path):
    config = tiny_config(tmp_path, "schedule.kind=standard", "schedule.warmup_iters=8")
    with pytest.raises(ConfigError, match=r"'schedule.warmup_iters' \(8\) is not shorter than the run "
                                          r"\(8 optimiser steps\).*--set schedule.warmup_iters=0"):
        run_module.run(config)
    assert not (tmp_path / "run").exists()


def test_the_training_plan_names_interval_units(tmp_path):
    lines = []
    execute(plan_run(tiny_config(tmp_path, "train.val_interval=2")), announce=lines.append)
    assert lines[0] == ("plan: 2 epochs of 4 steps (8 steps); lr paper; validation every 2 epochs, "
                        "checkpoint every epoch, log every step")
    by_steps = run_module.training_plan(
        load_config(None, ["train.iterations=600", "schedule.kind=standard", "schedule.warmup_iters=60",
                           "train.val_interval=500"]), 600, 4)
    assert by_steps == ("plan: 600 iterations; lr standard with 60 warm-up iterations; validation every "
                        "500 iterations, checkpoint every iteration, log every 10 steps")


def test_drop_last_false_trains_on_the_incomplete_batch(tmp_path):
    common = ["data.options={length: 5, size: [32, 64]}", "train.epochs=1", "train.val_interval=1"]
    dropped = run_module.run(tiny_config(tmp_path, *common, name="dropped"))
    kept = run_module.run(tiny_config(tmp_path, *common, "train.drop_last=false", name="kept"))
    assert dropped.steps == 2 and kept.steps == 3  # 5 images in batches of 2: the last holds one


def test_drop_last_false_needs_single_step_accumulation(tmp_path):
    with pytest.raises(ConfigError, match="train.drop_last"):
        tiny_config(tmp_path, "train.drop_last=false", "train.grad_accum=2")


def test_void_prediction_false_negative_run_keeps_a_void_column(tmp_path):
    import numpy as np

    from transkd.report.runs import load_run

    config = tiny_config(tmp_path, "train.epochs=1", "protocol.void_as_extra_class=true",
                         "protocol.void_prediction_false_negative=true")
    result = run_module.run(config)
    assert result.status == "completed"
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    with np.load(tmp_path / "run" / summary["per_image_confusion"]) as archive:
        per_image = archive["confusion"]
    k = per_image.shape[1]
    assert per_image.shape[2] == k + 1
    assert load_run(tmp_path / "run", "run").per_image_confusion().shape == (per_image.shape[0], k * (k + 1))


@pytest.mark.parametrize("protocol", [[], ["protocol.name=standard", "protocol.crop_size=[32, 32]",
                                           "protocol.scale=[64, 32]"]])
def test_normalising_on_the_device_trains_the_same_weights(tmp_path, protocol):
    """train.normalize_on_device only moves where the same arithmetic happens: the run's weights
    are bit-identical to a run that normalises in the loader."""
    states = []
    for on in ("false", "true"):
        run_module.run(tiny_config(tmp_path, *protocol, "train.epochs=1",
                                   f"train.normalize_on_device={on}", name=f"run-{on}"))
        states.append(state_of(model_file(tmp_path / f"run-{on}", last=True)))
    assert states[0].keys() == states[1].keys()
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
