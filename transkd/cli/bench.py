"""``transkd bench``: CPU latency/throughput (eager, torch.compile, onnxruntime) against a matmul peak."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..errors import ConfigError


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "bench", help="CPU latency and throughput: eager, torch.compile, onnxruntime",
        description="Time one forward pass of a batch on the CPU with each backend (after warm-up; "
                    "median, interquartile range, min-max over the repeats), with images/s and the "
                    "achieved GFLOP/s (torch flop counter, attention included) next to a torch.mm "
                    "fp32 peak measured in the same run on the same threads. A backend that fails "
                    "is listed as unavailable with its reason.")
    parser.add_argument("target", metavar="CKPT|MODEL",
                        help="a student.safetensors, a run folder, or a model name (random weights)")
    parser.add_argument("--input-size", type=int, nargs=2, default=(512, 1024), metavar=("H", "W"),
                        help="input height and width (default 512 1024)")
    parser.add_argument("--batch", type=int, default=1, metavar="B", help="images per forward (default 1)")
    parser.add_argument("--threads", type=int, metavar="N",
                        help="intra-op threads (default: torch's current count)")
    parser.add_argument("--repeats", type=int, default=10, metavar="R", help="timed runs (default 10)")
    parser.add_argument("--warmup", type=int, default=3, metavar="W", help="untimed runs first (default 3)")
    parser.add_argument("--backends", nargs="+", default=["eager", "compile", "onnxruntime"],
                        choices=("eager", "compile", "onnxruntime"), metavar="NAME",
                        help="any of eager compile onnxruntime (default: all three)")
    parser.add_argument("--num-classes", type=int, metavar="K",
                        help="outputs of a model given by name (default 19)")
    parser.add_argument("--exporter", choices=("dynamo", "torchscript"), default="dynamo",
                        help="ONNX exporter for the onnxruntime row (default dynamo)")
    parser.add_argument("--compile-backend", default="inductor", metavar="NAME",
                        help="torch.compile backend (default inductor)")
    parser.add_argument("--peak-size", type=int, default=2048, metavar="N",
                        help="matrix size of the torch.mm peak (default 2048)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.set_defaults(run=run)
    return parser


def run(args: argparse.Namespace) -> int:
    from ..deploy.bench import bench_model, format_bench

    model, source = _model(args.target, args.num_classes)
    result = bench_model(model, input_size=tuple(args.input_size), batch=args.batch, threads=args.threads,
                         repeats=args.repeats, warmup=args.warmup, backends=args.backends,
                         exporter=args.exporter, compile_backend=args.compile_backend,
                         peak_size=args.peak_size, source=source)
    print(json.dumps(result, indent=2) if args.json else format_bench(result))
    return 0


def _model(target: str, num_classes: int | None):
    """(model, where its weights come from) for a checkpoint path or a model name."""
    from ..deploy import load_deployable
    from ..models import create_model, list_models

    if Path(target).exists():
        if num_classes is not None:
            raise ConfigError(f"--num-classes applies to model names only; {target} carries its own")
        student = load_deployable(target)
        return student.model, f"weights from {student.path}"
    segmentors = list_models(kind="segmentor")
    if target not in segmentors:
        raise ConfigError(f"{target} is neither an existing file nor a model name; known models: "
                          f"{', '.join(segmentors)}")
    classes = 19 if num_classes is None else num_classes
    if classes < 1:
        raise ConfigError(f"--num-classes must be at least 1, got {classes}")
    return (create_model(target, num_classes=classes),
            "random weights (a model name was given; speed does not depend on the weight values)")
