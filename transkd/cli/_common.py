"""What the subcommands share: one option name per concept (the vocabulary below), the config
options, the resolved config, and printing numbers that say what they are.

The vocabulary, on every command where the concept applies:

==================  ===========================  ==========================
concept             option                       older spellings (hidden)
==================  ===========================  ==========================
saved model         ``MODEL`` (positional)       ``WEIGHTS|RUN``, ``CKPT``
last, not best      ``--last``
output              ``-o``/``--output``
input size          ``--input-size H W``         ``--height``, ``--width``
images per pass     ``--batch-size B``           ``--batch``
output classes      ``--num-classes K``
device              ``--device``
no progress bar     ``--no-progress``
JSON result         ``--json``
==================  ===========================  ==========================
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from typing import Any

from ..config import Config, load_config

#: ``--num-classes`` default for a model built by name: the paper's Cityscapes setting.
DEFAULT_NUM_CLASSES = 20
DEFAULT_INPUT_SIZE = (512, 1024)


def add_model(parser: argparse.ArgumentParser, by_name: bool = False, saved: bool = True) -> None:
    """The positional ``MODEL``: a saved model (file or run folder, with ``--last``) and/or a name."""
    what = []
    if saved:
        what.append("a transkd .safetensors file or a run folder (its best network)")
    if by_name:
        what.append("a registered model name, e.g. segformer_b0" + (" (random weights)" if saved else ""))
    parser.add_argument("model", metavar="MODEL", help=", or ".join(what))
    if saved:
        parser.add_argument("--last", action="store_true",
                            help="with a run folder: its last network instead of the best one")


def add_output(parser: argparse.ArgumentParser, metavar: str, help: str, required: bool = False,
               default: str | None = None) -> None:
    parser.add_argument("-o", "--output", metavar=metavar, required=required, default=default, help=help)


def add_input_size(parser: argparse.ArgumentParser, help: str, default: Sequence[int] | None,
                   legacy_sides: bool = False) -> None:
    """``--input-size H W``; ``legacy_sides`` also accepts the older ``--height H``/``--width W``."""
    parser.add_argument("--input-size", type=int, nargs=2, default=None if default is None else
                        list(default), metavar=("H", "W"), help=help)
    if legacy_sides:
        parser.add_argument("--height", type=int, dest="input_size", action=_Side, side=0,
                            default=argparse.SUPPRESS, help=argparse.SUPPRESS)
        parser.add_argument("--width", type=int, dest="input_size", action=_Side, side=1,
                            default=argparse.SUPPRESS, help=argparse.SUPPRESS)


class _Side(argparse.Action):
    """One side of ``--input-size``; the other stays as given, or None (the command's default)."""

    def __init__(self, *args: Any, side: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.side = side

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        size = list(getattr(namespace, self.dest, None) or [None, None])
        size[self.side] = values
        setattr(namespace, self.dest, size)


def add_batch_size(parser: argparse.ArgumentParser, help: str, legacy_batch: bool = False) -> None:
    parser.add_argument("--batch-size", type=int, default=1, metavar="B", help=help)
    if legacy_batch:
        parser.add_argument("--batch", type=int, dest="batch_size", default=argparse.SUPPRESS,
                            help=argparse.SUPPRESS)


def add_num_classes(parser: argparse.ArgumentParser, help: str, default: int | None = None) -> None:
    parser.add_argument("--num-classes", type=int, default=default, metavar="K", help=help)


def add_device(parser: argparse.ArgumentParser, help: str, default: str | None = None) -> None:
    parser.add_argument("--device", default=default, metavar="NAME", help=help)


def add_no_progress(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def add_json(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print the result as one JSON object")


def add_config_arguments(parser: argparse.ArgumentParser, resume: bool = True) -> None:
    """``--config``, ``--set``, ``--data``, ``--device``; for training also ``-o/--output`` (the run
    folder) and ``--resume``."""
    parser.add_argument("--config", metavar="FILE.yaml",
                        help="YAML config (presets in configs/); defaults fill everything else")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override one key, e.g. --set optim.lr=1e-4 (repeatable; value is YAML)")
    parser.add_argument("--data", metavar="ROOT", help="dataset root folder (shortcut for data.root)")
    add_device(parser, "cpu, cuda, cuda:1 ... (shortcut for train.device)")
    if resume:
        add_output(parser, "DIR", "run folder (shortcut for output.dir)")
        parser.add_argument("--resume", metavar="CKPT|auto",
                            help="continue from a checkpoint, a run folder, or 'auto' (the output "
                                 "folder's last checkpoint if there is one)")
    else:  # accepted as before; an evaluation writes no run folder
        parser.add_argument("--output", metavar="DIR", help=argparse.SUPPRESS)


def config_overrides(args: argparse.Namespace, extra: Sequence[str] = ()) -> list[str]:
    """``--set`` overrides, then the shortcut options as overrides."""
    overrides = list(args.overrides)
    if getattr(args, "data", None) is not None:
        overrides.append(f"data.root={_quoted(args.data)}")
    if getattr(args, "output", None) is not None:
        overrides.append(f"output.dir={_quoted(args.output)}")
    if getattr(args, "device", None) is not None:
        overrides.append(f"train.device={_quoted(args.device)}")
    overrides.extend(extra)
    return overrides


def config_from_args(args: argparse.Namespace, extra: Sequence[str] = (),
                     base: dict[str, Any] | None = None) -> Config:
    """The validated config: file, then ``--set`` overrides, then shortcut options."""
    return load_config(args.config, config_overrides(args, extra), base=base)


def _quoted(text: str) -> str:
    """A path as a YAML string, whatever characters it holds."""
    return "'" + str(text).replace("'", "''") + "'"


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
    from tqdm import tqdm

    tqdm.write(message, file=sys.stdout)


def say(message: str = "", enabled: bool = True) -> None:
    if enabled:
        print(message, file=sys.stdout, flush=True)


def run_training(config: Config, resume: str | None, command: str) -> int:
    """Plan (check everything), train, print where results went; exit code 130 if interrupted."""
    from ..engine.distributed import cleanup_distributed
    from ..engine.run import execute, plan_run, protocol_description

    plan = plan_run(config, resume)
    main = plan.env.is_main
    try:
        if plan.resume_note is not None:
            say(plan.resume_note, main)
        if plan.resume is not None:
            say(f"resuming from {plan.resume}", main)
        say(f"run folder: {plan.run_dir}", main)
        result = execute(plan, announce=progress_line)
    finally:
        cleanup_distributed(plan.env)
    if not main:
        return 0 if result.status == "completed" else 130
    where = context_line(protocol_description(config), plan.bundle.name, config.data.val_split)
    if result.teacher_val:
        say(f"teacher val mIoU {percent(result.teacher_val['miou'])}% "
            f"(pixel acc {percent(result.teacher_val['acc'])}%) — {where}")
    if result.status == "interrupted":
        say(f"interrupted after {result.steps}/{result.total_steps} steps; resumable checkpoint: "
            f"{result.checkpoint}")
        say(f"continue with: transkd {command} ... --output {plan.run_dir} --resume auto")
        return 130
    best = result.best or {}
    last = result.last_val or {}
    say(f"best val mIoU {percent(best.get('miou'))}% at step {best.get('step')} "
        f"(epoch {best.get('epoch')}); last val mIoU {percent(last.get('miou'))}%, "
        f"pixel acc {percent(last.get('acc'))}% — {where}")
    if result.skipped_steps:
        say(f"skipped {result.skipped_steps} step(s) with a non-finite loss")
    say(f"trained {result.steps} steps in {result.train_seconds:.1f} s")
    role = "student" if config.method_names else "network"
    say(f"deployable {role}: {result.best_weights} (best), {result.last_weights} (last)")
    say(f"resumable checkpoint: {result.checkpoint}")
    say(f"config: {plan.run_dir / 'config.yaml'}; metrics: {plan.run_dir / 'metrics.jsonl'}; "
        f"TensorBoard: {plan.run_dir / 'tensorboard'}; summary: {plan.run_dir / 'summary.json'}")
    return 0
