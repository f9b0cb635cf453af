import numpy as np
import pytest

from transkd.data import build_dataset
from transkd.data.selection import (
    HOLDOUT,
    LAST,
    VAL,
    holdout_indices,
    parse_selection,
    split_for_selection,
)
from transkd.errors import ConfigError


def test_parse_selection_forms_and_one_sentence_errors():
    assert parse_selection("val").mode == VAL and parse_selection("none").mode == LAST
    rule = parse_selection("train_holdout:0.1:7")
    assert (rule.mode, rule.fraction, rule.seed) == (HOLDOUT, 0.1, 7)
    assert rule.label(images=5) == "best on train_holdout 10%, 5 images, seed 7"
    assert parse_selection("last").label() == "last checkpoint (no selection)"
    for bad in ("train_holdout", "train_holdout:1.5", "holdout:0.1", "train_holdout:x"):
        with pytest.raises(ConfigError, match="config key 'data.selection' must be"):
            parse_selection(bad)


def test_holdout_is_disjoint_from_training_seeded_and_complete():
    kept, held = holdout_indices(50, 0.2, seed=0)
    assert len(held) == 10 and len(kept) == 40
    assert not set(kept) & set(held) and set(kept) | set(held) == set(range(50))
    again_kept, again_held = holdout_indices(50, 0.2, seed=0)
    assert np.array_equal(held, again_held) and np.array_equal(kept, again_kept)
    assert not np.array_equal(held, holdout_indices(50, 0.2, seed=1)[1])


def test_split_for_selection_removes_the_held_out_images_from_training():
    train = build_dataset("synthetic", None, split="train", length=20, size=(32, 64))
    kept, held = split_for_selection(train, parse_selection("train_holdout:0.25"))
    assert len(kept) == 15 and len(held) == 5
    kept_names = {kept[i].name for i in range(len(kept))}
    held_names = {held[i].name for i in range(len(held))}
    assert not kept_names & held_names and len(kept_names | held_names) == 20
    assert held.class_names == train.class_names and held.num_classes == train.num_classes
    assert split_for_selection(train, parse_selection("last")) == (train, None)
