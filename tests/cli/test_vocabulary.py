"""Every subcommand speaks one vocabulary: one option name per concept, older spellings hidden."""

from __future__ import annotations

import argparse

import pytest

from transkd.cli import build_parser

#: dest -> the only visible option strings allowed for it, on any command that has it.
VOCABULARY = {
    "output": {"-o", "--output"},
    "input_size": {"--input-size"},
    "batch_size": {"--batch-size"},
    "num_classes": {"--num-classes"},
    "device": {"--device"},
    "no_progress": {"--no-progress"},
    "json": {"--json"},
    "last": {"--last"},
}
#: Spellings that name a concept above under another name; they may exist only hidden.
OLD_SPELLINGS = {"--height", "--width", "--batch", "--out", "--classes", "--size", "--cpu", "--gpu",
                 "--no-bar", "--quiet-progress", "--as-json"}
#: Commands whose positional names a saved model or a model name.
MODEL_COMMANDS = ("eval", "predict", "export", "bench", "flops")
#: Commands whose output option keeps the long form only.
OUTPUT_WITHOUT_SHORT: set[str] = set()


def subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


COMMANDS = subparsers()


def visible(action: argparse.Action) -> bool:
    return action.help is not argparse.SUPPRESS


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_each_concept_has_one_visible_name(name):
    for action in COMMANDS[name]._actions:
        if not action.option_strings or not visible(action):
            continue
        if action.dest in VOCABULARY and not (name in OUTPUT_WITHOUT_SHORT and action.dest == "output"):
            assert set(action.option_strings) == VOCABULARY[action.dest], \
                f"transkd {name}: {action.dest} is spelled {action.option_strings}"
        shown = set(action.option_strings) & OLD_SPELLINGS
        assert not shown, f"transkd {name} shows {sorted(shown)}; use the shared name"
        for option in action.option_strings:
            for dest, names in VOCABULARY.items():
                assert option not in names or action.dest == dest, \
                    f"transkd {name}: {option} stores {action.dest!r}, elsewhere {dest!r}"


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_output_is_dash_o(name):
    outputs = [a for a in COMMANDS[name]._actions if a.dest == "output" and visible(a)]
    if name in OUTPUT_WITHOUT_SHORT or not outputs:
        return
    assert "-o" in outputs[0].option_strings, f"transkd {name} has --output without -o"


@pytest.mark.parametrize("name", MODEL_COMMANDS)
def test_the_model_argument_is_MODEL(name):
    positional = [a for a in COMMANDS[name]._actions if not a.option_strings and a.dest != "help"]
    assert positional[0].dest == "model" and positional[0].metavar == "MODEL"


def test_a_run_folder_argument_offers_last():
    for name in ("eval", "predict", "export", "bench"):
        assert any(a.dest == "last" for a in COMMANDS[name]._actions), name


def test_defaults_agree_across_commands():
    """A concept with a default has the same default wherever it is defaulted."""
    for dest in ("num_classes", "input_size"):
        defaults = {name: next(a.default for a in parser._actions if a.dest == dest)
                    for name, parser in COMMANDS.items()
                    if any(a.dest == dest and a.default is not None and a.default is not argparse.SUPPRESS
                           for a in parser._actions)}
        assert len({repr(v) for v in defaults.values()}) <= 1, f"{dest} defaults differ: {defaults}"


@pytest.mark.parametrize("argv, dest, value", [
    (["export", "m.safetensors", "-o", "m.onnx", "--height", "64", "--width", "96"], "input_size", [64, 96]),
    (["export", "m.safetensors", "-o", "m.onnx", "--height", "64"], "input_size", [64, None]),
    (["export", "m.safetensors", "-o", "m.onnx", "--input-size", "64", "96"], "input_size", [64, 96]),
    (["bench", "segformer_b0", "--batch", "2"], "batch_size", 2),
    (["bench", "segformer_b0"], "batch_size", 1),
    (["train", "-o", "runs/x"], "output", "runs/x"),
    (["eval", "runs/x", "--output", "elsewhere"], "output", "elsewhere"),
])
def test_older_spellings_still_parse(argv, dest, value):
    assert getattr(build_parser().parse_args(argv), dest) == value
