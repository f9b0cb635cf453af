"""benchmarks/gpu_check.py: its settings, the figures it reads, and its CPU dry run end to end."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"


def load_script():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_gpu_run_needs_the_dataset():
    gpu_check = load_script()
    with pytest.raises(SystemExit):
        gpu_check.parse_args([])
    assert gpu_check.parse_args(["--dry-run"]).data is None


def test_the_gpu_runs_are_full_size_bf16_camvid_on_cuda():
    gpu_check = load_script()
    sets = gpu_check.run_overrides(gpu_check.parse_args(["--data", "/data/CamVid"]), 150)
    for expected in ("data.root=/data/CamVid", "protocol.image_size=[360, 480]", "train.precision=bf16",
                     "train.device=cuda", "train.iterations=150", "train.val_interval=150"):
        assert expected in sets
    dry = gpu_check.run_overrides(gpu_check.parse_args(["--dry-run"]), 2)
    assert "train.device=cpu" in dry and "data.name=synthetic" in dry


def test_figures_come_from_the_run_summary(tmp_path):
    gpu_check = load_script()
    summary = {"compute": {"seconds_per_step": 0.25, "images_per_step": 8, "peak_gpu_memory_mb": 4096.0},
               "best": {"miou": 0.5}}
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    assert gpu_check.summary_figures(tmp_path) == {"seconds_per_step": 0.25, "images_per_s": 32.0,
                                                   "peak_gpu_memory_mb": 4096.0, "val_miou": 0.5}


@pytest.mark.slow
def test_the_dry_run_passes_on_the_cpu(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, str(SCRIPT), "--dry-run", "--output", str(tmp_path / "check"),
                           "--steps", "2", "--teacher-steps", "2", "--batch-size", "2"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    record = json.loads((tmp_path / "check" / "gpu_check.json").read_text())
    assert set(record["stages"]) == {"cuda tests", "teacher (segformer_b2)", "distill (transkd_base)",
                                     "torchrun backend probe", "torchrun distill"}
    assert all(stage["exit"] == 0 for stage in record["stages"].values())
    for figures in record["runs"].values():
        assert figures["seconds_per_step"] > 0 and 0 <= figures["val_miou"] <= 1
    assert "gloo all-reduce over 1 process(es): ok" in done.stdout


def test_a_stage_past_the_budget_is_stopped_and_fails():
    gpu_check = load_script()
    sleeper = [sys.executable, "-c", "import time; time.sleep(30)"]
    stage = gpu_check.Stage("sleeper", sleeper, dict(os.environ))
    assert not stage.run(timeout=1.0)
    assert stage.code == 124 and stage.seconds < 15
