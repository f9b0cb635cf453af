"""transkd's TransKD adapters against the authors' modules, on the same weights and inputs.

For CSF (with PEA), the GL-Mixer and the Embedding Assistant, the authors' ``SKF`` wrapper of
each variant (``train/CSF.py``, ``train/CSF_GLMixer.py``, ``train/CSF_EA.py`` of a clone of
RuipingL/TransKD passed by ``--reference``) is built around a stand-in student that returns
fixed random MiT-B0 stage maps, logits and patch embeddings. Its weights are copied into
transkd's ``transkd_base`` / ``transkd_gl`` / ``transkd_ea`` adapters, both run in training
mode (BatchNorm on batch statistics) on the same tensors, and the largest absolute difference
of every output is printed: the four CSF maps, the four aligned embeddings, and the HCL and
embedding losses against random teacher tensors (the reference's ``hcl`` halves its level
weights per level used, so transkd runs with ``hcl_level_weights: halved`` for that row).

The GL-Mixer's α and β, which the reference leaves uninitialised, are set to 0.5 on both
sides. The reference code is read from the clone at run time, never copied; it imports timm,
so ``benchmarks/reference_shims`` is put first on ``sys.path``.

    python benchmarks/reference_modules.py --reference /path/to/TransKD [--dtype float64]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from transkd.distill import DistillContext, NetworkInfo, get_method
from transkd.distill.losses import hcl_loss
from transkd.models.segmentor import SegmentationOutput

SHIM_DIR = Path(__file__).resolve().parent / "reference_shims"
STUDENT = (32, 64, 160, 256)   # MiT-B0
TEACHER = (64, 128, 320, 512)  # MiT-B2
STRIDES = (4, 8, 16, 32)
CLASSES = 20
EMBED_WEIGHTS = (0.1, 0.1, 0.5, 1.0)


def import_reference(path: Path):
    """The reference's three adapter modules, imported from the clone's ``train`` folder."""
    train_dir = path / "train"
    for name in ("CSF.py", "CSF_GLMixer.py", "CSF_EA.py"):
        if not (train_dir / name).is_file():
            raise SystemExit(f"--reference {path} has no train/{name}: pass a clone of RuipingL/TransKD")
    sys.path[:0] = [str(SHIM_DIR), str(train_dir)]
    with contextlib.redirect_stdout(io.StringIO()):  # their files import `this`, which prints
        import CSF
        import CSF_EA
        import CSF_GLMixer
    return CSF, CSF_GLMixer, CSF_EA


class FixedStudent(nn.Module):
    """Stands in for the reference student: ``forward(x, is_feat=True)`` returns fixed
    (stage maps, logits, patch embeddings)."""

    def __init__(self, output: SegmentationOutput) -> None:
        super().__init__()
        self.output = output

    def forward(self, x, is_feat=True):
        return list(self.output.features), self.output.logits, list(self.output.embeddings)


def random_outputs(widths, batch: int, size: tuple[int, int], generator, dtype) -> SegmentationOutput:
    grids = [(size[0] // s, size[1] // s) for s in STRIDES]
    return SegmentationOutput(
        logits=torch.randn(batch, CLASSES, *grids[0], generator=generator, dtype=dtype),
        features=[torch.randn(batch, w, *g, generator=generator, dtype=dtype) for w, g in zip(widths, grids)],
        embeddings=[torch.randn(batch, g[0] * g[1], w, generator=generator, dtype=dtype)
                    for w, g in zip(widths, grids)])


def csf_pea_state(skf: nn.Module) -> dict[str, torch.Tensor]:
    """The reference SKF's fusion units and linear projections under transkd's names. Its
    ``skfs`` run deepest first; ``fc1`` (the single-sample branch) has no counterpart."""
    src = skf.state_dict()
    n = len(skf.skfs)
    mapped = {}
    for k in range(n):
        unit, mine = f"skfs.{k}.", f"csf.units.{n - 1 - k}."
        for theirs, ours in (("conv1.", "reduce."), ("conv2.", "expand."), ("fc.", "squeeze.")):
            for key, value in src.items():
                if key.startswith(unit + theirs):
                    mapped[mine + ours + key[len(unit + theirs):]] = value
        if unit + "fcs.0.weight" in src:
            for p in ("weight", "bias"):
                mapped[f"{mine}select.{p}"] = torch.cat([src[f"{unit}fcs.0.{p}"], src[f"{unit}fcs.1.{p}"]])
    for s in range(1, n + 1):
        for p in ("weight", "bias"):
            mapped[f"pea.proj.stage{s}.{p}"] = src[f"embed{s}_linearproject.{p}"]
    return mapped


def gl_state(skf: nn.Module) -> dict[str, torch.Tensor]:
    src = skf.state_dict()
    mapped = {"mixer.qkv.weight": src["attn4.qkv.weight"], "mixer.alpha": src["atten_weight"],
              "mixer.beta": src["conv_weight"]}
    for theirs, ours in (("attn4.proj", "proj"), ("conv1", "local_value"), ("conv2", "local_gate")):
        for p in ("weight", "bias"):
            mapped[f"mixer.{ours}.{p}"] = src[f"{theirs}.{p}"]
    return mapped


def ea_state(skf: nn.Module) -> dict[str, torch.Tensor]:
    src = skf.state_dict()
    n = len(skf.skfs)
    mapped = {}
    for s in range(1, n + 1):
        for part in ("proj", "norm"):
            for p in ("weight", "bias"):
                mapped[f"assistant.embed.stage{s}.{part}.{p}"] = src[f"patch_embed{s}.{part}.{p}"]
    weights = torch.cat([src[f"fuse_weights.{i}"] for i in range(2 * n)])
    mapped["assistant.pea_scale"], mapped["assistant.assistant_scale"] = weights[:n], weights[n:]
    return mapped


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.detach() - b.detach()).abs().max())


def compare(variant: str, skf: nn.Module, ours: nn.Module, student: SegmentationOutput,
            teacher: SegmentationOutput, images: torch.Tensor, hcl_reference) -> dict:
    skf.train()
    ours.train()
    results, _, embedproj = skf(images)
    ctx = DistillContext(images, torch.zeros(images.shape[0], *images.shape[-2:], dtype=torch.long),
                         student, None)
    csf = ours.csf(student.features)
    aligned = [ours.align_embedding(s, ctx) for s in (1, 2, 3, 4)]
    row = {f"csf_{i + 1}": max_diff(a, b) for i, (a, b) in enumerate(zip(csf, results, strict=True))}
    row.update({f"embedding_{i + 1}": max_diff(a, b)
                for i, (a, b) in enumerate(zip(aligned, embedproj, strict=True))})
    theirs_hcl = hcl_reference(results, teacher.features)
    row["hcl_halved"] = abs(float(hcl_loss(csf, teacher.features, "halved")) - float(theirs_hcl))
    row["hcl_fixed"] = abs(float(hcl_loss(csf, teacher.features, "fixed")) - float(theirs_hcl))
    theirs_embed = sum(w * F.mse_loss(e, t) for w, e, t in zip(EMBED_WEIGHTS, embedproj, teacher.embeddings))
    ours_embed = sum(w * F.mse_loss(e, t) for w, e, t in zip(EMBED_WEIGHTS, aligned, teacher.embeddings))
    row["embedding_loss"] = abs(float(ours_embed) - float(theirs_embed))
    row["loss_scale"] = {"hcl": float(theirs_hcl), "embedding": float(theirs_embed)}
    return {"variant": variant, **row}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", type=Path, required=True, help="a clone of RuipingL/TransKD")
    parser.add_argument("--size", type=int, nargs=2, default=(128, 256), metavar=("H", "W"),
                        help="image size; stage 4 is H/32 rows (4 at 128: HCL levels differ)")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float64")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="write the table as JSON here")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    dtype = getattr(torch, args.dtype)
    CSF, GL, EA = import_reference(args.reference.resolve())
    generator = torch.Generator().manual_seed(args.seed)
    size = tuple(args.size)
    student = random_outputs(STUDENT, args.batch, size, generator, dtype)
    teacher = random_outputs(TEACHER, args.batch, size, generator, dtype)
    images = torch.rand(args.batch, 3, *size, generator=generator, dtype=dtype)
    fixed = FixedStudent(student)
    info_s, info_t = NetworkInfo(STUDENT, CLASSES), NetworkInfo(TEACHER, CLASSES)

    torch.manual_seed(args.seed)
    builds = {
        "transkd_base": (CSF.build_kd_trans(fixed, 5), [csf_pea_state], CSF.hcl),
        "transkd_gl": (GL.build_kd_trans(fixed, 5, False), [csf_pea_state, gl_state], GL.hcl),
        "transkd_ea": (EA.build_kd_trans(fixed, 5), [csf_pea_state, ea_state], EA.hcl),
    }
    with torch.no_grad():  # the reference leaves α and β uninitialised
        builds["transkd_gl"][0].atten_weight.fill_(0.5)
        builds["transkd_gl"][0].conv_weight.fill_(0.5)
    rows = []
    for name, (skf, states, hcl_reference) in builds.items():
        cls = get_method(name)
        ours = cls(info_s, info_t, cls.parse_options({}))
        skf.to(dtype)
        ours.to(dtype)
        state = {k: v for fn in states for k, v in fn(skf).items()}
        ours.load_state_dict(state, strict=True)
        with torch.no_grad():
            rows.append(compare(name, skf, ours, student, teacher, images, hcl_reference))
    report = {"size": list(size), "batch": args.batch, "dtype": args.dtype, "rows": rows}
    columns = [k for k in rows[0] if k not in ("variant", "loss_scale")]
    print(f"max |transkd − reference| at {size[0]}x{size[1]}, batch {args.batch}, {args.dtype}")
    for row in rows:
        worst_map = max(row[c] for c in columns if c.startswith("csf_"))
        worst_embed = max(row[c] for c in columns if c.startswith("embedding_") and c[-1].isdigit())
        print(f"  {row['variant']:<13} CSF maps {worst_map:.2e}  aligned embeddings {worst_embed:.2e}  "
              f"HCL (halved) {row['hcl_halved']:.2e}  HCL (fixed) {row['hcl_fixed']:.2e}  "
              f"embedding loss {row['embedding_loss']:.2e}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
