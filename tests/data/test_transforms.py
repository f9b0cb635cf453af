import numpy as np
import pytest
import torch

from transkd.data.transforms import (
    Compose,
    Normalize,
    PadTo,
    PhotoMetricDistortion,
    RandomCrop,
    RandomHorizontalFlip,
    RandomResize,
    RandomResizeCrop,
    RandomShift,
    Resize,
    ToTensor,
    VoidToClass,
    keep_ratio_size,
    label_size,
    shift_array,
    short_side_size,
)


def _pair(h=8, w=12, seed=0):
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    label = rng.integers(0, 5, (h, w), dtype=np.uint8)
    return image, label


class _FixedRng:
    """A stand-in generator that returns scripted values, to pin a transform's random choice."""

    def __init__(self, integers=None, random=0.0, uniform=None):
        self._integers = integers
        self._random = random
        self._uniform = uniform

    def integers(self, low, high=None, size=None):
        return np.asarray(self._integers)

    def random(self):
        return self._random

    def uniform(self, low, high):
        return self._uniform


def test_size_helpers():
    assert short_side_size(1024, 2048, 512) == (512, 1024)
    assert short_side_size(720, 960, 512) == (512, 683)
    assert keep_ratio_size(1024, 2048, (2048, 1024)) == (1024, 2048)
    assert keep_ratio_size(720, 960, (2048, 1024)) == (1024, 1365)
    assert keep_ratio_size(500, 375, (2048, 512)) == (683, 512)
    assert label_size((512, 1024), 0.25) == (128, 256)
    assert label_size((512, 683), 0.25) == (128, 171)  # rounded up like stride-4 logits
    assert label_size((7, 9), 1.0) == (7, 9)


def test_resize_short_side_and_label_scale():
    image, label = _pair(64, 96)
    out_image, out_label = Resize(short_side=32, label_scale=0.25)(image, label)
    assert out_image.shape == (32, 48, 3) and out_image.dtype == np.uint8
    assert out_label.shape == (8, 12)
    assert set(np.unique(out_label)) <= set(np.unique(label))


def test_resize_label_is_nearest_and_keep_label():
    label = np.kron(np.arange(4, dtype=np.uint8).reshape(2, 2), np.ones((4, 4), np.uint8))  # 8x8 blocks
    image = np.zeros((8, 8, 3), np.uint8)
    _, small = Resize(size=(2, 2))(image, label)
    np.testing.assert_array_equal(small, [[0, 1], [2, 3]])
    _, up = Resize(size=(16, 16))(image, label)
    assert set(np.unique(up)) == {0, 1, 2, 3}
    big_image, kept = Resize(size=(16, 16), keep_label=True)(image, label)
    assert big_image.shape == (16, 16, 3) and kept is label


def test_resize_rejects_two_targets():
    with pytest.raises(ValueError, match="at most one"):
        Resize(size=(4, 4), short_side=4)


def test_random_resize_range():
    image, label = _pair(40, 60)
    transform = RandomResize((0.5, 2.0))
    heights = []
    for seed in range(40):
        out_image, out_label = transform(image, label, np.random.default_rng(seed))
        assert out_image.shape[:2] == out_label.shape
        assert abs(out_image.shape[1] / out_image.shape[0] - 1.5) < 0.1
        heights.append(out_image.shape[0])
    assert 20 <= min(heights) < 30 and 65 < max(heights) <= 80


def test_random_resize_with_base_scale():
    image, label = _pair(10, 20)
    out_image, _ = RandomResize((1.0, 1.0), scale=(80, 40))(image, label, np.random.default_rng(0))
    assert out_image.shape[:2] == (40, 80)


def test_horizontal_flip_exact():
    image, label = _pair()
    flipped_image, flipped_label = RandomHorizontalFlip(1.0)(image, label, np.random.default_rng(0))
    np.testing.assert_array_equal(flipped_image, image[:, ::-1])
    np.testing.assert_array_equal(flipped_label, label[:, ::-1])
    same = RandomHorizontalFlip(0.0)(image, label, np.random.default_rng(0))
    assert same[0] is image and same[1] is label


def test_shift_array_exact():
    a = np.arange(12, dtype=np.uint8).reshape(3, 4)
    np.testing.assert_array_equal(shift_array(a, 1, 2, 99),
                                  [[99, 99, 99, 99], [99, 99, 0, 1], [99, 99, 4, 5]])
    np.testing.assert_array_equal(shift_array(a, -1, -1, 7), [[5, 6, 7, 7], [9, 10, 11, 7], [7, 7, 7, 7]])
    np.testing.assert_array_equal(shift_array(a, 0, 5, 3), np.full((3, 4), 3))


def test_shift_fixed_moves_quarter_label_by_scaled_amount_with_ignore():
    image = np.arange(16 * 16 * 3, dtype=np.int64).reshape(16, 16, 3).astype(np.uint8)
    label = np.arange(16, dtype=np.uint8).reshape(4, 4)  # the 1/4-resolution label
    shift = RandomShift(max_shift=8, label_fill=255, label_scale=0.25)
    out_image, out_label = shift(image, label, _FixedRng(integers=[8, -4]))  # dx=8, dy=-4
    np.testing.assert_array_equal(out_image, shift_array(image, -4, 8, 0))
    assert (out_image[:, :8] == 0).all()
    expected = np.full((4, 4), 255, np.uint8)
    expected[:3, 2:] = label[1:, :2]  # moved by dx=2, dy=-1 at 1/4 resolution
    np.testing.assert_array_equal(out_label, expected)


def test_shift_below_half_label_pixel_leaves_label_in_place():
    image, _ = _pair(16, 16)
    label = np.arange(16, dtype=np.uint8).reshape(4, 4)
    _, out_label = RandomShift(2, label_fill=255, label_scale=0.25)(image, label, _FixedRng(integers=[2, -2]))
    np.testing.assert_array_equal(out_label, label)


def _authors_shift(label: np.ndarray, trans_x: int, trans_y: int) -> np.ndarray:
    """The reference code's label shift, step by step as its training script writes it (PIL)."""
    from PIL import Image, ImageOps

    target = Image.fromarray(label)
    target = ImageOps.expand(target, border=(trans_x, trans_y, 0, 0), fill=255)
    target = target.crop((0, 0, target.size[0] - trans_x, target.size[1] - trans_y))
    return np.asarray(target)


@pytest.mark.parametrize("dx", [-2, -1, 0, 1, 2])
@pytest.mark.parametrize("dy", [-2, -1, 0, 1, 2])
def test_shift_faithful_equals_the_authors_transform(dx, dy):
    image, _ = _pair(20, 24)
    label = np.arange(1, 31, dtype=np.uint8).reshape(5, 6)  # no 0 and no 255 inside: fills stand out
    shift = RandomShift(max_shift=2, label_fill=255, label_scale=1.0, label_edge_fill=0)
    out_image, out_label = shift(image, label, _FixedRng(integers=[dx, dy]))
    np.testing.assert_array_equal(out_label, _authors_shift(label, dx, dy))
    np.testing.assert_array_equal(out_image, shift_array(image, dy, dx, 0))


def test_shift_faithful_pads_void_and_leaves_class_zero_past_the_edge():
    label = np.full((4, 4), 7, np.uint8)
    shift = RandomShift(max_shift=2, label_fill=255, label_scale=1.0, label_edge_fill=0)
    _, out = shift(np.zeros((16, 16, 3), np.uint8), label, _FixedRng(integers=[2, -1]))  # dx=2, dy=-1
    expected = np.array([[255, 255, 7, 7]] * 3 + [[0, 0, 0, 0]], np.uint8)
    np.testing.assert_array_equal(out, expected)


def test_paper_protocol_faithful_shift_equals_the_authors_transform():
    from transkd.data.protocols import ProtocolOptions

    steps = ProtocolOptions.faithful(flip_prob=0.0).protocol().train_steps()
    shift = next(step for step in steps if isinstance(step, RandomShift))
    label = np.arange(1, 31, dtype=np.uint8).reshape(5, 6)
    _, out = shift(np.zeros((20, 24, 3), np.uint8), label, _FixedRng(integers=[-2, 1]))
    np.testing.assert_array_equal(out, _authors_shift(label, -2, 1))


def test_shift_draws_within_range():
    image, label = _pair(8, 8)
    seen = set()
    for seed in range(60):
        out, _ = RandomShift(2)(np.full((8, 8, 3), 9, np.uint8), label, np.random.default_rng(seed))
        rows = int((out[:, 4, 0] == 0).sum())
        cols = int((out[4, :, 0] == 0).sum())
        seen.add((rows, cols))
    assert {r for r, _ in seen} == {0, 1, 2} and {c for _, c in seen} == {0, 1, 2}


def test_random_crop_and_pad_values():
    image, label = _pair(6, 10)
    crop = RandomCrop((4, 8))
    out_image, out_label = crop(image, label, np.random.default_rng(3))
    assert out_image.shape == (4, 8, 3) and out_label.shape == (4, 8)
    # A crop larger than the image keeps it whole; PadTo then fills image 0 and label ignore.
    big_image, big_label = RandomCrop((9, 12))(image, label, np.random.default_rng(0))
    np.testing.assert_array_equal(big_label, label)
    padded_image, padded_label = PadTo((9, 12), image_fill=0, label_fill=255)(big_image, big_label)
    assert padded_image.shape == (9, 12, 3) and padded_label.shape == (9, 12)
    np.testing.assert_array_equal(padded_image[:6, :10], image)
    assert (padded_image[6:] == 0).all() and (padded_image[:, 10:] == 0).all()
    assert (padded_label[6:] == 255).all() and (padded_label[:, 10:] == 255).all()


def test_random_crop_content_matches_source():
    image, label = _pair(20, 20)
    image[..., 0] = np.arange(20)[:, None]
    image[..., 1] = np.arange(20)[None, :]
    out_image, out_label = RandomCrop(5)(image, label, np.random.default_rng(7))
    top, left = int(out_image[0, 0, 0]), int(out_image[0, 0, 1])
    np.testing.assert_array_equal(out_label, label[top:top + 5, left:left + 5])


def test_cat_max_ratio_avoids_single_class_crops():
    label = np.zeros((40, 40), np.uint8)
    label[:, 30:] = 1  # class 0 dominates most crops
    image = np.zeros((40, 40, 3), np.uint8)
    crop = RandomCrop((10, 12), cat_max_ratio=0.75)
    balanced = 0
    for seed in range(20):
        _, out = crop(image, label, np.random.default_rng(seed))
        counts = np.bincount(out.ravel(), minlength=2)
        balanced += counts.max() < 0.75 * counts.sum()
    unconstrained = sum(
        np.bincount(RandomCrop((10, 12))(image, label, np.random.default_rng(s))[1].ravel(),
                    minlength=2).max() < 90 for s in range(20))
    assert balanced > unconstrained


@pytest.mark.parametrize("ratio_range, crop", [((0.5, 2.0), (24, 40)), ((1.5, 1.5), (100, 100))])
def test_fused_resize_crop_matches_resize_then_crop(ratio_range, crop):
    rng = np.random.default_rng(0)
    image = np.asarray(np.kron(rng.integers(0, 256, (12, 16, 3)), np.ones((4, 4, 1))), np.uint8)
    label = rng.integers(0, 4, (48, 64), dtype=np.uint8)
    resize, cropper = RandomResize(ratio_range), RandomCrop(crop, cat_max_ratio=0.75)
    fused = RandomResizeCrop(resize, cropper)
    for seed in range(8):
        a_image, a_label = fused(image, label, np.random.default_rng(seed))
        r = np.random.default_rng(seed)
        b_image, b_label = cropper(*resize(image, label, r), r)
        np.testing.assert_array_equal(a_label, b_label)
        assert a_image.shape == b_image.shape
        assert np.abs(a_image.astype(int) - b_image.astype(int)).max() <= 1


def test_photometric_distortion_changes_colours_only():
    image, label = _pair(16, 16)
    transform = PhotoMetricDistortion()
    changed = 0
    for seed in range(10):
        out_image, out_label = transform(image, label, np.random.default_rng(seed))
        assert out_image.dtype == np.uint8 and out_image.shape == image.shape
        assert out_label is label
        changed += not np.array_equal(out_image, image)
    assert changed >= 8
    again, _ = transform(image, label, np.random.default_rng(3))
    np.testing.assert_array_equal(again, transform(image, label, np.random.default_rng(3))[0])


def test_photometric_brightness_step():
    image = np.full((2, 2, 3), 100, np.uint8)

    class Rng(_FixedRng):
        calls = iter([0.0, 0.9, 0.9, 0.9, 0.9])  # brightness on, contrast-last, no S, no H, no contrast

        def random(self):
            return next(self.calls)

    out, _ = PhotoMetricDistortion()(image, None, Rng(uniform=20.4))
    assert (out == 120).all()


def test_normalize_numbers():
    image = np.array([[[0, 255, 51]]], np.uint8)
    out, _ = Normalize((0.5, 0.5, 0.2), (0.5, 0.25, 0.1))(image, None)
    np.testing.assert_allclose(out[0, 0], [-1.0, 2.0, 0.0], atol=1e-6)
    plain, _ = Normalize()(image, None)
    np.testing.assert_allclose(plain[0, 0], [0.0, 1.0, 0.2], atol=1e-6)
    assert plain.dtype == np.float32


def test_void_to_class_and_to_tensor():
    image = np.zeros((2, 3, 3), np.float32)
    label = np.array([[0, 255, 2], [255, 1, 0]], np.uint8)
    _, mapped = VoidToClass(255, 19)(image, label)
    np.testing.assert_array_equal(mapped, [[0, 19, 2], [19, 1, 0]])
    image_t, label_t = ToTensor()(image, mapped[:, ::-1])
    assert image_t.shape == (3, 2, 3) and image_t.dtype == torch.float32
    assert label_t.dtype == torch.int64 and label_t.tolist() == [[2, 19, 0], [0, 1, 19]]


def test_compose_threads_rng():
    image, label = _pair(8, 8)
    pipeline = Compose([RandomHorizontalFlip(0.5), RandomShift(1), Normalize(), ToTensor()])
    a = pipeline(image, label, np.random.default_rng(5))
    b = pipeline(image, label, np.random.default_rng(5))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert "RandomShift" in repr(pipeline)
