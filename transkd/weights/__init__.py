"""Weights in and out: safetensors I/O and key maps from other codebases."""

from .io import (
    atomic_write,
    load_model,
    load_state_strict,
    read_safetensors,
    save_model,
    save_state_dict,
    torch_load_tensors,
)

__all__ = ["atomic_write", "load_model", "load_state_strict", "read_safetensors", "save_model",
           "save_state_dict", "torch_load_tensors"]
