"""Export the student alone: ONNX with dynamic batch, height and width, or a re-saved safetensors.

Two exporters of torch 2.13 handle these networks (SDPA attention, interpolation to a size read
from the input) with identical numbers:

- ``"dynamo"`` (default): ``torch.onnx.export(dynamo=True)`` on ``torch.export`` with
  ``Dim.DYNAMIC`` batch/height/width — torch's default and maintained exporter (opset 18+).
- ``"torchscript"``: the legacy tracer with ``dynamic_axes``; about 15× faster to export, but
  deprecated by torch.

The graph takes the normalised image (batch, 3, height, width) float32 and returns logits
(batch, classes, ⌈height/4⌉, ⌈width/4⌉), like ``model(x)``. It runs at any size the PyTorch model
accepts — odd sizes included; MiT/PVTv2 need both sides ≥ 29 px (the stage-1 spatial reduction
is an 8×8 conv on the 1/4 grid). Before the file appears, onnxruntime runs it on random inputs of
sizes other than the export size and compares it with PyTorch; a difference above the tolerance
means no file is written.

``precision`` other than fp32 (:mod:`transkd.deploy.quantize`: fp16, int8-dynamic, int8-static)
exports and checks the fp32 graph first, then writes the lowered copy; the lowered graph is run
on the same inputs and its difference from PyTorch and its arg-max agreement are reported, not
held to the tolerance (quantisation error is expected; its accuracy is measured with
``transkd eval`` on the ``.onnx`` file).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import math
import tempfile
import time
import types
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import ConfigError, TranskdError
from ..inference import is_size
from ..jsonsafe import json_safe
from ..models.layers import EfficientSelfAttention, grid_to_tokens, tokens_to_grid
from ..models.onnx_graph import onnx_session
from ..progress import Progress
from ..weights.io import atomic_write, save_model
from . import Student
from .quantize import QuantizeOptions, checked_calibration, lower_precision

EXPORTERS = ("dynamo", "torchscript")
#: "standard": attention as ONNX MatMul/Softmax; "fused": onnxruntime's MultiHeadAttention kernel.
ATTENTIONS = ("standard", "fused")
FORMATS = ("onnx", "safetensors")
INPUT_NAME, OUTPUT_NAME = "image", "logits"
#: The legacy exporter's opset when none is asked for (the dynamo exporter picks its own).
TORCHSCRIPT_DEFAULT_OPSET = 17
#: Metadata every saved student has; the rest is copied as-is on re-export.
CORE_METADATA = ("architecture", "num_classes", "mean", "std", "format_version")


class ExportError(TranskdError):
    """The export failed or its result does not match PyTorch."""


@dataclass
class ParityCheck:
    """One onnxruntime-vs-PyTorch comparison on a random input."""

    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    max_abs_diff: float
    argmax_agreement: float = 1.0  # share of output positions whose arg-max class matches PyTorch


@dataclass
class ExportResult:
    path: Path
    format: str
    exporter: str | None = None
    opset: int | None = None
    export_size: tuple[int, int] | None = None
    size_reason: str = ""
    tolerance: float | None = None
    checks: list[ParityCheck] = field(default_factory=list)
    seconds: float = 0.0
    precision: str = "fp32"
    lowering: dict[str, Any] = field(default_factory=dict)
    lowered_checks: list[ParityCheck] = field(default_factory=list)

    @property
    def max_abs_diff(self) -> float:
        return max((c.max_abs_diff for c in self.checks), default=0.0)


def default_check_sizes(height: int, width: int) -> list[tuple[int, int, int]]:
    """Two (batch, height, width) inputs unlike the export one: larger, then batch 2 at odd sizes."""
    larger = (1, height + 32, width + 32)
    odd = (2, max(33, height // 2 + 1), max(33, width // 2 + 3))
    if odd[1:] == (height, width):
        odd = (2, height + 1, width + 3)
    return [larger, odd]


def export_onnx(model: nn.Module, path: str | Path, *, input_size: Sequence[int] = (512, 1024),
                opset: int | None = None, exporter: str = "dynamo",
                check_sizes: Sequence[Sequence[int]] | None = None, tolerance: float | None = 1e-4,
                metadata: dict[str, Any] | None = None, progress: bool = False,
                quantize: QuantizeOptions | None = None, calibration: Any = None,
                attention: str = "standard") -> ExportResult:
    """Write ``model`` as ONNX to ``path`` after checking it with onnxruntime.

    ``check_sizes`` are (batch, height, width) inputs (default :func:`default_check_sizes`);
    ``tolerance`` None skips the check. ``metadata`` goes into the ONNX ``metadata_props``
    (JSON-encoded values) so the file carries classes, palette and normalisation along.
    ``progress``: a bar over the steps (graph export, then each parity check) on a terminal, a
    line per step in a log; the graph export is one opaque call, so the bar moves in steps.
    ``quantize``: the precision to write (default fp32); ``calibration``: images for int8-static
    (an iterable of float32 (1, 3, H, W) arrays or tensors, or a callable returning one, called
    only after the fp32 graph passed its check).
    """
    if attention not in ATTENTIONS:
        raise ConfigError(f"--attention must be one of {', '.join(ATTENTIONS)}, got {attention!r}")
    if attention == "fused" and exporter != "torchscript":
        raise ConfigError("--attention fused needs --exporter torchscript (the fused onnxruntime "
                          "operator is written by the legacy exporter's symbolic functions)")
    quantize = (quantize or QuantizeOptions()).validate()
    lowered = quantize.precision != "fp32"
    if quantize.precision == "int8-static" and calibration is None:
        raise ConfigError("--precision int8-static needs calibration images: give --calibration-data "
                          "ROOT (the dataset the network was trained on)")
    if exporter not in EXPORTERS:
        raise ConfigError(f"exporter must be one of {', '.join(EXPORTERS)}, got {exporter!r}")
    if tolerance is not None and not (isinstance(tolerance, (int, float)) and tolerance >= 0):
        raise ConfigError(f"tolerance must be a non-negative number, got {tolerance!r}")
    if opset is not None and (isinstance(opset, bool) or not isinstance(opset, int) or opset < 7):
        raise ConfigError(f"opset must be an integer of at least 7, got {opset!r}")
    path = _output_file(path)
    _require_onnx_packages(exporter)
    height, width = (int(v) for v in input_size)
    sizes = [tuple(int(v) for v in s) for s in (check_sizes or default_check_sizes(height, width))]
    model.eval()
    result = ExportResult(path, "onnx", exporter, export_size=(height, width), tolerance=tolerance,
                          precision=quantize.precision)
    start = time.perf_counter()
    steps = 1 + (len(sizes) if tolerance is not None else 0) + (1 + len(sizes) if lowered else 0)
    bar = Progress(steps, description="export", unit="step", enabled=progress, interval=1)

    def write_fp32(tmp: str) -> None:
        sample = torch.randn(1, 3, height, width, generator=torch.Generator().manual_seed(0))
        with fused_attention(model) if attention == "fused" else contextlib.nullcontext():
            _export_graph(model, sample, tmp, exporter, opset)
        result.opset = _finish_onnx(tmp, model, {**(metadata or {}), "precision": "fp32",
                                                 "attention": attention})
        bar.update(1, done="graph")
        if tolerance is None:
            return
        result.checks = check_parity(model, tmp, sizes, on_check=lambda: bar.update(1, done="parity"))
        worst = max(result.checks, key=lambda c: c.max_abs_diff)
        if not worst.max_abs_diff <= tolerance:  # also catches NaN
            raise ExportError(
                f"the ONNX graph differs from PyTorch by up to {worst.max_abs_diff:.3g} (input "
                f"{'x'.join(map(str, worst.input_shape))}), above the tolerance {tolerance:g}; "
                f"nothing was written to {path}")

    def write(tmp: str) -> None:
        if not lowered:
            write_fp32(tmp)
            return
        with tempfile.TemporaryDirectory(prefix="transkd-export-") as folder:
            fp32 = str(Path(folder) / "fp32.onnx")
            write_fp32(fp32)
            images = calibration() if callable(calibration) else calibration
            if quantize.precision == "int8-static":
                images = checked_calibration(images, height, width)
            result.lowering = lower_precision(fp32, tmp, quantize, images, input_name=INPUT_NAME)
        _finish_onnx(tmp, model, {**(metadata or {}), **result.lowering,
                                  "precision": quantize.precision})
        bar.update(1, done=quantize.precision)
        result.lowered_checks = check_parity(model, tmp, sizes,
                                             on_check=lambda: bar.update(1, done="parity"))

    try:
        atomic_write(path, write)
    finally:
        bar.close()
    result.seconds = time.perf_counter() - start
    return result


def _require_onnx_packages(exporter: str) -> None:
    needed = ["onnx", "onnxruntime"] + (["onnxscript"] if exporter == "dynamo" else [])
    missing = [name for name in needed if importlib.util.find_spec(name) is None]
    if missing:
        raise ConfigError(f"ONNX export needs the package(s) {', '.join(missing)}: "
                          "pip install 'transkd[onnx]'")


def _output_file(path: str | Path) -> Path:
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"output {path} is a folder; give a file name such as {path / 'student.onnx'}")
    if path.parent.exists() and not path.parent.is_dir():
        raise ConfigError(f"cannot write {path}: {path.parent} is a file, not a folder")
    return path


class _MultiHeadAttention(torch.autograd.Function):
    """SDPA over (batch, tokens, channels) query/key/value, exported as onnxruntime's fused
    ``com.microsoft::MultiHeadAttention`` (one kernel instead of MatMul, Softmax, MatMul with the
    attention matrix in memory). PyTorch computes the same thing while the graph is traced."""

    @staticmethod
    def forward(ctx, q, k, v, num_heads: int, scale: float):  # noqa: ARG004 (autograd signature)
        batch, tokens, channels = q.shape
        head = channels // num_heads

        def heads(t):
            return t.reshape(batch, -1, num_heads, head).transpose(1, 2)

        out = torch.nn.functional.scaled_dot_product_attention(heads(q), heads(k), heads(v), scale=scale)
        return out.transpose(1, 2).reshape(batch, tokens, channels)

    @staticmethod
    def symbolic(g, q, k, v, num_heads: int, scale: float):
        out = g.op("com.microsoft::MultiHeadAttention", q, k, v, num_heads_i=num_heads, scale_f=scale)
        out.setType(q.type())
        return out


def _fused_attention_forward(self, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    q = self.q(x)
    if self.sr_ratio > 1:
        x = self.norm(grid_to_tokens(self.sr(tokens_to_grid(x, height, width))))
    k, v = self.kv(x).chunk(2, dim=-1)  # kv's channels are [key heads | value heads]
    return self.proj_drop(self.proj(_MultiHeadAttention.apply(q, k, v, self.num_heads, self.scale)))


@contextlib.contextmanager
def fused_attention(model: nn.Module) -> Iterator[int]:
    """While active, every efficient self-attention of ``model`` (MiT, PVTv2) traces as one
    ``com.microsoft::MultiHeadAttention`` node (legacy exporter only); yields how many."""
    patched = [m for m in model.modules() if isinstance(m, EfficientSelfAttention)]
    for module in patched:
        module.forward = types.MethodType(_fused_attention_forward, module)
    try:
        yield len(patched)
    finally:
        for module in patched:
            del module.forward


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Hide the exporters' progress lines, deprecation notes and tracer warnings (all expected)."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def _run_eager(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """``model(images)`` as float32 on the CPU; a model that cannot take this size is a ConfigError."""
    param = next(model.parameters())
    try:
        with torch.inference_mode():
            return model(images.to(param.device)).float().cpu()
    except RuntimeError as exc:
        name = getattr(model, "model_name", type(model).__name__)
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        size = "x".join(map(str, images.shape))
        raise ConfigError(f"{name} cannot run on an input of {size} ({reason})") from None


def _export_graph(model: nn.Module, sample: torch.Tensor, path: str, exporter: str,
                  opset: int | None) -> None:
    name = getattr(model, "model_name", type(model).__name__)
    _run_eager(model, sample)
    try:
        with _quiet_exporter(), torch.no_grad():
            if exporter == "dynamo":
                dynamic = torch.export.Dim.DYNAMIC
                program = torch.onnx.export(
                    model, (sample,), dynamo=True, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                    dynamic_shapes=({0: dynamic, 2: dynamic, 3: dynamic},), opset_version=opset,
                    verbose=False)
                program.save(path, external_data=False)
            else:
                axes = {INPUT_NAME: {0: "batch", 2: "height", 3: "width"},
                        OUTPUT_NAME: {0: "batch", 2: "logit_height", 3: "logit_width"}}
                torch.onnx.export(model, (sample,), path, dynamo=False, input_names=[INPUT_NAME],
                                  output_names=[OUTPUT_NAME], dynamic_axes=axes,
                                  opset_version=opset or TORCHSCRIPT_DEFAULT_OPSET, verbose=False)
    except Exception as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        other = "torchscript" if exporter == "dynamo" else "dynamo"
        raise ExportError(f"exporting {name} at {sample.shape[2]}x{sample.shape[3]} with the {exporter} "
                          f"exporter failed ({reason}); the {other} exporter may work") from exc


def _finish_onnx(path: str, model: nn.Module, metadata: dict[str, Any] | None) -> int:
    """Store the student's metadata in the graph; returns the default-domain opset."""
    import onnx  # deferred: an optional dependency (the onnx extra)

    graph = onnx.load(path)
    props = {key: json.dumps(json_safe(value)) for key, value in (metadata or {}).items()}
    props.update(
        input=f"{INPUT_NAME}: float32 (batch, 3, height, width), RGB scaled to [0, 1] then normalised "
              "with 'mean'/'std'",
        output=f"{OUTPUT_NAME}: float32 (batch, classes, ceil(height/4), ceil(width/4))",
        producer="transkd")
    props.setdefault("architecture", json.dumps(getattr(model, "model_name", type(model).__name__)))
    props.setdefault("num_classes", json.dumps(getattr(model, "num_classes", None)))
    del graph.metadata_props[:]
    for key, value in sorted(props.items()):
        graph.metadata_props.add(key=key, value=value)
    onnx.save(graph, path)
    return next((o.version for o in graph.opset_import if o.domain in ("", "ai.onnx")), 0)


def check_parity(model: nn.Module, onnx_path: str | Path, sizes: Sequence[Sequence[int]],
                 seed: int = 0, on_check: Callable[[], None] | None = None) -> list[ParityCheck]:
    """Max |onnxruntime − PyTorch| of the logits on random inputs of each (batch, height, width);
    ``on_check`` is called after each size (progress)."""
    session = onnx_session(onnx_path)
    input_name = session.get_inputs()[0].name
    generator = torch.Generator().manual_seed(seed)
    checks = []
    for batch, height, width in sizes:
        images = torch.randn(batch, 3, height, width, generator=generator)
        expected = _run_eager(model, images).numpy()
        try:
            actual = session.run(None, {input_name: images.numpy()})[0]
        except Exception as exc:  # onnxruntime's own error types; the graph froze a shape somewhere
            reason = str(exc).strip().splitlines()[0][-200:] if str(exc).strip() else type(exc).__name__
            raise ExportError(f"the ONNX graph fails on input {batch}x3x{height}x{width} although PyTorch "
                              f"runs it, so it does not generalise from the export size ({reason})") from None
        if actual.shape != expected.shape:
            raise ExportError(f"the ONNX graph gives logits of shape {actual.shape} for input "
                              f"{batch}x3x{height}x{width}, PyTorch {expected.shape}")
        diff = float(np.abs(actual.astype(np.float64) - expected).max()) if actual.size else 0.0
        agreement = float((actual.argmax(axis=1) == expected.argmax(axis=1)).mean()) if actual.size else 1.0
        checks.append(ParityCheck((batch, 3, height, width), tuple(actual.shape),
                                  diff if math.isfinite(diff) else math.inf, agreement))
        if on_check is not None:
            on_check()
    return checks


#: The example input when neither the caller nor the student's metadata gives a size.
DEFAULT_EXPORT_SIZE = (512, 1024)


def training_input_size(metadata: dict[str, Any]) -> tuple[tuple[int, int], str]:
    """(height, width) the student was trained at, from its metadata, and where that came from:
    the standard protocol's training crop or the paper protocol's fixed image size; else
    :data:`DEFAULT_EXPORT_SIZE`."""
    protocol = metadata.get("protocol_options")
    if isinstance(protocol, dict):
        crop, image = protocol.get("crop_size"), protocol.get("image_size")
        if protocol.get("name") == "standard" and is_size(crop):
            return (int(crop[0]), int(crop[1])), "the training crop size in the student's metadata"
        if protocol.get("name") == "paper" and is_size(image):
            return (int(image[0]), int(image[1])), "the training image size in the student's metadata"
    resize = metadata.get("resize")
    if isinstance(resize, dict) and is_size(resize.get("size")):
        return (int(resize["size"][0]), int(resize["size"][1])), \
            "the input size in the student's metadata"
    return DEFAULT_EXPORT_SIZE, "the default: the student's metadata records no fixed training size"


def export_input_size(metadata: dict[str, Any], given: Sequence[int | None] | None
                      ) -> tuple[tuple[int, int], str]:
    """The example input's (height, width): ``given``, a missing side (None) or size taken from
    :func:`training_input_size`; and why."""
    trained, why = training_input_size(metadata)
    given = tuple(given) if given is not None else (None, None)
    size = tuple(trained[i] if given[i] is None else given[i] for i in range(2))
    if given != (None, None):
        why = "as given" if None not in given else f"as given, the other side from {why}"
    if not is_size(size):
        raise ConfigError(f"--input-size must be two positive integers (height width), got "
                          f"{size[0]} {size[1]}")
    return size, why


def export_student(student: Student, path: str | Path, *, format: str | None = None,
                   input_size: Sequence[int | None] | None = None, **onnx_options: Any) -> ExportResult:
    """Export a loaded student as ``format`` ("onnx", "safetensors"; default from the file suffix).

    The ONNX example input is ``input_size`` (height, width); a missing side (None) or a missing
    size is the size the student was trained at (:func:`training_input_size`).
    """
    path = Path(path)
    format = format or ("safetensors" if path.suffix.lower() == ".safetensors" else "onnx")
    if format not in FORMATS:
        raise ConfigError(f"format must be one of {', '.join(FORMATS)}, got {format!r}")
    extra = {k: v for k, v in student.metadata.items() if k not in CORE_METADATA}
    if format == "safetensors":
        start = time.perf_counter()
        saved = save_model(student.model, _output_file(path), **extra)
        return ExportResult(saved, "safetensors", seconds=time.perf_counter() - start)
    size, why = export_input_size(student.metadata, input_size)
    metadata = {"architecture": student.name, "num_classes": int(student.model.num_classes),
                "mean": list(student.mean), "std": list(student.std),
                "class_names": list(student.class_names), "palette": [list(c) for c in student.palette],
                **{k: v for k, v in extra.items() if k not in ("class_names", "palette")}}
    result = export_onnx(student.model, path, metadata=metadata, input_size=size, **onnx_options)
    result.size_reason = why
    return result


def export_model(model: str | Path, output: str | Path, *, last: bool = False,
                 format: str | None = None, input_size: Sequence[int | None] | None = None,
                 check_sizes: Sequence[Sequence[int]] | None = None,
                 announce: Callable[[str], None] | None = None, **onnx_options: Any) -> ExportResult:
    """What ``transkd export`` runs: load the student at ``model`` (file or run folder; ``last``:
    its last network) and export it with :func:`export_student`. ``announce`` hears which student
    was loaded before the (long) export starts; ``progress=True`` (an ONNX option) shows its steps."""
    if check_sizes and any(v < 1 for triple in check_sizes for v in triple):
        raise ConfigError("--check-size takes three positive integers (batch height width)")
    quantize = onnx_options.get("quantize")
    suffix_format = "safetensors" if str(output).lower().endswith(".safetensors") else "onnx"
    onnx_output = (format or suffix_format) == "onnx"
    if quantize is not None and quantize.validate().precision != "fp32" and not onnx_output:
        raise ConfigError(f"--precision {quantize.precision} applies to ONNX output only; give an .onnx "
                          "output or --format onnx")
    static = quantize is not None and quantize.precision == "int8-static"
    if static and onnx_options.get("calibration") is None:
        raise ConfigError("--precision int8-static needs calibration images: give --calibration-data "
                          "ROOT (the dataset the network was trained on)")
    student = Student.load(model, last=last)
    if announce is not None:
        announce(f"student: {student.describe()}")
    if not onnx_output:
        return export_student(student, output, format=format)
    size, why = export_input_size(student.metadata, input_size)
    if announce is not None:
        announce(f"input size: {size[0]}x{size[1]} ({why})")
    checks = [tuple(triple) for triple in check_sizes] if check_sizes else None
    return export_student(student, output, format=format, input_size=size, check_sizes=checks,
                          **onnx_options)
