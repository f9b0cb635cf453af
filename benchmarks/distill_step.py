"""Time one distillation training step and measure its peak memory, two ways:

* ``ours``      — the teacher runs without autograd (``transkd``'s Distiller);
* ``reference`` — the teacher runs with autograd on and its parameters requiring gradients, as
  in the authors' training scripts: the loss backward goes through the teacher's graph and
  fills (and accumulates) teacher gradients nobody uses.

A step is forward (student + teacher + adapters + losses), backward and one AdamW step over the
student and adapters. Each variant runs in its own subprocess, so their memory cannot mix.

Peak memory (CPU): the process's resident set. Just before the first step the kernel's
high-water mark is reset (``echo 5 > /proc/self/clear_refs``); after the last step the peak is
read from ``VmHWM`` in ``/proc/self/status``. "step memory" is that peak minus the resident size
at the reset (weights, teacher, optimiser set-up), i.e. what the step itself needs:
activations, gradients, AdamW state and allocator slack. If the kernel refuses the reset, the
lifetime peak (``ru_maxrss``) is used and the report says so.

    python benchmarks/distill_step.py --method transkd_base --batch 2 --size 512 1024 \\
        --repeats 3 --threads 2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
import types

VARIANTS = ("ours", "reference")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", default="transkd_base")
    parser.add_argument("--teacher", default="segformer_b2")
    parser.add_argument("--student", default="segformer_b0")
    parser.add_argument("--num-classes", type=int, default=20)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--size", type=int, nargs=2, default=(512, 1024), metavar=("H", "W"))
    parser.add_argument("--repeats", type=int, default=3, help="timed steps after one warm-up step")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    parser.add_argument("--worker", choices=VARIANTS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.batch < 1 or args.repeats < 1 or args.warmup < 0 or min(args.size) < 32:
        parser.error("--batch and --repeats must be >= 1, --warmup >= 0, --size at least 32 32")
    return args


# ---- worker: one variant in this process ----------------------------------------------------

def resident_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def status_kib(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def teacher_with_autograd(distiller) -> None:
    """Make ``distiller`` run its teacher the way the reference code does."""
    teacher = distiller.teacher
    teacher.requires_grad_(True)

    def teacher_forward(self, images):
        return teacher(images, return_features=True)

    distiller.teacher_forward = types.MethodType(teacher_forward, distiller)


def run_worker(args: argparse.Namespace) -> dict:
    import torch

    from transkd import create_distiller, create_model, reuse_freed_memory
    from transkd.engine.optim import adamw

    reuse_freed_memory()  # as the transkd command runs
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    teacher = create_model(args.teacher, num_classes=args.num_classes)
    student = create_model(args.student, num_classes=args.num_classes)
    distiller = create_distiller(args.method, teacher, student).train()
    if args.worker == "reference":
        teacher_with_autograd(distiller)
    params = [*distiller.student.parameters(), *distiller.extra_parameters()]
    optimizer = adamw([{"params": params}], lr=6e-5, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01)
    height, width = args.size
    images = torch.rand(args.batch, 3, height, width)
    targets = torch.randint(0, args.num_classes, (args.batch, height // 4, width // 4))

    def step() -> dict[str, float]:
        t0 = time.perf_counter()
        out = distiller(images, targets)
        t1 = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        out["loss"].backward()
        t2 = time.perf_counter()
        optimizer.step()
        t3 = time.perf_counter()
        return {"forward": t1 - t0, "backward": t2 - t1, "optimizer": t3 - t2, "step": t3 - t0}

    baseline = resident_bytes()
    exact_peak = reset_peak()
    for _ in range(args.warmup):
        step()
    timings = [step() for _ in range(args.repeats)]
    peak = status_kib("VmHWM") * 1024 if exact_peak else \
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    teacher_grads = sum(p.grad is not None for p in teacher.parameters())
    return {
        "variant": args.worker,
        "step_s_median": statistics.median(t["step"] for t in timings),
        "step_s_min": min(t["step"] for t in timings),
        "forward_s_median": statistics.median(t["forward"] for t in timings),
        "backward_s_median": statistics.median(t["backward"] for t in timings),
        "optimizer_s_median": statistics.median(t["optimizer"] for t in timings),
        "steps_s": [round(t["step"], 4) for t in timings],
        "resident_before_bytes": baseline,
        "peak_resident_bytes": peak,
        "step_memory_bytes": peak - baseline,
        "peak_method": "VmHWM reset before the first step" if exact_peak else "ru_maxrss (lifetime)",
        "teacher_params_with_grad": teacher_grads,
        "threads": torch.get_num_threads(),
    }


# ---- parent: one subprocess per variant, then the comparison ---------------------------------

def run_variant(args: argparse.Namespace, variant: str) -> dict:
    argv = [sys.executable, os.path.abspath(__file__), "--worker", variant, "--method", args.method,
            "--teacher", args.teacher, "--student", args.student,
            "--num-classes", str(args.num_classes), "--batch", str(args.batch),
            "--size", *map(str, args.size), "--repeats", str(args.repeats), "--warmup", str(args.warmup)]
    if args.threads:
        argv += ["--threads", str(args.threads)]
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"variant {variant} failed:\n{done.stderr.strip()}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB"


def report(args: argparse.Namespace, results: dict[str, dict]) -> str:
    h, w = args.size
    threads = next(iter(results.values()))["threads"]
    lines = [f"{args.method}: {args.teacher} → {args.student}, batch {args.batch}, {h}×{w}, "
             f"{args.repeats} timed step(s) after {args.warmup} warm-up, {threads} thread(s), "
             f"{platform.machine()}, {os.cpu_count()} CPU(s)",
             f"{'variant':<10} {'step (median)':>14} {'forward':>9} {'backward':>9} {'AdamW':>7} "
             f"{'peak RSS':>10} {'step memory':>12}"]
    for name, r in results.items():
        lines.append(f"{name:<10} {r['step_s_median']:>13.2f}s {r['forward_s_median']:>8.2f}s "
                     f"{r['backward_s_median']:>8.2f}s {r['optimizer_s_median']:>6.2f}s "
                     f"{gib(r['peak_resident_bytes']):>10} {gib(r['step_memory_bytes']):>12}")
    if set(VARIANTS) <= set(results):
        ours, ref = results["ours"], results["reference"]
        lines.append(f"reference / ours: step time ×{ref['step_s_median'] / ours['step_s_median']:.2f}, "
                     f"backward ×{ref['backward_s_median'] / ours['backward_s_median']:.2f}, "
                     f"step memory ×{ref['step_memory_bytes'] / ours['step_memory_bytes']:.2f}, "
                     f"peak RSS ×{ref['peak_resident_bytes'] / ours['peak_resident_bytes']:.2f}")
    lines.append("teacher parameters holding a gradient after the steps: " + ", ".join(
        f"{name} {r['teacher_params_with_grad']}" for name, r in results.items()))
    lines.append(f"memory: {next(iter(results.values()))['peak_method']}; step memory = peak − "
                 "resident size before the first step")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        print(json.dumps(run_worker(args)))
        return 0
    results = {variant: run_variant(args, variant) for variant in args.variants}
    print(report(args, results))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"config": {k: v for k, v in vars(args).items() if k not in ("worker", "json")},
                       "results": results}, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
