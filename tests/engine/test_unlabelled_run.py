"""Runs with unlabelled images: they train beside the labelled split, every epoch logs how many
of each it used, a resumed run continues bit-identically, and every method that needs no label
works on them."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import transkd
from transkd.config import load_config
from transkd.distill.registry import get_method
from transkd.engine import run as run_module
from transkd.engine.logging import read_metrics
from transkd.engine.trainer import Trainer
from transkd.models import create_model
from transkd.weights.io import model_file, read_safetensors, save_model

TINY = ["data.options={length: 8, size: [32, 64]}", "data.val_options={length: 2}",
        "protocol.image_size=[32, 64]", "train.batch_size=2", "train.num_workers=0",
        "train.tensorboard=false", "train.log_interval=1", "eval.batch_size=2"]
#: Methods that compute no term from labels, cheaply: every built-in one but IFVD.
LABEL_FREE = [m for m in transkd.list_methods() if m != "none" and not get_method(m).label_terms]


def image_folder(path, sizes=((32, 64), (40, 50), (64, 64), (30, 90), (24, 24))):
    """Small random pictures of mixed sizes and formats, some in a sub-folder."""
    rng = np.random.default_rng(0)
    for i, (h, w) in enumerate(sizes):
        where = path / ("more" if i % 2 else "")
        where.mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(where / f"photo{i}.{('png', 'jpg', 'bmp')[i % 3]}")
    return path


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    torch.manual_seed(1)
    path = tmp_path_factory.mktemp("teacher") / "teacher.safetensors"
    return save_model(create_model("segformer_b0", num_classes=10), path, class_names=[
        f"thing{i}" for i in range(10)], palette=[[i * 20, 0, 255 - i * 20] for i in range(10)])


def config(tmp_path, teacher, *extra, name="run"):
    return load_config(None, [*TINY, f"output.dir={tmp_path / name}", f"teacher.weights={teacher}",
                              "distill.method=transkd_base", *extra])


def test_unlabelled_images_train_beside_the_labelled_ones_and_each_epoch_is_counted(tmp_path, teacher):
    folder = image_folder(tmp_path / "photos")
    (folder / "broken.jpg").write_bytes(b"not a picture")
    lines: list[str] = []
    cfg = config(tmp_path, teacher, f"data.unlabelled={folder}", "data.unlabelled_ratio=1.5",
                 "train.epochs=2")
    result = run_module.execute(run_module.plan_run(cfg), announce=lines.append, progress=False)
    assert result.status == "completed" and result.steps == 8
    records = read_metrics(tmp_path / "run" / "metrics.jsonl")
    data = [r for r in records if r["kind"] == "data"]
    assert [(r["epoch"], r["labelled_images"], r["unlabelled_images"]) for r in data] == \
        [(0, 8, 12), (1, 8, 12)]  # 4 batches of 2 labelled + 3 unlabelled images
    plan = next(r for r in records if r.get("event") == "data")
    assert plan["labelled_images"] == 8 and plan["unlabelled_images"] == 5
    assert plan["unreadable_skipped"] == 1 and plan["unlabelled_per_batch"] == 3
    assert "data: 8 labelled training images (of 8 in the split), 5 unlabelled images, 1 " \
           "unreadable file(s) skipped" in lines[0]
    assert "epoch 1: trained on 8 labelled and 12 unlabelled images" in lines
    assert any("computed on labelled images only" in line and "ce" in line for line in lines)


def test_a_run_with_unlabelled_images_resumes_bit_identically(tmp_path, teacher, monkeypatch):
    """Labels kept for half the split, the other half and a folder read without labels, the
    run interrupted mid-epoch: the resumed run ends with the uninterrupted run's weights."""
    folder = image_folder(tmp_path / "photos")
    extra = [f"data.unlabelled=[rest, {folder}]", "data.labelled_fraction=0.5",
             "data.unlabelled_ratio=1", "train.epochs=3", "train.checkpoint_interval=100",
             "model.options={drop_path_rate: 0.2}"]
    # 4 labelled images: 2 steps an epoch, so the run crosses epochs of both streams
    straight = run_module.run(config(tmp_path, teacher, *extra, name="straight"))
    assert straight.steps == 6

    calls = {"n": 0}
    original = Trainer._train_step

    def interrupting(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4:  # mid-epoch 1
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Trainer, "_train_step", interrupting)
    first = run_module.run(config(tmp_path, teacher, *extra, name="resumed"))
    assert first.status == "interrupted" and first.steps == 3
    monkeypatch.setattr(Trainer, "_train_step", original)
    resumed = run_module.run(config(tmp_path, teacher, *extra, name="resumed"), resume="auto")
    assert resumed.status == "completed" and resumed.steps == 6

    for name in ("student.safetensors", "adapters.safetensors"):
        a = read_safetensors(tmp_path / "straight" / "last" / name)[0]
        b = read_safetensors(tmp_path / "resumed" / "last" / name)[0]
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name

    def logged(run, kind, key):
        return [r[key] for r in read_metrics(tmp_path / run / "metrics.jsonl") if r["kind"] == kind]

    assert logged("resumed", "train", "loss") == logged("straight", "train", "loss")
    assert logged("resumed", "data", "unlabelled_images") == logged("straight", "data",
                                                                    "unlabelled_images") == [4, 4, 4]


@pytest.mark.parametrize("method", LABEL_FREE)
def test_every_label_free_method_trains_on_unlabelled_images(tmp_path, teacher, method):
    folder = image_folder(tmp_path / "photos", sizes=((32, 64), (20, 20)))
    cfg = config(tmp_path, teacher, f"data.unlabelled={folder}", f"distill.method={method}",
                 "train.iterations=1", "schedule.kind=constant", "distill.eval_teacher=false",
                 "train.val_interval=100")
    result = run_module.run(cfg)
    assert result.status == "completed" and result.steps == 1
    train = [r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if r["kind"] == "train"]
    assert np.isfinite(train[0]["loss"]) and train[0]["loss"] > train[0]["ce"]


def test_a_method_with_label_terms_says_which_it_skips(tmp_path, teacher):
    folder = image_folder(tmp_path / "photos", sizes=((32, 64), (20, 20)))
    lines: list[str] = []
    cfg = config(tmp_path, teacher, f"data.unlabelled={folder}", "distill.method=transkd_base+ifvd",
                 "train.iterations=1", "schedule.kind=constant", "distill.eval_teacher=false")
    run_module.execute(run_module.plan_run(cfg), announce=lines.append, progress=False)
    assert [line for line in lines if "skipped on unlabelled" in line] == [
        "computed on labelled images only, skipped on unlabelled ones: the task loss ce; ifvd's ifvd"]
    plan = next(r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if r.get("event") == "data")
    assert plan["labelled_only_terms"] == {"task": ["ce"], "ifvd": ["ifvd"]}


def test_unlabelled_batches_normalised_on_the_device_train_the_same_weights(tmp_path, teacher):
    """Labelled and unlabelled images both stay uint8 in the loader workers and are normalised
    together after the copy: the weights equal those of a run that normalises in the workers."""
    folder = image_folder(tmp_path / "photos")
    states = []
    for on in ("false", "true"):
        cfg = config(tmp_path, teacher, f"data.unlabelled={folder}", "data.unlabelled_ratio=1",
                     "train.epochs=1", "train.num_workers=1", f"train.normalize_on_device={on}",
                     name=f"run-{on}")
        assert run_module.execute(run_module.plan_run(cfg), progress=False).status == "completed"
        states.append(read_safetensors(model_file(tmp_path / f"run-{on}", last=True))[0])
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
