"""``transkd flops``: JSON keys, the human table, training rows and one-sentence errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from transkd.cli import main

SMALL = ["--input-size", "64", "64", "--num-classes", "3"]


def run_json(capsys, *argv: str) -> dict:
    assert main(["flops", *argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_json_names_every_number_and_its_convention(capsys) -> None:
    result = run_json(capsys, "segformer_b0", *SMALL)
    assert {"model", "num_classes", "input_size", "params", "macs_conv_linear", "macs_breakdown",
            "flops_total", "macs_total", "convention"} <= set(result)
    assert result["model"] == "segformer_b0" and result["num_classes"] == 3
    assert result["input_size"] == [1, 3, 64, 64]
    assert "mmcv" in result["convention"]["macs_conv_linear"]
    assert "flop_counter" in result["convention"]["flops_total"]
    assert "training" not in result


def test_human_table_names_conventions_and_input(capsys) -> None:
    assert main(["flops", "segformer_b0", *SMALL]) == 0
    out = capsys.readouterr().out
    assert "input 1×3×64×64" in out
    assert "paper convention" in out and "incl. attention" in out
    assert "3.71 M" in out  # 3 classes: a smaller classifier than the paper's 20


def test_training_rows_with_method(capsys) -> None:
    result = run_json(capsys, "segformer_b0", *SMALL, "--teacher", "segformer_b1",
                      "--method", "transkd_base")
    training = result["training"]
    assert training["method"] == "transkd_base" and training["teacher"] == "segformer_b1"
    assert training["params_training"] == result["params"] + training["params_adapters"]
    assert training["params_adapters"] > 0
    assert training["macs_conv_linear_training"] == (result["macs_conv_linear"]
                                                     + training["macs_conv_linear_adapters"])


def test_training_rows_in_the_table(capsys) -> None:
    assert main(["flops", "segformer_b0", *SMALL, "--method", "none"]) == 0
    out = capsys.readouterr().out
    assert "student + adapters" in out
    assert "deployed student stays at 3.71 M" in out


@pytest.mark.parametrize("argv, message", [
    (["segformer_x9"], "known models: "),
    (["mit_b0"], "unknown segmentation model"),
    (["segformer_b0", "--num-classes", "0"], "--num-classes must be at least 1"),
    (["segformer_b0", "--input-size", "0", "64"], "--input-size must be two positive integers"),
    (["segformer_b0", "--input-size", "-4", "64"], "--input-size must be two positive integers"),
    (["segformer_b0", "--teacher", "segformer_b2"], "--teacher is only used with --method"),
    (["segformer_b0", "--method", "transkd_base", *SMALL], "needs a teacher"),
])
def test_bad_input_is_one_line_error(capsys, argv, message) -> None:
    assert main(["flops", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.slow  # a new Python process importing torch
def test_module_entry_point_prints_json() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "transkd", "flops", "segformer_b0", *SMALL, "--json"],
        capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["params"] > 0 and result["macs_conv_linear"] > 0 and result["flops_total"] > 0
