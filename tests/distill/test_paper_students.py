"""The paper's other students: TransKD from SegFormer-B2 to LVT, and between PVTv2 networks with
the authors' Semantic FPN head, train a step with every TransKD variant."""

from __future__ import annotations

import math

import pytest
import torch

from transkd import create_distiller, create_model

CLASSES = 4


def one_step(method: str, teacher: str, student: str) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    distiller = create_distiller(method, create_model(teacher, num_classes=CLASSES),
                                 create_model(student, num_classes=CLASSES))
    distiller.train()
    images = torch.rand(1, 3, 64, 64)
    targets = torch.randint(0, CLASSES, (1, 64, 64))
    out = distiller(images, targets)
    out["loss"].backward()
    grads = [p.grad for p in distiller.student.parameters() if p.grad is not None]
    assert grads and any(g.abs().sum() > 0 for g in grads)
    assert all(p.grad is None for p in distiller.teacher.parameters())
    return out


@pytest.mark.parametrize("method", ["transkd_base", "transkd_gl", "transkd_ea"])
def test_segformer_b2_teaches_lvt(method):
    out = one_step(method, "segformer_b2", "lvt_mlp")
    assert all(math.isfinite(v.item()) for k, v in out.items() if k != "logits")


@pytest.mark.parametrize("method", ["transkd_base", "transkd_gl", "transkd_ea"])
def test_pvtv2_b2_teaches_b0_with_the_authors_head(method):
    out = one_step(method, "pvtv2_b2_authors_fpn", "pvtv2_b0_authors_fpn")
    assert all(math.isfinite(v.item()) for k, v in out.items() if k != "logits")
