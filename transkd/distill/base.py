"""The Distiller: a frozen teacher beside a trainable student and its training-only adapters.

A *method* (``DistillMethod``) is a small module holding its adapters and computing its loss
terms from the student's and the teacher's outputs. A ``Distiller`` runs the student once, the
teacher once without autograd, the task loss, and every method it holds (so methods combine,
e.g. ``transkd_base+kd``). The deployable student stays a plain model: ``distiller.student``.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from ..models.segmentor import SegmentationOutput, normalisation_of
from ..options import Keys, convert
from .align import match_stages, resize_map, resize_tokens
from .losses import full_precision

#: What a method can read from a network (see :class:`transkd.models.SegmentationOutput`).
NEEDS = ("logits", "features", "embeddings")


@dataclass(frozen=True)
class NetworkInfo:
    """What a method needs to know of a network to size its adapters.

    ``widths``/``strides``: its stage maps (empty for a network without any).
    ``embed_widths``/``embed_strides``: its patch embeddings; None means one per stage at the
    stage's width and stride (MiT/PVTv2), an empty tuple means none (a CNN).
    """

    widths: tuple[int, ...]
    num_classes: int
    in_chans: int = 3
    strides: tuple[int, ...] = (4, 8, 16, 32)
    embed_widths: tuple[int, ...] | None = None
    embed_strides: tuple[int, ...] | None = None
    name: str = ""

    @property
    def embedding_widths(self) -> tuple[int, ...]:
        return self.widths if self.embed_widths is None else self.embed_widths

    @property
    def embedding_strides(self) -> tuple[int, ...]:
        return self.strides if self.embed_strides is None else self.embed_strides

    def has(self, need: str) -> bool:
        """Whether the network provides ``need`` (one of :data:`NEEDS`)."""
        if need == "features":
            return bool(self.widths)
        if need == "embeddings":
            return bool(self.embedding_widths)
        return self.num_classes > 0

    @classmethod
    def of(cls, model: nn.Module, probe_size: int | None = None) -> NetworkInfo:
        """Describe ``model``: a transkd MiT/PVTv2 segmentor by its encoder's configuration, any
        other network by the shapes one probe forward actually produces."""
        encoder = getattr(model, "encoder", None)
        if hasattr(encoder, "widths") and hasattr(encoder, "strides") and hasattr(encoder, "config"):
            return cls(tuple(encoder.widths), int(model.num_classes), encoder.config.in_chans,
                       tuple(encoder.strides), name=str(getattr(model, "model_name", "")))
        return cls.probe(model, probe_size)

    @classmethod
    def probe(cls, model: nn.Module, probe_size: int | None = None) -> NetworkInfo:
        """Run ``model`` once on a blank image (eval mode, no autograd, training flags restored)
        and read widths and strides off its outputs."""
        size = int(probe_size or getattr(model, "probe_size", 128))
        in_chans = int(getattr(model, "in_chans", 3))
        param = next(model.parameters(), None)
        kwargs = {} if param is None else {"device": param.device, "dtype": param.dtype}
        modes = {m: m.training for m in model.modules()}
        model.eval()
        try:
            with torch.no_grad():
                out = model(torch.zeros(1, in_chans, size, size, **kwargs), return_features=True)
        finally:
            for module, mode in modes.items():
                module.training = mode
        strides = tuple(max(1, round(size / f.shape[-1])) for f in out.features)
        embed_strides = tuple(max(1, round(size / out.embedding_grid(i)[1]))
                              for i in range(len(out.embeddings)))
        classes = int(out.logits.shape[1]) if out.logits is not None else 0
        return cls(tuple(int(f.shape[1]) for f in out.features),
                   int(getattr(model, "num_classes", classes) or classes), in_chans, strides,
                   tuple(int(e.shape[-1]) for e in out.embeddings), embed_strides,
                   name=str(getattr(model, "model_name", type(model).__name__)))


@dataclass
class DistillContext:
    """Everything a method may read during one step."""

    images: torch.Tensor
    #: Labels; the rows of unlabelled samples are all ``ignore_index``.
    targets: torch.Tensor
    student: SegmentationOutput
    teacher: SegmentationOutput | None
    ignore_index: int = 255
    #: (B,) bool, True where the sample has a label; None when every sample has one.
    labelled: torch.Tensor | None = None

    def teacher_logits(self) -> torch.Tensor:
        """The teacher's logits at the student's logit size (bilinear where they differ)."""
        return resize_map(self.teacher.logits, self.student.logits.shape[-2:])


class DistillMethod(nn.Module):
    """One distillation method: its adapters (submodules) and its loss terms.

    Subclasses set ``name``, an ``Options`` dataclass with the paper's defaults, and implement
    :meth:`loss_terms`, returning already-weighted scalar terms (they are summed into ``loss``).
    """

    name: ClassVar[str] = ""
    uses_teacher: ClassVar[bool] = True
    #: False when the method reads only the teacher's stage maps and embeddings: then the
    #: teacher's decode head (for SegFormer-B2 the costliest part of its forward) is skipped.
    uses_teacher_logits: ClassVar[bool] = True
    #: The terms computed from labels (``ctx.targets``): on a batch with unlabelled images they
    #: see only the labelled ones (the unlabelled rows of ``ctx.targets`` are ``ignore_index``),
    #: and a run without any label refuses the method. Every other term needs no label and is
    #: computed on every image.
    label_terms: ClassVar[tuple[str, ...]] = ()

    @dataclass
    class Options:
        pass

    def __init__(self, student: NetworkInfo, teacher: NetworkInfo | None, options: Options) -> None:
        super().__init__()
        self.student_info = student
        self.teacher_info = teacher
        self.options = options
        has_maps = teacher is not None and teacher.widths
        #: For each student stage, the teacher stage of the nearest stride.
        self.stage_pairs = match_stages(student.strides, teacher.strides) if has_maps else ()
        has_tokens = teacher is not None and teacher.embedding_widths
        #: For each student embedding, the teacher embedding of the nearest stride.
        self.embedding_pairs = (match_stages(student.embedding_strides, teacher.embedding_strides)
                                if has_tokens else ())

    @classmethod
    def needs(cls, options: Options) -> tuple[str, ...]:
        """What this method reads from both networks (of :data:`NEEDS`), given its options."""
        return ("logits",)

    @property
    def paired_teacher_widths(self) -> tuple[int, ...]:
        """The teacher's width at the stage paired with each student stage."""
        return tuple(self.teacher_info.widths[j] for j in self.stage_pairs)

    @property
    def paired_teacher_embed_widths(self) -> tuple[int, ...]:
        """The teacher's embedding width paired with each student embedding."""
        return tuple(self.teacher_info.embedding_widths[j] for j in self.embedding_pairs)

    def teacher_map(self, ctx: DistillContext, stage: int, like: torch.Tensor) -> torch.Tensor:
        """The teacher map paired with student stage ``stage`` (0-based) at ``like``'s size."""
        return resize_map(ctx.teacher.features[self.stage_pairs[stage]], like.shape[-2:])

    def teacher_tokens(self, ctx: DistillContext, index: int) -> torch.Tensor:
        """The teacher embedding paired with student embedding ``index`` (0-based), resampled to
        the student's token grid."""
        j = self.embedding_pairs[index]
        return resize_tokens(ctx.teacher.embeddings[j], ctx.teacher.embedding_grid(j),
                             ctx.student.embedding_grid(index))

    @abc.abstractmethod
    def loss_terms(self, ctx: DistillContext) -> dict[str, torch.Tensor]:
        """Weighted scalar loss terms of this method for one batch."""

    @classmethod
    def parse_options(cls, options: Mapping[str, Any], keys: Keys | None = None) -> Options:
        """Check names, types and ranges of user options against the method's ``Options``."""
        keys = keys or Keys(noun="option", owner=f" for method {cls.name!r}")
        return convert(cls.Options, options, keys)


def cross_entropy_loss(logits: torch.Tensor, targets: torch.Tensor, ignore_index: int = 255,
                       weight: torch.Tensor | None = None) -> torch.Tensor:
    """Cross-entropy in fp32; logits are upsampled bilinearly to the label size if they differ."""
    if logits.shape[-2:] != targets.shape[-2:]:
        logits = F.interpolate(logits, size=targets.shape[-2:], mode="bilinear", align_corners=False)
    return F.cross_entropy(full_precision(logits), targets.long(), weight=weight, ignore_index=ignore_index)


def pseudo_label_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                      threshold: float) -> torch.Tensor:
    """Cross-entropy of the student against the teacher's arg-max class, on the pixels where the
    teacher's softmax maximum is at least ``threshold``: the mean over those pixels (0 when there
    are none). The teacher's logits are resized (bilinear) to the student's first."""
    teacher_logits = resize_map(full_precision(teacher_logits), student_logits.shape[-2:])
    confidence, pseudo = teacher_logits.softmax(dim=1).max(dim=1)
    confident = (confidence >= threshold).to(torch.float32)
    per_pixel = F.cross_entropy(full_precision(student_logits), pseudo, reduction="none")
    return (per_pixel * confident).sum() / confident.sum().clamp_min(1.0)


class Distiller(nn.Module):
    """Student + adapters (trainable, submodules) and a frozen teacher (not a submodule).

    ``distiller(images, targets)`` returns ``{"ce": ..., <method terms>..., "loss": sum,
    "logits": student logits}``; every term is a weighted fp32 scalar.

    Batches may mix labelled and unlabelled images: ``distiller(images, targets, labelled)`` with
    ``labelled`` a (B,) bool mask (``targets=None``: no image has a label). One forward of each
    network serves the whole batch; the task loss ``ce`` is the criterion on the labelled rows
    alone (0 when there are none), every label-free method term sees every image, and a method's
    ``label_terms`` see the labels with the unlabelled rows set to ``ignore_index``, so methods
    keep one signature and never learn where the images came from. A mask rather than labels
    filled with ``ignore_index``: the criterion then never averages over an empty set, and a
    protocol whose void is a trained class cannot turn a missing label into a void one.
    ``pseudo_label_threshold`` adds ``pseudo_ce``: :func:`pseudo_label_loss` on the unlabelled
    images, weighted by ``pseudo_label_weight``.
    """

    def __init__(self, student: nn.Module, teacher: nn.Module | None,
                 methods: list[DistillMethod], *,
                 criterion: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
                 ce_weight: float = 1.0, ignore_index: int = 255,
                 class_map: tuple[int, ...] | None = None,
                 pseudo_label_threshold: float | None = None,
                 pseudo_label_weight: float = 1.0) -> None:
        super().__init__()
        if pseudo_label_threshold is not None and teacher is None:
            raise ValueError("pseudo-labels need a teacher")
        self.pseudo_label_threshold = pseudo_label_threshold
        self.pseudo_label_weight = pseudo_label_weight
        #: Teacher logit channel for each student class (teachers trained on another class set).
        self.class_map = list(class_map) if class_map is not None else None
        self.student = student
        self.methods = nn.ModuleDict({m.name: m for m in methods})
        self.criterion = criterion or (lambda lg, t: cross_entropy_loss(lg, t, ignore_index))
        self.ce_weight = ce_weight
        self.ignore_index = ignore_index
        self._teacher = [teacher] if teacher is not None else []  # a list hides it from nn.Module
        if teacher is not None:
            freeze(teacher)

    @property
    def teacher(self) -> nn.Module | None:
        return self._teacher[0] if self._teacher else None

    @property
    def method_name(self) -> str:
        return "+".join(self.methods) or "none"

    def label_terms(self) -> dict[str, tuple[str, ...]]:
        """For each method with terms computed from labels, those terms (they skip unlabelled
        images); the task loss ``ce`` always does."""
        return {name: m.label_terms for name, m in self.methods.items() if m.label_terms}

    def train(self, mode: bool = True) -> Distiller:
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()  # BatchNorm/dropout of the teacher stay in inference behaviour
        return self

    def _apply(self, fn, recurse: bool = True):
        super()._apply(fn, recurse)
        if self.teacher is not None:  # .to()/.cuda()/.half() reach the hidden teacher too
            self.teacher._apply(fn, recurse)
        return self

    def extra_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters of the training-only modules (adapters) of every method."""
        return self.methods.parameters()

    def get_eval_model(self) -> nn.Module:
        """The plain deployable student."""
        return self.student

    def teacher_on_student_inputs(self) -> nn.Module | None:
        """The teacher as a module that takes the student's inputs (for evaluating it on the
        student's data pipeline): it re-normalises them to the teacher's own mean/std and
        answers in the student's classes (``class_map``)."""
        if self.teacher is None:
            return None
        return Renormalised(self.teacher, normalisation_of(self.student), self.class_map)

    @torch.no_grad()
    def teacher_forward(self, images: torch.Tensor) -> SegmentationOutput | None:
        """The teacher's outputs, without autograd, on the images re-normalised to what the
        teacher expects (it may have been trained with another mean/std than the student)."""
        if self.teacher is None or not any(m.uses_teacher for m in self.methods.values()):
            return None
        images = renormalise(images, self.student, self.teacher)
        encode = getattr(self.teacher, "encode", None)
        logits_read = (self.pseudo_label_threshold is not None
                       or any(m.uses_teacher_logits for m in self.methods.values()))
        if encode is not None and not logits_read:
            return encode(images)
        out = self.teacher(images, return_features=True)
        if self.class_map is not None and out.logits is not None:
            out.logits = out.logits[:, self.class_map]
        return out

    def forward(self, images: torch.Tensor, targets: torch.Tensor | None = None,
                labelled: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        needs_outputs = bool(self.methods)
        student_out = self.student(images, return_features=needs_outputs)
        if not needs_outputs:
            student_out = SegmentationOutput(student_out, [], [])
        teacher_out = self.teacher_forward(images)
        logits = student_out.logits
        if targets is None:  # no image has a label: a stand-in of the logits' size
            targets = torch.full((images.shape[0], *logits.shape[-2:]), self.ignore_index,
                                 dtype=torch.long, device=images.device)
            labelled = torch.zeros(images.shape[0], dtype=torch.bool, device=images.device)
        if labelled is not None and bool(labelled.all()):
            labelled = None
        if labelled is None:
            ce = self.criterion(logits, targets)
        elif bool(labelled.any()):
            ce = self.criterion(logits[labelled], targets[labelled])
            targets = targets.masked_fill(~labelled.view(-1, *([1] * (targets.dim() - 1))),
                                          self.ignore_index)
        else:
            ce = logits.sum() * 0.0  # keeps the graph whole (DDP reduces every parameter)
            targets = torch.full_like(targets, self.ignore_index)
        terms: dict[str, torch.Tensor] = {"ce": self.ce_weight * full_precision(ce)}
        if self.pseudo_label_threshold is not None:
            unlabelled = ~labelled if labelled is not None else None
            if unlabelled is not None and bool(unlabelled.any()):
                pseudo = pseudo_label_loss(logits[unlabelled], teacher_out.logits[unlabelled],
                                           self.pseudo_label_threshold)
            else:
                pseudo = logits.sum() * 0.0
            terms["pseudo_ce"] = self.pseudo_label_weight * full_precision(pseudo)
        ctx = DistillContext(images, targets, student_out, teacher_out, self.ignore_index, labelled)
        for method in self.methods.values():
            for key, value in method.loss_terms(ctx).items():
                if key in terms:
                    raise RuntimeError(f"loss term {key!r} is produced twice")
                terms[key] = full_precision(value)
        terms["loss"] = torch.stack(list(terms.values())).sum()
        terms["logits"] = student_out.logits
        return terms


def renormalise(images: torch.Tensor, source: nn.Module, target: nn.Module) -> torch.Tensor:
    """``images`` normalised for ``source`` re-expressed in ``target``'s normalisation (the same
    tensor when both expect the same)."""
    (mean_s, std_s), (mean_t, std_t) = normalisation_of(source), normalisation_of(target)
    if mean_s == mean_t and std_s == std_t:
        return images

    def column(values: tuple[float, ...]) -> torch.Tensor:
        return torch.tensor(values, device=images.device, dtype=images.dtype).view(1, -1, 1, 1)

    raw = images * column(std_s) + column(mean_s)
    return (raw - column(mean_t)) / column(std_t)


class Renormalised(nn.Module):
    """``model`` fed with images normalised by ``source`` = (mean, std) instead of its own, its
    logits reduced to the channels of ``class_map`` where one is given."""

    def __init__(self, model: nn.Module, source: tuple[tuple[float, ...], tuple[float, ...]],
                 class_map: list[int] | None = None) -> None:
        super().__init__()
        self.model = model
        self.input_mean, self.input_std = source
        self.class_map = class_map
        self.num_classes = len(class_map) if class_map else getattr(model, "num_classes", None)
        self.training = model.training  # a frozen teacher stays in eval mode when this is restored

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        logits = self.model(renormalise(images, self, self.model))
        return logits if self.class_map is None else logits[:, self.class_map]


def freeze(model: nn.Module) -> nn.Module:
    """Eval mode and no gradients: the teacher never trains and never builds a graph."""
    model.eval()
    model.requires_grad_(False)
    return model

