"""transkd: distil large semantic-segmentation transformers into small, fast students."""

from .distill import create_distiller, list_methods
from .models import create_model, list_models
from .weights import load_model

__version__ = "0.1.0"


def load_student(path: str, map_location: str = "cpu"):
    """Rebuild a saved student (or teacher) from its ``.safetensors`` file alone."""
    return load_model(path, map_location=map_location)


__all__ = ["__version__", "create_distiller", "create_model", "list_methods", "list_models",
           "load_model", "load_student"]
