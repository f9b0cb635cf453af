"""Bad input anywhere — command line, config, dataset files, checkpoints, output folder — ends
the same way: exit code 2, ONE line on stderr starting with ``error:`` that names the culprit,
no traceback (unless ``--debug``), and nothing left behind: no new run folder, and an existing
run's checkpoint and config untouched. (Signals are covered in tests/engine/test_resume.py.)"""

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from transkd.cli import main
from transkd.distill import create_distiller
from transkd.engine import run as run_module
from transkd.errors import ConfigError
from transkd.models import create_model
from transkd.models.heads import SegFormerHead
from transkd.models.mit import MIT_CONFIGS, EncoderConfig, HierarchicalEncoder
from transkd.models.registry import _REGISTRY, ModelEntry
from transkd.models.segmentor import Segmentor
from transkd.weights.io import save_model

TINY = ["--set", "data.options={length: 4, size: [32, 64]}", "--set", "data.val_options={length: 2}",
        "--set", "protocol.image_size=[32, 64]", "--set", "train.batch_size=2",
        "--set", "train.iterations=2", "--set", "schedule.kind=constant",
        "--set", "train.num_workers=0", "--set", "train.tensorboard=false", "--set", "eval.batch_size=2"]
#: A folder dataset instead of the synthetic one (the root comes from --data).
FOLDER = ["--set", "data.name=folder", "--set", "data.options={}", "--set", "data.val_options={}"]
CLASSES = "names: [background, road, car]\n"


@dataclass
class Case:
    """One bad input: the command line, a phrase the error must contain, and whether an
    earlier good run exists in the output folder (which must come out unchanged)."""

    args: list[str]
    expected: str
    existing_run: bool = False
    extra_checks: list = field(default_factory=list)


# --------------------------------------------------------------------------- fixtures on disk

def folder_dataset(root: Path, count: int = 4) -> Path:
    """``root`` with classes.yaml and ``count`` 32x64 image/mask pairs in train/ and val/."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "classes.yaml").write_text(CLASSES)
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        (root / "images" / split).mkdir(parents=True)
        (root / "masks" / split).mkdir(parents=True)
        for i in range(count):
            image = rng.integers(0, 256, (32, 64, 3), dtype=np.uint8)
            Image.fromarray(image).save(root / "images" / split / f"f{i}.png")
            Image.fromarray(rng.integers(0, 3, (32, 64), dtype=np.uint8)).save(
                root / "masks" / split / f"f{i}.png")
    return root


def teacher(tmp_path: Path, num_classes: int = 10) -> Path:
    torch.manual_seed(0)
    return save_model(create_model("segformer_b0", num_classes=num_classes),
                      tmp_path / f"teacher{num_classes}.safetensors")


def three_stage_segformer(num_classes: int, **options) -> Segmentor:
    """A SegFormer whose encoder has three stages (no registered model has other than four)."""
    base = MIT_CONFIGS["mit_b0"]
    config = EncoderConfig(**{**base.__dict__, "embed_dims": base.embed_dims[:3],
                              "depths": base.depths[:3], **options})
    encoder = HierarchicalEncoder(config)
    head = SegFormerHead(encoder.widths, num_classes, embed_dim=64)
    return Segmentor(encoder, head, name="segformer_3stage", num_classes=num_classes)


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` with a digest of its bytes."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


# --------------------------------------------------------------------------- the table

def build_case(kind: str, tmp: Path, out: Path, monkeypatch) -> Case:
    train = ["train", *TINY, "--output", str(out)]
    data = tmp / "data"

    def folder_run(mutate) -> list[str]:
        folder_dataset(data)
        mutate(data)
        return [*train, *FOLDER, "--data", str(data)]

    def decoded_in_first_step(mutate) -> list[str]:
        """Damage only decoding finds (file headers are fine): the first step reads every
        training sample, so the run fails before its first checkpoint."""
        return [*folder_run(mutate), "--set", "train.batch_size=4"]

    # ---- command line and config
    if kind == "missing_config_file":
        return Case([*train, "--config", str(tmp / "nope.yaml")], "config file")
    if kind == "config_not_yaml":
        (tmp / "bad.yaml").write_text("train: [1, 2\n")
        return Case([*train, "--config", str(tmp / "bad.yaml")], "is not valid YAML at line")
    if kind == "config_not_a_mapping":
        (tmp / "list.yaml").write_text("- 1\n- 2\n")
        return Case([*train, "--config", str(tmp / "list.yaml")], "must hold a mapping of sections")
    if kind == "unknown_config_key":
        return Case([*train, "--set", "optim.learning_rate=0.1"],
                    "unknown config key 'optim.learning_rate'; keys of optim: lr,")
    if kind == "unknown_cpu_matmul":
        monkeypatch.setenv("TRANSKD_CPU_MATMUL", "mkl")
        return Case(train, "TRANSKD_CPU_MATMUL='mkl' is not one of auto, onednn, blas")
    if kind == "malformed_override":
        return Case([*train, "--set", "optim.lr"], "must look like section.key=value")
    if kind == "wrong_type":
        return Case([*train, "--set", "train.batch_size=two"],
                    "config key 'train.batch_size' must be an integer, got 'two'")
    if kind == "negative_learning_rate":
        return Case([*train, "--set", "optim.lr=-0.01"], "config key 'optim.lr' must be positive")
    if kind == "huge_learning_rate":  # would overflow float32 inside AdamW's update
        return Case([*train, "--set", "optim.lr=1e39"], "config key 'optim.lr' must be at most 1")
    if kind == "nan_learning_rate":
        return Case([*train, "--set", "optim.lr=.nan"], "config key 'optim.lr' must be")
    if kind == "zero_batch_size":
        return Case([*train, "--set", "train.batch_size=0"],
                    "config key 'train.batch_size' must be a positive")
    if kind == "paper_schedule_by_iterations":
        return Case([*train, "--set", "schedule.kind=paper"], "'paper' steps once per epoch")
    if kind == "unknown_model":
        return Case([*train, "--set", "model.name=segformer_b9"], "unknown model 'segformer_b9'")
    if kind == "encoder_as_model":
        return Case([*train, "--set", "model.name=mit_b0"], "but 'mit_b0' is an encoder")
    if kind == "unknown_method":
        return Case(["distill", *train[1:], "--teacher", str(teacher(tmp)), "--method", "transkd_magic"],
                    "unknown")
    if kind == "method_without_teacher":
        return Case(["distill", *train[1:], "--method", "transkd_base"],
                    "config key 'teacher.weights' must name")
    if kind == "unknown_dataset":
        return Case([*train, "--set", "data.name=kitti"], "config key 'data.name' must be one of")
    if kind == "bad_method_option":
        return Case(["distill", *train[1:], "--teacher", str(teacher(tmp)), "--method", "kd",
                     "--set", "distill.options={temperature: hot}"], "temperature")

    # ---- datasets
    if kind == "missing_dataset_root":
        return Case([*train, *FOLDER, "--data", str(tmp / "nowhere")], f"{tmp / 'nowhere'} does not exist")
    if kind == "missing_classes_file":
        return Case(folder_run(lambda d: (d / "classes.yaml").unlink()), "has no classes file")
    if kind == "malformed_classes_file":
        return Case(folder_run(lambda d: (d / "classes.yaml").write_text("names: [road, car\ncolors: x\n")),
                    f"classes file {data / 'classes.yaml'} is not valid YAML: expected ',' or ']', but "
                    "got ':' at line 2, column 7")
    if kind == "missing_split":
        return Case([*folder_run(lambda d: None), "--set", "data.val_split=test"], "split 'test' not found")
    if kind == "empty_split":
        def empty(d):
            for p in (d / "images" / "train").iterdir():
                p.unlink()
            for p in (d / "masks" / "train").iterdir():
                p.unlink()
        return Case(folder_run(empty), "holds no images")
    if kind == "image_without_label":
        return Case(folder_run(lambda d: (d / "masks" / "train" / "f2.png").unlink()),
                    f"image {data / 'images' / 'train' / 'f2.png'} has no label")
    if kind == "label_without_image":
        return Case(folder_run(lambda d: (d / "images" / "train" / "f1.png").unlink()), "has no image")
    if kind == "unreadable_image":
        return Case(folder_run(lambda d: (d / "images" / "train" / "f1.png").write_bytes(b"not an image")),
                    f"cannot read image {data / 'images' / 'train' / 'f1.png'}")
    if kind == "truncated_png":
        def truncate(d):
            path = d / "images" / "train" / "f3.png"
            path.write_bytes(path.read_bytes()[:200])
        return Case(decoded_in_first_step(truncate),
                    f"cannot read image {data / 'images' / 'train' / 'f3.png'}")
    if kind == "label_16_bit":
        def sixteen(d):
            Image.fromarray(np.ones((32, 64), np.uint16) * 300).save(d / "masks" / "train" / "f0.png")
        return Case(folder_run(sixteen), "is a 16-bit/32-bit image")
    if kind == "label_rgb":
        def rgb(d):
            Image.fromarray(np.zeros((32, 64, 3), np.uint8)).save(d / "masks" / "val" / "f1.png")
        return Case(folder_run(rgb), f"label {data / 'masks' / 'val' / 'f1.png'} is a colour image")
    if kind == "size_mismatch":
        def smaller(d):
            Image.fromarray(np.zeros((16, 64), np.uint8)).save(d / "masks" / "train" / "f2.png")
        return Case(folder_run(smaller), "is 64x16 but its image")
    if kind == "label_out_of_range":
        def out_of_range(d):
            Image.fromarray(np.full((32, 64), 7, np.uint8)).save(d / "masks" / "train" / "f1.png")
        return Case(decoded_in_first_step(out_of_range), "outside the legal values")
    if kind == "label_out_of_range_with_workers":
        def out_of_range(d):
            Image.fromarray(np.full((32, 64), 9, np.uint8)).save(d / "masks" / "train" / "f0.png")
        return Case([*decoded_in_first_step(out_of_range), "--set", "train.num_workers=1"],
                    f"label {data / 'masks' / 'train' / 'f0.png'} holds value(s) 9 outside the legal")
    if kind == "batch_larger_than_dataset":
        return Case([*train, "--set", "train.batch_size=8"],
                    "train.batch_size 8 is larger than the 4 samples")

    # ---- checkpoints and weights
    if kind == "missing_teacher_file":
        return Case(["distill", *train[1:], "--teacher", str(tmp / "t.safetensors"), "--method", "kd"],
                    "teacher.weights")
    if kind == "teacher_class_count":
        return Case(["distill", *train[1:], "--teacher", str(teacher(tmp, 19)), "--method", "transkd_base"],
                    "predicts 19 classes but dataset 'synthetic' needs 10")
    if kind == "teacher_stage_count":
        entry = ModelEntry("segformer_3stage", three_stage_segformer, "mit", "segmentor", "test only")
        monkeypatch.setitem(_REGISTRY, "segformer_3stage", entry)
        return Case(["distill", *train[1:], "--set", "model.name=segformer_3stage",
                     "--teacher", str(teacher(tmp)), "--method", "transkd_base"],
                    "'embed_weights' needs one weight for each of the student's 3 embedding stages")
    if kind == "teacher_is_not_a_model":
        (tmp / "notes.safetensors").write_text("hello")
        return Case(["distill", *train[1:], "--teacher", str(tmp / "notes.safetensors"), "--method", "kd"],
                    "is not a readable safetensors file")
    if kind == "init_of_another_architecture":
        return Case([*train, "--set", f"model.init={teacher_b1(tmp)}"],
                    "b1.safetensors holds a segformer_b1, but model.name is segformer_b0")
    if kind == "init_missing":
        return Case([*train, "--set", f"model.init={tmp / 'missing.safetensors'}"], "does not exist")
    if kind == "resume_missing_checkpoint":
        return Case([*train, "--resume", str(tmp / "missing.pt")], "no checkpoint file")
    if kind == "resume_weights_not_checkpoint":
        return Case([*train, "--resume", str(teacher(tmp))], "is not a transkd training checkpoint")
    if kind == "resume_other_architecture":
        previous_run(out, "segformer_b1")
        return Case([*train, "--resume", "auto"], "continues a segformer_b1 run, but model.name is "
                    "segformer_b0", existing_run=True)
    if kind == "resume_other_class_count":
        previous_run(out, "segformer_b0")
        return Case([*train, *FOLDER, "--data", str(folder_dataset(data)), "--resume", "auto"],
                    "does not fit segformer_b0: 2 wrong shape (decode_head.classifier.bias (10,) vs (3,)",
                    existing_run=True)
    if kind == "resume_truncated_without_previous":
        previous_run(out, "segformer_b0")
        last = out / "checkpoints" / "last.pt"
        last.write_bytes(last.read_bytes()[:1000])
        (out / "checkpoints" / "previous.pt").unlink()
        return Case([*train, "--resume", "auto"], "is damaged", existing_run=True)
    if kind == "eval_missing_weights":
        return Case(["eval", str(tmp / "none.safetensors"), *TINY], "does not exist")
    if kind == "eval_class_count":
        return Case(["eval", str(teacher(tmp, 19)), *TINY], "predicts 19 classes but dataset")

    # ---- output folder
    if kind == "output_is_a_file":
        out.write_text("precious")
        return Case(train, f"output folder {out} is a file", extra_checks=[
            lambda: out.read_text() == "precious"])
    if kind == "output_under_a_file":
        (tmp / "file").write_text("x")
        return Case(train_args(tmp / "file" / "run"), f"cannot be created: {tmp / 'file'} is a file")
    if kind == "output_not_writable":
        locked = tmp / "locked"
        locked.mkdir()
        locked.chmod(0o555)
        if os.geteuid() == 0:  # root writes anywhere: make the permission check see the mode
            real_access = os.access
            monkeypatch.setattr(run_module.os, "access", lambda path, mode: (
                Path(path) != locked and real_access(path, mode)))
        return Case(train_args(locked / "run"), f"cannot be created: {locked} is not writable")
    if kind == "output_holds_a_run":
        previous_run(out, "segformer_b0")
        return Case(train, "already holds a run", existing_run=True)
    raise AssertionError(kind)


def train_args(output: Path) -> list[str]:
    return ["train", *TINY, "--output", str(output)]


def teacher_b1(tmp: Path) -> Path:
    return save_model(create_model("segformer_b1", num_classes=10), tmp / "b1.safetensors")


def previous_run(out: Path, model: str) -> None:
    """A finished tiny run of ``model`` in ``out`` (what a bad resume must not damage)."""
    assert main([*train_args(out), "--set", f"model.name={model}"]) == 0


KINDS = [
    "missing_config_file", "config_not_yaml", "config_not_a_mapping", "unknown_config_key",
    "malformed_override", "unknown_cpu_matmul", "wrong_type", "negative_learning_rate", "nan_learning_rate",
    "huge_learning_rate", "zero_batch_size", "paper_schedule_by_iterations", "unknown_model",
    "encoder_as_model",
    "unknown_method", "method_without_teacher", "unknown_dataset", "bad_method_option",
    "missing_dataset_root", "missing_classes_file", "malformed_classes_file", "missing_split", "empty_split",
    "image_without_label", "label_without_image", "unreadable_image", "truncated_png",
    "label_16_bit", "label_rgb", "size_mismatch", "label_out_of_range",
    "label_out_of_range_with_workers", "batch_larger_than_dataset",
    "missing_teacher_file", "teacher_class_count", "teacher_stage_count", "teacher_is_not_a_model",
    "init_of_another_architecture", "init_missing", "resume_missing_checkpoint",
    "resume_weights_not_checkpoint", "resume_other_architecture", "resume_other_class_count",
    "resume_truncated_without_previous", "eval_missing_weights", "eval_class_count",
    "output_is_a_file", "output_under_a_file", "output_not_writable", "output_holds_a_run",
]


#: Cases that first train a run of a bigger network.
SLOW_KINDS = ("resume_other_architecture",)


@pytest.mark.parametrize("kind", [pytest.param(k, marks=pytest.mark.slow) if k in SLOW_KINDS else k
                                  for k in KINDS])
def test_bad_input_gives_one_sentence_and_leaves_nothing(tmp_path, capsys, monkeypatch, kind):
    out = tmp_path / "run"
    case = build_case(kind, tmp_path, out, monkeypatch)
    before = snapshot(out) if case.existing_run else None
    capsys.readouterr()

    code = main(case.args)
    stdout, stderr = capsys.readouterr()
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert code == 2, stderr
    assert len(lines) == 1, stderr
    assert lines[0].startswith("error: ") and "Traceback" not in stderr
    assert case.expected in lines[0]
    if case.existing_run:
        assert snapshot(out) == before  # checkpoint, weights, config and logs untouched
    elif out.is_dir() or not out.exists():
        assert not out.exists(), sorted(str(p) for p in out.rglob("*"))
    assert "Traceback" not in stdout and "error" not in stdout
    for check in case.extra_checks:
        assert check()


def test_debug_shows_the_traceback(tmp_path):
    with pytest.raises(ConfigError, match="optim.lr"):
        main(["--debug", *train_args(tmp_path / "run"), "--set", "optim.lr=-1"])
    assert not (tmp_path / "run").exists()


def test_teacher_and_student_with_different_stage_counts_through_the_api():
    """Stages pair by stride: a three-stage student learns from a four-stage teacher, once PEA's
    per-stage weights name three stages."""
    teacher_net = create_model("segformer_b0", num_classes=10)
    student = three_stage_segformer(10)
    assert len(student.encoder.widths) == 3
    with pytest.raises(ConfigError, match="student's 3 embedding stages, got 4"):
        create_distiller("transkd_base", teacher_net, student)
    distiller = create_distiller("transkd_base", teacher_net, student, embed_weights=[0.1, 0.5, 1.0],
                                 pea_stages=[1, 2, 3])
    assert distiller.methods["transkd_base"].stage_pairs == (0, 1, 2)
    out = distiller(torch.rand(1, 3, 64, 64), torch.randint(0, 10, (1, 64, 64)))
    assert torch.isfinite(out["loss"])


# --------------------------------------------------------------------------- numerical faults

#: A checkpoint after every step, no validation before the end.
EVERY_STEP = ["--set", "train.iterations=4", "--set", "train.checkpoint_interval=1",
              "--set", "train.val_interval=100", "--set", "train.log_interval=1"]


def poison_loss_at(monkeypatch, call: int) -> None:
    """The cross-entropy of the ``call``-th training forward pass becomes NaN."""
    from transkd.distill import base

    original = base.cross_entropy_loss
    calls = {"n": 0}

    def poisoned(*args, **kwargs):
        calls["n"] += torch.is_grad_enabled()  # training steps; not the MAC count before training
        value = original(*args, **kwargs)
        return value * float("nan") if calls["n"] == call and torch.is_grad_enabled() else value

    monkeypatch.setattr("transkd.engine.build.cross_entropy_loss", poisoned)


def finite_checkpoint_step(path: Path) -> int:
    from transkd.engine.checkpoint import load_checkpoint

    data = load_checkpoint(path)
    assert all(bool(torch.isfinite(v).all()) for v in data["model"].values() if v.is_floating_point())
    return data["position"]["step"]


def test_nan_loss_stops_with_the_step_and_term_and_keeps_the_last_good_checkpoint(
        tmp_path, capsys, monkeypatch):
    poison_loss_at(monkeypatch, 3)
    out = tmp_path / "run"
    code = main([*train_args(out), *EVERY_STEP])
    stderr = capsys.readouterr().err
    lines = stderr.strip().splitlines()
    assert code == 2 and len(lines) == 1, stderr
    assert lines[0].startswith("error: training stopped: loss term 'ce' is nan at step 3")
    assert f"the last good checkpoint is {out / 'checkpoints' / 'last.pt'}" in lines[0]
    assert finite_checkpoint_step(out / "checkpoints" / "last.pt") == 2


def test_nan_loss_skipped_and_counted(tmp_path, capsys, monkeypatch):
    poison_loss_at(monkeypatch, 2)
    out = tmp_path / "run"
    assert main([*train_args(out), *EVERY_STEP, "--set", "train.nonfinite=skip"]) == 0
    assert "skipped 1 step(s) with a non-finite loss" in capsys.readouterr().out
    assert finite_checkpoint_step(out / "checkpoints" / "last.pt") == 4
    summary = (out / "summary.json").read_text()
    assert '"skipped_steps": 1' in summary


def test_weights_that_turn_non_finite_are_never_checkpointed(tmp_path, capsys, monkeypatch):
    """A finite loss whose update still breaks the weights (the failure mode of a far too high
    learning rate): the checkpoint is refused and the previous one stays."""
    original = torch.optim.AdamW.step
    calls = {"n": 0}

    def breaking_step(self, *args, **kwargs):
        result = original(self, *args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 3:
            with torch.no_grad():
                self.param_groups[0]["params"][0].fill_(float("inf"))
        return result

    monkeypatch.setattr(torch.optim.AdamW, "step", breaking_step)
    out = tmp_path / "run"
    code = main([*train_args(out), *EVERY_STEP])
    stderr = capsys.readouterr().err
    lines = stderr.strip().splitlines()
    assert code == 2 and len(lines) == 1, stderr
    assert lines[0].startswith(f"error: refusing to write {out / 'checkpoints' / 'last.pt'}")
    assert "not finite (first: student.encoder.stages.0.patch_embed.proj.weight)" in lines[0]
    assert finite_checkpoint_step(out / "checkpoints" / "last.pt") == 2
    assert finite_checkpoint_step(out / "checkpoints" / "previous.pt") == 1
    assert not list((out / "checkpoints").glob(".*tmp"))
