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

from ..models.segmentor import SegmentationOutput
from ..options import Keys, convert
from .losses import full_precision


@dataclass(frozen=True)
class NetworkInfo:
    """What a method needs to know of a network to size its adapters."""

    widths: tuple[int, ...]
    num_classes: int
    in_chans: int = 3
    strides: tuple[int, ...] = (4, 8, 16, 32)

    @classmethod
    def of(cls, model: nn.Module) -> NetworkInfo:
        encoder = model.encoder
        return cls(tuple(encoder.widths), int(model.num_classes), encoder.config.in_chans,
                   tuple(encoder.strides))


@dataclass
class DistillContext:
    """Everything a method may read during one step."""

    images: torch.Tensor
    targets: torch.Tensor
    student: SegmentationOutput
    teacher: SegmentationOutput | None
    ignore_index: int = 255


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

    @dataclass
    class Options:
        pass

    def __init__(self, student: NetworkInfo, teacher: NetworkInfo | None, options: Options) -> None:
        super().__init__()
        self.student_info = student
        self.teacher_info = teacher
        self.options = options

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


class Distiller(nn.Module):
    """Student + adapters (trainable, submodules) and a frozen teacher (not a submodule).

    ``distiller(images, targets)`` returns ``{"ce": ..., <method terms>..., "loss": sum,
    "logits": student logits}``; every term is a weighted fp32 scalar.
    """

    def __init__(self, student: nn.Module, teacher: nn.Module | None,
                 methods: list[DistillMethod], *,
                 criterion: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
                 ce_weight: float = 1.0, ignore_index: int = 255) -> None:
        super().__init__()
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

    @torch.no_grad()
    def teacher_forward(self, images: torch.Tensor) -> SegmentationOutput | None:
        if self.teacher is None or not any(m.uses_teacher for m in self.methods.values()):
            return None
        if any(m.uses_teacher_logits for m in self.methods.values()):
            return self.teacher(images, return_features=True)
        encoded = self.teacher.encoder(images, return_embeddings=True)
        return SegmentationOutput(None, encoded.features, encoded.embeddings)

    def forward(self, images: torch.Tensor, targets: torch.Tensor) -> dict[str, torch.Tensor]:
        needs_outputs = bool(self.methods)
        student_out = self.student(images, return_features=needs_outputs)
        if not needs_outputs:
            student_out = SegmentationOutput(student_out, [], [])
        teacher_out = self.teacher_forward(images)
        terms: dict[str, torch.Tensor] = {
            "ce": self.ce_weight * full_precision(self.criterion(student_out.logits, targets))}
        ctx = DistillContext(images, targets, student_out, teacher_out, self.ignore_index)
        for method in self.methods.values():
            for key, value in method.loss_terms(ctx).items():
                if key in terms:
                    raise RuntimeError(f"loss term {key!r} is produced twice")
                terms[key] = full_precision(value)
        terms["loss"] = torch.stack(list(terms.values())).sum()
        terms["logits"] = student_out.logits
        return terms


def freeze(model: nn.Module) -> nn.Module:
    """Eval mode and no gradients: the teacher never trains and never builds a graph."""
    model.eval()
    model.requires_grad_(False)
    return model

