"""Run folders as the report sees them: discovery, loading, roles, sizes, the gap closed.

A run is a folder with ``config.yaml`` and ``metrics.jsonl`` (``summary.json`` and
the deployable network in ``best/`` when it finished). Roles come from the configs: a run with a
distillation method is that method; among plain runs, the network some method distilled from (or
the bigger one) is the teacher and the network a method distilled into (or the smaller one) is the
plain student. A method's share of the teacher–student gap closed is
(mIoU_method − mIoU_student) / (mIoU_teacher − mIoU_student), from runs evaluated the same way.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open

from ..config import Config, config_from_dict, read_yaml
from ..data import build_dataset
from ..data.datasets.registry import dataset_class
from ..data.protocols import TransformedDataset, build_transform
from ..data.selection import parse_selection
from ..engine.logging import read_metrics
from ..engine.run import protocol_description
from ..errors import ConfigError, TranskdError
from ..jsonsafe import is_finite_number
from ..models import create_model
from ..profile import count_macs_conv_linear, count_params, eval_mode
from ..weights.io import RUN_FOLDER_FILES, read_metadata

RUN_FILES = ("config.yaml", "metrics.jsonl")
MODEL_FILES = tuple(f for f in RUN_FOLDER_FILES if "/" in f)
TEACHER, STUDENT, PLAIN = "teacher", "student", "plain"
#: Buffers of BatchNorm layers: saved with the adapters, but not parameters.
_BUFFER_SUFFIXES = ("running_mean", "running_var", "num_batches_tracked")

# --------------------------------------------------------------------------- runs

@dataclass
class Run:
    """One run folder as read from disk, plus what the report works out about it."""

    path: Path
    name: str
    config: Config
    config_text: str
    records: list[dict[str, Any]]
    summary: dict[str, Any] | None
    role: str = PLAIN
    class_names: tuple[str, ...] = ()
    params: int | None = None
    adapter_params: int | None = None
    macs: int | None = None
    macs_input: tuple[int, int] | None = None
    macs_note: str = ""

    @property
    def method(self) -> str:
        return self.config.distill.method

    @property
    def network(self) -> str:
        return self.config.model.name

    @property
    def by_epochs(self) -> bool:
        return self.config.train.epochs is not None

    @property
    def model_file(self) -> Path | None:
        """The deployable network at its best validation score (else the last one)."""
        return next((self.path / f for f in MODEL_FILES if (self.path / f).is_file()), None)

    def val_records(self) -> list[dict[str, Any]]:
        """Validation scores during training (not the reported split's single final scoring)."""
        return [r for r in self.records if r.get("kind") == "val" and not r.get("reported")
                and is_finite_number(r.get("miou"))]

    def select_records(self) -> list[dict[str, Any]]:
        """Scores on the held-out selection images (``data.selection: train_holdout:F``)."""
        return [r for r in self.records if r.get("kind") == "select" and is_finite_number(r.get("miou"))]

    @property
    def best(self) -> dict[str, Any] | None:
        """The best validation record (summary.json's, else the best one in metrics.jsonl)."""
        saved = (self.summary or {}).get("best")
        if isinstance(saved, dict) and is_finite_number(saved.get("miou")):
            return saved
        return max(self.val_records(), key=lambda r: r["miou"], default=None)

    @property
    def best_miou(self) -> float | None:
        return (self.best or {}).get("miou")

    @property
    def teacher_val(self) -> dict[str, Any] | None:
        """The teacher's own score, evaluated once when this distillation started."""
        saved = (self.summary or {}).get("teacher_val")
        if isinstance(saved, dict) and is_finite_number(saved.get("miou")):
            return saved
        return next((r for r in self.records if r.get("kind") == "teacher_val"
                     and is_finite_number(r.get("miou"))), None)

    @property
    def teacher_model(self) -> str | None:
        """The architecture a distillation run learned from."""
        if not self.config.method_names:
            return None
        if self.config.teacher.name:
            return self.config.teacher.name
        if isinstance((self.summary or {}).get("teacher"), str):
            return self.summary["teacher"]
        weights = self.config.teacher.weights
        if weights and Path(weights).is_file():
            return (read_metadata(weights) or {}).get("architecture")
        return None

    @property
    def evaluation(self) -> str:
        """What the mIoU means: split, protocol, input size, metric resolution, inference."""
        words = protocol_description(self.config)
        return (f"{self.config.data.name} {self.config.data.val_split}, protocol {words['protocol']}, "
                f"input {words['input_size']}, metric at {words['metric_resolution']}, "
                f"inference {words['inference']}")

    @property
    def wall_seconds(self) -> tuple[float | None, bool]:
        """(seconds of the training loop, whether it is an estimate from record timestamps)."""
        saved = (self.summary or {}).get("train_seconds")
        if is_finite_number(saved):
            return float(saved), False
        times = [r["time"] for r in self.records if is_finite_number(r.get("time"))]
        return (max(times) - min(times), True) if len(times) > 1 else (None, True)


    @property
    def selection_label(self) -> str:
        """Which checkpoint the reported number belongs to (older runs: best on val)."""
        saved = (self.summary or {}).get("selection")
        if isinstance(saved, dict) and isinstance(saved.get("label"), str):
            return saved["label"]
        try:
            selection = parse_selection(self.config.data.selection)
        except ConfigError:
            return "unknown"
        return selection.label(self.config.data.val_split)

    @property
    def selects_on_val(self) -> bool:
        """Whether the reported checkpoint was chosen on the reported split (older runs)."""
        try:
            return parse_selection(self.config.data.selection).on_reported_split
        except ConfigError:
            return True

    @property
    def compute(self) -> dict[str, Any]:
        """summary.json's compute record (training MACs, seconds per step); {} for older runs."""
        saved = (self.summary or {}).get("compute")
        return saved if isinstance(saved, dict) else {}

    def per_image_confusion(self) -> np.ndarray | None:
        """(N, K·K) confusion matrices per image of the reported checkpoint, if the run saved them."""
        saved = (self.summary or {}).get("per_image_confusion")
        if not isinstance(saved, str):
            return None
        try:
            with np.load(self.path / saved, allow_pickle=False) as archive:
                confusion = archive["confusion"]
        except (OSError, KeyError, ValueError):
            return None
        return confusion.reshape(confusion.shape[0], -1).astype(np.float64)


def is_run_dir(path: Path) -> bool:
    return all((path / name).is_file() for name in RUN_FILES)


def collect_run_dirs(paths: Sequence[str | Path]) -> tuple[list[Path], Path | None]:
    """The run folders behind ``paths`` and the folder holding them when the first path is a
    folder of runs (a demo folder) rather than a run."""
    found: list[Path] = []
    container = None
    for position, given in enumerate(paths):
        path = Path(given)
        if not path.exists():
            raise ConfigError(f"run folder {path} does not exist")
        if not path.is_dir():
            raise ConfigError(f"{path} is a file, not a run folder (a folder with config.yaml and "
                              "metrics.jsonl written by transkd train, distill or demo)")
        if is_run_dir(path):
            found.append(path)
            continue
        children = sorted(child for child in path.iterdir() if child.is_dir() and is_run_dir(child))
        if not children:
            missing = " and ".join(name for name in RUN_FILES if not (path / name).is_file())
            raise ConfigError(f"{path} is not a run folder: it has no {missing} and none of its "
                              "sub-folders is a run (give folders written by transkd train, distill "
                              "or demo)")
        container = path if position == 0 else container
        found.extend(children)
    unique: dict[Path, Path] = {}
    for path in found:
        unique.setdefault(path.resolve(), path)
    return list(unique.values()), container


def load_run(path: Path, name: str) -> Run:
    """Read a run folder; a damaged config or metrics file is one sentence naming it."""
    config_path, metrics_path = path / "config.yaml", path / "metrics.jsonl"
    try:
        config = config_from_dict(read_yaml(config_path))
    except ConfigError as exc:
        raise ConfigError(f"run folder {path} has a config.yaml this version cannot read ({exc})") from None
    try:
        records = read_metrics(metrics_path)
    except ValueError as exc:
        raise ConfigError(f"{metrics_path} is not a metrics file of JSON lines ({exc})") from None
    summary = None
    if (path / "summary.json").is_file():
        try:
            summary = json.loads((path / "summary.json").read_text(encoding="utf-8"))
        except ValueError:
            summary = None
    return Run(path, name, config, config_path.read_text(encoding="utf-8"), records,
               summary if isinstance(summary, dict) else None)


def run_names(paths: Sequence[Path]) -> list[str]:
    """Folder names, with the parent prefixed where two runs share a name."""
    names = [p.name for p in paths]
    return [f"{p.parent.name}/{p.name}" if names.count(p.name) > 1 else p.name for p in paths]


def run_class_names(run: Run) -> tuple[str, ...]:
    """Class names from summary.json, the saved student, or the dataset class, in that order."""
    saved = (run.summary or {}).get("class_names")
    if isinstance(saved, list) and saved and all(isinstance(n, str) for n in saved):
        return tuple(saved)
    if run.model_file is not None:
        saved = (read_metadata(run.model_file) or {}).get("class_names")
        if isinstance(saved, list) and saved and all(isinstance(n, str) for n in saved):
            return tuple(saved)
    try:
        names = tuple(dataset_class(run.config.data.name).class_names)
    except ConfigError:
        names = ()
    if names:
        return names
    iou = (run.best or {}).get("iou") or []
    return tuple(f"class_{i}" for i in range(len(iou)))


# --------------------------------------------------------------------------- datasets and sizes

class ValidationData:
    """Opens each run's validation split once; a missing dataset is remembered as its reason."""

    def __init__(self) -> None:
        self._opened: dict[str, tuple[Any, str | None]] = {}

    @staticmethod
    def key(run: Run) -> str:
        data = run.config.data
        return json.dumps([data.name, data.root, data.val_split, {**data.options, **data.val_options}],
                          sort_keys=True, default=str)

    def get(self, run: Run) -> tuple[Any, str | None]:
        """(raw validation dataset or None, why it is not available)."""
        key = self.key(run)
        if key not in self._opened:
            data = run.config.data
            try:
                dataset = build_dataset(data.name, data.root, split=data.val_split,
                                        **{**data.options, **data.val_options})
                self._opened[key] = (dataset, None) if len(dataset) else \
                    (None, f"split {data.val_split!r} of dataset {data.name!r} holds no images")
            except (TranskdError, OSError, ValueError) as exc:
                self._opened[key] = (None, str(exc))
        return self._opened[key]

    def transformed(self, run: Run):
        """The validation split through the run's evaluation pipeline, or None."""
        dataset, _ = self.get(run)
        if dataset is None:
            return None
        transform = build_transform(run.config.protocol, train=False, num_classes=dataset.num_classes)
        return TransformedDataset(dataset, transform, run.config.train.seed)


def network_input(run: Run, data: ValidationData) -> tuple[tuple[int, int] | None, str]:
    """The (H, W) the network sees in evaluation, and how it was found."""
    config = run.config
    if config.eval.mode == "slide" and config.eval.crop:
        return tuple(config.eval.crop), "one sliding window"
    fixed = config.protocol.protocol().fixed_input_size()
    if fixed is not None:
        return fixed, "the protocol's fixed input size"
    transformed = data.transformed(run)
    if transformed is not None:
        height, width = transformed[0]["image"].shape[-2:]
        return (int(height), int(width)), "the first validation image after the evaluation pipeline"
    return None, "the input size depends on each image and the dataset is not available"


def measure_sizes(runs: Sequence[Run], data: ValidationData) -> None:
    """Params and MACs (paper convention) of each run's deployed network at its input size."""
    cache: dict[str, tuple[int, int | None, str]] = {}
    for run in runs:
        outputs = run.config.protocol.num_outputs(len(run.class_names))
        size, how = network_input(run, data)
        key = json.dumps([run.network, outputs, run.config.model.options, size], sort_keys=True,
                         default=str)
        if key not in cache:
            model = create_model(run.network, num_classes=outputs, **run.config.model.options)
            macs, note = count_macs(model, size) if size is not None else (None, how)
            cache[key] = (count_params(model), macs, note if macs is None else how)
        run.params, run.macs, run.macs_note = cache[key]
        run.macs_input = size if run.macs is not None else None
        scales = run.config.eval.scales
        if run.macs is not None and (len(scales) > 1 or run.config.eval.flip):
            run.macs_note += "; one pass at scale 1 (test-time augmentation runs several)"
        run.adapter_params = adapter_params(run)


def count_macs(model, size: tuple[int, int]) -> tuple[int | None, str]:
    """Paper-convention MACs of one (1, 3, H, W) forward pass, or None and torch's reason."""
    try:
        with eval_mode(model):
            return count_macs_conv_linear(model, torch.zeros(1, 3, *size)).total, ""
    except RuntimeError as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return None, f"{getattr(model, 'model_name', 'the network')} fails on {size[0]}x{size[1]}: {reason}"


def adapter_params(run: Run) -> int | None:
    """Parameters of the training-only distillation modules saved next to the student."""
    for folder in ("best", "last"):
        path = run.path / folder / "adapters.safetensors"
        if path.is_file():
            try:
                with safe_open(str(path), framework="pt") as handle:
                    names = [k for k in handle.keys() if not k.endswith(_BUFFER_SUFFIXES)]  # noqa: SIM118
                    return sum(math.prod(handle.get_slice(k).get_shape()) for k in names)
            except Exception:  # damaged file: the column shows n/a
                return None
    return None


# --------------------------------------------------------------------------- roles and the gap

def assign_roles(runs: Sequence[Run]) -> None:
    """teacher / student / the method name / plain, from the configs (see the module docstring)."""
    distilled = [r for r in runs if r.config.method_names]
    teacher_models = {r.teacher_model for r in distilled} - {None}
    student_models = {r.network for r in distilled}
    teacher_files = set()
    for run in distilled:
        weights = run.config.teacher.weights
        if weights and Path(weights).is_file():
            teacher_files.add(Path(weights).resolve())
    for run in runs:
        if run.config.method_names:
            run.role = run.method
            continue
        files = {(run.path / f).resolve() for f in MODEL_FILES if (run.path / f).is_file()}
        others = [o.params for o in runs if o is not run and o.params is not None]
        if files & teacher_files or (run.network in teacher_models and run.network not in student_models):
            run.role = TEACHER
        elif run.network in student_models:
            run.role = STUDENT
        elif run.params is not None and any(p < run.params for p in others):
            run.role = TEACHER
        elif run.params is not None and any(p > run.params for p in others):
            run.role = STUDENT
        else:
            run.role = PLAIN


@dataclass
class Gap:
    """A method's share of the teacher–student gap closed, and how it was computed (or why not)."""

    share: float | None
    explanation: str


def gap_closed(method: Run, runs: Sequence[Run]) -> Gap:
    same = [r for r in runs if r.evaluation == method.evaluation and r is not method]
    students = [r for r in same if r.role == STUDENT and r.network == method.network]
    teachers = [r for r in same if r.role == TEACHER]
    matching = [r for r in teachers if r.network == method.teacher_model]
    teachers = matching or teachers
    if not students:
        return Gap(None, f"{method.name}: no plain-student run of {method.network} with the same "
                         "evaluation among the runs, so no gap share")
    student = students[0]
    if teachers:
        teacher_miou, teacher_label = teachers[0].best_miou, f"run {teachers[0].name}"
    elif method.teacher_val is not None:
        teacher_miou = method.teacher_val["miou"]
        teacher_label = f"its teacher as scored when {method.name} started"
    else:
        return Gap(None, f"{method.name}: no teacher run with the same evaluation among the runs, "
                         "so no gap share")
    values = (method.best_miou, student.best_miou, teacher_miou)
    if not all(is_finite_number(v) for v in values):
        return Gap(None, f"{method.name}: a run has no validation score yet, so no gap share")
    ours, base, top = values
    if top <= base:
        return Gap(None, f"{method.name}: the teacher ({percent(top)}) does not beat the student "
                         f"({percent(base)}), so the gap share is undefined")
    share = (ours - base) / (top - base)
    return Gap(share, f"{method.name}: ({percent(ours)} − {percent(base)}) / ({percent(top)} − "
                      f"{percent(base)}) = {100 * share:.1f}% (teacher: {teacher_label}; "
                      f"student: run {student.name})")


ROLE_ORDER = {TEACHER: 0, STUDENT: 1, PLAIN: 3}


def ordered(runs: Sequence[Run]) -> list[Run]:
    """Teacher first, then the plain student, then the methods, each in the given order."""
    return sorted(runs, key=lambda r: ROLE_ORDER.get(r.role, 2))


# --------------------------------------------------------------------------- formatting

def percent(value: Any) -> str:
    return f"{100 * value:.2f}" if is_finite_number(value) else "n/a"


def millions(value: int | None) -> str:
    return "n/a" if value is None else f"{value / 1e6:.2f}"


def giga(value: int | None) -> str:
    if value is None:
        return "n/a"
    return f"{value / 1e9:.3f}" if value < 1e10 else f"{value / 1e9:.1f}"


def size_text(size: Sequence[int] | None) -> str:
    return "n/a" if size is None else f"{size[0]}x{size[1]}"


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "run"
