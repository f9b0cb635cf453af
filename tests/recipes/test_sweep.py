"""transkd sweep: a spec checked up front, a sweep killed midway and completed by the same command."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from transkd.cli import main
from transkd.models import create_model
from transkd.recipes.sweep import load_spec, plan_sweep, run_sweep
from transkd.weights.io import save_model

TINY = """\
data:
  options: {length: 12, size: [32, 64]}
  val_options: {length: 4}
protocol: {image_size: [32, 64]}
schedule: {kind: standard, warmup_iters: 1}
train: {epochs: null, iterations: 4, batch_size: 2, val_interval: 2, checkpoint_interval: 1,
        num_workers: 0, tensorboard: false}
eval: {batch_size: 4}
"""


def write_spec(tmp_path: Path, teacher: Path, extra: str = "") -> Path:
    (tmp_path / "tiny.yaml").write_text(TINY)
    spec = tmp_path / "sweep.yaml"
    spec.write_text(f"""\
output: {tmp_path / 'out'}
seeds: [0, 1]
selection: train_holdout:0.25
teacher: {{weights: {teacher}}}
runs:
  - {{name: student, config: {tmp_path / 'tiny.yaml'}}}
  - {{name: kd, config: {tmp_path / 'tiny.yaml'}, set: [distill.method=kd, train.iterations=30]}}
report_samples: 0
threads: 1
{extra}""")
    return spec


@pytest.fixture
def teacher(tmp_path):
    torch.manual_seed(0)
    return save_model(create_model("segformer_b0", num_classes=10), tmp_path / "teacher.safetensors")


def test_the_plan_resolves_every_run_and_seed(tmp_path, teacher):
    spec = load_spec(write_spec(tmp_path, teacher), overrides=["kd:optim.lr=0.001", "train.seed=9"])
    none, runs = plan_sweep(spec)
    assert none is None  # a given teacher is not trained
    assert [r.name for r in runs] == ["student/seed0", "kd/seed0", "student/seed1", "kd/seed1"]
    kd = runs[3].config
    assert kd.train.seed == 1 and kd.optim.lr == 0.001 and kd.teacher.weights == str(teacher)
    assert runs[0].config.optim.lr != 0.001 and runs[0].config.data.selection == "train_holdout:0.25"
    assert runs[1].run_dir == tmp_path / "out" / "kd" / "seed0" and runs[1].command == "distill"


@pytest.mark.parametrize("extra, overrides, message", [
    ("selection: val", [], "chooses the checkpoint on the reported split"),
    ("baseline: cwd", [], "names 'cwd', not a run of the sweep"),
    ("seed: [3]", [], "unknown sweep key 'seed'"),
    ("", ["cwd:optim.lr=1"], "no run named 'cwd'"),
    ("", ["optim.learning_rate=1"], "sweep run student/seed0: unknown config key 'optim.learning_rate'"),
])
def test_bad_specs_are_one_sentence_before_anything_runs(tmp_path, teacher, capsys, extra, overrides,
                                                         message):
    spec = write_spec(tmp_path, teacher, extra)
    args = ["sweep", str(spec)] + [item for o in overrides for item in ("--set", o)]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err
    assert not (tmp_path / "out").exists()


def _completed(run_dir: Path) -> bool:
    path = run_dir / "summary.json"
    return path.is_file() and json.loads(path.read_text())["status"] == "completed"


@pytest.mark.slow
def test_a_killed_sweep_is_completed_without_redoing_finished_runs(tmp_path, teacher):
    spec = write_spec(tmp_path, teacher)
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2]), "OMP_NUM_THREADS": "1"}
    first = subprocess.Popen([sys.executable, "-m", "transkd", "sweep", str(spec)], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    checkpoint = out / "kd" / "seed0" / "checkpoints" / "last.pt"
    deadline = time.time() + 240
    while not checkpoint.is_file() and first.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    first.send_signal(signal.SIGINT)  # Ctrl-C while kd/seed0 trains
    log, _ = first.communicate(timeout=120)
    assert first.returncode == 130, log
    assert _completed(out / "student" / "seed0") and not _completed(out / "kd" / "seed0"), log
    assert not (out / "student" / "seed1").exists()
    finished = (out / "student" / "seed0" / "summary.json").stat().st_mtime_ns

    messages = []
    result = run_sweep(load_spec(spec, jobs=2), announce=messages.append)  # two at a time now
    assert result.skipped == ["student/seed0"]
    assert sorted(result.ran) == ["kd/seed0", "kd/seed1", "student/seed1"]
    assert (out / "student" / "seed0" / "summary.json").stat().st_mtime_ns == finished
    assert "kd/seed0: started (resuming), 1 thread(s)" in " ".join(messages)
    events = [json.loads(line).get("event") for line in
              (out / "kd" / "seed0" / "metrics.jsonl").read_text().splitlines()]
    assert "interrupted" in events and "resumed" in events
    assert all(_completed(out / name / f"seed{s}") for name in ("student", "kd") for s in (0, 1))

    report = result.report.read_text()
    table = report.split("## Across seeds", 1)[1].split("\n## ", 1)[0]
    kd_row = next(line for line in table.splitlines() if line.startswith("| kd |"))
    student_row = next(line for line in table.splitlines() if line.startswith("| student |"))
    assert " ± " in kd_row and " ± " in student_row and "| 2 |" in kd_row
    assert "[" in kd_row.split("|")[6] and "best on train_holdout 25%" in kd_row  # Δ vs student, interval

    again = run_sweep(load_spec(spec))
    assert again.ran == [] and len(again.skipped) == 4


def test_the_camvid_sweep_spec_plans_the_table(tmp_path):
    spec_file = Path(__file__).resolve().parents[2] / "benchmarks" / "camvid" / "sweep_cpu40e.yaml"
    cwd = os.getcwd()
    os.chdir(Path(__file__).resolve().parents[2])  # its paths are relative to the repository
    try:
        spec = load_spec(spec_file, output=str(tmp_path / "camvid"),
                         overrides=[f"data.root={tmp_path}"])
        teacher, runs = plan_sweep(spec)
    finally:
        os.chdir(cwd)
    assert teacher.config.model.name == "segformer_b2" and teacher.config.train.epochs == 25
    assert len(runs) == 7 * 3 and {r.config.train.seed for r in runs} == {0, 1, 2}
    assert all(r.config.data.selection == "train_holdout:0.1" for r in runs)
    assert runs[1].config.teacher.weights == str(tmp_path / "camvid" / "teacher_b2" / "best" /
                                                 "model.safetensors")
