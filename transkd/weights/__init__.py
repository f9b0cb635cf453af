"""Weights in and out: safetensors I/O and key maps from other codebases."""

from .convert import (
    ConvertedState,
    convert_state_dict,
    detect_format,
    export_state_dict,
    load_converted,
    read_weights,
    unwrap_state_dict,
)
from .io import (
    atomic_write,
    load_model,
    load_state_strict,
    read_safetensors,
    save_model,
    save_state_dict,
    torch_load_tensors,
)

__all__ = ["ConvertedState", "atomic_write", "convert_state_dict", "detect_format", "export_state_dict",
           "load_converted", "load_model", "load_state_strict", "read_safetensors", "read_weights",
           "save_model", "save_state_dict", "torch_load_tensors", "unwrap_state_dict"]
