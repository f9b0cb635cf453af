"""The unlabelled-data keys: ranges and combinations, each refused in one sentence naming the key."""

from __future__ import annotations

import pytest

from transkd.config import load_config
from transkd.errors import ConfigError

TEACHER = ["teacher.weights=t.safetensors", "distill.method=transkd_base"]


@pytest.mark.parametrize("overrides, message", [
    (["data.unlabelled=photos", "data.unlabelled_ratio=0"],
     "config key 'data.unlabelled_ratio' must be in (0, 64], got 0"),
    (["data.unlabelled=photos", "data.unlabelled_ratio=65"],
     "config key 'data.unlabelled_ratio' must be in (0, 64], got 65"),
    (["data.unlabelled=photos", "data.unlabelled_ratio=0.25", "train.batch_size=2"],
     "config key 'data.unlabelled_ratio' (0.25) times train.batch_size (2) must be a whole number"),
    (["data.unlabelled=rest"], "config key 'data.unlabelled' is 'rest'"),
    (["data.unlabelled=['']"], "config key 'data.unlabelled' must name folders"),
    (["data.labelled_fraction=1.5"], "config key 'data.labelled_fraction' must be in [0, 1], got 1.5"),
    (["data.labelled_fraction=0"], "config key 'data.unlabelled' must name images to train on"),
    (["data.labelled_seed=-1"], "config key 'data.labelled_seed' must be non-negative or null"),
    (["data.agreement_images=0"], "config key 'data.agreement_images' must be a positive integer"),
    (["data.name=none", "data.unlabelled=photos", "data.options={length: 4}"],
     "config key 'data.options' must be empty when data.name is 'none'"),
    (["data.name=none", "data.unlabelled=photos", "data.labelled_fraction=0.5"],
     "config key 'data.labelled_fraction' applies to a labelled dataset"),
    (["distill.pseudo_label_threshold=0"], "config key 'distill.pseudo_label_threshold' must be in (0, 1]"),
    (["distill.pseudo_label_threshold=0.5"],
     "config key 'distill.pseudo_label_threshold' applies to unlabelled images"),
    (["distill.pseudo_label_weight=-1"], "config key 'distill.pseudo_label_weight' must be non-negative"),
])
def test_bad_values_name_their_key(overrides, message):
    with pytest.raises(ConfigError) as error:
        load_config(None, [*TEACHER, *overrides])
    assert message in str(error.value) and "\n" not in str(error.value)


def test_good_values_load():
    config = load_config(None, [*TEACHER, "data.unlabelled=[rest, photos]", "data.labelled_fraction=0.25",
                                "data.unlabelled_ratio=1.5", "train.batch_size=2",
                                "distill.pseudo_label_threshold=0.9"])
    assert config.data.unlabelled_entries == ("rest", "photos") and config.data.has_labelled_train
    none = load_config(None, [*TEACHER, "data.name=none", "data.unlabelled=photos"])
    assert not none.data.has_labelled_train
    with pytest.raises(ConfigError, match="'data.unlabelled' needs a distillation method with a teacher"):
        load_config(None, ["data.unlabelled=photos"])
