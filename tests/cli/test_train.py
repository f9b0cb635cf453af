import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from transkd.cli import main
from transkd.models import create_model
from transkd.weights.io import model_file, save_model

TINY = ["--set", "data.options={length: 8, size: [32, 64]}", "--set", "data.val_options={length: 4}",
        "--set", "protocol.image_size=[32, 64]",
        "--set", "train.batch_size=2", "--set", "train.epochs=1", "--set", "train.num_workers=0",
        "--set", "train.tensorboard=false", "--set", "eval.batch_size=4"]


def cli(capsys, *args):
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ")
    return lines[0]


def test_train_then_eval_then_resume(tmp_path, capsys):
    run_dir = tmp_path / "student"
    code, out, err = cli(capsys, "train", *TINY, "--output", str(run_dir))
    assert code == 0, err
    assert f"run folder: {run_dir}" in out
    assert "best val mIoU" in out and "protocol paper, input 32x64 (HxW)" in out
    assert "metric at 0.25 of the input resolution" in out
    assert (run_dir / "config.yaml").is_file() and (model_file(run_dir)).is_file()
    resolved = (run_dir / "config.yaml").read_text()
    assert "lr: 6.0e-05" in resolved and "batch_size: 2" in resolved

    code, out, err = cli(capsys, "eval", str(run_dir))
    assert code == 0, err
    assert "synthetic val, protocol paper" in out and "4 images" in out
    assert "road" in out and "IoU %" in out and "pixel accuracy" in out

    # a bare weights file carries its dataset and pipeline in its metadata
    code, out, err = cli(capsys, "eval", str(model_file(run_dir, last=True)),
                         "--set", "data.val_options={length: 4}")
    assert code == 0, err
    assert "synthetic val, protocol paper, input 32x64 (HxW)" in out

    code, out, err = cli(capsys, "eval", str(run_dir), "--json")
    record = json.loads(out)
    assert set(record["iou"]) >= {"road", "car"} and 0 <= record["miou"] <= 1
    assert record["metric_resolution"] == "0.25 of the input resolution"

    # the run folder is taken: a new run must not overwrite it, --resume auto continues it
    code, out, err = cli(capsys, "train", *TINY, "--output", str(run_dir))
    assert code == 2 and "already holds a run" in one_line_error(err)
    code, out, err = cli(capsys, "train", *TINY, "--set", "train.epochs=2", "--output", str(run_dir),
                         "--resume", "auto")
    assert code == 0, err
    assert "resuming from" in out and "trained 8 steps" in out


def test_distill_prints_the_teacher_score(tmp_path, capsys):
    torch.manual_seed(0)
    teacher = save_model(create_model("segformer_b0", num_classes=10), tmp_path / "teacher.safetensors")
    code, out, err = cli(capsys, "distill", *TINY, "--teacher", str(teacher), "--method", "kd",
                         "--output", str(tmp_path / "kd"))
    assert code == 0, err
    assert "teacher val mIoU" in out
    code, out, err = cli(capsys, "distill", *TINY, "--output", str(tmp_path / "none"))
    assert code == 2 and "needs a distillation method" in one_line_error(err)
    assert not (tmp_path / "none").exists()


def _fake_camvid(root, splits=("train",)):
    for split in splits:
        (root / split).mkdir(parents=True)
        (root / f"{split}annot").mkdir()
        for i in range(2):
            Image.fromarray(np.zeros((32, 64, 3), np.uint8)).save(root / split / f"f{i}.png")
            Image.fromarray(np.zeros((32, 64), np.uint8)).save(root / f"{split}annot" / f"f{i}.png")
    return root


@pytest.mark.parametrize("case", [
    "missing_root", "missing_split", "batch_too_large", "teacher_classes", "unknown_key",
    "wrong_type", "negative_lr", "output_is_file", "output_under_file", "missing_config",
])
def test_bad_input_is_one_sentence_and_leaves_nothing(tmp_path, capsys, case):
    output = tmp_path / "out"
    args = ["train", *TINY, "--output", str(output)]
    expected = {
        "missing_root": "dataset 'camvid': root folder",
        "missing_split": "split 'val' not found",
        "batch_too_large": "train.batch_size 16 is larger than the 8 samples",
        "teacher_classes": "predicts 19 classes but dataset 'synthetic' needs 10",
        "unknown_key": "unknown config key 'optim.learning_rate'",
        "wrong_type": "config key 'train.epochs' must be an integer or null, got 'ten'",
        "negative_lr": "config key 'optim.lr' must be positive, got -0.001",
        "output_is_file": "is a file",
        "output_under_file": "cannot be created",
        "missing_config": "does not exist",
    }[case]
    camvid = ["--set", "data.name=camvid", "--set", "data.options={}", "--set", "data.val_options={}"]
    if case == "missing_root":
        args += [*camvid, "--data", str(tmp_path / "nope")]
    elif case == "missing_split":
        args += [*camvid, "--data", str(_fake_camvid(tmp_path / "camvid"))]
    elif case == "batch_too_large":
        args += ["--set", "train.batch_size=16"]
    elif case == "teacher_classes":
        teacher = save_model(create_model("segformer_b0", num_classes=19), tmp_path / "t19.safetensors")
        args = ["distill", *args[1:], "--teacher", str(teacher), "--method", "transkd_base"]
    elif case == "unknown_key":
        args += ["--set", "optim.learning_rate=0.1"]
    elif case == "wrong_type":
        args += ["--set", "train.epochs=ten"]
    elif case == "negative_lr":
        args += ["--set", "optim.lr=-1e-3"]
    elif case == "output_is_file":
        output.write_text("x")
    elif case == "output_under_file":
        (tmp_path / "file").write_text("x")
        args[args.index("--output") + 1] = str(tmp_path / "file" / "run")
    elif case == "missing_config":
        args += ["--config", str(tmp_path / "missing.yaml")]
    code, out, err = cli(capsys, *args)
    assert code == 2
    assert expected in one_line_error(err)
    assert out == ""
    if case != "output_is_file":
        assert not output.exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_unwritable_output_is_refused(tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    code, out, err = cli(capsys, "train", *TINY, "--output", str(locked / "run"))
    assert code == 2 and "not writable" in one_line_error(err)


def test_ctrl_c_saves_a_resumable_checkpoint_and_exits_130(tmp_path, capsys, monkeypatch):
    from transkd.engine.trainer import Trainer

    original = Trainer._train_step
    calls = {"n": 0}

    def interrupted(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Trainer, "_train_step", interrupted)
    run_dir = tmp_path / "run"
    code, out, err = cli(capsys, "train", *TINY, "--output", str(run_dir))
    assert code == 130, err
    assert "interrupted after 1/4 steps" in out and "--resume auto" in out
    assert (run_dir / "checkpoints" / "last.pt").is_file()
