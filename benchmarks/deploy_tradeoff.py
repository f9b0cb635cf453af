"""A trained student through every deployable precision: accuracy against latency and size.

    python benchmarks/deploy_tradeoff.py STUDENT --data ROOT --output DIR [--threads 1]
        [--schemes] [--fp32-study] [--profile]

STUDENT is a ``.safetensors`` file or a run folder; ROOT the dataset it was trained on. Writes to
DIR:

- ``tradeoff.md``/``.json``/``.png``: :func:`transkd.report.tradeoff.deployment_tradeoff` —
  eager fp32, torch.compile, onnxruntime fp32/fp16/int8-dynamic/int8-static: mIoU on the
  validation split, latency timed interleaved on the same threads, size on disk;
- with ``--schemes``: ``schemes.md``/``.json`` — static INT8 schemes (QDQ or QOperator,
  per-channel or not, which operator types, uint8 or int8 activations, reduce_range) and dynamic
  INT8, each timed interleaved with the fp32 graph at ``--scheme-size`` (default 512x1024), with
  the operator types onnxruntime actually runs (its profiler) — the evidence behind the defaults;
- with ``--fp32-study``: ``fp32.md``/``.json`` — the onnxruntime fp32 graph at each graph
  optimisation level, with the attention as MatMul/Softmax or as onnxruntime's fused
  MultiHeadAttention, timed interleaved with a ``torch.mm`` fp32 peak, and its operator profile.

Every timing is a ratio measured side by side in one process: on a shared machine absolute
latencies move with the load, which is recorded (1/5/15-minute load average) next to the
numbers. Process CPU time is reported next to wall time: other processes do not inflate it.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from transkd.deploy import Student  # noqa: E402
from transkd.deploy.bench import (  # noqa: E402
    cpu_description,
    format_operator_profile,
    load_average,
    onnx_operator_profile,
    summarize,
    time_interleaved,
    torch_threads,
)
from transkd.deploy.export import export_student  # noqa: E402
from transkd.deploy.quantize import QuantizeOptions  # noqa: E402
from transkd.engine.score import evaluate_checkpoint, evaluation_images  # noqa: E402
from transkd.host_memory import reuse_freed_memory  # noqa: E402
from transkd.jsonsafe import json_safe  # noqa: E402
from transkd.models.onnx_graph import onnx_session  # noqa: E402
from transkd.report.tradeoff import (  # noqa: E402
    VARIANTS,
    deployment_tradeoff,
    format_tradeoff,
    write_tradeoff,
)
from transkd.weights.io import model_file  # noqa: E402

#: Static INT8 schemes of the sweep: name -> QuantizeOptions fields.
SCHEMES = {
    "qdq-all-pc-u8": {"ops": None, "quant_format": "qdq"},
    "qdq-all-pc-s8": {"ops": None, "quant_format": "qdq", "activation_type": "s8"},
    "qdq-all-pt-u8": {"ops": None, "quant_format": "qdq", "per_channel": False},
    "qdq-all-pc-u8-reduce-range": {"ops": None, "quant_format": "qdq", "reduce_range": True},
    "qdq-conv-pc-u8": {"ops": ("Conv",), "quant_format": "qdq"},
    "qdq-conv-pc-s8": {"ops": ("Conv",), "quant_format": "qdq", "activation_type": "s8"},
    "qoperator-conv-pc-u8": {"ops": ("Conv",), "quant_format": "qoperator"},
    "qdq-matmul-pc-u8": {"ops": ("MatMul",), "quant_format": "qdq"},
    "qdq-conv-matmul-pc-u8": {"ops": ("Conv", "MatMul"), "quant_format": "qdq"},
    "qoperator-conv-matmul-pc-u8": {"ops": ("Conv", "MatMul"), "quant_format": "qoperator"},
}
ALL_OPS = "all"  # ops None in SCHEMES: every operator type onnxruntime's static quantiser knows


def sessions_table(graphs: dict[str, Path], threads: int, size: tuple[int, int], repeats: int, warmup: int,
                   peak_size: int | None = None, optimization: dict[str, str] | None = None) -> dict:
    """Interleaved wall/CPU timings of each graph (and a torch.mm peak) on one random input."""
    images = np.random.default_rng(0).standard_normal((1, 3, *size), dtype=np.float32)
    runs = {}
    for name, path in graphs.items():
        session = onnx_session(path, threads=threads, optimization=(optimization or {}).get(name, "all"))
        feed = {session.get_inputs()[0].name: images}
        runs[name] = lambda session=session, feed=feed: session.run(None, feed)
    if peak_size:
        generator = torch.Generator().manual_seed(0)
        a, b = torch.randn(peak_size, peak_size, generator=generator), torch.randn(peak_size, peak_size,
                                                                                    generator=generator)
        out = torch.empty(peak_size, peak_size)
        runs["torch.mm"] = lambda: torch.mm(a, b, out=out)
    before = load_average()
    with torch_threads(threads):
        timings = time_interleaved(runs, warmup, repeats)
    return {"timings": {name: {"wall": summarize(t["wall"]), "cpu": summarize(t["cpu"])}
                        for name, t in timings.items()},
            "load_average_before": before, "load_average_after": load_average()}


def scheme_sweep(student: Student, weights: Path, data: str, folder: Path, args) -> dict:
    size = tuple(args.scheme_size)
    root = [f"data.root='{data}'"]
    calibration = evaluation_images(weights, args.calibration_images, overrides=root)
    graphs = {}
    fp32 = folder / "fp32.onnx"
    export_student(student, fp32, input_size=size, exporter=args.exporter, check_sizes=[(1, *size)],
                   tolerance=1e-3)
    graphs["fp32"] = fp32
    lowered = {name: QuantizeOptions("int8-static", **fields) for name, fields in SCHEMES.items()}
    lowered["dynamic-matmul"] = QuantizeOptions("int8-dynamic", ops=("MatMul",))
    lowered["dynamic-conv-matmul"] = QuantizeOptions("int8-dynamic", ops=("Conv", "MatMul"))
    failures = {}
    for name, options in lowered.items():
        if options.precision == "int8-static" and options.ops is None:
            from transkd.deploy.quantize import quantizable_ops

            options.ops = tuple(sorted(quantizable_ops("int8-static")))
        path = folder / f"{name}.onnx"
        print(f"scheme {name}", flush=True)
        try:
            export_student(student, path, input_size=size, exporter=args.exporter, check_sizes=[(1, *size)],
                           tolerance=1e-3, quantize=options, calibration=calibration)
            onnx_session(path, threads=args.threads)
        except Exception as exc:  # a scheme onnxruntime cannot build or load is a finding
            failures[name] = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:240]}"
            continue
        graphs[name] = path
    table = sessions_table(graphs, args.threads, size, args.repeats, args.warmup)
    accuracy = {}
    if args.scheme_accuracy:
        for name, path in graphs.items():
            accuracy[name] = evaluate_checkpoint(path, overrides=root, threads=args.threads).metrics["miou"]
    profiles = {}
    images = np.random.default_rng(0).standard_normal((1, 3, *size), dtype=np.float32)
    for name in ("fp32", "qdq-all-pc-u8", "qdq-conv-pc-u8", "dynamic-matmul"):
        if name in graphs:
            profiles[name] = onnx_operator_profile(graphs[name], images, threads=args.threads, runs=2)
    return {"input_size": [1, 3, *size], "threads": args.threads, "calibration_images": len(calibration),
            "schemes": {name: lowered[name].describe() for name in lowered}, "failures": failures,
            "sizes_mb": {name: path.stat().st_size / 1e6 for name, path in graphs.items()},
            "accuracy": accuracy, "profiles": profiles, **table}


def fp32_study(student: Student, folder: Path, args) -> dict:
    size = tuple(args.study_size)
    graphs, levels = {}, {}
    standard = folder / "fp32-standard.onnx"
    export_student(student, standard, input_size=size, exporter="torchscript", check_sizes=[(1, *size)])
    fused = folder / "fp32-fused-attention.onnx"
    export_student(student, fused, input_size=size, exporter="torchscript", attention="fused",
                   check_sizes=[(1, *size)])
    for level in ("basic", "extended", "all"):
        graphs[f"standard/{level}"], levels[f"standard/{level}"] = standard, level
    graphs["fused-attention/all"], levels["fused-attention/all"] = fused, "all"
    dynamo = folder / "fp32-dynamo.onnx"
    export_student(student, dynamo, input_size=size, exporter="dynamo", check_sizes=[(1, *size)])
    graphs["dynamo/all"], levels["dynamo/all"] = dynamo, "all"
    table = sessions_table(graphs, args.study_threads, size, args.repeats, args.warmup,
                           peak_size=args.peak_size, optimization=levels)
    images = np.random.default_rng(0).standard_normal((1, 3, *size), dtype=np.float32)
    flops = __import__("transkd.profile", fromlist=["count_flops_total"]).count_flops_total(
        student.model, torch.from_numpy(images))
    profiles = {name: onnx_operator_profile(graphs[name], images, threads=args.study_threads, runs=2,
                                            optimization=levels[name])
                for name in ("standard/all", "fused-attention/all")}
    return {"input_size": [1, 3, *size], "threads": args.study_threads, "flops_per_forward": flops,
            "peak": f"torch.mm fp32 {args.peak_size}x{args.peak_size}", "profiles": profiles, **table}


def ratio_lines(result: dict, base: str, flops: int | None = None,
                peak_flops: int | None = None) -> list[str]:
    timings = result["timings"]
    lines = ["| graph | wall ms (median) | CPU ms (median) | speed vs " + base + " (wall / CPU) |"
             + (" of torch.mm peak (wall / CPU) |" if flops else "") + (" size MB |" if "sizes_mb" in result
                                                                        else ""),
             "|---|---:|---:|---:|" + ("---:|" if flops else "") + ("---:|" if "sizes_mb" in result else "")]
    for name, timing in timings.items():
        if name == "torch.mm":
            continue
        wall, cpu = timing["wall"]["median_ms"], timing["cpu"]["median_ms"]
        row = (f"| {name} | {wall:.1f} | {cpu:.1f} | {timings[base]['wall']['median_ms'] / wall:.2f}× / "
               f"{timings[base]['cpu']['median_ms'] / cpu:.2f}× |")
        if flops:
            peak_wall = peak_flops / (timings["torch.mm"]["wall"]["median_ms"] / 1e3)
            peak_cpu = peak_flops / (timings["torch.mm"]["cpu"]["median_ms"] / 1e3)
            row += (f" {100 * flops / (wall / 1e3) / peak_wall:.1f}% / "
                    f"{100 * flops / (cpu / 1e3) / peak_cpu:.1f}% |")
        if "sizes_mb" in result:
            row += f" {result['sizes_mb'][name]:.1f} |"
        lines.append(row)
    return lines


def setting(result: dict, cpu: dict) -> str:
    shape = "x".join(map(str, result["input_size"]))
    before, after = result["load_average_before"], result["load_average_after"]
    return (f"input {shape}, {result['threads']} thread(s), CPU {cpu['model']} ({cpu['cpus']} CPUs; "
            f"{', '.join(cpu['isa'])}), load average {before} before, {after} after (1/5/15 min); medians "
            "of interleaved rounds; CPU ms = process CPU time")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("student", help="a .safetensors student or a run folder")
    parser.add_argument("--data", required=True, help="root of the dataset the student was trained on")
    parser.add_argument("--output", required=True, help="folder for the tables, JSON and plot")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--input-size", type=int, nargs=2, default=None,
                        help="timed input of the trade-off (default: the training size)")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--calibration-images", type=int, default=16)
    parser.add_argument("--exporter", default="torchscript", choices=("dynamo", "torchscript"))
    parser.add_argument("--attention", default="standard", choices=("standard", "fused"))
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--peak-size", type=int, default=1024)
    parser.add_argument("--no-tradeoff", action="store_true", help="skip the trade-off table")
    parser.add_argument("--schemes", action="store_true", help="also sweep the INT8 schemes")
    parser.add_argument("--scheme-size", type=int, nargs=2, default=[512, 1024])
    parser.add_argument("--scheme-accuracy", action="store_true", help="score every scheme too")
    parser.add_argument("--fp32-study", action="store_true", help="also study the fp32 onnxruntime path")
    parser.add_argument("--study-size", type=int, nargs=2, default=[512, 1024])
    parser.add_argument("--study-threads", type=int, default=2)
    args = parser.parse_args(argv)
    reuse_freed_memory()  # as the transkd command runs; recorded in the results' machine section
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    weights = model_file(args.student)
    student = Student.load(weights)
    cpu = cpu_description()
    if not args.no_tradeoff:
        result = deployment_tradeoff(weights, args.data, output=output / "graphs", variants=args.variants,
                                     threads=args.threads, input_size=args.input_size, repeats=args.repeats,
                                     warmup=args.warmup, calibration_images=args.calibration_images,
                                     exporter=args.exporter, attention=args.attention,
                                     peak_size=args.peak_size,
                                     announce=lambda line: print(line, flush=True))
        print(format_tradeoff(result))
        print("wrote", ", ".join(map(str, write_tradeoff(result, output).values())))
    with tempfile.TemporaryDirectory(prefix="transkd-deploy-bench-") as tmp:
        if args.schemes:
            sweep = scheme_sweep(student, weights, args.data, Path(tmp), args)
            lines = ["# Static and dynamic INT8 schemes", "", setting(sweep, cpu), "",
                     *ratio_lines(sweep, "fp32"), ""]
            lines += [f"- {name}: {json.dumps(sweep['schemes'][name])}" for name in sweep["sizes_mb"]
                      if name in sweep["schemes"]]
            lines += [f"- {name} failed: {reason}" for name, reason in sweep["failures"].items()]
            if sweep["accuracy"]:
                scores = sweep["accuracy"].items()
                lines += ["", "mIoU: " + ", ".join(f"{k} {100 * v:.2f}%" for k, v in scores)]
            lines += ["", "Operator profiles (onnxruntime profiler):", "", "```"]
            lines += [format_operator_profile(p, top=10) for p in sweep["profiles"].values()] + ["```"]
            (output / "schemes.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
            (output / "schemes.json").write_text(json.dumps(json_safe(sweep), indent=2) + "\n",
                                                 encoding="utf-8")
            print("\n".join(lines), flush=True)
        if args.fp32_study:
            study = fp32_study(student, Path(tmp), args)
            peak_flops = 2 * args.peak_size ** 3
            lines = ["# onnxruntime fp32", "", setting(study, cpu), "",
                     *ratio_lines(study, "standard/all", study["flops_per_forward"], peak_flops), "",
                     "```", *[format_operator_profile(p, top=12) for p in study["profiles"].values()], "```"]
            (output / "fp32.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
            (output / "fp32.json").write_text(json.dumps(json_safe(study), indent=2) + "\n", encoding="utf-8")
            print("\n".join(lines), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
