"""Key maps to and from the NVlabs/authors', Hugging Face and mmseg namings: exact and strict."""

from __future__ import annotations

import pickle

import pytest
import torch

from transkd.errors import CheckpointError
from transkd.models import create_model
from transkd.weights import (
    convert_state_dict,
    detect_format,
    export_state_dict,
    load_converted,
    read_weights,
    unwrap_state_dict,
)

_BUILT: dict[str, torch.nn.Module] = {}


def model(name: str, num_classes: int | None = 19) -> torch.nn.Module:
    """A random-init model whose BatchNorm buffers are random too, so every tensor is distinct."""
    key = f"{name}/{num_classes}"
    if key not in _BUILT:
        torch.manual_seed(len(_BUILT))
        net = fresh(name, num_classes)
        with torch.no_grad():
            for buf_name, buf in net.named_buffers():
                if buf_name.endswith("running_mean"):
                    buf.normal_()
                elif buf_name.endswith("running_var"):
                    buf.uniform_(0.5, 2.0)
                elif buf_name.endswith("num_batches_tracked"):
                    buf.fill_(1234)
        _BUILT[key] = net
    return _BUILT[key]


def fresh(name: str, num_classes: int | None = 19) -> torch.nn.Module:
    return create_model(name) if num_classes is None else create_model(name, num_classes=num_classes)


def assert_same_state(got: dict, expected: dict) -> None:
    assert set(got) == set(expected)
    for key, tensor in expected.items():
        assert torch.equal(got[key], tensor), key


ROUND_TRIPS = [
    ("segformer_b0", "nvlabs", "auto"), ("segformer_b0", "hf", "legacy"), ("segformer_b0", "hf", "stages"),
    ("segformer_b0", "transkd", "auto"),
    *(pytest.param("segformer_b2", fmt, layout, marks=pytest.mark.slow)  # 27 M parameters
      for fmt, layout in (("nvlabs", "auto"), ("hf", "legacy"), ("hf", "stages"))),
    ("pvtv2_b0_fpn", "nvlabs", "auto"), ("pvtv2_b0_fpn", "mmseg", "auto"),
    ("pvtv2_b0_fpn", "transkd", "auto"),
]


@pytest.mark.parametrize(("name", "fmt", "layout"), ROUND_TRIPS)
def test_round_trip_is_bit_identical(name, fmt, layout):
    ours = model(name).state_dict()
    foreign = export_state_dict(model(name), fmt, hf_layout=layout)
    back = convert_state_dict(foreign, fresh(name))
    assert back.source_format == fmt and not back.encoder_only and back.notes == []
    assert_same_state(back, ours)
    again = export_state_dict(_loaded(fresh(name), back), fmt, hf_layout=layout)
    assert_same_state(again, foreign)


def _loaded(net, state):
    net.load_state_dict(state, strict=True)
    return net


def test_nvlabs_to_hf_to_nvlabs_chain():
    name = "segformer_b0"
    nvlabs = export_state_dict(model(name), "nvlabs")
    via_ours = _loaded(fresh(name), convert_state_dict(nvlabs, fresh(name), "nvlabs"))
    hf = export_state_dict(via_ours, "hf", hf_layout="legacy")
    via_hf = _loaded(fresh(name), convert_state_dict(hf, fresh(name), "hf"))
    assert_same_state(export_state_dict(via_hf, "nvlabs"), nvlabs)


def test_nvlabs_names_and_values():
    net = model("segformer_b0")
    ours, nv = net.state_dict(), export_state_dict(net, "nvlabs")
    pairs = {
        "backbone.patch_embed1.proj.weight": "encoder.stages.0.patch_embed.proj.weight",
        "backbone.patch_embed4.norm.bias": "encoder.stages.3.patch_embed.norm.bias",
        "backbone.block1.0.norm1.weight": "encoder.stages.0.blocks.0.norm1.weight",
        "backbone.block2.1.attn.q.weight": "encoder.stages.1.blocks.1.attn.q.weight",
        "backbone.block3.0.attn.kv.bias": "encoder.stages.2.blocks.0.attn.kv.bias",
        "backbone.block1.1.attn.sr.weight": "encoder.stages.0.blocks.1.attn.sr.weight",
        "backbone.block1.1.attn.norm.weight": "encoder.stages.0.blocks.1.attn.norm.weight",
        "backbone.block4.1.attn.proj.weight": "encoder.stages.3.blocks.1.attn.proj.weight",
        "backbone.block4.0.mlp.dwconv.dwconv.weight": "encoder.stages.3.blocks.0.mlp.dwconv.dwconv.weight",
        "backbone.block2.0.mlp.fc2.bias": "encoder.stages.1.blocks.0.mlp.fc2.bias",
        "backbone.norm3.weight": "encoder.stages.2.norm.weight",
        "decode_head.linear_c4.proj.weight": "decode_head.linear_c.3.proj.weight",
        "decode_head.linear_c1.proj.bias": "decode_head.linear_c.0.proj.bias",
        "decode_head.linear_fuse.conv.weight": "decode_head.fuse.conv.weight",
        "decode_head.linear_fuse.bn.running_var": "decode_head.fuse.bn.running_var",
        "decode_head.linear_pred.weight": "decode_head.classifier.weight",
    }
    for theirs, mine in pairs.items():
        assert torch.equal(nv[theirs], ours[mine]), theirs
    assert "backbone.block4.0.attn.sr.weight" not in nv  # sr ratio 1 in the last stage


def test_hf_splits_key_and_value():
    net = model("segformer_b0")
    kv = net.state_dict()["encoder.stages.1.blocks.0.attn.kv.weight"]
    for layout, key, value in (("legacy", "segformer.encoder.block.1.0.attention.self.key.weight",
                                "segformer.encoder.block.1.0.attention.self.value.weight"),
                               ("stages", "segformer.stages.1.blocks.0.attention.k_proj.weight",
                                "segformer.stages.1.blocks.0.attention.v_proj.weight")):
        hf = export_state_dict(net, "hf", hf_layout=layout)
        assert torch.equal(hf[key], kv[:64]) and torch.equal(hf[value], kv[64:])


def test_mmseg_names_and_values():
    net = model("pvtv2_b0_fpn")
    ours, mm = net.state_dict(), export_state_dict(net, "mmseg")
    block = "encoder.stages.2.blocks.1"
    qkv = torch.cat([ours[f"{block}.attn.q.weight"], ours[f"{block}.attn.kv.weight"]])
    assert torch.equal(mm["backbone.layers.2.1.1.attn.attn.in_proj_weight"], qkv)
    assert torch.equal(mm["backbone.layers.2.1.1.attn.attn.out_proj.bias"], ours[f"{block}.attn.proj.bias"])
    fc1 = mm["backbone.layers.2.1.1.ffn.layers.0.weight"]
    assert fc1.shape == (640, 160, 1, 1) and torch.equal(fc1[:, :, 0, 0], ours[f"{block}.mlp.fc1.weight"])
    assert torch.equal(mm["backbone.layers.2.1.1.ffn.layers.4.bias"], ours[f"{block}.mlp.fc2.bias"])
    assert torch.equal(mm["backbone.layers.0.0.projection.weight"],
                       ours["encoder.stages.0.patch_embed.proj.weight"])
    assert torch.equal(mm["backbone.layers.3.2.weight"], ours["encoder.stages.3.norm.weight"])
    # Semantic FPN: ConvModule ".conv", Upsample layers interleaved in levels 1-3, conv_seg classifier.
    assert torch.equal(mm["neck.lateral_convs.2.conv.weight"],
                       ours["decode_head.neck.lateral_convs.2.weight"])
    assert torch.equal(mm["neck.fpn_convs.0.conv.bias"], ours["decode_head.neck.fpn_convs.0.bias"])
    assert torch.equal(mm["decode_head.scale_heads.0.0.conv.weight"],
                       ours["decode_head.head.scale_heads.0.0.conv.weight"])
    assert torch.equal(mm["decode_head.scale_heads.3.4.bn.running_mean"],
                       ours["decode_head.head.scale_heads.3.2.bn.running_mean"])
    assert torch.equal(mm["decode_head.conv_seg.weight"], ours["decode_head.head.classifier.weight"])
    assert not any(k.startswith("decode_head.scale_heads.3.1.") for k in mm)


def test_authors_flat_naming_with_module_prefix_and_container():
    nvlabs = export_state_dict(model("segformer_b0"), "nvlabs")
    flat = {"module." + k.removeprefix("backbone.").removeprefix("decode_head."): v
            for k, v in nvlabs.items()}
    assert "module.linear_fuse.bn.weight" in flat and "module.block1.0.attn.q.weight" in flat
    for container in ({"state_dict": flat, "meta": {"epoch": 3}}, {"model": flat}, {"student": flat}):
        back = convert_state_dict(container, fresh("segformer_b0"))
        assert back.source_format == "nvlabs"
        assert_same_state(back, model("segformer_b0").state_dict())


def test_nvlabs_unused_conv_seg_is_dropped_with_a_note():
    nvlabs = export_state_dict(model("segformer_b0"), "nvlabs")
    nvlabs["decode_head.conv_seg.weight"] = torch.zeros(19, 256, 1, 1)
    nvlabs["decode_head.conv_seg.bias"] = torch.zeros(19)
    back = convert_state_dict(nvlabs, fresh("segformer_b0"))
    assert_same_state(back, model("segformer_b0").state_dict())
    assert any("decode_head.conv_seg.weight" in note and "unused" in note for note in back.notes)


def test_imagenet_encoder_file_loads_into_encoder_or_segmentor_encoder():
    encoder = model("mit_b0", None)
    imagenet = export_state_dict(encoder, "nvlabs")
    assert "patch_embed1.proj.weight" in imagenet and not any(k.startswith("backbone.") for k in imagenet)
    imagenet["head.weight"], imagenet["head.bias"] = torch.randn(1000, 256), torch.randn(1000)

    into_encoder = convert_state_dict(imagenet, fresh("mit_b0", None))
    assert_same_state(into_encoder, encoder.state_dict())
    assert any("head.weight" in n and "ImageNet" in n for n in into_encoder.notes)

    segmentor = fresh("segformer_b0")
    head_before = {k: v.clone() for k, v in segmentor.decode_head.state_dict().items()}
    loaded = load_converted(segmentor, imagenet)
    assert loaded.encoder_only and all(k.startswith("encoder.") for k in loaded)
    assert_same_state(segmentor.encoder.state_dict(), encoder.state_dict())
    assert_same_state(segmentor.decode_head.state_dict(), head_before)


def test_segmentor_checkpoint_into_encoder_drops_the_head_with_a_note():
    hf = export_state_dict(model("segformer_b0"), "hf", hf_layout="legacy")
    back = convert_state_dict(hf, fresh("mit_b0", None))
    assert_same_state(back, model("segformer_b0").encoder.state_dict())
    assert any("decode-head" in n for n in back.notes)


def test_mmseg_segformer_head_is_refused_but_backbone_loads():
    mm = export_state_dict(model("segformer_b0"), "mmseg", encoder_only=True)
    assert "backbone.layers.1.1.0.attn.attn.in_proj_bias" in mm
    mm.update({"decode_head.convs.0.conv.weight": torch.zeros(256, 32, 1, 1),
               "decode_head.fusion_conv.conv.weight": torch.zeros(256, 1024, 1, 1),
               "decode_head.conv_seg.weight": torch.zeros(19, 256, 1, 1)})
    with pytest.raises(CheckpointError, match="SegformerHead.*BatchNorm.*encoder_only=True") as err:
        convert_state_dict(mm, fresh("segformer_b0"))
    assert "\n" not in str(err.value)
    back = convert_state_dict(mm, fresh("segformer_b0"), encoder_only=True)
    assert back.encoder_only and back.source_format == "mmseg"
    assert_same_state({k.removeprefix("encoder."): v for k, v in back.items()},
                      model("segformer_b0").encoder.state_dict())
    with pytest.raises(CheckpointError, match="cannot export segformer_b0 in mmseg naming"):
        export_state_dict(model("segformer_b0"), "mmseg")


def test_hf_has_no_fpn_head():
    with pytest.raises(CheckpointError, match="All-MLP head"):
        export_state_dict(model("pvtv2_b0_fpn"), "hf")
    encoder_only = export_state_dict(model("pvtv2_b0_fpn"), "hf", hf_layout="stages", encoder_only=True)
    assert all(k.startswith("segformer.stages.") for k in encoder_only)


def test_refusal_lists_missing_and_unexpected_keys():
    nvlabs = export_state_dict(model("segformer_b0"), "nvlabs")
    del nvlabs["backbone.block1.0.attn.q.weight"]
    nvlabs["backbone.block1.0.attn.extra.weight"] = torch.zeros(3)
    with pytest.raises(CheckpointError) as err:
        convert_state_dict(nvlabs, fresh("segformer_b0"), name="teacher.pth")
    message = str(err.value)
    assert "teacher.pth" in message and "nvlabs" in message and "\n" not in message
    assert "1 missing (backbone.block1.0.attn.q.weight)" in message
    assert "1 unexpected (backbone.block1.0.attn.extra.weight)" in message


def test_hf_missing_value_is_named():
    hf = export_state_dict(model("segformer_b0"), "hf", hf_layout="stages")
    del hf["segformer.stages.2.blocks.1.attention.v_proj.bias"]
    missing = r"missing \(segformer\.stages\.2\.blocks\.1\.attention\.v_proj\.bias\)"
    with pytest.raises(CheckpointError, match=missing):
        convert_state_dict(hf, fresh("segformer_b0"))


def test_shape_mismatch_is_refused():
    nineteen = export_state_dict(model("segformer_b0"), "nvlabs")
    misshaped = r"wrong shape \(decode_head\.linear_pred\.bias \(19,\) vs \(20,\)"
    with pytest.raises(CheckpointError, match=misshaped):
        convert_state_dict(nineteen, fresh("segformer_b0", 20))
    b2 = export_state_dict(model("segformer_b2"), "hf", hf_layout="legacy")
    with pytest.raises(CheckpointError, match="wrong shape"):
        convert_state_dict(b2, fresh("segformer_b0"))  # b2 has more blocks and wider stages


def test_mmseg_fused_qkv_with_a_wrong_shape_is_refused():
    mm = export_state_dict(model("pvtv2_b0_fpn"), "mmseg")
    mm["backbone.layers.0.1.0.attn.attn.in_proj_weight"] = torch.zeros(64, 32)
    with pytest.raises(CheckpointError, match=r"in_proj_weight \(64, 32\) vs \(96, 32\)"):
        convert_state_dict(mm, fresh("pvtv2_b0_fpn"))


def test_authors_bn_free_fpn_head_is_refused():
    """The authors' PVTv2 FPN head has conv biases and no BatchNorm: not our head, so refused."""
    nvlabs = export_state_dict(model("pvtv2_b0_fpn"), "nvlabs")
    authors = {}
    for key, value in nvlabs.items():
        if ".bn." in key:
            continue
        authors[key.replace("decode_head.", "head.")] = value
        if key.endswith(".conv.weight") and "scale_heads" in key:
            authors[key.replace("decode_head.", "head.").replace("weight", "bias")] = torch.zeros(128)
    refused = (r"missing \(decode_head\.scale_heads\.0\.0\.bn\.bias.*"
               r"unexpected \(head\.scale_heads\.0\.0\.conv\.bias")
    with pytest.raises(CheckpointError, match=refused):
        convert_state_dict(authors, fresh("pvtv2_b0_fpn"))


def test_missing_batchnorm_counter_is_filled_with_a_note():
    nvlabs = export_state_dict(model("segformer_b0"), "nvlabs")
    del nvlabs["decode_head.linear_fuse.bn.num_batches_tracked"]
    back = convert_state_dict(nvlabs, fresh("segformer_b0"))
    assert back["decode_head.fuse.bn.num_batches_tracked"].item() == 0
    assert any("num_batches_tracked" in n for n in back.notes)


def test_detection_and_unwrapping():
    sd = model("segformer_b0").state_dict()
    assert detect_format(sd) == "transkd"
    assert detect_format(export_state_dict(model("segformer_b0"), "hf", hf_layout="stages")) == "hf"
    assert detect_format(export_state_dict(model("pvtv2_b0_fpn"), "mmseg")) == "mmseg"
    assert detect_format(export_state_dict(model("mit_b0", None), "nvlabs")) == "nvlabs"
    with pytest.raises(CheckpointError, match="cannot tell which naming.*source="):
        detect_format({"foo.weight": torch.zeros(1)})
    assert list(unwrap_state_dict({"state_dict": {"module.module.a": torch.zeros(1)}})) == ["a"]
    with pytest.raises(CheckpointError, match="top-level keys are epoch, optimizer"):
        unwrap_state_dict({"epoch": 3, "optimizer": {"lr": 0.1}})
    with pytest.raises(CheckpointError, match="mixes tensors with other values under epoch"):
        unwrap_state_dict({"a": torch.zeros(1), "epoch": 3})
    with pytest.raises(CheckpointError, match="twice"):
        unwrap_state_dict({"a": torch.zeros(1), "module.a": torch.zeros(1)})
    with pytest.raises(CheckpointError, match="two names for one tensor"):
        convert_state_dict({"backbone.patch_embed1.proj.weight": torch.zeros(1),
                            "patch_embed1.proj.weight": torch.zeros(1)}, fresh("mit_b0", None))
    with pytest.raises(CheckpointError, match="unknown weight naming 'timm'"):
        convert_state_dict(sd, fresh("segformer_b0"), source="timm")
    with pytest.raises(CheckpointError, match="unknown export format"):
        export_state_dict(model("segformer_b0"), "onnx")


def test_plain_pth_loads_weights_only(tmp_path):
    path = tmp_path / "segformer.b0.pth"
    nvlabs = export_state_dict(model("segformer_b0"), "nvlabs")
    torch.save({"state_dict": nvlabs, "meta": {"iter": 160000}}, path)
    assert "state_dict" in read_weights(path)
    net = fresh("segformer_b0")
    state = load_converted(net, path)
    assert state.source_format == "nvlabs"
    assert_same_state(net.state_dict(), model("segformer_b0").state_dict())


class Payload:
    """Stands in for arbitrary code a pickle could run on load."""


def test_pickled_objects_are_refused(tmp_path):
    with_object = tmp_path / "with_object.pth"
    torch.save({"state_dict": {"a": torch.zeros(1)}, "payload": Payload()}, with_object)
    with pytest.raises(CheckpointError, match="with_object.pth cannot be loaded safely"):
        read_weights(with_object)
    raw_pickle = tmp_path / "raw.pkl"
    raw_pickle.write_bytes(pickle.dumps(Payload(), protocol=2))
    with pytest.raises(CheckpointError, match="raw.pkl cannot be loaded safely"):
        load_converted(fresh("segformer_b0"), raw_pickle)


def test_safetensors_export_can_be_reimported(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in export_state_dict(model("segformer_b0"), "hf").items()}, path)
    net = fresh("segformer_b0")
    assert load_converted(net, path).source_format == "hf"
    assert_same_state(net.state_dict(), model("segformer_b0").state_dict())
