"""evaluate_checkpoint: a saved network scored from Python, as ``transkd eval`` does."""

from __future__ import annotations

import math

import pytest

from transkd.config import load_config
from transkd.engine import build
from transkd.engine.score import evaluate_checkpoint
from transkd.errors import CheckpointError, ConfigError
from transkd.models import create_model
from transkd.weights.io import save_model

OVERRIDES = ["data.options={length: 4, size: [32, 64]}", "data.val_options={length: 2}",
             "protocol.image_size=[32, 64]", "train.num_workers=0", "eval.batch_size=2"]


@pytest.fixture(scope="module")
def outputs() -> int:
    return build.open_datasets(load_config(None, OVERRIDES), train=False).num_outputs


def test_a_bare_file_is_scored_with_its_dataset(tmp_path, outputs):
    path = save_model(create_model("segformer_b0", num_classes=outputs), tmp_path / "m.safetensors",
                      dataset="synthetic")
    score = evaluate_checkpoint(path, overrides=OVERRIDES)
    assert score.weights == path and score.model == "segformer_b0" and score.dataset == "synthetic"
    assert score.images == 2 and score.split == "val"
    record = score.record()
    assert set(record["iou"]) == set(score.class_names)
    assert all(v is None or math.isfinite(v) for v in record["iou"].values())  # NaN -> null


def test_a_run_folder_of_either_naming_is_found(tmp_path, outputs):
    model = create_model("segformer_b0", num_classes=outputs)
    save_model(model, tmp_path / "new" / "last" / "model.safetensors")
    save_model(model, tmp_path / "old" / "best" / "student.safetensors")
    assert evaluate_checkpoint(tmp_path / "new", overrides=OVERRIDES, last=True).weights.name == \
        "model.safetensors"
    assert evaluate_checkpoint(tmp_path / "old", overrides=OVERRIDES).weights.name == "student.safetensors"
    with pytest.raises(CheckpointError, match="without a deployable network"):
        evaluate_checkpoint(tmp_path / "old", overrides=OVERRIDES, last=True)


def test_a_class_count_that_does_not_fit_is_one_sentence(tmp_path, outputs):
    path = save_model(create_model("segformer_b0", num_classes=outputs + 3), tmp_path / "m.safetensors")
    with pytest.raises(ConfigError, match=f"predicts {outputs + 3} classes"):
        evaluate_checkpoint(path, overrides=OVERRIDES)
