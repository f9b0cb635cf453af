"""Method names → classes, and ``create_distiller`` that assembles a Distiller from names."""

from __future__ import annotations

from typing import Any

from torch import nn

from ..errors import ConfigError
from .base import Distiller, DistillMethod, NetworkInfo

_METHODS: dict[str, type[DistillMethod]] = {}


def register_method(cls: type[DistillMethod]) -> type[DistillMethod]:
    """Class decorator: make a method available by its ``name``."""
    if not cls.name or cls.name in _METHODS:
        raise ValueError(f"method name {cls.name!r} is empty or registered twice")
    _METHODS[cls.name] = cls
    return cls


def list_methods() -> list[str]:
    """Every method name, ``none`` (plain student, cross-entropy only) included."""
    return sorted([*_METHODS, "none"])


def get_method(name: str) -> type[DistillMethod]:
    try:
        return _METHODS[name]
    except KeyError:
        raise ConfigError(f"unknown distillation method {name!r}; known methods: "
                          f"{', '.join(list_methods())}") from None


def create_distiller(method: str, teacher: nn.Module | None, student: nn.Module,
                     **options: Any) -> Distiller:
    """Build a Distiller for ``method`` (``"transkd_base"``, ``"kd"``, ``"transkd_base+kd"``,
    ``"none"``).

    Options are keyword arguments. With several methods, give each its own options as a dict
    under its name (``kd={"temperature": 4.0}``); with one method, plain keywords work too.
    Options shared by the Distiller itself: ``criterion``, ``ce_weight``, ``ignore_index``.
    """
    shared = {k: options.pop(k) for k in ("criterion", "ce_weight", "ignore_index") if k in options}
    names = [n.strip() for n in method.split("+") if n.strip()] if method else []
    if names == ["none"]:
        names = []
    if len(set(names)) != len(names):
        raise ConfigError(f"method {method!r} names a method twice")
    classes = [get_method(n) for n in names]
    per_method = {n: options.pop(n) for n in names if isinstance(options.get(n), dict)}
    if options and len(names) != 1:
        raise ConfigError(f"option(s) {sorted(options)} must be given per method for {method!r} "
                          f"(e.g. {names[0] if names else 'kd'}={{...}})" if names else
                          f"method 'none' takes no options, got {sorted(options)}")
    if len(names) == 1:
        per_method.setdefault(names[0], {}).update(options)

    student_info = NetworkInfo.of(student)
    needs_teacher = any(c.uses_teacher for c in classes)
    teacher_info = None
    if needs_teacher:
        if teacher is None:
            raise ConfigError(f"method {method!r} needs a teacher model")
        teacher_info = NetworkInfo.of(teacher)
        check_pair(teacher_info, student_info)
    methods = [cls(student_info, teacher_info, cls.parse_options(per_method.get(cls.name, {})))
               for cls in classes]
    return Distiller(student, teacher if needs_teacher else None, methods, **shared)


def check_pair(teacher: NetworkInfo, student: NetworkInfo) -> None:
    """Teacher and student must agree on stage count, strides and classes."""
    if len(teacher.widths) != len(student.widths):
        raise ConfigError(f"teacher has {len(teacher.widths)} stages but student has "
                          f"{len(student.widths)}; distillation pairs stages one to one")
    if teacher.strides != student.strides:
        raise ConfigError(f"teacher strides {teacher.strides} differ from student strides "
                          f"{student.strides}")
    if teacher.num_classes != student.num_classes:
        raise ConfigError(f"teacher predicts {teacher.num_classes} classes but student "
                          f"{student.num_classes}")
