"""Time the plain forward of an ``hf:`` SegFormer against the bare transformers model, side by side.

The wrapper's plain forward calls the model's own forward and returns its logits: no hooks, no
copies. This measures that claim: both run on the same weights and inputs, interleaved (bare,
wrapped, bare, wrapped, ...) so that drift of a busy machine hits both alike, and the medians are
compared. The forward with features (hooks on, stage maps and embeddings kept) is timed too.
The network is built from a configuration with random weights (SegFormer-B0 sizes by default):
nothing is downloaded.

    python benchmarks/wrapper_overhead.py --size 512 512 --repeats 20 --threads 2
    python benchmarks/wrapper_overhead.py --check 0.05   # exit 1 above 5 % overhead
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time

import torch

SIZES = {"b0": ([32, 64, 160, 256], [2, 2, 2, 2], [1, 2, 5, 8], 256),
         "b2": ([64, 128, 320, 512], [3, 4, 6, 3], [1, 2, 5, 8], 768)}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", choices=sorted(SIZES), default="b0")
    parser.add_argument("--size", type=int, nargs=2, default=(512, 512), metavar=("H", "W"))
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--check", type=float, default=None,
                        help="exit 1 if the wrapper's plain forward is slower by more than this fraction")
    parser.add_argument("--json", action="store_true")
    return parser.parse_args(argv)


def build(variant: str):
    """(bare transformers model, transkd wrapper around the same saved weights)."""
    from transformers import SegformerConfig, SegformerForSemanticSegmentation

    from transkd import create_model

    widths, depths, heads, decoder = SIZES[variant]
    config = SegformerConfig(hidden_sizes=widths, depths=depths, num_attention_heads=heads,
                             decoder_hidden_size=decoder, num_labels=19)
    torch.manual_seed(0)
    bare = SegformerForSemanticSegmentation(config).eval()
    with tempfile.TemporaryDirectory() as folder:
        bare.save_pretrained(folder)
        wrapped = create_model(f"hf:{folder}").eval()
    return bare, wrapped


def timed(call) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    bare, wrapped = build(args.variant)
    x = torch.rand(args.batch, 3, *args.size, generator=torch.Generator().manual_seed(0))
    runs = {
        "bare": lambda: bare(pixel_values=x).logits,
        "wrapped": lambda: wrapped(x),
        "wrapped_features": lambda: wrapped(x, return_features=True),
    }
    times: dict[str, list[float]] = {name: [] for name in runs}
    with torch.inference_mode():
        assert torch.equal(runs["bare"](), runs["wrapped"]())  # same computation, same numbers
        for _ in range(args.warmup):
            for run in runs.values():
                run()
        names = list(runs)
        for repeat in range(args.repeats):
            for name in names[repeat % len(names):] + names[:repeat % len(names)]:  # rotate the order
                times[name].append(timed(runs[name]))
    median = {name: statistics.median(values) for name, values in times.items()}
    overhead = median["wrapped"] / median["bare"] - 1
    record = {"variant": f"segformer_{args.variant}", "input": [args.batch, 3, *args.size],
              "threads": torch.get_num_threads(), "repeats": args.repeats,
              "median_ms": {k: round(1000 * v, 2) for k, v in median.items()},
              "plain_overhead": round(overhead, 4),
              "features_overhead": round(median["wrapped_features"] / median["bare"] - 1, 4)}
    if args.json:
        print(json.dumps(record))
    else:
        ms = record["median_ms"]
        print(f"SegFormer-{args.variant.upper()} {args.batch}x3x{args.size[0]}x{args.size[1]}, "
              f"{record['threads']} thread(s), median of {args.repeats}:")
        print(f"  bare transformers model   {ms['bare']:9.2f} ms")
        print(f"  hf: wrapper, plain        {ms['wrapped']:9.2f} ms ({100 * overhead:+.1f} %)")
        print(f"  hf: wrapper, features     {ms['wrapped_features']:9.2f} ms "
              f"({100 * record['features_overhead']:+.1f} %)")
    if args.check is not None and overhead > args.check:
        print(f"overhead {100 * overhead:.1f} % is above {100 * args.check:.1f} %", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
