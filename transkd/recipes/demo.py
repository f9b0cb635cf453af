"""The demo: the whole job (teacher, plain student, TransKD students) on synthetic street scenes,
on a CPU, in minutes, with no data to download.

Every network trains from scratch on the built-in ``synthetic`` dataset; the teacher (bigger,
SegFormer-B1) gets more steps than the students so that it is clearly better, as a pre-trained
teacher would be. Students all get the same steps, so the table compares methods fairly. The
length scales with ``minutes`` (5 by default, sized for 2 CPU cores); ``tiny`` is a smoke run of
one step per network that shows everything works in seconds.

An interrupted demo continues where it stopped when started again with the same options: a
finished network is kept, an interrupted one resumes from its checkpoint.
"""

from __future__ import annotations

import copy
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..config import Config, config_from_dict, load_config
from ..data import build_dataset
from ..data.protocols import TransformedDataset, build_transform
from ..distill import get_method
from ..engine import build
from ..engine.logging import read_metrics
from ..engine.run import check_output_dir, execute, plan_run
from ..engine.visualize import plot_curves, save_predictions
from ..errors import ConfigError, TranskdError
from ..jsonsafe import json_safe
from ..profile import MACS_CONVENTION, count_macs_conv_linear, count_params, eval_mode, profile_distiller
from ..progress import Progress, duration
from ..weights.io import MODEL_FILE, load_model


@dataclass(frozen=True)
class DemoSize:
    """Knobs of one demo size; iteration counts are for a 5-minute budget."""

    image_size: tuple[int, int]
    train_length: int
    val_length: int
    batch_size: int
    teacher_iterations: int
    student_iterations: int
    validations: int
    #: Sample images in the prediction grid.
    samples: int = 3
    #: TensorBoard events and the teacher's score before distilling: worth their seconds only
    #: when the run is long enough to look at.
    extras: bool = True
    #: Intra-op threads (None: the idle cores, see :func:`demo_threads`). On tensors this small a
    #: second thread costs more in synchronisation than it gains.
    threads: int | None = None


SIZES = {
    "default": DemoSize(image_size=(64, 128), train_length=400, val_length=48, batch_size=8,
                        teacher_iterations=450, student_iterations=160, validations=4),
    "tiny": DemoSize(image_size=(32, 64), train_length=4, val_length=2, batch_size=2,
                     teacher_iterations=1, student_iterations=1, validations=1, samples=1,
                     extras=False, threads=1),
}
TEACHER = "segformer_b1"
STUDENT = "segformer_b0"
DEFAULT_METHODS = ("transkd_base", "transkd_gl", "transkd_ea")
TINY_METHODS = ("transkd_base",)
BUDGET_MINUTES = 5.0
#: What a demo folder holds besides its run folders.
OUTPUTS = ("results.md", "results.json", "curves.png", "predictions")


class DemoInterrupted(TranskdError):
    """Ctrl-C or SIGTERM stopped the demo; its runs keep what they did."""


def demo_config(role: str, size: DemoSize, minutes: float, output: Path, seed: int = 0,
                method: str = "none", teacher_weights: str | None = None) -> Config:
    """The resolved config of one demo run (``role``: teacher, student or distill)."""
    scale = minutes / BUDGET_MINUTES
    iterations = size.teacher_iterations if role == "teacher" else size.student_iterations
    iterations = max(1, round(iterations * scale))
    validations = max(1, min(size.validations, iterations))
    data = {"name": "synthetic", "options": {"length": size.train_length, "size": list(size.image_size)},
            "val_options": {"length": size.val_length}}
    train: dict[str, Any] = {
        "iterations": iterations, "epochs": None, "batch_size": size.batch_size, "num_workers": 0,
        "seed": seed, "val_interval": -(-iterations // validations),
        "checkpoint_interval": iterations, "log_interval": max(1, iterations // 50)}
    config: dict[str, Any] = {
        "model": {"name": TEACHER if role == "teacher" else STUDENT},
        "data": data,
        "protocol": {"name": "paper", "image_size": list(size.image_size)},
        "distill": {"method": method},
        # From scratch in a few hundred steps: a far larger rate than the paper's 6e-5 for 1000 epochs.
        "optim": {"lr": 1e-3 if role != "teacher" else 6e-4},
        "schedule": {"kind": "standard", "warmup_iters": iterations // 10},
        "train": train,
        "eval": {"batch_size": 16},
        "output": {"dir": str(output)},
    }
    if not size.extras:
        train["tensorboard"] = False
        config["distill"]["eval_teacher"] = False
    if teacher_weights is not None:
        config["teacher"] = {"weights": teacher_weights, "name": TEACHER}
    return config_from_dict(config)


@dataclass
class DemoRun:
    """One network of the demo and whether a previous start already finished or began it."""

    name: str  # "teacher", "student" or the method
    role: str  # "teacher", "student" or "distill"
    config: Config
    state: str  # "new", "resume" or "done"


def plan_demo(output: Path, minutes: float = BUDGET_MINUTES, tiny: bool = False,
              methods: Sequence[str] | None = None, seed: int = 0) -> list[DemoRun]:
    """The demo's runs, checked against what ``output`` already holds; writes nothing.

    ``output`` may be new, empty, or a demo started before with the same options (its runs are
    then continued); anything else is refused with one sentence."""

    if not minutes > 0:
        raise ConfigError(f"--minutes must be positive, got {minutes}")
    methods = list(TINY_METHODS if tiny else DEFAULT_METHODS) if methods is None else list(methods)
    if not methods:
        raise ConfigError("--methods names no distillation method")
    for method in methods:
        get_method(method)
    size = SIZES["tiny" if tiny else "default"]
    output = Path(output)
    teacher_weights = str(output / "teacher" / "best" / MODEL_FILE)
    roles = [("teacher", "teacher", "none"), ("student", "student", "none")]
    roles += [(method, "distill", method) for method in methods]
    runs = [DemoRun(name, role, demo_config(role, size, minutes, output / name, seed, method,
                                            teacher_weights if role == "distill" else None), "new")
            for name, role, method in roles]
    _check_folder(output, runs)
    return runs


def _check_folder(output: Path, runs: list[DemoRun]) -> None:

    if output.exists() and not output.is_dir():
        raise ConfigError(f"demo folder {output} is a file; choose a folder with --output")
    if not output.is_dir():
        check_output_dir(output, resuming=False)
        return
    known = {run.name for run in runs} | set(OUTPUTS)
    strangers = sorted(p.name for p in output.iterdir() if p.name not in known)
    if strangers:
        raise ConfigError(f"demo folder {output} holds {strangers[0]}, which is not part of this demo; "
                          "choose another folder with --output")
    for run in runs:
        folder = output / run.name
        if not (folder / "config.yaml").is_file():
            continue
        try:
            same = load_config(folder / "config.yaml") == run.config
        except TranskdError:
            same = False
        if not same:
            raise ConfigError(f"demo folder {output} holds a {run.name} run with other settings; start "
                              "the demo with the options it was started with to continue it, or "
                              "choose another folder with --output")
        run.state = "done" if _finished(folder) else "resume"


def _finished(folder: Path) -> bool:
    try:
        summary = json.loads((folder / "summary.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return summary.get("status") == "completed" and bool(summary.get("best_weights")) \
        and Path(summary["best_weights"]).is_file()


def run_demo(output: Path, minutes: float = BUDGET_MINUTES, tiny: bool = False,
             methods: Sequence[str] | None = None, seed: int = 0,
             report: Callable[[str], None] = print, progress: bool = True) -> dict[str, Any]:
    """Train teacher, plain student and each method; write table, curves and predictions.

    Raises :class:`DemoInterrupted` after Ctrl-C/SIGTERM (each run saved its state; the same
    call continues the demo)."""
    runs = plan_demo(output, minutes, tiny, methods, seed)
    size = SIZES["tiny" if tiny else "default"]
    output = Path(output)
    # steps this start will train: the time left is estimated from them alone
    total = sum(run.config.train.iterations for run in runs if run.state != "done")
    overall = Progress(total, description="demo", enabled=progress, interval=0)
    rows: list[dict[str, Any]] = []
    models: dict[str, torch.nn.Module] = {}
    curves: dict[str, list[dict[str, Any]]] = {}
    started = time.perf_counter()
    threads = torch.get_num_threads()
    torch.set_num_threads(demo_threads(size))

    def tell(message: str) -> None:
        overall.write(message) if overall.bar else report(message)

    try:
        for index, run in enumerate(runs, 1):
            config = run.config
            note = {"done": " (finished before: kept)", "resume": " (continuing where it stopped)"}
            tell(f"[{index}/{len(runs)}] {run.name}: {config.model.name}"
                 + (f" distilled from {TEACHER} with {run.name}" if run.role == "distill" else "")
                 + f", {config.train.iterations} step{'s' if config.train.iterations != 1 else ''} "
                   f"of batch {config.train.batch_size} at "
                   f"{size.image_size[0]}x{size.image_size[1]}" + note.get(run.state, "")
                 + _so_far(overall, started, index))
            result = _train(run, progress, overall)
            records = read_metrics(output / run.name / "metrics.jsonl")
            curves[run.name] = records
            row, model = _row(run, result, size, models)
            models[run.name] = model
            rows.append(row)
            tell(f"      val mIoU {_pct(row['val_miou'])}% after {row['train_seconds']:.0f} s")
        summary = _finish(output, size, tiny, seed, rows, models, curves, started)
    finally:
        overall.close()
        torch.set_num_threads(threads)
    return summary


def demo_threads(size: DemoSize) -> int:
    """Threads for the demo's networks: the size's own count, else the cores idle at the start.

    PyTorch's threads wait for each other by spinning; on two cores that other programs kept busy
    a 2-thread demo step took over ten times as long as a 1-thread one, so a busy machine gets
    fewer threads. ``OMP_NUM_THREADS`` set by the user is obeyed as it is."""
    if size.threads is not None:
        return size.threads
    if os.environ.get("OMP_NUM_THREADS") or not hasattr(os, "getloadavg"):
        return torch.get_num_threads()
    idle = (os.cpu_count() or 1) - round(os.getloadavg()[0])
    return max(1, min(torch.get_num_threads(), idle))


def _so_far(overall: Progress, started: float, index: int) -> str:
    if index == 1 or overall.count == 0:
        return ""
    return (f"; demo {duration(time.perf_counter() - started)} so far, about "
            f"{duration(overall.eta())} left")


@dataclass
class _Trained:
    best: dict[str, Any]
    best_weights: Path
    train_seconds: float
    steps: int


def _train(run: DemoRun, progress: bool, overall: Progress) -> _Trained:
    """Train (or continue) one run, or read back the one a previous start finished."""

    folder = Path(run.config.output.dir)
    if run.state == "done":
        summary = json.loads((folder / "summary.json").read_text(encoding="utf-8"))
        return _Trained(summary.get("best") or {}, Path(summary["best_weights"]),
                        float(summary.get("train_seconds") or 0.0), int(summary.get("steps") or 0))
    plan = plan_run(run.config, resume="auto" if run.state == "resume" else None)
    done = [0]

    def step() -> None:
        done[0] += 1
        overall.update(1)

    result = execute(plan, progress=progress, on_step=step)
    if result.status != "completed":
        raise DemoInterrupted(f"interrupted during the {run.name} run at step {result.steps}/"
                              f"{result.total_steps}")
    overall.set_total(overall.total - (run.config.train.iterations - done[0]))  # done before
    return _Trained(result.best or {}, Path(result.best_weights), result.train_seconds, result.steps)


def _row(run: DemoRun, trained: _Trained, size: DemoSize,
         models: dict[str, torch.nn.Module]) -> tuple[dict[str, Any], torch.nn.Module]:
    """The table row of one trained run, and its network for the prediction grid."""

    config = run.config
    model = load_model(trained.best_weights)
    with eval_mode(model):
        macs = count_macs_conv_linear(model, torch.zeros(1, 3, *size.image_size)).total
    row = {
        "run": run.name, "network": config.model.name, "method": config.distill.method,
        "val_miou": trained.best.get("miou"), "val_acc": trained.best.get("acc"),
        "params": count_params(model), "macs": macs,
        "train_seconds": trained.train_seconds, "steps": trained.steps,
        "weights": str(trained.best_weights),
    }
    if run.role == "distill":
        bundle = build.open_datasets(config)
        criterion = build.criterion_for(config, bundle, torch.device("cpu"))
        distiller = build.build_distiller(config, copy.deepcopy(model), models["teacher"], criterion)
        training = profile_distiller(distiller, size.image_size)
        row["params_training"] = training["params_training"]
        row["macs_training"] = training["macs_conv_linear_training"]
    return row, model


def _finish(output: Path, size: DemoSize, tiny: bool, seed: int, rows: list[dict[str, Any]],
            models: dict[str, torch.nn.Module], curves: dict[str, list[dict[str, Any]]],
            started: float) -> dict[str, Any]:
    """Prediction grid, curves, ``results.json`` and ``results.md``; returns the summary."""

    first = demo_config("student", size, BUDGET_MINUTES, output / "student", seed)
    val_raw = build_dataset("synthetic", split="val", length=size.val_length, size=list(size.image_size))
    val_set = TransformedDataset(val_raw, build_transform(first.protocol, train=False), seed)
    samples = list(range(min(size.samples, len(val_raw))))
    predictions = save_predictions(models, val_raw, val_set, samples, output / "predictions",
                                   val_raw.palette, val_raw.num_classes,
                                   class_names=val_raw.class_names)
    curve_path = plot_curves(curves, output / "curves.png")
    summary = {
        "image_size": list(size.image_size),
        "dataset": f"synthetic ({size.train_length} train / {size.val_length} val images, "
                   f"{val_raw.num_classes} classes)",
        "protocol": "paper pipeline at a fixed input size, no resize; mIoU at 1/4 of the input resolution",
        "macs_convention": MACS_CONVENTION,
        "rows": rows,
        "total_seconds": time.perf_counter() - started,
        "curves": str(curve_path),
        "predictions": str(output / "predictions"),
    }
    (output / "results.json").write_text(json.dumps(json_safe(summary), indent=2) + "\n")
    (output / "results.md").write_text(results_table(summary) + "\n")
    summary["prediction_files"] = [str(p) for p in predictions]
    return summary


def results_table(summary: dict[str, Any]) -> str:
    """Markdown table of the demo results with the conventions spelled out."""
    height, width = summary["image_size"]
    lines = [
        f"Demo on {summary['dataset']}; {summary['protocol']}.",
        f"MACs: multiply-accumulates of one {height}x{width} image, conv+linear layers "
        "(the TransKD paper's mmcv convention; attention products not counted).",
        "",
        "| run | network | method | val mIoU (%) | params (M) | GMACs | training params (M) "
        "| training GMACs | train time (s) |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in summary["rows"]:
        lines.append(
            f"| {row['run']} | {row['network']} | {row['method']} | {_pct(row['val_miou'])} "
            f"| {row['params'] / 1e6:.2f} | {row['macs'] / 1e9:.3f} "
            f"| {_millions(row.get('params_training'))} | {_giga(row.get('macs_training'))} "
            f"| {row['train_seconds']:.0f} |")
    lines.append("")
    lines.append(f"Total wall time {summary['total_seconds']:.0f} s.")
    return "\n".join(lines)


def _pct(value: float | None) -> str:
    return "n/a" if value is None or value != value else f"{100 * value:.2f}"


def _millions(value: int | None) -> str:
    return "-" if value is None else f"{value / 1e6:.2f}"


def _giga(value: int | None) -> str:
    return "-" if value is None else f"{value / 1e9:.3f}"
