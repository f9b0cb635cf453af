"""The TransKD authors' PVTv2 (norm-free Semantic FPN) and LVT checkpoints convert, tensor by tensor."""

from __future__ import annotations

import pytest
import torch

from tests.weights.authors_layouts import lvt_state, pvtv2_b0_authors_state
from transkd.errors import CheckpointError, ConfigError
from transkd.models import create_model
from transkd.weights import load_model, save_model
from transkd.weights.convert import convert_state_dict, export_state_dict
from transkd.weights.importer import import_checkpoint


def test_authors_lvt_student_converts_from_a_distiller_checkpoint(tmp_path):
    theirs = lvt_state(num_classes=19)
    src = tmp_path / "model_best.pth"
    torch.save({"student": theirs, "teacher": {"x": torch.zeros(1)}}, src)
    result = import_checkpoint(src, tmp_path / "lvt.safetensors")
    assert result.architecture == "lvt_mlp" and result.num_classes == 19
    assert result.mean == (0.0, 0.0, 0.0)  # the authors feed [0, 1] pixels
    model = load_model(result.path)
    enc = model.encoder.stages
    # every placement written out by hand, from the authors' module structure
    assert torch.equal(enc[0].patch_embed.proj.weight, theirs["backbone.0.0.proj.weight"])
    assert torch.equal(enc[0].blocks[1].attn.attention.weight, theirs["backbone.0.1.1.attn.attn.weight"])
    assert torch.equal(enc[0].blocks[0].attn.value.weight, theirs["backbone.0.1.0.attn.weight.weight"])
    assert torch.equal(enc[0].blocks[0].mlp.fc1.weight, theirs["backbone.0.1.0.mlp.fc1.weight"])
    assert torch.equal(enc[2].blocks[1].mlp.fc1.weight, theirs["backbone.2.1.1.mlp.fc1.weight"][:, :, 0, 0])
    assert torch.equal(enc[3].blocks[0].mlp.dwconv.dwconv.bias, theirs["backbone.3.1.0.mlp.depconv.bias"])
    assert torch.equal(enc[1].blocks[0].attn.ds.weight, theirs["backbone.1.1.0.attn.ds.weight"])
    assert torch.equal(enc[1].blocks[0].attn.sr.weight, theirs["backbone.1.1.0.attn.sr.weight"])
    assert torch.equal(model.decode_head.linear_c[3].proj.weight, theirs["linear_c4.proj.weight"])
    assert torch.equal(model.decode_head.classifier.bias, theirs["linear_pred.bias"])
    assert torch.equal(model.decode_head.fuse.bn.running_var, theirs["linear_fuse.bn.running_var"])


def test_lvt_exports_back_to_the_authors_names_exactly():
    theirs = lvt_state(num_classes=5, seed=3)
    model = create_model("lvt_mlp", num_classes=5)
    model.load_state_dict(dict(convert_state_dict(theirs, model)))
    back = export_state_dict(model, "nvlabs")
    assert set(back) == set(theirs)
    assert all(torch.equal(back[k], theirs[k]) for k in theirs)


def test_lvt_imagenet_encoder_drops_the_classifier():
    theirs = lvt_state(head=False) | {"norm.weight": torch.ones(256), "norm.bias": torch.zeros(256),
                                      "head.weight": torch.zeros(1000, 256), "head.bias": torch.zeros(1000)}
    encoder = create_model("lvt")
    state = convert_state_dict(theirs, encoder)
    encoder.load_state_dict(dict(state))
    assert any("LVT's ImageNet classifier" in n for n in state.notes)


@pytest.mark.parametrize("fmt", ["hf", "mmseg"])
def test_lvt_is_refused_in_other_namings(fmt, tmp_path):
    model = create_model("lvt_mlp", num_classes=3)
    for encoder_only in (False, True):
        with pytest.raises(CheckpointError, match="no LVT network"):
            export_state_dict(model, fmt, encoder_only=encoder_only)
    src = save_model(model, tmp_path / "lvt.safetensors")
    with pytest.raises(ConfigError, match=f"--to {fmt}: {fmt} has no LVT network"):
        import_checkpoint(src, tmp_path / ("out" if fmt == "hf" else "out.pth"), to=fmt)


def test_authors_pvtv2_fpn_converts_instead_of_being_refused(tmp_path):
    theirs = pvtv2_b0_authors_state(num_classes=19)
    src = tmp_path / "pvtv2.pth"
    torch.save({"state_dict": theirs}, src)
    result = import_checkpoint(src, tmp_path / "pvt.safetensors")
    assert result.architecture == "pvtv2_b0_authors_fpn" and result.num_classes == 19
    model = load_model(result.path)
    head = model.decode_head
    assert torch.equal(head.neck.lateral_convs[2].bias, theirs["neck.lateral_convs.2.conv.bias"])
    assert torch.equal(head.head.scale_heads[3][1].conv.weight, theirs["head.scale_heads.3.2.conv.weight"])
    assert torch.equal(head.head.scale_heads[0][0].conv.bias, theirs["head.scale_heads.0.0.conv.bias"])
    assert torch.equal(head.head.classifier.weight, theirs["head.conv_seg.weight"])
    assert torch.equal(model.encoder.stages[1].blocks[1].attn.q.weight,
                       theirs["backbone.block2.1.attn.q.weight"])
    # the BatchNorm head cannot hold these weights: a clear refusal, not a silent partial load
    with pytest.raises(CheckpointError, match="missing"):
        convert_state_dict(theirs, create_model("pvtv2_b0_fpn", num_classes=19))
