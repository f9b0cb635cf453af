"""Lower-precision copies of an exported fp32 ONNX graph: FP16, dynamic INT8 and static INT8.

- ``fp16``: weights and activations in float16 (onnxruntime's ``float16`` converter), inputs and
  outputs kept float32, so callers feed the same arrays. Meant for GPU execution providers; the
  CPU provider has few float16 kernels and runs the rest through inserted casts.
- ``int8-dynamic``: weights quantised ahead of time, activations quantised per call from their
  observed range (``quantize_dynamic``); no calibration data.
- ``int8-static``: weights and activations quantised ahead of time (``quantize_static``), with
  activation ranges calibrated on real images passed through the network's own evaluation
  transforms; per-channel weights by default. ``quant_pre_process`` (shape inference and graph
  optimisation) runs first, as onnxruntime recommends.

The operator types to quantise, the format (QDQ: QuantizeLinear/DeQuantizeLinear pairs around
float operators that onnxruntime fuses into integer kernels; QOperator: integer operators written
directly), the activation type and ``reduce_range`` are options, because which choice is fastest
depends on the CPU (VNNI/AMX on x86, dot-product instructions on ARM); docs/deployment.md gives
the measurements behind the defaults.

onnx and onnxruntime are imported inside the functions: they are optional dependencies (the
``onnx`` extra).
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError

PRECISIONS = ("fp32", "fp16", "int8-dynamic", "int8-static")
#: ``--precision int8``: the INT8 variant to ship when nothing has been measured on the target.
#: Dynamic ``MatMul`` was the only INT8 scheme faster than onnxruntime fp32 on both CPUs measured
#: (1.07x on AVX2 without VNNI, 1.09-1.14x with AVX-512 VNNI; docs/deployment.md), loses no
#: accuracy on CamVid and needs no calibration images; static ``Conv`` only wins with VNNI.
DEFAULT_INT8 = "int8-dynamic"
PRECISION_CHOICES = (*PRECISIONS, "int8")
QUANT_FORMATS = ("qdq", "qoperator")
ACTIVATION_TYPES = ("u8", "s8")
#: Operator types the static default quantises: measured fastest on AVX-512 VNNI (docs/deployment.md).
DEFAULT_STATIC_OPS = ("Conv",)
#: Operator types the dynamic default quantises (ConvInteger has no fast CPU kernel).
DEFAULT_DYNAMIC_OPS = ("MatMul",)
DEFAULT_CALIBRATION_IMAGES = 16


@dataclass
class QuantizeOptions:
    """How to lower an fp32 graph; every field has the meaning of the ``transkd export`` option."""

    precision: str = "fp32"
    ops: tuple[str, ...] | None = None  # None: DEFAULT_STATIC_OPS / DEFAULT_DYNAMIC_OPS
    per_channel: bool = True
    quant_format: str = "qdq"
    activation_type: str = "u8"
    reduce_range: bool = False
    calibration_method: str = "minmax"
    extra: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> QuantizeOptions:
        if self.precision == "int8":
            self.precision = DEFAULT_INT8
        if self.precision not in PRECISIONS:
            raise ConfigError(f"--precision must be one of {', '.join(PRECISION_CHOICES)}, "
                              f"got {self.precision!r}")
        if self.quant_format not in QUANT_FORMATS:
            raise ConfigError(f"--quant-format must be one of {', '.join(QUANT_FORMATS)}, "
                              f"got {self.quant_format!r}")
        if self.activation_type not in ACTIVATION_TYPES:
            raise ConfigError(f"--activation-type must be one of {', '.join(ACTIVATION_TYPES)}, "
                              f"got {self.activation_type!r}")
        if self.calibration_method not in ("minmax", "entropy", "percentile"):
            raise ConfigError("--calibration-method must be one of minmax, entropy, percentile, "
                              f"got {self.calibration_method!r}")
        if self.ops is not None:
            self.ops = tuple(self.ops)
            if not self.ops:
                raise ConfigError("--quantize-ops needs at least one operator type, e.g. Conv,MatMul")
            known = quantizable_ops(self.precision)
            unknown = [op for op in self.ops if op not in known]
            if unknown and self.precision in ("int8-dynamic", "int8-static"):
                raise ConfigError(f"--quantize-ops: {', '.join(unknown)} cannot be quantised "
                                  f"{'dynamically' if self.precision == 'int8-dynamic' else 'statically'} "
                                  f"by onnxruntime; known types: {', '.join(sorted(known))}")
        return self

    def default_ops(self) -> tuple[str, ...]:
        return DEFAULT_STATIC_OPS if self.precision == "int8-static" else DEFAULT_DYNAMIC_OPS

    def describe(self) -> dict[str, Any]:
        """What the graph's metadata and every table record about the lowering."""
        if self.precision == "fp32":
            return {"precision": "fp32"}
        if self.precision == "fp16":
            return {"precision": "fp16", "io": "float32"}
        ops = list(self.ops or self.default_ops())
        described = {"precision": self.precision, "quantized_ops": ops, "weights": "int8",
                     "per_channel": self.per_channel, "reduce_range": self.reduce_range}
        if self.precision == "int8-static":
            described.update(format=self.quant_format,
                             activations="uint8" if self.activation_type == "u8" else "int8",
                             calibration_method=self.calibration_method)
        return described


def quantizable_ops(precision: str) -> set[str]:
    """Operator types onnxruntime's quantiser handles for a static or dynamic INT8 graph."""
    from onnxruntime.quantization import registry  # deferred: an optional dependency (the onnx extra)

    if precision == "int8-dynamic":
        return set(registry.IntegerOpsRegistry)
    return set(registry.QLinearOpsRegistry) | set(registry.QDQRegistry)


class _Images:
    """onnxruntime's CalibrationDataReader over float32 (1, 3, H, W) arrays."""

    def __init__(self, input_name: str, images: Iterable[Any]):
        self.input_name = input_name
        self.images = iter(images)
        self.count = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        image = next(self.images, None)
        if image is None:
            return None
        array = np.ascontiguousarray(np.asarray(image, dtype=np.float32))
        if array.ndim == 3:
            array = array[None]
        self.count += 1
        return {self.input_name: array}


@contextlib.contextmanager
def _quiet() -> Any:
    """The quantiser logs a warning per LayerNorm weight it cannot quantise per channel."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


#: Calibration images whose area differs from the exported size by more than this factor (either
#: way) would calibrate activation ranges at another scale than the graph will see.
CALIBRATION_SCALE_LIMIT = 4.0


def checked_calibration(images: Iterable[Any], height: int, width: int) -> list[np.ndarray]:
    """The calibration images as float32 (1, 3, h, w) arrays, refused with one sentence when there
    are none, when one is not an RGB image, or when one's size (after the network's evaluation
    transforms) is far from the ``height`` x ``width`` the graph is exported at."""
    arrays = []
    for index, image in enumerate(images):
        array = np.ascontiguousarray(np.asarray(image, dtype=np.float32))
        array = array[None] if array.ndim == 3 else array
        if array.ndim != 4 or array.shape[:2] != (1, 3):
            raise ConfigError(f"calibration image {index} has shape {tuple(array.shape)}, not (1, 3, H, W): "
                              "give --calibration-data the RGB dataset the network was trained on")
        h, w = array.shape[2:]
        ratio = (h * w) / (height * width)
        if not 1 / CALIBRATION_SCALE_LIMIT <= ratio <= CALIBRATION_SCALE_LIMIT:
            raise ConfigError(f"calibration image {index} is {h}x{w} after the evaluation transforms but the "
                              f"graph is exported at {height}x{width} ({ratio:.2g}x the area): activation "
                              "ranges calibrated at another scale do not hold; give --calibration-data the "
                              "dataset the network was trained on, or --input-size the size it will run at")
        arrays.append(array)
    if not arrays:
        raise ConfigError("--calibration-data gave no images to calibrate on")
    return arrays


def lower_precision(fp32_path: str | Path, out_path: str | Path, options: QuantizeOptions,
                    calibration: Iterable[Any] | None = None, input_name: str = "image") -> dict[str, Any]:
    """Write ``fp32_path`` at ``options.precision`` to ``out_path``; returns
    :meth:`QuantizeOptions.describe` plus, for static INT8, the number of calibration images."""
    options.validate()
    described = options.describe()
    if options.precision == "fp32":
        raise ConfigError("lower_precision needs a precision other than fp32")
    if options.precision == "fp16":
        _to_fp16(fp32_path, out_path)
        return described
    from onnxruntime.quantization import (  # deferred: an optional dependency (the onnx extra)
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quant_pre_process,
        quantize_dynamic,
        quantize_static,
    )

    ops = list(options.ops or options.default_ops())
    with tempfile.TemporaryDirectory(prefix="transkd-quant-") as tmp, _quiet():
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=False)
        if options.precision == "int8-dynamic":
            quantize_dynamic(str(prepared), str(out_path), op_types_to_quantize=ops,
                             per_channel=options.per_channel, reduce_range=options.reduce_range,
                             weight_type=QuantType.QInt8)
            return described
        if calibration is None:
            raise ConfigError("--precision int8-static needs calibration images: give --calibration-data "
                              "ROOT (the dataset the network was trained on)")
        reader = _Images(input_name, calibration)
        method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                  "percentile": CalibrationMethod.Percentile}[options.calibration_method]
        quantize_static(
            str(prepared), str(out_path), reader, op_types_to_quantize=ops,
            quant_format=QuantFormat.QDQ if options.quant_format == "qdq" else QuantFormat.QOperator,
            per_channel=options.per_channel, reduce_range=options.reduce_range,
            activation_type=QuantType.QUInt8 if options.activation_type == "u8" else QuantType.QInt8,
            weight_type=QuantType.QInt8, calibrate_method=method,
            calibration_providers=["CPUExecutionProvider"])
        if reader.count == 0:
            raise ConfigError("--calibration-data gave no images to calibrate on")
        described["calibration_images"] = reader.count
    return described


def _to_fp16(fp32_path: str | Path, out_path: str | Path) -> None:
    import onnx  # deferred: an optional dependency (the onnx extra)
    from onnxruntime.transformers.float16 import convert_float_to_float16  # deferred: the onnx extra

    model = onnx.load(str(fp32_path))
    with _quiet():
        converted = convert_float_to_float16(model, keep_io_types=True)
    onnx.save(converted, str(out_path))


def parse_ops(text: str | Sequence[str] | None) -> tuple[str, ...] | None:
    """``"Conv,MatMul"`` (or a list of such) as operator types; None stays None."""
    if text is None:
        return None
    parts = [text] if isinstance(text, str) else list(text)
    ops = tuple(op.strip() for part in parts for op in part.split(",") if op.strip())
    if not ops:
        raise ConfigError("--quantize-ops needs at least one operator type, e.g. Conv,MatMul")
    return ops


__all__ = ["ACTIVATION_TYPES", "DEFAULT_CALIBRATION_IMAGES", "PRECISIONS", "QUANT_FORMATS",
           "QuantizeOptions", "lower_precision", "parse_ops", "quantizable_ops"]
