"""Channels-last convolutions: oneDNN's own weight gradient against ``transkd.models.conv``'s.

Three levels, each timed with the fast weight gradient on and off (``transkd.models.conv.
FAST_WEIGHT_GRAD``), interleaved in one process (on, off, off, on, ...) so that drift of a busy
machine hits both alike; medians and fastest runs are compared:

1. the weight gradient alone (``aten.convolution_backward``), for the convolutions of the SegFormer
   head, CSF and the Semantic FPN head at 256×512, batch 2: channels-last, and NCHW with the two
   copies the fast path makes;
2. CSF (TransKD's feature adapter, MiT-B0 → MiT-B2 widths) forward + backward;
3. one whole TransKD-Base training step (forward, backward, AdamW) for SegFormer-B2 → B0 and
   PVTv2-B2 → B0 with Semantic FPN heads.

Random weights; nothing is downloaded.

    python benchmarks/conv_weight_grad.py --threads 2 --json conv.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable

import torch

CL = torch.channels_last
#: (name, in, out, kernel, map height, map width) at 256×512 input, batch 2.
GRAD_SHAPES = [
    ("CSF stage 1, 3x3", 64, 64, 3, 64, 128),
    ("CSF stage 2, 3x3", 64, 128, 3, 32, 64),
    ("CSF stage 3, 3x3", 64, 320, 3, 16, 32),
    ("SegFormer head stage 1, 1x1", 32, 256, 1, 64, 128),
    ("SegFormer classifier, 1x1", 256, 20, 1, 64, 128),
    ("FPN output conv, 3x3", 256, 256, 3, 64, 128),
    ("FPN tower conv, 3x3", 256, 128, 3, 64, 128),
]


#: (teacher, student) of the whole-step level.
STEP_PAIRS = [("segformer_b2", "segformer_b0"), ("pvtv2_b2_fpn", "pvtv2_b0_fpn")]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=10, help="timed runs per variant and level")
    parser.add_argument("--sizes", nargs="+", default=["256x512", "512x1024"],
                        help="input sizes for the CSF level (HxW)")
    parser.add_argument("--step-size", default="256x512", help="input size of the training steps")
    parser.add_argument("--json", default=None, help="write the results to this file")
    return parser.parse_args(argv)


def parse_size(text: str) -> tuple[int, int]:
    height, width = (int(v) for v in text.lower().split("x"))
    return height, width


def median_ms(call: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def interleaved(call: Callable[[], object], repeats: int, warmup: int = 2) -> dict:
    """Median and fastest ms of ``call`` with the fast weight gradient on and off."""
    from transkd.models import conv

    times: dict[str, list[float]] = {"fast": [], "plain": []}
    order = ("fast", "plain")
    for i in range(warmup + repeats):
        for name in order if i % 2 == 0 else order[::-1]:
            conv.FAST_WEIGHT_GRAD = name == "fast"
            start = time.perf_counter()
            call()
            if i >= warmup:
                times[name].append((time.perf_counter() - start) * 1e3)
    conv.FAST_WEIGHT_GRAD = True
    out = {name: {"median_ms": statistics.median(v), "fastest_ms": min(v)} for name, v in times.items()}
    out["speedup_median"] = out["plain"]["median_ms"] / out["fast"]["median_ms"]
    out["speedup_fastest"] = out["plain"]["fastest_ms"] / out["fast"]["fastest_ms"]
    return out


def weight_grad_row(name: str, cin: int, cout: int, k: int, height: int, width: int,
                    repeats: int) -> dict:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, cin, height, width, generator=gen).contiguous(memory_format=CL)
    grad = torch.randn(2, cout, height, width, generator=gen).contiguous(memory_format=CL)
    weight = torch.randn(cout, cin, k, k, generator=gen)
    pad = k // 2

    def backward(g: torch.Tensor, inp: torch.Tensor):
        return torch.ops.aten.convolution_backward(
            g, inp, weight, None, [1, 1], [pad, pad], [1, 1], False, [0, 0], 1,
            [False, True, False])

    def nchw():
        return backward(grad.contiguous(), x.contiguous())

    backward(grad, x)
    nchw()
    row = {"conv": name, "in": cin, "out": cout, "kernel": k, "map": [height, width],
           "channels_last_ms": median_ms(lambda: backward(grad, x), repeats),
           "nchw_with_copies_ms": median_ms(nchw, repeats)}
    if k == 1:
        rows = grad.permute(0, 2, 3, 1).reshape(-1, cout)
        cols = x.permute(0, 2, 3, 1).reshape(-1, cin)
        row["matrix_product_ms"] = median_ms(lambda: rows.t() @ cols, repeats)
    return row


def csf_row(height: int, width: int, repeats: int) -> dict:
    from transkd.distill.transkd import CrossSelectiveFusion

    student, teacher = (32, 64, 160, 256), (64, 128, 320, 512)
    torch.manual_seed(0)
    csf = CrossSelectiveFusion(student, teacher).train()
    maps = [torch.randn(2, c, height // s, width // s).contiguous(memory_format=CL)
            .requires_grad_() for c, s in zip(student, (4, 8, 16, 32))]
    grads = [torch.randn(2, c, height // s, width // s).contiguous(memory_format=CL)
             for c, s in zip(teacher, (4, 8, 16, 32))]
    return {"size": [height, width],
            **interleaved(lambda: torch.autograd.backward(csf(maps), grads), repeats)}


def training_step(teacher_name: str, student_name: str, size: tuple[int, int]) -> Callable[[], None]:
    """One TransKD-Base training step (forward, backward, AdamW) on random weights and images,
    batch 2 (also used by ``cpu_matmul.py``)."""
    import transkd
    from transkd.engine.optim import adamw

    gen = torch.Generator().manual_seed(1)
    images = torch.rand(2, 3, *size, generator=gen)
    labels = torch.randint(0, 19, (2, *size), generator=gen)
    torch.manual_seed(0)
    teacher = transkd.create_model(teacher_name, num_classes=19)
    student = transkd.create_model(student_name, num_classes=19)
    distiller = transkd.create_distiller("transkd_base", teacher, student).train()
    optimizer = adamw([{"params": list(distiller.parameters())}], lr=6e-5, betas=(0.9, 0.999),
                      eps=1e-8, weight_decay=0.01)

    def step():
        terms = distiller(images, labels)
        optimizer.zero_grad(set_to_none=True)
        terms["loss"].backward()
        optimizer.step()

    return step


def step_row(teacher_name: str, student_name: str, size: tuple[int, int], repeats: int) -> dict:
    return {"teacher": teacher_name, "student": student_name, "size": list(size),
            **interleaved(training_step(teacher_name, student_name, size), repeats)}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import transkd

    transkd.reuse_freed_memory()
    torch.set_num_threads(args.threads)
    report = {"machine": {"cpu": platform.processor() or platform.machine(),
                          "cpu_capability": torch.backends.cpu.get_cpu_capability(),
                          "threads": args.threads, "torch": torch.__version__}}
    print(f"threads {args.threads}, torch {torch.__version__}, "
          f"{report['machine']['cpu_capability']}; medians of {args.repeats} interleaved runs")
    report["weight_grad"] = [weight_grad_row(*shape, args.repeats) for shape in GRAD_SHAPES]
    print("\nweight gradient alone, batch 2 (ms): channels-last | NCHW incl. copies | "
          "1x1 as a matrix product")
    for r in report["weight_grad"]:
        extra = f" | {r['matrix_product_ms']:7.1f}" if "matrix_product_ms" in r else ""
        print(f"  {r['conv']:30s} {r['channels_last_ms']:7.1f} | {r['nchw_with_copies_ms']:7.1f}{extra}")
    report["csf"] = [csf_row(*parse_size(s), args.repeats) for s in args.sizes]
    print("\nCSF forward + backward (ms): plain | fast weight gradient | speed-up (median, fastest)")
    for r in report["csf"]:
        print(f"  {r['size'][0]}x{r['size'][1]:<5d} {r['plain']['median_ms']:7.1f} | "
              f"{r['fast']['median_ms']:7.1f} | {r['speedup_median']:.2f}x, {r['speedup_fastest']:.2f}x")
    step_size = parse_size(args.step_size)
    report["step"] = [step_row(t, s, step_size, args.repeats) for t, s in STEP_PAIRS]
    print("\nTransKD-Base training step, batch 2 (ms): plain | fast weight gradient | speed-up")
    for r in report["step"]:
        print(f"  {r['teacher']} -> {r['student']} {r['size'][0]}x{r['size'][1]}: "
              f"{r['plain']['median_ms']:7.1f} | {r['fast']['median_ms']:7.1f} | "
              f"{r['speedup_median']:.2f}x, {r['speedup_fastest']:.2f}x")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(report, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
