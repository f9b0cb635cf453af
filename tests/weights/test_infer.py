"""Reading foreign checkpoints and naming the registered model their tensors describe."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from transkd.errors import CheckpointError
from transkd.models import create_model, list_models
from transkd.weights import export_state_dict, unwrap_state_dict
from transkd.weights.infer import (
    Structure,
    encoder_configs,
    encoder_of,
    hf_class_names,
    input_normalization,
    match_architecture,
    read_source,
    select_student,
    structure_from_hf_config,
    structure_from_state,
)

_BUILT: dict[str, torch.nn.Module] = {}


def model(name: str, num_classes: int | None = 19) -> torch.nn.Module:
    key = f"{name}/{num_classes}"
    if key not in _BUILT:
        torch.manual_seed(0)
        _BUILT[key] = create_model(name) if num_classes is None else \
            create_model(name, num_classes=num_classes)
    return _BUILT[key]


INFERENCE = [
    ("segformer_b0", "nvlabs", "legacy", "stage widths 32/64/160/256, blocks 2/2/2/2, MLP ratio 4/4/4/4, "
     "SR ratio 8/4/2/1, All-MLP head D=256, 7 classes"),
    ("segformer_b0", "hf", "stages", "All-MLP head D=256, 7 classes"),
    ("segformer_b0", "transkd", "legacy", "stage widths 32/64/160/256"),
    ("segformer_b2", "nvlabs", "legacy", "stage widths 64/128/320/512, blocks 3/4/6/3, MLP ratio 4/4/4/4, "
     "SR ratio 8/4/2/1, All-MLP head D=768, 7 classes"),
    ("segformer_b2", "hf", "legacy", "blocks 3/4/6/3"),
    ("pvtv2_b0_fpn", "nvlabs", "legacy", "stage widths 32/64/160/256, blocks 2/2/2/2, MLP ratio 8/8/4/4, "
     "SR ratio 8/4/2/1, Semantic FPN head (256 channels), 7 classes"),
    ("pvtv2_b0_fpn", "mmseg", "legacy", "MLP ratio 8/8/4/4"),
]


@pytest.mark.parametrize(("name", "naming", "layout", "described"), INFERENCE)
def test_architecture_is_read_off_the_tensors(name, naming, layout, described):
    state = export_state_dict(model(name, 7), naming, hf_layout=layout)
    structure = structure_from_state(state, naming)
    assert described in structure.describe()
    assert structure.num_classes == 7
    assert match_architecture(structure) == name
    assert match_architecture(structure, encoder_only=True) == encoder_of(name)


def test_imagenet_encoder_file_is_an_encoder():
    imagenet = export_state_dict(model("mit_b0", None), "nvlabs")
    imagenet["head.weight"], imagenet["head.bias"] = torch.zeros(1000, 256), torch.zeros(1000)
    structure = structure_from_state(imagenet, "nvlabs")
    assert structure.head is None and structure.num_classes is None
    assert "no decode head" in structure.describe()
    assert match_architecture(structure) == "mit_b0"


def test_b5_encoders_are_alike_so_the_head_decides():
    b5 = Structure((64, 128, 320, 512), (3, 6, 40, 3), (4.0,) * 4, (8, 4, 2, 1))
    with pytest.raises(CheckpointError, match="fit mit_b5 and pvtv2_b5 alike; pass --model"):
        match_architecture(b5)
    segformer = Structure(b5.widths, b5.depths, b5.mlp_ratios, b5.sr_ratios, "segformer", 768, 19)
    fpn = Structure(b5.widths, b5.depths, b5.mlp_ratios, b5.sr_ratios, "fpn", 256, 19)
    assert match_architecture(segformer) == "segformer_b5"
    assert match_architecture(fpn) == "pvtv2_b5_fpn"


def test_unregistered_shapes_are_refused_with_the_known_encoders():
    odd = Structure((32, 64, 160, 256), (2, 2, 2, 2), (4.0,) * 4, (8, 4, 2, 1), num_heads=(2, 2, 5, 8))
    with pytest.raises(CheckpointError, match=r"heads 2/2/5/8.*known encoders: lvt, mit_b0"):
        match_architecture(odd)
    fpn_on_mit = Structure((64, 128, 320, 512), (3, 4, 6, 3), (4.0,) * 4, (8, 4, 2, 1), "fpn", 256, 19)
    with pytest.raises(CheckpointError, match="pairs encoder mit_b2 with a fpn head"):
        match_architecture(fpn_on_mit)
    with pytest.raises(CheckpointError, match="0 of the 4 stage patch embeddings"):
        structure_from_state({"linear_pred.weight": torch.zeros(2, 2, 1, 1)}, "nvlabs", "x.pth")


def test_every_segmentor_names_a_registered_encoder():
    configs = encoder_configs()
    for name in list_models(kind="segmentor"):
        assert encoder_of(name) in configs
    assert model("segformer_b0").encoder.config == configs[encoder_of("segformer_b0")]
    assert model("pvtv2_b0_fpn").encoder.config == configs[encoder_of("pvtv2_b0_fpn")]
    assert encoder_of("mit_b3") == "mit_b3"


def _authors_flat(name: str = "segformer_b0", num_classes: int = 19) -> dict[str, torch.Tensor]:
    nvlabs = export_state_dict(model(name, num_classes), "nvlabs")
    return {k.removeprefix("backbone.").removeprefix("decode_head."): v for k, v in nvlabs.items()}


def test_distiller_prefix_keeps_the_student_and_names_the_rest():
    flat = _authors_flat()
    adapters = {"module.skfs.0.conv1.0.weight": torch.zeros(1), "module.patch_embed1.proj.weight":
                torch.zeros(1), "module.embed1_linearproject.weight": torch.zeros(1)}
    checkpoint = {"epoch": 7, "arch": "SKF(...)", "best_acc": torch.tensor(0.68),
                  "optimizer": {"state": {}, "param_groups": [{"lr": 1e-4, "params": [0]}]},
                  "state_dict": {**{"module.student." + k: v for k, v in flat.items()}, **adapters}}
    state, student, left_out = select_student(checkpoint)
    assert student == "student." and left_out == ["embed1_linearproject", "patch_embed1", "skfs"]
    assert state.keys() == flat.keys()
    # The library unwrapper, too, looks past the 0-d best_acc tensor beside state_dict.
    assert "student.block1.0.attn.q.weight" in unwrap_state_dict(checkpoint)


def test_student_under_a_key_or_chosen_by_prefix():
    flat = _authors_flat()
    teacher = {"t_net." + k: v for k, v in _authors_flat("segformer_b2").items()}
    state, student, left_out = select_student({"state_dict": {"s_net": flat, "t_net": {}},
                                               "best_acc": torch.tensor(0.7)})
    assert (student, left_out) == ("s_net", ["t_net"]) and state.keys() == flat.keys()
    both = {**{"s_net.module." + k: v for k, v in flat.items()}, **teacher}
    assert select_student(both)[0].keys() == flat.keys()
    chosen, prefix, rest = select_student(both, prefix="t_net")
    assert prefix == "t_net." and rest == ["s_net"] and "block3.5.mlp.fc1.weight" in chosen
    with pytest.raises(CheckpointError, match="under 'student.' and 's_net.'; pass --prefix"):
        select_student({**{"student." + k: v for k, v in flat.items()}, "s_net.a": torch.zeros(1)})
    with pytest.raises(CheckpointError, match="no tensors under 'teacher'; its top-level names are"):
        select_student(flat, prefix="teacher")
    plain, none, nothing = select_student(flat)
    assert plain is not flat and plain.keys() == flat.keys() and none is None and nothing == []


def test_sharded_hf_folder_is_read_whole(tmp_path):
    hf = export_state_dict(model("segformer_b0"), "hf", hf_layout="stages")
    keys = sorted(hf)
    shards = {"model-00001-of-00002.safetensors": keys[:100], "model-00002-of-00002.safetensors": keys[100:]}
    for file, names in shards.items():
        save_file({k: hf[k].contiguous() for k in names}, tmp_path / file)
    index = {"weight_map": {k: file for file, names in shards.items() for k in names}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "segformer", "id2label": {
        str(i): f"c{i}" for i in range(19)}}))
    source = read_source(tmp_path)
    assert source.naming == "hf" and source.state.keys() == hf.keys()
    structure = structure_from_hf_config(source.hf_config, source.state, tmp_path)
    assert match_architecture(structure) == "segformer_b0" and structure.num_heads == (1, 2, 5, 8)
    assert hf_class_names(source.hf_config) == [f"c{i}" for i in range(19)]


def test_hf_config_that_transkd_cannot_build_is_refused():
    state = {"segformer.decode_head.classifier.weight": torch.zeros(1)}
    with pytest.raises(CheckpointError, match="sets strides to \\[4, 4, 2, 2\\]"):
        structure_from_hf_config({"model_type": "segformer", "strides": [4, 4, 2, 2]}, state)
    with pytest.raises(CheckpointError, match="model_type 'vit'; only Hugging Face Segformer"):
        structure_from_hf_config({"model_type": "vit"}, state)
    encoder = structure_from_hf_config({"model_type": "segformer", "num_labels": 1000}, {})
    assert encoder.head is None and encoder.num_classes is None
    assert hf_class_names({"id2label": {"0": "LABEL_0", "1": "LABEL_1"}}) is None


def test_input_statistics_follow_the_origin(tmp_path):
    authors = tmp_path / "authors.pth"
    torch.save({"module." + k: v for k, v in _authors_flat().items()}, authors)
    mmseg_style = tmp_path / "nvlabs.pth"
    torch.save({"state_dict": export_state_dict(model("segformer_b0"), "nvlabs")}, mmseg_style)
    mean, std, why = input_normalization(read_source(authors))
    assert (mean, std) == ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0)) and "TransKD authors" in why
    mean, std, why = input_normalization(read_source(mmseg_style))
    assert mean == pytest.approx((0.485, 0.456, 0.406)) and "ImageNet" in why
