"""TransKD modules (CSF, PEA, GL-Mixer, EA), their methods, options and errors."""

from __future__ import annotations

import copy
import math
from types import SimpleNamespace

import pytest
import reference_formulas
import torch
import torch.nn.functional as F
from make_fixtures import build_case, teacher_model

from transkd import create_distiller, create_model
from transkd.distill import NetworkInfo, get_method
from transkd.distill.transkd import (
    CrossSelectiveFusion,
    EmbeddingAssistant,
    GlobalLocalMixer,
    PatchEmbeddingAlignment,
    SampleSafeBatchNorm2d,
    SelectiveFusionUnit,
)
from transkd.errors import ConfigError

B0 = (32, 64, 160, 256)
B2 = (64, 128, 320, 512)
STUDENT = NetworkInfo(B0, num_classes=20)
TEACHER = NetworkInfo(B2, num_classes=20)
EMBED_TERMS = ["embed_1", "embed_2", "embed_3", "embed_4"]


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# ---- sizes (hand-counted from the spec's module definitions) --------------------------------

def test_module_parameter_counts_for_b2_to_b0():
    # CSF per stage: Conv1x1(Cs→64)+BN, Conv3x3(64→Ct)+BN; stages 1-3 add the attention
    # Conv1x1(64→32)+BN(32) and two Conv1x1(32→64) with bias.
    attention = 64 * 32 + 2 * 32 + 2 * (32 * 64 + 64)
    csf = sum(cs * 64 + 2 * 64 + 64 * 9 * ct + 2 * ct for cs, ct in zip(B0, B2)) + 3 * attention
    assert csf == 644_160
    assert n_params(CrossSelectiveFusion(B0, B2)) == csf
    assert n_params(PatchEmbeddingAlignment(B0, B2, (1, 2, 3, 4))) == sum(
        cs * ct + ct for cs, ct in zip(B0, B2)) == 193_536
    # qkv 256→768 (no bias), proj 256→256, two Conv1d(256, 256, 3), α, β.
    assert n_params(GlobalLocalMixer(256)) == 256 * 768 + 256 * 257 + 2 * (256 * 256 * 3 + 256) + 2
    # Patch embedders 3→64 (7×7), 32→128, 64→320, 160→512 (3×3), each + LayerNorm; 8 scalars.
    ea = sum(ci * co * k * k + co + 2 * co for ci, co, k in
             zip((3, 32, 64, 160), B2, (7, 3, 3, 3))) + 8
    assert ea == 970_952
    assert n_params(EmbeddingAssistant(STUDENT, B2, (1, 2, 3, 4), tuple(range(8)))) == ea


@pytest.mark.parametrize("method, adapters", [
    ("transkd_base", 644_160 + 193_536), ("transkd_gl", 644_160 + 193_536 + 656_130),
    ("transkd_ea", 644_160 + 193_536 + 970_952), ("csf_only", 644_160), ("pea_only", 193_536)])
def test_method_adapter_counts(method, adapters):
    cls = get_method(method)
    assert n_params(cls(STUDENT, TEACHER, cls.parse_options({}))) == adapters


# ---- CSF ------------------------------------------------------------------------------------

def stage_maps(widths, batch=2, size=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, w, size // s, size // s, generator=g)
            for w, s in zip(widths, (4, 8, 16, 32))]


def test_csf_outputs_have_teacher_shapes_and_review_from_deep_to_shallow():
    torch.manual_seed(0)
    csf = CrossSelectiveFusion(B0, B2)
    features = stage_maps(B0)
    outputs = csf(features)
    assert [tuple(o.shape) for o in outputs] == [tuple(t.shape) for t in stage_maps(B2)]
    # Stage i's output depends on stages i..4 only: changing stage 1 leaves 2-4 alone,
    # changing stage 4 changes every output.
    changed_first = csf([features[0] + 1.0, *features[1:]])
    assert not torch.allclose(changed_first[0], outputs[0])
    for a, b in zip(changed_first[1:], outputs[1:]):
        assert torch.equal(a, b)
    changed_last = csf([*features[:3], features[3] + 1.0])
    for a, b in zip(changed_last, outputs):
        assert not torch.allclose(a, b)


def test_csf_unit_structure_and_init():
    unit = SelectiveFusionUnit(32, 64, 128, fuse=True)
    assert unit.squeeze[0].out_channels == 32  # L = max(64 // 16, 32)
    assert unit.squeeze[0].bias is None and unit.reduce[0].bias is None and unit.expand[0].bias is None
    assert unit.expand[0].kernel_size == (3, 3) and unit.expand[0].padding == (1, 1)
    for conv in (unit.reduce[0], unit.expand[0]):  # Kaiming-uniform, a = 1: bound sqrt(3 / fan_in)
        fan_in = conv.weight[0].numel()
        assert conv.weight.abs().max() <= math.sqrt(3 / fan_in)
        assert conv.weight.std().item() == pytest.approx(1 / math.sqrt(fan_in), rel=0.1)
    assert not hasattr(SelectiveFusionUnit(256, 64, 512, fuse=False), "squeeze")


@pytest.mark.parametrize("branch", [0, 1])
def test_csf_attention_selects_own_map_or_upsampled_deeper_map(branch):
    torch.manual_seed(0)
    unit = SelectiveFusionUnit(8, 16, 4, fuse=True, min_hidden=4).eval()
    with torch.no_grad():
        unit.select.weight.zero_()
        unit.select.bias.zero_()
        unit.select.bias[branch * 16:(branch + 1) * 16] = 50.0  # softmax ≈ one-hot
    x, deeper = torch.randn(2, 8, 4, 4), torch.randn(2, 16, 2, 2)
    _, fused = unit(x, deeper)
    expected = unit.reduce(x) if branch == 0 else F.interpolate(deeper, size=(4, 4), mode="nearest")
    assert torch.allclose(fused, expected, atol=1e-5)


def test_csf_equal_logits_give_the_average():
    unit = SelectiveFusionUnit(8, 16, 4, fuse=True, min_hidden=4).eval()
    with torch.no_grad():
        unit.select.weight.zero_()
        unit.select.bias.zero_()
    x, deeper = torch.randn(1, 8, 4, 4), torch.randn(1, 16, 4, 4)
    _, fused = unit(x, deeper)
    assert torch.allclose(fused, 0.5 * (unit.reduce(x) + deeper), atol=1e-6)


def test_single_sample_batchnorm_uses_running_statistics_and_keeps_them():
    norm = SampleSafeBatchNorm2d(4).train()
    with torch.no_grad():
        norm.running_mean.fill_(1.0)
        norm.running_var.fill_(4.0)
        norm.weight.fill_(3.0)
    single = torch.randn(1, 4, 1, 1)
    out = norm(single)
    assert torch.allclose(out, 3.0 * (single - 1.0) / torch.sqrt(torch.tensor(4.0 + norm.eps)))
    assert torch.equal(norm.running_mean, torch.ones(4))  # not updated by one sample
    norm(torch.randn(2, 4, 1, 1))  # two samples: ordinary training BatchNorm
    assert not torch.equal(norm.running_mean, torch.ones(4))
    maps = torch.randn(1, 4, 3, 3)  # one sample with several pixels is still a batch statistic
    assert torch.allclose(norm(maps).mean(dim=(0, 2, 3)), norm.bias.detach(), atol=1e-5)


def test_batch_of_one_trains_with_the_same_parameters():
    distiller, images, targets = build_case("transkd_base")
    names = [n for n, _ in distiller.methods.named_parameters()]
    out = distiller(images[:1], targets[:1])
    out["loss"].backward()
    assert all(math.isfinite(v.item()) for k, v in out.items() if k != "logits")
    grads = {n for n, p in distiller.methods.named_parameters() if p.grad is not None}
    assert grads == set(names)  # every parameter (the attention's BatchNorm too) is used


# ---- loss terms against a manual computation on the real tiny networks ----------------------

def outputs_of(distiller, images):
    student = distiller.student(images, return_features=True)
    with torch.no_grad():
        teacher = distiller.teacher(images, return_features=True)
    return student, teacher


def test_base_terms_are_weighted_hcl_and_embedding_mse():
    distiller, images, targets = build_case("transkd_base", hcl_weight=2.0,
                                            embed_weights=(0.3, 0.1, 0.5, 1.5))
    method = distiller.methods["transkd_base"]
    torch.manual_seed(5)
    out = distiller(images, targets)
    assert sorted(k for k in out if k not in ("ce", "loss", "logits")) == sorted(["hcl", *EMBED_TERMS])
    student, teacher = outputs_of(distiller, images)
    outputs = [o.detach().double().numpy() for o in method.csf(student.features)]
    targets = [f.detach().double().numpy() for f in teacher.features]
    assert out["hcl"].item() == pytest.approx(2.0 * reference_formulas.hcl(outputs, targets), rel=1e-5)
    for stage, weight in zip((1, 2, 3, 4), (0.3, 0.1, 0.5, 1.5)):
        aligned = method.pea.proj[f"stage{stage}"](student.embeddings[stage - 1])
        expected = weight * F.mse_loss(aligned, teacher.embeddings[stage - 1])
        assert out[f"embed_{stage}"].item() == pytest.approx(expected.item(), rel=1e-5)


def test_pea_on_a_subset_of_stages():
    distiller, images, targets = build_case("transkd_base", pea_stages=[4, 2])
    method = distiller.methods["transkd_base"]
    assert sorted(method.pea.proj) == ["stage2", "stage4"]
    out = distiller(images, targets)
    assert sorted(k for k in out if k.startswith("embed_")) == ["embed_2", "embed_4"]
    pea_only, _, _ = build_case("pea_only", pea_stages=[1])
    assert sorted(pea_only(images, targets)) == ["ce", "embed_1", "logits", "loss"]


def test_csf_only_has_no_embedding_branch():
    distiller, images, targets = build_case("csf_only")
    assert sorted(distiller(images, targets)) == ["ce", "hcl", "logits", "loss"]
    assert not hasattr(distiller.methods["csf_only"], "pea")


def reference_attention(mixer: GlobalLocalMixer, tokens: torch.Tensor) -> torch.Tensor:
    """Multi-head self-attention written out (softmax(q kᵀ / sqrt(d)) v per head)."""
    batch, length, dim = tokens.shape
    heads, head_dim = mixer.num_heads, dim // mixer.num_heads
    q, k, v = mixer.qkv(tokens).chunk(3, dim=-1)
    split = [t.reshape(batch, length, heads, head_dim).transpose(1, 2) for t in (q, k, v)]
    weights = (split[0] @ split[1].transpose(-2, -1) / math.sqrt(head_dim)).softmax(dim=-1)
    return mixer.proj((weights @ split[2]).transpose(1, 2).reshape(batch, length, dim))


def test_gl_mixer_formula():
    torch.manual_seed(0)
    mixer = GlobalLocalMixer(32, num_heads=4, alpha=0.7, beta=-0.2)
    assert mixer.alpha.item() == pytest.approx(0.7) and mixer.beta.item() == pytest.approx(-0.2)
    tokens = torch.randn(2, 10, 32)
    seq = tokens.transpose(1, 2)
    local = (mixer.local_value(seq) * torch.sigmoid(mixer.local_gate(seq))).transpose(1, 2)
    expected = 0.7 * reference_attention(mixer, tokens) - 0.2 * local
    assert torch.allclose(mixer(tokens), expected, atol=1e-5)
    mixer.residual = True
    assert torch.allclose(mixer(tokens), expected + tokens, atol=1e-5)
    assert mixer.qkv.bias is None and mixer.proj.bias is not None


def test_gl_defaults_and_stage4_term():
    distiller, images, targets = build_case("transkd_gl")
    method = distiller.methods["transkd_gl"]
    assert method.mixer.alpha.item() == 0.5 and method.mixer.beta.item() == 0.5
    assert method.mixer.num_heads == 8 and not method.mixer.residual
    torch.manual_seed(5)
    out = distiller(images, targets)
    student, teacher = outputs_of(distiller, images)
    aligned = method.pea.proj["stage4"](method.mixer(student.embeddings[3]))
    assert out["embed_4"].item() == pytest.approx(
        F.mse_loss(aligned, teacher.embeddings[3]).item(), rel=1e-5)
    plain = method.pea.proj["stage3"](student.embeddings[2])  # other stages: plain PEA
    assert out["embed_3"].item() == pytest.approx(
        0.5 * F.mse_loss(plain, teacher.embeddings[2]).item(), rel=1e-5)


def test_ea_mixes_pea_with_assistant_embeddings_of_the_stage_inputs():
    distiller, images, targets = build_case("transkd_ea")
    method = distiller.methods["transkd_ea"]
    ea = method.assistant
    assert ea.pea_scale.tolist() == pytest.approx([0.1, 0.2, 0.3, 0.4])
    assert ea.assistant_scale.tolist() == pytest.approx([0.5, 0.6, 0.7, 0.8])
    convs = [ea.embed[f"stage{s}"].proj for s in (1, 2, 3, 4)]
    assert [(c.in_channels, c.out_channels, c.kernel_size[0], c.stride[0]) for c in convs] == [
        (3, 64, 7, 4), (32, 128, 3, 2), (64, 320, 3, 2), (160, 512, 3, 2)]
    torch.manual_seed(5)
    out = distiller(images, targets)
    student, teacher = outputs_of(distiller, images)
    inputs = [images, *student.features[:3]]
    for i, weight in enumerate((0.1, 0.1, 0.5, 1.0)):
        aligned = method.pea.proj[f"stage{i + 1}"](student.embeddings[i])
        assistant = ea.embed[f"stage{i + 1}"](inputs[i])[0]
        mixed = (0.1 * (i + 1)) * aligned + (0.1 * (i + 5)) * assistant
        expected = weight * F.mse_loss(mixed, teacher.embeddings[i])
        assert out[f"embed_{i + 1}"].item() == pytest.approx(expected.item(), rel=1e-5)


def test_ea_on_a_subset_of_stages_keeps_per_stage_init():
    distiller, _, _ = build_case("transkd_ea", pea_stages=(3, 4))
    ea = distiller.methods["transkd_ea"].assistant
    assert sorted(ea.embed) == ["stage3", "stage4"]
    assert ea.pea_scale.tolist() == pytest.approx([0.3, 0.4])
    assert ea.assistant_scale.tolist() == pytest.approx([0.7, 0.8])


# ---- teacher/student pairs ------------------------------------------------------------------

def network(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model(name, num_classes=5, drop_path_rate=0.0)


@pytest.mark.parametrize("teacher_name, student_name", [
    ("segformer_b2", "segformer_b0"), ("segformer_b5", "segformer_b0"),
    ("pvtv2_b2_fpn", "pvtv2_b0_fpn"), ("pvtv2_b2_fpn", "segformer_b0")])
def test_registered_pairs_size_the_adapters_from_the_networks(teacher_name, student_name):
    teacher, student = network(teacher_name), network(student_name)
    widths_s, widths_t = list(student.encoder.widths), list(teacher.encoder.widths)
    gl = create_distiller("transkd_gl", teacher, copy.deepcopy(student)).methods["transkd_gl"]
    assert gl.mixer.qkv.in_features == widths_s[-1]
    distiller = create_distiller("transkd_ea", teacher, student).train()
    adapters = distiller.methods["transkd_ea"]
    assert [u.reduce[0].in_channels for u in adapters.csf.units] == widths_s
    assert [u.expand[0].out_channels for u in adapters.csf.units] == widths_t
    assert [(p.in_features, p.out_features) for p in adapters.pea.proj.values()] == list(
        zip(widths_s, widths_t))
    assert [e.proj.out_channels for e in adapters.assistant.embed.values()] == widths_t
    out = distiller(torch.rand(2, 3, 64, 64), torch.randint(0, 5, (2, 16, 16)))
    assert all(math.isfinite(v.item()) for k, v in out.items() if k != "logits")
    out["loss"].backward()


def test_other_widths_work():
    student, teacher = NetworkInfo((8, 16, 24, 32), 3), NetworkInfo((16, 32, 48, 64), 3)
    cls = get_method("transkd_gl")
    method = cls(student, teacher, cls.parse_options({}))
    assert method.mixer.qkv.in_features == 32
    outputs = method.csf(stage_maps((8, 16, 24, 32)))
    assert [o.shape[1] for o in outputs] == [16, 32, 48, 64]


# ---- bad input: one sentence, naming the problem --------------------------------------------

def one_sentence(error: pytest.ExceptionInfo) -> str:
    message = str(error.value)
    assert "\n" not in message and message
    return message


def test_unknown_method_lists_the_known_ones():
    with pytest.raises(ConfigError) as err:
        create_distiller("transkd_huge", teacher_model(), create_model("segformer_b0", num_classes=5))
    message = one_sentence(err)
    assert "transkd_huge" in message and "transkd_base" in message and "pea_only" in message


def three_stage_model():
    encoder = SimpleNamespace(widths=(32, 64, 160), strides=(4, 8, 16), config=SimpleNamespace(in_chans=3))
    return SimpleNamespace(encoder=encoder, num_classes=5)


def test_stage_count_mismatch():
    with pytest.raises(ConfigError) as err:
        create_distiller("transkd_base", teacher_model(), three_stage_model())
    assert "stages" in one_sentence(err)
    cls = get_method("transkd_base")
    with pytest.raises(ConfigError) as err:
        cls(NetworkInfo((32, 64, 160), 5, strides=(4, 8, 16)), TEACHER, cls.parse_options({}))
    assert "3" in one_sentence(err) and "4" in str(err.value)


@pytest.mark.parametrize("method, options, words", [
    ("transkd_base", {"hcl_weight": "big"}, ["hcl_weight", "number"]),
    ("transkd_base", {"hcl_weight": -1.0}, ["hcl_weight", ">= 0"]),
    ("transkd_base", {"hcl_weight": float("nan")}, ["hcl_weight"]),
    ("transkd_base", {"embed_weights": (0.1, 0.1, 0.5)}, ["embed_weights", "4"]),
    ("transkd_base", {"embed_weights": 0.5}, ["embed_weights", "list"]),
    ("transkd_base", {"embed_weights": (0.1, -0.1, 0.5, 1.0)}, ["embed_weights"]),
    ("transkd_base", {"pea_stages": (0, 1)}, ["pea_stages"]),
    ("transkd_base", {"pea_stages": (5,)}, ["pea_stages", "5"]),
    ("transkd_base", {"pea_stages": (2, 2)}, ["pea_stages", "twice"]),
    ("transkd_base", {"pea_stages": ()}, ["pea_stages"]),
    ("transkd_base", {"pea_stages": (1.5,)}, ["pea_stages", "integer"]),
    ("transkd_base", {"csf_mid_channels": 0}, ["csf_mid_channels"]),
    ("transkd_base", {"csf_mid_channels": 64.0}, ["csf_mid_channels", "integer"]),
    ("transkd_base", {"gl_heads": 8}, ["gl_heads", "unknown"]),
    ("transkd_gl", {"gl_heads": 3}, ["gl_heads", "256"]),
    ("transkd_gl", {"gl_heads": 0}, ["gl_heads"]),
    ("transkd_gl", {"gl_kernel_size": 2}, ["gl_kernel_size", "odd"]),
    ("transkd_gl", {"gl_residual": "yes"}, ["gl_residual", "true or false"]),
    ("transkd_gl", {"pea_stages": (1, 2, 3)}, ["pea_stages", "4"]),
    ("transkd_ea", {"ea_init": (0.1,) * 7}, ["ea_init", "8"]),
    ("csf_only", {"embed_weights": (1.0,) * 4}, ["embed_weights", "unknown"]),
    ("pea_only", {"hcl_weight": 1.0}, ["hcl_weight", "unknown"]),
])
def test_bad_options_raise_one_sentence(method, options, words):
    with pytest.raises(ConfigError) as err:
        create_distiller(method, teacher_model(), create_model("segformer_b0", num_classes=5), **options)
    message = one_sentence(err)
    for word in words:
        assert word in message, (word, message)


def test_defaults_are_the_papers():
    base = get_method("transkd_base").parse_options({})
    assert (base.hcl_weight, base.embed_weights, base.pea_stages, base.csf_mid_channels) == (
        1.0, (0.1, 0.1, 0.5, 1.0), (1, 2, 3, 4), 64)
    gl = get_method("transkd_gl").parse_options({})
    assert (gl.gl_heads, gl.gl_kernel_size, gl.gl_alpha, gl.gl_beta, gl.gl_residual) == (
        8, 3, 0.5, 0.5, False)
    assert get_method("transkd_ea").parse_options({}).ea_init == pytest.approx(
        (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8))
    assert get_method("transkd_base").parse_options({"embed_weights": [1, 1, 1, 1]}).embed_weights == (
        1.0, 1.0, 1.0, 1.0)
