"""``transkd convert``: bring a checkpoint from elsewhere into a transkd ``.safetensors`` file, or
write a transkd model in another codebase's naming.

Output files carry the same metadata as a trained student (``architecture``, ``num_classes``,
``mean``, ``std``, optional ``class_names``/``dataset``/``palette``/``void_as_extra_class``) plus
``kind`` (``"segmentor"`` or ``"encoder"``), ``source_format`` and ``converted_from``. An encoder
file (``kind: "encoder"``, ``architecture`` an encoder name such as ``mit_b0``, no
``num_classes``) holds the encoder's own keys (``stages.0.patch_embed.proj.weight``) and is what
``model.init`` loads into a segmentor's encoder.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import CheckpointError, ConfigError

#: ``--to`` choices and how the summary names what they write.
TARGETS = {"transkd": "transkd safetensors", "nvlabs": "NVlabs naming, torch.save",
           "mmseg": "mmseg naming, torch.save", "hf": "Hugging Face folder"}
_HF_EPS_NOTE = ("Hugging Face Segformer runs its block LayerNorms with eps 1e-5 where transkd and "
                "NVlabs use 1e-6, so its logits differ slightly from transkd's on the same weights")


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
    parser.add_argument("--output", "-o", required=True, metavar="OUT",
                        help="file to write (.safetensors for --to transkd, .pth for nvlabs/mmseg) or "
                             "folder (--to hf); written atomically")
    parser.add_argument("--model", metavar="NAME", help="architecture, e.g. segformer_b0 (default: inferred)")
    parser.add_argument("--num-classes", type=int, metavar="K",
                        help="output classes (default: the classifier's, as stored in SRC)")
    parser.add_argument("--source", choices=("auto", "nvlabs", "hf", "mmseg", "transkd"), default="auto",
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
    parser.add_argument("--input-norm", choices=("auto", "imagenet", "none"), default="auto",
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
    from ..models import get_entry
    from ..weights.infer import read_source

    out = Path(args.output)
    check_output(out, args.to, args.force)
    if args.num_classes is not None and args.num_classes < 1:
        raise ConfigError(f"--num-classes must be at least 1, got {args.num_classes}")
    if args.model is not None:
        get_entry(args.model)  # an unknown name fails before SRC is read, listing the known ones
    source = read_source(args.src, args.source, args.prefix)
    print(f"source    {describe_source(source)}")
    architecture, structure = choose_architecture(args, source)
    model, notes = load_into_model(source, architecture, resolve_classes(args, source, architecture,
                                                                          structure))
    for note in notes:
        print(f"note      {note}")
    mean, std, why = resolve_input_norm(args.input_norm, source)
    model.input_mean, model.input_std = mean, std
    classes, classes_line = class_metadata(args, source, model)
    written = write_output(model, architecture, source, out, args.to, classes)
    params = sum(p.numel() for p in model.parameters())
    print(f"wrote     {out} ({TARGETS[args.to]}): {architecture}{_classes_phrase(model)}, {written} tensors, "
          f"{params:,} parameters ({params / 1e6:.2f} M)")
    print(f"input     {_norm_phrase(mean, std)} ({why})")
    if getattr(model, "num_classes", None) is not None:
        print(f"classes   {classes_line}")
    if args.to == "hf" or source.naming == "hf":
        print(f"note      {_HF_EPS_NOTE}")
    return 0


# ----------------------------------------------------------------------------- checks and choices


def check_output(out: Path, target: str, force: bool) -> None:
    """Refuse an output name that does not fit ``--to``, or an existing one without ``--force``."""
    if target == "transkd" and out.suffix != ".safetensors":
        raise ConfigError(f"--output {out} must end in .safetensors (or choose another naming with --to)")
    if target in ("nvlabs", "mmseg") and out.suffix == ".safetensors":
        raise ConfigError(f"--to {target} writes a torch.save file; name --output with .pth, not "
                          ".safetensors")
    if target == "hf" and out.suffix in (".safetensors", ".pth", ".pt", ".bin"):
        raise ConfigError(f"--to hf writes a folder (config.json + model.safetensors); name --output "
                          f"as a folder, not {out.name}")
    if target == "hf" and out.is_dir() and any(out.iterdir()) and not (out / "config.json").is_file():
        raise ConfigError(f"--output {out} is a folder that is not a model folder (no config.json); "
                          "refusing to replace it")
    if target != "hf" and out.is_dir():
        raise ConfigError(f"--output {out} is a folder; name a file")
    if out.exists() and not force:
        raise ConfigError(f"--output {out} already exists; pass --force to replace it")


def describe_source(source) -> str:
    """``x.pth: nvlabs naming (the TransKD authors' layout), student under 'student.'; ...``."""
    parts = [f"{source.path}: {source.naming} naming"]
    if source.authors_layout:
        parts[0] += " (the TransKD authors' layout)"
    if source.hf_config is not None:
        parts[0] += " (Hugging Face folder)"
    if source.student is not None:
        where = "prefix" if source.student.endswith(".") else "key"
        parts.append(f"kept the network under {where} {source.student!r}")
        if source.left_out:
            parts.append(f"left out {', '.join(source.left_out)}")
    return "; ".join(parts)


def choose_architecture(args: argparse.Namespace, source):
    """(model name, inferred structure or None): --model, SRC's metadata, else inference."""
    from ..weights.infer import encoder_of, infer_structure, match_architecture

    named = args.model or source.metadata.get("architecture")
    if named:
        return (encoder_of(named) if args.encoder_only else named), None
    structure, origin = infer_structure(source)
    architecture = match_architecture(structure, encoder_only=args.encoder_only)
    print(f"inferred  {architecture} from {origin}: {structure.describe()}")
    return architecture, structure


def resolve_classes(args: argparse.Namespace, source, architecture: str, structure) -> int | None:
    """Output classes: --num-classes, SRC's metadata or classifier shape; None for an encoder."""
    from ..models import get_entry
    from ..weights.infer import infer_structure

    if get_entry(architecture).kind == "encoder":
        if args.num_classes is not None:
            raise ConfigError(f"--num-classes: {architecture} is an encoder and has no classes")
        return None
    stored = source.metadata.get("num_classes")
    if stored is None:
        if structure is None:
            try:
                structure, _ = infer_structure(source)
            except CheckpointError:
                structure = None
        stored = structure.num_classes if structure is not None else None
    if args.num_classes is not None:
        if stored is not None and int(stored) != args.num_classes:
            raise CheckpointError(f"--num-classes {args.num_classes} does not match {source.path}, "
                                  f"whose classifier predicts {stored} classes")
        return args.num_classes
    if stored is None:
        raise ConfigError(f"cannot tell how many classes {source.path} predicts; pass --num-classes")
    return int(stored)


def load_into_model(source, architecture: str, num_classes: int | None):
    """The transkd model with SRC's weights, strictly; and the conversion's notes."""
    from ..models import create_model
    from ..weights.convert import convert_state_dict
    from ..weights.infer import encoder_of
    from ..weights.io import load_state_strict

    model = create_model(architecture) if num_classes is None else \
        create_model(architecture, num_classes=num_classes)
    state = convert_state_dict(source.state, model, source.naming, name=str(source.path))
    if state.encoder_only:
        raise CheckpointError(f"{source.path} holds no decode-head weights for {architecture}; pass "
                              f"--encoder-only (or --model {encoder_of(architecture)}) to write an "
                              "encoder file")
    load_state_strict(model, dict(state), source=str(source.path))
    return model.eval(), list(state.notes)


def resolve_input_norm(choice: str, source) -> tuple[tuple[float, ...], tuple[float, ...], str]:
    from ..models import IMAGENET_MEAN, IMAGENET_STD
    from ..weights.infer import input_normalization

    if choice == "imagenet":
        return IMAGENET_MEAN, IMAGENET_STD, "--input-norm imagenet"
    if choice == "none":
        return (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), "--input-norm none"
    mean, std, why = input_normalization(source)
    return mean, std, f"{why}; change with --input-norm"


def class_metadata(args: argparse.Namespace, source, model) -> tuple[dict[str, Any], str]:
    """Metadata naming the classes, and a line saying what was recorded."""
    from ..weights.infer import hf_class_names

    num_outputs = getattr(model, "num_classes", None)
    if num_outputs is None:
        if args.dataset or args.class_names:
            raise ConfigError("--dataset/--class-names: an encoder file has no classes to name")
        return {}, ""
    meta: dict[str, Any] = {}
    if args.dataset:
        from ..data import dataset_class

        dataset = dataset_class(args.dataset)
        names = list(dataset.class_names)
        if not names:
            raise ConfigError(f"--dataset {args.dataset} reads its classes from its folder; pass "
                              "--class-names FILE instead")
        meta = {"dataset": args.dataset, "class_names": names}
        if len(dataset.palette) >= len(names):
            meta["palette"] = [list(c) for c in dataset.palette[:len(names)]]
        origin = f"dataset {args.dataset}"
    elif args.class_names:
        meta, origin = {"class_names": read_class_names(args.class_names)}, args.class_names
    elif isinstance(source.metadata.get("class_names"), list):
        keep = ("dataset", "class_names", "palette", "void_as_extra_class")
        meta = {k: source.metadata[k] for k in keep if k in source.metadata}
        origin = f"{source.path.name} metadata"
    elif source.hf_config is not None and hf_class_names(source.hf_config):
        meta, origin = {"class_names": hf_class_names(source.hf_config)}, "config.json id2label"
    else:
        return {}, "no names recorded (add --dataset NAME or --class-names FILE)"
    names = meta["class_names"]
    if len(names) == num_outputs:
        meta["void_as_extra_class"] = False
        return meta, f"{len(names)} names from {origin}"
    if len(names) == num_outputs - 1:
        meta["void_as_extra_class"] = True
        return meta, f"{len(names)} names from {origin} + void as output {num_outputs - 1}"
    raise ConfigError(f"{origin} names {len(names)} classes but the model predicts {num_outputs}")


def read_class_names(path: str) -> list[str]:
    """One class name per line; blank lines are skipped."""
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"--class-names {file} does not exist")
    names = [line.strip() for line in file.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not names:
        raise ConfigError(f"--class-names {file} holds no names (expected one per line)")
    return names


# ----------------------------------------------------------------------------- writing


def write_output(model, architecture: str, source, out: Path, target: str,
                 classes: dict[str, Any]) -> int:
    """Write ``model`` to ``out`` in ``target`` naming; return how many tensors were written."""
    import torch

    from ..models.heads import SegFormerHead
    from ..weights.convert import export_state_dict
    from ..weights.io import atomic_write, model_metadata, save_state_dict

    is_encoder = getattr(model, "num_classes", None) is None
    if target == "transkd":
        provenance = {"kind": "encoder" if is_encoder else "segmentor",
                      "source_format": source.naming, "converted_from": source.path.name}
        metadata = model_metadata(model, **provenance, **classes)
        if is_encoder:
            metadata["architecture"] = architecture
            metadata.pop("num_classes")
        state = model.state_dict()
        save_state_dict(state, out, metadata)
        return len(state)
    if target == "hf":
        return write_hf_folder(model, out, classes)
    if target == "mmseg" and not is_encoder and isinstance(model.decode_head, SegFormerHead):
        raise ConfigError("--to mmseg: mmseg's SegformerHead is not the NVlabs All-MLP head, so only "
                          "the encoder maps; add --encoder-only, or use --to nvlabs")
    state = export_state_dict(model, target)
    atomic_write(out, lambda tmp: torch.save(state, tmp))
    return len(state)


def write_hf_folder(model, out: Path, classes: dict[str, Any]) -> int:
    """``config.json``, ``preprocessor_config.json`` and ``model.safetensors`` that
    ``SegformerForSemanticSegmentation`` (``SegformerModel`` for an encoder) loads.

    Keys use the transformers 4.x layout, which transformers 5.x renames on load.
    """
    from safetensors.torch import save_file

    from ..models.heads import SegFormerHead
    from ..weights.convert import export_state_dict

    encoder = model if getattr(model, "num_classes", None) is None else model.encoder
    if encoder is not model and not isinstance(model.decode_head, SegFormerHead):
        raise ConfigError(f"--to hf: Hugging Face Segformer has no decode head like "
                          f"{model.model_name}'s; add --encoder-only to export its encoder as a "
                          "SegformerModel")
    state = {k: v.contiguous() for k, v in export_state_dict(model, "hf", hf_layout="legacy").items()}
    config = hf_config(model, classes)
    preprocessor = hf_preprocessor(model)
    write_folder_atomically(out, {
        "config.json": lambda p: p.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8"),
        "preprocessor_config.json":
            lambda p: p.write_text(json.dumps(preprocessor, indent=2) + "\n", encoding="utf-8"),
        "model.safetensors": lambda p: save_file(state, str(p), metadata={"format": "pt"}),
    })
    return len(state)


def hf_config(model, classes: dict[str, Any]) -> dict[str, Any]:
    """A Segformer ``config.json`` describing ``model`` (fields as SegformerConfig names them)."""
    encoder = model if getattr(model, "num_classes", None) is None else model.encoder
    cfg = encoder.config
    config: dict[str, Any] = {
        "architectures": ["SegformerModel" if encoder is model else "SegformerForSemanticSegmentation"],
        "model_type": "segformer", "num_channels": cfg.in_chans, "num_encoder_blocks": 4,
        "depths": list(cfg.depths), "sr_ratios": list(cfg.sr_ratios),
        "hidden_sizes": list(cfg.embed_dims), "patch_sizes": [7, 3, 3, 3], "strides": [4, 2, 2, 2],
        "num_attention_heads": list(cfg.num_heads),
        "mlp_ratios": [int(r) if float(r).is_integer() else r for r in cfg.mlp_ratios],
        "hidden_act": "gelu", "hidden_dropout_prob": cfg.drop_rate,
        "attention_probs_dropout_prob": cfg.attn_drop_rate, "drop_path_rate": cfg.drop_path_rate,
        "initializer_range": 0.02, "layer_norm_eps": cfg.block_eps, "reshape_last_stage": True,
    }
    if encoder is not model:
        names = list(classes.get("class_names") or [])
        labels = names + ["void"] if classes.get("void_as_extra_class") else names
        if len(labels) != model.num_classes:
            labels = [f"LABEL_{i}" for i in range(model.num_classes)]
        config.update({
            "decoder_hidden_size": model.decode_head.linear_c[0].proj.out_features,
            "classifier_dropout_prob": model.decode_head.dropout.p, "semantic_loss_ignore_index": 255,
            "id2label": {str(i): name for i, name in enumerate(labels)},
            "label2id": {name: i for i, name in enumerate(labels)},
        })
    return config


def hf_preprocessor(model) -> dict[str, Any]:
    """A SegformerImageProcessor config with the model's input statistics and no resizing."""
    mean, std = list(model.input_mean), list(model.input_std)
    return {"image_processor_type": "SegformerImageProcessor", "do_resize": False,
            "do_rescale": True, "rescale_factor": 1 / 255,
            "do_normalize": (mean, std) != ([0.0] * 3, [1.0] * 3),
            "image_mean": mean, "image_std": std, "do_reduce_labels": False}


def write_folder_atomically(out: Path, files: dict[str, Callable[[Path], None]]) -> None:
    """Write every file into a hidden sibling folder, then rename it to ``out`` in one step;
    a replaced ``out`` is removed only after the new one is in place."""
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    old = None
    try:
        for name, write in files.items():
            write(staging / name)
            with open(staging / name, "rb+") as fh:
                os.fsync(fh.fileno())
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
            os.replace(out, old / out.name)
        os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if old is not None and (old / out.name).exists() and not out.exists():
            os.replace(old / out.name, out)
        raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


# ----------------------------------------------------------------------------- printing


def _classes_phrase(model) -> str:
    num_classes = getattr(model, "num_classes", None)
    return " encoder" if num_classes is None else f", {num_classes} classes"


def _norm_phrase(mean, std) -> str:
    if tuple(mean) == (0.0, 0.0, 0.0) and tuple(std) == (1.0, 1.0, 1.0):
        return "[0, 1] pixels, no mean/std"
    return (f"mean {', '.join(f'{v:.3f}' for v in mean)}, std {', '.join(f'{v:.3f}' for v in std)} "
            "([0, 1] pixel units)")
