"""One option name per concept, on every subcommand where the concept applies; older spellings
still parse but are hidden from ``--help``:

==================  ===========================  ==========================
concept             option                       older spellings (hidden)
==================  ===========================  ==========================
saved model         ``MODEL`` (positional)
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
from collections.abc import Sequence
from typing import Any

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
        add_no_progress(parser)
    else:  # accepted as before; an evaluation writes no run folder
        parser.add_argument("--output", metavar="DIR", help=argparse.SUPPRESS)


def add_unlabelled(parser: argparse.ArgumentParser) -> None:
    """``--unlabelled FOLDER`` (repeatable): images without labels, a shortcut for data.unlabelled."""
    parser.add_argument("--unlabelled", action="append", metavar="FOLDER",
                        help="folder of images without labels, searched recursively (repeatable), or "
                             "'rest': the training images whose labels data.labelled_fraction leaves "
                             "out (shortcut for data.unlabelled)")


def config_overrides(args: argparse.Namespace, extra: Sequence[str] = ()) -> list[str]:
    """``--set`` overrides, then the shortcut options as overrides."""
    overrides = list(args.overrides)
    if getattr(args, "data", None) is not None:
        overrides.append(f"data.root={yaml_string(args.data)}")
    if getattr(args, "output", None) is not None:
        overrides.append(f"output.dir={yaml_string(args.output)}")
    if getattr(args, "device", None) is not None:
        overrides.append(f"train.device={yaml_string(args.device)}")
    if getattr(args, "unlabelled", None):
        overrides.append(f"data.unlabelled=[{', '.join(yaml_string(f) for f in args.unlabelled)}]")
    overrides.extend(extra)
    return overrides


def yaml_string(text: str) -> str:
    """A path as a YAML string, whatever characters it holds."""
    return "'" + str(text).replace("'", "''") + "'"


def add_baseline(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--baseline", metavar="ROW", help="the row (runs of one config across seeds, "
                        "e.g. kd) every method is compared with besides the plain student "
                        "(default: a kd row if there is one)")


def add_sweep_arguments(parser: argparse.ArgumentParser) -> None:
    """``SPEC``, ``--seeds``, ``--set`` (every run, or ``NAME:KEY=VALUE`` one run), ``--teacher``,
    ``--jobs``, ``--threads``, ``-o/--output``: each replaces the spec file's value."""
    parser.add_argument("spec", metavar="SPEC.yaml", help="sweep spec: teacher, runs, seeds, overrides")
    parser.add_argument("--seeds", type=int, nargs="+", metavar="SEED", help="train.seed values of "
                        "every student run, e.g. --seeds 0 1 2")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="[RUN:]KEY=VALUE",
                        help="override one key of every run, or of the run named RUN "
                             "(e.g. --set kd:distill.options.temperature=2); repeatable")
    parser.add_argument("--data", metavar="ROOT", help="dataset root folder of every run (shortcut "
                        "for --set data.root=ROOT)")
    parser.add_argument("--teacher", metavar="FILE", help="a trained teacher (.safetensors) instead "
                        "of the spec's teacher run")
    parser.add_argument("--jobs", type=int, metavar="N", help="student runs at once")
    parser.add_argument("--threads", type=int, metavar="N", help="threads in all: the teacher uses "
                        "them all, student runs share them (threads // jobs each)")
    add_output(parser, "DIR", "sweep folder: every run in DIR/<run>/seed<k>, the report in DIR/report")
