"""Distillation: the Distiller, its methods (one module each) and their losses.

Importing this package imports every method module, which registers its methods.
"""

from . import transkd  # noqa: F401  (registers transkd_base/gl/ea, csf_only, pea_only)
from .base import DistillContext, Distiller, DistillMethod, NetworkInfo, cross_entropy_loss, freeze
from .registry import create_distiller, get_method, list_methods, register_method

__all__ = ["DistillContext", "DistillMethod", "Distiller", "NetworkInfo", "create_distiller",
           "cross_entropy_loss", "freeze", "get_method", "list_methods", "register_method"]
