"""timm backbones with a transkd head (``timm:<name>``), built offline (``pretrained=False``).

timm imports torchvision, which must be built for the installed torch: where it is missing
these tests skip (see docs/byo-models.md).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("timm")

from transkd import create_distiller, create_model, load_model  # noqa: E402
from transkd.distill import NetworkInfo  # noqa: E402
from transkd.errors import ConfigError  # noqa: E402
from transkd.models.heads import SemanticFPNHead  # noqa: E402
from transkd.weights.io import save_model  # noqa: E402


def images(size: int = 64) -> torch.Tensor:
    return torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(0))


def test_resnet18_with_the_segformer_head():
    model = create_model("timm:resnet18", num_classes=5).eval()
    out = model(images(), return_features=True)
    assert out.logits.shape == (2, 5, 16, 16) and torch.equal(out.logits, model(images()))
    assert [f.shape[1] for f in out.features] == [64, 128, 256, 512] and out.embeddings == []
    info = NetworkInfo.of(model)
    assert info.strides == (4, 8, 16, 32) and not info.has("embeddings")
    assert model.input_mean == model.backbone.pretrained_cfg["mean"]


def test_fpn_head_and_chosen_stages():
    model = create_model("timm:resnet18", num_classes=3, head="fpn", out_indices=[2, 3, 4])
    assert isinstance(model.decode_head, SemanticFPNHead)
    assert NetworkInfo.of(model).strides == (8, 16, 32) and model(images()).shape == (2, 3, 8, 8)
    with pytest.raises(ConfigError, match="head"):
        create_model("timm:resnet18", num_classes=3, head="unet")


@pytest.mark.parametrize("name, options", [("pvt_v2_b0", {}),
                                           ("swin_tiny_patch4_window7_224", {"img_size": 64})])
def test_timm_transformers_expose_patch_embeddings(name, options):
    model = create_model(f"timm:{name}", num_classes=5, **options)
    out = model(images(), return_features=True)
    assert [tuple(g) for g in out.grids] == [(16, 16), (8, 8), (4, 4), (2, 2)]
    assert [e.shape[-1] for e in out.embeddings] == [f.shape[1] for f in out.features]
    assert NetworkInfo.of(model, probe_size=64).embedding_strides == (4, 8, 16, 32)


def test_pea_with_a_timm_cnn_student_fails_before_training():
    teacher = create_model("segformer_b0", num_classes=5)
    student = create_model("timm:resnet18", num_classes=5)
    with pytest.raises(ConfigError) as err:
        create_distiller("pea_only", teacher, student)
    message = str(err.value)
    assert "\n" not in message and "'pea_only'" in message and "timm:resnet18" in message
    assert "patch embeddings" in message


def test_timm_student_reloads_from_its_file_alone(tmp_path):
    model = create_model("timm:resnet18", num_classes=4, head="fpn").eval()
    path = save_model(model, tmp_path / "student.safetensors")
    again = load_model(path).eval()
    assert again.model_name == "timm:resnet18" and again.model_options["head"] == "fpn"
    assert torch.equal(again(images()), model(images()))


@pytest.mark.slow  # a distillation run and an ONNX export
def test_timm_student_distilled_by_the_engine_reloads_and_exports(tmp_path):
    sys.path.insert(0, str(Path(__file__).parents[1] / "distill"))
    sys.path.insert(0, str(Path(__file__).parent))
    pytest.importorskip("transformers")
    from test_pairs import distill_and_export
    from tiny_networks import save_hf, upernet_config

    teacher = save_hf(upernet_config("convnext", num_labels=10), tmp_path / "teacher")
    distill_and_export(tmp_path, "timm:resnet18", teacher, method="csf_only")
