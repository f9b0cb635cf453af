"""Faults of long runs on shared machines: a second writer on a run folder, pre-emption signals,
a torchrun process that dies. Each stops cleanly and the run continues exactly."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from tests.engine.test_resume import (
    RUN,
    STEPS,
    assert_bit_identical,
    child_env,
    logged_steps,
    tensors,
)
from transkd.cli import main
from transkd.engine.checkpoint import load_checkpoint
from transkd.engine.interrupt import exit_code
from transkd.engine.lock import LOCK_NAME, RunInUseError, RunLock, check_not_in_use
from transkd.weights.io import model_file

HOLD = textwrap.dedent("""
    import os, sys, time
    from transkd.engine.lock import RunLock
    with RunLock(sys.argv[1]):
        if len(sys.argv) > 2 and os.fork() == 0:  # a child, as a data-loader worker would be
            time.sleep(60)
            os._exit(0)
        print("locked", flush=True)
        time.sleep(60)
""")


def hold_lock(folder: Path, fork: bool = False) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(folder), *(["fork"] if fork else [])],
                            stdout=subprocess.PIPE, text=True, env=child_env())
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_a_second_writer_is_refused_with_the_holders_pid(tmp_path, capsys):
    run_dir = tmp_path / "run"
    holder = hold_lock(run_dir)
    try:
        with pytest.raises(RunInUseError, match=f"in use by process {holder.pid}, started"):
            check_not_in_use(run_dir)
        before = sorted(p.name for p in run_dir.iterdir())
        assert main(["train", *RUN, "--output", str(run_dir), "--resume", "auto"]) == 2
        err = capsys.readouterr().err
        assert f"output folder {run_dir} is in use by process {holder.pid}" in err
        assert err.count("\n") == 1 and "Traceback" not in err
        assert sorted(p.name for p in run_dir.iterdir()) == before  # nothing written, nothing removed
    finally:
        holder.kill()
        holder.wait()


def test_a_killed_holder_leaves_no_stuck_lock_even_with_forked_children(tmp_path):
    holder = hold_lock(tmp_path / "run", fork=True)
    holder.send_signal(signal.SIGKILL)  # its forked child lives on, with the file still open
    holder.wait()
    check_not_in_use(tmp_path / "run")
    with RunLock(tmp_path / "run"):
        assert (tmp_path / "run" / LOCK_NAME).read_text().startswith(f'{{"pid": {os.getpid()}')


def test_exit_codes_name_the_signal():
    assert [exit_code(s) for s in ("SIGINT", "SIGTERM", "SIGUSR1", None)] == [130, 143, 138, 130]


@pytest.mark.slow  # a real process, signalled, then resumed, then a reference run
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGUSR1])
def test_preemption_signal_checkpoints_exits_with_its_code_and_resumes_exactly(tmp_path, signum):
    run_dir = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "transkd", "train", *RUN, "--output", str(run_dir)],
                            env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 180
    try:
        while logged_steps(run_dir) < 2 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        assert proc.poll() is None, "the run ended before it could be signalled"
        proc.send_signal(signum)
        out, err = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 128 + signum, err
    assert f"interrupted by {signal.Signals(signum).name} after" in out and "Traceback" not in err
    assert 2 <= load_checkpoint(run_dir / "checkpoints" / "last.pt")["position"]["step"] < STEPS
    assert main(["train", *RUN, "--output", str(run_dir), "--resume", "auto"]) == 0
    assert main(["train", *RUN, "--output", str(tmp_path / "straight")]) == 0
    assert_bit_identical(tensors(model_file(run_dir, last=True)),
                         tensors(model_file(tmp_path / "straight", last=True)), "resumed vs uninterrupted")


def children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry.name))
    return found


def local_rank_of(pid: int) -> str | None:
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return None
    for item in environ:
        if item.startswith(b"LOCAL_RANK="):
            return item.split(b"=", 1)[1].decode()
    return None


TORCHRUN_STEPS = 10


def torchrun(run_dir: Path, kill_rank1_at: int | None) -> str:
    env = {k: v for k, v in child_env().items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    args = [a.replace(f"train.iterations={STEPS}", f"train.iterations={TORCHRUN_STEPS}") for a in RUN]
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "--max-restarts", "1", "-m", "transkd", "train", *args, "--output", str(run_dir)]
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if kill_rank1_at is not None:
        deadline = time.monotonic() + 300
        while logged_steps(run_dir) < kill_rank1_at:
            assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read()[-3000:]
            time.sleep(0.01)
        agents = children(proc.pid) or [proc.pid]
        workers = [w for a in agents for w in children(a)] + agents
        rank1 = [w for w in workers if local_rank_of(w) == "1"]
        assert rank1, "rank 1 not found"
        os.kill(rank1[0], signal.SIGKILL)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-3000:]
    return out


@pytest.mark.slow  # two torchrun jobs of 2 gloo processes
def test_a_rank_killed_under_torchrun_restarts_and_ends_with_the_uninterrupted_weights(tmp_path):
    """torchrun --max-restarts 1 restarts both processes; they continue from the last checkpoint
    by themselves, each with its own random state (dropout and drop-path are on), and end with
    exactly the weights of an uninterrupted 2-process run."""
    torch.manual_seed(0)
    out = torchrun(tmp_path / "killed", kill_rank1_at=4)
    assert "torchrun restarted the job (restart 1): continuing from its last checkpoint" in out
    torchrun(tmp_path / "straight", kill_rank1_at=None)
    assert_bit_identical(tensors(model_file(tmp_path / "killed", last=True)),
                         tensors(model_file(tmp_path / "straight", last=True)), "restarted vs uninterrupted")


# ------------------------------------------------------------------------------ data faults

def folder_with_a_truncated_image(root: Path) -> Path:
    """A folder dataset of 8 training images; one of them is cut short after a valid header, so
    the run starts (headers are checked up front) and the file fails when it is decoded."""
    from tests.data.test_datasets import write_classes, write_image, write_label

    root.mkdir(parents=True)
    write_classes(root)
    for split, count in (("train", 8), ("val", 2)):
        for i in range(count):
            write_image(root / "images" / split / f"f{i}.png", 10 * i, size=(32, 64))
            write_label(root / "masks" / split / f"f{i}.png", [0, 1, 2], size=(32, 64))
    bad = root / "images" / "train" / "f5.png"
    data = bad.read_bytes()
    bad.write_bytes(data[:len(data) - 30])  # header and part of the pixel data, no end
    return bad


FOLDER_RUN = ["--set", "data.name=folder", "--set", "protocol.image_size=[32, 64]",
              "--set", "train.batch_size=2", "--set", "train.iterations=8",
              "--set", "schedule.kind=standard", "--set", "schedule.warmup_iters=2",
              "--set", "train.val_interval=1000", "--set", "train.log_interval=1",
              "--set", "train.tensorboard=false", "--set", "eval.batch_size=2", "--no-progress"]


@pytest.mark.parametrize("workers", [0, 2])
def test_an_unreadable_sample_mid_run_stops_naming_its_file(tmp_path, capsys, workers):
    bad = folder_with_a_truncated_image(tmp_path / "data")
    code = main(["train", *FOLDER_RUN, "--data", str(tmp_path / "data"),
                 "--set", f"train.num_workers={workers}", "--output", str(tmp_path / "run")])
    assert code == 2
    err = capsys.readouterr().err
    assert f"cannot read image {bad}" in err and "training stopped at step" in err
    assert "data.skip_bad_samples=true" in err and err.count("\n") == 1


def test_skip_bad_samples_trains_on_and_counts_them(tmp_path):
    import json

    bad = folder_with_a_truncated_image(tmp_path / "data")
    code = main(["train", *FOLDER_RUN, "--data", str(tmp_path / "data"), "--set", "train.num_workers=0",
                 "--set", "data.skip_bad_samples=true", "--output", str(tmp_path / "run")])
    assert code == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["bad_samples_skipped"] == 2  # 2 epochs
    events = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    skipped = [e for e in events if e.get("event") == "bad_samples_skipped"]
    assert len(skipped) == 2 and str(bad) in skipped[0]["errors"][0]


def test_a_worker_that_dies_is_named_with_the_file_it_was_reading(tmp_path, capsys, monkeypatch):
    from transkd.data.datasets.base import FilePairDataset

    folder_with_a_truncated_image(tmp_path / "data")
    (tmp_path / "data" / "images" / "train" / "f5.png").unlink()
    (tmp_path / "data" / "masks" / "train" / "f5.png").unlink()
    read = FilePairDataset.__getitem__

    def read_or_die(self, index):  # runs in the forked worker: dies like an OOM-killed process
        if self.pairs[index].name == "f3" and self.split == "train":
            os.kill(os.getpid(), signal.SIGKILL)
        return read(self, index)

    monkeypatch.setattr(FilePairDataset, "__getitem__", read_or_die)
    code = main(["train", *FOLDER_RUN, "--data", str(tmp_path / "data"), "--set", "train.num_workers=2",
                 "--output", str(tmp_path / "run")])
    assert code == 2
    err = capsys.readouterr().err
    assert "data loader worker" in err and "died while reading" in err
    assert str(tmp_path / "data" / "images" / "train" / "f3.png") in err and err.count("\n") == 1
