"""Run the commands of the user documentation, so the documentation cannot rot.

Conventions of the Markdown pages (``docs/*.md``, and any page listed in ``EXTRA_PAGES``):

- In a fenced ``console`` block, a line starting with ``$ `` is a command (a trailing ``\\``
  continues it on the next line). The other lines are the output the page promises: each must
  match, in order, some line of what the command prints (stdout and stderr together); ``...``
  matches any text and runs of spaces compare equal. If the promised output starts with
  ``error:``, the command must fail.
- A command ending in ``# not run by the docs check: <reason>`` is not run (real data, a GPU,
  days of training), but still checked: ``transkd`` commands (also behind ``torchrun`` or
  ``python -m``) must parse with transkd's own argument parser, ``train``/``distill`` must yield a
  valid config (the preset plus every ``--set``), and ``pip install`` extras must exist in
  ``pyproject.toml``.
- A fenced ``python`` block runs as a script, in page order with the commands.
- ``<!-- docs-check: write PATH -->`` before a fenced block writes its text to PATH instead.
- ``<!-- docs-check: skip REASON -->`` before a ``python`` block: compiled, not run.
- ``<!-- docs-check: layout DATASET SPLIT [SPLIT ...] [key=value ...] -->`` before a ``text``
  block listing a dataset's files under a root line: the files are created (tiny images and
  labels; list files name every image) and the dataset must open each split from them.

Each page runs in a fresh folder (with the repository's ``configs/`` linked in), commands in the
order they appear, single-threaded (tiny inputs; no oversubscription on small machines).

    python scripts/check_docs.py                   # every page
    python scripts/check_docs.py docs/quickstart.md --keep /tmp/qs   # one page, keep its folder
    python scripts/check_docs.py --models-table    # the size table of docs/models.md
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
EXCLUDED_MARK = "# not run by the docs check:"
MARKER = re.compile(r"<!--\s*docs-check:\s*(\w+)\s*(.*?)\s*-->")
FENCE = re.compile(r"^(\s*)(```+|~~~+)\s*([\w+-]*)")
COMMAND_TIMEOUT = 600


class DocCheckError(AssertionError):
    """A documented command failed, printed something else than promised, or does not parse."""


@dataclass
class Step:
    """One thing a page asks the reader to do, in page order."""

    kind: str                      # "command", "python" or "write"
    text: str                      # the command line, the code or the file content
    page: Path
    line: int
    expected: list[str] = field(default_factory=list)
    excluded: str | None = None    # the reason a command or block is not run
    path: str | None = None        # target of a "write" step

    @property
    def where(self) -> str:
        return f"{_display(self.page)}:{self.line}"


@dataclass
class Layout:
    """A documented dataset folder: its files and the splits it must open."""

    dataset: str
    splits: list[str]
    options: dict[str, str]
    root: str
    files: list[str]
    page: Path
    line: int


@dataclass
class Page:
    path: Path
    steps: list[Step]
    layouts: list[Layout]


def _display(path: Path) -> str:
    try:
        return str(path.relative_to(REPO))
    except ValueError:
        return str(path)


#: Pages outside docs/ that follow the conventions too (paths relative to the repository).
EXTRA_PAGES: tuple[str, ...] = ("README.md",)


def doc_pages() -> list[Path]:
    """Every page the check covers: ``docs/*.md`` and :data:`EXTRA_PAGES`."""
    return sorted(DOCS.glob("*.md")) + [REPO / name for name in EXTRA_PAGES]


# --------------------------------------------------------------------------- parsing

def parse_page(path: Path, text: str | None = None) -> Page:
    """Split a Markdown page into its steps and dataset layouts."""
    lines = (path.read_text(encoding="utf-8") if text is None else text).splitlines()
    steps: list[Step] = []
    layouts: list[Layout] = []
    marker: tuple[str, str] | None = None
    index = 0
    while index < len(lines):
        line = lines[index]
        found = MARKER.search(line)
        if found:
            marker = (found.group(1), found.group(2))
            index += 1
            continue
        fence = FENCE.match(line)
        if not fence:
            if line.strip():
                marker = None
            index += 1
            continue
        closing = fence.group(2)
        body: list[str] = []
        start = index + 1
        index += 1
        while index < len(lines) and not lines[index].strip().startswith(closing):
            body.append(lines[index])
            index += 1
        index += 1
        indent = len(fence.group(1))
        body = [b[indent:] if b[:indent].strip() == "" else b for b in body]
        _add_block(path, fence.group(3), body, start, marker, steps, layouts)
        marker = None
    return Page(path, steps, layouts)


def _add_block(path: Path, language: str, body: list[str], start: int,
               marker: tuple[str, str] | None, steps: list[Step], layouts: list[Layout]) -> None:
    kind, argument = marker or ("", "")
    if kind and kind not in ("write", "skip", "layout"):
        raise DocCheckError(f"{_display(path)}:{start}: unknown docs-check marker {kind!r}")
    text = "\n".join(body) + "\n"
    if kind == "write":
        if not argument:
            raise DocCheckError(f"{_display(path)}:{start}: 'write' needs a file path")
        steps.append(Step("write", text, path, start, path=argument))
    elif kind == "layout":
        layouts.append(_parse_layout(path, start, argument, body))
    elif language == "console":
        if kind == "skip":
            raise DocCheckError(f"{_display(path)}:{start}: mark console commands one by one with "
                                f"'{EXCLUDED_MARK} <reason>'")
        steps.extend(_parse_console(path, start, body))
    elif language == "python":
        if kind == "skip" and not argument:
            raise DocCheckError(f"{_display(path)}:{start}: 'skip' needs a reason")
        steps.append(Step("python", text, path, start, excluded=argument if kind == "skip" else None))
    elif kind == "skip":
        raise DocCheckError(f"{_display(path)}:{start}: 'skip' applies to python blocks only")


def _parse_console(path: Path, start: int, body: list[str]) -> list[Step]:
    steps: list[Step] = []
    current: Step | None = None
    continuing = False
    for offset, raw in enumerate(body):
        line = raw.rstrip()
        if continuing and current is not None:
            current.text = current.text[:-1].rstrip() + " " + line.strip()
            continuing = line.endswith("\\")
            continue
        if line.startswith("$ "):
            current = Step("command", line[2:].strip(), path, start + offset + 1)
            steps.append(current)
            continuing = line.endswith("\\")
        elif current is not None:
            if line.strip():
                current.expected.append(line)
        elif line.strip():
            raise DocCheckError(f"{_display(path)}:{start + offset + 1}: console output before any "
                                "'$ ' command")
    for step in steps:
        if EXCLUDED_MARK in step.text:
            step.text, _, reason = step.text.partition(EXCLUDED_MARK)
            step.text, step.excluded = step.text.strip(), reason.strip()
            if not step.excluded:
                raise DocCheckError(f"{step.where}: '{EXCLUDED_MARK}' needs a reason")
            if step.expected:
                raise DocCheckError(f"{step.where}: a command that is not run cannot promise output")
    return steps


def _parse_layout(path: Path, start: int, argument: str, body: list[str]) -> Layout:
    words = argument.split()
    if len(words) < 2:
        raise DocCheckError(f"{_display(path)}:{start}: 'layout' needs a dataset and a split")
    options = dict(w.split("=", 1) for w in words[1:] if "=" in w)
    splits = [w for w in words[1:] if "=" not in w]
    entries = [b.split("#", 1)[0].strip() for b in body]
    entries = [e for e in entries if e and e != "..."]
    if not entries or not entries[0].endswith("/"):
        raise DocCheckError(f"{_display(path)}:{start}: a layout starts with its root folder ('name/')")
    return Layout(words[0], splits, options, entries[0], entries[1:], path, start)


# --------------------------------------------------------------------------- running

def environment() -> dict[str, str]:
    """The reader's shell: this Python's ``bin`` first on PATH, one thread, no display."""
    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", MPLBACKEND="Agg", PYTHONUNBUFFERED="1")
    return env


def prepare_workdir(workdir: Path) -> None:
    workdir.mkdir(parents=True, exist_ok=True)
    link = workdir / "configs"
    if not link.exists():
        link.symlink_to(REPO / "configs", target_is_directory=True)


def run_page(path: Path, workdir: Path, log=None) -> list[tuple[Step, float]]:
    """Check a page's dataset layouts, then run its steps in ``workdir``; returns (step, seconds)
    of what ran."""
    page = parse_page(path)
    prepare_workdir(workdir)
    for number, layout in enumerate(page.layouts):
        check_layout(layout, Path(tempfile.mkdtemp(prefix=f"layout{number}-", dir=workdir)))
    timings = []
    with tempfile.TemporaryDirectory(prefix="docs-check-") as scratch:
        for number, step in enumerate(page.steps):
            if step.excluded is not None:
                check_excluded(step, workdir)
                continue
            started = time.perf_counter()
            if step.kind == "write":
                target = workdir / step.path
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(step.text, encoding="utf-8")
            elif step.kind == "python":
                script = Path(scratch) / f"block_{number}.py"
                script.write_text(step.text, encoding="utf-8")
                _run(step, [sys.executable, str(script)], workdir)
            else:
                _run(step, ["bash", "-o", "pipefail", "-c", step.text], workdir)
            seconds = time.perf_counter() - started
            timings.append((step, seconds))
            if log is not None:
                log(f"{seconds:6.1f} s  {step.where}  {step.text.splitlines()[0][:90]}")
    return timings


def _run(step: Step, argv: list[str], workdir: Path) -> None:
    try:
        done = subprocess.run(argv, cwd=workdir, env=environment(), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, timeout=COMMAND_TIMEOUT,
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise DocCheckError(f"{step.where}: still running after {COMMAND_TIMEOUT} s: "
                            f"{step.text.strip()}") from None
    output = done.stdout
    should_fail = bool(step.expected) and step.expected[0].lstrip().startswith("error:")
    if should_fail and done.returncode == 0:
        raise DocCheckError(f"{step.where}: the page says this fails, but it exited 0: "
                            f"{step.text}\n{_tail(output)}")
    if not should_fail and done.returncode != 0:
        raise DocCheckError(f"{step.where}: exit code {done.returncode}: {step.text.strip()}\n"
                            f"{_tail(output)}")
    missing = unmatched_output(step.expected, output)
    if missing is not None:
        raise DocCheckError(f"{step.where}: the page promises the line\n    {missing}\nbut "
                            f"`{step.text}` printed:\n{_tail(output)}")


def _tail(output: str, lines: int = 40) -> str:
    kept = output.replace("\r", "\n").splitlines()
    return "\n".join(("... (earlier lines cut)", *kept[-lines:]) if len(kept) > lines else kept)


def _squash(text: str) -> str:
    return " ".join(text.split())


def line_pattern(expected: str) -> re.Pattern:
    """An expected line as a regular expression: ``...`` is any text, spaces are squashed."""
    parts = [re.escape(part) for part in _squash(expected).split("...")]
    return re.compile(".*".join(parts))


def unmatched_output(expected: list[str], output: str) -> str | None:
    """The first expected line with no match after the previous match, or None."""
    actual = [_squash(line) for line in re.split(r"[\r\n]+", output)]
    position = 0
    for wanted in expected:
        pattern = line_pattern(wanted)
        while position < len(actual) and not pattern.fullmatch(actual[position]):
            position += 1
        if position == len(actual):
            return wanted.strip()
        position += 1
    return None


# --------------------------------------------------------------------------- commands not run

def check_excluded(step: Step, workdir: Path) -> None:
    """Check what can be checked of a command that is not run: its arguments and config."""
    if step.kind == "python":
        try:
            compile(step.text, step.where, "exec")
        except SyntaxError as exc:
            raise DocCheckError(f"{step.where}: python block does not compile: {exc}") from None
        return
    try:
        argv = shlex.split(step.text)
    except ValueError as exc:
        raise DocCheckError(f"{step.where}: cannot split `{step.text}`: {exc}") from None
    while argv and re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", argv[0]):  # VAR=value prefixes
        argv = argv[1:]
    if not argv:
        raise DocCheckError(f"{step.where}: empty command")
    program = Path(argv[0]).name
    if program == "transkd":
        check_transkd_arguments(step, argv[1:], workdir)
    elif program.startswith("python") and argv[1:3] == ["-m", "transkd"]:
        check_transkd_arguments(step, argv[3:], workdir)
    elif program == "torchrun":
        check_torchrun_arguments(step, argv[1:], workdir)
    elif program in ("pip", "pip3") or (program.startswith("python") and argv[1:3] == ["-m", "pip"]):
        check_pip_arguments(step, argv[1:] if program.startswith("pip") else argv[3:])


def check_torchrun_arguments(step: Step, argv: list[str], workdir: Path) -> None:
    from torch.distributed.run import get_args_parser

    with _argparse_errors(step, "torchrun"):
        options = get_args_parser().parse_args(argv)
    if not (options.module and options.training_script == "transkd"):
        raise DocCheckError(f"{step.where}: torchrun must start '-m transkd', got "
                            f"{options.training_script!r}")
    check_transkd_arguments(step, list(options.training_script_args), workdir)


def check_transkd_arguments(step: Step, argv: list[str], workdir: Path) -> None:
    """Parse with transkd's parser; for train/distill also build and validate the config."""
    from transkd.cli import build_parser

    with _argparse_errors(step, "transkd"):
        args = build_parser().parse_args(argv)
    if args.command in ("train", "distill"):
        check_training_config(step, args, workdir)


def check_training_config(step: Step, args: argparse.Namespace, workdir: Path) -> None:
    """Run the subcommand up to the point where training would start (config loaded, validated)."""
    import importlib

    from transkd.errors import TranskdError

    seen = []
    modules = [importlib.import_module(name) for name in
               ("transkd.cli._common", f"transkd.cli.{args.command}")]
    originals = [module.run_training for module in modules]
    for module in modules:
        module.run_training = lambda config, resume, command, **_: seen.append(config) or 0
    try:
        with _chdir(workdir):
            args.run(args)
    except (TranskdError, ValueError) as exc:
        raise DocCheckError(f"{step.where}: `{step.text}` has an invalid config: {exc}") from None
    finally:
        for module, original in zip(modules, originals):
            module.run_training = original
    if not seen:
        raise DocCheckError(f"{step.where}: `{step.text}` did not reach training")


@contextlib.contextmanager
def _chdir(path: Path) -> Iterator[None]:
    previous = Path.cwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(previous)


@contextlib.contextmanager
def _argparse_errors(step: Step, program: str) -> Iterator[None]:
    """argparse reports to stderr and exits; turn that into a DocCheckError."""
    import io

    buffer = io.StringIO()
    try:
        with contextlib.redirect_stderr(buffer), contextlib.redirect_stdout(io.StringIO()):
            yield
    except SystemExit as exc:
        message = buffer.getvalue().strip().splitlines()
        raise DocCheckError(f"{step.where}: {program} rejects `{step.text}`: "
                            f"{message[-1] if message else exc}") from None


def pyproject_extras() -> set[str]:
    """Names of the optional-dependency groups in pyproject.toml."""
    text = (REPO / "pyproject.toml").read_text(encoding="utf-8")
    section = re.search(r"^\[project\.optional-dependencies\]\n(.*?)(?=^\[|\Z)", text, re.M | re.S)
    return set(re.findall(r"^([A-Za-z0-9_-]+)\s*=", section.group(1), re.M)) if section else set()


def check_pip_arguments(step: Step, argv: list[str]) -> None:
    if not argv or argv[0] != "install":
        return
    known = pyproject_extras()
    for token in argv[1:]:
        found = re.fullmatch(r"\.\[([^\]]*)\]", token)
        if found:
            for extra in filter(None, (e.strip() for e in found.group(1).split(","))):
                if extra not in known:
                    raise DocCheckError(f"{step.where}: extra {extra!r} is not in pyproject.toml "
                                        f"(extras: {', '.join(sorted(known))})")


# --------------------------------------------------------------------------- dataset layouts

def build_layout(layout: Layout, base: Path) -> Path:
    """Create a layout's files (8x8 images and labels of class 0); returns the dataset root."""
    import numpy as np
    from PIL import Image

    root = base / layout.root.strip("/").split("/")[-1]
    images = []
    for entry in layout.files:
        path = root / entry
        path.parent.mkdir(parents=True, exist_ok=True)
        suffix = path.suffix.lower()
        if suffix in (".yaml", ".yml", ".json", ".txt"):
            continue
        if _is_label(entry):
            Image.fromarray(np.zeros((8, 8), np.uint8), mode="L").save(path)
        else:
            Image.fromarray(np.full((8, 8, 3), 100, np.uint8)).save(path)
            images.append(path)
    for entry in layout.files:
        path = root / entry
        if path.suffix == ".txt":
            stems = sorted({p.stem for p in images})
            path.write_text("\n".join(stems) + "\n", encoding="utf-8")
        elif path.suffix in (".yaml", ".yml"):
            path.write_text("names: [background, thing]\n", encoding="utf-8")
    return root


def _is_label(entry: str) -> bool:
    name = entry.lower()
    return any(word in name for word in ("gt", "label", "annot", "mask", "segmentationclass"))


def check_layout(layout: Layout, base: Path) -> None:
    from transkd.data import build_dataset

    root = build_layout(layout, base)
    where = f"{_display(layout.page)}:{layout.line}"
    for split in layout.splits:
        try:
            dataset = build_dataset(layout.dataset, root, split=split, **_layout_options(layout))
            sample = dataset[0] if len(dataset) else None
        except Exception as exc:  # any failure means the page describes a layout the loader rejects
            raise DocCheckError(f"{where}: {layout.dataset} split {split!r} does not open from the "
                                f"documented layout: {exc}") from None
        if sample is None:
            raise DocCheckError(f"{where}: {layout.dataset} split {split!r} is empty")


def _layout_options(layout: Layout) -> dict:
    import yaml

    return {key: yaml.safe_load(value) for key, value in layout.options.items()}


# --------------------------------------------------------------------------- config reference

def type_words(hint) -> str:
    """The type column of docs/configuration.md for a config field's annotation."""
    import types
    import typing

    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        words = " or ".join(type_words(a) for a in args if a is not type(None))
        return words + " or null" if type(None) in args else words
    if origin is typing.Literal:
        return "one of: " + ", ".join(str(a) for a in args)
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return f"list of {type_words(args[0])}s"
        return "[" + ", ".join(type_words(a) for a in args) + "]"
    if origin is dict:
        return "mapping"
    return {str: "string", int: "integer", float: "number", bool: "boolean"}[hint]


def config_fields() -> list[tuple[str, str, object]]:
    """(dotted key, type words, default) of every config field, in schema order."""
    import dataclasses
    import typing

    from transkd.config import Config

    rows = []
    sections = typing.get_type_hints(Config)
    for section in dataclasses.fields(Config):
        schema = sections[section.name]
        hints = typing.get_type_hints(schema)
        for item in dataclasses.fields(schema):
            default = (item.default if item.default is not dataclasses.MISSING
                       else item.default_factory())
            rows.append((f"{section.name}.{item.name}", type_words(hints[item.name]),
                         _plain(default)))
    return rows


def _plain(value):
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def reference_rows(text: str) -> dict[str, tuple[str, str]]:
    """``| `key` | type | `default` | meaning |`` rows of a page: key → (type, default text)."""
    rows = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 4 and re.fullmatch(r"`[\w.]+`", cells[0]):
            rows[cells[0].strip("`")] = (cells[1], cells[2].strip("`"))
    return rows


# --------------------------------------------------------------------------- sizes table

def size_rows(num_classes: int = 20, input_size: tuple[int, int] = (512, 1024)) -> list[tuple[str, int, int]]:
    """(model, params, MACs in the paper's convention at ``input_size``) for every segmentor.

    The paper's convention counts layers whose work grows with the pixel count only, so MACs at
    an input 8x smaller per side are exactly 1/64 of the full-size count: the table is measured
    at that size to stay fast (``transkd flops`` prints the full-size figures).
    """
    import torch

    from transkd.models import create_model, list_models
    from transkd.profile import count_macs_conv_linear, count_params

    scale = 8
    small = (1, 3, input_size[0] // scale, input_size[1] // scale)
    rows = []
    for name in list_models(kind="segmentor"):
        model = create_model(name, num_classes=num_classes).eval()
        with torch.no_grad():
            macs = count_macs_conv_linear(model, (torch.zeros(small),)).total * scale * scale
        rows.append((name, count_params(model), macs))
    return rows


def training_size_rows(teacher: str = "segformer_b2", student: str = "segformer_b0",
                       num_classes: int = 20) -> list[tuple[str, int, int]]:
    """(method, student + adapter params, their MACs at 512x1024) for every method, measured at
    128x256 and scaled by 16 (the few MACs of 1x1 attention squeezes do not scale; they are far
    below the table's 0.01 G precision)."""
    from transkd import create_distiller, create_model, list_methods
    from transkd.profile import profile_distiller

    rows = []
    for method in list_methods():
        if method == "none":
            continue
        distiller = create_distiller(method, create_model(teacher, num_classes=num_classes),
                                     create_model(student, num_classes=num_classes))
        sizes = profile_distiller(distiller, (128, 256))
        rows.append((method, sizes["params_training"], sizes["macs_conv_linear_training"] * 16))
    return rows


def format_size_table(rows: list[tuple[str, int, int]], first: str) -> str:
    lines = [f"| {first} | params (M) | GMACs, 1×3×512×1024 |", "|---|---:|---:|"]
    lines += [f"| `{name}` | {params / 1e6:.2f} | {macs / 1e9:.2f} |" for name, params, macs in rows]
    return "\n".join(lines)


# --------------------------------------------------------------------------- command line

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run the documentation's commands.")
    parser.add_argument("pages", nargs="*", type=Path, help="pages to run (default: every page)")
    parser.add_argument("--keep", type=Path, metavar="DIR",
                        help="run in DIR (one page) and keep it, instead of a temporary folder")
    parser.add_argument("--models-table", action="store_true",
                        help="print the size tables of docs/models.md and exit")
    parser.add_argument("--config-table", action="store_true",
                        help="print a row skeleton of every config key for docs/configuration.md")
    args = parser.parse_args(argv)
    if args.config_table:
        import yaml

        for key, words, default in config_fields():
            shown = yaml.safe_dump(default, default_flow_style=True, width=200).strip()
            shown = shown.removesuffix("\n...").removesuffix(" ...").strip()
            print(f"| `{key}` | {words} | `{shown}` | |")
        return 0
    if args.models_table:
        print(format_size_table(size_rows(), "model"))
        print()
        print(format_size_table(training_size_rows(), "method (B2 → B0)"))
        return 0
    pages = [p.resolve() for p in args.pages] or doc_pages()
    if args.keep and len(pages) != 1:
        parser.error("--keep takes one page")
    failures = 0
    for page in pages:
        print(f"== {_display(page)}", flush=True)
        try:
            if args.keep:
                run_page(page, args.keep, log=print)
            else:
                with tempfile.TemporaryDirectory(prefix="docs-page-") as workdir:
                    run_page(page, Path(workdir), log=print)
        except DocCheckError as exc:
            failures += 1
            print(f"FAILED {exc}", flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
