"""Our SegFormer computes what Hugging Face transformers' Segformer computes, given its weights.

HF is built offline from a ``SegformerConfig`` (random weights, perturbed so that every tensor is
distinct), converted with :func:`transkd.weights.convert_state_dict`, and both run in eval mode.

One known difference: HF builds every LayerNorm with PyTorch's default eps 1e-5 (it ignores
``config.layer_norm_eps``), while NVlabs SegFormer — and our default — uses 1e-6 in the block and
stage-closing LayerNorms. No config field changes HF's value, so the exact-parity tests set those
HF modules to 1e-6; ``test_eps_difference_is_the_only_gap`` measures the gap it leaves otherwise.
"""

from __future__ import annotations

import pytest
import torch

from transkd.models import create_model
from transkd.weights import convert_state_dict, export_state_dict

transformers = pytest.importorskip("transformers")

SIZES = {
    "segformer_b0": dict(hidden_sizes=[32, 64, 160, 256], depths=[2, 2, 2, 2], decoder_hidden_size=256),
    "segformer_b2": dict(hidden_sizes=[64, 128, 320, 512], depths=[3, 4, 6, 3], decoder_hidden_size=768),
}
NUM_LABELS = 19


def hf_segformer(name: str, seed: int = 0):
    """HF Segformer configured as ``name``; every weight and BatchNorm statistic randomised."""
    torch.manual_seed(seed)
    config = transformers.SegformerConfig(
        num_labels=NUM_LABELS, num_attention_heads=[1, 2, 5, 8], sr_ratios=[8, 4, 2, 1],
        mlp_ratios=[4, 4, 4, 4], patch_sizes=[7, 3, 3, 3], strides=[4, 2, 2, 2],
        hidden_act="gelu", drop_path_rate=0.1, classifier_dropout_prob=0.1, **SIZES[name])
    model = transformers.SegformerForSemanticSegmentation(config).eval()
    with torch.no_grad():
        for key, tensor in model.state_dict().items():
            if key.endswith("running_var"):
                tensor.uniform_(0.5, 2.0)
            elif tensor.is_floating_point():
                tensor.add_(torch.randn_like(tensor) * 0.05)
    return model


def align_layer_norm_eps(model, eps: float = 1e-6) -> None:
    """Give HF's block and stage-closing LayerNorms the NVlabs eps (see the module docstring)."""
    state_keys = [k.removesuffix(".weight") for k in model.state_dict() if k.endswith(".weight")]
    patched = 0
    for name in state_keys:
        module = model.get_submodule(name)
        block_norm = name.rsplit(".", 1)[-1] in ("layernorm_before", "layernorm_after",
                                                 "layer_norm_1", "layer_norm_2")
        stage_norm = name.endswith(".layer_norm") and ".blocks." not in name \
            and "patch_embeddings" not in name and "sequence_reduction" not in name
        legacy_stage_norm = ".encoder.layer_norm." in name
        if isinstance(module, torch.nn.LayerNorm) and (block_norm or stage_norm or legacy_stage_norm):
            module.eps = eps
            patched += 1
    assert patched > 0


def ours_from(hf_model, name: str):
    ours = create_model(name, num_classes=NUM_LABELS).eval()
    state = convert_state_dict(hf_model.state_dict(), ours, "auto")
    assert state.source_format == "hf" and not state.encoder_only and state.notes == []
    ours.load_state_dict(state, strict=True)
    return ours


@pytest.fixture(scope="module")
def pixels():
    return torch.randn(1, 3, 128, 160, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("name", ["segformer_b0", "segformer_b2"])
def test_logits_and_stage_features_match_hf(name, pixels):
    hf = hf_segformer(name)
    align_layer_norm_eps(hf)
    ours = ours_from(hf, name)
    with torch.no_grad():
        expected = hf(pixel_values=pixels, output_hidden_states=True)
        got = ours(pixels, return_features=True)
    assert got.logits.shape == expected.logits.shape == (1, NUM_LABELS, 32, 40)
    assert (got.logits - expected.logits).abs().max().item() < 1e-4
    assert len(expected.hidden_states) == 4
    for ours_map, hf_map in zip(got.features, expected.hidden_states):
        assert ours_map.shape == hf_map.shape
        assert (ours_map - hf_map).abs().max().item() < 1e-4
    assert expected.logits.abs().max().item() > 1e-2  # not a trivially zero comparison


def test_exported_weights_load_strictly_into_hf(pixels):
    ours = create_model("segformer_b0", num_classes=NUM_LABELS).eval()
    hf = hf_segformer("segformer_b0", seed=3)
    align_layer_norm_eps(hf)
    hf.load_state_dict(export_state_dict(ours, "hf"), strict=True)  # the installed layout
    with torch.no_grad():
        diff = (hf(pixel_values=pixels).logits - ours(pixels)).abs().max().item()
    assert diff < 1e-4


def test_legacy_layout_is_what_hf_renames_on_load(tmp_path, pixels):
    """A 4.x-layout file (as on the Hub) loads through HF's own key renaming, with nothing left over."""
    from safetensors.torch import save_file

    ours = create_model("segformer_b0", num_classes=NUM_LABELS).eval()
    hf = hf_segformer("segformer_b0")
    hf.config.save_pretrained(tmp_path)
    legacy = export_state_dict(ours, "hf", hf_layout="legacy")
    assert "segformer.encoder.block.0.0.attention.self.query.weight" in legacy
    save_file({k: v.contiguous() for k, v in legacy.items()}, tmp_path / "model.safetensors")
    loaded, info = transformers.SegformerForSemanticSegmentation.from_pretrained(
        tmp_path, output_loading_info=True, local_files_only=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    align_layer_norm_eps(loaded.eval())
    with torch.no_grad():
        assert (loaded(pixel_values=pixels).logits - ours(pixels)).abs().max().item() < 1e-4


def test_eps_difference_is_the_only_gap(pixels):
    """Without aligning eps the outputs differ, slightly: the mapping is right, the eps is not HF's."""
    hf = hf_segformer("segformer_b0")
    ours = ours_from(hf, "segformer_b0")
    with torch.no_grad():
        gap = (hf(pixel_values=pixels).logits - ours(pixels)).abs().max().item()
    assert 0 < gap < 1e-2


def test_our_layer_norm_eps_are_the_nvlabs_values():
    ours = create_model("segformer_b0", num_classes=2)
    stage = ours.encoder.stages[0]
    assert stage.patch_embed.norm.eps == 1e-5 and stage.blocks[0].attn.norm.eps == 1e-5
    assert stage.blocks[0].norm1.eps == stage.blocks[0].norm2.eps == stage.norm.eps == 1e-6
