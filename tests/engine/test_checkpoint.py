import pickle
import random

import numpy as np
import pytest
import torch

from transkd.engine.checkpoint import (
    capture_rng_state,
    load_checkpoint,
    resolve_resume,
    restore_rng_state,
    save_checkpoint,
)
from transkd.errors import CheckpointError


def _checkpoint(model: torch.nn.Module) -> dict:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model(torch.randn(2, 3)).sum().backward()
    opt.step()
    return {"model": model.state_dict(), "optimizer": opt.state_dict(), "schedule": {"step": 1},
            "rng": capture_rng_state(), "position": {"step": 1, "epoch": 0, "batch": 1},
            "best": {"miou": 0.5, "iou": [0.5, float("nan")]}}


def test_checkpoint_round_trips_with_weights_only_loading(tmp_path):
    model = torch.nn.Linear(3, 2)
    path = save_checkpoint(tmp_path / "ckpt" / "last.pt", _checkpoint(model))
    data = load_checkpoint(path)
    assert torch.equal(data["model"]["weight"], model.weight)
    assert data["position"] == {"step": 1, "epoch": 0, "batch": 1}
    assert isinstance(data["rng"]["numpy"]["keys"], list)
    assert not list(tmp_path.joinpath("ckpt").glob(".*tmp"))  # no temp file left behind


def test_rng_states_restore_exactly():
    state = capture_rng_state()
    expected = (torch.rand(3), np.random.rand(3), random.random())
    restore_rng_state(state)
    again = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(expected[0], again[0])
    assert np.array_equal(expected[1], again[1])
    assert expected[2] == again[2]


def test_non_finite_weights_are_never_written_and_the_old_checkpoint_survives(tmp_path):
    model = torch.nn.Linear(3, 2)
    path = save_checkpoint(tmp_path / "last.pt", _checkpoint(model))
    before = path.read_bytes()
    with torch.no_grad():
        model.weight[0, 0] = float("nan")
    with pytest.raises(CheckpointError, match="not finite"):
        save_checkpoint(path, _checkpoint(model))
    assert path.read_bytes() == before


def test_failed_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    model = torch.nn.Linear(3, 2)
    path = save_checkpoint(tmp_path / "last.pt", _checkpoint(model))
    before = path.read_bytes()

    def broken_save(obj, target):
        target.write(b"partial")  # an open file: the checkpoint writer hands torch.save one
        raise OSError("device error")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError):
        save_checkpoint(path, _checkpoint(model))
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


class _Evil:
    def __reduce__(self):
        return (print, ("unpickled code ran",))


def test_pickled_code_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    with open(path, "wb") as fh:
        pickle.dump({"format": "transkd-train-checkpoint", "x": _Evil()}, fh, protocol=2)
    with pytest.raises(CheckpointError):
        load_checkpoint(path)


def test_foreign_file_is_not_a_training_checkpoint(tmp_path):
    path = tmp_path / "weights.pt"
    torch.save({"weight": torch.zeros(2)}, path)
    with pytest.raises(CheckpointError, match="not a transkd training checkpoint"):
        load_checkpoint(path)


def test_resolve_resume(tmp_path):
    assert resolve_resume(None, tmp_path) is None
    assert resolve_resume("auto", tmp_path) is None
    (tmp_path / "last.pt").write_bytes(b"x")
    assert resolve_resume("auto", tmp_path) == tmp_path / "last.pt"
    with pytest.raises(CheckpointError, match="no checkpoint file"):
        resolve_resume(str(tmp_path / "missing.pt"), tmp_path)


def tiny_checkpoint(step: int) -> dict:
    return {"model": {"w": torch.full((4,), float(step))}, "optimizer": {}, "schedule": {},
            "rng": {}, "position": {"step": step, "epoch": 0, "batch": 0}}


@pytest.mark.parametrize("keep, files", [
    (1, ["last.pt"]),
    (2, ["last.pt", "previous.pt"]),
    (4, ["last.pt", "previous.pt", "step_000000004.pt", "step_000000005.pt", "step_000000006.pt",
         "step_000000007.pt"]),
])
def test_keep_checkpoints_bounds_what_a_run_keeps(tmp_path, keep, files):
    from transkd.engine.checkpoint import save_checkpoint

    for step in range(1, 8):
        save_checkpoint(tmp_path / "last.pt", tiny_checkpoint(step), keep=keep)
    assert sorted(p.name for p in tmp_path.iterdir()) == files
    assert load_checkpoint(tmp_path / "last.pt")["position"]["step"] == 7
    distinct = {p.stat().st_ino for p in tmp_path.iterdir()}
    assert len(distinct) == keep  # links, not copies: keep checkpoints' worth of disk
    if keep > 2:
        assert load_checkpoint(tmp_path / "step_000000004.pt")["position"]["step"] == 4


def test_a_checkpoint_that_cannot_fit_is_refused_before_writing(tmp_path, monkeypatch):
    import shutil
    from collections import namedtuple

    from transkd.engine import checkpoint as module
    from transkd.errors import DiskFullError

    module.save_checkpoint(tmp_path / "last.pt", tiny_checkpoint(1))
    before = (tmp_path / "last.pt").read_bytes()
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda _: usage(10 << 20, 10 << 20, 1000))
    with pytest.raises(DiskFullError, match=r"needs about 1 MiB and 0 MiB are free \(the previous "
                                            r"last.pt is unchanged\)"):
        module.save_checkpoint(tmp_path / "last.pt", tiny_checkpoint(2))
    assert (tmp_path / "last.pt").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]
