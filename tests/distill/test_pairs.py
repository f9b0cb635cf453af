"""Every method on pairs of different families: stages paired by stride, grids and logits
resampled, and one sentence before training where a pair cannot serve a method."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")
sys.path.insert(0, str(Path(__file__).parents[1] / "models"))  # the tiny transformers models

from tiny_networks import save_hf, segformer_config, upernet_config, vit_config  # noqa: E402

from transkd import create_distiller, create_model  # noqa: E402
from transkd.distill.align import grid_of, match_stages, resize_tokens  # noqa: E402
from transkd.distill.base import Distiller, renormalise  # noqa: E402
from transkd.errors import ConfigError  # noqa: E402

CLASSES = 5


@pytest.fixture(scope="module")
def hf_segformer(tmp_path_factory):
    return create_model(f"hf:{save_hf(segformer_config(), tmp_path_factory.mktemp('segformer'))}")


@pytest.fixture(scope="module")
def hf_upernet(tmp_path_factory):
    return create_model(f"hf:{save_hf(upernet_config('convnext'), tmp_path_factory.mktemp('upernet'))}")


def snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def train_steps(distiller: Distiller, steps: int = 2, size: int = 64) -> dict[str, torch.Tensor]:
    """A few AdamW steps; checks that the teacher stays unchanged and the student learns."""
    generator = torch.Generator().manual_seed(0)
    teacher_before = snapshot(distiller.teacher)
    params = [p for p in distiller.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-3)
    distiller.train()
    for _ in range(steps):
        images = torch.rand(2, 3, size, size, generator=generator)
        targets = torch.randint(0, CLASSES, (2, size, size), generator=generator)
        out = distiller(images, targets)
        optimizer.zero_grad()
        out["loss"].backward()
        grads = [p.grad for p in distiller.student.parameters() if p.grad is not None]
        assert grads and any(g.abs().sum() > 0 for g in grads)
        assert all(p.grad is None for p in distiller.teacher.parameters())
        optimizer.step()
    assert all(math.isfinite(v.item()) for k, v in out.items() if k != "logits")
    after = snapshot(distiller.teacher)
    assert all(torch.equal(teacher_before[k], after[k]) for k in after)  # BatchNorm stats too
    return out


def test_transkd_base_hf_segformer_teacher_to_mit_b0(hf_segformer):
    student = create_model("segformer_b0", num_classes=CLASSES)
    distiller = create_distiller("transkd_base", hf_segformer, student)
    out = train_steps(distiller)
    assert {"hcl", "embed_1", "embed_2", "embed_3", "embed_4"} <= set(out)
    pea = distiller.methods["transkd_base"].pea
    assert [p.out_features for p in pea.proj.values()] == [8, 16, 24, 32]  # the teacher's real widths


@pytest.mark.parametrize("method", ["cwd", "kd", "csf_only", "review_kd", "fitnet", "skd", "ifvd", "dist",
                                    "cirkd", "af_dcd"])
def test_upernet_teacher_to_a_cnn_student(hf_upernet, tmp_path, method):
    """A CNN student without patch embeddings (timm ResNet-18 where timm is installed, else an
    UperNet-ConvNeXt) learns from an UperNet teacher whose logits are at full size."""
    try:
        import timm  # noqa: F401
        student = create_model("timm:resnet18", num_classes=CLASSES)
    except ImportError:
        student = create_model(f"hf:{save_hf(upernet_config('convnext'), tmp_path, seed=1)}")
    train_steps(create_distiller(method, hf_upernet, student))


def test_pea_with_a_cnn_student_fails_before_training(hf_segformer, hf_upernet):
    with pytest.raises(ConfigError) as err:
        create_distiller("pea_only", hf_segformer, hf_upernet)
    message = str(err.value)
    assert "\n" not in message
    assert "'pea_only'" in message and "patch embeddings" in message and "student" in message
    assert hf_upernet.model_name in message


def test_single_stride_vit_teacher_to_a_four_stage_student(tmp_path):
    teacher = create_model(f"hf:{save_hf(vit_config('beit'), tmp_path)}")
    student = create_model("segformer_b0", num_classes=CLASSES)
    distiller = create_distiller("transkd_base", teacher, student)
    method = distiller.methods["transkd_base"]
    assert method.embedding_pairs == (0, 0, 0, 0)  # the ViT's one stride-16 embedding serves all
    out = train_steps(distiller)
    assert {"embed_1", "embed_4", "hcl"} <= set(out)


def test_class_sets_need_a_class_map(hf_segformer):
    student = create_model("segformer_b0", num_classes=3)
    with pytest.raises(ConfigError) as err:
        create_distiller("kd", hf_segformer, student)
    assert "class_map" in str(err.value) and "'kd'" in str(err.value)
    create_distiller("csf_only", hf_segformer, student)  # features only: classes do not matter
    distiller = create_distiller("kd", hf_segformer, student, class_map=[4, 0, 2])
    teacher_out = distiller.teacher_forward(torch.rand(1, 3, 64, 64))
    assert teacher_out.logits.shape[1] == 3
    with pytest.raises(ConfigError, match="class_map"):
        create_distiller("kd", hf_segformer, student, class_map=[0, 7, 1])


def test_teacher_sees_its_own_normalisation(hf_segformer):
    student = create_model("segformer_b0", num_classes=CLASSES)
    teacher = create_model("segformer_b0", num_classes=CLASSES)
    teacher.input_mean, teacher.input_std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)  # a faithful-preset run
    raw = torch.rand(2, 3, 8, 8)
    mean = torch.tensor(student.input_mean).view(1, 3, 1, 1)
    std = torch.tensor(student.input_std).view(1, 3, 1, 1)
    fed = renormalise((raw - mean) / std, student, teacher)
    assert torch.allclose(fed, raw, atol=1e-6)
    assert renormalise(raw, student, student) is raw


def test_stage_pairing_and_resampling():
    assert match_stages((4, 8, 16, 32), (4, 8, 16, 32)) == (0, 1, 2, 3)
    assert match_stages((4, 8, 16, 32), (16,)) == (0, 0, 0, 0)
    assert match_stages((2, 4, 8, 16, 32), (4, 8, 16, 32)) == (0, 0, 1, 2, 3)
    assert match_stages((4, 8, 16, 32), (2, 4, 8, 16)) == (1, 2, 3, 3)
    tokens = torch.arange(16.0).view(1, 16, 1)
    assert torch.equal(resize_tokens(tokens, (4, 4), (4, 4)), tokens)
    down = resize_tokens(tokens, (4, 4), (2, 2))
    assert down.shape == (1, 4, 1)
    assert grid_of(16 * 32, 64, 128) == (16, 32) and grid_of(7, 64, 64) is None


TINY_RUN = ["--set", "data.options={length: 4, size: [32, 64]}", "--set", "data.val_options={length: 2}",
            "--set", "protocol.image_size=[32, 64]", "--set", "train.batch_size=2",
            "--set", "train.epochs=1", "--set", "train.num_workers=0", "--set", "train.tensorboard=false",
            "--set", "eval.batch_size=2"]


def distill_and_export(tmp_path: Path, student_name: str, teacher_folder: Path, method: str = "kd",
                       cleanup: Path | None = None) -> None:
    """``transkd distill`` with an hf: teacher, then the saved student reloads from its file
    alone (``cleanup`` removed first) and exports to ONNX with onnxruntime parity."""
    import shutil

    from transkd.cli import main
    from transkd.deploy import Student
    from transkd.deploy.export import export_onnx

    code = main(["distill", *TINY_RUN, "--set", f"model.name={student_name}",
                 "--set", f"distill.method={method}", "--set", f"teacher.name=hf:{teacher_folder}",
                 "--output", str(tmp_path / "run")])
    assert code == 0
    if cleanup is not None:
        shutil.rmtree(cleanup)
    student = Student.load(tmp_path / "run")
    assert student.model.model_name == student_name and student.num_classes == 10
    result = export_onnx(student.model, tmp_path / "student.onnx", input_size=(64, 64),
                         check_sizes=[(1, 64, 96)])
    assert result.checks and result.checks[0].max_abs_diff < 1e-4


@pytest.mark.slow  # a distillation run and an ONNX export: ~30 s of CPU
def test_hf_student_distilled_by_the_engine_reloads_and_exports(tmp_path):
    teacher = save_hf(upernet_config("convnext", num_labels=10), tmp_path / "teacher")
    student = save_hf(segformer_config(), tmp_path / "student")  # re-headed to the 10 classes
    distill_and_export(tmp_path, f"hf:{student}", teacher, cleanup=student)


def test_teacher_evaluated_on_student_inputs_answers_in_student_classes(hf_segformer):
    student = create_model("segformer_b0", num_classes=2)
    distiller = create_distiller("kd", hf_segformer, student, class_map=[3, 1])
    view = distiller.teacher_on_student_inputs()
    images = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        full = hf_segformer(renormalise(images, student, hf_segformer))
        assert torch.equal(view(images), full[:, [3, 1]])
    assert view.num_classes == 2 and not view.training


def test_files_without_mean_and_std_take_their_protocols(tmp_path):
    from transkd.weights.io import load_model, model_metadata, save_state_dict

    model = create_model("segformer_b0", num_classes=2)
    meta = {k: v for k, v in model_metadata(model).items() if k not in ("mean", "std")}
    path = save_state_dict(model.state_dict(), tmp_path / "old.safetensors",
                           {**meta, "protocol_options": {"normalize": False}})
    loaded = load_model(path)
    assert (loaded.input_mean, loaded.input_std) == ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
