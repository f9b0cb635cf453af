"""Hugging Face transformers networks behind the network contract (``hf:<folder>``), offline."""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("transformers")

from tiny_networks import LABELS, save_hf, segformer_config, upernet_config, vit_config  # noqa: E402

from transkd import create_model, load_model  # noqa: E402
from transkd.distill import NetworkInfo  # noqa: E402
from transkd.errors import ConfigError  # noqa: E402
from transkd.models.hf import universal_log_probs  # noqa: E402
from transkd.weights.io import save_model  # noqa: E402


@pytest.fixture(scope="module")
def segformer_dir(tmp_path_factory):
    return save_hf(segformer_config(), tmp_path_factory.mktemp("segformer"))


@pytest.fixture(scope="module")
def upernet_dir(tmp_path_factory):
    return save_hf(upernet_config("convnext"), tmp_path_factory.mktemp("upernet"))


def images(batch: int = 2, size: int = 64) -> torch.Tensor:
    return torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(1))


def test_segformer_answers_like_the_bare_model(segformer_dir):
    model = create_model(f"hf:{segformer_dir}")
    bare = model.model
    x = images()
    assert model.num_classes == 5 and model.class_names == tuple(LABELS.values())
    assert torch.equal(model(x), bare(pixel_values=x).logits)  # the plain forward is the model's own
    out = model(x, return_features=True)
    hidden = bare(pixel_values=x, output_hidden_states=True).hidden_states
    assert [tuple(f.shape) for f in out.features] == [(2, c, 64 // s, 64 // s)
                                                      for c, s in zip((8, 16, 24, 32), (4, 8, 16, 32))]
    assert all(torch.equal(f, h) for f, h in zip(out.features, hidden))
    assert [tuple(e.shape) for e in out.embeddings] == [(2, 256, 8), (2, 64, 16), (2, 16, 24), (2, 4, 32)]
    assert out.grids == [(16, 16), (8, 8), (4, 4), (2, 2)]
    assert torch.equal(out.logits, model(x))
    info = NetworkInfo.of(model)
    assert info.widths == (8, 16, 24, 32) and info.strides == (4, 8, 16, 32)
    assert info.embedding_strides == (4, 8, 16, 32) and info.num_classes == 5


def test_probe_leaves_training_mode_and_hooks_alone(segformer_dir):
    model = create_model(f"hf:{segformer_dir}").train()

    def hooks() -> int:
        return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())

    NetworkInfo.of(model)
    assert all(m.training for m in model.modules())
    model(images(), return_features=True)  # transformers installs its own hooks once
    before = hooks()
    model(images(), return_features=True)
    assert hooks() == before  # ours are gone after the call


def test_upernet_convnext_features_from_the_backbone(upernet_dir):
    model = create_model(f"hf:{upernet_dir}")
    x = images()
    out = model(x, return_features=True)
    maps = model.model.backbone(x).feature_maps
    assert all(torch.equal(f, m) for f, m in zip(out.features, maps))
    assert out.embeddings == []  # a ConvNeXt stem is no patch embedding
    assert out.logits.shape == (2, 5, 64, 64) and torch.equal(out.logits, model(x))
    info = NetworkInfo.of(model)
    assert info.strides == (4, 8, 16, 32) and not info.has("embeddings")


@pytest.mark.parametrize("kind, embeddings", [("swin", 4), ("dpt", 1), ("beit", 1)])
def test_swin_and_vit_segmentors_expose_patch_embeddings(tmp_path, kind, embeddings):
    config = upernet_config("swin") if kind == "swin" else vit_config(kind)
    model = create_model(f"hf:{save_hf(config, tmp_path)}")
    out = model(images(), return_features=True)
    assert len(out.features) == 4 and len(out.embeddings) == embeddings
    for tokens, grid in zip(out.embeddings, out.grids):
        assert tokens.shape[1] == grid[0] * grid[1]
    info = NetworkInfo.of(model)
    if kind != "swin":
        assert info.embedding_strides == (16,)  # a ViT embeds once, at stride 16
        assert model.input_mean == (0.5, 0.5, 0.5)
    else:
        assert info.embedding_strides == (4, 8, 16, 32)


def test_num_classes_reheads(segformer_dir):
    model = create_model(f"hf:{segformer_dir}", num_classes=3)
    assert model.num_classes == 3 and model(images()).shape[1] == 3


def test_remote_code_and_unknown_families_are_refused(tmp_path, segformer_dir):
    config = json.loads((segformer_dir / "config.json").read_text())
    (tmp_path / "remote").mkdir()
    (tmp_path / "remote" / "config.json").write_text(json.dumps(
        {**config, "auto_map": {"AutoModel": "modeling_evil.Evil"}}))
    with pytest.raises(ConfigError) as err:
        create_model(f"hf:{tmp_path / 'remote'}")
    message = str(err.value)
    assert "\n" not in message and "never runs" in message
    (tmp_path / "bert").mkdir()
    (tmp_path / "bert" / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ConfigError, match="'bert' model"):
        create_model(f"hf:{tmp_path / 'bert'}")


@pytest.mark.parametrize("spec, mean, std", [
    ({"image_mean": [0.5, 0.4, 0.3], "image_std": [0.2, 0.2, 0.2]}, (0.5, 0.4, 0.3), (0.2, 0.2, 0.2)),
    ({"do_normalize": False}, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),
])
def test_normalisation_comes_from_the_image_processor(tmp_path, spec, mean, std):
    folder = save_hf(segformer_config(), tmp_path / "m")
    (folder / "preprocessor_config.json").write_text(json.dumps(spec))
    model = create_model(f"hf:{folder}")
    assert (model.input_mean, model.input_std) == (mean, std)


def test_saved_hf_student_reloads_from_its_file_alone(tmp_path):
    folder = save_hf(segformer_config(), tmp_path / "m")
    model = create_model(f"hf:{folder}", num_classes=3).eval()
    path = save_model(model, tmp_path / "student.safetensors")
    for file in folder.iterdir():
        file.unlink()
    folder.rmdir()  # the folder is gone: the file alone must rebuild the network
    again = load_model(path).eval()
    x = images()
    assert again.model_name == model.model_name and again.num_classes == 3
    assert torch.equal(again(x), model(x))


def test_universal_log_probs_match_the_semantic_postprocessing():
    generator = torch.Generator().manual_seed(0)
    classes, masks = torch.randn(2, 6, 4, generator=generator), torch.randn(2, 6, 5, 7, generator=generator)
    expected = torch.zeros(2, 3, 5, 7)
    for q in range(6):  # Σ_q softmax(class_q) without "no object" × sigmoid(mask_q)
        probs = torch.softmax(classes[:, q], dim=-1)[:, :3]
        expected += probs[:, :, None, None] * torch.sigmoid(masks[:, q])[:, None]
    expected = expected / expected.sum(1, keepdim=True)
    result = universal_log_probs(classes, masks)
    assert torch.allclose(result.exp(), expected, atol=1e-6)


def test_mask2former_teacher(tmp_path):
    pytest.importorskip("scipy")  # transformers builds the Mask2Former loss, which needs scipy
    from transformers import Mask2FormerConfig, SwinConfig

    config = Mask2FormerConfig(
        backbone_config=SwinConfig(embed_dim=8, depths=[1, 1, 1, 1], num_heads=[1, 1, 1, 1], window_size=4,
                                   out_features=["stage1", "stage2", "stage3", "stage4"]),
        feature_size=32, mask_feature_size=32, hidden_dim=32, encoder_feedforward_dim=32, dim_feedforward=32,
        encoder_layers=1, decoder_layers=2, num_attention_heads=2, num_queries=6, num_labels=5)
    model = create_model(f"hf:{save_hf(config, tmp_path)}")
    with torch.no_grad():
        out = model(images(), return_features=True)
    assert out.logits.shape == (2, 5, 16, 16)
    assert torch.allclose(out.logits.exp().sum(1), torch.ones(2, 16, 16), atol=1e-5)
    assert NetworkInfo.of(model).strides == (4, 8, 16, 32)
