"""A pretrained student is fed the normalisation its weights expect, whatever the protocol says."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from transkd.weights.io import load_model, read_safetensors

pytest.importorskip("transformers")

from tests.distill.test_pairs import TINY_RUN  # noqa: E402
from tests.models.tiny_networks import save_hf, segformer_config  # noqa: E402

OWN_MEAN, OWN_STD = [0.5, 0.4, 0.3], [0.2, 0.25, 0.3]


def train(tmp_path, model_name: str, *extra: str) -> tuple[int, str]:
    from transkd.cli import main

    code = main(["train", *TINY_RUN, "--set", f"model.name={model_name}", "--set", "protocol.normalize=false",
                 "--no-progress", *extra, "--output", str(tmp_path / "run")])
    return code, str(tmp_path / "run")


def saved_protocol(run: str) -> dict:
    return yaml.safe_load(Path(run, "config.yaml").read_text())["protocol"]


def test_pretrained_hf_student_is_fed_its_own_normalisation(tmp_path, capsys):
    folder = save_hf(segformer_config(), tmp_path / "pretrained")
    spec = {"image_mean": OWN_MEAN, "image_std": OWN_STD}
    (folder / "preprocessor_config.json").write_text(json.dumps(spec))
    code, run = train(tmp_path, f"hf:{folder}")
    assert code == 0
    out = capsys.readouterr().out
    assert "input normalisation" in out and "instead of the protocol's (no normalisation)" in out
    protocol = saved_protocol(run)
    assert protocol["normalize"] is True
    assert list(protocol["mean"]) == OWN_MEAN and list(protocol["std"]) == OWN_STD
    _, meta = read_safetensors(f"{run}/last/model.safetensors")
    assert list(meta["mean"]) == OWN_MEAN and list(meta["std"]) == OWN_STD
    student = load_model(f"{run}/last/model.safetensors")
    assert list(student.input_mean) == OWN_MEAN and list(student.input_std) == OWN_STD


def test_student_from_random_weights_adopts_the_protocols(tmp_path, capsys):
    code, run = train(tmp_path, "segformer_b0")
    assert code == 0
    assert "input normalisation" not in capsys.readouterr().out
    assert saved_protocol(run)["normalize"] is False
    student = load_model(f"{run}/last/model.safetensors")
    assert tuple(student.input_mean) == (0.0, 0.0, 0.0) and tuple(student.input_std) == (1.0, 1.0, 1.0)
