"""``transkd predict``: colour masks and overlays for images, folders or glob patterns."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tqdm import tqdm

from ..deploy import parse_size
from ..deploy.predict import PredictOptions, predict_images
from ._common import say
from ._options import add_batch_size, add_device, add_model, add_no_progress, add_output


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "predict", help="segment images with a saved student: colour masks and overlays",
        description="Segment image files with a saved student (or a run folder: its best "
                    "network). Writes OUTPUT/masks/<name>.png (palette PNG: pixel value = class id), "
                    "OUTPUT/overlays/<name>.png and, with --raw, OUTPUT/raw/<name>.png, all at the "
                    "input's size, plus OUTPUT/classes.json. Resize and inference default to what the "
                    "student's metadata records (else original size, whole image). Unreadable inputs "
                    "are skipped with a warning; the exit code is then 1.")
    add_model(parser)
    parser.add_argument("inputs", metavar="INPUT", nargs="+",
                        help="image files, folders (their images) or quoted glob patterns")
    add_output(parser, "DIR", "folder for the outputs", required=True)
    parser.add_argument("--mode", choices=("whole", "slide"),
                        help="whole image or sliding windows (default: the student's setting, else whole)")
    parser.add_argument("--crop", type=int, nargs=2, metavar=("H", "W"),
                        help="sliding-window size (implies --mode slide)")
    parser.add_argument("--stride", type=int, nargs=2, metavar=("H", "W"),
                        help="sliding-window step (default 2/3 of the crop)")
    parser.add_argument("--resize-short-side", type=int, metavar="N",
                        help="resize so the short side is N before the network (the paper protocol "
                             "uses 512); 0 keeps the original size. Masks are always written at the "
                             "original size. Default: the student's setting, else original size")
    parser.add_argument("--scales", type=float, nargs="+", default=[1.0], metavar="S",
                        help="multi-scale inference: resize factors whose probabilities are averaged")
    parser.add_argument("--flip", action="store_true", help="also average horizontally flipped passes")
    add_batch_size(parser, "images per forward pass (same-size images only; default 1)")
    parser.add_argument("--raw", action="store_true", help="also write grey-level class-id masks to raw/")
    parser.add_argument("--no-overlays", action="store_true", help="do not write overlays/")
    parser.add_argument("--alpha", type=float, default=0.5, help="mask weight in overlays (default 0.5)")
    parser.add_argument("--recursive", action="store_true",
                        help="descend into sub-folders of folder inputs (outputs keep the sub-folders)")
    add_device(parser, "cpu, cuda, cuda:1 ... (default: cuda if available)", default="auto")
    add_no_progress(parser)
    parser.set_defaults(run=run)
    return parser


def run(args: argparse.Namespace) -> int:
    options = PredictOptions(mode=args.mode, crop=parse_size(args.crop, "--crop"),
                             stride=parse_size(args.stride, "--stride"), scales=tuple(args.scales),
                             flip=args.flip, resize_short_side=args.resize_short_side,
                             batch_size=args.batch_size, overlays=not args.no_overlays, raw=args.raw,
                             alpha=args.alpha)

    def warn(path: Path, reason: str) -> None:
        tqdm.write(f"warning: skipping {path}: {reason}", file=sys.stderr)

    result = predict_images(args.model, args.inputs, args.output, options, device=args.device,
                            last=args.last, recursive=args.recursive, on_skip=warn,
                            progress=not args.no_progress, announce=say)
    say(f"input: {result.resize}; inference: {result.inference}; device: {result.device}")
    kinds = ["masks/"] + (["overlays/"] if options.overlays else []) + (["raw/"] if options.raw else [])
    say(f"wrote {len(result.written)} of {result.inputs} image(s) to {args.output} ({', '.join(kinds)}; "
        f"legend in classes.json)")
    if result.skipped:
        names = ", ".join(str(path) for path, _ in result.skipped[:5])
        more = f" and {len(result.skipped) - 5} more" if len(result.skipped) > 5 else ""
        print(f"error: {len(result.skipped)} of {result.inputs} input(s) could not be read and were "
              f"skipped: {names}{more}", file=sys.stderr)
        return 1
    return 0
