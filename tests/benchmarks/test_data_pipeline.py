"""benchmarks/data_pipeline.py runs end to end at a tiny frame size and reports every pipeline."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_pipeline_benchmark_reports_each_pipeline_and_variant(tmp_path):
    out = tmp_path / "pipeline.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "data_pipeline.py"), "--images", "2",
                           "--size", "64", "128", "--batches", "1", "--batch-size", "2", "--json", str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["decode_images_per_s"]["PIL"] > 0
    rows = result["pipelines"]
    pipelines = ("paper 1024x512", "standard 1024x1024")
    assert set(rows) == {f"{p} {v}" for p in pipelines for v in ("float", "uint8")}
    for row in rows.values():
        assert row["worker_images_per_s"] > 0 and row["workers_needed"] >= 1
    # float32 images carry 4 bytes a value; uint8 ones 1 (3 channels, or 4 with the padding mark)
    paper_float, paper_uint8 = rows["paper 1024x512 float"], rows["paper 1024x512 uint8"]
    assert paper_float["bytes_per_image"] == 4 * paper_uint8["bytes_per_image"]
    standard_float, standard_uint8 = rows["standard 1024x1024 float"], rows["standard 1024x1024 uint8"]
    assert standard_uint8["bytes_per_image"] < standard_float["bytes_per_image"]
