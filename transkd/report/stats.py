"""Statistics over seeds and images: mean ± std, paired differences and the share of the gap
closed, each with a bootstrap confidence interval.

Runs of one row differ only by ``train.seed``; rows are compared seed by seed (paired). A
bootstrap resample draws seeds with replacement and, when every run saved its per-image
confusion matrices of the reported split (``evaluation/<split>.npz``), the images with
replacement too — one draw of images shared by every run, as every run is scored on the same
images. mIoU of a resample is computed from the summed confusion matrices of the drawn images
(dataset-level IoU, as the engine's), so the interval covers both sources of variation. Without
per-image matrices only seeds are resampled, and the report says so.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

RESAMPLES = 2000
LEVEL = 0.95


def mean_std(values: Sequence[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (n − 1); None for a single value."""
    array = np.asarray(values, dtype=np.float64)
    return float(array.mean()), (float(array.std(ddof=1)) if len(array) > 1 else None)


def miou_of(confusion: np.ndarray) -> float:
    """Mean IoU of a (K, K) confusion matrix; classes absent from truth and prediction left out.

    A (K, K+1) matrix's last column holds void predictions: false negatives of their row's class."""
    confusion = np.asarray(confusion, dtype=np.float64)
    k = confusion.shape[0]
    tp = np.diag(confusion)
    union = confusion[:, :k].sum(0) + confusion.sum(1) - tp
    present = union > 0
    return float((tp[present] / union[present]).mean()) if present.any() else math.nan


def matrix_of(flat: np.ndarray) -> np.ndarray:
    """A flattened (K, K) or (K, K+1) confusion matrix back in its shape (K·K is never K·(K+1))."""
    n = flat.shape[-1]
    k = int(round(math.sqrt(n)))
    if k * k == n:
        return flat.reshape(k, k)
    k = int(round((math.sqrt(4 * n + 1) - 1) / 2))
    return flat.reshape(k, k + 1)


@dataclass
class Member:
    """One run of a row: its reported mIoU and, if saved, its per-image confusions (N, K·K)."""

    seed: int
    miou: float
    per_image: np.ndarray | None = None

    def miou_at(self, counts: np.ndarray | None) -> float:
        """mIoU over images drawn ``counts`` times each (None: the run's own number)."""
        if counts is None or self.per_image is None:
            return self.miou
        return miou_of(matrix_of(counts @ self.per_image))


@dataclass
class Interval:
    value: float
    low: float | None
    high: float | None
    seeds: int
    images: bool  # whether images were resampled too


def images_shared(groups: Sequence[Sequence[Member]]) -> int | None:
    """The number of images when every member has per-image matrices of one shape, else None."""
    shapes = {m.per_image.shape if m.per_image is not None else None for g in groups for m in g}
    if len(shapes) != 1 or None in shapes:
        return None
    return next(iter(shapes))[0]


def bootstrap(statistic: Callable[[np.ndarray, np.ndarray | None], float], seeds: int,
              images: int | None, resamples: int = RESAMPLES, seed: int = 0,
              level: float = LEVEL) -> tuple[float, float | None, float | None]:
    """(value on the data, low, high): ``statistic(seed_indices, image_counts)`` recomputed on
    ``resamples`` draws of seeds (and images when ``images`` is given); percentile interval.
    No interval from a single seed without images to resample."""
    value = statistic(np.arange(seeds), None if images is None else np.ones(images))
    if seeds < 2 and images is None:
        return value, None, None
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(resamples):
        picked = rng.integers(0, seeds, seeds)
        counts = None if images is None else np.bincount(rng.integers(0, images, images),
                                                         minlength=images).astype(np.float64)
        draws.append(statistic(picked, counts))
    finite = np.asarray([d for d in draws if math.isfinite(d)])
    if not len(finite):
        return value, None, None
    tail = 100 * (1 - level) / 2
    return value, float(np.percentile(finite, tail)), float(np.percentile(finite, 100 - tail))


def paired(a: Sequence[Member], b: Sequence[Member]) -> tuple[list[Member], list[Member]]:
    """The members of ``a`` and ``b`` with a seed in common, in seed order."""
    by_seed = {m.seed: m for m in b}
    common = sorted(m.seed for m in a if m.seed in by_seed)
    first = {m.seed: m for m in a}
    return [first[s] for s in common], [by_seed[s] for s in common]


def difference(a: Sequence[Member], b: Sequence[Member], resamples: int = RESAMPLES,
               seed: int = 0) -> Interval | None:
    """mean over paired seeds of mIoU(a) − mIoU(b), with its bootstrap interval."""
    a, b = paired(a, b)
    if not a:
        return None
    images = images_shared([a, b])

    def statistic(picked: np.ndarray, counts: np.ndarray | None) -> float:
        return float(np.mean([a[i].miou_at(counts) - b[i].miou_at(counts) for i in picked]))

    value, low, high = bootstrap(statistic, len(a), images, resamples, seed)
    return Interval(value, low, high, len(a), images is not None)


def gap_share(method: Sequence[Member], student: Sequence[Member], teacher: Sequence[Member],
              resamples: int = RESAMPLES, seed: int = 0) -> Interval | None:
    """(mean mIoU method − mean mIoU student) / (mean mIoU teacher − mean mIoU student), over
    paired seeds of method and student; the teacher's runs are averaged (usually one)."""
    method, student = paired(method, student)
    if not method or not teacher:
        return None
    images = images_shared([method, student, teacher])

    def statistic(picked: np.ndarray, counts: np.ndarray | None) -> float:
        ours = np.mean([method[i].miou_at(counts) for i in picked])
        base = np.mean([student[i].miou_at(counts) for i in picked])
        top = np.mean([t.miou_at(counts) for t in teacher])
        return float((ours - base) / (top - base)) if top > base else math.nan

    value, low, high = bootstrap(statistic, len(method), images, resamples, seed)
    if not math.isfinite(value):
        return None
    return Interval(value, low, high, len(method), images is not None)
