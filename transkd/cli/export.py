"""``transkd export``: the student alone as ONNX (checked with onnxruntime) or safetensors."""

from __future__ import annotations

import argparse

from ..deploy.export import EXPORTERS, FORMATS, export_model
from ._common import say
from ._options import add_input_size, add_model, add_no_progress, add_output


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "export", help="export a saved student to ONNX (dynamic batch/height/width) or safetensors",
        description="Export a saved student (or a run folder's best network). "
                    "ONNX: input 'image' (batch, 3, height, width) normalised as the metadata's "
                    "mean/std say, output 'logits' (batch, classes, ceil(height/4), ceil(width/4)); "
                    "batch, height and width are dynamic (MiT/PVTv2: sides of at least 29 px). After "
                    "export onnxruntime runs two random inputs of other sizes and compares with "
                    "PyTorch; above --tolerance the export fails and no file is written.")
    add_model(parser)
    add_output(parser, "FILE", "output file, e.g. student.onnx", required=True)
    parser.add_argument("--format", choices=FORMATS,
                        help="default: safetensors for a .safetensors output, else onnx")
    parser.add_argument("--opset", type=int, metavar="N", help="ONNX opset (default: the exporter's)")
    add_input_size(parser, "height and width of the example input used for export (default: the "
                           "size the student was trained at, from its metadata, else 512 1024)",
                   default=None, legacy_sides=True)
    parser.add_argument("--tolerance", type=float, default=1e-4, metavar="T",
                        help="largest accepted |onnxruntime - PyTorch| logit difference (default 1e-4)")
    parser.add_argument("--check-size", type=int, nargs=3, action="append", metavar=("B", "H", "W"),
                        help="a (batch, height, width) parity check (repeatable; default: "
                             "1 x (H+32) x (W+32) and 2 x (H/2+1) x (W/2+3))")
    parser.add_argument("--exporter", choices=EXPORTERS, default="dynamo",
                        help="torch.export-based (default) or the legacy, faster, deprecated tracer")
    add_no_progress(parser)
    parser.set_defaults(run=run)
    return parser


def run(args: argparse.Namespace) -> int:
    result = export_model(args.model, args.output, last=args.last, format=args.format,
                          input_size=args.input_size, check_sizes=args.check_size, opset=args.opset,
                          exporter=args.exporter, tolerance=args.tolerance, announce=say,
                          progress=not args.no_progress)
    if result.format == "safetensors":
        say(f"wrote {result.path} (safetensors, weights + metadata)")
        return 0
    size = result.export_size
    for check in result.checks:
        shape = "x".join(map(str, check.input_shape))
        out = "x".join(map(str, check.output_shape))
        say(f"  parity input {shape} -> logits {out}: "
            f"max |onnxruntime - pytorch| = {check.max_abs_diff:.2e}")
    say(f"wrote {result.path} (ONNX opset {result.opset}, {args.exporter} exporter, exported at "
        f"{size[0]}x{size[1]}, dynamic batch/height/width; max abs diff {result.max_abs_diff:.2e} "
        f"<= tolerance {args.tolerance:g}; {result.seconds:.1f} s)")
    return 0
