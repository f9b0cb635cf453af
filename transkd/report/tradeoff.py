"""Accuracy against latency and size of one student in every deployable form, measured in one run.

For a saved student and the dataset it was trained on, :func:`deployment_tradeoff` builds each
variant — PyTorch eager fp32, ``torch.compile``, and onnxruntime fp32, fp16, int8-dynamic and
int8-static graphs written by ``transkd export`` — then

- scores each on the same split with the same pipeline and metric (``transkd eval``: the mIoU of
  every exported graph is measured, not assumed);
- times them on one random input of the stated size, interleaved (one forward of each variant in
  turn, ``repeats`` rounds after warm-up) on the same thread count, next to an fp32 matmul
  peak of the same run (``deploy.bench.matmul_runner``); both wall time and process CPU time are kept;
- records each variant's size on disk, the CPU (model name, VNNI/AMX/AVX-512 flags) and the load.

:func:`format_tradeoff` gives the Markdown table and :func:`plot_tradeoff` the picture (mIoU
against latency, marker area by size on disk). It lives above the engine (scoring) and deploy
(export, timing), which may not import each other.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from ..deploy import Student
from ..deploy.bench import (
    compile_for_inference,
    cpu_description,
    load_average,
    matmul_runner,
    onnxruntime_version,
    summarize,
    time_interleaved,
    torch_threads,
)
from ..deploy.export import export_input_size, export_student
from ..deploy.quantize import DEFAULT_CALIBRATION_IMAGES, QuantizeOptions
from ..engine.score import evaluate_checkpoint, evaluation_images
from ..errors import ConfigError
from ..host_memory import host_allocator
from ..jsonsafe import json_safe
from ..models.linear import describe_cpu_matmul
from ..models.onnx_graph import OnnxSegmentor
from ..profile import FLOPS_CONVENTION, count_flops_total
from ..weights.io import model_file
from .plots import _pyplot, save_figure, write_atomically

#: The fp32 matmul timed in the same rounds as the variants: the machine's practical ceiling.
PEAK = "matmul peak"
VARIANTS = ("eager", "compile", "ort-fp32", "ort-fp16", "ort-int8-dynamic", "ort-int8-static")
_DESCRIPTIONS = {
    "eager": "PyTorch eager fp32, inference_mode",
    "compile": "torch.compile (inductor, weights frozen) fp32, inference_mode",
    "ort-fp32": "onnxruntime CPU, fp32 graph",
    "ort-fp16": "onnxruntime CPU, fp16 graph (float32 input/output)",
    "ort-int8-dynamic": "onnxruntime CPU, int8 weights, activations quantised per call",
    "ort-int8-static": "onnxruntime CPU, int8 weights and calibrated int8 activations",
}


def _yaml_string(text: str) -> str:
    return "'" + str(text).replace("'", "''") + "'"


def deployment_tradeoff(model: str | os.PathLike, data_root: str | os.PathLike | None = None, *,
                        output: str | os.PathLike | None = None, variants: Sequence[str] = VARIANTS,
                        threads: int | None = None, input_size: Sequence[int | None] | None = None,
                        repeats: int = 10, warmup: int = 2,
                        calibration_images: int = DEFAULT_CALIBRATION_IMAGES,
                        static: QuantizeOptions | None = None, dynamic: QuantizeOptions | None = None,
                        exporter: str = "dynamo", attention: str = "standard",
                        config_file: str | os.PathLike | None = None,
                        overrides: Sequence[str] = (), split: str | None = None, last: bool = False,
                        accuracy: bool = True, peak_size: int = 2048,
                        announce: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Measure ``variants`` of the student at ``model`` (file or run folder; ``last``: its last
    network); see the module docstring. ``data_root``: the dataset's folder (``data.root``),
    needed for accuracy and for int8-static calibration. ``output``: a folder that keeps the
    exported graphs (default: a temporary one). ``input_size``: the timed input's (height, width)
    (default: the size the student was trained at). ``static``/``dynamic``: the INT8 schemes
    (default: :class:`QuantizeOptions` defaults). ``exporter``/``attention``: how the graphs are
    written (``transkd export --exporter/--attention``). Returns a JSON-ready dict."""
    say = announce or (lambda _: None)
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown or not variants:
        raise ConfigError(f"variants must be among {', '.join(VARIANTS)}, got {', '.join(unknown) or 'none'}")
    for name, value, low in (("--repeats", repeats, 1), ("--warmup", warmup, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ConfigError(f"{name} must be an integer of at least {low}, got {value!r}")
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise ConfigError(f"--threads must be a positive integer, got {threads!r}")
    run_config = Path(model) / "config.yaml"  # a run folder names its dataset, root and pipeline
    if config_file is None and run_config.is_file():
        config_file = run_config
    weights = model_file(model, last)
    student = Student.load(weights)
    size, why = export_input_size(student.metadata, input_size)
    if data_root is not None:
        overrides = [*overrides, f"data.root={_yaml_string(str(data_root))}"]
    static = dataclasses.replace(static or QuantizeOptions(), precision="int8-static").validate()
    dynamic = dataclasses.replace(dynamic or QuantizeOptions(), precision="int8-dynamic").validate()
    lowering = {"ort-fp32": QuantizeOptions("fp32"), "ort-fp16": QuantizeOptions("fp16"),
                "ort-int8-dynamic": dynamic, "ort-int8-static": static}
    with tempfile.TemporaryDirectory(prefix="transkd-tradeoff-") as tmp, torch_threads(threads) as used:
        folder = Path(output) if output is not None else Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        rows: dict[str, dict[str, Any]] = {}
        runs: dict[str, Callable[[], Any]] = {}
        images = torch.randn(1, 3, *size, generator=torch.Generator().manual_seed(0))
        for variant in variants:
            row: dict[str, Any] = {"variant": variant, "what": _DESCRIPTIONS[variant]}
            rows[variant] = row
            start = time.perf_counter()
            try:
                say(f"{variant}: preparing")
                network, file = _prepare(variant, student, weights, folder, size, (exporter, attention),
                                         lowering, overrides, calibration_images, config_file, split,
                                         last, used, row, images)
                run = _runner(network, images)
                run()
                runs[variant] = run
            except Exception as exc:  # a variant that cannot be built is a result, not a crash
                reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                row.update(status="unavailable", reason=f"{type(exc).__name__}: {reason}"[:300])
                continue
            row.update(status="ok", file=str(file), size_mb=file.stat().st_size / 1e6,
                       setup_s=time.perf_counter() - start)
            if accuracy:
                say(f"{variant}: scoring")
                onnx = variant.startswith("ort-")
                score = evaluate_checkpoint(file if onnx else weights, config_file=config_file,
                                            overrides=overrides, split=split, threads=used,
                                            model=None if onnx else network)
                row.update(miou=score.metrics["miou"], acc=score.metrics["acc"])
                rows.setdefault("_score", {"dataset": score.dataset, "split": score.split,
                                           "images": score.images, **score.description})
        score_info = rows.pop("_score", None)
        load_before = load_average()
        say(f"timing {', '.join(runs)}: {warmup} warm-up + {repeats} interleaved rounds")
        flops = count_flops_total(student.model, images)
        peak_run, peak_flops, peak_what = matmul_runner(peak_size)
        timings = time_interleaved({**runs, PEAK: peak_run}, warmup, repeats)
        load_after = load_average()
    peak_timing = timings.pop(PEAK)
    peak = {"what": peak_what, "flops_per_call": peak_flops}
    for clock in ("wall", "cpu"):
        peak[clock] = summarize(peak_timing[clock])
        peak[f"gflops_per_s_{clock}"] = peak_flops / (peak[clock]["median_ms"] / 1e3) / 1e9
    base = timings.get("ort-fp32") or timings.get("eager")
    for variant, timing in timings.items():
        row = rows[variant]
        row.update(latency=summarize(timing["wall"]), cpu_time=summarize(timing["cpu"]))
        for clock, key in (("wall", "latency"), ("cpu", "cpu_time")):
            achieved = flops / (row[key]["median_ms"] / 1e3) / 1e9
            row[f"gflops_per_s_{clock}"] = achieved
            row[f"fraction_of_peak_{clock}"] = achieved / peak[f"gflops_per_s_{clock}"]
            if base is not None:
                row[f"speed_vs_baseline_{clock}"] = (summarize(base[clock])["median_ms"]
                                                     / row[key]["median_ms"])
    return json_safe({
        "model": student.name, "weights": str(weights), "num_classes": student.num_classes,
        "input_size": [1, 3, *size], "input_size_reason": why, "exporter": exporter,
        "attention": attention, "threads": used, "repeats": repeats,
        "warmup": warmup, "baseline": "ort-fp32" if "ort-fp32" in timings else "eager",
        "flops_per_forward": flops, "flops_convention": FLOPS_CONVENTION,
        "peak": peak, "accuracy": score_info,
        "rows": [rows[v] for v in variants],
        "machine": {"cpu": cpu_description(), "load_average_before": load_before,
                    "load_average_after": load_after, "torch": torch.__version__,
                    "onnxruntime": onnxruntime_version(), "host_allocator": host_allocator(),
                    "cpu_matmul": describe_cpu_matmul()},
    })


def _prepare(variant, student, weights, folder, size, graph, lowering, overrides, calibration_images,
             config_file, split, last, threads, row, sample):
    """The network to time for ``variant`` and the file whose size it has on disk."""
    if variant == "eager":
        return student.model, Path(weights)
    if variant == "compile":
        return compile_for_inference(student.model, sample), Path(weights)
    options = lowering[variant]
    path = folder / f"{student.name}_{variant.removeprefix('ort-')}.onnx"
    calibration = None
    if options.precision == "int8-static":
        calibration = lambda: evaluation_images(weights, calibration_images, config_file=config_file,  # noqa: E731
                                                overrides=overrides, last=last)
    result = export_student(student, path, input_size=size, exporter=graph[0], attention=graph[1],
                            quantize=options,
                            calibration=calibration, check_sizes=[(1, *size)])
    row["lowering"] = result.lowering or {"precision": "fp32"}
    return OnnxSegmentor(path, threads=threads), path


def _runner(network: torch.nn.Module, images: torch.Tensor) -> Callable[[], Any]:
    def run():
        with torch.inference_mode():
            return network(images)
    return run


def _number(value: Any, digits: int = 1, scale: float = 1.0, suffix: str = "") -> str:
    return "n/a" if value is None else f"{value * scale:.{digits}f}{suffix}"


def setting_line(result: dict[str, Any]) -> str:
    """What every number of the table was measured on, in one sentence."""
    cpu = result["machine"]["cpu"]
    load = result["machine"]["load_average_before"]
    after = result["machine"]["load_average_after"]
    shape = "x".join(map(str, result["input_size"]))
    accuracy = result.get("accuracy")
    scored = (f"mIoU on {accuracy['dataset']} {accuracy['split']} ({accuracy['images']} images, the "
              "student's own evaluation pipeline)" if accuracy else "accuracy not measured")
    isa = ", ".join(cpu["isa"]) or "no AVX2/AVX-512/VNNI/AMX flags"
    return (f"{result['model']} ({result['num_classes']} classes) · latency of one forward of a "
            f"{shape} input ({result['input_size_reason']}), {result['threads']} thread(s), median of "
            f"{result['repeats']} interleaved rounds after {result['warmup']} warm-up · CPU {cpu['model']} "
            f"({cpu['cpus']} CPUs; {isa}) · load average {_load(load)} before, {_load(after)} after · "
            f"host memory: {result['machine'].get('host_allocator', 'not recorded')} · CPU matmul of "
            f"linear layers: {result['machine'].get('cpu_matmul', 'not recorded')} · {scored}")


def _load(load: list[float] | None) -> str:
    return "unknown" if not load else f"{load[0]:.2f}/{load[1]:.2f}/{load[2]:.2f} (1/5/15 min)"


#: Where a run folder keeps its trade-off (``transkd bench RUN --tradeoff``), read by ``transkd report``.
DEPLOY_FOLDER = "deploy"
TRADEOFF_FILE = "tradeoff.json"


def tradeoff_table(result: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the table; every column says what it holds."""
    base = result["baseline"]
    header = ["variant", "mIoU %", "wall ms (median)", "wall IQR ms", "CPU ms (median)",
              f"speed vs {base} (wall / CPU)", "of matmul peak (wall / CPU)", "size MB"]
    rows = []
    for row in result["rows"]:
        if row.get("status") != "ok" or "latency" not in row:
            rows.append([row["variant"], f"unavailable: {row.get('reason', 'not timed')}"] + [""] * 6)
            continue
        lat, cpu = row["latency"], row["cpu_time"]
        speed = (f"{row['speed_vs_baseline_wall']:.2f}× / {row['speed_vs_baseline_cpu']:.2f}×"
                 if "speed_vs_baseline_wall" in row else "n/a")
        rows.append([row["variant"], _number(row.get("miou"), 2, 100), f"{lat['median_ms']:.1f}",
                     f"{lat['q25_ms']:.1f}–{lat['q75_ms']:.1f}", f"{cpu['median_ms']:.1f}", speed,
                     f"{100 * row['fraction_of_peak_wall']:.1f}% / {100 * row['fraction_of_peak_cpu']:.1f}%",
                     f"{row['size_mb']:.1f}"])
    return header, rows


def tradeoff_notes(result: dict[str, Any]) -> list[str]:
    """The sentences under the table: the peak it is measured against, and each lowering."""
    peak = result["peak"]
    notes = [f"Matmul peak: {peak['what']}, timed in the same interleaved rounds on the same threads: "
             f"{peak['gflops_per_s_wall']:.1f} GFLOP/s by wall time, {peak['gflops_per_s_cpu']:.1f} by CPU "
             f"time; FLOPs per forward {result['flops_per_forward'] / 1e9:.2f} G "
             f"({result['flops_convention']}). CPU ms: process CPU time (all threads), which other "
             "processes on the machine do not inflate."]
    for row in result["rows"]:
        if row.get("lowering") and row["lowering"].get("precision") not in (None, "fp32"):
            details = ", ".join(f"{k} {','.join(v) if isinstance(v, list) else v}"
                                for k, v in row["lowering"].items() if k != "precision")
            notes.append(f"{row['variant']}: {details}")
    return notes


def format_tradeoff(result: dict[str, Any]) -> str:
    """The result as Markdown: the setting, the table and its notes."""
    header, rows = tradeoff_table(result)
    lines = [setting_line(result), "", "| " + " | ".join(header) + " |",
             "|---|" + "---:|" * (len(header) - 1)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    notes = tradeoff_notes(result)
    lines += ["", notes[0]] + [f"- {note}" for note in notes[1:]]
    return "\n".join(lines)


def read_tradeoff(run_dir: str | os.PathLike) -> dict[str, Any] | None:
    """The trade-off kept in a run folder (``deploy/tradeoff.json``), or None when it has none.

    A file that is not a trade-off result is an error naming it, not a silently missing section."""
    path = Path(run_dir) / DEPLOY_FOLDER / TRADEOFF_FILE
    if not path.is_file():
        return None
    try:
        result = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path} is not a readable trade-off result ({exc})") from None
    if not isinstance(result, dict) or not {"rows", "baseline", "peak", "machine"} <= result.keys():
        raise ConfigError(f"{path} is not a trade-off result written by transkd bench --tradeoff "
                          "(it lacks rows, baseline, peak or machine)")
    return result


def plot_tradeoff(result: dict[str, Any], path: str | os.PathLike, clock: str = "wall") -> Path | None:
    """mIoU against median latency (``clock`` "wall" or "cpu": process CPU time), one point per
    variant, marker area by size on disk; None when no variant has both numbers."""
    points = [r for r in result["rows"] if r.get("status") == "ok" and "latency" in r
              and r.get("miou") is not None]
    if not points:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    largest = max(r["size_mb"] for r in points)
    for row in points:
        x, y = row["latency" if clock == "wall" else "cpu_time"]["median_ms"], 100 * row["miou"]
        ax.scatter([x], [y], s=60 + 500 * row["size_mb"] / largest, alpha=0.7)
        ax.annotate(f"{row['variant']} ({row['size_mb']:.1f} MB)", (x, y), textcoords="offset points",
                    xytext=(6, 6), fontsize=8)
    shape = "x".join(map(str, result["input_size"]))
    cpu = result["machine"]["cpu"]
    what = "wall time" if clock == "wall" else "process CPU time"
    ax.set_xlabel(f"latency, ms (median {what}, input {shape}, {result['threads']} thread(s))")
    ax.set_ylabel(f"mIoU % ({(result.get('accuracy') or {}).get('split', '')})")
    ax.set_title(f"{result['model']}: accuracy vs latency on {cpu['model']} (marker area: size on disk)",
                 fontsize=9)
    ax.grid(True, alpha=0.3)
    return save_figure(fig, path)


def write_tradeoff(result: dict[str, Any], folder: str | os.PathLike) -> dict[str, Path]:
    """``tradeoff.md``, ``tradeoff.json`` and ``tradeoff.png`` in ``folder``, each written atomically."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = {}
    for name, text in (("tradeoff.md", format_tradeoff(result) + "\n"),
                       ("tradeoff.json", json.dumps(json_safe(result), indent=2) + "\n")):
        written[name] = write_atomically(folder / name,
                                         lambda tmp, text=text: Path(tmp).write_text(text, encoding="utf-8"))
    # one thread: CPU time is the steadier clock on a shared machine (module docstring)
    figure = plot_tradeoff(result, folder / "tradeoff.png", clock="cpu" if result["threads"] == 1 else "wall")
    if figure is not None:
        written["tradeoff.png"] = figure
    return written


__all__ = ["DEPLOY_FOLDER", "VARIANTS", "deployment_tradeoff", "format_tradeoff", "plot_tradeoff",
           "read_tradeoff", "setting_line", "tradeoff_notes", "tradeoff_table", "write_tradeoff"]


#: ``transkd export --max-drop``: mIoU points a lowered graph may lose before it is flagged.
DEFAULT_MAX_DROP = 2.0


@dataclasses.dataclass
class AccuracyCheck:
    """The mIoU of an exported graph next to its source network's, on the same split and pipeline."""

    reference: float  # mIoU % of the source network (PyTorch fp32)
    exported: float  # mIoU % of the graph (onnxruntime)
    split: str
    images: int
    max_drop: float

    @property
    def drop(self) -> float:
        return self.reference - self.exported

    @property
    def flagged(self) -> bool:
        return not self.drop <= self.max_drop  # NaN is flagged too


def exported_accuracy(source: str | os.PathLike, graph: str | os.PathLike,
                      data_root: str | os.PathLike | None = None, *, last: bool = False,
                      max_drop: float = DEFAULT_MAX_DROP, threads: int | None = None,
                      overrides: Sequence[str] = ()) -> AccuracyCheck:
    """Score ``source`` (a ``.safetensors`` file or run folder, PyTorch fp32) and the graph it was
    exported to on the dataset's validation split (``data_root``: where the data lies, when the
    file's own config does not say; ``overrides``: more ``key=value`` config overrides), so a lowered
    graph's accuracy is measured, not assumed."""
    if isinstance(max_drop, bool) or not isinstance(max_drop, (int, float)) or not max_drop >= 0:
        raise ConfigError(f"--max-drop must be a non-negative number of mIoU points, got {max_drop!r}")
    overrides = [*overrides, *([] if data_root is None else [f"data.root={_yaml_string(str(data_root))}"])]
    reference = evaluate_checkpoint(source, overrides=overrides, last=last)
    run_config = Path(source) / "config.yaml"  # a run folder: the graph is scored with its config
    exported = evaluate_checkpoint(graph, config_file=run_config if run_config.is_file() else None,
                                   overrides=overrides, threads=threads)
    return AccuracyCheck(reference=100 * reference.metrics["miou"], exported=100 * exported.metrics["miou"],
                         split=exported.split, images=exported.images, max_drop=float(max_drop))
