"""Every method's loss terms against its formula written again in ``reference_formulas.py``
(numpy, or plain torch calls on the adapters' own weights), on a tiny random input in float64.

SKD, CIRKD and AF-DCD keep their own independent checks in their test files.
"""

import numpy as np
import pytest
import reference_formulas as ref
import torch
from baseline_helpers import CLASSES, build_method, fake_context

from transkd.distill import DistillContext
from transkd.distill.losses import hcl_stage_loss
from transkd.models.segmentor import SegmentationOutput

TOL = dict(rel=1e-9, abs=1e-12)


def double_context(seed: int = 0) -> DistillContext:
    """The synthetic step of ``fake_context`` in float64 (batch 2, 64-pixel images: stage maps of
    16, 8, 4 and 2 rows, so HCL uses three, three, two and one pooled levels)."""
    ctx = fake_context(seed)

    def double(out: SegmentationOutput) -> SegmentationOutput:
        return SegmentationOutput(out.logits.detach().double(), [f.detach().double() for f in out.features],
                                  [e.detach().double() for e in out.embeddings])

    return DistillContext(ctx.images.double(), ctx.targets, double(ctx.student), double(ctx.teacher))


def method(name: str, **options):
    return build_method(name, **options).double()


def np_(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().numpy()


def test_kd():
    ctx = double_context()
    terms = method("kd", temperature=2.0, loss_weight=0.7).loss_terms(ctx)
    expected = 0.7 * ref.kd(np_(ctx.student.logits), np_(ctx.teacher.logits), 2.0)
    assert terms["kd"].item() == pytest.approx(expected, **TOL)


def test_cwd_logits_and_features():
    ctx = double_context()
    m = method("cwd", on="both", tau=3.0, loss_weight=2.0, feature_weight=5.0, feature_stages=[2, 3])
    terms = m.loss_terms(ctx)
    expected = 2.0 * ref.cwd(np_(ctx.student.logits), np_(ctx.teacher.logits), 3.0)
    assert terms["cwd"].item() == pytest.approx(expected, **TOL)
    stages = [ref.cwd(ref.conv1x1(np_(ctx.student.features[i - 1]), np_(m.adapters[f"stage{i}"].weight)),
                      np_(ctx.teacher.features[i - 1]), 3.0) for i in (2, 3)]
    assert terms["cwd_feat"].item() == pytest.approx(5.0 * np.mean(stages), **TOL)


def test_dist():
    ctx = double_context()
    terms = method("dist", beta=0.6, gamma=1.7, tau=2.0).loss_terms(ctx)
    inter, intra = ref.dist(np_(ctx.student.logits), np_(ctx.teacher.logits), 2.0)
    assert terms["dist_inter"].item() == pytest.approx(0.6 * inter, rel=1e-7)
    assert terms["dist_intra"].item() == pytest.approx(1.7 * intra, rel=1e-7)


def test_fitnet():
    ctx = double_context()
    m = method("fitnet", loss_weight=10.0, stages=[2, 4])
    stages = [ref.mse(ref.conv1x1(np_(ctx.student.features[i - 1]), np_(m.regressors[f"stage{i}"].weight)),
                      np_(ctx.teacher.features[i - 1])) for i in (2, 4)]
    assert m.loss_terms(ctx)["fitnet"].item() == pytest.approx(10.0 * np.mean(stages), **TOL)


def test_ifvd():
    ctx = double_context()
    expected = ref.ifvd(np_(ctx.student.features[2]), np_(ctx.teacher.features[2]),
                        ctx.targets.numpy().astype(np.int64), CLASSES)
    terms = method("ifvd", loss_weight=200.0, stage=3).loss_terms(ctx)
    assert terms["ifvd"].item() == pytest.approx(200.0 * expected, rel=1e-7)


@pytest.mark.parametrize("height", [16, 5, 4, 3, 2, 1])
@pytest.mark.parametrize("level_weights", ["fixed", "halved"])
def test_hcl_stage(height, level_weights):
    generator = torch.Generator().manual_seed(height)
    s = torch.randn(2, 3, height, height + 1, generator=generator, dtype=torch.float64)
    t = torch.randn(2, 3, height, height + 1, generator=generator, dtype=torch.float64)
    expected = ref.hcl_stage(np_(s), np_(t), level_weights)
    assert hcl_stage_loss(s, t, level_weights=level_weights).item() == pytest.approx(expected, **TOL)


def test_hcl_level_weights_differ_only_on_short_maps():
    ctx = double_context()
    for stage, differs in zip(range(4), (False, False, True, True)):  # 16, 8, 4, 2 rows
        s, t = ctx.student.features[stage], ctx.student.features[stage].flip(0)
        fixed = hcl_stage_loss(s, t, level_weights="fixed").item()
        halved = hcl_stage_loss(s, t, level_weights="halved").item()
        assert (fixed != pytest.approx(halved, rel=1e-12)) is differs


@pytest.mark.parametrize("level_weights", ["fixed", "halved"])
def test_review_kd(level_weights):
    ctx = double_context()
    m = method("review_kd", hcl_weight=2.0, hcl_level_weights=level_weights)
    outputs = ref.abf(ctx.student.features, m.review.units)
    expected = 2.0 * ref.hcl([np_(o) for o in outputs], [np_(f) for f in ctx.teacher.features], level_weights)
    assert m.loss_terms(ctx)["review_hcl"].item() == pytest.approx(expected, **TOL)


def _embedding_terms(m, ctx, weights, aligned_of):
    for stage, weight in zip((1, 2, 3, 4), weights):
        aligned = aligned_of(stage)
        expected = weight * ref.mse(np_(aligned), np_(ctx.teacher.embeddings[stage - 1]))
        yield stage, expected


@pytest.mark.parametrize("level_weights", ["fixed", "halved"])
def test_transkd_base_csf_hcl_and_pea(level_weights):
    ctx = double_context()
    weights = (0.3, 0.1, 0.5, 1.5)
    m = method("transkd_base", hcl_weight=2.0, embed_weights=list(weights), hcl_level_weights=level_weights)
    terms = m.loss_terms(ctx)
    outputs = ref.csf(ctx.student.features, m.csf.units)
    expected = 2.0 * ref.hcl([np_(o) for o in outputs], [np_(f) for f in ctx.teacher.features], level_weights)
    assert terms["hcl"].item() == pytest.approx(expected, **TOL)
    for stage, value in _embedding_terms(m, ctx, weights, lambda s: ref.linear(
            ctx.student.embeddings[s - 1], m.pea.proj[f"stage{s}"])):
        assert terms[f"embed_{stage}"].item() == pytest.approx(value, **TOL)


def test_pea_only():
    ctx = double_context()
    m = method("pea_only")
    terms = m.loss_terms(ctx)
    assert "hcl" not in terms
    for stage, value in _embedding_terms(m, ctx, (0.1, 0.1, 0.5, 1.0), lambda s: ref.linear(
            ctx.student.embeddings[s - 1], m.pea.proj[f"stage{s}"])):
        assert terms[f"embed_{stage}"].item() == pytest.approx(value, **TOL)


def test_transkd_gl_mixer():
    ctx = double_context()
    m = method("transkd_gl", gl_heads=4, gl_alpha=0.3, gl_beta=0.9)
    terms = m.loss_terms(ctx)

    def aligned(stage):
        embedding = ctx.student.embeddings[stage - 1]
        if stage == 4:
            embedding = ref.gl_mixer(embedding, m.mixer)
        return ref.linear(embedding, m.pea.proj[f"stage{stage}"])

    for stage, value in _embedding_terms(m, ctx, (0.1, 0.1, 0.5, 1.0), aligned):
        assert terms[f"embed_{stage}"].item() == pytest.approx(value, **TOL)


def test_transkd_ea():
    ctx = double_context()
    init = (0.15, 0.25, 0.35, 0.45, 0.55, 0.65, 0.75, 0.85)
    m = method("transkd_ea", ea_init=list(init))
    terms = m.loss_terms(ctx)

    def aligned(stage):
        stage_input = ctx.images if stage == 1 else ctx.student.features[stage - 2]
        pea = ref.linear(ctx.student.embeddings[stage - 1], m.pea.proj[f"stage{stage}"])
        assistant = ref.patch_embed(stage_input, m.assistant.embed[f"stage{stage}"])
        # the scalars are parameters of the default dtype: the init as float32 stores it
        return (float(np.float32(init[stage - 1])) * pea
                + float(np.float32(init[stage + 3])) * assistant)

    for stage, value in _embedding_terms(m, ctx, (0.1, 0.1, 0.5, 1.0), aligned):
        assert terms[f"embed_{stage}"].item() == pytest.approx(value, **TOL)
