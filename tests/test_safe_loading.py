"""Every place that reads a checkpoint refuses a pickle that would run code: one sentence on
stderr, exit code 2, and the planted command never runs."""

import os
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from transkd.cli import main
from transkd.models import create_model
from transkd.weights.io import save_model

TINY = ["--set", "data.options={length: 4, size: [32, 64]}", "--set", "data.val_options={length: 2}",
        "--set", "protocol.image_size=[32, 64]", "--set", "train.batch_size=2",
        "--set", "train.iterations=2", "--set", "schedule.kind=constant",
        "--set", "train.num_workers=0", "--set", "train.tensorboard=false"]


class Payload:
    """Unpickling this object runs a shell command (what a booby-trapped checkpoint does)."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def plant(path, marker, style: str):
    """A checkpoint-looking file whose unpickling would create ``marker``."""
    evil = Payload(f"touch {marker}")
    content = {"format": "transkd-train-checkpoint", "version": 1, "state_dict": {"w": evil},
               "model": {"decode_head.classifier.weight": torch.zeros(10, 256, 1, 1)}}
    if style == "torch":  # a torch.save zip archive, like a real .pth
        torch.save(content, path)
    else:  # a bare pickle stream, like old .pth files
        with open(path, "wb") as fh:
            pickle.dump(content, fh, protocol=2)
    return path


def teacher_file(tmp_path):
    return save_model(create_model("segformer_b0", num_classes=10), tmp_path / "teacher.safetensors")


def image_folder(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    Image.fromarray(np.zeros((32, 64, 3), np.uint8)).save(folder / "a.png")
    return folder


def arguments(where: str, evil, tmp_path) -> list[str]:
    output = str(tmp_path / "out")
    if where == "resume":
        return ["train", *TINY, "--output", output, "--resume", str(evil)]
    if where == "teacher":
        return ["distill", *TINY, "--output", output, "--teacher", str(evil), "--method", "kd"]
    if where == "init":
        return ["train", *TINY, "--output", output, "--set", f"model.init={evil}"]
    if where == "convert":
        return ["convert", str(evil), "--output", str(tmp_path / "out.safetensors")]
    if where == "eval":
        return ["eval", str(evil), *TINY]
    if where == "predict":
        return ["predict", str(evil), str(image_folder(tmp_path)), "--output", output]
    raise AssertionError(where)


@pytest.mark.parametrize("style", ["torch", "pickle"])
@pytest.mark.parametrize("where", ["resume", "teacher", "init", "convert", "eval", "predict"])
def test_malicious_pickle_is_refused_without_running(tmp_path, capsys, where, style):
    marker = tmp_path / "pwned"
    evil = plant(tmp_path / ("last.pt" if where == "resume" else "weights.pth"), marker, style)
    # the payload is live: plain unpickling would run it
    if where == "resume" and style == "pickle":
        with open(evil, "rb") as fh:
            pickle.load(fh)  # noqa: S301 (proves the planted file is dangerous)
        assert marker.exists()
        marker.unlink()

    code = main(arguments(where, evil, tmp_path))
    out, err = capsys.readouterr()
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert str(evil) in lines[0]
    assert not marker.exists()
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.safetensors").exists()


@pytest.mark.parametrize("where", ["resume", "teacher", "init", "convert", "eval"])
def test_refusal_says_why(tmp_path, capsys, where):
    """The sentence tells the user what the file is not, so they know what to give instead."""
    marker = tmp_path / "pwned"
    evil = plant(tmp_path / "weights.pth", marker, "torch")
    if where == "teacher":
        teacher_file(tmp_path)  # a valid teacher exists elsewhere; the evil one is refused anyway
    main(arguments(where, evil, tmp_path))
    err = capsys.readouterr().err
    expected = {
        "resume": "refusing to load it",
        "teacher": "is a PyTorch checkpoint (.pth), not a deployable model",
        "init": "not a readable safetensors file",
        "convert": "cannot be loaded safely as plain tensors",
        "eval": "is a PyTorch checkpoint (.pth), not a deployable model",
    }[where]
    assert expected in err
    assert not marker.exists()
