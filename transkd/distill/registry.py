"""Method names → classes; the one reading of a method string (``a+b``), of whether it needs a
teacher and of its options; ``create_distiller`` that assembles a Distiller from them."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from torch import nn

from ..errors import ConfigError
from ..options import Keys
from .base import Distiller, DistillMethod, NetworkInfo

_METHODS: dict[str, type[DistillMethod]] = {}
#: How errors name method options outside a config file.
OPTION_KEYS = Keys(noun="option")


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


def parse_method(method: str) -> list[str]:
    """``"transkd_base+kd"`` → ``["transkd_base", "kd"]``; ``"none"`` (or nothing) → ``[]``."""
    names = [n.strip() for n in method.split("+") if n.strip()] if method else []
    if names == ["none"]:
        return []
    if len(set(names)) != len(names):
        raise ConfigError(f"method {method!r} names a method twice")
    return names


def method_classes(method: str) -> list[type[DistillMethod]]:
    """The registered class of every method of ``method``."""
    return [get_method(name) for name in parse_method(method)]


def needs_teacher(method: str) -> bool:
    """Whether any method of ``method`` reads the teacher (``none`` never does)."""
    return any(cls.uses_teacher for cls in method_classes(method))


def parse_method_options(method: str, options: Mapping[str, Any],
                         keys: Keys = OPTION_KEYS) -> dict[str, Any]:
    """Each method's checked ``Options``, by name.

    With one method its options may be given directly; with several, each method's options are a
    mapping under its name (``{kd: {temperature: 4.0}}``), which one method may use as well.
    """
    classes = method_classes(method)
    if not classes:
        if options:
            raise ConfigError(f"{keys.name('')} must be empty for method 'none', got {sorted(options)}")
        return {}
    names = [cls.name for cls in classes]
    nested = {n for n in names if isinstance(options.get(n), Mapping)}
    flat = {k: v for k, v in options.items() if k not in nested}
    if flat and len(classes) > 1:
        raise ConfigError(f"{keys.name('')} must hold one mapping per method ({', '.join(names)}); "
                          f"unexpected {sorted(flat)}")
    parsed = {}
    for cls in classes:
        if cls.name in nested:
            values, method_keys = {**flat, **options[cls.name]}, keys.child(cls.name)
        else:
            values, method_keys = flat, keys
        if keys.noun != "config key":
            method_keys = dataclasses.replace(method_keys, owner=f" for method {cls.name!r}")
        parsed[cls.name] = cls.parse_options(values, method_keys)
    return parsed


def create_distiller(method: str, teacher: nn.Module | None, student: nn.Module,
                     **options: Any) -> Distiller:
    """Build a Distiller for ``method`` (``"transkd_base"``, ``"kd"``, ``"transkd_base+kd"``,
    ``"none"``).

    Options are keyword arguments. With several methods, give each its own options as a dict
    under its name (``kd={"temperature": 4.0}``); with one method, plain keywords work too.
    Options shared by the Distiller itself: ``criterion``, ``ce_weight``, ``ignore_index``,
    ``class_map`` (for each student class, the teacher's logit channel) and
    ``pseudo_label_threshold``/``pseudo_label_weight`` (see :class:`Distiller`).

    Teacher and student may be of any family: every method states what it reads (logits, feature
    maps, patch embeddings) and a pair that cannot provide it fails here, before any training.
    """
    shared = {k: options.pop(k) for k in ("criterion", "ce_weight", "ignore_index", "class_map",
                                          "pseudo_label_threshold", "pseudo_label_weight")
              if k in options}
    classes = method_classes(method)
    parsed = parse_method_options(method, options)
    student_info = NetworkInfo.of(student)
    teacher_info = None
    if needs_teacher(method):
        if teacher is None:
            raise ConfigError(f"method {method!r} needs a teacher model")
        teacher_info = NetworkInfo.of(teacher)
    for cls in classes:
        if cls.uses_teacher:
            check_pair(cls.name, cls.needs(parsed[cls.name]), teacher_info, student_info,
                       shared.get("class_map"))
    methods = [cls(student_info, teacher_info, parsed[cls.name]) for cls in classes]
    return Distiller(student, teacher if teacher_info is not None else None, methods, **shared)


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
