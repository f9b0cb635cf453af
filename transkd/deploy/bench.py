"""Latency and throughput of a network on this machine, next to the machine's own matmul peak.

Runs on the CPU. Backends: eager PyTorch (``torch.inference_mode``), ``torch.compile`` and
onnxruntime (the graph ``transkd export`` writes). Each is built, then a ``torch.mm`` of two fp32
square matrices on the same thread count — a practical ceiling for this machine — is timed right
before it, then the backend is warmed up and timed ``repeats`` times, one forward of the whole
batch per repeat. The summary is the median with the interquartile range and min/max. Achieved
GFLOP/s divide the FLOPs of one forward (``transkd.profile.count_flops_total``: torch's flop
counter, attention included) by the median latency; their share of the ceiling timed next to them
shows the distance to the limit. Backends are not interleaved call by call: onnxruntime's threads
spin after each run and would slow whatever runs next on a small machine. A backend that fails
to build or run is reported as "unavailable" with the reason instead of stopping the benchmark.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError
from ..host_memory import host_allocator
from ..models import create_model, list_models
from ..models.linear import cpu_matmul_backend, describe_cpu_matmul, linear
from ..models.onnx_graph import onnx_session
from ..profile import DEFAULT_NUM_CLASSES, FLOPS_CONVENTION, count_flops_total
from ..progress import Progress
from . import Student
from .export import export_onnx

BACKENDS = ("eager", "compile", "onnxruntime")


def summarize(seconds: Sequence[float]) -> dict[str, float]:
    """Median, quartiles, min and max of timings, in milliseconds."""
    ms = sorted(s * 1e3 for s in seconds)
    if len(ms) >= 2:
        q25, _, q75 = statistics.quantiles(ms, n=4, method="inclusive")
    else:
        q25 = q75 = ms[0]
    return {"median_ms": statistics.median(ms), "q25_ms": q25, "q75_ms": q75, "min_ms": ms[0],
            "max_ms": ms[-1], "repeats": len(ms)}


def time_runs(run: Callable[[], Any], warmup: int, repeats: int,
              tick: Callable[[], None] | None = None) -> list[float]:
    """Seconds of each of ``repeats`` calls after ``warmup`` untimed ones; ``tick`` is called after
    every call (progress), outside the timed span."""
    for _ in range(warmup):
        run()
        if tick is not None:
            tick()
    timings = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        timings.append(time.perf_counter() - start)
        if tick is not None:
            tick()
    return timings


def time_interleaved(runs: dict[str, Callable[[], Any]], warmup: int, repeats: int,
                     tick: Callable[[], None] | None = None) -> dict[str, dict[str, list[float]]]:
    """Wall and CPU seconds (``time.process_time``: this process, every thread) of each run,
    ``repeats`` rounds of one call per run in turn after ``warmup`` such rounds, so a change in
    machine load hits every run alike. CPU time does not count the time other processes hold the
    cores, which makes a one-thread comparison on a busy machine steadier than wall time."""
    for _ in range(warmup):
        for run in runs.values():
            run()
            if tick is not None:
                tick()
    timings: dict[str, dict[str, list[float]]] = {name: {"wall": [], "cpu": []} for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            cpu, wall = time.process_time(), time.perf_counter()
            run()
            timings[name]["wall"].append(time.perf_counter() - wall)
            timings[name]["cpu"].append(time.process_time() - cpu)
            if tick is not None:
                tick()
    return timings


def cpu_description() -> dict[str, Any]:
    """The CPU's model name and the instruction sets that decide which integer and float kernels
    onnxruntime and PyTorch use (VNNI, AMX, AVX-512, ARM dot products), from ``/proc/cpuinfo``."""
    name, flags = platform.processor() or platform.machine(), set()
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        text = ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key == "model name" and value.strip():
            name = value.strip()
        elif key in ("flags", "features") and not flags:
            flags = set(value.split())
    interesting = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile", "amx_int8",
                   "amx_bf16", "asimddp", "i8mm", "sve")
    return {"model": name, "cpus": os.cpu_count(), "isa": [f for f in interesting if f in flags]}


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[int]:
    """Run with ``threads`` intra-op threads (the current count if None), restored afterwards."""
    previous = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(previous)


def matmul_peak(size: int = 2048, warmup: int = 1, repeats: int = 5) -> dict[str, Any]:
    """GFLOP/s of ``torch.mm`` on two fp32 ``size``×``size`` matrices (2·size³ FLOPs per call)."""
    run, flops, what = matmul_runner(size)
    return _peak_record(what, flops, time_runs(run, warmup, repeats))


def _peak_record(what: str, flops: int, seconds: Sequence[float]) -> dict[str, Any]:
    latency = summarize(seconds)
    return {"what": what, "flops_per_call": flops, "latency": latency,
            "gflops_per_s": flops / (latency["median_ms"] / 1e3) / 1e9}


def _eager(model: nn.Module, images: torch.Tensor, options: dict[str, Any]) -> Callable[[], Any]:
    def run():
        with torch.inference_mode():
            return model(images)
    return run


def compile_for_inference(model: nn.Module, images: torch.Tensor, backend: str = "inductor") -> nn.Module:
    """``torch.compile`` of ``model``, compiled now on ``images``. With inductor the weights are
    frozen into the graph (constants folded, weights prepacked for oneDNN/MKL), which inference
    allows since they never change; a later input of another shape compiles again, unfrozen."""
    compiled = torch.compile(model, backend=backend)
    freezing = (_inductor_config().patch(freezing=True) if backend == "inductor"
                else contextlib.nullcontext())
    with torch.inference_mode(), freezing:
        compiled(images)
    return compiled


def _inductor_config():
    import torch._inductor.config as inductor_config  # deferred: imports the compiler stack

    return inductor_config


def _compiled(model: nn.Module, images: torch.Tensor, options: dict[str, Any]) -> Callable[[], Any]:
    compiled = compile_for_inference(model, images, options["compile_backend"])  # set-up, not warm-up

    def run():
        with torch.inference_mode():
            return compiled(images)
    return run


def _onnxruntime(model: nn.Module, images: torch.Tensor, options: dict[str, Any]) -> Callable[[], Any]:
    path = Path(options["workdir"]) / "model.onnx"
    export_onnx(model, path, input_size=images.shape[-2:], exporter=options["exporter"],
                check_sizes=[tuple(images.shape[:1]) + tuple(images.shape[-2:])],
                tolerance=options["onnx_tolerance"])
    session = onnx_session(path, threads=options["threads"])
    feed = {session.get_inputs()[0].name: images.numpy()}
    return lambda: session.run(None, feed)


_BUILDERS = {"eager": _eager, "compile": _compiled, "onnxruntime": _onnxruntime}
_DESCRIPTIONS = {
    "eager": "PyTorch eager, inference_mode",
    "compile": "torch.compile (backend {compile_backend}; inductor: weights frozen), inference_mode",
    "onnxruntime": "onnxruntime CPU, graph from the {exporter} exporter",
}


def bench_model(model: nn.Module, *, input_size: Sequence[int] = (512, 1024), batch: int = 1,
                threads: int | None = None, repeats: int = 10, warmup: int = 3,
                backends: Sequence[str] = BACKENDS, exporter: str = "dynamo",
                compile_backend: str = "inductor", peak_size: int = 2048, onnx_tolerance: float = 1e-3,
                source: str = "", progress: bool = False) -> dict[str, Any]:
    """Time ``model`` on a random (batch, 3, H, W) input with each backend; see the module docstring.

    Returns a JSON-ready dict: the setting (model, input, batch, threads, load average), the
    FLOPs per forward, the matmul peak and one row per backend. ``progress``: a bar over the
    forward passes (warm-up and timed, every backend) on a terminal, a line per backend in a log.
    """
    height, width = _check_setting(input_size, batch, threads, repeats, warmup, backends, peak_size)
    model.eval().cpu()
    images = torch.randn(batch, 3, height, width, generator=torch.Generator().manual_seed(0))
    load_before = load_average()
    with torch_threads(threads) as used_threads, tempfile.TemporaryDirectory(prefix="transkd-bench-") as tmp:
        flops = count_flops_total(model, images)
        options = {"compile_backend": compile_backend, "exporter": exporter, "threads": used_threads,
                   "workdir": tmp, "onnx_tolerance": onnx_tolerance}
        peak_run, peak_flops, peak_what = matmul_runner(peak_size)
        peak_repeats = max(3, min(repeats, 5))
        bar = Progress(len(backends) * (warmup + repeats), description="bench", unit="run",
                       enabled=progress, interval=warmup + repeats, quiet_for=5.0)
        rows, peak_times = [], []
        try:
            for index, name in enumerate(backends):
                bar.fields["backend"] = name
                row, run = _build_backend(name, model, images, options)
                rows.append(row)
                if run is not None:
                    # The ceiling right before the backend: a shared machine's speed drifts
                    # between blocks, and this keeps each ratio to one stretch of time.
                    adjacent = time_runs(peak_run, 1, peak_repeats)
                    peak_times += adjacent
                    timings = time_runs(run, warmup, repeats, tick=lambda: bar.update(1))
                    _score_row(row, summarize(timings), flops,
                               peak_flops / statistics.median(adjacent) / 1e9, images.shape[0])
                bar.update((index + 1) * (warmup + repeats) - bar.count)  # a backend that failed
        finally:
            bar.close()
        if not peak_times:
            peak_times = time_runs(peak_run, 1, peak_repeats)
        peak = {**_peak_record(peak_what, peak_flops, peak_times), "measured": "before each backend"}
    return {
        "model": getattr(model, "model_name", type(model).__name__),
        "num_classes": getattr(model, "num_classes", None),
        "weights": source,
        "input_size": [batch, 3, height, width],
        "batch": batch,
        "threads": used_threads,
        "repeats": repeats,
        "warmup": warmup,
        "flops_per_forward": flops,
        "flops_convention": FLOPS_CONVENTION,
        "peak": peak,
        "rows": rows,
        "machine": {"cpu_count": os.cpu_count(), "processor": platform.processor() or platform.machine(),
                    "cpu_capability": torch.backends.cpu.get_cpu_capability(),
                    "host_allocator": host_allocator(), "cpu_matmul": describe_cpu_matmul(),
                    "load_average_before": load_before, "load_average_after": load_average(),
                    "torch": torch.__version__, "onnxruntime": onnxruntime_version()},
    }


def bench_target(target: str | Path, *, num_classes: int | None = None, last: bool = False,
                 **options: Any) -> dict[str, Any]:
    """What ``transkd bench`` runs: :func:`bench_model` on a saved student (file or run folder;
    ``last``: its last network) or on a registered model built by name with random weights
    (``num_classes`` outputs, default 20)."""
    if Path(target).exists():
        if num_classes is not None:
            raise ConfigError(f"--num-classes applies to model names only; {target} carries its own")
        student = Student.load(target, last=last)
        return bench_model(student.model, source=f"weights from {student.path}", **options)
    segmentors = list_models(kind="segmentor")
    if target not in segmentors:
        raise ConfigError(f"{target} is neither an existing file nor a model name; known models: "
                          f"{', '.join(segmentors)}")
    classes = DEFAULT_NUM_CLASSES if num_classes is None else num_classes
    if classes < 1:
        raise ConfigError(f"--num-classes must be at least 1, got {classes}")
    return bench_model(create_model(str(target), num_classes=classes), source="random weights (a model "
                       "name was given; speed does not depend on the weight values)", **options)


def _check_setting(input_size, batch, threads, repeats, warmup, backends, peak_size) -> tuple[int, int]:
    size = tuple(input_size)
    if len(size) != 2 or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in size):
        raise ConfigError(f"input size must be two positive integers (height width), got {size!r}")
    for name, value, low in (("batch", batch, 1), ("repeats", repeats, 1), ("warmup", warmup, 0),
                             ("peak size", peak_size, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ConfigError(f"{name} must be an integer of at least {low}, got {value!r}")
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise ConfigError(f"threads must be a positive integer, got {threads!r}")
    unknown = [b for b in backends if b not in BACKENDS]
    if unknown or not backends:
        raise ConfigError(f"backends must be among {', '.join(BACKENDS)}, "
                          f"got {', '.join(backends) or 'none'}")
    return size


def matmul_runner(size: int) -> tuple[Callable[[], Any], int, str]:
    """A product of two fp32 ``size``×``size`` matrices to time beside other runs: the call, its
    FLOPs (2·size³) and what it is. It takes the CPU matrix-product library that transkd's linear
    layers use (``models.linear``): ``torch.mm`` (the BLAS), or oneDNN where that is chosen."""
    generator = torch.Generator().manual_seed(0)
    a, b = torch.randn(size, size, generator=generator), torch.randn(size, size, generator=generator)
    shape = f"{size}x{size} @ {size}x{size}"
    if cpu_matmul_backend() == "onednn":
        b_rows = b.t().contiguous()  # linear(a, Bᵀ) = a @ B

        def run_onednn():
            with torch.inference_mode():
                return linear(a, b_rows)
        return run_onednn, 2 * size ** 3, f"oneDNN matmul fp32 {shape} (transkd's linear layers)"
    out = torch.empty(size, size)

    def run():
        with torch.inference_mode():
            return torch.mm(a, b, out=out)
    return run, 2 * size ** 3, f"torch.mm fp32 {shape}"


def _build_backend(name: str, model: nn.Module, images: torch.Tensor,
                   options: dict[str, Any]) -> tuple[dict[str, Any], Callable[[], Any] | None]:
    """The backend's row and its runner, checked by one call; a backend that cannot build or run
    is a result ("unavailable" with the reason), not a crash."""
    row: dict[str, Any] = {"backend": name, "what": _DESCRIPTIONS[name].format(**options), "status": "ok"}
    try:
        start = time.perf_counter()
        run = _BUILDERS[name](model, images, options)
        run()
        row["setup_s"] = time.perf_counter() - start
    except Exception as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        row.update(status="unavailable", reason=f"{type(exc).__name__}: {reason}"[:300])
        return row, None
    return row, run


def _score_row(row: dict[str, Any], latency: dict[str, float], flops: int, peak_gflops_per_s: float,
               batch: int) -> None:
    seconds = latency["median_ms"] / 1e3
    achieved = flops / seconds / 1e9
    row.update(latency=latency, images_per_s=batch / seconds, gflops_per_s=achieved,
               peak_gflops_per_s=peak_gflops_per_s, fraction_of_peak=achieved / peak_gflops_per_s)


def load_average() -> list[float] | None:
    """The 1/5/15-minute load averages, stated beside every timing (None where unknown)."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def onnxruntime_version() -> str | None:
    try:
        import onnxruntime  # deferred: an optional dependency (the onnx extra)
    except ImportError:
        return None
    return onnxruntime.__version__


def format_bench(result: dict[str, Any]) -> str:
    """The result as an aligned table whose every number says what it is."""
    shape = "x".join(map(str, result["input_size"]))
    machine = result["machine"]
    load = machine["load_average_before"]
    load_text = (f"load average {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f} (1/5/15 min) on "
                 f"{machine['cpu_count']} CPUs" if load else "load average unknown")
    lines = [
        f"{result['model']} · {result['num_classes']} classes · {result['weights']}",
        f"input {shape} (batch {result['batch']}) · {result['threads']} thread(s) · "
        f"{result['repeats']} timed repeats after {result['warmup']} warm-up · {load_text}",
        f"host memory: {machine.get('host_allocator', 'not recorded')} · "
        f"CPU matmul of linear layers: {machine.get('cpu_matmul', 'not recorded')}",
        f"FLOPs per forward: {result['flops_per_forward'] / 1e9:.2f} G ({result['flops_convention']})",
        "",
        f"  {'backend':<12} {'latency ms: median':>18} {'IQR':>17} {'min-max':>17} {'images/s':>9} "
        f"{'GFLOP/s':>8} {'of peak':>8}",
    ]
    for row in result["rows"]:
        if row["status"] != "ok":
            lines.append(f"  {row['backend']:<12} unavailable: {row['reason']}")
            continue
        lat = row["latency"]
        lines.append(
            f"  {row['backend']:<12} {lat['median_ms']:>18.1f} {_span(lat['q25_ms'], lat['q75_ms']):>17} "
            f"{_span(lat['min_ms'], lat['max_ms']):>17} {row['images_per_s']:>9.2f} "
            f"{row['gflops_per_s']:>8.1f} {100 * row['fraction_of_peak']:>7.1f}%")
    peak = result["peak"]
    timing = peak["latency"]
    lines.append(f"  {'peak':<12} {peak['what']}: {peak['gflops_per_s']:.1f} GFLOP/s (median of "
                 f"{timing['repeats']} calls, {timing['median_ms']:.1f} ms each, same threads"
                 f"{_peak_note(result)})")
    lines.append("")
    for row in result["rows"]:
        setup = f" (set-up {row['setup_s']:.1f} s)" if "setup_s" in row else ""
        lines.append(f"  {row['backend']}: {row['what']}{setup}")
    after = machine["load_average_after"]
    if after:
        lines.append(f"  load average after: {after[0]:.2f} / {after[1]:.2f} / {after[2]:.2f}")
    return "\n".join(lines)


def _peak_note(result: dict[str, Any]) -> str:
    own = [row["peak_gflops_per_s"] for row in result["rows"] if "peak_gflops_per_s" in row]
    if not own:
        return ""
    return (f"; timed right before each backend, whose share is of its own: "
            f"{min(own):.1f}-{max(own):.1f} GFLOP/s")


def _span(low: float, high: float) -> str:
    return f"{low:.1f}-{high:.1f}"


def onnx_operator_profile(path: str | Path, images: Any, threads: int | None = None, runs: int = 3,
                          optimization: str = "all") -> dict[str, Any]:
    """Where onnxruntime spends a forward of ``images`` (a float32 array) through the graph at
    ``path``: its own profiler over ``runs`` forwards after one warm-up, summed per operator type
    (after onnxruntime's graph fusions, so ``QLinearConv`` or ``FusedConv`` appear as such).
    Returns the total kernel milliseconds per forward and one row per operator type: milliseconds
    per forward, share of the total, node count."""
    import numpy as np

    feed_images = np.ascontiguousarray(np.asarray(images, dtype=np.float32))
    with tempfile.TemporaryDirectory(prefix="transkd-ort-profile-") as tmp:
        session = onnx_session(path, threads=threads, optimization=optimization,
                               profile_prefix=str(Path(tmp) / "profile"))
        feed = {session.get_inputs()[0].name: feed_images}
        session.run(None, feed)
        for _ in range(runs):
            session.run(None, feed)
        profile_file = session.end_profiling()
        events = json.loads(Path(profile_file).read_text(encoding="utf-8"))
    per_type: dict[str, list[float]] = {}
    nodes: dict[str, set[str]] = {}
    per_run = max(1, runs + 1)
    for event in events:
        if event.get("cat") != "Node" or not str(event.get("name", "")).endswith("_kernel_time"):
            continue
        op = event.get("args", {}).get("op_name", "?")
        per_type.setdefault(op, []).append(event.get("dur", 0) / 1e3)
        nodes.setdefault(op, set()).add(event["name"])
    total = sum(sum(v) for v in per_type.values()) / per_run
    rows = sorted(({"op": op, "ms": sum(v) / per_run, "share": (sum(v) / per_run) / total if total else 0.0,
                    "nodes": len(nodes[op])} for op, v in per_type.items()), key=lambda r: -r["ms"])
    return {"graph": str(path), "threads": threads, "runs": per_run, "kernel_ms": total, "ops": rows,
            "input_size": list(feed_images.shape)}


def format_operator_profile(profile: dict[str, Any], top: int = 12) -> str:
    """The operator profile as aligned lines, the busiest operator types first."""
    shape = "x".join(map(str, profile["input_size"]))
    lines = [f"{profile['graph']}: {profile['kernel_ms']:.1f} ms of kernels per forward (input {shape}, "
             f"{profile['threads']} thread(s), onnxruntime profiler, {profile['runs']} forwards)"]
    for row in profile["ops"][:top]:
        lines.append(f"  {row['op']:<28} {row['ms']:>9.1f} ms {100 * row['share']:>6.1f}%  "
                     f"{row['nodes']:>4} node(s)")
    return "\n".join(lines)
