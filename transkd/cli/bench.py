"""``transkd bench``: CPU latency/throughput (eager, torch.compile, onnxruntime) against a matmul peak;
with ``--tradeoff``, mIoU against latency and size of every deployable variant of a student."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..deploy.bench import BACKENDS, bench_target, format_bench
from ..deploy.export import EXPORTERS
from ..deploy.quantize import DEFAULT_CALIBRATION_IMAGES, QuantizeOptions, parse_ops
from ..errors import ConfigError
from ..jsonsafe import json_safe
from ..profile import DEFAULT_NUM_CLASSES
from ..report.tradeoff import DEPLOY_FOLDER, VARIANTS, deployment_tradeoff, format_tradeoff, write_tradeoff
from ._common import say
from ._options import (
    DEFAULT_INPUT_SIZE,
    add_batch_size,
    add_input_size,
    add_json,
    add_model,
    add_no_progress,
    add_num_classes,
    add_output,
)


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "bench", help="CPU latency and throughput: eager, torch.compile, onnxruntime",
        description="Time one forward pass of a batch on the CPU with each backend (after warm-up; "
                    "median, interquartile range, min-max over the repeats), with images/s and the "
                    "achieved GFLOP/s (torch flop counter, attention included) next to an fp32 matmul "
                    "peak measured in the same run on the same threads. A backend that fails "
                    "is listed as unavailable with its reason.")
    add_model(parser, by_name=True)
    add_input_size(parser, "input height and width (default 512 1024; with --tradeoff: the size the "
                           "student was trained at)", default=None)
    add_batch_size(parser, "images per forward (default 1)", legacy_batch=True)
    parser.add_argument("--threads", type=int, metavar="N",
                        help="intra-op threads (default: torch's current count)")
    parser.add_argument("--repeats", type=int, default=10, metavar="R", help="timed runs (default 10)")
    parser.add_argument("--warmup", type=int, default=3, metavar="W", help="untimed runs first (default 3)")
    parser.add_argument("--backends", nargs="+", default=list(BACKENDS), choices=BACKENDS, metavar="NAME",
                        help="any of eager compile onnxruntime (default: all three)")
    add_num_classes(parser, f"outputs of a model given by name (default {DEFAULT_NUM_CLASSES})")
    parser.add_argument("--exporter", choices=EXPORTERS, default="dynamo",
                        help="ONNX exporter for the onnxruntime row (default dynamo)")
    parser.add_argument("--compile-backend", default="inductor", metavar="NAME",
                        help="torch.compile backend (default inductor)")
    parser.add_argument("--peak-size", type=int, default=2048, metavar="N",
                        help="matrix size of the fp32 matmul peak (default 2048)")
    trade = parser.add_argument_group("accuracy against latency (--tradeoff)")
    trade.add_argument("--tradeoff", action="store_true",
                       help="a saved student in every deployable form (eager, torch.compile, onnxruntime "
                            "fp32/fp16/int8-dynamic/int8-static): mIoU on --data, latency timed interleaved "
                            "on the same threads, size on disk; a table, and with --output a plot")
    trade.add_argument("--data", metavar="ROOT", help="root of the dataset the student was trained on")
    trade.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS), metavar="NAME",
                       help=f"any of {' '.join(VARIANTS)} (default: all)")
    trade.add_argument("--calibration-images", type=int, default=DEFAULT_CALIBRATION_IMAGES, metavar="N",
                       help=f"int8-static calibration images (default {DEFAULT_CALIBRATION_IMAGES})")
    trade.add_argument("--quantize-ops", metavar="OP,OP", help="int8-static operator types (default Conv)")
    add_output(parser, "DIR", "with --tradeoff: keep the graphs and write tradeoff.md, .json and .png here "
                              f"(default for a run folder: its {DEPLOY_FOLDER}/, which transkd report shows)")
    add_json(parser)
    add_no_progress(parser)
    parser.set_defaults(run=run)
    return parser


def run_tradeoff(args: argparse.Namespace) -> int:
    if args.output is None and Path(args.model).is_dir():  # kept beside the run: `transkd report` shows it
        args.output = str(Path(args.model) / DEPLOY_FOLDER)
    static = QuantizeOptions("int8-static", ops=parse_ops(args.quantize_ops))
    result = deployment_tradeoff(args.model, args.data, output=args.output, variants=args.variants,
                                 threads=args.threads, input_size=args.input_size, repeats=args.repeats,
                                 warmup=args.warmup, calibration_images=args.calibration_images,
                                 static=static, exporter=args.exporter, last=args.last,
                                 peak_size=args.peak_size, announce=None if args.json else say)
    say(json.dumps(json_safe(result), indent=2) if args.json else format_tradeoff(result))
    if args.output is not None:
        written = write_tradeoff(result, args.output)
        if not args.json:
            say(f"wrote {', '.join(str(p) for p in written.values())}")
    return 0


def run(args: argparse.Namespace) -> int:
    if args.tradeoff:
        return run_tradeoff(args)
    if args.output is not None or args.data is not None:
        raise ConfigError("--output and --data apply to --tradeoff only")
    result = bench_target(args.model, num_classes=args.num_classes, last=args.last,
                          input_size=tuple(args.input_size or DEFAULT_INPUT_SIZE), batch=args.batch_size,
                          threads=args.threads,
                          repeats=args.repeats, warmup=args.warmup, backends=args.backends,
                          exporter=args.exporter, compile_backend=args.compile_backend,
                          peak_size=args.peak_size, progress=not (args.no_progress or args.json))
    say(json.dumps(json_safe(result), indent=2) if args.json else format_bench(result))
    return 0
