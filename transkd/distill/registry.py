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
    Options shared by the Distiller itself: ``criterion``, ``ce_weight``, ``ignore_index`` and
    ``class_map`` (for each student class, the teacher's logit channel).

    Teacher and student may be of any family: every method states what it reads (logits, feature
    maps, patch embeddings) and a pair that cannot provide it fails here, before any training.
    """
    shared = {k: options.pop(k) for k in ("criterion", "ce_weight", "ignore_index", "class_map")
              if k in options}
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
    parsed = [(cls, cls.parse_options(per_method.get(cls.name, {}))) for cls in classes]
    for cls, opts in parsed:
        if cls.uses_teacher:
            check_pair(cls.name, cls.needs(opts), teacher_info, student_info, shared.get("class_map"))
    methods = [cls(student_info, teacher_info, opts) for cls, opts in parsed]
    return Distiller(student, teacher if needs_teacher else None, methods, **shared)


def check_pair(method: str, needs: tuple[str, ...], teacher: NetworkInfo, student: NetworkInfo,
               class_map: list[int] | tuple[int, ...] | None = None) -> None:
    """One sentence naming the method, the network and what it lacks, if the pair cannot serve
    ``method``."""
    words = {"logits": "class logits", "features": "multi-scale feature maps",
             "embeddings": "patch embeddings"}
    for need in needs:
        for role, info in (("student", student), ("teacher", teacher)):
            if not info.has(need):
                extra = (" (a network without a patch-embedding stage, such as a CNN, has none)"
                         if need == "embeddings" else "")
                raise ConfigError(f"method {method!r} needs {words[need]} from both networks, but "
                                  f"the {role} {info.name or 'network'} has none{extra}")
    if "logits" not in needs:
        return
    if class_map is None:
        if teacher.num_classes != student.num_classes:
            raise ConfigError(f"method {method!r} compares class scores, but the teacher "
                              f"{teacher.name or 'network'} predicts {teacher.num_classes} classes and "
                              f"the student {student.num_classes}; give teacher.class_map (the teacher "
                              "class of each student class)")
        return
    if len(class_map) != student.num_classes or not all(
            isinstance(c, int) and 0 <= c < teacher.num_classes for c in class_map):
        raise ConfigError(f"teacher.class_map must list, for each of the student's "
                          f"{student.num_classes} classes, a teacher class in 0..{teacher.num_classes - 1}, "
                          f"got {list(class_map)}")
