"""One-GPU check: the CUDA tests, a short bf16 TransKD-Base distillation on CamVid, and the same
under ``torchrun`` with the NCCL backend; prints step time, images/s, peak GPU memory and val mIoU.

    python benchmarks/gpu_check.py --data /path/to/CamVid --output gpu-check
    python benchmarks/gpu_check.py --data /path/to/CamVid --teacher runs/camvid/teacher/best/model.safetensors
    python benchmarks/gpu_check.py --dry-run --output /tmp/gpu-check     # CPU, synthetic, gloo

Without ``--teacher`` it first trains a short SegFormer-B2 teacher (``--teacher-steps``) on the same
data, so the distillation has real (if weak) targets; the mIoU it reaches then says that the
pipeline learns, not what a full schedule reaches. Every stage is a child process (``pytest``,
``python -m transkd``, ``torchrun``), so a crash in one is reported with its name and the check
exits non-zero. The defaults are sized for under 8 minutes on one recent GPU (an estimate until
it has run on one); ``--budget`` (480 s) stops and fails a check that runs longer.

``--dry-run`` checks on the CPU what can be checked there: the CUDA test subset only collects
(its tests skip without a GPU), the runs use the synthetic dataset at 64x128, fp32 and a few
steps, and the ``torchrun`` stage uses gloo.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "camvid" / "transkd_base_b2-b0_cpu40e.yaml"
TEACHER_CONFIG = ROOT / "configs" / "camvid" / "teacher_b2_cpu40e.yaml"
TEST_DIRS = ("tests/models", "tests/distill", "tests/data", "tests/engine")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", metavar="ROOT", help="CamVid root (train/, trainannot/, val/, valannot/)")
    parser.add_argument("--teacher", metavar="FILE", help="a trained SegFormer-B2 CamVid teacher "
                        "(.safetensors or run folder); default: train a short one first")
    parser.add_argument("-o", "--output", default="gpu-check", metavar="DIR", help="run folders go here")
    parser.add_argument("--steps", type=int, default=150, help="distillation steps per run")
    parser.add_argument("--teacher-steps", type=int, default=300, help="steps of the teacher trained "
                        "when --teacher is not given")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--precision", choices=("bf16", "fp16", "fp32"), default="bf16")
    parser.add_argument("--skip-tests", action="store_true", help="skip the CUDA test subset")
    parser.add_argument("--budget", type=float, default=480.0, help="seconds for all stages together; "
                        "a stage still running past it is stopped and the check fails")
    parser.add_argument("--dry-run", action="store_true", help="CPU, synthetic data, tiny sizes, gloo")
    parser.add_argument("--nccl-probe", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if not args.dry_run and not args.nccl_probe and args.data is None:
        parser.error("--data is required (the CamVid root), unless --dry-run")
    if min(args.steps, args.teacher_steps, args.batch_size) < 1:
        parser.error("--steps, --teacher-steps and --batch-size must be >= 1")
    return args


# ---- the run settings ---------------------------------------------------------------------------

def run_overrides(args: argparse.Namespace, steps: int) -> list[str]:
    """``--set`` values shared by the teacher and the distillation runs."""
    common = [f"train.iterations={steps}", "schedule.kind=standard", "schedule.warmup_iters=0",
              f"train.val_interval={steps}", f"train.checkpoint_interval={steps}",
              "train.log_interval=10", f"train.batch_size={args.batch_size}"]
    if args.dry_run:
        return [*common, "data.name=synthetic", "data.root=null",
                "data.options={length: 16, size: [64, 128]}", "data.val_options={length: 4}",
                "protocol.image_size=[64, 128]", "protocol.class_weights=none", "train.num_workers=0",
                "train.device=cpu", "train.precision=fp32"]
    return [*common, f"data.root={args.data}", "protocol.image_size=[360, 480]", "train.num_workers=6",
            "train.device=cuda", f"train.precision={args.precision}", "train.channels_last=true"]


def transkd_command(kind: str, config: Path, out: Path, overrides: list[str]) -> list[str]:
    sets = [item for value in overrides for item in ("--set", value)]
    return [sys.executable, "-m", "transkd", kind, "--config", str(config), "--output", str(out), *sets]


def torchrun_command(script_args: list[str]) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1",
            *script_args]


# ---- stages -------------------------------------------------------------------------------------

class Stage:
    """One child process; remembers its name, time and exit code."""

    def __init__(self, name: str, command: list[str], env: dict[str, str]) -> None:
        self.name, self.command, self.env = name, command, env
        self.seconds = 0.0
        self.code: int | None = None

    def run(self, timeout: float) -> bool:
        """Run within ``timeout`` seconds; past it, the stage's whole process group (torchrun's
        workers, data-loader workers) is killed and the stage fails with exit code 124."""
        print(f"== {self.name}: {' '.join(self.command)}", flush=True)
        start = time.perf_counter()
        child = subprocess.Popen(self.command, cwd=ROOT, env=self.env, start_new_session=True)
        try:
            self.code = child.wait(timeout=max(timeout, 1.0))
        except subprocess.TimeoutExpired:
            os.killpg(child.pid, signal.SIGKILL)
            child.wait()
            self.code = 124
            print(f"== {self.name}: over the time budget, stopped", flush=True)
        self.seconds = time.perf_counter() - start
        print(f"== {self.name}: exit {self.code} after {self.seconds:.1f} s", flush=True)
        return self.code == 0


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    return env


def summary_figures(run_dir: Path) -> dict[str, float | None]:
    """Step time, images/s, peak GPU memory and val mIoU from a run's ``summary.json``."""
    summary = json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))
    compute = summary.get("compute") or {}
    per_step = compute.get("seconds_per_step")
    images = compute.get("images_per_step")
    best = summary.get("best") or summary.get("last_val") or {}
    return {"seconds_per_step": per_step,
            "images_per_s": images / per_step if per_step and images else None,
            "peak_gpu_memory_mb": compute.get("peak_gpu_memory_mb"),
            "val_miou": best.get("miou")}


def nccl_probe(dry_run: bool) -> int:
    """Under torchrun: join the process group with the backend training uses and all-reduce.

    One process trains without DDP (nothing to reduce), so this is what proves that the NCCL
    backend initialises and communicates on this machine."""
    import torch
    import torch.distributed as dist

    cuda = not dry_run
    backend = "nccl" if cuda else "gloo"
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0"))) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    dist.init_process_group(backend=backend)
    value = torch.ones(4, device=device) * (dist.get_rank() + 1)
    dist.all_reduce(value)
    ok = bool((value == dist.get_world_size() * (dist.get_world_size() + 1) / 2).all())
    print(f"{backend} all-reduce over {dist.get_world_size()} process(es): {'ok' if ok else 'WRONG'}")
    dist.destroy_process_group()
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.nccl_probe:
        return nccl_probe(args.dry_run)
    if not args.dry_run:
        import torch
        if not torch.cuda.is_available():
            print("no CUDA device: run on a GPU machine, or give --dry-run", file=sys.stderr)
            return 2
    out = Path(args.output).resolve()
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    env = child_env()
    stages: list[Stage] = []
    if not args.skip_tests:
        select = ["--collect-only"] if args.dry_run else []
        pytest = [sys.executable, "-m", "pytest", "-q", "-m", "not slow", "-k", "cuda",
                  "-p", "no:cacheprovider"]
        stages.append(Stage("cuda tests", [*pytest, *select, *TEST_DIRS], env))
    teacher = args.teacher
    if teacher is None:
        teacher = str(out / "teacher" / "best" / "model.safetensors")
        stages.append(Stage("teacher (segformer_b2)", transkd_command(
            "train", TEACHER_CONFIG, out / "teacher", run_overrides(args, args.teacher_steps)), env))
    distill = [*run_overrides(args, args.steps), f"teacher.weights={teacher}"]
    runs = {"distill": out / "distill", "torchrun": out / "torchrun"}
    stages.append(Stage("distill (transkd_base)",
                        transkd_command("distill", CONFIG, runs["distill"], distill), env))
    probe = [str(Path(__file__).resolve()), "--nccl-probe", *(["--dry-run"] if args.dry_run else [])]
    stages.append(Stage("torchrun backend probe", torchrun_command(probe), env))
    stages.append(Stage("torchrun distill", torchrun_command(
        transkd_command("distill", CONFIG, runs["torchrun"], distill)[1:]), env))
    failed = None
    deadline = time.monotonic() + args.budget
    for stage in stages:
        if not stage.run(deadline - time.monotonic()):
            failed = stage
            break
    print("\nstage                      seconds  exit")
    for stage in stages:
        print(f"{stage.name:<26} {stage.seconds:7.1f}  {stage.code if stage.code is not None else '-'}")
    if failed is not None:
        print(f"FAILED: {failed.name} exited with {failed.code}", file=sys.stderr)
        return 1
    results = {}
    print("\nrun        s/step   images/s  peak GPU MiB  val mIoU %")
    for name, run_dir in runs.items():
        figures = results[name] = summary_figures(run_dir)
        print(f"{name:<10} {_num(figures['seconds_per_step'], 3):>6}  {_num(figures['images_per_s'], 1):>8}"
              f"  {_num(figures['peak_gpu_memory_mb'], 0):>12}  {_num(figures['val_miou'], 2, 100):>9}")
    (out / "gpu_check.json").write_text(json.dumps(
        {"dry_run": args.dry_run, "stages": {s.name: {"seconds": round(s.seconds, 1), "exit": s.code}
                                             for s in stages}, "runs": results}, indent=2) + "\n",
        encoding="utf-8")
    missing = [name for name, figures in results.items() if figures["val_miou"] is None
               or figures["seconds_per_step"] is None
               or (not args.dry_run and figures["peak_gpu_memory_mb"] is None)]
    if missing:
        print(f"FAILED: no figures from {', '.join(missing)}", file=sys.stderr)
        return 1
    return 0


def _num(value: float | None, digits: int, scale: float = 1.0) -> str:
    return "-" if value is None else f"{value * scale:.{digits}f}"


if __name__ == "__main__":
    sys.exit(main())
