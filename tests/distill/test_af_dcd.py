"""Af-DCD: its terms against the paper's formulas written out here, its mask and its options."""

import math

import pytest
import torch
from baseline_helpers import assert_scalar_terms, backward_and_collect, build_method, fake_context

from transkd.distill import af_dcd  # noqa: F401  (registers "af_dcd")
from transkd.distill.af_dcd import feature_mask, omni_contrastive_loss
from transkd.distill.kd import pixelwise_kl
from transkd.errors import ConfigError


def published_contrast(student, teacher, tau, groups, patch):
    """Σ over patches, positions p and groups g of −log softmax: the positive is the teacher's
    (p, g) vector, the negatives the teacher's vectors of every other group at any position of
    the patch; similarity = −L1 distance / τ. Divided by H·W and by the batch."""
    b, c, h, w = student.shape
    d = c // groups
    total = 0.0
    for n in range(b):
        for y0 in range(0, h, patch):
            for x0 in range(0, w, patch):
                cells = [(y, x) for y in range(y0, y0 + patch) for x in range(x0, x0 + patch)]
                for (y, x) in cells:
                    for g in range(groups):
                        anchor = student[n, g * d:(g + 1) * d, y, x]

                        def score(yy, xx, gg, anchor=anchor, n=n):
                            other = teacher[n, gg * d:(gg + 1) * d, yy, xx]
                            return -float((anchor - other).abs().sum()) / tau

                        positive = score(y, x, g)
                        scores = [positive] + [score(yy, xx, gg) for (yy, xx) in cells
                                               for gg in range(groups) if gg != g]
                        top = max(scores)
                        total += top + math.log(sum(math.exp(v - top) for v in scores)) - positive
    return total / (h * w) / b


def test_omni_contrast_matches_the_papers_formula():
    grid = torch.arange(2 * 4 * 4 * 4, dtype=torch.float64).reshape(2, 4, 4, 4)
    student, teacher = torch.sin(grid), torch.cos(0.3 * grid) * 1.5
    got = omni_contrastive_loss(student, teacher, tau=0.5, groups=2, pool_size=1, patch_size=2)
    assert got.item() == pytest.approx(published_contrast(student, teacher, 0.5, 2, 2), rel=1e-10)


def test_omni_contrast_max_pools_first_and_shrinks_the_patch_to_the_map():
    grid = torch.arange(1 * 4 * 8 * 8, dtype=torch.float64).reshape(1, 4, 8, 8)
    student, teacher = torch.sin(grid), torch.cos(0.7 * grid)
    pooled_s = torch.nn.functional.max_pool2d(student, 4)              # 2×2 after pooling
    pooled_t = torch.nn.functional.max_pool2d(teacher, 4)
    got = omni_contrastive_loss(student, teacher, tau=0.07, groups=4, pool_size=4, patch_size=4)
    assert got.item() == pytest.approx(published_contrast(pooled_s, pooled_t, 0.07, 4, 2), rel=1e-10)


def test_terms_follow_the_papers_objective_with_the_centre_mask():
    method = build_method("af_dcd", random_mask=False, groups=4, feature_weight=0.5,
                          contrast_weight=2.0, kd_weight=3.0, pool_size=1, patch_size=2)
    ctx = fake_context(size=128)                         # stage 4: 4×4 maps
    terms = backward_and_collect(method, ctx)
    assert_scalar_terms(terms, {"af_dcd_feat", "af_dcd_contrast", "af_dcd_kd"})
    student_map, teacher_map = ctx.student.features[3].detach(), ctx.teacher.features[3]
    mask = torch.ones(2, 1, 4, 4)
    mask[:, :, 1:2, 1:2] = 0                             # the centre third of a 4×4 map
    with torch.no_grad():
        mimic = method.projector(method.align(student_map) * mask)
    feat = float(((mimic - teacher_map) ** 2).sum()) / 2
    assert terms["af_dcd_feat"].item() == pytest.approx(0.5 * feat, rel=1e-5)
    contrast = published_contrast(mimic.double(), teacher_map.double(), 0.07, 4, 2)
    assert terms["af_dcd_contrast"].item() == pytest.approx(2.0 * contrast, rel=1e-5)
    kd = pixelwise_kl(ctx.student.logits.detach(), ctx.teacher.logits)
    assert terms["af_dcd_kd"].item() == pytest.approx(3.0 * kd.item(), rel=1e-6)
    assert method.align.bias is not None and ctx.student.features[3].grad.abs().sum() > 0


def test_random_mask_zeroes_the_mask_ratio_of_positions():
    torch.manual_seed(0)
    mask = feature_mask(torch.Size((4, 8, 64, 64)), 0.75, True, torch.device("cpu"), torch.float32)
    assert mask.shape == (4, 1, 64, 64) and set(mask.unique().tolist()) == {0.0, 1.0}
    assert 1 - mask.mean().item() == pytest.approx(0.75, abs=0.02)


def test_defaults_are_the_authors():
    method = build_method("af_dcd")
    opts = method.options
    assert (opts.feature_weight, opts.contrast_weight, opts.tau, opts.groups) == (4e-5, 1e-3, 0.07, 16)
    assert (opts.pool_size, opts.patch_size, opts.mask_ratio, opts.random_mask) == (4, 4, 0.75, True)
    assert (opts.kd_weight, opts.stage, opts.enhanced_projector) == (1.0, 4, False)
    enhanced = build_method("af_dcd", enhanced_projector=True)
    assert sum(p.numel() for p in enhanced.projector.parameters()) == 4 * (64 * 64 * 9 + 64)


@pytest.mark.parametrize("options, message", [
    ({"groups": 5}, "groups"),
    ({"mask_ratio": 1.0}, "mask_ratio"),
    ({"tau": 0}, "tau"),
    ({"patch_size": 0}, "patch_size"),
    ({"stage": 5}, "beyond"),
])
def test_invalid_options_are_rejected(options, message):
    with pytest.raises(ConfigError, match=message):
        build_method("af_dcd", **options)
