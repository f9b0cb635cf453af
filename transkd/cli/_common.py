"""What the training and reporting subcommands share: the resolved config, a training run, and
printing numbers that say what they are. The option vocabulary is in :mod:`._options`."""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from typing import Any

from tqdm import tqdm

from ..config import Config, load_config
from ..data.selection import parse_selection
from ..engine.distributed import cleanup_distributed
from ..engine.interrupt import exit_code
from ..engine.run import execute, plan_run, protocol_description
from ..engine.trainer import AGREEMENT
from ._options import config_overrides


def config_from_args(args: argparse.Namespace, extra: Sequence[str] = (),
                     base: dict[str, Any] | None = None) -> Config:
    """The validated config: file, then ``--set`` overrides, then shortcut options."""
    return load_config(args.config, config_overrides(args, extra), base=base)


def percent(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{100 * value:.2f}"


def context_line(description: dict[str, Any], dataset: str, split: str) -> str:
    """``camvid val, protocol paper, input short side 512, metric at 0.25 of ...``."""
    return (f"{dataset} {split}, protocol {description['protocol']}, input {description['input_size']}, "
            f"metric at {description['metric_resolution']}, inference {description['inference']}")


def class_table(class_names: Sequence[str], iou: Sequence[float],
                accuracy: Sequence[float] | None = None) -> str:
    """Per-class IoU (and accuracy) in percent, one class a line."""
    width = max([len(n) for n in class_names] + [5])
    header = f"  {'class':<{width}}  {'IoU %':>7}" + (f"  {'acc %':>7}" if accuracy else "")
    lines = [header]
    for index, name in enumerate(class_names):
        line = f"  {name:<{width}}  {percent(iou[index]):>7}"
        if accuracy:
            line += f"  {percent(accuracy[index]):>7}"
        lines.append(line)
    return "\n".join(lines)


def progress_line(message: str) -> None:
    """A line printed above a running progress bar without breaking it."""
    tqdm.write(message, file=sys.stdout)


def say(message: str = "", enabled: bool = True) -> None:
    if enabled:
        print(message, file=sys.stdout, flush=True)


def run_training(config: Config, resume: str | None, command: str, progress: bool = True) -> int:
    """Plan (check everything), train, print where results went; exit code 128 + the signal's
    number if a signal interrupted it (130 Ctrl-C, 143 SIGTERM, 138 SIGUSR1).
    ``progress``: a bar on a terminal, or plain progress lines in a log."""
    plan = plan_run(config, resume)
    main = plan.env.is_main
    try:
        if plan.resume_note is not None:
            say(plan.resume_note, main)
        if plan.resume is not None:
            say(f"resuming from {plan.resume}", main)
        say(f"run folder: {plan.run_dir}", main)
        result = execute(plan, announce=progress_line, progress=progress)
    finally:
        cleanup_distributed(plan.env)
    if not main:
        return 0 if result.status == "completed" else exit_code(result.stopped_by)
    agreement = result.extra.get("validation") == AGREEMENT
    if agreement:
        count = min(config.data.agreement_images, len(plan.bundle.unlabelled.images))
        where = context_line(protocol_description(config), f"{count} unlabelled images", "(no labels)")
    else:
        where = context_line(protocol_description(config), plan.bundle.name, config.data.val_split)
    if result.teacher_val:
        say(f"teacher val mIoU {percent(result.teacher_val['miou'])}% "
            f"(pixel acc {percent(result.teacher_val['acc'])}%) — {where}")
    if result.status == "interrupted":
        by = f" by {result.stopped_by}" if result.stopped_by not in (None, "SIGINT") else ""
        say(f"interrupted{by} after {result.steps}/{result.total_steps} steps; resumable checkpoint: "
            f"{result.checkpoint}")
        say(f"continue with: transkd {command} ... --output {plan.run_dir} --resume auto")
        return exit_code(result.stopped_by)
    best = result.best or {}
    last = result.last_val or {}
    if agreement:
        say(f"best agreement with teacher {percent(best.get('miou'))}% (mIoU of student vs teacher "
            f"predictions) at step {best.get('step')} (epoch {best.get('epoch')}); last agreement "
            f"with teacher {percent(last.get('miou'))}%, pixel agreement {percent(last.get('acc'))}% "
            f"— {where}")
    else:
        selection = parse_selection(config.data.selection)
        chosen = "best val mIoU" if selection.on_reported_split else \
            f"val mIoU (evaluated once; {selection.label(config.data.val_split)})"
        say(f"{chosen} {percent(best.get('miou'))}% at step {best.get('step')} "
            f"(epoch {best.get('epoch')}); last val mIoU {percent(last.get('miou'))}%, "
            f"pixel acc {percent(last.get('acc'))}% — {where}")
    if result.skipped_steps:
        say(f"skipped {result.skipped_steps} step(s) with a non-finite loss")
    say(f"trained {result.steps} steps in {result.train_seconds:.1f} s")
    role = "student" if config.method_names else "network"
    say(f"deployable {role}: {result.best_weights} (best), {result.last_weights} (last)")
    say(f"resumable checkpoint: {result.checkpoint}")
    tensorboard = f"TensorBoard: {plan.run_dir / 'tensorboard'}; " if config.train.tensorboard else ""
    say(f"config: {plan.run_dir / 'config.yaml'}; metrics: {plan.run_dir / 'metrics.jsonl'}; "
        f"{tensorboard}summary: {plan.run_dir / 'summary.json'}")
    return 0
