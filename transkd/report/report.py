"""A report on one or several run folders: ``REPORT.md`` and a self-contained ``report.html``.

The runs are read from what the engine leaves behind (``config.yaml``, ``metrics.jsonl``,
``summary.json``, the deployable network in ``best/``); nothing is retrained. The report holds a comparison
table (best val mIoU, gap closed, params, MACs, wall time), mIoU and loss curves, per-class IoU,
the deployment trade-off a run keeps, sample predictions and each resolved config; every number
says how it was measured.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from .. import __version__
from ..engine.run import protocol_description
from ..engine.visualize import save_predictions
from ..errors import ConfigError, TranskdError
from ..profile import MACS_CONVENTION, TRAINING_MACS_CONVENTION
from ..weights.io import load_model
from . import plots
from .document import (
    Block,
    Bullets,
    Collapsed,
    Figure,
    Heading,
    Paragraph,
    Table,
    render_html,
    render_markdown,
)
from .runs import (
    TEACHER,
    Gap,
    Run,
    ValidationData,
    assign_roles,
    collect_run_dirs,
    gap_closed,
    giga,
    load_run,
    measure_sizes,
    millions,
    ordered,
    percent,
    run_class_names,
    run_names,
    size_text,
    slug,
)
from .seeds import group_runs, seeds_section
from .tradeoff import (
    DEPLOY_FOLDER,
    plot_tradeoff,
    read_tradeoff,
    setting_line,
    tradeoff_notes,
    tradeoff_table,
)

MARKDOWN_NAME, HTML_NAME, FIGURES_NAME = "REPORT.md", "report.html", "figures"


# --------------------------------------------------------------------------- sections

def _common(values: Iterable[str]) -> str | None:
    distinct = set(values)
    return next(iter(distinct)) if len(distinct) == 1 else None


@dataclass
class _Columns:
    """Which optional columns the comparison table needs."""

    evaluation: str | None  # shared by every run, else a column
    macs_input: str | None  # shared by every run, else a column
    gap: bool
    training: bool
    estimated_time: bool
    compute: bool = False


def comparison_section(runs: Sequence[Run]) -> list[Block]:
    gaps = {r.name: gap_closed(r, runs) for r in runs if r.config.method_names}
    columns = _Columns(evaluation=_common(r.evaluation for r in runs),
                       macs_input=_common(_macs_input(r) for r in runs),
                       gap=any(g.share is not None for g in gaps.values()),
                       training=any(r.adapter_params for r in runs),
                       estimated_time=any(r.wall_seconds[1] for r in runs),
                       compute=any(r.compute for r in runs))
    header = ["run", "role", "network", "best val mIoU (%)", "at step (epoch)", "checkpoint reported"]
    header += ["gap closed (%)"] if columns.gap else []
    header += ["params (M)"] + (["training params (M)"] if columns.training else [])
    header += ["GMACs"] + ([] if columns.macs_input else ["MACs input"]) + ["wall time (s)"]
    header += ["s / step", "training TMACs"] if columns.compute else []
    header += [] if columns.evaluation else ["evaluation"]
    rows = [_comparison_row(run, gaps.get(run.name), columns) for run in runs]
    numeric = {i for i, h in enumerate(header)
               if h.endswith(("(%)", "(M)", "(s)")) or h in ("GMACs", "s / step", "training TMACs")}
    blocks: list[Block] = [Heading("Comparison" if len(runs) > 1 else "Summary"),
                           Paragraph(_comparison_notes(columns)), Table(header, rows, numeric)]
    if gaps:
        blocks.append(Paragraph("Share of the teacher–student gap closed = (mIoU_method − "
                                "mIoU_student) / (mIoU_teacher − mIoU_student), from the val mIoU (%) "
                                "of each run's reported checkpoint, runs evaluated the same way (one "
                                "run each; the rows across seeds below pair seeds):"))
        blocks.append(Bullets([g.explanation for g in gaps.values()]))
    blocks.append(Collapsed("MAC counting rules", MACS_CONVENTION, language="text"))
    return blocks


def _macs_input(run: Run) -> str:
    return f"{size_text(run.macs_input)} ({run.macs_note})"


def _comparison_row(run: Run, gap: Gap | None, columns: _Columns) -> list[str]:
    best = run.best or {}
    row = [run.name, run.role, run.network, percent(run.best_miou),
           f"{best['step']} ({best.get('epoch')})" if "step" in best else "n/a", run.selection_label]
    if columns.gap:
        row.append("—" if gap is None else "n/a" if gap.share is None else f"{100 * gap.share:.1f}")
    row.append(millions(run.params))
    if columns.training:
        row.append(millions(run.params + run.adapter_params)
                   if run.adapter_params and run.params is not None else "—")
    row.append(giga(run.macs))
    if not columns.macs_input:
        row.append(_macs_input(run))
    row.append(_wall_time(*run.wall_seconds))
    if columns.compute:
        per_step, macs = run.compute.get("seconds_per_step"), run.compute.get("train_macs")
        row += [f"{per_step:.3f}" if isinstance(per_step, (int, float)) else "n/a",
                f"{macs / 1e12:.3f}" if isinstance(macs, (int, float)) else "n/a"]
    if not columns.evaluation:
        row.append(run.evaluation)
    return row


def _wall_time(seconds: float | None, estimated: bool) -> str:
    if seconds is None:
        return "n/a"
    return ("~" if estimated else "") + (f"{seconds:.1f}" if seconds < 10 else f"{seconds:.0f}")


def _comparison_notes(columns: _Columns) -> str:
    """The labels of every number in the comparison table."""
    if columns.compute:
        notes_compute = ("s / step: seconds of the optimiser steps alone (forward, backward, update), "
                         "averaged; training TMACs: 10¹² multiply-accumulates of the run, " +
                         TRAINING_MACS_CONVENTION + ".")
    else:
        notes_compute = ""
    if columns.evaluation:
        notes = [f"mIoU: validation mIoU in percent on {columns.evaluation}, of the checkpoint the "
                 "'checkpoint reported' column names (best on a held-out slice of train, the last one, "
                 "or — older runs — best on this split itself, which is optimistic)."]
    else:
        notes = ["mIoU: validation mIoU in percent of the checkpoint the 'checkpoint reported' "
                 "column names; each run's evaluation (split, protocol, input size, metric "
                 "resolution) is in its row."]
    where = columns.macs_input or "the size in the 'MACs input' column"
    notes.append(f"MACs: multiply-accumulates of one image at {where} through the deployed network, "
                 "counted in the TransKD paper's convention (mmcv 1.3 rules: conv and linear layers, "
                 "norms, activations; attention products not counted).")
    notes.append("Params: the deployed network" + ("; training params add the modules used only to "
                                                   "distil." if columns.training else "."))
    notes.append("Wall time: seconds of the training loop including validation, as recorded on the "
                 "machine that trained the run" + (" (~: estimated from metrics.jsonl timestamps, the "
                                                    "run has no summary.json)." if columns.estimated_time
                                                    else "."))
    if notes_compute:
        notes.append(notes_compute)
    return " ".join(notes)


def miou_section(runs: Sequence[Run], figures: Path) -> list[Block]:
    by_epochs = all(r.by_epochs for r in runs)
    axis = "epoch" if by_epochs else "optimiser step"
    curves = {}
    for run in runs:  # a run that selects on held-out training images has no val curve: that one
        records, name = run.val_records(), run.name
        if not records and run.select_records():
            records, name = run.select_records(), f"{run.name} (train_holdout)"
        curves[name] = [(r["epoch"] if by_epochs else r["step"], r["miou"]) for r in records
                        if "epoch" in r or not by_epochs]
    references = {}
    if not any(r.role == TEACHER for r in runs):
        for run in runs:
            if run.teacher_val is not None:
                references[f"teacher of {run.name} (scored once)"] = run.teacher_val["miou"]
    path = plots.plot_miou(curves, figures / "miou.png", axis, references)
    if path is None:
        return [Heading("Validation mIoU"), Paragraph("No run has a validation score yet.")]
    evaluation = _common(r.evaluation for r in runs) or "each run's own evaluation (see the table)"
    return [Heading("Validation mIoU"),
            Figure(path, f"Validation mIoU (%) against {axis}; {evaluation}. Runs marked "
                         "'(train_holdout)' choose their checkpoint on a held-out slice of train and "
                         "score val once, at the end: their curve is the held-out slice's mIoU.")]


def loss_section(runs: Sequence[Run], figures: Path) -> list[Block]:
    blocks: list[Block] = [Heading("Training losses")]
    for run in runs:
        path = plots.plot_loss_terms(run.records, figures / f"loss_{slug(run.name)}.png",
                                     f"{run.name}: loss terms")
        interval = run.config.train.log_interval
        if path is None:
            blocks.append(Paragraph(f"{run.name}: no training records yet."))
        else:
            blocks.append(Figure(path, f"{run.name} ({run.network}, method {run.method}): every "
                                       f"weighted loss term and their total, averaged over "
                                       f"{interval}-step logging windows, against optimiser step; "
                                       "learning rate on the right."))
    return blocks


def class_iou_section(runs: Sequence[Run], figures: Path) -> list[Block]:
    blocks: list[Block] = [Heading("Per-class IoU")]
    groups: dict[tuple[str, ...], list[Run]] = {}
    for run in runs:
        if (run.best or {}).get("iou"):
            groups.setdefault(run.class_names, []).append(run)
    if not groups:
        return blocks + [Paragraph("No run has a validation score yet.")]
    for index, (names, members) in enumerate(groups.items()):
        ious = {r.name: list(r.best["iou"]) for r in members}
        suffix = f"_{index + 1}" if len(groups) > 1 else ""
        path = plots.plot_class_iou(names, ious, figures / f"class_iou{suffix}.png",
                                    "IoU per class at the best validation step")
        evaluation = _common(r.evaluation for r in members) or "each run's own evaluation"
        blocks.append(Figure(path, f"IoU (%) per class at each run's best validation step; "
                                   f"{evaluation}."))
        rows = [[name] + [percent(ious[r.name][c] if c < len(ious[r.name]) else None) for r in members]
                for c, name in enumerate(names)]
        blocks.append(Table(["class"] + [f"{r.name} IoU (%)" for r in members], rows,
                            set(range(1, len(members) + 1))))
    return blocks


def deployment_section(found: Sequence[tuple[Run, dict]], figures: Path) -> list[Block]:
    """Accuracy against latency and size of each run's deployable forms, where the run keeps one
    (``transkd bench RUN --tradeoff`` writes it to ``RUN/deploy/``); nothing is measured here."""
    if not found:
        return []
    blocks: list[Block] = [Heading("Deployment: accuracy against latency"),
                           Paragraph("As measured by `transkd bench RUN --tradeoff` and kept in the run's "
                                     f"`{DEPLOY_FOLDER}/` folder: every variant scored with the same "
                                     "pipeline and metric, timed interleaved on the same threads.")]
    for run, result in found:
        header, rows = tradeoff_table(result)
        clock = "cpu" if result["threads"] == 1 else "wall"
        path = plot_tradeoff(result, figures / f"tradeoff_{slug(run.name)}.png", clock=clock)
        blocks += [Heading(f"{run.name}: its deployable forms", 3), Paragraph(setting_line(result)),
                   Table(header, rows, set(range(1, len(header))))]
        if path is not None:
            what = "process CPU time" if clock == "cpu" else "wall time"
            blocks.append(Figure(path, f"{run.name}: mIoU against median latency ({what}); marker area "
                                       "by size on disk."))
        blocks.append(Bullets(tradeoff_notes(result)))
    return blocks


def predictions_section(runs: Sequence[Run], figures: Path, data: ValidationData,
                        samples: int) -> tuple[list[Block], list[str]]:
    """Image | ground truth | each run's best network, on the first validation images."""
    blocks: list[Block] = [Heading("Sample predictions")]
    if samples == 0:
        return blocks + [Paragraph("Skipped (--samples 0).")], []
    notes: list[str] = []
    groups: dict[str, list[Run]] = {}
    for run in runs:
        dataset, reason = data.get(run)
        if dataset is None:
            notes.append(f"{run.name}: validation data not available ({reason})")
        elif run.model_file is None:
            notes.append(f"{run.name}: no deployable network in best/ or last/ to predict with")
        else:
            key = data.key(run) + json.dumps(run.config.protocol.to_dict(), sort_keys=True, default=str)
            groups.setdefault(key, []).append(run)
    for index, members in enumerate(groups.values()):
        first = members[0]
        dataset, _ = data.get(first)
        models = {}
        for run in members:
            try:
                models[run.name] = load_model(run.model_file)
            except (TranskdError, OSError) as exc:
                notes.append(f"{run.name}: {run.model_file} cannot be loaded ({exc})")
        if not models:
            continue
        indices = spread(samples, len(dataset))
        suffix = f"_{index + 1}" if len(groups) > 1 else ""
        target = figures / f"predictions{suffix}.png"
        with tempfile.TemporaryDirectory(dir=figures, prefix=".predictions-") as staging:
            save_predictions(models, dataset, data.transformed(first), indices, staging, dataset.palette,
                             dataset.num_classes, ignore_index=first.config.protocol.ignore_index,
                             class_names=dataset.class_names)
            grid = Path(staging) / "grid.png"
            plots.write_atomically(target, lambda tmp, src=grid: shutil.copyfile(src, tmp))
        words = protocol_description(first.config)
        blocks.append(Figure(target, f"{len(indices)} {first.config.data.name} "
                                     f"{first.config.data.val_split} image(s) spread over the split "
                                     f"(indices {', '.join(map(str, indices))}): image | ground truth | "
                                     f"prediction of each run's best network ({', '.join(models)}; the "
                                     "last one where no best was saved), whole-image inference on the "
                                     f"{words['protocol']} evaluation pipeline's input "
                                     f"({words['input_size']}), shown at the label's size; the legend "
                                     "under the grid names each colour (black = ignored)."))
    if notes:
        blocks.append(Paragraph("Skipped: " + "; ".join(notes) + "."))
    return blocks, notes


def spread(count: int, total: int) -> list[int]:
    """``count`` indices evenly over ``total`` samples (consecutive video frames look alike)."""
    if count >= total:
        return list(range(total))
    if count == 1:
        return [0]
    return sorted({round(i * (total - 1) / (count - 1)) for i in range(count)})


def _with_sign(value) -> str:
    text = percent(value)
    return text if text == "n/a" else text + "%"


def run_section(run: Run) -> list[Block]:
    summary = run.summary or {}
    best = run.best or {}
    last = summary.get("last_val") or next(reversed(run.val_records()), None) or {}
    steps = summary.get("steps", max((r["step"] for r in run.records if "step" in r), default=0))
    total = summary.get("total_steps")
    items = [f"folder: `{run.path}`",
             f"role: {run.role}; network: {run.network}; method: {run.method}"
             + (f" (teacher {run.teacher_model})" if run.teacher_model else ""),
             f"status: {summary.get('status', 'no summary.json (running, or stopped before the end)')}; "
             f"steps: {steps}" + (f" of {total}" if total else ""),
             f"evaluation: {run.evaluation}",
             f"{'best val mIoU' if run.selects_on_val else 'val mIoU (scored once)'} "
             f"{_with_sign(best.get('miou'))} (pixel acc {_with_sign(best.get('acc'))}) at "
             f"step {best.get('step', 'n/a')}; last val mIoU {_with_sign(last.get('miou'))}",
             f"checkpoint reported: {run.selection_label}"]
    compute = run.compute
    if compute.get("train_macs") or compute.get("seconds_per_step"):
        per_step = compute.get("seconds_per_step")
        macs = compute.get("train_macs")
        items.append("compute: " + ", ".join(filter(None, [
            f"{macs / 1e12:.3f} training TMACs" if isinstance(macs, (int, float)) else None,
            f"{per_step:.3f} s per optimiser step" if isinstance(per_step, (int, float)) else None,
            f"{compute['wall_seconds']:.0f} s wall time" if isinstance(compute.get("wall_seconds"),
                                                                      (int, float)) else None])))
    budget = summary.get("budget")
    if isinstance(budget, dict) and budget.get("label"):
        items.append(f"budget: {budget['label']} = {budget.get('steps')} optimiser steps")
    if run.teacher_val is not None:
        items.append(f"teacher val mIoU {_with_sign(run.teacher_val['miou'])}, scored when the "
                     "distillation started")
    events: dict[str, int] = {}
    for record in run.records:
        if record.get("kind") == "event":
            events[str(record.get("event"))] = events.get(str(record.get("event")), 0) + 1
    if events:
        items.append("events: " + ", ".join(f"{name} ×{count}" for name, count in events.items()))
    return [Heading(run.name, 3), Bullets(items),
            Collapsed(f"resolved config of {run.name} (config.yaml)", run.config_text)]


# --------------------------------------------------------------------------- entry point

@dataclass
class ReportResult:
    markdown: Path
    html: Path
    figures: Path
    runs: list[str]
    notes: list[str]


def default_output(run_dirs: Sequence[Path], container: Path | None) -> Path:
    """A folder of runs (a demo folder) itself, else ``report/`` in the folder that holds the runs
    (their nearest common parent: ``runs/report`` for ``runs/teacher runs/student``)."""
    if container is not None:
        return container
    parent = Path(os.path.commonpath([str(path.absolute()) for path in run_dirs]))
    if len(run_dirs) == 1 or parent in {path.absolute() for path in run_dirs}:
        parent = run_dirs[0].absolute().parent  # one run, or runs nested in another: beside it
    return _relative(parent / "report")


def _relative(path: Path) -> Path:
    """``path`` relative to the working folder when it lies inside it (shorter to print)."""
    try:
        return path.relative_to(Path.cwd())
    except ValueError:
        return path


def prepare_output(path: Path) -> Path:
    if path.exists() and not path.is_dir():
        raise ConfigError(f"output folder {path} is a file; choose a folder with --output")
    try:
        (path / FIGURES_NAME).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create output folder {path}: {exc.strerror or exc}") from None
    return path


def write_report(paths: Sequence[str | Path], output: str | Path | None = None, samples: int = 3,
                 announce: Callable[[str], None] | None = None,
                 baseline: str | None = None) -> ReportResult:
    """Read the runs behind ``paths`` (run folders, or folders of runs) and write the report.

    Checks every input before writing anything; ``samples`` validation images are predicted
    (0: none). ``baseline`` names the row (runs of one config across seeds) every method is
    compared with besides the plain student; by default a ``kd`` row if there is one."""
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 0:
        raise ConfigError(f"the number of sample images must be a non-negative integer, got {samples!r}")
    if not paths:
        raise ConfigError("give at least one run folder")
    run_dirs, container = collect_run_dirs(paths)
    output = Path(output) if output is not None else default_output(run_dirs, container)
    if output.exists() and not output.is_dir():
        raise ConfigError(f"output folder {output} is a file; choose a folder with --output")
    runs = [load_run(path, name) for path, name in zip(run_dirs, run_names(run_dirs))]
    say = announce or (lambda _message: None)
    data = ValidationData()
    for run in runs:
        run.class_names = run_class_names(run)
    say(f"measuring params and MACs of {len(runs)} run(s)")
    measure_sizes(runs, data)
    assign_roles(runs)
    runs = ordered(runs)
    labels = [g.label for g in group_runs(runs)]
    if baseline is not None and baseline not in labels:
        raise ConfigError(f"baseline {baseline!r} is not a row of the report (rows: {', '.join(labels)})")
    tradeoffs = [(run, result) for run in runs if (result := read_tradeoff(run.path)) is not None]
    output = prepare_output(output)
    say(f"writing the report to {output}")
    figures = output / FIGURES_NAME
    title = "Training report: " + ", ".join(r.name for r in runs)
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    blocks: list[Block] = [
        Heading(title, 1),
        Paragraph(f"{len(runs)} run(s): " + ", ".join(f"{r.name} (`{r.path}`)" for r in runs)
                  + f". Written by transkd {__version__} on {stamp} from the run folders' config.yaml, "
                    "metrics.jsonl and summary.json."),
    ]
    blocks += comparison_section(runs)
    say("comparing across seeds")
    blocks += seeds_section(runs, baseline)
    say("drawing curves")
    blocks += miou_section(runs, figures)
    blocks += loss_section(runs, figures)
    blocks += class_iou_section(runs, figures)
    blocks += deployment_section(tradeoffs, figures)
    say("predicting sample images")
    prediction_blocks, notes = predictions_section(runs, figures, data, samples)
    blocks += prediction_blocks
    blocks.append(Heading("Runs"))
    for run in runs:
        blocks += run_section(run)
    markdown = render_markdown(blocks, output)
    page = render_html(blocks, title)
    md_path = write_text(output / MARKDOWN_NAME, markdown)
    html_path = write_text(output / HTML_NAME, page)
    return ReportResult(md_path, html_path, figures, [r.name for r in runs], notes)


def write_text(path: Path, text: str) -> Path:
    return plots.write_atomically(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
