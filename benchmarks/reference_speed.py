"""Speed and memory of transkd against the TransKD authors' reference code, side by side.

Measured at identical shapes and thread counts, each variant in a fresh subprocess:

* one TransKD-Base distillation step (MiT-B2 teacher → MiT-B0 student, CSF + HCL + PEA, weighted
  CE; forward, backward, AdamW step) at every ``--sizes`` entry, for the reference training step
  as shipped (teacher forward with autograd on, its outputs not detached) and for
  ``transkd.create_distiller("transkd_base", ...)``;
* the student's forward pass, 1×3×H×W in inference mode: the reference SegFormer-B0, the
  reference's TransKD evaluation path (student wrapped in its CSF/PEA adapters, as its eval
  script runs a distilled student) and ``transkd.create_model("segformer_b0")``;
* a sanity check that both implementations compute the same losses: the reference weights are
  copied into ours (dropout and stochastic depth off) and the loss terms of two consecutive
  training steps are compared, the second one checking that the gradients agree too.

Time is the median wall time of ``--repeats`` runs after ``--warmup`` runs. Memory is the peak
resident set size of the subprocess (``getrusage(RUSAGE_SELF).ru_maxrss``) minus its resident
size right after the models, optimiser and inputs were built: what the step itself adds
(activations, gradients, optimiser state, allocator caches). The 1-minute load average is
recorded before and after each measurement, since other jobs may share the machine.

The reference code imports timm, mmcv and mmseg; ``benchmarks/reference_shims`` stands in for
the few names it uses and is put first on ``sys.path`` in the reference subprocesses only.

    python benchmarks/reference_speed.py --reference /path/to/TransKD --json perf.json
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import gc
import json
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

SHIM_DIR = Path(__file__).resolve().parent / "reference_shims"
NUM_CLASSES = 20  # 19 Cityscapes classes + void (weight 0), the reference's training set-up
EMBED_WEIGHTS = (0.1, 0.1, 0.5, 1.0)  # --embed-weights default of train_TransKDBase.py
LR = 6e-5

DISTILL_IMPLS = {
    "ref": "reference, as shipped",
    "ref_reuse": "reference, freed memory kept",
    "ref_nograd": "reference, teacher in no_grad",
    "ours": "transkd",
    "ours_system": "transkd, system allocator",
    "ours_cl": "transkd, channels_last",
    "ours_bf16": "transkd, bf16 autocast",
}
INFER_IMPLS = {
    "ref_student": "reference SegFormer-B0",
    "ref_transkd_eval": "reference TransKD eval path",
    "ours": "transkd segformer_b0",
    "ours_system": "transkd, system allocator",
    "ours_cl": "transkd, channels_last",
}
#: Variants whose process keeps freed host memory for reuse, as the transkd command does
#: (transkd.host_memory); the others run with the C library's defaults.
REUSE_IMPLS = {"ref_reuse", "ours", "ours_cl", "ours_bf16"}
#: What a 4x speed-up is measured against, and the factor (the target the step is held to).
TARGET_SPEEDUP = 4.0


# ------------------------------------------------------------------------------ measurement


def current_rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


class Gate:
    """A worker's side of ``--lockstep``: it waits for its turn before each step and reports
    back after it, so that concurrent variants never compute at the same time. Without the
    conductor's pipes (``spec["gate"]`` absent) every call returns at once."""

    def __init__(self, fds: list[int] | None) -> None:
        self.go, self.back = fds if fds else (None, None)

    def signal(self) -> None:
        if self.back is not None:
            os.write(self.back, b".")

    def wait(self) -> None:
        if self.go is not None and not os.read(self.go, 1):
            raise SystemExit("the lockstep conductor went away")


def measure(run: Callable[[], dict | None], warmup: int, repeats: int, gate: Gate | None = None
            ) -> dict:
    """Time ``run`` and read the memory it adds on top of what exists now; with a ``gate``,
    each run waits for its turn (the wait is not timed)."""
    gate = gate or Gate(None)
    gc.collect()
    baseline = current_rss_bytes()
    peak_before = peak_rss_bytes()
    load_before = os.getloadavg()[0]
    times, cpu_times, info = [], [], None
    for i in range(warmup + repeats):
        gate.wait()
        start, cpu_start = time.perf_counter(), time.process_time()
        info = run()
        elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu_start
        gate.signal()
        if i >= warmup:
            times.append(elapsed)
            cpu_times.append(cpu)
    peak = peak_rss_bytes()
    return {
        "times_s": times, "cpu_times_s": cpu_times, "baseline_rss_mb": baseline / 2**20,
        "peak_rss_mb": peak / 2**20,
        "peak_delta_mb": (peak - baseline) / 2**20,
        # The build phase already reached this high-water mark; if it exceeds the step's peak,
        # peak_delta_mb understates the step's memory.
        "peak_before_mb": peak_before / 2**20,
        "load_before": load_before, "load_after": os.getloadavg()[0], "info": info,
    }


def make_batch(batch: int, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Images in [0, 1] (the reference feeds un-normalised ToTensor images) and 1/4-size labels
    in 0..19 (19 = void, weight 0), like the reference's training transform."""
    gen = torch.Generator().manual_seed(1)
    images = torch.rand(batch, 3, height, width, generator=gen)
    labels = torch.randint(0, NUM_CLASSES, (batch, height // 4, width // 4), generator=gen)
    return images, labels


# ------------------------------------------------------------------------------ reference side


def import_reference(path: Path):
    """Put the shims and the reference's ``train`` folder on ``sys.path`` and import its modules."""
    train_dir = path / "train"
    if not (train_dir / "CSF.py").is_file():
        raise SystemExit(f"--reference {path} has no train/CSF.py: pass a clone of RuipingL/TransKD")
    sys.path[:0] = [str(SHIM_DIR), str(train_dir)]
    import CSF  # the reference's modules, found through the paths above
    import models.Segformer as plain
    import models.Segformer4EmbeddingKD as embed_kd
    return CSF, plain, embed_kd


def reference_training_names(path: Path) -> tuple[type, torch.Tensor]:
    """``CrossEntropyLoss2d`` and the class weights, read from the reference training script
    itself (the script cannot be imported: it needs its dataset and scheduler packages)."""
    source = (path / "train" / "train_TransKDBase.py").read_text()
    tree = ast.parse(source)
    node = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "CrossEntropyLoss2d")
    namespace: dict = {"torch": torch}
    exec(compile(ast.Module(body=[node], type_ignores=[]), "train_TransKDBase.py", "exec"), namespace)
    weight = torch.ones(NUM_CLASSES)
    for index, value in re.findall(r"weight\[(\d+)\]\s*=\s*([0-9.]+)", source):
        weight[int(index)] = float(value)
    return namespace["CrossEntropyLoss2d"], weight


def build_reference_distill(path: Path):
    CSF, _, embed_kd = import_reference(path)
    criterion_cls, weight = reference_training_names(path)
    torch.manual_seed(0)
    teacher = embed_kd.mit_b2()
    model = CSF.build_kd_trans(embed_kd.mit_b0(), 5)
    return model, teacher, criterion_cls(weight), CSF.hcl


def reference_step(model, teacher, criterion, hcl, optimizer, inputs, targets, teacher_grad: bool):
    """The body of the reference ``train()`` loop for TransKD-Base (hcl, embed=5), verbatim in
    order; ``teacher_grad=False`` is the one deviation, for the ``ref_nograd`` variant."""
    fstudent, outputs, estudent = model(inputs)
    with torch.set_grad_enabled(teacher_grad):
        fteacher, _, eteacher = teacher(inputs)
    loss_logits = criterion(outputs, targets[:, 0])
    optimizer.zero_grad()
    loss_review = hcl(fstudent, fteacher) * 1.0
    loss = loss_review + loss_logits
    loss_embedd = nn.MSELoss()
    terms = {"ce": loss_logits.item(), "hcl": loss_review.item()}
    for i in range(len(estudent)):
        term = EMBED_WEIGHTS[i] * loss_embedd(estudent[i], eteacher[i])
        terms[f"embed_{i + 1}"] = term.item()
        loss += term
    loss.backward()
    optimizer.step()
    terms["loss"] = loss.item()
    return terms


def reference_optimizer(model):
    return torch.optim.AdamW(model.parameters(), LR, (0.9, 0.999), eps=1e-08, weight_decay=0.01)


# ------------------------------------------------------------------------------ our side


def build_ours_distill():
    import transkd
    from transkd.data.protocols import ERFNET_CITYSCAPES_WEIGHTS
    from transkd.distill.base import cross_entropy_loss

    weight = torch.tensor([*ERFNET_CITYSCAPES_WEIGHTS, 0.0])  # the "paper" protocol's void class

    def criterion(logits, targets):
        return cross_entropy_loss(logits, targets, ignore_index=255, weight=weight)

    torch.manual_seed(0)
    teacher = transkd.create_model("segformer_b2", num_classes=NUM_CLASSES)
    student = transkd.create_model("segformer_b0", num_classes=NUM_CLASSES)
    distiller = transkd.create_distiller("transkd_base", teacher, student, criterion=criterion)
    distiller.train()
    return distiller


def ours_optimizer(distiller):
    from transkd.engine.optim import adamw  # the trainer's optimiser (fused where supported)

    return adamw([{"params": list(distiller.parameters())}], lr=LR, betas=(0.9, 0.999), eps=1e-8,
                 weight_decay=0.01)


def ours_step(distiller, optimizer, images, targets, autocast_bf16: bool = False):
    """What the trainer does per step (fp32 or bf16 autocast, no gradient accumulation)."""
    if autocast_bf16:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            terms = distiller(images, targets)
    else:
        terms = distiller(images, targets)
    optimizer.zero_grad(set_to_none=True)
    terms["loss"].backward()
    optimizer.step()
    return {k: v.item() for k, v in terms.items() if k != "logits"}


# ------------------------------------------------------------------------------ workers


def worker_distill(spec: dict) -> dict:
    impl, (height, width) = spec["impl"], spec["size"]
    images, labels = make_batch(spec["batch"], height, width)
    if impl.startswith("ref"):
        model, teacher, criterion, hcl = build_reference_distill(Path(spec["reference"]))
        model.train()
        teacher.eval()
        optimizer = reference_optimizer(model)
        targets = labels[:, None]  # the reference's ToLabel keeps a channel axis

        def run():
            return reference_step(model, teacher, criterion, hcl, optimizer, images, targets,
                                  teacher_grad=impl in ("ref", "ref_reuse"))
    else:
        distiller = build_ours_distill()
        if impl == "ours_cl":
            distiller.to(memory_format=torch.channels_last)
            images = images.contiguous(memory_format=torch.channels_last)
        optimizer = ours_optimizer(distiller)

        def run():
            return ours_step(distiller, optimizer, images, labels, autocast_bf16=impl == "ours_bf16")
    gate = Gate(spec.get("gate"))
    gate.signal()  # built: ready for the first turn
    result = measure(run, spec["warmup"], spec["repeats"], gate)
    gate.wait()  # one more turn for the counting and the phases
    result["flops"] = step_flops(run)
    if impl in ("ours", "ours_system"):
        result["phases"] = ours_phases(distiller, optimizer, images, labels, spec["repeats"])
    gate.signal()
    return result


def step_flops(run: Callable[[], dict | None]) -> int:
    """FLOPs of one step, forward and backward (torch's flop counter, attention included)."""
    from transkd.profile import flop_counter_mode

    mode = flop_counter_mode()
    with mode:
        run()
    return int(mode.get_total_flops())


def ours_phases(distiller, optimizer, images, labels, repeats: int) -> dict:
    """Where one transkd step goes: the teacher's forward (run alone), the rest of the forward
    (student, adapters, losses), the backward and the optimiser step; median ms and FLOPs each."""
    from transkd.profile import flop_counter_mode

    def timed(fn):
        start = time.perf_counter()
        out = fn()
        return out, time.perf_counter() - start

    samples: dict[str, list[float]] = {"teacher_forward": [], "forward": [], "backward": [], "optimizer": []}
    for _ in range(repeats):
        _, seconds = timed(lambda: distiller.teacher_forward(images))
        samples["teacher_forward"].append(seconds)
        terms, seconds = timed(lambda: distiller(images, labels))
        samples["forward"].append(seconds)
        optimizer.zero_grad(set_to_none=True)
        _, seconds = timed(terms["loss"].backward)
        samples["backward"].append(seconds)
        _, seconds = timed(optimizer.step)
        samples["optimizer"].append(seconds)
    flops = {}
    for name, fn in (("teacher_forward", lambda: distiller.teacher_forward(images)),
                     ("forward", lambda: distiller(images, labels))):
        mode = flop_counter_mode()
        with mode:
            out = fn()
        flops[name] = int(mode.get_total_flops())
    mode = flop_counter_mode()
    optimizer.zero_grad(set_to_none=True)
    with mode:
        out["loss"].backward()
    flops["backward"] = int(mode.get_total_flops())
    flops["optimizer"] = 0
    median = {k: statistics.median(v) for k, v in samples.items()}
    # The full forward runs the teacher inside it: its own share is the rest.
    median["student_forward"] = median["forward"] - median["teacher_forward"]
    flops["student_forward"] = flops["forward"] - flops["teacher_forward"]
    return {name: {"s": median[name], "flops": flops[name]}
            for name in ("teacher_forward", "student_forward", "backward", "optimizer")}


def worker_peak(spec: dict) -> dict:
    """fp32 matmul peak at this thread count (transkd bench's own ceiling: the CPU matmul library
    of transkd's linear layers), and torch.mm's (the BLAS) beside it where that is another one."""
    from transkd.deploy.bench import matmul_peak
    from transkd.models.linear import cpu_matmul_backend, set_cpu_matmul_backend

    peak = matmul_peak(2048, warmup=1, repeats=5)
    extra = {}
    if cpu_matmul_backend() != "blas":
        set_cpu_matmul_backend("blas")
        blas = matmul_peak(2048, warmup=1, repeats=5)
        set_cpu_matmul_backend(None)
        extra = {"blas_gflops_per_s": blas["gflops_per_s"], "blas_what": blas["what"]}
    seconds = peak["latency"]["median_ms"] / 1e3
    return {"times_s": [seconds], "cpu_times_s": [seconds], "gflops_per_s": peak["gflops_per_s"],
            **extra, "what": peak["what"], "baseline_rss_mb": 0.0, "peak_rss_mb": 0.0, "peak_delta_mb": 0.0,
            "peak_before_mb": 0.0, "load_before": os.getloadavg()[0], "load_after": os.getloadavg()[0],
            "info": None}


def worker_infer(spec: dict) -> dict:
    impl, (height, width) = spec["impl"], spec["size"]
    torch.manual_seed(0)
    if impl.startswith("ref"):
        CSF, plain, embed_kd = import_reference(Path(spec["reference"]))
        if impl == "ref_student":
            model = plain.mit_b0()
        else:
            model = CSF.build_kd_trans(embed_kd.mit_b0(), 5)
    else:
        import transkd
        model = transkd.create_model("segformer_b0", num_classes=NUM_CLASSES)
    model.eval()
    x = make_batch(1, height, width)[0]
    if impl == "ours_cl":
        model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)

    def run():
        with torch.inference_mode():
            out = model(x)
        logits = out[1] if isinstance(out, tuple) else out
        return {"logits_shape": list(logits.shape)}

    return measure(run, spec["warmup"], spec["repeats"])


def _no_randomness(module: nn.Module) -> None:
    for m in module.modules():
        if hasattr(m, "drop_prob"):
            m.drop_prob = 0.0
        if isinstance(m, nn.modules.dropout._DropoutNd):
            m.p = 0.0


def _copy_adapters(reference_kd: nn.Module, method: nn.Module) -> None:
    """Reference SKF adapters → our CSF/PEA (the mapping of ``reference_modules.csf_pea_state``;
    ``fc1``, the single-sample branch, has no counterpart and is unused at batch 2)."""
    from reference_modules import csf_pea_state  # this folder is sys.path[0] when run as a script

    method.load_state_dict(csf_pea_state(reference_kd), strict=True)


def worker_sanity(spec: dict) -> dict:
    """Both implementations with the same weights: loss terms of two consecutive steps."""
    from transkd.weights.convert import load_converted

    height, width = spec["size"]
    images, labels = make_batch(spec["batch"], height, width)
    distiller = build_ours_distill()
    model, teacher, criterion, hcl = build_reference_distill(Path(spec["reference"]))
    load_converted(distiller.student, model.student.state_dict(), "nvlabs")
    load_converted(distiller.teacher, teacher.state_dict(), "nvlabs")
    _copy_adapters(model, distiller.methods["transkd_base"])
    for net in (model, teacher, distiller):
        _no_randomness(net)
    model.train()
    teacher.eval()
    distiller.train()
    ref_opt, our_opt = reference_optimizer(model), ours_optimizer(distiller)
    steps = []
    for _ in range(2):
        theirs = reference_step(model, teacher, criterion, hcl, ref_opt, images, labels[:, None], True)
        ours = ours_step(distiller, our_opt, images, labels)
        rel = {k: abs(ours[k] - theirs[k]) / max(abs(theirs[k]), 1e-12) for k in theirs}
        steps.append({"reference": theirs, "ours": ours, "relative_difference": rel})
    worst = max(v for s in steps for v in s["relative_difference"].values())
    return {"steps": steps, "max_relative_difference": worst, "size": [height, width]}


WORKERS = {"distill": worker_distill, "infer": worker_infer, "sanity": worker_sanity, "peak": worker_peak}


def run_worker(spec: dict) -> dict:
    torch.set_num_threads(spec["threads"])
    from transkd.host_memory import host_allocator, reuse_freed_memory
    from transkd.models.linear import describe_cpu_matmul

    if spec.get("impl") in REUSE_IMPLS:
        reuse_freed_memory()
    result = WORKERS[spec["kind"]](spec)
    result.update(kind=spec["kind"], impl=spec.get("impl"), size=spec["size"],
                  threads=torch.get_num_threads(), host_allocator=host_allocator(),
                  cpu_matmul=describe_cpu_matmul())
    return result


# ------------------------------------------------------------------------------ orchestration


def worker_env(spec: dict) -> dict:
    return dict(os.environ, OMP_NUM_THREADS=str(spec["threads"]), MKL_NUM_THREADS=str(spec["threads"]))


def spawn(spec: dict) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--worker", json.dumps(spec)],
                          env=worker_env(spec), capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{spec['kind']}/{spec.get('impl')} at {spec['size']} failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def spawn_lockstep(specs: list[dict]) -> list[dict]:
    """Distillation variants in concurrent subprocesses that take turns step by step.

    Each worker builds its models, then runs one step (warm-up, timed, and finally its FLOP
    counting) each time this conductor hands it the turn; the order of the variants alternates
    from turn to turn. Only one variant computes at any moment, each keeps its own process and
    memory reading, and a burst of load from other jobs hits the steps of every variant alike
    instead of whichever variant happened to run during it."""
    with contextlib.ExitStack() as stack:
        workers = [_start_gated_worker(spec, stack) for spec in specs]
        for worker in workers:
            _turn_done(worker)  # built
        for turn in range(specs[0]["warmup"] + specs[0]["repeats"] + 1):
            for worker in workers if turn % 2 == 0 else workers[::-1]:
                os.write(worker["go"], b"g")
                _turn_done(worker)
        results = []
        for worker in workers:
            if worker["proc"].wait() != 0:
                _fail(worker)
            worker["out"].seek(0)
            results.append(json.loads(worker["out"].read().decode().strip().splitlines()[-1]))
        return results


def _start_gated_worker(spec: dict, stack: contextlib.ExitStack) -> dict:
    go_read, go_write = os.pipe()
    back_read, back_write = os.pipe()
    stack.callback(os.close, go_write)
    stack.callback(os.close, back_read)
    out = stack.enter_context(tempfile.TemporaryFile())  # noqa: SIM115 (the stack closes it)
    err = stack.enter_context(tempfile.TemporaryFile())  # noqa: SIM115
    try:
        proc = subprocess.Popen(
            [sys.executable, __file__, "--worker", json.dumps(dict(spec, gate=[go_read, back_write]))],
            env=worker_env(spec), stdout=out, stderr=err, pass_fds=(go_read, back_write))
    finally:
        os.close(go_read)
        os.close(back_write)
    stack.callback(_stop, proc)
    return {"spec": spec, "proc": proc, "go": go_write, "back": back_read, "err": err, "out": out}


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def _turn_done(worker: dict) -> None:
    """Wait for the worker to finish its turn; a worker that died fails the benchmark."""
    if not os.read(worker["back"], 1):
        _fail(worker)


def _fail(worker: dict) -> None:
    worker["proc"].wait()
    worker["err"].seek(0)
    stderr = worker["err"].read().decode(errors="replace")
    spec = worker["spec"]
    raise SystemExit(f"distill/{spec['impl']} at {spec['size']} failed:\n{stderr}")


def merge_rounds(runs: list[dict]) -> dict:
    """One variant measured in several subprocesses (rounds): pool the times, keep the largest
    memory reading and every load reading."""
    times = [t for r in runs for t in r["times_s"]]
    cpu = [t for r in runs for t in r["cpu_times_s"]]
    first = runs[0]
    return {
        "kind": first["kind"], "impl": first["impl"], "size": first["size"], "threads": first["threads"],
        "rounds": len(runs), "times_s": times, "cpu_times_s": cpu,
        "median_s": statistics.median(times), "min_s": min(times), "max_s": max(times),
        "cpu_median_s": statistics.median(cpu),
        "peak_delta_mb": max(r["peak_delta_mb"] for r in runs),
        "peak_delta_mb_per_round": [r["peak_delta_mb"] for r in runs],
        "baseline_rss_mb": [r["baseline_rss_mb"] for r in runs],
        "peak_before_mb": [r["peak_before_mb"] for r in runs],
        "load": [[r["load_before"], r["load_after"]] for r in runs],
        "info": first["info"],
        "host_allocator": first.get("host_allocator"),
        "cpu_matmul": first.get("cpu_matmul"),
        **{key: first[key] for key in ("flops", "phases", "what", "blas_what") if key in first},
        **{key: statistics.median(r[key] for r in runs)
           for key in ("gflops_per_s", "blas_gflops_per_s") if key in first},
    }


def parse_size(text: str) -> tuple[int, int]:
    match = re.fullmatch(r"(\d+)x(\d+)", text.strip())
    if not match or int(match[1]) % 32 or int(match[2]) % 32:
        raise argparse.ArgumentTypeError(f"size {text!r} must be HxW with multiples of 32, e.g. 512x1024")
    return int(match[1]), int(match[2])


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--reference", type=Path, help="local clone of github.com/RuipingL/TransKD")
    p.add_argument("--threads", type=int, default=2, help="torch threads in every variant (default 2)")
    p.add_argument("--sizes", type=parse_size, nargs="+", default=[(512, 1024), (256, 512)],
                   help="distillation input sizes HxW (default 512x1024 256x512)")
    p.add_argument("--batch", type=int, default=2, help="distillation batch size (default 2)")
    p.add_argument("--warmup", type=int, default=1, help="untimed distillation steps (default 1)")
    p.add_argument("--repeats", type=int, default=3,
                   help="timed distillation steps per round (default 3)")
    p.add_argument("--rounds", type=int, default=2,
                   help="run the whole list of variants this many times, interleaved, so that "
                        "load changes hit every variant alike (default 2)")
    p.add_argument("--lockstep", action="store_true",
                   help="run the distillation variants of a size in concurrent processes that take "
                        "turns step by step (alternating order), so that load from other jobs hits "
                        "every variant's steps alike; memory is still read per process")
    p.add_argument("--infer-size", type=parse_size, default=(512, 1024),
                   help="inference input size HxW, batch 1 (default 512x1024)")
    p.add_argument("--infer-warmup", type=int, default=2)
    p.add_argument("--infer-repeats", type=int, default=5, help="timed forwards per round (default 5)")
    p.add_argument("--distill-impls", nargs="+", choices=list(DISTILL_IMPLS), default=["ref", "ours"],
                   help="distillation variants (default: ref ours)")
    p.add_argument("--infer-impls", nargs="+", choices=list(INFER_IMPLS),
                   default=["ref_student", "ref_transkd_eval", "ours"],
                   help="inference variants (default: ref_student ref_transkd_eval ours)")
    p.add_argument("--sanity-size", type=parse_size, default=(256, 512),
                   help="input size of the loss comparison (default 256x512; with 4 rows or fewer "
                        "in stage 4 the two HCL level weightings differ by design)")
    p.add_argument("--skip-sanity", action="store_true", help="skip the loss comparison")
    p.add_argument("--json", type=Path, help="also write all results to this JSON file")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker is None and args.reference is None:
        p.error("--reference PATH (a clone of the authors' repository) is required")
    if args.worker is None and not (args.reference / "train" / "CSF.py").is_file():
        p.error(f"--reference {args.reference} has no train/CSF.py; pass a clone of RuipingL/TransKD")
    if min(args.threads, args.batch, args.repeats, args.infer_repeats, args.rounds) < 1:
        p.error("--threads, --batch, --repeats, --infer-repeats and --rounds must be positive")
    return args


def git_version(path: Path) -> str | None:
    """Commit of the checkout holding ``path`` (``-dirty`` when it has local changes)."""
    proc = subprocess.run(["git", "-C", str(path), "describe", "--always", "--dirty", "--abbrev=40"],
                          capture_output=True, text=True)
    return proc.stdout.strip() if proc.returncode == 0 else None


def fmt_size(size) -> str:
    return f"{size[0]}x{size[1]}"


RATIOS = (  # (label, kind, their variant, our variant)
    ("distill: transkd vs reference as shipped", "distill", "ref", "ours"),
    ("distill: both keeping freed memory", "distill", "ref_reuse", "ours"),
    ("distill: both with the system allocator", "distill", "ref", "ours_system"),
    ("distill: transkd vs reference, teacher no_grad", "distill", "ref_nograd", "ours"),
    ("distill: transkd channels_last vs reference", "distill", "ref", "ours_cl"),
    ("distill: transkd bf16 autocast vs reference", "distill", "ref", "ours_bf16"),
    ("infer: transkd vs reference student", "infer", "ref_student", "ours"),
    ("infer: transkd, system allocator, vs reference student", "infer", "ref_student", "ours_system"),
    ("infer: transkd vs reference TransKD eval path", "infer", "ref_transkd_eval", "ours"),
    ("infer: transkd channels_last vs reference student", "infer", "ref_student", "ours_cl"),
)


def ratios(results: list[dict]) -> dict:
    by = {(r["kind"], r["impl"], tuple(r["size"])): r for r in results}
    table = {}
    for label, kind, base, impl in RATIOS:
        for (k, name, size), mine in by.items():
            theirs = by.get((kind, base, size))
            if k != kind or name != impl or theirs is None:
                continue
            table.setdefault(label, {})[fmt_size(size)] = {
                "speedup": theirs["median_s"] / mine["median_s"],
                "cpu_speedup": theirs["cpu_median_s"] / mine["cpu_median_s"],
                # Fastest run against fastest run: the least contended estimate on a shared machine.
                "best_speedup": theirs["min_s"] / mine["min_s"],
                "memory_ratio": mine["peak_delta_mb"] / theirs["peak_delta_mb"],
            }
    return table


def _print_rows(rows: list[dict], names: dict[str, str], digits: int) -> None:
    print(f"{'size':>9}  {'implementation':<31}{'median s':>9}{'min..max s':>17}{'CPU s':>8}"
          f"{'peak+ MB':>10}  load (before/after, per round)")
    for r in rows:
        load = " ".join(f"{a:.1f}/{b:.1f}" for a, b in r["load"])
        spread = f"{r['min_s']:.{digits}f}..{r['max_s']:.{digits}f}"
        print(f"{fmt_size(r['size']):>9}  {names[r['impl']]:<31}{r['median_s']:9.{digits}f}{spread:>17}"
              f"{r['cpu_median_s']:8.{digits}f}{r['peak_delta_mb']:10.0f}  {load}")


def print_table(report: dict) -> None:
    cfg = report["config"]
    print(f"\nTransKD-Base distillation step (B2 -> B0, batch {cfg['batch']}, {cfg['threads']} threads; "
          f"{cfg['rounds']} rounds x {cfg['repeats']} timed steps after {cfg['warmup']} warm-up"
          f"{'; variants taking turns step by step' if cfg.get('lockstep') else ''})")
    _print_rows([r for r in report["results"] if r["kind"] == "distill"], DISTILL_IMPLS, 2)
    print(f"\nStudent inference (1x3x{fmt_size(cfg['infer_size'])}, eval + inference_mode; "
          f"{cfg['rounds']} rounds x {cfg['infer_repeats']} after {cfg['infer_warmup']} warm-up)")
    _print_rows([r for r in report["results"] if r["kind"] == "infer"], INFER_IMPLS, 3)
    print("\nHost memory: transkd variants keep freed memory for reuse, as the transkd command does "
          "(transkd.host_memory), except the 'system allocator' ones; reference variants run "
          "with the C library's defaults, except 'freed memory kept'.")
    ours = [r for r in report["results"] if r["kind"] == "distill" and not r["impl"].startswith("ref")]
    if ours and ours[0].get("cpu_matmul"):
        print(f"CPU matmul of transkd's linear layers: {ours[0]['cpu_matmul']} (transkd.models.linear); "
              "the reference's go to torch's BLAS.")
    print("\nRatios (speed-up = their time / our time: medians of wall and CPU time, and fastest runs;"
          " memory = our peak+ / their peak+)")
    for label, table in report["ratios"].items():
        for size, v in table.items():
            print(f"  {label:<50}{size:>9}: speed-up {v['speedup']:5.2f}x (CPU {v['cpu_speedup']:5.2f}x, "
                  f"fastest {v['best_speedup']:5.2f}x), memory {v['memory_ratio']:5.2f}x")
    print_efficiency(report)
    sanity = report.get("sanity")
    if sanity:
        print(f"\nLoss sanity at {fmt_size(sanity['size'])}, batch {cfg['batch']} (reference weights copied "
              f"into ours, no dropout): max relative difference {sanity['max_relative_difference']:.1e}")
        for i, step in enumerate(sanity["steps"], 1):
            terms = ", ".join(f"{k} {step['reference'][k]:.5g}/{step['ours'][k]:.5g}"
                              for k in step["reference"])
            print(f"  step {i} (reference/ours): {terms}")


def efficiency(report: dict) -> dict:
    """Achieved GFLOP/s of every distillation variant against the fp32 matmul peak of the same run,
    what the target speed-up over the reference as shipped would need, and transkd's phases."""
    peak_rows = [r for r in report["results"] if r["kind"] == "peak"]
    if not peak_rows:
        return {}
    peak = peak_rows[0]["gflops_per_s"]
    out: dict = {"peak_gflops_per_s": peak, "peak_what": peak_rows[0]["what"], "rows": [], "target": {},
                 "phases": {}}
    if "blas_gflops_per_s" in peak_rows[0]:
        out.update(blas_gflops_per_s=peak_rows[0]["blas_gflops_per_s"], blas_what=peak_rows[0]["blas_what"])
    for r in report["results"]:
        if r["kind"] != "distill" or not r.get("flops"):
            continue
        achieved = r["flops"] / r["median_s"] / 1e9
        out["rows"].append({"impl": r["impl"], "size": r["size"], "gflop": r["flops"] / 1e9,
                            "gflops_per_s": achieved, "of_peak": achieved / peak})
        if r["impl"] == "ours":
            out["phases"][fmt_size(r["size"])] = {
                name: {**v, "gflops_per_s": v["flops"] / v["s"] / 1e9 if v["s"] > 0 else 0.0,
                       "of_peak": v["flops"] / v["s"] / 1e9 / peak if v["s"] > 0 else 0.0}
                for name, v in r["phases"].items()}
    by = {(r["impl"], tuple(r["size"])): r for r in report["results"] if r["kind"] == "distill"}
    for (impl, size), theirs in by.items():
        mine = by.get(("ours", size))
        if impl != "ref" or mine is None or not mine.get("flops"):
            continue
        seconds = theirs["median_s"] / TARGET_SPEEDUP
        needed = mine["flops"] / seconds / 1e9
        out["target"][fmt_size(size)] = {"speedup": TARGET_SPEEDUP, "step_s": seconds,
                                         "gflops_per_s": needed, "of_peak": needed / peak}
    return out


def print_efficiency(report: dict) -> None:
    eff = report.get("efficiency")
    if not eff:
        return
    print(f"\nWork and the machine's ceiling: FLOPs of one step, forward and backward (torch.utils."
          f"flop_counter, 2 per multiply-accumulate, attention included, the flash kernel's backward "
          f"counting its recomputation), over the median time; {eff['peak_what']}: "
          f"{eff['peak_gflops_per_s']:.1f} GFLOP/s (median of the rounds, same threads)")
    if "blas_gflops_per_s" in eff:
        print(f"  ({eff['blas_what']}, the BLAS that the reference's layers use: "
              f"{eff['blas_gflops_per_s']:.1f} GFLOP/s)")
    for row in eff["rows"]:
        print(f"  {fmt_size(row['size']):>9}  {DISTILL_IMPLS[row['impl']]:<31}{row['gflop']:8.1f} GFLOP/step"
              f"{row['gflops_per_s']:8.1f} GFLOP/s {100 * row['of_peak']:5.1f}% of peak")
    for size, t in eff["target"].items():
        print(f"  {t['speedup']:.0f}x the reference as shipped at {size}: a transkd step of "
              f"{t['step_s']:.3f} s = {t['gflops_per_s']:.1f} GFLOP/s = {100 * t['of_peak']:.0f}% of peak")
    for size, phases in eff["phases"].items():
        print(f"  where transkd's step goes at {size} (phases timed apart, medians):")
        for name, v in phases.items():
            print(f"    {name.replace('_', ' '):<18}{1000 * v['s']:8.0f} ms{v['flops'] / 1e9:8.1f} GFLOP"
                  f"{v['gflops_per_s']:8.1f} GFLOP/s {100 * v['of_peak']:5.1f}% of peak")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker is not None:
        print(json.dumps(run_worker(json.loads(args.worker))))
        return 0
    import transkd

    reference = args.reference.resolve()
    common = {"threads": args.threads, "reference": str(reference)}
    specs = []
    for size in args.sizes:
        for impl in args.distill_impls:
            specs.append(dict(common, kind="distill", impl=impl, size=size, batch=args.batch,
                              warmup=args.warmup, repeats=args.repeats))
    for impl in args.infer_impls:
        specs.append(dict(common, kind="infer", impl=impl, size=args.infer_size,
                          warmup=args.infer_warmup, repeats=args.infer_repeats))
    specs.append(dict(common, kind="peak", impl="mm", size=(2048, 2048)))
    sanity = None
    if not args.skip_sanity:
        print(f"running sanity {fmt_size(args.sanity_size)} ...", file=sys.stderr, flush=True)
        sanity = spawn(dict(common, kind="sanity", size=args.sanity_size, batch=args.batch))
    runs: dict[tuple, list[dict]] = {}
    for round_index in range(args.rounds):
        done = set()
        for index, spec in enumerate(specs):
            if index in done:
                continue
            group = [spec]
            if args.lockstep and spec["kind"] == "distill":
                group = [(i, s) for i, s in enumerate(specs)
                         if s["kind"] == "distill" and s["size"] == spec["size"]]
                done.update(i for i, _ in group)
                group = [s for _, s in group]
            names = " + ".join(s["impl"] for s in group)
            print(f"round {round_index + 1}/{args.rounds}: {spec['kind']} {names} "
                  f"{fmt_size(spec['size'])}{' (lockstep)' if len(group) > 1 else ''} ...",
                  file=sys.stderr, flush=True)
            results = spawn_lockstep(group) if len(group) > 1 else [spawn(spec)]
            for s, result in zip(group, results):
                runs.setdefault((s["kind"], s["impl"], tuple(s["size"])), []).append(result)
    results = [merge_rounds(r) for r in runs.values()]
    report = {
        "config": {**{k: v for k, v in vars(args).items() if k not in ("json", "worker")},
                   "reference": str(reference), "sizes": [list(s) for s in args.sizes]},
        "machine": {"torch": torch.__version__, "python": platform.python_version(),
                    "cpu": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
                    "reference_commit": git_version(reference),
                    "transkd_commit": git_version(Path(transkd.__file__).parent)},
        "results": results,
        "ratios": ratios(results),
        "sanity": sanity,
    }
    report["efficiency"] = efficiency(report)
    print_table(report)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
