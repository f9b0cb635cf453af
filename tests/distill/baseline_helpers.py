"""Synthetic network outputs and shared checks for the baseline-method tests.

Most baseline tests run a method on random tensors shaped like a tiny teacher/student pair
(fast, exact); the pinned-value check runs the real case of ``make_fixtures.py``.
"""

from __future__ import annotations

import torch

from transkd.distill import DistillContext, DistillMethod, NetworkInfo, get_method
from transkd.models.segmentor import SegmentationOutput

CLASSES = 4
STUDENT_WIDTHS = (8, 16, 24, 32)
TEACHER_WIDTHS = (16, 32, 48, 64)
STRIDES = (4, 8, 16, 32)


def fake_output(widths: tuple[int, ...], batch: int, size: int, generator: torch.Generator,
                requires_grad: bool) -> SegmentationOutput:
    """Random logits (B, K, size/4, size/4), stage maps and patch-embedding tokens."""
    def draw(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator).requires_grad_(requires_grad)

    sides = [size // s for s in STRIDES]
    return SegmentationOutput(
        logits=draw(batch, CLASSES, sides[0], sides[0]),
        features=[draw(batch, w, n, n) for w, n in zip(widths, sides)],
        embeddings=[draw(batch, n * n, w) for w, n in zip(widths, sides)])


def fake_context(seed: int = 0, batch: int = 2, size: int = 64,
                 student_widths: tuple[int, ...] = STUDENT_WIDTHS,
                 teacher_widths: tuple[int, ...] = TEACHER_WIDTHS,
                 student_is_teacher: bool = False) -> DistillContext:
    """A step's context: student outputs are leaves that require grad, teacher outputs do not.

    Labels are at the image resolution (4× the logits), with an ignored 255 block.
    ``student_is_teacher`` gives the student a copy of the teacher's outputs (same widths).
    """
    generator = torch.Generator().manual_seed(seed)
    teacher = fake_output(teacher_widths, batch, size, generator, requires_grad=False)
    if student_is_teacher:
        def copy(x: torch.Tensor) -> torch.Tensor:
            return x.clone().requires_grad_(True)
        student = SegmentationOutput(copy(teacher.logits), [copy(f) for f in teacher.features],
                                     [copy(e) for e in teacher.embeddings])
    else:
        student = fake_output(student_widths, batch, size, generator, requires_grad=True)
    images = torch.rand(batch, 3, size, size, generator=generator)
    targets = torch.randint(0, CLASSES, (batch, size, size), generator=generator)
    targets[:, : size // 4, : size // 4] = 255
    return DistillContext(images, targets, student, teacher)


def build_method(name: str, student_widths: tuple[int, ...] = STUDENT_WIDTHS,
                 teacher_widths: tuple[int, ...] = TEACHER_WIDTHS, **options) -> DistillMethod:
    """A registered method sized for the synthetic pair, options parsed as from a config."""
    cls = get_method(name)
    return cls(NetworkInfo(student_widths, CLASSES), NetworkInfo(teacher_widths, CLASSES),
               cls.parse_options(options))


def student_tensors(ctx: DistillContext) -> list[torch.Tensor]:
    return [ctx.student.logits, *ctx.student.features, *ctx.student.embeddings]


def assert_scalar_terms(terms: dict[str, torch.Tensor], names: set[str]) -> None:
    assert set(terms) == names
    for name, value in terms.items():
        assert value.dim() == 0 and value.dtype == torch.float32, name
        assert torch.isfinite(value), f"term {name} is {value.item()}"


def backward_and_collect(method: DistillMethod, ctx: DistillContext) -> dict[str, torch.Tensor]:
    """Backpropagate the summed terms; the teacher's outputs must stay out of the graph."""
    terms = method.loss_terms(ctx)
    torch.stack(list(terms.values())).sum().backward()
    teacher = ctx.teacher
    for tensor in [teacher.logits, *teacher.features, *teacher.embeddings]:
        assert tensor.grad is None and not tensor.requires_grad
    return terms
