"""The report's statistics against computations written out by hand."""

import math

import numpy as np

from transkd.report.stats import Member, bootstrap, difference, gap_share, mean_std, miou_of


def test_mean_std_is_the_sample_standard_deviation():
    mean, std = mean_std([0.50, 0.52, 0.57])
    assert math.isclose(mean, (0.50 + 0.52 + 0.57) / 3)
    by_hand = math.sqrt(sum((v - mean) ** 2 for v in (0.50, 0.52, 0.57)) / 2)
    assert math.isclose(std, by_hand)
    assert mean_std([0.4]) == (0.4, None)


def test_miou_of_a_confusion_matrix_by_hand():
    confusion = np.array([[3, 1, 0], [2, 4, 0], [0, 0, 0]])  # class 2 absent: left out
    assert math.isclose(miou_of(confusion), (3 / (3 + 1 + 2) + 4 / (4 + 2 + 1)) / 2)


def test_paired_difference_and_gap_without_images_use_seeds_only():
    a = [Member(0, 0.60), Member(1, 0.64), Member(2, 0.62)]
    b = [Member(1, 0.60), Member(0, 0.55), Member(2, 0.59), Member(7, 0.1)]  # seed 7 has no pair
    result = difference(a, b, resamples=500, seed=3)
    assert math.isclose(result.value, np.mean([0.60 - 0.55, 0.64 - 0.60, 0.62 - 0.59]))
    assert result.seeds == 3 and not result.images
    # the same percentile bootstrap, written out independently
    diffs = np.array([0.05, 0.04, 0.03])
    rng = np.random.default_rng(3)
    draws = [diffs[rng.integers(0, 3, 3)].mean() for _ in range(500)]
    assert math.isclose(result.low, np.percentile(draws, 2.5))
    assert math.isclose(result.high, np.percentile(draws, 97.5))
    teacher = [Member(0, 0.70)]
    gap = gap_share(a, b, teacher, resamples=200)
    assert math.isclose(gap.value, (np.mean([0.60, 0.64, 0.62]) - np.mean([0.55, 0.60, 0.59]))
                        / (0.70 - np.mean([0.55, 0.60, 0.59])))
    assert gap.low <= gap.value <= gap.high


def test_one_seed_without_images_has_no_interval():
    result = difference([Member(0, 0.6)], [Member(0, 0.5)])
    assert math.isclose(result.value, 0.1) and result.low is None and result.high is None


def _per_image(rng, images=6, k=3):
    return rng.integers(0, 20, size=(images, k * k)).astype(np.float64)


def test_images_are_resampled_from_summed_confusions_and_the_seed_fixes_the_draws():
    rng = np.random.default_rng(0)
    a = [Member(s, 0.0, _per_image(rng)) for s in range(2)]
    b = [Member(s, 0.0, _per_image(rng)) for s in range(2)]
    for m in a + b:  # the reported number is the mIoU of all images
        m.miou = miou_of(m.per_image.sum(0).reshape(3, 3))
    first = difference(a, b, resamples=300, seed=11)
    again = difference(a, b, resamples=300, seed=11)
    other = difference(a, b, resamples=300, seed=12)
    assert first.images and (first.low, first.high) == (again.low, again.high)
    assert (first.low, first.high) != (other.low, other.high)
    assert math.isclose(first.value, np.mean([a[i].miou - b[i].miou for i in range(2)]))
    # one resample by hand: seeds (1, 1), images drawn with counts
    counts = np.array([2, 0, 1, 1, 0, 2], dtype=np.float64)

    def iou_by_hand(per_image):
        summed = sum(c * m for c, m in zip(counts, per_image)).reshape(3, 3)
        ious = [summed[k, k] / (summed[k].sum() + summed[:, k].sum() - summed[k, k]) for k in range(3)]
        return float(np.mean(ious))

    by_hand = iou_by_hand(a[1].per_image) - iou_by_hand(b[1].per_image)
    assert math.isclose(a[1].miou_at(counts) - b[1].miou_at(counts), by_hand)


def test_bootstrap_draws_seeds_then_images_with_one_generator():
    seen = []

    def statistic(picked, counts):
        seen.append((tuple(picked), None if counts is None else tuple(counts)))
        return float(len(seen))

    bootstrap(statistic, seeds=2, images=3, resamples=2, seed=5)
    rng = np.random.default_rng(5)
    expected = []
    for _ in range(2):
        picked = tuple(rng.integers(0, 2, 2))
        counts = tuple(np.bincount(rng.integers(0, 3, 3), minlength=3).astype(float))
        expected.append((picked, counts))
    assert seen[1:] == expected and seen[0] == ((0, 1), (1.0, 1.0, 1.0))


def test_miou_of_counts_a_void_column_as_false_negatives():
    from transkd.report.stats import matrix_of, miou_of

    confusion = np.array([[3, 1, 2], [0, 4, 0]], float)  # class 0: 2 pixels predicted void
    # IoU_0 = 3 / (3 + 1 + 2), IoU_1 = 4 / (4 + 1): void predictions are no class's false positive
    assert math.isclose(miou_of(confusion), (3 / 6 + 4 / 5) / 2)
    assert matrix_of(confusion.reshape(-1)).shape == (2, 3)
    assert matrix_of(np.arange(9.0)).shape == (3, 3)
