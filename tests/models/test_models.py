"""Every registered segmentor honours one contract; encoders stand alone; bad input fails clearly."""

from __future__ import annotations

import math

import pytest
import torch

from transkd.errors import ConfigError
from transkd.models import (
    EncoderOutput,
    SegmentationOutput,
    UnknownModelError,
    create_model,
    list_models,
)
from transkd.weights import load_model, save_model

SEGMENTORS = list_models(kind="segmentor")
NUM_CLASSES = 5
ODD = (97, 131)  # odd, non-square, not a multiple of 32
SMALL = (33, 45)
DEEP = ("b3", "b4", "b5")  # 45-85 M parameters: marked slow, and one sample per backward pass


def is_deep(name: str) -> bool:
    return name.removesuffix("_fpn").removesuffix("_authors")[-2:] in DEEP


SEGMENTOR_PARAMS = [pytest.param(n, marks=pytest.mark.slow) if is_deep(n) else n for n in SEGMENTORS]


def stage_sizes(height: int, width: int) -> list[tuple[int, int]]:
    """Spatial sizes of the four stages: 7×7/4 then 3×3/2 convolutions, each rounding up."""
    sizes, h, w = [], math.ceil(height / 4), math.ceil(width / 4)
    for _ in range(4):
        sizes.append((h, w))
        h, w = math.ceil(h / 2), math.ceil(w / 2)
    return sizes


def test_every_family_and_size_is_registered():
    sizes = range(6)
    assert set(SEGMENTORS) == ({f"segformer_b{i}" for i in sizes} | {f"pvtv2_b{i}_fpn" for i in sizes}
                               | {f"pvtv2_b{i}_authors_fpn" for i in sizes} | {"lvt_mlp"})
    assert set(list_models(kind="encoder")) == ({f"mit_b{i}" for i in sizes}
                                                | {f"pvtv2_b{i}" for i in sizes} | {"lvt"})


@pytest.fixture(scope="class")
def net(name):
    """Built once per segmentor; the class runs every check on it before the next is built."""
    torch.manual_seed(0)
    return create_model(name, num_classes=NUM_CLASSES)


@pytest.mark.parametrize("name", SEGMENTOR_PARAMS, scope="class")
class TestSegmentor:
    def test_identity(self, net, name):
        assert net.model_name == name and net.num_classes == NUM_CLASSES
        assert net.widths == net.encoder.widths and len(net.widths) == 4

    def test_forward_backward_at_an_odd_size(self, net, name):
        batch = 1 if is_deep(name) else 2
        net.train()
        logits = net(torch.randn(batch, 3, *ODD))
        assert logits.shape == (batch, NUM_CLASSES, math.ceil(ODD[0] / 4), math.ceil(ODD[1] / 4))
        net.zero_grad(set_to_none=True)
        logits.square().mean().backward()
        without_grad = [n for n, p in net.named_parameters() if p.grad is None]
        assert without_grad == []
        assert all(torch.isfinite(p.grad).all() for p in net.parameters())
        net.zero_grad(set_to_none=True)

    def test_features_and_embeddings(self, net):
        net.eval()
        x = torch.randn(1, 3, *SMALL)
        with torch.no_grad():
            out = net(x, return_features=True)
            plain = net(x)
        assert isinstance(out, SegmentationOutput)
        assert torch.equal(out.logits, plain)
        assert len(out.features) == len(out.embeddings) == 4
        for feature, embedding, width, (h, w) in zip(out.features, out.embeddings, net.widths,
                                                     stage_sizes(*SMALL)):
            assert feature.shape == (1, width, h, w)
            assert embedding.shape == (1, h * w, width)

    def test_return_features_adds_nothing_and_default_is_a_tensor(self, net):
        net.eval()
        keys = list(net.state_dict())
        count = sum(p.numel() for p in net.parameters())
        x = torch.randn(1, 3, *SMALL)
        with torch.no_grad():
            net(x, return_features=True)
            default = net(x)
        assert type(default) is torch.Tensor
        assert list(net.state_dict()) == keys
        assert sum(p.numel() for p in net.parameters()) == count

    def test_eval_is_deterministic(self, net):
        net.eval()
        x = torch.randn(1, 3, *SMALL)
        with torch.no_grad():
            assert torch.equal(net(x), net(x))

    def test_save_load_round_trip_gives_identical_outputs(self, net, name, tmp_path):
        net.eval()
        path = save_model(net, tmp_path / f"{name}.safetensors")
        loaded = load_model(path).eval()
        assert loaded.model_name == name and loaded.num_classes == NUM_CLASSES
        x = torch.randn(1, 3, *SMALL)
        with torch.no_grad():
            assert torch.equal(loaded(x), net(x))


@pytest.mark.parametrize(("name", "expected"), [("segformer_b0", 3_719_284), ("segformer_b2", 27_362_004)])
def test_parameter_counts_match_the_paper(name, expected):
    """19 Cityscapes classes + 1 void logit = 20 outputs (paper: 3.72 M and 27.36 M)."""
    net = create_model(name, num_classes=20)
    assert sum(p.numel() for p in net.parameters()) == expected


def test_lvt_encoder_size_matches_the_lvt_paper():
    """LVT (Yang et al. 2022): widths 64/64/160/256, two blocks a stage, a 3.4 M encoder; with the
    All-MLP head on ADE20K's 150 classes 3.9 M, as the paper's semantic-segmentation table lists."""
    encoder = create_model("lvt")
    assert encoder.widths == (64, 64, 160, 256) and encoder.config.depths == (2, 2, 2, 2)
    assert sum(p.numel() for p in encoder.parameters()) == 3_429_092
    segmentor = create_model("lvt_mlp", num_classes=150)
    assert round(sum(p.numel() for p in segmentor.parameters()) / 1e6, 1) == 3.9


def test_authors_fpn_head_has_biases_and_no_norm():
    ours, authors = (create_model(n, num_classes=19) for n in ("pvtv2_b0_fpn", "pvtv2_b0_authors_fpn"))
    assert not any(".bn." in k for k in authors.decode_head.state_dict())
    assert any(".bn." in k for k in ours.decode_head.state_dict())
    tower = authors.decode_head.head.scale_heads[0][0]
    assert tower.conv.bias is not None and not hasattr(tower, "bn")


@pytest.mark.parametrize(("name", "widths"), [
    ("lvt", (64, 64, 160, 256)),
    ("mit_b0", (32, 64, 160, 256)), ("mit_b2", (64, 128, 320, 512)),
    ("pvtv2_b0", (32, 64, 160, 256)), ("pvtv2_b2", (64, 128, 320, 512)),
])
def test_encoder_alone(name, widths):
    encoder = create_model(name).eval()
    assert encoder.widths == widths
    with torch.no_grad():
        out = encoder(torch.randn(2, 3, *SMALL), return_embeddings=True)
        bare = encoder(torch.randn(2, 3, *SMALL))
    assert isinstance(out, EncoderOutput) and bare.embeddings is None
    for feature, embedding, width, (h, w) in zip(out.features, out.embeddings, widths, stage_sizes(*SMALL)):
        assert feature.shape == (2, width, h, w) and embedding.shape == (2, h * w, width)
    with pytest.raises(ConfigError, match="encoder and takes no num_classes"):
        create_model(name, num_classes=3)


def test_encoder_matches_its_segmentor_encoder():
    torch.manual_seed(0)
    encoder = create_model("pvtv2_b0").eval()
    segmentor = create_model("pvtv2_b0_fpn", num_classes=2).eval()
    segmentor.encoder.load_state_dict(encoder.state_dict())
    x = torch.randn(1, 3, *SMALL)
    with torch.no_grad():
        expected = encoder(x).features
        got = segmentor(x, return_features=True).features
    assert all(torch.equal(a, b) for a, b in zip(got, expected))


def one_sentence(err: pytest.ExceptionInfo) -> str:
    message = str(err.value)
    assert message and "\n" not in message
    return message


def test_unknown_model_lists_known_names():
    with pytest.raises(UnknownModelError) as err:
        create_model("segformer_b9", num_classes=2)
    message = one_sentence(err)
    assert "'segformer_b9'" in message and "segformer_b0" in message and "mit_b5" in message
    assert isinstance(err.value, ConfigError)


@pytest.mark.parametrize("bad", [0, -1, "3", True, 2.0])
def test_bad_num_classes(bad):
    with pytest.raises(ConfigError, match="num_classes must be a positive integer") as err:
        create_model("segformer_b0", num_classes=bad)
    assert repr(bad) in one_sentence(err)


def test_segmentor_needs_num_classes():
    with pytest.raises(ConfigError, match="pass num_classes") as err:
        create_model("pvtv2_b0_fpn")
    one_sentence(err)


@pytest.mark.parametrize(("shape", "pattern"), [
    ((3, 64, 64), r"must be 4-D .* got shape \(3, 64, 64\)"),
    ((1, 1, 64, 64), r"must have 3 channels, got 1"),
    ((1, 4, 64, 64), r"must have 3 channels, got 4"),
])
def test_bad_input_shapes(shape, pattern):
    net = create_model("segformer_b0", num_classes=2)
    with pytest.raises(ValueError, match=pattern) as err:
        net(torch.zeros(shape))
    one_sentence(err)


def test_non_tensor_input():
    with pytest.raises(TypeError, match="must be a torch.Tensor, got list") as err:
        create_model("segformer_b0", num_classes=2)([[0.0]])
    one_sentence(err)


@pytest.mark.parametrize("name", ["segformer_b0", "pvtv2_b0_fpn"])
@pytest.mark.parametrize("channels_last", [False, True])
def test_training_step_on_device(name, channels_last, device):
    """Forward and backward on the device, in channels-last memory when asked, and under the
    autocast a training run uses there (bf16); logits and gradients stay finite and on the device."""
    torch.manual_seed(0)
    net = create_model(name, num_classes=NUM_CLASSES).to(device).train()
    x = torch.randn(2, 3, *ODD, device=device)
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.autocast(device.type, dtype=torch.bfloat16):
        logits = net(x)
    assert logits.device == x.device
    assert logits.shape == (2, NUM_CLASSES, math.ceil(ODD[0] / 4), math.ceil(ODD[1] / 4))
    logits.float().square().mean().backward()
    assert all(p.grad is not None and p.grad.device == x.device and torch.isfinite(p.grad).all()
               for p in net.parameters())


def test_device_matches_cpu_in_fp32(device, monkeypatch):
    """The same weights and input give the same logits on the device as on the CPU (fp32, up to
    kernel rounding), so a CUDA run trains the network the CPU tests check. cuDNN's TF32
    convolutions (on by default) round to 10 mantissa bits, so they are off here."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    torch.manual_seed(0)
    net = create_model("segformer_b0", num_classes=NUM_CLASSES).eval()
    x = torch.randn(1, 3, *SMALL)
    with torch.no_grad():
        want = net(x)
        got = net.to(device)(x.to(device)).cpu()
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
