"""benchmarks/conv_weight_grad.py runs end to end at a tiny size and reports all three levels."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_weight_gradient_benchmark_reports_every_level(tmp_path):
    out = tmp_path / "conv.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "conv_weight_grad.py"),
                           "--threads", "1", "--repeats", "1", "--sizes", "64x128",
                           "--step-size", "64x128", "--json", str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert len(result["weight_grad"]) == 7
    for row in result["weight_grad"]:
        assert row["channels_last_ms"] > 0 and row["nchw_with_copies_ms"] > 0
        assert ("matrix_product_ms" in row) == (row["kernel"] == 1)
    assert [r["size"] for r in result["csf"]] == [[64, 128]]
    assert {(r["teacher"], r["student"]) for r in result["step"]} == {
        ("segformer_b2", "segformer_b0"), ("pvtv2_b2_fpn", "pvtv2_b0_fpn")}
    for row in result["csf"] + result["step"]:
        assert row["fast"]["median_ms"] > 0 and row["plain"]["median_ms"] > 0
        assert row["speedup_median"] > 0
