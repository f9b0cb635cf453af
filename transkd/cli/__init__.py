"""Command-line interface: ``transkd SUBCOMMAND ...``; each subcommand is one small module.

A subcommand module defines ``add_parser(subparsers)`` and ``run(args) -> int``; the library does
the work, the module parses and prints.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from .. import __version__
from ..errors import DiskFullError, TranskdError

#: Subcommand modules, in the order ``transkd --help`` lists them.
SUBCOMMANDS = ("demo", "train", "distill", "eval", "flops", "predict", "export", "bench",
               "convert", "report", "sweep")


def _load_subcommands():
    modules = []
    for name in SUBCOMMANDS:
        try:
            modules.append(importlib.import_module(f"{__name__}.{name}"))
        except ModuleNotFoundError as exc:  # a subcommand not shipped in this build
            if exc.name != f"{__name__}.{name}":
                raise
    return modules


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="transkd", description="Distil semantic-segmentation transformers into small students.")
    parser.add_argument("--version", action="version", version=f"transkd {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in _load_subcommands():
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    debug = "--debug" in argv
    parser = build_parser()
    args = parser.parse_args(argv)
    from ..host_memory import reuse_freed_memory  # deferred: --help needs no ctypes

    reuse_freed_memory()
    try:
        from ..models.linear import cpu_matmul_backend

        cpu_matmul_backend()  # a bad TRANSKD_CPU_MATMUL is named now, not at the first forward
        return int(args.run(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (TranskdError, ValueError, TypeError, FileNotFoundError, PermissionError,
            IsADirectoryError, NotADirectoryError) as exc:
        if debug:
            raise
        print(f"error: {one_line(exc)}", file=sys.stderr)
        return 2
    except OSError as exc:  # a write the library does not guard itself, on a full disk
        from ..weights.io import disk_full  # deferred: torch is not needed to print --help

        if debug or not disk_full(exc):
            raise
        print(f"error: {DiskFullError(exc.filename or 'a file', 'files written before are kept')}",
              file=sys.stderr)
        return 2


def one_line(exc: BaseException) -> str:
    """The error's sentence; for an error raised in a DataLoader worker, PyTorch's message wraps
    the worker's whole traceback around it, and only the original sentence is kept."""
    text = str(exc).strip()
    if "\nOriginal Traceback" in text:
        last = text.splitlines()[-1].strip()
        name = type(exc).__qualname__
        return last.removeprefix(f"{type(exc).__module__}.{name}: ").removeprefix(f"{name}: ")
    return text


if __name__ == "__main__":
    sys.exit(main())
