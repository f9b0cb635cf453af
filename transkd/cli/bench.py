"""``transkd bench``: CPU latency/throughput (eager, torch.compile, onnxruntime) against a matmul peak."""

from __future__ import annotations

import argparse
import json

from ..deploy.bench import BACKENDS, bench_target, format_bench
from ..deploy.export import EXPORTERS
from ..jsonsafe import json_safe
from ..profile import DEFAULT_NUM_CLASSES
from ._common import say
from ._options import (
    DEFAULT_INPUT_SIZE,
    add_batch_size,
    add_input_size,
    add_json,
    add_model,
    add_no_progress,
    add_num_classes,
)


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "bench", help="CPU latency and throughput: eager, torch.compile, onnxruntime",
        description="Time one forward pass of a batch on the CPU with each backend (after warm-up; "
                    "median, interquartile range, min-max over the repeats), with images/s and the "
                    "achieved GFLOP/s (torch flop counter, attention included) next to a torch.mm "
                    "fp32 peak measured in the same run on the same threads. A backend that fails "
                    "is listed as unavailable with its reason.")
    add_model(parser, by_name=True)
    add_input_size(parser, "input height and width (default 512 1024)", default=DEFAULT_INPUT_SIZE)
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
                        help="matrix size of the torch.mm peak (default 2048)")
    add_json(parser)
    add_no_progress(parser)
    parser.set_defaults(run=run)
    return parser


def run(args: argparse.Namespace) -> int:
    result = bench_target(args.model, num_classes=args.num_classes, last=args.last,
                          input_size=tuple(args.input_size), batch=args.batch_size, threads=args.threads,
                          repeats=args.repeats, warmup=args.warmup, backends=args.backends,
                          exporter=args.exporter, compile_backend=args.compile_backend,
                          peak_size=args.peak_size, progress=not (args.no_progress or args.json))
    say(json.dumps(json_safe(result), indent=2) if args.json else format_bench(result))
    return 0
