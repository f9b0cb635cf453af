"""``transkd export``: the student alone as ONNX (checked with onnxruntime, fp32/fp16/int8) or safetensors."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..deploy.export import ATTENTIONS, EXPORTERS, FORMATS, export_model
from ..deploy.quantize import (
    ACTIVATION_TYPES,
    DEFAULT_CALIBRATION_IMAGES,
    PRECISION_CHOICES,
    QUANT_FORMATS,
    QuantizeOptions,
    parse_ops,
)
from ..engine.score import evaluation_images
from ..errors import ConfigError
from ..report.tradeoff import DEFAULT_MAX_DROP, exported_accuracy
from ._common import say
from ._options import add_input_size, add_model, add_no_progress, add_output, yaml_string


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "export", help="export a saved student to ONNX (fp32, fp16, int8; dynamic batch/height/width) "
                       "or safetensors",
        description="Export a saved student (or a run folder's best network). "
                    "ONNX: input 'image' (batch, 3, height, width) normalised as the metadata's "
                    "mean/std say, output 'logits' (batch, classes, ceil(height/4), ceil(width/4)); "
                    "batch, height and width are dynamic (MiT/PVTv2: sides of at least 29 px). After "
                    "export onnxruntime runs two random inputs of other sizes and compares with "
                    "PyTorch; above --tolerance the export fails and no file is written. "
                    "--precision fp16/int8-* lowers the checked fp32 graph; measure its accuracy "
                    "with 'transkd eval FILE.onnx'.")
    add_model(parser)
    add_output(parser, "FILE", "output file, e.g. student.onnx", required=True)
    parser.add_argument("--format", choices=FORMATS,
                        help="default: safetensors for a .safetensors output, else onnx")
    parser.add_argument("--opset", type=int, metavar="N", help="ONNX opset (default: the exporter's)")
    add_input_size(parser, "height and width of the example input used for export (default: the "
                           "size the student was trained at, from its metadata, else 512 1024)",
                   default=None, legacy_sides=True)
    parser.add_argument("--tolerance", type=float, default=1e-4, metavar="T",
                        help="largest accepted |onnxruntime - PyTorch| logit difference of the fp32 "
                             "graph (default 1e-4)")
    parser.add_argument("--check-size", type=int, nargs=3, action="append", metavar=("B", "H", "W"),
                        help="a (batch, height, width) parity check (repeatable; default: "
                             "1 x (H+32) x (W+32) and 2 x (H/2+1) x (W/2+3))")
    parser.add_argument("--exporter", choices=EXPORTERS, default="dynamo",
                        help="torch.export-based (default) or the legacy, faster, deprecated tracer")
    parser.add_argument("--attention", choices=ATTENTIONS, default="standard",
                        help="standard (ONNX MatMul/Softmax, any runtime) or fused (onnxruntime's "
                             "MultiHeadAttention kernel; needs --exporter torchscript)")
    quant = parser.add_argument_group("precision (ONNX only)")
    quant.add_argument("--precision", choices=PRECISION_CHOICES, default="fp32",
                       help="fp32 (default); int8 (the INT8 variant to ship unmeasured: int8-dynamic); fp16 "
                            "(float16 weights and activations, float32 input and "
                            "output; for GPU providers); int8-dynamic (int8 weights, activations "
                            "quantised per call); int8-static (int8 weights and activations calibrated "
                            "on --calibration-data)")
    quant.add_argument("--calibration-data", metavar="ROOT",
                       help="int8-static: root of the dataset the student was trained on (default for a "
                            "run folder: its config's); images of its training split go through the "
                            "student's evaluation transforms")
    quant.add_argument("--calibration-images", type=int, default=DEFAULT_CALIBRATION_IMAGES, metavar="N",
                       help=f"int8-static: calibration images, spread over the split (default "
                            f"{DEFAULT_CALIBRATION_IMAGES})")
    quant.add_argument("--calibration-split", metavar="NAME",
                       help="int8-static: the split to calibrate on (default: data.train_split)")
    quant.add_argument("--quantize-ops", metavar="OP,OP",
                       help="int8: operator types to quantise, e.g. Conv or Conv,MatMul (default: Conv "
                            "for int8-static, MatMul for int8-dynamic; measured fastest, see "
                            "docs/deployment.md)")
    quant.add_argument("--quant-format", choices=QUANT_FORMATS, default="qdq",
                       help="int8-static: QuantizeLinear/DeQuantizeLinear pairs (qdq, default) or "
                            "integer operators (qoperator)")
    quant.add_argument("--activation-type", choices=ACTIVATION_TYPES, default="u8",
                       help="int8-static: activations as uint8 (u8, default) or int8 (s8)")
    quant.add_argument("--per-tensor", action="store_true",
                       help="int8: one weight scale per tensor instead of per output channel")
    quant.add_argument("--reduce-range", action="store_true",
                       help="int8: 7-bit weights (avoids saturation on CPUs without VNNI)")
    quant.add_argument("--eval-data", nargs="?", const="", metavar="ROOT",
                       help="after writing, score the source network (PyTorch fp32) and the graph on the "
                            "dataset's validation split (ROOT: the dataset's folder; alone: the one in the "
                            "run's config) and flag a graph that loses more than --max-drop")
    quant.add_argument("--max-drop", type=float, default=DEFAULT_MAX_DROP, metavar="POINTS",
                       help=f"with --eval-data: mIoU points the graph may lose before export flags it and "
                            f"exits with status {ACCURACY_FLAGGED} (default {DEFAULT_MAX_DROP:g})")
    add_no_progress(parser)
    parser.set_defaults(run=run)
    return parser


#: Exit status of an export whose graph was written but lost more than --max-drop mIoU points.
ACCURACY_FLAGGED = 3


def run(args: argparse.Namespace) -> int:
    if not args.max_drop >= 0:
        raise ConfigError(f"--max-drop must be a non-negative number of mIoU points, got {args.max_drop:g}")
    safetensors_output = args.format == "safetensors" or (
        args.format is None and str(args.output).lower().endswith(".safetensors"))
    if args.eval_data is not None and safetensors_output:
        raise ConfigError("--eval-data scores an exported ONNX graph; give an .onnx output or --format onnx")
    quantize = QuantizeOptions(args.precision, ops=parse_ops(args.quantize_ops),
                               per_channel=not args.per_tensor, quant_format=args.quant_format,
                               activation_type=args.activation_type,
                               reduce_range=args.reduce_range).validate()
    calibration = None
    run_config = Path(args.model) / "config.yaml"  # a run folder names its dataset and root
    if args.calibration_data is not None or (args.precision == "int8-static" and run_config.is_file()):
        root = [] if args.calibration_data is None else [f"data.root={yaml_string(args.calibration_data)}"]
        calibration = lambda: evaluation_images(args.model, args.calibration_images,  # noqa: E731
                                                overrides=root, split=args.calibration_split, last=args.last)
    result = export_model(args.model, args.output, last=args.last, format=args.format,
                          input_size=args.input_size, check_sizes=args.check_size, opset=args.opset,
                          exporter=args.exporter, tolerance=args.tolerance, announce=say,
                          progress=not args.no_progress, quantize=quantize, calibration=calibration,
                          attention=args.attention)
    if result.format == "safetensors":
        say(f"wrote {result.path} (safetensors, weights + metadata)")
        return 0
    size = result.export_size
    for check in result.checks:
        shape = "x".join(map(str, check.input_shape))
        out = "x".join(map(str, check.output_shape))
        say(f"  parity input {shape} -> logits {out}: "
            f"max |onnxruntime - pytorch| = {check.max_abs_diff:.2e}")
    for check in result.lowered_checks:
        shape = "x".join(map(str, check.input_shape))
        say(f"  {result.precision} input {shape}: max |onnxruntime {result.precision} - pytorch fp32| = "
            f"{check.max_abs_diff:.2e}, arg-max agreement {100 * check.argmax_agreement:.2f}% (random input)")
    lowering = ""
    if result.precision != "fp32":
        details = {k: v for k, v in result.lowering.items() if k != "precision"}
        lowering = f", {result.precision} (" + ", ".join(
            f"{k} {','.join(v) if isinstance(v, list) else v}" for k, v in details.items()) + ")"
    say(f"wrote {result.path} (ONNX opset {result.opset}, {args.exporter} exporter, exported at "
        f"{size[0]}x{size[1]}, dynamic batch/height/width; fp32 graph max abs diff "
        f"{result.max_abs_diff:.2e} <= tolerance {args.tolerance:g}{lowering}; {result.seconds:.1f} s)")
    if args.eval_data is None:
        return 0
    check = exported_accuracy(args.model, result.path, args.eval_data or None, last=args.last,
                              max_drop=args.max_drop)
    say(f"mIoU on {check.split} ({check.images} images, same pipeline): source network (PyTorch fp32) "
        f"{check.reference:.2f}%, {result.path.name} ({result.precision}, onnxruntime) "
        f"{check.exported:.2f}%; "
        f"drop {check.drop:.2f} points (--max-drop {check.max_drop:g})")
    if check.flagged:
        print(f"WARNING: {result.path} ({result.precision}) loses {check.drop:.2f} mIoU points against its "
              f"source network on {check.split}, more than --max-drop {check.max_drop:g}: the file is "
              "written, but try another scheme (--quantize-ops, --per-tensor, --reduce-range, more "
              "--calibration-images) or fp32 before shipping it", file=sys.stderr)
        return ACCURACY_FLAGGED
    return 0
