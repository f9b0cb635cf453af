"""Images/s of one data-loader worker for the paper and standard pipelines at Cityscapes frame
size, and how many workers a training step time needs.

It writes its own Cityscapes-layout files (2048x1024 PNG frames with smooth, photo-like content,
so that they compress and decode like real frames, and train-id label PNGs), then measures:

* **decode**: PNG → uint8 array with each decoder that is importable (PIL; ``torchvision.io``);
* **steps**: the milliseconds of each step of a pipeline, in this process;
* **worker**: images/s through a ``DataLoader`` with one worker process (decode, transforms,
  collation into shared memory, transfer), with normalisation in the worker (``float``, as
  before ``train.normalize_on_device``) or left to the device (``uint8``).

The paper pipeline resizes to 512x1024 (HxW) out; the standard one rescales 0.5-2.0 around
2048x1024 and crops 1024x1024. Workers needed = ceil(images per step / step time / worker rate).

    OMP_NUM_THREADS=1 python benchmarks/data_pipeline.py --images 8 --batches 3 \\
        --step-time 0.25 --batch-size 8 --json pipeline.json
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from transkd.data import build_dataset  # noqa: E402
from transkd.data.protocols import ProtocolOptions, TransformedDataset, build_transform  # noqa: E402
from transkd.host_memory import reuse_freed_memory  # noqa: E402

PIPELINES = {
    "paper 1024x512": ProtocolOptions(name="paper", image_size=(512, 1024)),
    "standard 1024x1024": ProtocolOptions(name="standard", scale=(2048, 1024), crop_size=(1024, 1024)),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=8, help="synthetic frames to write")
    parser.add_argument("--size", type=int, nargs=2, default=(1024, 2048), metavar=("H", "W"))
    parser.add_argument("--batches", type=int, default=3, help="timed batches per worker measurement")
    parser.add_argument("--batch-size", type=int, default=8, help="images per training step")
    parser.add_argument("--step-time", type=float, default=0.25, help="seconds per training step "
                        "to feed (the workers estimate)")
    parser.add_argument("--root", help="write the frames here (default: a temporary folder)")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    args = parser.parse_args(argv)
    if min(args.images, args.batches, args.batch_size) < 1 or args.step_time <= 0 or min(args.size) < 64:
        parser.error("--images, --batches, --batch-size must be >= 1, --step-time > 0, --size >= 64")
    return args


# ---- synthetic Cityscapes files ------------------------------------------------------------------

def write_frames(root: Path, count: int, size: tuple[int, int]) -> None:
    """Smooth colour fields with sensor-like noise, and blocky 19-class label maps."""
    rng = np.random.default_rng(0)
    h, w = size
    for split in ("train",):
        images, labels = root / "leftImg8bit" / split / "city", root / "gtFine" / split / "city"
        images.mkdir(parents=True, exist_ok=True)
        labels.mkdir(parents=True, exist_ok=True)
        for i in range(count):
            coarse = rng.integers(0, 256, (h // 64, w // 64, 3), dtype=np.uint8)
            smooth = np.asarray(Image.fromarray(coarse).resize((w, h), Image.BICUBIC), dtype=np.int16)
            noisy = np.clip(smooth + rng.integers(-3, 4, (h, w, 3)), 0, 255).astype(np.uint8)
            stem = f"city_{i:06d}_000019"
            Image.fromarray(noisy).save(images / f"{stem}_leftImg8bit.png")
            blocks = rng.integers(0, 19, (h // 32, w // 32), dtype=np.uint8)
            label = np.asarray(Image.fromarray(blocks).resize((w, h), Image.NEAREST))
            Image.fromarray(label).save(labels / f"{stem}_gtFine_labelTrainIds.png")


# ---- measurements -------------------------------------------------------------------------------

def decoders() -> dict[str, object]:
    """PNG decoders that can be imported here, by name; an unavailable one maps to its reason."""
    found: dict[str, object] = {"PIL": lambda path: np.array(Image.open(path).convert("RGB"))}
    try:
        from torchvision.io import ImageReadMode, decode_png, read_file

        found["torchvision.io"] = lambda path: decode_png(read_file(str(path)), ImageReadMode.RGB)
    except ImportError as exc:  # not a dependency: reported, not measured
        found["torchvision.io"] = f"not importable ({exc})"
    return found


def time_decode(paths: list[Path]) -> dict[str, object]:
    out: dict[str, object] = {}
    for name, decode in decoders().items():
        if isinstance(decode, str):
            out[name] = decode
            continue
        decode(paths[0])
        start = time.perf_counter()
        for path in paths:
            decode(path)
        out[name] = len(paths) / (time.perf_counter() - start)
    return out


def time_steps(dataset, transform, count: int) -> dict[str, float]:
    """Median milliseconds of reading a sample and of each step of ``transform``."""
    times: dict[str, list[float]] = {}
    for index in range(count):
        start = time.perf_counter()
        sample = dataset[index]
        times.setdefault("read image + label", []).append(time.perf_counter() - start)
        image, label, rng = sample.image, sample.label, np.random.default_rng([0, 0, index])
        for step in transform.transforms:
            start = time.perf_counter()
            image, label = step(image, label, rng)
            times.setdefault(type(step).__name__, []).append(time.perf_counter() - start)
    return {name: 1000 * statistics.median(values) for name, values in times.items()}


def time_worker(dataset: TransformedDataset, batch_size: int, batches: int) -> tuple[float, int]:
    """Images/s of one worker process (after its first batch), and bytes of one image tensor."""
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=1, shuffle=False,
                        sampler=[i % len(dataset) for i in range((batches + 1) * batch_size)],
                        prefetch_factor=2)
    iterator = iter(loader)
    first = next(iterator)
    start = time.perf_counter()
    for _ in range(batches):
        next(iterator)
    rate = batches * batch_size / (time.perf_counter() - start)
    return rate, first["image"][0].numel() * first["image"].element_size()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(1)
    reuse_freed_memory()  # as the transkd command runs (its workers inherit the setting)
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(args.root or scratch)
        write_frames(root, args.images, tuple(args.size))
        raw = build_dataset("cityscapes", root, split="train")
        paths = sorted((root / "leftImg8bit" / "train" / "city").glob("*.png"))
        results: dict[str, object] = {"frame": list(args.size), "decode_images_per_s": time_decode(paths),
                                      "pipelines": {}}
        for name, opts in PIPELINES.items():
            for variant in ("float", "uint8"):
                transform = build_transform(opts, train=True, num_classes=19,
                                            normalize_on_device=variant == "uint8")
                steps = time_steps(raw, transform, min(args.images, 4))
                rate, nbytes = time_worker(TransformedDataset(raw, transform), args.batch_size, args.batches)
                needed = math.ceil(args.batch_size / args.step_time / rate)
                results["pipelines"][f"{name} {variant}"] = {
                    "step_ms": steps, "worker_images_per_s": rate, "bytes_per_image": nbytes,
                    "workers_needed": needed}
    decoded = results["decode_images_per_s"].items()
    print(f"frame {args.size[1]}x{args.size[0]}; decode images/s: " + ", ".join(
        f"{k} {v:.1f}" if isinstance(v, float) else f"{k} {v}" for k, v in decoded))
    print(f"\nworkers for {args.batch_size} images per {args.step_time:g} s step "
          f"({args.batch_size / args.step_time:.1f} images/s)")
    print(f"{'pipeline':<28} {'worker img/s':>12} {'MB/img':>7} {'workers':>8}  slowest steps (ms)")
    for name, row in results["pipelines"].items():
        slow = sorted(row["step_ms"].items(), key=lambda kv: -kv[1])[:3]
        print(f"{name:<28} {row['worker_images_per_s']:12.2f} {row['bytes_per_image'] / 2**20:7.1f} "
              f"{row['workers_needed']:8d}  " + ", ".join(f"{k} {v:.0f}" for k, v in slow))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
