"""A full disk during a write is one sentence naming the file; the previous good file stays as it
was and no temporary file is left (training checkpoints, exported weights, converted weights)."""

import errno
import os

import pytest
import torch

import transkd.engine.checkpoint as checkpoint_module
import transkd.weights.io as weights_io
from transkd.cli import main
from transkd.engine.checkpoint import load_checkpoint, save_checkpoint
from transkd.errors import DiskFullError
from transkd.models import create_model
from transkd.weights.io import disk_full, save_model, save_state_dict


def fill_then_fail(code: int = errno.ENOSPC):
    """A writer that writes part of its file, then finds the disk full."""
    def write(obj, target, *args, **kwargs):
        if hasattr(target, "write"):
            target.write(b"partial")
        else:
            with open(target, "wb") as fh:
                fh.write(b"partial")
        raise OSError(code, os.strerror(code))
    return write


def state(step: int) -> dict:
    return {"model": {"w": torch.full((3,), float(step))}, "optimizer": {}, "schedule": {}, "rng": {},
            "position": {"step": step, "epoch": 0, "batch": step}}


def leftovers(folder) -> list[str]:
    return sorted(p.name for p in folder.rglob(".*.tmp"))


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT])
def test_checkpoint_on_a_full_disk_keeps_the_previous_one(tmp_path, monkeypatch, code):
    path = tmp_path / "checkpoints" / "last.pt"
    save_checkpoint(path, state(1))
    before = path.read_bytes()
    monkeypatch.setattr(checkpoint_module.torch, "save", fill_then_fail(code))
    with pytest.raises(DiskFullError) as caught:
        save_checkpoint(path, state(2))
    assert str(caught.value) == (f"cannot write {path}: no space left on device (the previous last.pt "
                                 "is unchanged); free some space and run the command again")
    assert path.read_bytes() == before and load_checkpoint(path)["position"]["step"] == 1
    assert not (path.parent / "previous.pt").exists()  # the rotation never happened
    assert leftovers(tmp_path) == []


def test_safetensors_on_a_full_disk_writes_nothing(tmp_path, monkeypatch):
    """safetensors wraps the OS error in its own exception, with the OS text in the message."""
    def full(*args, **kwargs):
        raise RuntimeError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(weights_io, "save_file", full)
    with pytest.raises(DiskFullError, match=r"model\.safetensors: no space left on device \(nothing "
                                            r"was written\)"):
        save_state_dict({"w": torch.ones(2)}, tmp_path / "model.safetensors")
    assert list(tmp_path.iterdir()) == []


def test_other_write_errors_stay_what_they_are(tmp_path, monkeypatch):
    monkeypatch.setattr(checkpoint_module.torch, "save", fill_then_fail(errno.EIO))
    with pytest.raises(OSError) as caught:
        save_checkpoint(tmp_path / "last.pt", state(1))
    assert not isinstance(caught.value, DiskFullError) and leftovers(tmp_path) == []
    assert disk_full(RuntimeError("unexpected pos")) is False


def test_train_on_a_full_disk_is_one_sentence_and_keeps_the_last_checkpoint(tmp_path, capsys,
                                                                            monkeypatch):
    run_dir = tmp_path / "run"
    saves = []
    real_save = torch.save

    def second_fails(obj, target, *args, **kwargs):
        saves.append(1)
        if len(saves) == 2:
            return fill_then_fail()(obj, target)
        return real_save(obj, target, *args, **kwargs)

    monkeypatch.setattr(checkpoint_module.torch, "save", second_fails)
    args = ["train", "--set", "data.options={length: 8, size: [32, 64]}",
            "--set", "data.val_options={length: 2}", "--set", "protocol.image_size=[32, 64]",
            "--set", "train.batch_size=2", "--set", "train.iterations=4", "--set", "schedule.kind=standard",
            "--set", "schedule.warmup_iters=1", "--set", "train.checkpoint_interval=1",
            "--set", "train.val_interval=1000", "--set", "train.tensorboard=false",
            "--set", "train.num_workers=0", "--set", "eval.batch_size=2", "--output", str(run_dir)]
    code = main(args)
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error")]
    last = run_dir / "checkpoints" / "last.pt"
    assert code == 2 and err == [f"error: cannot write {last}: no space left on device (the previous "
                                 "last.pt is unchanged); free some space and continue the run with "
                                 "--resume auto"]
    assert load_checkpoint(last)["position"]["step"] == 1 and leftovers(run_dir) == []


def test_convert_on_a_full_disk_is_one_sentence(tmp_path, capsys, monkeypatch):
    source = save_model(create_model("segformer_b0", num_classes=3), tmp_path / "in.safetensors")
    out = tmp_path / "out.safetensors"
    out.write_bytes(b"keep me")

    def full(*args, **kwargs):
        raise RuntimeError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(weights_io, "save_file", full)
    code = main(["convert", str(source), "-o", str(out), "--force"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert err.startswith(f"error: cannot write {out}: no space left on device (the previous "
                          "out.safetensors is unchanged)")
    assert out.read_bytes() == b"keep me" and leftovers(tmp_path) == []
