"""Unlabelled images: found recursively in any common format, unreadable files skipped and
counted, a seeded choice of kept labels, and the training pipeline applied to the image alone."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from transkd.data import ProtocolOptions, build_transform
from transkd.data.protocols import UnlabelledTransformedDataset
from transkd.data.unlabelled import ImageSources, find_images, labelled_choice, seeded_pick
from transkd.errors import ConfigError


def write_images(folder, sizes, seed=0):
    rng = np.random.default_rng(seed)
    paths = []
    for i, (h, w) in enumerate(sizes):
        where = folder / ("nested/deeper" if i % 2 else "")
        where.mkdir(parents=True, exist_ok=True)
        suffix = (".png", ".jpg", ".bmp", ".webp")[i % 4]
        path = where / f"image{i}{suffix}"
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def test_images_are_found_recursively_and_unreadable_files_are_skipped(tmp_path):
    write_images(tmp_path, [(20, 30), (40, 25), (16, 16), (50, 60)])
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "nested" / "broken.png").write_bytes(b"\x89PNG but cut off")
    found = find_images([tmp_path])
    assert len(found) == 4
    assert sorted(found.sizes) == sorted([(20, 30), (40, 25), (16, 16), (50, 60)])
    assert [p.name for p, _ in found.skipped] == ["broken.png"]
    assert "not a readable image" in found.skipped[0][1]
    for index in range(len(found)):
        image = found.image(index)
        assert image.dtype == np.uint8 and image.shape == (*found.size(index), 3)


@pytest.mark.parametrize("case", ["empty", "only_broken", "missing", "file"])
def test_a_folder_without_images_is_one_sentence_naming_it(tmp_path, case):
    folder = tmp_path / "photos"
    if case != "missing":
        folder.mkdir()
    if case == "only_broken":
        (folder / "a.jpg").write_bytes(b"garbage")
    if case == "file":
        folder.rmdir()
        folder.write_text("x")
    with pytest.raises(ConfigError) as error:
        find_images([folder])
    message = str(error.value)
    assert str(folder) in message and "\n" not in message
    expected = {"empty": "holds no image file", "only_broken": "holds no readable image file",
                "missing": "does not exist", "file": "is a file"}[case]
    assert expected in message


def test_the_kept_labels_are_a_seeded_choice():
    kept, rest = labelled_choice(20, 0.25, seed=3)
    assert len(kept) == 5 and len(rest) == 15
    assert sorted(kept + rest) == list(range(20))
    assert labelled_choice(20, 0.25, seed=3) == (kept, rest)
    assert labelled_choice(20, 0.25, seed=4)[0] != kept
    assert labelled_choice(20, 1.0, seed=3) == (list(range(20)), [])
    assert labelled_choice(20, 0.0, seed=3) == ([], list(range(20)))
    assert len(labelled_choice(3, 0.01, seed=0)[0]) == 1  # a positive fraction keeps one at least
    assert seeded_pick(10, 4, 0) == seeded_pick(10, 4, 0) and len(seeded_pick(10, 4, 0)) == 4
    assert seeded_pick(3, 10, 0) == [0, 1, 2]


def unlabelled_set(tmp_path, protocol: ProtocolOptions, frame=None):
    write_images(tmp_path, [(40, 80), (50, 70), (64, 64)])
    images = ImageSources([find_images([tmp_path])])
    transform = build_transform(protocol, train=True, num_classes=5)
    return UnlabelledTransformedDataset(images, transform, seed=1, frame=frame)


def test_the_training_pipeline_transforms_the_image_alone(tmp_path):
    protocol = ProtocolOptions(name="standard", crop_size=(24, 32), ratio_range=(0.5, 1.5),
                               void_as_extra_class=True)
    dataset = unlabelled_set(tmp_path, protocol)
    sample = dataset[1]
    assert sample["image"].shape == (3, 24, 32)
    # the label is all ignore, even where the protocol would turn void into a class
    assert sample["label"].shape == (24, 32) and bool((sample["label"] == 255).all())
    again = dataset[1]
    assert torch.equal(sample["image"], again["image"])  # a pure function of (seed, epoch, index)
    dataset.set_epoch(1)
    assert not torch.equal(sample["image"], dataset[1]["image"])  # a new draw every epoch


def test_a_frame_makes_images_of_any_size_batch_together(tmp_path):
    protocol = ProtocolOptions(name="paper", short_side=16, max_shift=0)
    dataset = unlabelled_set(tmp_path, protocol, frame=(40, 80))
    shapes = {tuple(dataset[i]["image"].shape) for i in range(len(dataset))}
    assert shapes == {(3, 16, 32)}
