"""Training/evaluation protocols: "paper" (TransKD's recipe) and "standard" (mmsegmentation's).

A protocol is a :class:`Protocol` registered by name, built from the config's
:class:`ProtocolOptions`; importing this package registers the built-in ones.
"""

from . import paper, standard  # noqa: F401  (registers the built-in protocols)
from .base import Protocol, build_transform, get_protocol, list_protocols, register_protocol
from .dataset import TransformedDataset, UnlabelledTransformedDataset
from .options import CLASS_WEIGHT_MODES, ProtocolOptions
from .weights import (
    ERFNET_CITYSCAPES_WEIGHTS,
    ERFNET_DATASETS,
    class_weights,
    median_frequency_weights,
)

__all__ = ["CLASS_WEIGHT_MODES", "ERFNET_CITYSCAPES_WEIGHTS", "ERFNET_DATASETS", "Protocol",
           "ProtocolOptions", "TransformedDataset", "UnlabelledTransformedDataset", "build_transform",
           "class_weights", "get_protocol", "list_protocols", "median_frequency_weights", "register_protocol"]
