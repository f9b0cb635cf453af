"""The built-in synthetic street scenes: determinism, splits, class coverage, speed."""

from __future__ import annotations

import pickle
import time

import numpy as np
import pytest

from transkd.data import build_dataset
from transkd.errors import ConfigError, DatasetError


def test_defaults_and_sample_format():
    ds = build_dataset("synthetic")
    summary = (ds.name, ds.split, len(ds), ds.num_classes, ds.ignore_index)
    assert summary == ("synthetic", "train", 1000, 10, 255)
    assert len(ds.palette) == 10 and "pole" in ds.class_names and "person" in ds.class_names
    sample = ds[3]
    assert sample.image.shape == (128, 256, 3) and sample.image.dtype == np.uint8
    assert sample.label.shape == (128, 256) and sample.label.dtype == np.uint8
    assert sample.name == "synthetic_train_000003"
    assert set(np.unique(sample.label)) <= set(range(10)) | {255}
    assert sample.image.std() > 10  # not a flat picture
    assert len(build_dataset("synthetic", split="val")) == 200


def test_same_seed_and_index_give_identical_arrays():
    a = build_dataset("synthetic", seed=7, length=10)
    b = build_dataset("synthetic", seed=7, length=10)
    for i in (0, 9, -1):
        assert np.array_equal(a[i].image, b[i].image) and np.array_equal(a[i].label, b[i].label)
    clone = pickle.loads(pickle.dumps(a))          # as in a DataLoader worker
    assert np.array_equal(clone[4].image, a[4].image)
    a[5]
    assert np.array_equal(a[2].label, b[2].label)  # order of access does not matter


def test_indices_seeds_and_splits_differ():
    train = build_dataset("synthetic", length=4)
    val = build_dataset("synthetic", split="val", length=4)
    other = build_dataset("synthetic", length=4, seed=1)
    assert not np.array_equal(train[0].image, train[1].image)
    assert not np.array_equal(train[0].label, val[0].label)
    assert not np.array_equal(train[0].label, other[0].label)
    with pytest.raises(IndexError):
        train[4]


def test_every_class_appears_over_twenty_samples():
    ds = build_dataset("synthetic", length=20)
    counts = ds.class_pixel_counts()
    assert (counts > 0).all(), dict(zip(ds.class_names, counts.tolist()))
    # Thin classes are present but small, as in real street scenes.
    frac = counts / counts.sum()
    for thin in ("pole", "traffic sign", "person"):
        assert 0 < frac[ds.class_names.index(thin)] < 0.05


def test_size_option():
    ds = build_dataset("synthetic", size=(64, 96), length=3)
    sample = ds[0]
    assert sample.image.shape == (64, 96, 3) and sample.label.shape == (64, 96)
    assert ds.validate(strict=True) == 3


@pytest.mark.parametrize("options, message", [
    ({"length": 0}, "length"),
    ({"size": (16, 16)}, "size"),
    ({"size": (64, 64, 3)}, "size"),
    ({"seed": -1}, "seed"),
])
def test_bad_options(options, message):
    with pytest.raises(ConfigError, match=message):
        build_dataset("synthetic", **options)


def test_bad_split_and_root(tmp_path):
    with pytest.raises(DatasetError, match="unknown split 'dev'"):
        build_dataset("synthetic", split="dev")
    with pytest.raises(ConfigError, match="takes no root"):
        build_dataset("synthetic", tmp_path)


def test_generation_is_fast():
    ds = build_dataset("synthetic", length=100)
    ds[0]
    start = time.process_time()
    for i in range(100):
        ds[i]
    assert time.process_time() - start < 3.0   # about 3-4 ms of CPU per 128x256 sample
