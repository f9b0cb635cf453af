"""transkd: distil large semantic-segmentation transformers into small, fast students."""

from .distill import create_distiller, list_methods
from .host_memory import reuse_freed_memory
from .models import create_model, list_models
from .weights import load_model

__version__ = "0.1.0"

#: The older name of :func:`load_model`, kept for code written against it.
load_student = load_model


__all__ = ["__version__", "create_distiller", "create_model", "list_methods", "list_models",
           "load_model", "load_student", "reuse_freed_memory"]
