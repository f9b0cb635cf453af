"""``transkd convert``: bring a checkpoint from elsewhere into a transkd ``.safetensors`` file, or
write a transkd model in another codebase's naming (:func:`transkd.weights.import_checkpoint`)."""

from __future__ import annotations

import argparse

from ..weights.importer import INPUT_NORMS, SOURCES, TARGETS, import_checkpoint
from ._common import say
from ._options import add_num_classes, add_output


def add_parser(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "convert", help="import a checkpoint from elsewhere (authors', NVlabs, mmseg, HF) or export one",
        description="Convert SRC — a TransKD authors' release (student or teacher .pth, with or "
                    "without 'module.' prefixes or a distiller around the student), NVlabs/mmseg "
                    "weights (mit_b*.pth: encoder only), a Hugging Face Segformer folder, or a "
                    "transkd .safetensors — into a transkd .safetensors file with metadata (or, with "
                    "--to, into another naming). Pickles are read with weights_only=True: files "
                    "holding anything but tensors are refused. Without --model/--num-classes the "
                    "architecture is inferred from the tensors (config.json for Hugging Face).")
    parser.add_argument("src", metavar="SRC", help="checkpoint file or Hugging Face model folder")
    add_output(parser, "OUT", "file to write (.safetensors for --to transkd, .pth for nvlabs/mmseg) "
                              "or folder (--to hf); written atomically", required=True)
    parser.add_argument("--model", metavar="NAME", help="architecture, e.g. segformer_b0 (default: inferred)")
    add_num_classes(parser, "output classes (default: the classifier's, as stored in SRC)")
    parser.add_argument("--source", choices=SOURCES, default="auto",
                        help="naming of SRC's keys (default: detected)")
    parser.add_argument("--prefix", metavar="NAME",
                        help="in a distillation checkpoint, the key or key prefix of the network to "
                             "keep (default: the student: student, s_net, ...; e.g. t_net for the teacher)")
    parser.add_argument("--encoder-only", action="store_true",
                        help="keep the encoder alone and write an encoder file (kind: encoder); SRC "
                             "without decode-head weights (ImageNet mit_b*.pth) always gives one")
    classes = parser.add_mutually_exclusive_group()
    classes.add_argument("--class-names", metavar="FILE", help="text file with one class name per line")
    classes.add_argument("--dataset", metavar="NAME",
                         help="record a registered dataset's class names and palette (e.g. cityscapes)")
    parser.add_argument("--input-norm", choices=INPUT_NORMS, default="auto",
                        help="input mean/std the network expects: ImageNet statistics or [0, 1] pixels "
                             "(default: what SRC's origin implies; the TransKD authors use none)")
    parser.add_argument("--to", choices=TARGETS, default="transkd",
                        help="output naming: transkd .safetensors (default), nvlabs or mmseg .pth "
                             "(torch.save of a plain tensor dict), hf folder (config.json + "
                             "model.safetensors for transformers)")
    parser.add_argument("--force", action="store_true", help="replace OUT if it exists")
    parser.set_defaults(run=run)
    return parser


def run(args: argparse.Namespace) -> int:
    result = import_checkpoint(
        args.src, args.output, model=args.model, num_classes=args.num_classes, source=args.source,
        prefix=args.prefix, encoder_only=args.encoder_only, class_names=args.class_names,
        dataset=args.dataset, input_norm=args.input_norm, to=args.to, force=args.force,
        announce=lambda label, text: say(f"{label:<10}{text}"))
    what = " encoder" if result.num_classes is None else f", {result.num_classes} classes"
    say(f"wrote     {result.path} ({TARGETS[result.target]}): {result.architecture}{what}, "
        f"{result.tensors} tensors, {result.parameters:,} parameters ({result.parameters / 1e6:.2f} M)")
    say(f"input     {_norm_phrase(result.mean, result.std)} ({result.input_reason})")
    if result.num_classes is not None:
        say(f"classes   {result.classes}")
    if result.hf_note:
        say(f"note      {result.hf_note}")
    return 0


def _norm_phrase(mean: tuple[float, ...], std: tuple[float, ...]) -> str:
    if tuple(mean) == (0.0, 0.0, 0.0) and tuple(std) == (1.0, 1.0, 1.0):
        return "[0, 1] pixels, no mean/std"
    return (f"mean {', '.join(f'{v:.3f}' for v in mean)}, std {', '.join(f'{v:.3f}' for v in std)} "
            "([0, 1] pixel units)")
