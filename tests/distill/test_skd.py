import pytest
import torch
from baseline_helpers import (
    CLASSES,
    TEACHER_WIDTHS,
    assert_scalar_terms,
    backward_and_collect,
    build_method,
    fake_context,
)

from transkd.distill import skd  # noqa: F401  (registers "skd")
from transkd.distill.kd import pixelwise_kl
from transkd.distill.skd import (
    critic_input,
    node_similarity,
    pairwise_similarity_loss,
    pixelwise_divergence,
)
from transkd.errors import ConfigError


def test_nodes_are_a_pooled_grid_with_unit_self_similarity():
    feature = torch.randn(2, 5, 8, 6)
    sim = node_similarity(feature, 0.5)                  # 4×3 nodes → 2×2 grid
    assert sim.shape == (2, 4, 4)
    assert torch.allclose(torch.diagonal(sim, dim1=1, dim2=2), torch.ones(2, 4), atol=1e-6)
    assert torch.allclose(sim, sim.transpose(1, 2))
    assert node_similarity(torch.randn(1, 5, 3, 3), 0.5).shape == (1, 9, 9)   # 1×1 nodes
    assert node_similarity(torch.randn(1, 5, 1, 1), 0.5).shape == (1, 1, 1)


def test_pair_loss_ignores_width_and_scale():
    teacher = torch.randn(2, 8, 6, 6)
    wider_copy = torch.cat([teacher, teacher], dim=1) * 3.0     # twice the width, same directions
    assert pairwise_similarity_loss(wider_copy, teacher).item() == pytest.approx(0, abs=1e-6)
    assert pairwise_similarity_loss(torch.randn(2, 4, 6, 6), teacher).item() > 0


def test_default_terms_and_weights():
    method = build_method("skd")
    opts = method.options
    assert (opts.pair_weight, opts.pixel_weight, opts.temperature) == (1.0, 10.0, 1.0)
    assert (opts.pool_scale, opts.stage, opts.holistic) == (0.5, 4, False)
    assert method.critic is None and not list(method.parameters())
    ctx = fake_context()
    terms = backward_and_collect(method, ctx)
    assert_scalar_terms(terms, {"skd_pair", "skd_pixel"})
    pair = pairwise_similarity_loss(ctx.student.features[3], ctx.teacher.features[3], 0.5)
    assert terms["skd_pair"].item() == pytest.approx(pair.item(), rel=1e-6)
    pixel = 10.0 * 2 * pixelwise_kl(ctx.student.logits, ctx.teacher.logits)   # summed over a batch of 2
    assert terms["skd_pixel"].item() == pytest.approx(pixel.item(), rel=1e-6)
    assert ctx.student.features[3].grad.abs().sum() > 0 and ctx.student.logits.grad.abs().sum() > 0


def test_zero_when_student_equals_teacher():
    method = build_method("skd", student_widths=TEACHER_WIDTHS, holistic=True)
    terms = method.loss_terms(fake_context(student_is_teacher=True))
    assert_scalar_terms(terms, {"skd_pair", "skd_pixel", "skd_holistic"})
    for name, value in terms.items():
        assert value.item() == pytest.approx(0, abs=1e-5), name


def test_holistic_critic_learns_against_the_student_through_reversed_gradients():
    method = build_method("skd", holistic=True, holistic_weight=0.5, pair_weight=0, pixel_weight=0)
    method.eval()        # spectral norm stops its power iteration: repeated calls agree exactly
    assert method.critic.net[0].in_channels == CLASSES + 3
    ctx = fake_context()
    term = method.loss_terms(ctx)["skd_holistic"]
    term.backward()
    via_reversal = ctx.student.logits.grad.clone()
    critic_grads = {n: p.grad.clone() for n, p in method.critic.named_parameters()}
    assert all(g.abs().sum() > 0 for g in critic_grads.values())

    # the critic descends w·(D(s) − D(t)); the student descends the generator loss −w·D(s)
    method.zero_grad()
    ctx.student.logits.grad = None
    fake = method.critic(critic_input(ctx.student.logits, ctx.images))
    real = method.critic(critic_input(ctx.teacher.logits, ctx.images))
    critic_loss = 0.5 * (fake.mean() - real.mean())
    assert critic_loss.item() == pytest.approx(term.item(), rel=1e-5, abs=1e-7)
    critic_loss.backward(inputs=list(method.critic.parameters()))
    for name, param in method.critic.named_parameters():
        assert torch.allclose(param.grad, critic_grads[name], rtol=1e-4, atol=1e-7), name
    generator_loss = -0.5 * method.critic(critic_input(ctx.student.logits, ctx.images)).mean()
    (generator_grad,) = torch.autograd.grad(generator_loss, ctx.student.logits)
    assert torch.allclose(via_reversal, generator_grad, rtol=1e-4, atol=1e-8)


@pytest.mark.parametrize("options, message", [
    ({"pool_scale": 0.0}, "pool_scale"),
    ({"pool_scale": 1.5}, "pool_scale"),
    ({"temperature": -1}, "temperature"),
    ({"pair_weight": -1}, "pair_weight"),
    ({"stage": 0}, "counts stages from 1"),
    ({"stage": 5}, "beyond"),
    ({"holistic": "yes"}, "true or false"),
    ({"critic_width": 0}, "critic_width"),
])
def test_invalid_options_are_rejected(options, message):
    with pytest.raises(ConfigError, match=message):
        build_method("skd", **options)



def test_mixed_precision_keeps_similarities_in_fp32():
    feature = torch.randn(2, 8, 4, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = node_similarity(feature, 0.5)
    assert mixed.dtype == torch.float32
    assert torch.allclose(mixed, node_similarity(feature, 0.5))


def published_pair_loss(student, teacher, pool):
    """The paper's pair-wise loss, written out: nodes max-pooled over ``pool``×``pool`` cells,
    a_ij = f_i·f_j / ((|f_i| + 1e-8)(|f_j| + 1e-8)), mean of (a_s − a_t)² over (batch, i, j)."""
    def sims(feature):
        b, c, h, w = feature.shape
        nodes = []
        for y in range(0, h, pool):
            for x in range(0, w, pool):
                nodes.append(feature[:, :, y:y + pool, x:x + pool].amax(dim=(2, 3)))
        f = torch.stack(nodes, dim=2)                               # (B, C, N)
        norms = torch.sqrt((f.detach() ** 2).sum(dim=1)) + 1e-8     # (B, N), constants
        out = torch.zeros(b, f.shape[2], f.shape[2], dtype=feature.dtype)
        for n in range(b):
            for i in range(f.shape[2]):
                for j in range(f.shape[2]):
                    out[n, i, j] = (f[n, :, i] * f[n, :, j]).sum() / (norms[n, i] * norms[n, j])
        return out
    return ((sims(student) - sims(teacher)) ** 2).mean()


def published_pixel_loss(student, teacher):
    """Σ over images and pixels of Σ_c q_t (log q_t − log q_s), divided by H·W only."""
    b, c, h, w = student.shape
    total = torch.zeros((), dtype=student.dtype)
    for n in range(b):
        for y in range(h):
            for x in range(w):
                q_t = torch.exp(teacher[n, :, y, x]) / torch.exp(teacher[n, :, y, x]).sum()
                q_s = torch.exp(student[n, :, y, x]) / torch.exp(student[n, :, y, x]).sum()
                total = total + (q_t * (torch.log(q_t) - torch.log(q_s))).sum()
    return total / (h * w)


def test_terms_match_the_published_formulas_on_a_hand_made_case():
    """A 2-image, 3-channel, 4×4 map (2×2 nodes of 2×2 cells) and 3-class 3×3 logits."""
    grid = torch.arange(2 * 3 * 4 * 4, dtype=torch.float64).reshape(2, 3, 4, 4)
    student_map = (torch.sin(grid) * 2.0).requires_grad_(True)
    teacher_map = torch.cos(grid * 0.7) * 3.0 + 0.5
    logits = torch.arange(2 * 3 * 3 * 3, dtype=torch.float64).reshape(2, 3, 3, 3)
    student_logits = torch.sin(logits).requires_grad_(True)
    teacher_logits = torch.cos(logits * 1.3) * 2.0

    pair = pairwise_similarity_loss(student_map, teacher_map, 0.5)
    want_pair = published_pair_loss(student_map, teacher_map, 2)
    assert pair.item() == pytest.approx(want_pair.item(), rel=1e-10)
    pixel = pixelwise_divergence(student_logits, teacher_logits)
    assert pixel.item() == pytest.approx(published_pixel_loss(student_logits, teacher_logits).item(),
                                         rel=1e-10)

    # the norms are constants: the gradient is the published one, not that of a cosine similarity
    (grad,) = torch.autograd.grad(pair, student_map)
    (want,) = torch.autograd.grad(want_pair, student_map)
    assert torch.allclose(grad, want, rtol=1e-9, atol=1e-12)


def test_weighted_terms_of_the_method_follow_the_published_normalisation():
    method = build_method("skd", pair_weight=0.5, pixel_weight=10.0)
    ctx = fake_context(batch=3, size=64)
    terms = method.loss_terms(ctx)
    student, teacher = ctx.student.logits.detach(), ctx.teacher.logits
    kl = (teacher.softmax(1) * (teacher.log_softmax(1) - student.log_softmax(1))).sum(1)   # (B, H, W)
    assert terms["skd_pixel"].item() == pytest.approx(10.0 * kl.sum().item() / (16 * 16), rel=1e-5)
    pair = published_pair_loss(ctx.student.features[3].detach().double(),
                               ctx.teacher.features[3].double(), 1)
    assert terms["skd_pair"].item() == pytest.approx(0.5 * pair.item(), rel=1e-5)
