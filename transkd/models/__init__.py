"""Networks: hierarchical transformer encoders, decode heads and segmentors, by name."""

from . import lvt, mit, pvtv2, segmentor  # noqa: F401  (registers the models)
from .lvt import LVTConfig, LVTEncoder
from .mit import EncoderConfig, EncoderOutput, HierarchicalEncoder
from .registry import UnknownModelError, create_model, get_entry, list_models, register_model
from .segmentor import IMAGENET_MEAN, IMAGENET_STD, SegmentationOutput, Segmentor, normalisation_of

__all__ = [
    "EncoderConfig", "EncoderOutput", "HierarchicalEncoder", "IMAGENET_MEAN", "IMAGENET_STD",
    "LVTConfig", "LVTEncoder", "SegmentationOutput", "Segmentor", "UnknownModelError",
    "create_model", "get_entry",
    "list_models", "normalisation_of", "register_model",
]
