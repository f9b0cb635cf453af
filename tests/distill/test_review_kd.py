import pytest
import reference_formulas
import torch
from baseline_helpers import (
    STUDENT_WIDTHS,
    TEACHER_WIDTHS,
    assert_scalar_terms,
    backward_and_collect,
    build_method,
    fake_context,
)

from transkd.distill import review_kd  # noqa: F401  (registers "review_kd")
from transkd.distill.review_kd import ReviewPath
from transkd.errors import ConfigError


def test_review_path_maps_every_stage_to_the_teacher_shape():
    path = ReviewPath(STUDENT_WIDTHS, TEACHER_WIDTHS, mid_channels=16)
    ctx = fake_context()
    outputs = path(ctx.student.features)
    assert [o.shape for o in outputs] == [t.shape for t in ctx.teacher.features]
    # the deepest unit has nothing to fuse; the others fuse with a 1×1 conv over 2·mid → 2 maps
    assert path.units[-1].attention is None
    for unit in path.units[:-1]:
        conv = unit.attention[0]
        assert (conv.in_channels, conv.out_channels, conv.kernel_size) == (32, 2, (1, 1))


def test_review_runs_deep_to_shallow():
    path = ReviewPath(STUDENT_WIDTHS, TEACHER_WIDTHS, mid_channels=16).eval()
    features = fake_context().student.features
    base = path(features)
    deeper_changed = path([*features[:3], features[3] + 1.0])
    shallow_changed = path([features[0] + 1.0, *features[1:]])
    # stage 1's output reviews the deeper stages; the deepest output sees only its own stage
    assert not torch.allclose(deeper_changed[0], base[0])
    assert torch.allclose(shallow_changed[3], base[3])
    assert not torch.allclose(shallow_changed[0], base[0])


def test_term_is_weighted_hcl_and_gradients_reach_all_units():
    method = build_method("review_kd", hcl_weight=2.0)
    assert method.options.mid_channels == 64
    ctx = fake_context()
    terms = backward_and_collect(method, ctx)
    assert_scalar_terms(terms, {"review_hcl"})
    with torch.no_grad():
        outputs = [o.double().numpy() for o in method.review(ctx.student.features)]
    expected = 2.0 * reference_formulas.hcl(outputs, [f.double().numpy() for f in ctx.teacher.features])
    assert terms["review_hcl"].item() == pytest.approx(expected, rel=1e-5)
    for name, param in method.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), name
    assert all(f.grad is not None for f in ctx.student.features)
    assert ctx.student.logits.grad is None


def test_single_sample_batch_with_one_pixel_stage_trains():
    method = build_method("review_kd").train()
    ctx = fake_context(batch=1, size=32)            # stage 4 is 1×1
    assert ctx.student.features[3].shape[-2:] == (1, 1)
    terms = backward_and_collect(method, ctx)
    assert torch.isfinite(terms["review_hcl"])


@pytest.mark.parametrize("options, message", [
    ({"mid_channels": 0}, "mid_channels"),
    ({"hcl_weight": -1.0}, "hcl_weight"),
    ({"mid": 64}, "unknown option"),
])
def test_invalid_options_are_rejected(options, message):
    with pytest.raises(ConfigError, match=message):
        build_method("review_kd", **options)



def test_combines_with_transkd_because_its_term_has_its_own_name():
    from transkd.distill import create_distiller
    from transkd.models import create_model

    torch.manual_seed(0)
    teacher = create_model("segformer_b1", num_classes=5)
    student = create_model("segformer_b0", num_classes=5)
    distiller = create_distiller("review_kd+transkd_base", teacher, student)
    terms = distiller(torch.randn(2, 3, 64, 64), torch.randint(0, 5, (2, 16, 16)))
    assert {"review_hcl", "hcl", "ce"} <= set(terms)
    assert all(torch.isfinite(terms[k]) for k in ("review_hcl", "hcl", "loss"))
