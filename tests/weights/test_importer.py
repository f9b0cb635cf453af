"""import_checkpoint and write_hf_folder from Python: what ``transkd convert`` runs."""

from __future__ import annotations

import json

import pytest
import torch

from transkd.errors import ConfigError
from transkd.models import create_model
from transkd.weights import load_model
from transkd.weights.hf import hf_config, write_hf_folder
from transkd.weights.importer import import_checkpoint
from transkd.weights.io import read_metadata, save_model


@pytest.fixture
def saved(tmp_path):
    torch.manual_seed(0)
    model = create_model("segformer_b0", num_classes=4).eval()
    return model, save_model(model, tmp_path / "src.safetensors")


def same_logits(a, b) -> bool:
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return torch.equal(a.eval()(x), b.eval()(x))


def test_round_trip_through_nvlabs_naming_is_exact(tmp_path, saved):
    model, src = saved
    heard = []
    result = import_checkpoint(src, tmp_path / "m.pth", to="nvlabs",
                               announce=lambda label, text: heard.append(label))
    assert result.target == "nvlabs" and result.architecture == "segformer_b0" and result.num_classes == 4
    assert heard[:2] == ["reading", "source"] and heard[-1] == "writing"  # each step as it starts
    assert result.parameters == sum(p.numel() for p in model.parameters())
    back = import_checkpoint(tmp_path / "m.pth", tmp_path / "back.safetensors",
                             class_names=_names(tmp_path, ["a", "b", "c"]))
    assert back.classes == f"3 names from {tmp_path / 'names.txt'} + void as output 3"
    assert same_logits(load_model(back.path), model)
    meta = read_metadata(back.path)
    assert meta["kind"] == "segmentor" and meta["source_format"] == "nvlabs"
    assert meta["class_names"] == ["a", "b", "c"] and meta["void_as_extra_class"] is True


def _names(tmp_path, names):
    path = tmp_path / "names.txt"
    path.write_text("\n".join(names) + "\n")
    return path


def test_refusals_name_the_option(tmp_path, saved):
    _, src = saved
    with pytest.raises(ConfigError, match="must end in .safetensors"):
        import_checkpoint(src, tmp_path / "m.pth")
    with pytest.raises(ConfigError, match="already exists; pass --force"):
        import_checkpoint(src, src)
    with pytest.raises(ConfigError, match="give one"):
        import_checkpoint(src, tmp_path / "x.safetensors", dataset="cityscapes", class_names="n.txt")


def test_hf_folder_describes_the_model(tmp_path, saved):
    model = load_model(saved[1])
    count = write_hf_folder(model, tmp_path / "hf", {"class_names": ["a", "b", "c", "d"]})
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config == hf_config(model, {"class_names": ["a", "b", "c", "d"]})
    assert config["id2label"] == {"0": "a", "1": "b", "2": "c", "3": "d"} and count > 0
    assert sorted(p.name for p in (tmp_path / "hf").iterdir()) == [
        "config.json", "model.safetensors", "preprocessor_config.json"]
