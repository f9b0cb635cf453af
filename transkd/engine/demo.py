"""The demo: the whole job (teacher, plain student, TransKD students) on synthetic street scenes,
on a CPU, in minutes, with no data to download.

Every network trains from scratch on the built-in ``synthetic`` dataset; the teacher (bigger,
SegFormer-B1) gets more steps than the students so that it is clearly better, as a pre-trained
teacher would be. Students all get the same steps, so the table compares methods fairly. The
length scales with ``minutes`` (5 by default, sized for 2 CPU cores).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..config import Config, config_from_dict
from .logging import read_metrics


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


SIZES = {
    "default": DemoSize(image_size=(64, 128), train_length=400, val_length=48, batch_size=8,
                        teacher_iterations=450, student_iterations=160, validations=4),
    "tiny": DemoSize(image_size=(32, 64), train_length=8, val_length=4, batch_size=4,
                     teacher_iterations=3, student_iterations=2, validations=1),
}
TEACHER = "segformer_b1"
STUDENT = "segformer_b0"
DEFAULT_METHODS = ("transkd_base", "transkd_gl", "transkd_ea")
BUDGET_MINUTES = 5.0


@dataclass
class DemoRun:
    name: str  # "teacher", "student" or the method
    config: Config


def demo_config(role: str, size: DemoSize, minutes: float, output: Path, seed: int = 0,
                method: str = "none", teacher_weights: str | None = None) -> Config:
    """The resolved config of one demo run (``role``: teacher, student or distill)."""
    scale = minutes / BUDGET_MINUTES
    iterations = size.teacher_iterations if role == "teacher" else size.student_iterations
    iterations = max(1, round(iterations * scale))
    validations = max(1, min(size.validations, iterations))
    data = {"name": "synthetic", "options": {"length": size.train_length, "size": list(size.image_size)},
            "val_options": {"length": size.val_length}}
    config: dict[str, Any] = {
        "model": {"name": TEACHER if role == "teacher" else STUDENT},
        "data": data,
        "protocol": {"name": "paper", "image_size": list(size.image_size)},
        "distill": {"method": method},
        # From scratch in a few hundred steps: a far larger rate than the paper's 6e-5 for 1000 epochs.
        "optim": {"lr": 1e-3 if role != "teacher" else 6e-4},
        "schedule": {"kind": "standard", "warmup_iters": iterations // 10},
        "train": {"iterations": iterations, "epochs": None, "batch_size": size.batch_size,
                  "num_workers": 0, "seed": seed, "val_interval": -(-iterations // validations),
                  "checkpoint_interval": iterations, "log_interval": max(1, iterations // 50)},
        "eval": {"batch_size": 16},
        "output": {"dir": str(output)},
    }
    if teacher_weights is not None:
        config["teacher"] = {"weights": teacher_weights, "name": TEACHER}
    config = config_from_dict(config)
    return config


def run_demo(output: Path, minutes: float = BUDGET_MINUTES, tiny: bool = False,
             methods: Sequence[str] = DEFAULT_METHODS, seed: int = 0,
             report: Callable[[str], None] = print) -> dict[str, Any]:
    """Train teacher, plain student and each method; write table, curves and predictions."""
    from ..data import build_dataset
    from ..data.protocols import TransformedDataset, build_transform
    from ..profile import MACS_CONVENTION, count_macs_conv_linear, count_params, eval_mode, profile_distiller
    from ..weights.io import load_model
    from . import build
    from .run import execute, plan_run
    from .visualize import plot_curves, save_predictions

    size = SIZES["tiny" if tiny else "default"]
    output = Path(output)
    rows: list[dict[str, Any]] = []
    models: dict[str, torch.nn.Module] = {}
    curves: dict[str, list[dict[str, Any]]] = {}
    roles = [("teacher", "none"), ("student", "none")] + [("distill", m) for m in methods]
    teacher_weights: str | None = None
    started = time.perf_counter()
    for index, (role, method) in enumerate(roles, 1):
        name = {"teacher": "teacher", "student": "student"}.get(role, method)
        config = demo_config(role, size, minutes, output / name, seed, method,
                             teacher_weights if role == "distill" else None)
        report(f"[{index}/{len(roles)}] {name}: {config.model.name}"
               + (f" distilled from {TEACHER} with {method}" if role == "distill" else "")
               + f", {config.train.iterations} steps of batch {config.train.batch_size} at "
                 f"{size.image_size[0]}x{size.image_size[1]}")
        plan = plan_run(config)
        result = execute(plan)
        if result.status != "completed":  # Ctrl-C/SIGTERM: the run saved its state; stop here
            raise KeyboardInterrupt
        if role == "teacher":
            teacher_weights = str(result.best_weights)
        records = read_metrics(output / name / "metrics.jsonl")
        curves[name] = records
        best = result.best or {}
        model = load_model(result.best_weights)
        with eval_mode(model):
            macs = count_macs_conv_linear(model, torch.zeros(1, 3, *size.image_size)).total
        models[name] = model
        row = {
            "run": name, "network": config.model.name, "method": method,
            "val_miou": best.get("miou"), "val_acc": best.get("acc"),
            "params": count_params(model), "macs": macs,
            "train_seconds": result.train_seconds, "steps": result.steps,
            "weights": str(result.best_weights),
        }
        if role == "distill":
            student = build.build_network(config, plan.bundle.num_outputs)
            teacher = load_model(teacher_weights)
            criterion = build.criterion_for(config, plan.bundle, torch.device("cpu"))
            training = profile_distiller(build.build_distiller(config, student, teacher, criterion),
                                         size.image_size)
            row["params_training"] = training["params_training"]
            row["macs_training"] = training["macs_conv_linear_training"]
        rows.append(row)
        report(f"      val mIoU {_pct(row['val_miou'])}% after {result.train_seconds:.0f} s")

    first = demo_config("student", size, minutes, output / "student", seed)
    val_raw = build_dataset("synthetic", split="val", length=size.val_length,
                            size=list(size.image_size))
    val_set = TransformedDataset(val_raw, build_transform(first.protocol, train=False), seed)
    samples = list(range(min(1 if tiny else 3, len(val_raw))))
    predictions = save_predictions(models, val_raw, val_set, samples,
                                   output / "predictions", val_raw.palette, val_raw.num_classes)
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
    (output / "results.json").write_text(json.dumps(_finite(summary), indent=2) + "\n")
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


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if value == value and abs(value) != float("inf") else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value
