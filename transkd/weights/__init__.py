"""Weights in and out: safetensors I/O, loading a saved network, key maps from other codebases,
importing foreign checkpoints and writing Hugging Face folders."""

from .convert import (
    ConvertedState,
    convert_state_dict,
    detect_format,
    export_state_dict,
    load_converted,
    read_weights,
    unwrap_state_dict,
)
from .hf import write_hf_folder
from .importer import ImportResult, import_checkpoint
from .io import (
    atomic_write,
    class_names_of,
    load_model,
    load_state_strict,
    model_file,
    read_metadata,
    read_safetensors,
    save_model,
    save_state_dict,
    torch_load_tensors,
)

__all__ = ["ConvertedState", "ImportResult", "atomic_write", "class_names_of", "convert_state_dict",
           "detect_format", "export_state_dict", "import_checkpoint", "load_converted", "load_model",
           "load_state_strict", "model_file", "read_metadata", "read_safetensors", "read_weights",
           "save_model", "save_state_dict", "torch_load_tensors", "unwrap_state_dict", "write_hf_folder"]
