"""The user documentation is executable: every page's commands run, its reference tables match
the code, its links resolve and the options it names exist.

The machinery (and the conventions pages follow) is in ``scripts/check_docs.py``.
"""

import importlib.util
import re
import sys
import typing
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("check_docs", REPO / "scripts" / "check_docs.py")
check_docs = importlib.util.module_from_spec(_spec)
sys.modules["check_docs"] = check_docs
_spec.loader.exec_module(check_docs)

DOCS = REPO / "docs"
PAGES = check_docs.doc_pages()


def _read(name: str) -> str:
    return (DOCS / name).read_text(encoding="utf-8")


# --------------------------------------------------------------------------- the pages run

@pytest.mark.slow  # every command of every page: minutes on a CPU
@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(REPO)) for p in PAGES])
def test_page_runs(page, tmp_path):
    """Every command and Python block of the page, in order, in a fresh folder."""
    check_docs.run_page(page, tmp_path)


# --------------------------------------------------------------------------- reference tables

def test_configuration_documents_every_key_with_its_type_and_default():
    from transkd.config import yaml_load

    rows = check_docs.reference_rows(_read("configuration.md"))
    fields = check_docs.config_fields()
    for key, words, default in fields:
        assert key in rows, f"docs/configuration.md has no row for config key {key!r}"
        documented_type, documented_default = rows[key]
        assert documented_type == words, f"{key}: documented type {documented_type!r}, schema {words!r}"
        assert yaml_load(documented_default) == default, \
            f"{key}: documented default {documented_default!r}, schema {default!r}"
    stale = set(rows) - {key for key, _, _ in fields}
    assert not stale, f"docs/configuration.md documents keys the config does not have: {sorted(stale)}"


def _sections(text: str) -> list[tuple[int, str, str]]:
    """(level, heading, body) of every Markdown heading."""
    matches = list(re.finditer(r"^(#+)\s+(.*)$", text, re.M))
    sections = []
    for index, match in enumerate(matches):
        level = len(match.group(1))
        end = len(text)
        for later in matches[index + 1:]:
            if len(later.group(1)) <= level:
                end = later.start()
                break
        sections.append((level, match.group(2), text[match.end():end]))
    return sections


def _method_section(text: str, method: str) -> str:
    for _, heading, body in _sections(text):
        if re.match(rf"`{re.escape(method)}`", heading):
            return body
    raise AssertionError(f"docs/methods.md has no section headed `{method}`")


def test_methods_document_every_method_and_option_with_defaults():
    from transkd import list_methods
    from transkd.config import yaml_load
    from transkd.distill import get_method

    text = _read("methods.md")
    for method in list_methods():
        body = _method_section(text, method)
        if method == "none":
            continue
        options = get_method(method).Options
        hints = typing.get_type_hints(options)
        defaults = options()
        rows = check_docs.reference_rows(body)
        assert set(rows) == set(hints), \
            f"{method}: documented options {sorted(rows)}, Options has {sorted(hints)}"
        for name, hint in hints.items():
            documented_type, documented_default = rows[name]
            assert documented_type == check_docs.type_words(hint), f"{method}.{name}: type"
            expected = check_docs._plain(getattr(defaults, name))
            assert yaml_load(documented_default) == expected, \
                f"{method}.{name}: documented default {documented_default!r}, code {expected!r}"


def test_datasets_document_every_dataset_and_option():
    from transkd.data.datasets import dataset_options, list_datasets

    text = _read("datasets.md")
    for name in list_datasets():
        assert f"[`{name}`]" in text, f"docs/datasets.md: {name} missing from the overview table"
        for option in dataset_options(name):
            assert f"`{option}`" in text, f"docs/datasets.md does not document {name} option {option!r}"


def _table(text: str, first_column: str) -> list[tuple[str, str, str]]:
    """Rows of the size table whose header starts with ``first_column``."""
    start = text.index(f"| {first_column} |")
    rows = []
    for line in text[start:].splitlines()[2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows.append((cells[0].strip("`"), cells[1], cells[2]))
    return rows


def _formatted(rows):
    return [(name, f"{params / 1e6:.2f}", f"{macs / 1e9:.2f}") for name, params, macs in rows]


@pytest.mark.slow  # profiles every model at 512x1024
def test_model_size_table_matches_the_profiler():
    assert _table(_read("models.md"), "model") == _formatted(check_docs.size_rows())


@pytest.mark.slow
def test_training_size_table_matches_the_profiler():
    assert _table(_read("models.md"), "method (B2 → B0)") == \
        _formatted(check_docs.training_size_rows())


# --------------------------------------------------------------------------- links and options

def _slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def test_links_and_anchors_resolve():
    problems = []
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+://", target):
                continue
            path, _, anchor = target.partition("#")
            linked = (page.parent / path).resolve() if path else page
            if not linked.exists():
                problems.append(f"{page.name}: {target} (no such file)")
            elif anchor and linked.suffix == ".md":
                headings = re.findall(r"^#+\s+(.*)$", linked.read_text(encoding="utf-8"), re.M)
                if anchor not in {_slug(h) for h in headings}:
                    problems.append(f"{page.name}: {target} (no such heading)")
    assert not problems, "broken links:\n" + "\n".join(problems)


def test_the_index_links_every_page():
    index = _read("README.md")
    for page in sorted(DOCS.glob("*.md")):
        if page.name != "README.md":
            assert f"]({page.name})" in index, f"docs/README.md does not link {page.name}"


def _known_options() -> set[str]:
    import argparse

    from torch.distributed.run import get_args_parser

    from transkd.cli import build_parser

    parsers = [build_parser(), get_args_parser()]
    for action in parsers[0]._actions:
        if isinstance(action, argparse._SubParsersAction):
            parsers += list(action.choices.values())
    known = {option for p in parsers for a in p._actions for option in a.option_strings}
    for script in [*REPO.glob("benchmarks/**/*.py"), *REPO.glob("scripts/*.py")]:
        known.update(re.findall(r"add_argument\(\s*[\"'](--[\w-]+)[\"']", script.read_text(encoding="utf-8")))
    return known | {"--index-url"}


def test_options_named_in_the_text_exist():
    """An option written in running text (`--name ...`) must belong to a real command: transkd,
    torchrun, or a script of benchmarks/ or scripts/."""
    known = _known_options()
    unknown = []
    for page in PAGES:
        text = re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.S)
        for span in re.findall(r"`(--[\w-]+)[^`]*`", text):
            if span not in known:
                unknown.append(f"{page.name}: {span}")
    assert not unknown, "options that no command has:\n" + "\n".join(unknown)


# --------------------------------------------------------------------------- the checker itself

SAMPLE = """
<!-- docs-check: write hello.txt -->
```text
hello
```

```console
$ cat hello.txt
hello
$ transkd train --set optim.lr=-1
error: config key 'optim.lr' ...
$ transkd train \\
    --data /nowhere  # not run by the docs check: shows a continued line
```
"""


def test_checker_parses_steps_markers_and_continuations(tmp_path):
    page = check_docs.parse_page(tmp_path / "sample.md", SAMPLE)
    kinds = [(s.kind, s.text, s.excluded) for s in page.steps]
    assert kinds == [
        ("write", "hello\n", None),
        ("command", "cat hello.txt", None),
        ("command", "transkd train --set optim.lr=-1", None),
        ("command", "transkd train --data /nowhere", "shows a continued line"),
    ]
    assert page.steps[1].expected == ["hello"]


def test_checker_runs_a_page_and_catches_broken_promises(tmp_path):
    page = tmp_path / "sample.md"
    page.write_text(SAMPLE, encoding="utf-8")
    check_docs.run_page(page, tmp_path / "ok")
    page.write_text(SAMPLE.replace("$ cat hello.txt\nhello", "$ cat hello.txt\ngoodbye"), encoding="utf-8")
    with pytest.raises(check_docs.DocCheckError, match="promises the line"):
        check_docs.run_page(page, tmp_path / "output")
    page.write_text("```console\n$ false\n```\n", encoding="utf-8")
    with pytest.raises(check_docs.DocCheckError, match="exit code 1"):
        check_docs.run_page(page, tmp_path / "failing")
    page.write_text("```console\n$ true\nerror: it fails\n```\n", encoding="utf-8")
    with pytest.raises(check_docs.DocCheckError, match="says this fails"):
        check_docs.run_page(page, tmp_path / "not-failing")


@pytest.mark.parametrize("command, message", [
    ("transkd train --lr 1e-4", "rejects"),
    ("transkd train --set optim.lr=-1", "invalid config"),
    ("transkd distill --config configs/cityscapes/missing.yaml", "invalid config"),
    ("torchrun --nproc_per_node 2 train.py", "must start '-m transkd'"),
    ("torchrun --nproc_per_node 2 -m transkd distill --methd kd", "rejects"),
    ("pip install -e '.[gpu]'", "extra 'gpu'"),
])
def test_commands_left_out_are_still_checked(tmp_path, command, message):
    check_docs.prepare_workdir(tmp_path)
    page = tmp_path / "sample.md"
    page.write_text(f"```console\n$ {command}  # not run by the docs check: sample\n```\n", encoding="utf-8")
    with pytest.raises(check_docs.DocCheckError, match=message):
        check_docs.run_page(page, tmp_path)


def test_output_patterns():
    assert check_docs.unmatched_output(["a ... c", "d"], "x\na  b  c\nd\n") is None
    assert check_docs.unmatched_output(["d", "a ... c"], "a b c\nd\n") == "a ... c"
    assert check_docs.unmatched_output(["50%"], "progress 50%\r100%\n") == "50%"


def test_a_wrong_layout_is_caught(tmp_path):
    text = ("<!-- docs-check: layout camvid train -->\n```text\nCamVid/\n  train/a.png\n"
            "  train_annot/a.png\n```\n")
    page = check_docs.parse_page(tmp_path / "layout.md", text)
    with pytest.raises(check_docs.DocCheckError, match="does not open"):
        check_docs.check_layout(page.layouts[0], tmp_path)
