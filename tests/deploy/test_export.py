"""``transkd export``: ONNX with dynamic batch/height/width that matches PyTorch at other sizes,
refusal (and no file) above the tolerance, one-sentence errors, and safetensors re-export."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from transkd.cli import main
from transkd.deploy import Student
from transkd.deploy.export import ExportError, check_parity, default_check_sizes, export_onnx
from transkd.errors import ConfigError
from transkd.models import create_model
from transkd.weights.io import read_safetensors, save_model


@pytest.fixture(scope="module")
def student_file(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = create_model("segformer_b0", num_classes=3)
    path = tmp_path_factory.mktemp("student") / "student.safetensors"
    return save_model(model, path, dataset="toy", class_names=["a", "b", "c"],
                      palette=[[1, 2, 3], [4, 5, 6], [7, 8, 9]], resize={"short_side": 64})


@pytest.fixture(scope="module")
def exported(student_file, tmp_path_factory):
    """The default (torch.export-based) exporter at 64x96, checked at 96x128 and 2x80x112."""
    out = tmp_path_factory.mktemp("onnx") / "student.onnx"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        code = main(["export", str(student_file), "--output", str(out), "--height", "64", "--width", "96",
                     "--check-size", "1", "96", "128", "--check-size", "2", "80", "112"])
    finally:
        torch.set_num_threads(threads)
    return code, out


@pytest.mark.slow  # the torch.export-based exporter traces symbolically: ~12 s of CPU
def test_onnx_export_matches_pytorch_at_other_sizes(exported, student_file, capsys):
    code, out = exported
    assert code == 0 and out.is_file()
    student = Student.load(student_file)
    checks = check_parity(student.model, out, [(1, 97, 131), (3, 64, 96)], seed=1)  # odd sizes too
    assert [c.output_shape for c in checks] == [(1, 3, 25, 33), (3, 3, 16, 24)]
    assert max(c.max_abs_diff for c in checks) < 1e-4


@pytest.mark.slow
def test_onnx_graph_is_dynamic_and_carries_the_metadata(exported):
    _, out = exported
    graph = onnx.load(out)
    dims = graph.graph.input[0].type.tensor_type.shape.dim
    assert [bool(d.dim_param) for d in dims] == [True, False, True, True]  # batch, 3, height, width
    assert dims[1].dim_value == 3
    props = {p.key: p.value for p in graph.metadata_props}
    assert json.loads(props["class_names"]) == ["a", "b", "c"]
    assert json.loads(props["architecture"]) == "segformer_b0" and json.loads(props["num_classes"]) == 3
    assert json.loads(props["mean"]) == pytest.approx([0.485, 0.456, 0.406])
    assert json.loads(props["resize"]) == {"short_side": 64}


def test_impossible_tolerance_refuses_and_writes_nothing(student_file, tmp_path, capsys):
    out = tmp_path / "student.onnx"
    code = main(["export", str(student_file), "-o", str(out), "--height", "64", "--width", "96",
                 "--exporter", "torchscript", "--tolerance", "1e-12"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("error: the ONNX graph differs from PyTorch by up to ")
    assert "above the tolerance 1e-12; nothing was written" in err and "\n" not in err
    assert list(tmp_path.iterdir()) == []  # neither the file nor a temporary one


def test_torchscript_exporter_prints_parity_at_the_default_check_sizes(student_file, tmp_path, capsys):
    out = tmp_path / "student.onnx"
    assert main(["export", str(student_file), "-o", str(out), "--height", "64", "--width", "96",
                 "--exporter", "torchscript", "--opset", "17"]) == 0
    text = capsys.readouterr().out
    assert "parity input 1x3x96x128 -> logits 1x3x24x32" in text
    assert "parity input 2x3x33x51 -> logits 2x3x9x13" in text
    assert "ONNX opset 17, torchscript exporter" in text
    assert default_check_sizes(64, 96) == [(1, 96, 128), (2, 33, 51)]


def test_output_that_is_a_folder_is_one_sentence(student_file, tmp_path, capsys):
    assert main(["export", str(student_file), "-o", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    suggestion = tmp_path / "student.onnx"
    assert err == f"error: output {tmp_path} is a folder; give a file name such as {suggestion}"


def test_export_size_too_small_for_the_model_is_a_config_error(student_file, tmp_path):
    model = Student.load(student_file).model
    with pytest.raises(ConfigError, match="cannot run on an input of 1x3x16x16"):
        export_onnx(model, tmp_path / "m.onnx", input_size=(16, 16), exporter="torchscript")
    assert not (tmp_path / "m.onnx").exists()


def test_safetensors_format_resaves_weights_and_metadata(student_file, tmp_path, capsys):
    out = tmp_path / "copy.safetensors"
    assert main(["export", str(student_file), "-o", str(out)]) == 0
    original, original_meta = read_safetensors(student_file)
    copy, copy_meta = read_safetensors(out)
    assert original_meta == copy_meta
    assert all(torch.equal(original[k], copy[k]) for k in original)
    assert "safetensors, weights + metadata" in capsys.readouterr().out


def test_not_a_student_is_one_sentence(tmp_path, capsys):
    bad = tmp_path / "weights.safetensors"
    bad.write_bytes(np.random.default_rng(0).bytes(64))
    assert main(["export", str(bad), "-o", str(tmp_path / "m.onnx")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {bad} is not a readable safetensors file") and "\n" not in err


class ShapeFrozen(nn.Module):
    """Python branches on the width, which a tracer freezes at the export width (8)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 1)

    def forward(self, x):
        y = self.conv(x)
        if y.shape[-1] > 8:  # wide: keep 8 columns
            return y[..., :8]
        if y.shape[-1] % 2:  # odd: drop the last column before pairing columns
            y = y[..., :-1]
        return y[..., ::2] + y[..., 1::2]


@pytest.mark.parametrize(("check", "message"), [
    ((1, 8, 12), "gives logits of shape"),                           # runs, other shape
    ((1, 8, 7), "fails on input 1x3x8x7 although PyTorch runs it"),  # onnxruntime fails
])
def test_a_graph_that_does_not_generalise_is_refused(check, message, tmp_path):
    torch.manual_seed(0)
    with pytest.raises(ExportError, match=message):
        export_onnx(ShapeFrozen().eval(), tmp_path / "m.onnx", input_size=(8, 8), exporter="torchscript",
                    check_sizes=[check])
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("metadata, size, why", [
    ({"protocol_options": {"name": "standard", "crop_size": [128, 256]}}, (128, 256), "training crop"),
    ({"protocol_options": {"name": "paper", "image_size": [64, 128], "crop_size": [512, 1024]}},
     (64, 128), "training image size"),
    ({"protocol_options": {"name": "paper", "short_side": 512}}, (512, 1024), "the default"),
    ({}, (512, 1024), "the default"),
])
def test_export_size_defaults_to_the_training_size(metadata, size, why):
    from transkd.deploy.export import export_input_size

    got, reason = export_input_size(metadata, None)
    assert got == size and why in reason
    half = export_input_size(metadata, (40, None))
    assert half == ((40, size[1]), f"as given, the other side from {reason}")
    assert export_input_size(metadata, (40, 48)) == ((40, 48), "as given")


class Pointwise(nn.Module):
    """A 1x1 convolution: exports in a moment at any size."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 1)

    def forward(self, x):
        return self.conv(x)


def test_progress_in_a_log_is_a_line_per_step(tmp_path, capsys):
    torch.manual_seed(0)
    export_onnx(Pointwise().eval(), tmp_path / "m.onnx", input_size=(8, 8), exporter="torchscript",
                check_sizes=[(1, 8, 12), (2, 6, 6)], progress=True)
    out = capsys.readouterr().out  # not a terminal: plain lines, graph export then each parity check
    assert [line.split(",")[0] for line in out.splitlines() if line.startswith("export:")] == \
        ["export: step 1/3 (33%)", "export: step 2/3 (67%)", "export: step 3/3 (100%)"]


def test_no_progress_prints_nothing(tmp_path, capsys):
    export_onnx(Pointwise().eval(), tmp_path / "m.onnx", input_size=(8, 8), exporter="torchscript")
    assert capsys.readouterr().out == ""
