"""Figures of a report: every training loss term, validation mIoU, per-class IoU.

PNG files drawn with matplotlib's Agg backend (no display needed) and written atomically, so an
interrupted report never leaves a half-written picture behind. Colour masks and prediction grids
come from :mod:`transkd.engine.visualize`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ..jsonsafe import is_finite_number
from ..weights.io import atomic_write

#: Fields of a ``train`` record that are bookkeeping, not loss terms.
NON_LOSS_FIELDS = frozenset({"kind", "step", "time", "epoch", "lr", "step_time", "data_time",
                             "images_per_s"})
DPI = 110


def _pyplot():
    # deferred: matplotlib is slow to import and only figures need it
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt



def _integer_ticks(ax) -> None:
    """Steps and epochs are whole numbers: no 1.25 ticks on short runs."""
    from matplotlib.ticker import MaxNLocator  # deferred with matplotlib, see _pyplot

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def write_atomically(path: str | Path, write: Callable[[str], Any]) -> Path:
    """:func:`atomic_write`, then the permissions a plain file would get (the temporary file it
    renames is private to the owner, and a report is meant to be shared)."""
    path = atomic_write(path, write)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)
    return path


def save_figure(fig, path: str | Path) -> Path:
    """Write ``fig`` as a PNG atomically and release it."""
    plt = _pyplot()
    try:
        return write_atomically(path, lambda tmp: fig.savefig(tmp, format="png", dpi=DPI))
    finally:
        plt.close(fig)


def loss_series(records: Iterable[Mapping[str, Any]]) -> dict[str, list[tuple[int, float]]]:
    """Every loss term of the ``train`` records as (step, value) pairs, finite values only;
    the total ``loss`` first, then the terms in the order the run logged them."""
    series: dict[str, list[tuple[int, float]]] = {}
    for record in records:
        if record.get("kind") != "train":
            continue
        for key, value in record.items():
            if key not in NON_LOSS_FIELDS and is_finite_number(value):
                series.setdefault(key, []).append((record["step"], float(value)))
    if "loss" in series:
        series = {"loss": series.pop("loss"), **series}
    return series


def plot_loss_terms(records: Sequence[Mapping[str, Any]], path: str | Path, title: str) -> Path | None:
    """Loss terms vs optimiser step (left) and the learning rate (right); None without train records."""
    series = loss_series(records)
    if not series:
        return None
    lr = [(r["step"], r["lr"]) for r in records if r.get("kind") == "train" and is_finite_number(r.get("lr"))]
    plt = _pyplot()
    fig, (loss_ax, lr_ax) = plt.subplots(1, 2, figsize=(10, 3.8), gridspec_kw={"width_ratios": [2.2, 1]})
    for name, points in series.items():
        style = {"linewidth": 2.0, "color": "black"} if name == "loss" else {"linewidth": 1.2}
        loss_ax.plot(*zip(*points), label="loss (total)" if name == "loss" else name,
                     marker="o" if len(points) == 1 else None, markersize=3, **style)
    if all(v > 0 for points in series.values() for _, v in points):
        loss_ax.set_yscale("log")
    loss_ax.set(xlabel="optimiser step", ylabel="loss (weighted term)", title=title)
    loss_ax.legend(fontsize=7, ncol=2 if len(series) > 6 else 1)
    if lr:
        lr_ax.plot(*zip(*lr), color="tab:gray", marker="o" if len(lr) == 1 else None, markersize=3)
    lr_ax.set(xlabel="optimiser step", ylabel="learning rate", title="learning rate")
    lr_ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
    for ax in (loss_ax, lr_ax):
        ax.grid(alpha=0.3)
        _integer_ticks(ax)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_miou(curves: Mapping[str, Sequence[tuple[float, float]]], path: str | Path, xlabel: str,
              references: Mapping[str, float] | None = None, title: str = "validation mIoU") -> Path | None:
    """Validation mIoU (%) of each run against ``xlabel`` (points given as (x, mIoU in [0, 1]));
    ``references`` are drawn as dashed horizontal lines (e.g. a teacher scored only once)."""
    if not any(curves.values()) and not references:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, points in curves.items():
        if points:
            xs, ys = zip(*points)
            ax.plot(xs, [100 * y for y in ys], marker="o", markersize=3, label=name)
    for name, value in (references or {}).items():
        ax.axhline(100 * value, linestyle="--", linewidth=1, color="tab:gray")
        ax.annotate(name, (0.01, 100 * value), xycoords=("axes fraction", "data"), fontsize=7,
                    color="tab:gray", va="bottom")
    ax.set(xlabel=xlabel, ylabel="val mIoU (%)", title=title)
    ax.grid(alpha=0.3)
    _integer_ticks(ax)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_class_iou(class_names: Sequence[str], ious: Mapping[str, Sequence[float | None]],
                   path: str | Path, title: str) -> Path:
    """Horizontal grouped bars: IoU (%) per class, one bar per run; missing values (a class absent
    from both ground truth and prediction) get no bar."""
    plt = _pyplot()
    runs = list(ious)
    bar = 0.8 / max(1, len(runs))
    fig, ax = plt.subplots(figsize=(7.5, 0.9 + len(class_names) * (0.16 * len(runs) + 0.14)))
    for index, run in enumerate(runs):
        values = list(ious[run]) + [None] * (len(class_names) - len(ious[run]))
        positions = [c - 0.4 + bar * (index + 0.5) for c in range(len(class_names))]
        kept = [(p, 100 * v) for p, v in zip(positions, values) if is_finite_number(v)]
        if kept:
            ax.barh(*zip(*kept), height=bar, label=run)
    ax.set_yticks(range(len(class_names)), labels=list(class_names), fontsize=8)
    ax.invert_yaxis()  # first class on top, as in the tables
    ax.set(xlabel="IoU (%)", xlim=(0, 100), title=title)
    ax.grid(axis="x", alpha=0.3)
    if len(runs) > 1:
        ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return save_figure(fig, path)
