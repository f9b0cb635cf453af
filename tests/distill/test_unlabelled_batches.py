"""A batch that mixes labelled and unlabelled images: the task loss on the labelled rows only,
label-free terms on every image, label terms (IFVD) with unlabelled rows ignored, and the
pseudo-label loss checked against an independent computation of its formula."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from transkd import create_distiller, create_model
from transkd.distill.base import pseudo_label_loss

CLASSES = 5


def networks():
    torch.manual_seed(0)
    teacher = create_model("segformer_b0", num_classes=CLASSES)
    student = create_model("segformer_b0", num_classes=CLASSES)
    return teacher, student


def batch():
    torch.manual_seed(1)
    images = torch.randn(4, 3, 32, 32)
    targets = torch.randint(0, CLASSES, (4, 32, 32))
    return images, targets


@pytest.mark.parametrize("method", ["kd", "ifvd"])
def test_the_task_loss_sees_the_labelled_rows_and_label_terms_ignore_the_rest(method):
    teacher, student = networks()
    options = {"stage": 1} if method == "ifvd" else {}  # stage 1: an 8x8 map, many prototypes
    distiller = create_distiller(method, teacher, student, **options).eval()
    images, targets = batch()
    labelled = torch.tensor([True, False, True, False])
    with torch.no_grad():
        out = distiller(images, targets, labelled)
        logits = out["logits"]
        expected_ce = F.cross_entropy(F.interpolate(logits[labelled], size=(32, 32), mode="bilinear",
                                                    align_corners=False), targets[labelled])
        assert out["ce"].item() == pytest.approx(expected_ce.item(), rel=1e-5)
        masked = targets.clone()
        masked[~labelled] = 255  # what a label term must see: no label for unlabelled images
        reference = distiller(images, masked)
        if method == "kd":  # label-free: every image, unchanged by the mask
            assert out["kd"].item() == pytest.approx(reference["kd"].item(), rel=1e-6)
        else:
            assert distiller.label_terms() == {"ifvd": ("ifvd",)}
            assert out["ifvd"].item() == pytest.approx(reference["ifvd"].item(), rel=1e-6)
            assert out["ifvd"].item() != pytest.approx(distiller(images, targets)["ifvd"].item(),
                                                       rel=1e-3)


def test_an_all_labelled_mask_is_the_plain_batch_and_no_label_gives_a_zero_task_loss():
    teacher, student = networks()
    distiller = create_distiller("transkd_base", teacher, student).eval()
    images, targets = batch()
    with torch.no_grad():
        plain = distiller(images, targets)
        masked = distiller(images, targets, torch.ones(4, dtype=torch.bool))
        assert all(torch.equal(plain[k], masked[k]) for k in plain)
        none = distiller(images)
    assert none["ce"].item() == 0.0
    assert none["loss"].item() == pytest.approx(sum(v.item() for k, v in none.items()
                                                    if k not in ("loss", "logits")))
    assert none["loss"].item() > 0  # the distillation terms still teach
    student.zero_grad()
    distiller.train()
    distiller(images)["loss"].backward()
    assert all(p.grad is not None for p in student.parameters())


def numpy_pseudo_label_loss(student: np.ndarray, teacher: np.ndarray, threshold: float) -> float:
    """The formula written out: softmax of the teacher, confident pixels, -log p_student(argmax)."""
    def softmax(x):
        e = np.exp(x - x.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    p_teacher, p_student = softmax(teacher.astype(np.float64)), softmax(student.astype(np.float64))
    confident = p_teacher.max(axis=1) >= threshold
    pseudo = p_teacher.argmax(axis=1)
    chosen = np.take_along_axis(p_student, pseudo[:, None], axis=1)[:, 0]
    if not confident.any():
        return 0.0
    return float(-np.log(chosen[confident]).mean())


@pytest.mark.parametrize("threshold", [0.3, 0.6, 1.0])
def test_the_pseudo_label_loss_matches_its_formula(threshold):
    torch.manual_seed(2)
    student = torch.randn(3, CLASSES, 8, 8)
    teacher = torch.randn(3, CLASSES, 8, 8) * 2
    expected = numpy_pseudo_label_loss(student.numpy(), teacher.numpy(), threshold)
    assert pseudo_label_loss(student, teacher, threshold).item() == pytest.approx(expected, rel=1e-5,
                                                                                    abs=1e-7)


def test_pseudo_labels_are_taken_on_the_unlabelled_images_only():
    teacher, student = networks()
    distiller = create_distiller("kd", teacher, student, pseudo_label_threshold=0.2,
                                 pseudo_label_weight=0.5).eval()
    images, targets = batch()
    labelled = torch.tensor([True, True, False, False])
    with torch.no_grad():
        out = distiller(images, targets, labelled)
        teacher_logits = teacher(images)
        expected = numpy_pseudo_label_loss(out["logits"][2:].numpy(), teacher_logits[2:].numpy(), 0.2)
        assert out["pseudo_ce"].item() == pytest.approx(0.5 * expected, rel=1e-5)
        assert distiller(images, targets)["pseudo_ce"].item() == 0.0  # every image has a label
