"""An exported ONNX graph behind the network contract: ``model(x)`` returns logits as a tensor.

``transkd export`` writes the student's metadata (architecture, classes, mean/std, dataset,
protocol, precision) into the graph's metadata properties as JSON; :class:`OnnxSegmentor` reads
it back, so an ``.onnx`` file is evaluated, benchmarked or used for prediction with the same data
pipeline as the ``.safetensors`` it came from. The graph runs in onnxruntime on the CPU; PyTorch
only carries the tensors in and out.

onnxruntime is imported inside the functions: it is an optional dependency (the ``onnx`` extra).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import ConfigError

ONNX_SUFFIX = ".onnx"


def is_onnx_file(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() == ONNX_SUFFIX


def onnx_session(path: str | os.PathLike, threads: int | None = None, optimization: str = "all",
                 profile_prefix: str | None = None):
    """An onnxruntime CPU session. ``threads`` fixes the intra-op thread count (sequential
    execution, one inter-op thread); ``optimization`` is the graph optimisation level ("none",
    "basic", "extended", "all"); ``profile_prefix`` switches onnxruntime's per-operator profiler on."""
    try:
        import onnxruntime as ort  # deferred: an optional dependency (the onnx extra)
    except ImportError:
        raise ConfigError("running an ONNX file needs onnxruntime: pip install 'transkd[onnx]'") from None
    levels = {"none": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
              "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
              "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
              "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}
    if optimization not in levels:
        raise ConfigError(f"graph optimisation must be one of {', '.join(levels)}, got {optimization!r}")
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.graph_optimization_level = levels[optimization]
    if threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    if profile_prefix is not None:
        options.enable_profiling = True
        options.profile_file_prefix = profile_prefix
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime's own error types: not a graph it can load
        reason = str(exc).strip().splitlines()[0][-200:] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"onnxruntime cannot load {path} ({reason})") from None


def _decoded(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def onnx_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The metadata properties of an ONNX file, JSON values decoded (plain strings stay strings)."""
    try:
        import onnx  # deferred: an optional dependency (the onnx extra)
    except ImportError:
        raise ConfigError("reading an ONNX file needs the onnx package: "
                          "pip install 'transkd[onnx]'") from None
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"ONNX file {path} does not exist")
    try:
        graph = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # onnx's decode errors
        raise ConfigError(f"{path} is not a readable ONNX file ({type(exc).__name__})") from None
    return {p.key: _decoded(p.value) for p in graph.metadata_props}


class OnnxSegmentor(nn.Module):
    """An ONNX graph written by ``transkd export``, run by onnxruntime, called like the network.

    ``model_name`` is the architecture and the graph's precision (``segformer_b0 (onnx int8-static)``),
    ``num_classes`` and ``input_mean``/``input_std`` come from the metadata, so evaluation and
    prediction prepare images as for the original network. Inputs and outputs are float32 tensors
    on the CPU; ``threads`` fixes onnxruntime's intra-op threads (default: torch's current count).
    """

    def __init__(self, path: str | os.PathLike, threads: int | None = None, optimization: str = "all"):
        super().__init__()
        self.path = Path(path)
        self.metadata = onnx_metadata(self.path)
        classes = self.metadata.get("num_classes")
        if isinstance(classes, bool) or not isinstance(classes, int) or classes < 1:
            raise ConfigError(f"{self.path} records no class count (metadata 'num_classes'); "
                              "export it with 'transkd export'")
        self.num_classes = classes
        self.precision = str(self.metadata.get("precision", "fp32"))
        self.architecture = str(self.metadata.get("architecture", self.path.stem))
        self.model_name = f"{self.architecture} (onnx {self.precision})"
        for key, name in (("mean", "input_mean"), ("std", "input_std")):
            value = self.metadata.get(key)
            if isinstance(value, list) and len(value) == 3:
                setattr(self, name, tuple(float(v) for v in value))
        self.threads = threads if threads is not None else torch.get_num_threads()
        self.session = onnx_session(self.path, threads=self.threads, optimization=optimization)
        self.input_name = self.session.get_inputs()[0].name

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        feed = {self.input_name: np.ascontiguousarray(images.detach().float().cpu().numpy())}
        logits = self.session.run(None, feed)[0]
        return torch.from_numpy(np.asarray(logits, dtype=np.float32)).to(images.device)


__all__ = ["ONNX_SUFFIX", "OnnxSegmentor", "is_onnx_file", "onnx_metadata", "onnx_session"]
