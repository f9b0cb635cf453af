"""What ``transkd flops`` measures and prints: a model's sizes by name, optionally with the
training-time rows of a distillation method, as one dict and as an aligned table."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .distill import create_distiller
from .errors import ConfigError
from .models import create_model
from .profile import DEFAULT_NUM_CLASSES, profile_distiller, profile_model


def profile_target(model: str, num_classes: int = DEFAULT_NUM_CLASSES,
                   input_size: Sequence[int] = (512, 1024), teacher: str | None = None,
                   method: str | None = None) -> dict[str, Any]:
    """Sizes of the model ``model`` (random weights); with ``method``, also ``training``: the
    student plus that method's adapters (the teacher is built to run them, never counted)."""
    if num_classes < 1:
        raise ConfigError(f"--num-classes must be at least 1, got {num_classes}")
    if any(v < 1 for v in input_size):
        raise ConfigError(f"--input-size must be two positive integers, got "
                          f"{input_size[0]} {input_size[1]}")
    if teacher and not method:
        raise ConfigError("--teacher is only used with --method; name a distillation method too")
    result = profile_model(model, num_classes, tuple(input_size))
    if method:
        teacher_net = create_model(teacher, num_classes=num_classes) if teacher else None
        distiller = create_distiller(method, teacher_net, create_model(model, num_classes=num_classes))
        result["training"] = {**profile_distiller(distiller, tuple(input_size)), "teacher": teacher}
    return result


def _millions(value: int) -> str:
    return f"{value / 1e6:.2f} M"


def _billions(value: int) -> str:
    return f"{value / 1e9:.2f} G"


def format_profile(result: dict[str, Any]) -> str:
    """A small aligned table: one number per row, each with its convention."""
    shape = "×".join(map(str, result["input_size"]))
    rows = [
        ("params", _millions(result["params"]), f"{result['params']:,}"),
        ("MACs   conv+linear, paper convention (mmcv counter)", _billions(result["macs_conv_linear"]),
         "attention products not counted"),
        ("MACs   incl. attention (torch flop_counter / 2)", _billions(result["macs_total"]), ""),
        ("FLOPs  incl. attention (torch flop_counter)", _billions(result["flops_total"]),
         "2 FLOPs per MAC"),
    ]
    lines = [f"{result['model']} · {result['num_classes']} classes · input {shape}"]
    training = result.get("training")
    if training:
        rows += [
            ("params training: student + adapters", _millions(training["params_training"]),
             f"adapters {_millions(training['params_adapters'])}"),
            ("MACs   training: student + adapters, paper convention",
             _billions(training["macs_conv_linear_training"]),
             f"adapters {_billions(training['macs_conv_linear_adapters'])}"),
        ]
    width = max(len(label) for label, _, _ in rows)
    value_width = max(len(value) for _, value, _ in rows)
    for label, value, note in rows:
        lines.append(f"  {label:<{width}}  {value:>{value_width}}  {note}".rstrip())
    if training:
        teacher = f" (teacher {training['teacher']} not counted)" if training.get("teacher") else ""
        lines.append(f"Training rows count the training-only modules of {training['method']}{teacher};")
        lines.append(f"the deployed student stays at {_millions(result['params'])} / "
                     f"{_billions(result['macs_conv_linear'])}.")
    return "\n".join(lines)
