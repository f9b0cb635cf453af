import pytest
import torch
from baseline_helpers import (
    assert_scalar_terms,
    backward_and_collect,
    build_method,
    fake_context,
)

from transkd.distill import dist  # noqa: F401  (registers "dist")
from transkd.distill.dist import pearson_correlation, relation_losses
from transkd.errors import ConfigError


def reference_losses(student_logits, teacher_logits, tau):
    """Relation losses from ``torch.corrcoef``, pixel by pixel and class by class."""
    classes = student_logits.shape[1]
    p_s = (student_logits / tau).softmax(1).permute(0, 2, 3, 1).reshape(-1, classes).double()
    p_t = (teacher_logits / tau).softmax(1).permute(0, 2, 3, 1).reshape(-1, classes).double()
    inter = [torch.corrcoef(torch.stack([p_s[i], p_t[i]]))[0, 1] for i in range(len(p_s))]
    intra = [torch.corrcoef(torch.stack([p_s[:, k], p_t[:, k]]))[0, 1] for k in range(classes)]
    return (1 - torch.stack(inter).mean()) * tau ** 2, (1 - torch.stack(intra).mean()) * tau ** 2


def test_pearson_correlation_of_affine_copies():
    a = torch.randn(3, 7)
    assert torch.allclose(pearson_correlation(a, 2 * a + 1, dim=1), torch.ones(3), atol=1e-6)
    assert torch.allclose(pearson_correlation(a, -a, dim=1), -torch.ones(3), atol=1e-6)


@pytest.mark.parametrize("tau", [1.0, 2.0])
def test_relations_match_corrcoef(tau):
    generator = torch.Generator().manual_seed(5)
    student = torch.randn(2, 4, 3, 3, generator=generator)
    teacher = torch.randn(2, 4, 3, 3, generator=generator)
    inter, intra = relation_losses(student, teacher, tau)
    want_inter, want_intra = reference_losses(student, teacher, tau)
    assert inter.item() == pytest.approx(want_inter.item(), rel=1e-5)
    assert intra.item() == pytest.approx(want_intra.item(), rel=1e-5)


def test_zero_for_equal_logits_and_bounded():
    ctx = fake_context(student_is_teacher=True)
    inter, intra = relation_losses(ctx.student.logits, ctx.teacher.logits)
    assert inter.item() == pytest.approx(0, abs=1e-5) and intra.item() == pytest.approx(0, abs=1e-5)
    other = fake_context()
    inter, intra = relation_losses(other.student.logits, other.teacher.logits)
    assert 0 < inter.item() <= 2 and 0 < intra.item() <= 2


def test_method_defaults_weights_and_gradients():
    method = build_method("dist")
    assert (method.options.beta, method.options.gamma, method.options.tau) == (1.0, 1.0, 1.0)
    ctx = fake_context()
    terms = backward_and_collect(method, ctx)
    assert_scalar_terms(terms, {"dist_inter", "dist_intra"})
    assert ctx.student.logits.grad.abs().sum() > 0
    assert all(f.grad is None for f in ctx.student.features)

    weighted = build_method("dist", beta=2.0, gamma=0.5).loss_terms(ctx)
    assert weighted["dist_inter"].item() == pytest.approx(2.0 * terms["dist_inter"].item(), rel=1e-6)
    assert weighted["dist_intra"].item() == pytest.approx(0.5 * terms["dist_intra"].item(), rel=1e-6)


@pytest.mark.parametrize("options, message", [
    ({"tau": 0}, "tau"),
    ({"beta": -1}, "beta"),
    ({"gamma": float("nan")}, "gamma"),
])
def test_invalid_options_are_rejected(options, message):
    with pytest.raises(ConfigError, match=message):
        build_method("dist", **options)

