"""benchmarks/cpu_matmul.py runs end to end at a tiny size and reports all four levels."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from transkd.models.linear import _onednn_linear

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(_onednn_linear() is None, reason="this PyTorch build has no oneDNN linear kernel")
def test_the_matmul_benchmark_reports_every_level(tmp_path):
    out = tmp_path / "matmul.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "cpu_matmul.py"),
                           "--threads", "1", "--repeats", "1", "--size", "64x128",
                           "--infer-size", "64x128", "--json", str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    layers = result["layers"]
    assert layers[0]["layer"].startswith("matmul 2048")
    # MiT-B2 and MiT-B0: four stages of q/proj, kv, fc1 and fc2 each, shared shapes counted once.
    assert 20 <= len(layers) <= 33
    assert {r["layer"].split()[0] for r in layers[1:]} == {"mit_b2", "mit_b0"}
    for row in layers:
        assert row["flops"] == 2 * row["rows"] * row["in"] * row["out"]
        for level in ("forward", "input_grad", "weight_grad"):
            assert row[level]["blas"]["median_ms"] > 0 and row[level]["onednn"]["median_ms"] > 0
    for level in ("teacher", "infer", "step"):
        assert result[level]["speedup_median"] > 0
    assert result["machine"]["auto_choice"].split()[0] in ("onednn", "blas")
