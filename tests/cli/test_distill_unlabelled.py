"""``transkd distill`` on images without any label: a folder and a teacher make a student that
loads and predicts; validation is named agreement with the teacher; bad input is one sentence."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

import transkd
from transkd.cli import main
from transkd.deploy.predict import predict_images
from transkd.engine.logging import read_metrics
from transkd.models import create_model
from transkd.weights.io import read_safetensors, save_model

NAMES = [f"thing{i}" for i in range(6)]
TINY = ["--set", "protocol.image_size=[32, 64]", "--set", "train.batch_size=2",
        "--set", "train.epochs=1", "--set", "train.num_workers=0",
        "--set", "train.tensorboard=false", "--set", "eval.batch_size=2", "--no-progress"]


def photos(folder, count=5):
    rng = np.random.default_rng(3)
    (folder / "day").mkdir(parents=True)
    for i in range(count):
        size = (32 + 8 * i, 48 + 4 * i, 3)
        Image.fromarray(rng.integers(0, 256, size, dtype=np.uint8)).save(
            folder / ("day" if i % 2 else "") / f"p{i}.{'jpg' if i % 2 else 'png'}")
    return folder


@pytest.fixture
def teacher(tmp_path):
    torch.manual_seed(2)
    return save_model(create_model("segformer_b0", num_classes=6), tmp_path / "teacher.safetensors",
                      class_names=NAMES, palette=[[40 * i, 10, 200] for i in range(6)])


def distill(capsys, *args):
    code = main(["distill", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_a_folder_and_a_teacher_make_a_student_that_loads_and_predicts(tmp_path, capsys, teacher):
    folder = photos(tmp_path / "photos")
    run_dir = tmp_path / "run"
    code, out, err = distill(capsys, "--teacher", str(teacher), "--method", "transkd_base",
                             "--unlabelled", str(folder), "--set", "data.name=none", *TINY,
                             "--output", str(run_dir))
    assert code == 0, err
    assert "data: no labelled training images, 5 unlabelled images" in out
    assert "epoch 0: trained on 0 labelled and 4 unlabelled images" in out
    assert "best agreement with teacher" in out and "(mIoU of student vs teacher predictions)" in out
    assert "val mIoU" not in out
    records = read_metrics(run_dir / "metrics.jsonl")
    assert [r["kind"] for r in records if r["kind"] in ("val", "agreement")] == ["agreement"]
    assert not any(r["kind"] == "teacher_val" for r in records)  # the teacher agrees with itself
    assert json.loads((run_dir / "summary.json").read_text())["validation"] == "agreement with teacher"

    student = transkd.load_model(run_dir)
    assert student.num_classes == 6
    _, meta = read_safetensors(run_dir / "best" / "student.safetensors")
    assert meta["class_names"] == NAMES and meta["palette"][1] == [40, 10, 200]
    assert "agreement_miou" in meta and "val_miou" not in meta
    result = predict_images(run_dir, [folder], tmp_path / "masks", recursive=True)
    assert len(result.written) == 5 and not result.skipped


def test_agreement_is_exactly_the_confusion_of_student_and_teacher(tmp_path):
    """The agreement numbers are an ordinary confusion matrix with the teacher's arg-max as truth."""
    from transkd.engine.evaluate import ConfusionMatrix, evaluate

    torch.manual_seed(0)
    student = create_model("segformer_b0", num_classes=4)
    teacher = create_model("segformer_b0", num_classes=4)
    images = torch.randn(2, 3, 32, 32)
    loader = [{"image": images, "label": torch.full((2, 8, 8), 255)}]
    result = evaluate(student, loader, 4, reference=teacher)
    with torch.no_grad():
        size = (8, 8)
        pred_s = torch.nn.functional.interpolate(student.eval()(images), size, mode="bilinear").argmax(1)
        pred_t = torch.nn.functional.interpolate(teacher.eval()(images), size, mode="bilinear").argmax(1)
    expected = ConfusionMatrix(4)
    expected.update(pred_s, pred_t)
    assert torch.equal(result["confusion"], expected.mat)
    assert result["acc"] == pytest.approx(float((pred_s == pred_t).float().mean()))


@pytest.mark.parametrize("case", ["empty_folder", "unreadable_only", "ratio", "fraction",
                                  "no_teacher_method", "label_method", "threshold"])
def test_bad_unlabelled_input_is_one_sentence_and_leaves_nothing(tmp_path, capsys, teacher, case):
    folder = tmp_path / "photos"
    folder.mkdir()
    args = ["--teacher", str(teacher), "--method", "transkd_base", "--unlabelled", str(folder),
            *TINY, "--output", str(tmp_path / "run"),
            "--set", "data.options={length: 8, size: [32, 64]}", "--set", "data.val_options={length: 2}",
            "--set", "teacher.class_map=[0, 1, 2, 3, 4, 5, 0, 1, 2, 3]"]
    if case not in ("empty_folder", "unreadable_only"):
        photos(folder / "ok")
    expected = {
        "empty_folder": f"unlabelled image folder {folder} holds no image file",
        "unreadable_only": f"unlabelled image folder {folder} holds no readable image file",
        "ratio": "config key 'data.unlabelled_ratio' must be in (0, 64], got 100",
        "fraction": "config key 'data.labelled_fraction' must be in [0, 1], got -0.5",
        "no_teacher_method": "config key 'data.unlabelled' needs a distillation method with a teacher",
        "label_method": "config key 'distill.method' includes 'ifvd', whose term(s) ifvd need labels",
        "threshold": "config key 'distill.pseudo_label_threshold' must be in (0, 1] or null, got 1.5",
    }[case]
    if case == "unreadable_only":
        (folder / "a.png").write_bytes(b"not a png")
        (folder / "b.jpg").write_bytes(b"")
    elif case == "ratio":
        args += ["--set", "data.unlabelled_ratio=100"]
    elif case == "fraction":
        args += ["--set", "data.labelled_fraction=-0.5"]
    elif case == "no_teacher_method":
        args += ["--set", "data.name=none", "--method", "none"]
    elif case == "label_method":
        args += ["--set", "data.name=none", "--method", "ifvd"]
    elif case == "threshold":
        args += ["--set", "distill.pseudo_label_threshold=1.5"]
    if "data.name=none" in args:  # no labelled dataset: its options must go
        i = args.index("data.options={length: 8, size: [32, 64]}")
        del args[i - 1:i + 3]
    code, out, err = distill(capsys, *args)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1, err
    assert lines[0].startswith("error: ") and expected in lines[0], lines[0]
    assert out == ""
    assert not (tmp_path / "run").exists()
