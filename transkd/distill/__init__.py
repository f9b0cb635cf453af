"""Distillation: the Distiller, its methods (one module each) and their losses.

Importing this package imports every method module, which registers its methods.
"""

# Method modules: importing one registers its methods (see ``registry.register_method``).
from . import af_dcd, cirkd, cwd, dist, fitnet, ifvd, kd, review_kd, skd, transkd  # noqa: F401
from .base import DistillContext, Distiller, DistillMethod, NetworkInfo, cross_entropy_loss, freeze
from .registry import (
    create_distiller,
    get_method,
    list_methods,
    method_classes,
    needs_teacher,
    parse_method,
    parse_method_options,
    register_method,
)

__all__ = ["DistillContext", "DistillMethod", "Distiller", "NetworkInfo", "create_distiller",
           "cross_entropy_loss", "freeze", "get_method", "list_methods", "method_classes", "needs_teacher",
           "parse_method", "parse_method_options", "register_method"]
