"""The report's rows across seeds: runs of one config grouped, mean ± std, paired differences to
the plain student and to a baseline, and the share of the teacher–student gap closed, each with
a bootstrap interval (:mod:`.stats`)."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from .document import Block, Heading, Paragraph, Table
from .runs import STUDENT, TEACHER, Run
from .stats import LEVEL, RESAMPLES, Interval, Member, difference, gap_share, mean_std

SEED_FOLDER = re.compile(r"seed\d+")
#: Keys that differ between the seeds of one row (and where a run is written).
_NOT_IDENTITY = (("train", "seed"), ("output", "dir"), ("teacher", "weights"))


@dataclass
class Group:
    label: str
    role: str
    network: str
    runs: list[Run] = field(default_factory=list)

    def members(self) -> list[Member]:
        return [Member(r.config.train.seed, r.best_miou, r.per_image_confusion())
                for r in self.runs if r.best_miou is not None]


def identity(run: Run) -> str:
    """The config without what may differ between seeds of one row."""
    data = run.config.to_dict()
    for section, key in _NOT_IDENTITY:
        data.get(section, {}).pop(key, None)
    return json.dumps(data, sort_keys=True, default=str)


def group_runs(runs: Sequence[Run]) -> list[Group]:
    """Runs with the same config but the seed, in the runs' order; a sweep's ``NAME/seedK`` folders
    are labelled NAME."""
    groups: dict[str, Group] = {}
    for run in runs:
        key = run.role + identity(run)  # a teacher trained like the student is still the teacher
        if key not in groups:
            label = run.path.parent.name if SEED_FOLDER.fullmatch(run.path.name) else run.name
            groups[key] = Group(label, run.role, run.network)
        groups[key].runs.append(run)
    return list(groups.values())


def _interval(value: Interval | None, scale: float = 100.0) -> str:
    if value is None:
        return "—"
    text = f"{scale * value.value:+.2f}"
    if value.low is None:
        return text + " (no interval: 1 seed)"
    return f"{text} [{scale * value.low:+.2f}, {scale * value.high:+.2f}]"


def _mean_std(values: list[float]) -> str:
    if not values:
        return "n/a"
    mean, std = mean_std(values)
    return f"{100 * mean:.2f} ± {100 * std:.2f}" if std is not None else f"{100 * mean:.2f} (1 seed)"


def _mean_of(values: list[float | None], scale: float, digits: int) -> str:
    present = [v for v in values if isinstance(v, (int, float))]
    return f"{sum(present) / len(present) / scale:.{digits}f}" if present else "n/a"


def seeds_section(runs: Sequence[Run], baseline: str | None = None,
                  resamples: int = RESAMPLES, seed: int = 0) -> list[Block]:
    """The table across seeds, or nothing when no row has more than one run and nothing compares."""
    groups = group_runs(runs)
    student = next((g for g in groups if g.role == STUDENT), None)
    teacher = next((g for g in groups if g.role == TEACHER), None)
    methods = [g for g in groups if g.runs[0].config.method_names]
    if baseline is None:
        baseline = next((g.label for g in methods if g.runs[0].method == "kd"), None)
    base = next((g for g in groups if g.label == baseline), None)
    if all(len(g.runs) == 1 for g in groups) and not (student and methods):
        return []
    header = ["row", "role", "network", "seeds", "val mIoU (%) mean ± std",
              "Δ vs plain student (pp) [95% CI]"]
    header += [f"Δ vs {base.label} (pp) [95% CI]"] if base is not None else []
    header += ["gap closed (%) [95% CI]", "training TMACs / run", "wall time (s) / run", "s / step",
               "checkpoint reported"]
    rows, resampled = [], set()
    for group in groups:
        members = group.members()
        is_method = bool(group.runs[0].config.method_names)
        versus = difference(members, student.members(), resamples, seed) \
            if student is not None and is_method else None
        row = [group.label, group.role, group.network, str(len(members)),
               _mean_std([m.miou for m in members]), _interval(versus)]
        if base is not None:
            against = difference(members, base.members(), resamples, seed) \
                if is_method and group is not base else None
            row.append(_interval(against))
        gap = gap_share(members, student.members(), teacher.members(), resamples, seed) \
            if student is not None and teacher is not None and is_method else None
        row.append(_interval(gap))
        for value in (versus, gap):
            if value is not None and value.low is not None:
                resampled.add("seeds and images" if value.images else "seeds only")
        compute = [r.compute for r in group.runs]
        row += [_mean_of([c.get("train_macs") for c in compute], 1e12, 3),
                _mean_of([c.get("wall_seconds") or r.wall_seconds[0]
                          for c, r in zip(compute, group.runs)], 1, 0),
                _mean_of([c.get("seconds_per_step") for c in compute], 1, 3),
                "; ".join(sorted({r.selection_label for r in group.runs}))]
        rows.append(row)
    evaluation = "; ".join(sorted({r.evaluation for r in runs}))
    notes = [f"Each row gathers runs whose configs differ only in train.seed; val mIoU is the "
             f"reported split ({evaluation}) of the checkpoint named in the last column, mean ± sample "
             "standard deviation over seeds ('1 seed': a single run, no spread).",
             "Δ: mean over seeds of the paired difference (same seed) in mIoU, percentage points. Gap "
             "closed: (mIoU method − mIoU plain student) / (mIoU teacher − mIoU plain student) of "
             "the means over paired seeds.",
             f"Intervals: {int(100 * LEVEL)}% percentile bootstrap, {resamples} resamples, seed {seed}, "
             f"resampling {' / '.join(sorted(resampled)) or 'nothing (one seed and no per-image data)'}"
             " (images: one draw shared by every run, mIoU from the summed confusion matrices).",
             "Training TMACs: 10¹² multiply-accumulates of the whole run (steps × images per step × "
             "(3 × student and adapters forward + teacher forward), paper-convention forward MACs); "
             "s / step: seconds of the optimiser steps alone, averaged."]
    return [Heading("Across seeds"), Paragraph(" ".join(notes)),
            Table(header, rows, set(range(3, len(header) - 1)))]
