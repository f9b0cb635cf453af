"""``transkd export``: the student alone as ONNX (checked with onnxruntime) or safetensors."""

from __future__ import annotations

import argparse


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "export", help="export a saved student to ONNX (dynamic batch/height/width) or safetensors",
        description="Export the student of a student.safetensors (or a run folder's best student). "
                    "ONNX: input 'image' (batch, 3, height, width) normalised as the metadata's "
                    "mean/std say, output 'logits' (batch, classes, ceil(height/4), ceil(width/4)); "
                    "batch, height and width are dynamic (MiT/PVTv2: sides of at least 29 px). After "
                    "export onnxruntime runs two random inputs of other sizes and compares with "
                    "PyTorch; above --tolerance the export fails and no file is written.")
    parser.add_argument("checkpoint", metavar="CKPT", help="a student.safetensors or a run folder")
    parser.add_argument("--output", "-o", required=True, metavar="FILE",
                        help="output file, e.g. student.onnx")
    parser.add_argument("--format", choices=("onnx", "safetensors"),
                        help="default: safetensors for a .safetensors output, else onnx")
    parser.add_argument("--opset", type=int, metavar="N", help="ONNX opset (default: the exporter's)")
    parser.add_argument("--height", type=int, default=512, metavar="H",
                        help="height of the example input used for export (default 512)")
    parser.add_argument("--width", type=int, default=1024, metavar="W",
                        help="width of the example input used for export (default 1024)")
    parser.add_argument("--tolerance", type=float, default=1e-4, metavar="T",
                        help="largest accepted |onnxruntime - PyTorch| logit difference (default 1e-4)")
    parser.add_argument("--check-size", type=int, nargs=3, action="append", metavar=("B", "H", "W"),
                        help="a (batch, height, width) parity check (repeatable; default: "
                             "1 x (H+32) x (W+32) and 2 x (H/2+1) x (W/2+3))")
    parser.add_argument("--exporter", choices=("dynamo", "torchscript"), default="dynamo",
                        help="torch.export-based (default) or the legacy, faster, deprecated tracer")
    parser.set_defaults(run=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from ..deploy import load_deployable, parse_size
    from ..deploy.export import export_student
    from ..errors import ConfigError

    size = parse_size((args.height, args.width), "--height/--width")
    checks = None
    if args.check_size:
        if any(v < 1 for triple in args.check_size for v in triple):
            raise ConfigError("--check-size takes three positive integers (batch height width)")
        checks = [tuple(triple) for triple in args.check_size]
    student = load_deployable(args.checkpoint)
    fmt = args.format or ("safetensors" if args.output.lower().endswith(".safetensors") else "onnx")
    print(f"student: {student.describe()}")
    if fmt == "safetensors":
        result = export_student(student, args.output, format=fmt)
        print(f"wrote {result.path} (safetensors, weights + metadata)")
        return 0
    result = export_student(student, args.output, format=fmt, input_size=size, opset=args.opset,
                            exporter=args.exporter, check_sizes=checks, tolerance=args.tolerance)
    for check in result.checks:
        shape = "x".join(map(str, check.input_shape))
        out = "x".join(map(str, check.output_shape))
        print(f"  parity input {shape} -> logits {out}: "
              f"max |onnxruntime - pytorch| = {check.max_abs_diff:.2e}")
    print(f"wrote {result.path} (ONNX opset {result.opset}, {args.exporter} exporter, exported at "
          f"{size[0]}x{size[1]}, dynamic batch/height/width; max abs diff {result.max_abs_diff:.2e} "
          f"<= tolerance {args.tolerance:g}; {result.seconds:.1f} s)")
    return 0
