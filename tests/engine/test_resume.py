"""A training process killed outright (SIGKILL, no chance to save) resumes from its last
checkpoint and ends with exactly the weights of an uninterrupted run; a damaged last
checkpoint falls back to the previous one."""

import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest
import torch

from transkd.cli import main
from transkd.engine.checkpoint import load_checkpoint
from transkd.engine.logging import read_metrics
from transkd.models import create_model
from transkd.weights.io import model_file, read_safetensors, save_model

STEPS = 12
#: Plain settings of the short CPU run: 8 synthetic samples of 32x64, batches of 2 (4 steps an
#: epoch, so the run crosses epoch boundaries), drop-path and dropout on (they draw from the
#: torch RNG), a checkpoint after every step and no validation before the end.
RUN = ["--set", "data.options={length: 8, size: [32, 64]}", "--set", "data.val_options={length: 2}",
       "--set", "protocol.image_size=[32, 64]", "--set", "train.batch_size=2",
       "--set", f"train.iterations={STEPS}", "--set", "schedule.kind=standard",
       "--set", "schedule.warmup_iters=3", "--set", "train.checkpoint_interval=1",
       "--set", "train.val_interval=1000", "--set", "train.log_interval=1",
       "--set", "train.tensorboard=false", "--set", "train.num_workers=0",
       "--set", "eval.batch_size=2", "--set", "model.options={drop_path_rate: 0.2, dropout: 0.1}"]
#: Seeds the step at which each test kills its run (the choice is random but repeatable).
KILL_SEED = 7


def child_env() -> dict[str, str]:
    """The subprocess computes with one thread, like the in-process runs of the test suite, so
    summation order (hence every bit of the result) is the same."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.pop("TRANSKD_DEBUG", None)
    return env


def logged_steps(run_dir) -> int:
    """The last step with a complete ``train`` record in metrics.jsonl (0 if none yet)."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return 0
    step = 0
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:  # a line being written right now
            continue
        if record.get("kind") == "train":
            step = max(step, record["step"])
    return step


def train_and_kill(command: str, args: list[str], run_dir, kill_at: int) -> int:
    """Start ``transkd COMMAND`` in a subprocess, SIGKILL it once step ``kill_at`` is logged;
    returns the step the surviving checkpoint holds."""
    proc = subprocess.Popen([sys.executable, "-m", "transkd", command, *args, "--output", str(run_dir)],
                            env=child_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    try:
        while logged_steps(run_dir) < kill_at:
            if proc.poll() is not None:
                pytest.fail(f"training ended before step {kill_at}: {proc.stderr.read().decode()}")
            if time.monotonic() > deadline:
                pytest.fail("training made no progress within 120 s")
            time.sleep(0.005)
        still_running = proc.poll() is None
        proc.send_signal(signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        proc.stderr.close()
    assert still_running, "the run finished before it could be killed"
    assert proc.returncode == -signal.SIGKILL
    checkpoint = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    step = checkpoint["position"]["step"]
    assert 1 <= step < STEPS
    return step


def tensors(path) -> dict[str, torch.Tensor]:
    return read_safetensors(path)[0]


def assert_bit_identical(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], what: str) -> None:
    assert a.keys() == b.keys(), what
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"{what}: {len(different)} tensor(s) differ, first {different[0]}"


def run_in_process(command: str, args: list[str], run_dir, *extra: str) -> str:
    code = main([command, *args, "--output", str(run_dir), *extra])
    assert code == 0
    return str(run_dir)


@pytest.mark.slow  # real processes, killed and resumed
def test_plain_run_killed_at_a_random_step_resumes_bit_identically(tmp_path, capsys):
    kill_at = random.Random(KILL_SEED).randint(3, 9)
    run_in_process("train", RUN, tmp_path / "straight")

    killed = tmp_path / "killed"
    saved_step = train_and_kill("train", RUN, killed, kill_at)
    capsys.readouterr()
    run_in_process("train", RUN, killed, "--resume", "auto")
    out = capsys.readouterr().out
    assert f"resuming from {killed / 'checkpoints' / 'last.pt'}" in out
    assert f"trained {STEPS} steps" in out

    assert_bit_identical(tensors(model_file(tmp_path / "straight", last=True)),
                         tensors(model_file(killed, last=True)), "student")
    final_a = load_checkpoint(tmp_path / "straight" / "checkpoints" / "last.pt")
    final_b = load_checkpoint(killed / "checkpoints" / "last.pt")
    assert_bit_identical(final_a["model"], final_b["model"], "checkpoint weights")
    assert final_b["position"] == final_a["position"]
    records = [json.loads(line) for line in (killed / "metrics.jsonl").read_text().splitlines()]
    resumed = [r for r in records if r.get("event") == "resumed"]
    assert len(resumed) == 1 and resumed[0]["step"] == saved_step


@pytest.mark.slow
def test_distillation_killed_at_a_random_step_resumes_student_and_adapters_bit_identically(
        tmp_path, capsys):
    kill_at = random.Random(KILL_SEED + 1).randint(3, 9)
    torch.manual_seed(1)
    teacher = save_model(create_model("segformer_b0", num_classes=10), tmp_path / "teacher.safetensors")
    # one loader worker: batches come from another process, whose seeding must not matter
    args = [*RUN, "--set", "train.num_workers=1", "--teacher", str(teacher), "--method", "transkd_base"]
    run_in_process("distill", args, tmp_path / "straight")

    killed = tmp_path / "killed"
    train_and_kill("distill", args, killed, kill_at)
    capsys.readouterr()
    run_in_process("distill", args, killed, "--resume", "auto")
    assert "resuming from" in capsys.readouterr().out

    for name in ("student.safetensors", "adapters.safetensors"):
        assert_bit_identical(tensors(tmp_path / "straight" / "last" / name),
                             tensors(killed / "last" / name), name)
    final_a = load_checkpoint(tmp_path / "straight" / "checkpoints" / "last.pt")
    final_b = load_checkpoint(killed / "checkpoints" / "last.pt")
    assert any(k.startswith("methods.") for k in final_a["model"])  # adapters are checkpointed
    assert_bit_identical(final_a["model"], final_b["model"], "student + adapters")


SHORT = [arg.replace(f"train.iterations={STEPS}", "train.iterations=4") for arg in RUN]


@pytest.mark.slow  # three short runs
def test_truncated_last_checkpoint_falls_back_to_the_previous_one(tmp_path, capsys):
    run_dir = tmp_path / "run"
    four = [a.replace("schedule.warmup_iters=3", "schedule.warmup_iters=2") for a in SHORT]
    short = [a.replace("train.iterations=4", "train.iterations=3") for a in four]  # warm-up < run
    run_in_process("train", short, run_dir)
    checkpoints = run_dir / "checkpoints"
    last, previous = checkpoints / "last.pt", checkpoints / "previous.pt"
    assert load_checkpoint(last)["position"]["step"] == 3
    assert load_checkpoint(previous)["position"]["step"] == 2  # the one before is kept
    data = last.read_bytes()
    last.write_bytes(data[: len(data) // 2])
    with open(run_dir / "metrics.jsonl", "a", encoding="utf-8") as fh:
        fh.write('{"kind": "train", "step": 4, "lo')  # a record cut off by the crash
    (checkpoints / ".last.pt.k1ll3d.tmp").write_bytes(data[:1000])  # a write cut off by the crash
    capsys.readouterr()

    run_in_process("train", four, run_dir, "--resume", "auto")
    out = capsys.readouterr().out
    assert f"{last} is damaged" in out and f"resuming from {previous}" in out
    records = read_metrics(run_dir / "metrics.jsonl")  # every line is a complete record again
    assert [r["step"] for r in records if r.get("event") == "resumed"] == [2]
    assert load_checkpoint(last)["position"]["step"] == 4
    assert sorted(p.name for p in checkpoints.iterdir()) == ["last.pt", "previous.pt"]


@pytest.mark.slow
def test_corrupt_bytes_inside_a_checkpoint_are_detected(tmp_path, capsys):
    """A flipped bit in the tensor data leaves a readable zip; the stored digest catches it."""
    run_dir = tmp_path / "run"
    run_in_process("train", SHORT, run_dir)
    last = run_dir / "checkpoints" / "last.pt"
    data = bytearray(last.read_bytes())
    data[len(data) // 2] ^= 0x01
    last.write_bytes(bytes(data))
    (run_dir / "checkpoints" / "previous.pt").unlink()
    capsys.readouterr()

    code = main(["train", *SHORT, "--output", str(run_dir), "--resume", "auto"])
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, err
    assert lines[0].startswith(f"error: checkpoint {last} is damaged")
    assert "no previous checkpoint" in lines[0]


#: The Ctrl-C run: long enough that the signal lands mid-run however busy the machine is, with
#: no checkpoint but the one the interruption writes.
LONG = 400
SIGNALLED = [a.replace(f"train.iterations={STEPS}", f"train.iterations={LONG}")
             .replace("train.checkpoint_interval=1", "train.checkpoint_interval=1000") for a in RUN]


@pytest.mark.slow  # a real process; the in-process test below checks the same in a second
def test_sigint_saves_a_resumable_checkpoint_and_exits_cleanly(tmp_path):
    """Ctrl-C in a real process: a checkpoint of the current step, a message, exit code 130,
    no traceback; resuming it finishes the run."""
    run_dir = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "transkd", "train", *SIGNALLED, "--output", str(run_dir)],
                            env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    try:
        while logged_steps(run_dir) < 2 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    out, err = out.decode(), err.decode()
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    assert "interrupted after" in out and "--resume auto" in out
    step = load_checkpoint(run_dir / "checkpoints" / "last.pt")["position"]["step"]
    assert 2 <= step < LONG
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "interrupted" and summary["steps"] == step

    shorter = [*SIGNALLED, "--set", f"train.iterations={step + 2}"]
    assert main(["train", *shorter, "--output", str(run_dir), "--resume", "auto"]) == 0
    assert load_checkpoint(run_dir / "checkpoints" / "last.pt")["position"]["step"] == step + 2


def test_ctrl_c_stops_at_the_next_step_boundary_whatever_the_code_does_with_it(tmp_path, capfd,
                                                                               monkeypatch):
    """The signal only sets a flag (an exception raised inside a finaliser or a library that
    catches it would be lost); the run stops after the step it arrived in, at exactly that step."""
    from transkd.engine.trainer import Trainer

    original = Trainer._train_step
    calls = []

    def step_then_signal(self, *args):
        stats = original(self, *args)
        calls.append(1)
        if len(calls) == 3:
            try:
                os.kill(os.getpid(), signal.SIGINT)  # arrives inside code that swallows it
            except KeyboardInterrupt:
                pytest.fail("the signal raised instead of setting the stop flag")
        return stats

    monkeypatch.setattr(Trainer, "_train_step", step_then_signal)
    run_dir = tmp_path / "run"
    assert main(["train", *SIGNALLED, "--output", str(run_dir)]) == 130
    out, err = capfd.readouterr()
    assert "interrupted after 3/400 steps" in out and "stopping after the current step" in err
    assert load_checkpoint(run_dir / "checkpoints" / "last.pt")["position"]["step"] == 3
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handler restored


def test_resuming_a_finished_run_names_its_files(tmp_path, capsys):
    """The best student exported before is still the best one: the summary names it (and lists
    TensorBoard only when it was written)."""
    run_dir = tmp_path / "run"
    run_in_process("train", SHORT, run_dir)
    capsys.readouterr()
    run_in_process("train", SHORT, run_dir, "--resume", "auto")
    out = capsys.readouterr().out
    assert (f"deployable network: {run_dir / 'best' / 'model.safetensors'} (best), "
            f"{run_dir / 'last' / 'model.safetensors'} (last)") in out
    assert "TensorBoard" not in out and not (run_dir / "tensorboard").exists()
    assert json.loads((run_dir / "summary.json").read_text())["best_weights"] == \
        str(run_dir / "best" / "model.safetensors")
