"""Cross-image relational knowledge distillation (CIRKD): Yang, Zhou, An, Jiang, Xu and Zhang,
"Cross-Image Relational Knowledge Distillation for Semantic Segmentation", CVPR 2022.

A pixel's relations to pixels of *other* images are knowledge too. On one stage map (default
stage 4, the last backbone map the paper uses):

- mini-batch pixel-to-pixel (term ``cirkd_batch``): every image pair (i, j) of the batch,
  the (pixels × pixels) cosine similarities of ``i`` to ``j``; each row becomes a distribution
  ``softmax(sim / τ)`` and the student's matches the teacher's by KL, averaged over rows and
  over the B² pairs. Similarities are within each network, so no adapter is needed. Maps of
  at least 256×256 are first average-pooled 4×4, as the authors do to bound the cost.
- memory pixel-to-pixel and pixel-to-region (terms ``cirkd_pixel`` and ``cirkd_region``): a
  per-class memory bank of the teacher's embeddings, filled from every labelled image of every
  step (per class and image: up to 16 random pixels, and the class's mean embedding as a
  region). Each labelled pixel (the anchor) of the student — its map through a projection
  head to the teacher's width — and of the teacher is compared with a random sample of the bank
  (``contrast_size / classes + 1`` entries of each class); the student's similarity
  distribution ``softmax(sim / τ)`` over that sample matches the teacher's by KL
  (``relation_temperature`` T, ``T² ·`` batch-mean over anchors).
- pixel-wise KD on the logits (term ``cirkd_kd``), part of the paper's objective; set
  ``kd_weight: 0`` when combining with ``kd``.

The bank is four registered buffers (queues and write pointers): it is saved with every
checkpoint and restored on resume, and its random draws use the global generator, whose state
checkpoints keep, so a resumed run continues exactly. Under DDP the teacher embeddings and
labels of every rank are gathered before the bank is written, as in the paper, so each rank
holds the same bank. Defaults: the authors' Cityscapes settings (``train_cirkd.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from ..models.conv import Conv2d
from .base import DistillContext, DistillMethod, NetworkInfo
from .ifvd import resize_labels
from .kd import check_positive, check_stage_list, check_stages_exist, check_weight, pixelwise_kl
from .losses import full_precision
from .registry import register_method

#: Maps at least this large on both sides are pooled before the mini-batch term.
BATCH_POOL_FROM, BATCH_POOL = 256, 4


def batch_relation_loss(student: torch.Tensor, teacher: torch.Tensor, tau: float) -> torch.Tensor:
    """Mini-batch pixel-to-pixel term: ``1/B² Σ_{i,j} 1/N Σ_rows KL(softmax(T_ij/τ) ‖
    softmax(S_ij/τ))`` with ``S_ij`` the cosine similarities of the pixels of image i to those
    of image j."""
    with torch.autocast(student.device.type, enabled=False):
        student, teacher = full_precision(student), full_precision(teacher)
        if student.shape[-2] >= BATCH_POOL_FROM and student.shape[-1] >= BATCH_POOL_FROM:
            student = F.avg_pool2d(student, BATCH_POOL, ceil_mode=True)
            teacher = F.avg_pool2d(teacher, BATCH_POOL, ceil_mode=True)
        s = F.normalize(student.flatten(2), dim=1)
        t = F.normalize(teacher.flatten(2), dim=1)
        batch, pixels = s.shape[0], s.shape[2]
        log_p_s = torch.log_softmax(torch.einsum("icn,jcm->ijnm", s, s) / tau, dim=-1)
        log_p_t = torch.log_softmax(torch.einsum("icn,jcm->ijnm", t, t) / tau, dim=-1)
        return (log_p_t.exp() * (log_p_t - log_p_s)).sum() / (batch * batch * pixels)


def relation_divergence(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """``T² ·`` mean over rows of ``KL(softmax(t/T) ‖ softmax(s/T))`` of (anchors, samples)
    similarity logits."""
    log_p_s = torch.log_softmax(student / temperature, dim=1)
    log_p_t = torch.log_softmax(teacher / temperature, dim=1)
    return (log_p_t.exp() * (log_p_t - log_p_s)).sum() / student.shape[0] * temperature ** 2


def gather_across_ranks(tensor: torch.Tensor) -> torch.Tensor:
    """The concatenation (dim 0) of ``tensor`` over every DDP rank; itself when not distributed."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts)


@register_method
class CrossImageRelationalKD(DistillMethod):
    """CIRKD: mini-batch and memory-bank relational terms plus logit KD."""

    name = "cirkd"
    #: The bank is written from labelled pixels and its anchors are labelled pixels.
    label_terms = ("cirkd_pixel", "cirkd_region")

    @dataclass
    class Options:
        stage: int = 4
        kd_weight: float = 1.0
        kd_temperature: float = 1.0
        batch_weight: float = 1.0
        pixel_weight: float = 0.1
        region_weight: float = 0.1
        contrast_temperature: float = 0.1       # τ of every similarity distribution
        relation_temperature: float = 1.0       # T of the memory terms' KL
        pixel_memory_size: int = 20000          # pixel embeddings kept per class
        region_memory_size: int = 2000          # region embeddings kept per class
        pixel_contrast_size: int = 4096         # bank pixels sampled per step, all classes
        region_contrast_size: int = 1024        # bank regions sampled per step, all classes
        pixels_per_update: int = 16             # pixels written per class and image

        def validate(self) -> None:
            check_stage_list("stage", (self.stage,))
            for name in ("kd_weight", "batch_weight", "pixel_weight", "region_weight"):
                check_weight(name, getattr(self, name))
            for name in ("kd_temperature", "contrast_temperature", "relation_temperature"):
                check_positive(name, getattr(self, name))
            for name in ("pixel_memory_size", "region_memory_size", "pixel_contrast_size",
                         "region_contrast_size", "pixels_per_update"):
                if getattr(self, name) < 1:
                    raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)}")
            if self.pixels_per_update > self.pixel_memory_size:
                raise ValueError(f"pixels_per_update ({self.pixels_per_update}) must not exceed "
                                 f"pixel_memory_size ({self.pixel_memory_size})")

    def __init__(self, student: NetworkInfo, teacher: NetworkInfo | None, options: Options) -> None:
        super().__init__(student, teacher, options)
        check_stages_exist(self.name, "stage", (options.stage,), len(student.widths))
        width, dim = student.widths[options.stage - 1], self.paired_teacher_widths[options.stage - 1]
        classes = student.num_classes
        self.projector = nn.Sequential(
            Conv2d(width, dim, 1, bias=False), nn.BatchNorm2d(dim), nn.ReLU(inplace=True),
            Conv2d(dim, dim, 1, bias=False))
        self.register_buffer("pixel_queue", F.normalize(
            torch.randn(classes, options.pixel_memory_size, dim), dim=2))
        self.register_buffer("pixel_pointer", torch.zeros(classes, dtype=torch.long))
        self.register_buffer("region_queue", F.normalize(
            torch.randn(classes, options.region_memory_size, dim), dim=2))
        self.register_buffer("region_pointer", torch.zeros(classes, dtype=torch.long))

    @classmethod
    def needs(cls, options: Options) -> tuple[str, ...]:
        return ("logits", "features") if options.kd_weight > 0 else ("features",)

    @torch.no_grad()
    def enqueue(self, embeddings: torch.Tensor, labels: torch.Tensor) -> None:
        """Write the (normalised) teacher ``embeddings`` (B, D, H, W) of each labelled class of
        each image: its mean as a region, up to ``pixels_per_update`` random pixels."""
        count = self.options.pixels_per_update
        pixel_size, region_size = self.pixel_queue.shape[1], self.region_queue.shape[1]
        for feature, label in zip(embeddings.flatten(2), labels.flatten(1), strict=True):
            for cls in label.unique().tolist():
                if not 0 <= cls < self.pixel_queue.shape[0]:
                    continue
                members = feature[:, label == cls]                       # (D, n)
                ptr = int(self.region_pointer[cls])
                self.region_queue[cls, ptr] = F.normalize(members.mean(dim=1), dim=0)
                self.region_pointer[cls] = (ptr + 1) % region_size
                chosen = torch.randperm(members.shape[1])[:count].to(members.device)
                picked = F.normalize(members[:, chosen].t(), dim=1)
                k, ptr = picked.shape[0], int(self.pixel_pointer[cls])
                if ptr + k >= pixel_size:
                    self.pixel_queue[cls, pixel_size - k:] = picked
                    self.pixel_pointer[cls] = 0
                else:
                    self.pixel_queue[cls, ptr:ptr + k] = picked
                    self.pixel_pointer[cls] = ptr + k

    def sample(self, queue: torch.Tensor, contrast_size: int) -> torch.Tensor:
        """``contrast_size // classes + 1`` entries of each class (the same random slots for
        every class), as (entries, D)."""
        per_class = contrast_size // queue.shape[0] + 1
        slots = torch.randperm(queue.shape[1])[:per_class].to(queue.device)
        return queue[:, slots].reshape(-1, queue.shape[2])

    def memory_terms(self, student: torch.Tensor, teacher: torch.Tensor,
                     labels: torch.Tensor, ignore_index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Memory pixel-to-pixel and pixel-to-region losses; the bank is written first."""
        opts = self.options
        with torch.autocast(student.device.type, enabled=False):
            s = F.normalize(self.projector(full_precision(student)), dim=1)
            t = F.normalize(full_precision(teacher), dim=1)
            labels = resize_labels(labels, tuple(s.shape[-2:]))
            valid = (labels != ignore_index) & (labels >= 0) & (labels < self.pixel_queue.shape[0])
            labels = torch.where(valid, labels, ignore_index)
            self.enqueue(gather_across_ranks(t.detach()), gather_across_ranks(labels))
            if not bool(valid.any()):
                zero = s.pow(2).mean() * 0.0
                return zero, zero
            anchors = valid.flatten()
            s = s.permute(0, 2, 3, 1).reshape(-1, s.shape[1])[anchors]
            t = t.permute(0, 2, 3, 1).reshape(-1, t.shape[1])[anchors]
            losses = []
            for queue, size in ((self.pixel_queue, opts.pixel_contrast_size),
                                (self.region_queue, opts.region_contrast_size)):
                bank = self.sample(queue, size).to(s.dtype)
                tau = opts.contrast_temperature
                losses.append(relation_divergence(s @ bank.t() / tau, t @ bank.t() / tau,
                                                  opts.relation_temperature))
            return losses[0], losses[1]

    def loss_terms(self, ctx: DistillContext) -> dict[str, torch.Tensor]:
        opts = self.options
        index = opts.stage - 1
        student_map = ctx.student.features[index]
        teacher_map = self.teacher_map(ctx, index, student_map)
        pixel, region = self.memory_terms(student_map, teacher_map, ctx.targets, ctx.ignore_index)
        terms = {
            "cirkd_batch": opts.batch_weight * batch_relation_loss(
                student_map, teacher_map, opts.contrast_temperature),
            "cirkd_pixel": opts.pixel_weight * pixel,
            "cirkd_region": opts.region_weight * region,
        }
        if opts.kd_weight > 0:
            terms["cirkd_kd"] = opts.kd_weight * pixelwise_kl(
                ctx.student.logits, ctx.teacher_logits(), opts.kd_temperature)
        return terms
