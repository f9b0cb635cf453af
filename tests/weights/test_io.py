"""safetensors I/O: metadata round trip, damaged files, strict loading and atomic writes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from transkd.errors import CheckpointError
from transkd.models import create_model
from transkd.weights import (
    atomic_write,
    load_model,
    load_state_strict,
    read_safetensors,
    save_model,
    save_state_dict,
    torch_load_tensors,
)


@pytest.fixture(scope="module")
def segformer():
    torch.manual_seed(0)
    return create_model("segformer_b0", num_classes=19).eval()


def test_save_load_round_trip_keeps_weights_outputs_and_metadata(segformer, tmp_path):
    path = save_model(segformer, tmp_path / "student.safetensors", method="transkd_ea", epoch=7)
    assert path.is_file()
    _, meta = read_safetensors(path)
    assert meta["architecture"] == "segformer_b0" and meta["num_classes"] == 19
    assert meta["method"] == "transkd_ea" and meta["epoch"] == 7
    assert meta["mean"] == pytest.approx([0.485, 0.456, 0.406])

    loaded = load_model(path).eval()
    assert loaded.model_name == "segformer_b0" and loaded.num_classes == 19
    assert tuple(loaded.input_std) == pytest.approx((0.229, 0.224, 0.225))
    for key, tensor in segformer.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], tensor), key
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        assert torch.equal(loaded(x), segformer(x))


def test_custom_normalisation_survives_the_round_trip(tmp_path):
    net = create_model("segformer_b0", num_classes=3)
    net.input_mean, net.input_std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    loaded = load_model(save_model(net, tmp_path / "m.safetensors"))
    assert tuple(loaded.input_mean) == (0.5, 0.5, 0.5) and tuple(loaded.input_std) == (0.25, 0.25, 0.25)


def test_truncated_file_is_a_checkpoint_error(segformer, tmp_path):
    path = save_model(segformer, tmp_path / "cut.safetensors")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="cut.safetensors is not a readable safetensors file"):
        load_model(path)


@pytest.mark.parametrize("content", [b"", b"\x00" * 7, b"garbage that is not a header", b"\xff" * 64])
def test_corrupt_file_is_a_checkpoint_error(tmp_path, content):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match="bad.safetensors"):
        read_safetensors(path)


def test_missing_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.safetensors"):
        load_model(tmp_path / "nope.safetensors")
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        torch_load_tensors(tmp_path / "nope.pth")


def test_wrong_num_classes_is_refused_with_the_key_named(segformer, tmp_path):
    path = save_state_dict(segformer.state_dict(), tmp_path / "lying.safetensors",
                           {"architecture": "segformer_b0", "num_classes": 20})
    with pytest.raises(CheckpointError) as err:
        load_model(path)
    message = str(err.value)
    assert "lying.safetensors does not fit segformer_b0" in message and "\n" not in message
    assert "decode_head.classifier.weight (19, 256, 1, 1) vs (20, 256, 1, 1)" in message


def test_strict_loading_lists_missing_and_unexpected(segformer):
    state = dict(segformer.state_dict())
    state.pop("decode_head.fuse.bn.running_var")
    state["decode_head.extra.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointError, match=r"1 missing \(decode_head\.fuse\.bn\.running_var\); "
                                              r"1 unexpected \(decode_head\.extra\.weight\)"):
        load_state_strict(create_model("segformer_b0", num_classes=19), state, source="x.safetensors")


def test_file_without_model_metadata_is_refused(tmp_path):
    path = save_state_dict({"w": torch.zeros(2)}, tmp_path / "adapters.safetensors")
    with pytest.raises(CheckpointError, match="not a transkd model file"):
        load_model(path)


def test_atomic_write_leaves_no_temp_file_and_keeps_the_old_file_on_failure(tmp_path):
    target = tmp_path / "weights.safetensors"
    target.write_bytes(b"previous version")

    def fail_halfway(tmp: str) -> None:
        with open(tmp, "wb") as fh:
            fh.write(b"half of the new")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, fail_halfway)
    assert target.read_bytes() == b"previous version"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["weights.safetensors"]


def test_atomic_write_replaces_the_file_on_success(tmp_path):
    target = tmp_path / "sub" / "out.bin"
    atomic_write(target, lambda tmp: Path(tmp).write_bytes(b"new"))
    assert target.read_bytes() == b"new"
    assert [p.name for p in target.parent.iterdir()] == ["out.bin"]
    with pytest.raises(IsADirectoryError):
        atomic_write(tmp_path / "sub", lambda tmp: None)


def test_a_run_folder_loads_by_either_name_and_pickles_are_pointed_to_convert(tmp_path):
    from transkd.weights.io import deployable_file_name, model_file

    net = create_model("segformer_b0", num_classes=3)
    assert deployable_file_name(distilled=False) == "model.safetensors"
    assert deployable_file_name(distilled=True) == "student.safetensors"
    save_model(net, tmp_path / "old" / "best" / "student.safetensors")  # earlier versions' teacher
    save_model(net, tmp_path / "new" / "last" / "model.safetensors")
    assert load_model(tmp_path / "old").model_name == "segformer_b0"
    assert model_file(tmp_path / "new") == tmp_path / "new" / "last" / "model.safetensors"
    assert load_model(tmp_path / "new", last=True).num_classes == 3
    with pytest.raises(CheckpointError, match="without a deployable network"):
        load_model(tmp_path / "old", last=True)
    (tmp_path / "w.pth").write_bytes(b"")
    with pytest.raises(CheckpointError, match="'transkd convert' turns external weights into one"):
        load_model(tmp_path / "w.pth")


def test_a_teacher_file_named_the_new_way_is_found_under_its_older_name(tmp_path):
    from transkd.weights.io import model_file

    save_model(create_model("segformer_b0", num_classes=3), tmp_path / "best" / "student.safetensors")
    assert model_file(tmp_path / "best" / "model.safetensors") == tmp_path / "best" / "student.safetensors"
    with pytest.raises(FileNotFoundError, match="does not exist"):
        model_file(tmp_path / "last" / "model.safetensors")
