"""The CPU matrix-product library of transkd's linear layers: the BLAS (torch.mm) against oneDNN.

``transkd.models.linear`` sends fp32 CPU linear layers to oneDNN or to PyTorch's BLAS
(``TRANSKD_CPU_MATMUL``; ``auto`` takes oneDNN on AMD CPUs). This benchmark shows what that choice
is worth on the machine it runs on, at four levels, each with both libraries interleaved in one
process (oneDNN, BLAS, BLAS, oneDNN, ...) so that drift of a busy machine hits both alike; medians
and fastest runs are compared:

1. a 2048² fp32 matrix product, and every distinct linear layer of a MiT-B2 teacher and a MiT-B0
   student at 256×512, batch 2: forward, input gradient and weight gradient (the weight gradient
   stays with the BLAS in transkd; it is timed on both to show why);
2. MiT-B2's encoder forward without autograd (the frozen teacher of a distillation step);
3. SegFormer-B0 inference at 512×1024, batch 1;
4. one whole TransKD-Base training step (SegFormer-B2 → B0, forward, backward, AdamW) at 256×512.

Run it on an Intel CPU to check whether ``auto``'s choice of the BLAS there is the right one.
Random weights; nothing is downloaded.

    python benchmarks/cpu_matmul.py --threads 2 --json matmul.json
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

BACKENDS = ("onednn", "blas")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=10, help="timed runs per library and level")
    parser.add_argument("--size", default="256x512", help="training input size HxW (batch 2)")
    parser.add_argument("--infer-size", default="512x1024", help="inference input size HxW (batch 1)")
    parser.add_argument("--levels", nargs="+", default=["layers", "teacher", "infer", "step"],
                        choices=["layers", "teacher", "infer", "step"])
    parser.add_argument("--json", default=None, help="write the results to this file")
    return parser.parse_args(argv)


def parse_size(text: str) -> tuple[int, int]:
    height, width = (int(v) for v in text.lower().split("x"))
    return height, width


def interleaved(call: Callable[[], object], repeats: int, warmup: int = 2) -> dict:
    """Median and fastest ms of ``call`` on each library, alternating the order every run."""
    from transkd.models.linear import set_cpu_matmul_backend

    times: dict[str, list[float]] = {name: [] for name in BACKENDS}
    try:
        for i in range(warmup + repeats):
            for name in BACKENDS if i % 2 == 0 else BACKENDS[::-1]:
                set_cpu_matmul_backend(name)
                start = time.perf_counter()
                call()
                if i >= warmup:
                    times[name].append((time.perf_counter() - start) * 1e3)
    finally:
        set_cpu_matmul_backend(None)
    out: dict = {name: {"median_ms": statistics.median(v), "fastest_ms": min(v)}
                 for name, v in times.items()}
    out["speedup_median"] = out["blas"]["median_ms"] / out["onednn"]["median_ms"]
    out["speedup_fastest"] = out["blas"]["fastest_ms"] / out["onednn"]["fastest_ms"]
    return out


def linear_shapes(size: tuple[int, int]) -> list[tuple[str, int, int, int]]:
    """(name, rows, in, out) of every distinct linear layer of MiT-B2 and MiT-B0 at ``size``,
    batch 2, with the token count of each stage (the keys/values of the reduced sequence)."""
    from transkd.models.mit import MIT_CONFIGS

    shapes = {}
    height, width = size
    for name in ("mit_b2", "mit_b0"):
        cfg = MIT_CONFIGS[name]
        for stage, (dim, sr) in enumerate(zip(cfg.embed_dims, cfg.sr_ratios), 1):
            tokens = 2 * (height // 2 ** (stage + 1)) * (width // 2 ** (stage + 1))
            hidden = int(dim * cfg.mlp_ratios[stage - 1])
            for layer, rows, cin, cout in (("q/proj", tokens, dim, dim),
                                           ("kv", tokens // sr ** 2, dim, 2 * dim),
                                           ("fc1", tokens, dim, hidden), ("fc2", tokens, hidden, dim)):
                shapes.setdefault((rows, cin, cout), f"{name} stage {stage} {layer}")
    return [(label, rows, cin, cout) for (rows, cin, cout), label in shapes.items()]


def layer_rows(size: tuple[int, int], repeats: int) -> list[dict]:
    from transkd.models.linear import _onednn_linear, cpu_matmul_backend, linear

    gen = torch.Generator().manual_seed(0)
    rows = []
    for label, m, k, n in [("matmul 2048x2048 @ 2048x2048", 2048, 2048, 2048), *linear_shapes(size)]:
        x = torch.randn(m, k, generator=gen, requires_grad=True)
        weight = torch.randn(n, k, generator=gen, requires_grad=True)
        grad = torch.randn(m, n, generator=gen)
        flops = 2 * m * k * n

        def forward(x=x, weight=weight):
            with torch.no_grad():
                return linear(x, weight)

        def input_grad(x=x, weight=weight, grad=grad):
            return torch.autograd.grad(linear(x, weight.detach()), x, grad)

        def weight_grad(x=x, grad=grad):
            # What oneDNN would do for gradᵀ·x (both operands read transposed) against the BLAS.
            if cpu_matmul_backend() == "onednn":
                return _onednn_linear()(grad.t(), x.detach().t(), None, "none", [], "")
            return grad.t() @ x.detach()

        row = {"layer": label, "rows": m, "in": k, "out": n, "flops": flops}
        for level, call in (("forward", forward), ("input_grad", input_grad),
                            ("weight_grad", weight_grad)):
            row[level] = interleaved(call, repeats)
        rows.append(row)
    return rows


def teacher_row(size: tuple[int, int], repeats: int) -> dict:
    from transkd import create_model

    torch.manual_seed(0)
    encoder = create_model("mit_b2").eval()
    images = torch.randn(2, 3, *size)

    def forward():
        with torch.inference_mode():
            return encoder(images, return_embeddings=True)

    return {"model": "mit_b2 encoder, inference_mode", "input": [2, 3, *size],
            **interleaved(forward, repeats)}


def infer_row(size: tuple[int, int], repeats: int) -> dict:
    from transkd import create_model

    torch.manual_seed(0)
    model = create_model("segformer_b0", num_classes=19).eval()
    images = torch.randn(1, 3, *size)

    def forward():
        with torch.inference_mode():
            return model(images)

    return {"model": "segformer_b0, inference_mode", "input": [1, 3, *size],
            **interleaved(forward, repeats)}


def step_row(size: tuple[int, int], repeats: int) -> dict:
    from conv_weight_grad import training_step  # this folder is on the path of a script

    return {"step": "TransKD-Base, segformer_b2 -> segformer_b0, batch 2, AdamW",
            "input": [2, 3, *size],
            **interleaved(training_step("segformer_b2", "segformer_b0", size), repeats)}


def _ratio(r: dict) -> str:
    return (f"{r['blas']['median_ms']:8.2f} | {r['onednn']['median_ms']:8.2f} | "
            f"{r['speedup_median']:.2f}x, {r['speedup_fastest']:.2f}x")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import transkd
    from transkd.models.linear import _onednn_linear, cpu_vendor, describe_cpu_matmul

    if _onednn_linear() is None:
        print("this PyTorch build has no oneDNN linear kernel: nothing to compare", file=sys.stderr)
        return 1
    transkd.reuse_freed_memory()
    torch.set_num_threads(args.threads)
    size, infer_size = parse_size(args.size), parse_size(args.infer_size)
    report: dict = {"machine": {"cpu": platform.processor() or platform.machine(),
                                "vendor": cpu_vendor(),
                                "cpu_capability": torch.backends.cpu.get_cpu_capability(),
                                "threads": args.threads, "torch": torch.__version__,
                                "auto_choice": describe_cpu_matmul()}}
    print(f"threads {args.threads}, torch {torch.__version__}, {report['machine']['cpu_capability']}, "
          f"vendor {report['machine']['vendor'] or 'unknown'}, auto: {report['machine']['auto_choice']}; "
          f"medians of {args.repeats} interleaved runs")
    print("columns: BLAS ms | oneDNN ms | speed-up of oneDNN (median, fastest)")
    if "layers" in args.levels:
        report["layers"] = layer_rows(size, args.repeats)
        print(f"\nlinear layers at {args.size}, batch 2 (rows x in -> out)")
        for r in report["layers"]:
            print(f"  {r['layer']:30s} {r['rows']:6d} x {r['in']:4d} -> {r['out']:4d}")
            for level in ("forward", "input_grad", "weight_grad"):
                print(f"    {level:12s} {_ratio(r[level])}")
    whole = (("teacher", teacher_row, size, "MiT-B2 encoder forward"),
             ("infer", infer_row, infer_size, "SegFormer-B0 inference"),
             ("step", step_row, size, "TransKD-Base step"))
    for level, build, level_size, label in whole:
        if level in args.levels:
            report[level] = build(level_size, args.repeats)
            print(f"\n{label} {report[level]['input']}: {_ratio(report[level])}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(report, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
