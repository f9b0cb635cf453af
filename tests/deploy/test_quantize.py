"""Exported graphs at every precision: fp32 scored like the .safetensors it came from, fp16 with
float32 input/output, int8 with the chosen operator types quantised, one-sentence refusals that
write nothing, and the accuracy-latency trade-off of one student."""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from transkd.cli import main
from transkd.config import load_config
from transkd.deploy.bench import format_operator_profile, onnx_operator_profile
from transkd.deploy.export import export_model
from transkd.deploy.quantize import QuantizeOptions, checked_calibration
from transkd.engine import build
from transkd.engine.score import evaluate_checkpoint, evaluation_images
from transkd.errors import ConfigError
from transkd.models import create_model
from transkd.models.onnx_graph import OnnxSegmentor, onnx_metadata
from transkd.report.tradeoff import (
    AccuracyCheck,
    deployment_tradeoff,
    exported_accuracy,
    format_tradeoff,
    write_tradeoff,
)
from transkd.weights.io import save_model

OVERRIDES = ["data.options={length: 4, size: [32, 64]}", "data.val_options={length: 3}",
             "protocol.image_size=[32, 64]", "train.num_workers=0", "eval.batch_size=2"]
EXPORT = {"exporter": "torchscript", "input_size": (32, 64), "check_sizes": [(1, 32, 64), (2, 33, 35)]}


@pytest.fixture(scope="module")
def student(tmp_path_factory) -> Path:
    outputs = build.open_datasets(load_config(None, OVERRIDES), train=False).num_outputs
    torch.manual_seed(0)
    model = create_model("segformer_b0", num_classes=outputs)
    return save_model(model, tmp_path_factory.mktemp("student") / "model.safetensors", dataset="synthetic")


@pytest.fixture(scope="module")
def fp32_graph(student, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("fp32") / "student.onnx"
    export_model(student, path, **EXPORT)
    return path


def op_types(path: Path) -> Counter:
    return Counter(node.op_type for node in onnx.load(str(path)).graph.node)


def test_eval_of_the_exported_fp32_graph_equals_eval_of_the_safetensors(student, fp32_graph):
    eager = evaluate_checkpoint(student, overrides=OVERRIDES)
    graph = evaluate_checkpoint(fp32_graph, overrides=OVERRIDES, threads=1)
    assert graph.model == "segformer_b0 (onnx fp32)" and eager.model == "segformer_b0"
    assert graph.dataset == eager.dataset == "synthetic" and graph.images == eager.images == 3
    assert math.isfinite(eager.metrics["miou"])
    assert graph.metrics["miou"] == pytest.approx(eager.metrics["miou"], abs=1e-6)
    assert graph.metrics["acc"] == pytest.approx(eager.metrics["acc"], abs=1e-6)
    differing = int((graph.metrics["confusion"] - eager.metrics["confusion"]).abs().sum())
    assert differing <= 2  # at most a pixel whose two best logits tie within float error


def test_the_graph_carries_what_eval_needs(fp32_graph):
    meta = onnx_metadata(fp32_graph)
    assert meta["precision"] == "fp32" and meta["dataset"] == "synthetic"
    model = OnnxSegmentor(fp32_graph, threads=1)
    assert model.input_mean == pytest.approx((0.485, 0.456, 0.406))
    assert tuple(model(torch.randn(1, 3, 32, 64)).shape) == (1, model.num_classes, 8, 16)


def test_calibration_images_come_through_the_evaluation_transforms(student):
    images = evaluation_images(student, 3, overrides=OVERRIDES)
    assert len(images) == 3 and all(tuple(i.shape) == (1, 3, 32, 64) for i in images)
    assert abs(float(torch.cat(images).mean())) < 3  # normalised, not raw 0-255 pixels
    assert len(evaluation_images(student, 50, overrides=OVERRIDES)) == 4  # the split's 4 images
    with pytest.raises(ConfigError, match="--calibration-images"):
        evaluation_images(student, 0, overrides=OVERRIDES)


@pytest.mark.slow  # calibration and quantisation of the graph: ~15 s of CPU
def test_int8_static_quantises_the_chosen_operators_and_is_scored(student, tmp_path):
    path = tmp_path / "int8.onnx"
    result = export_model(student, path, quantize=QuantizeOptions("int8-static"),
                          calibration=lambda: evaluation_images(student, 2, overrides=OVERRIDES), **EXPORT)
    ops = op_types(path)
    assert ops["QuantizeLinear"] and ops["DequantizeLinear"]  # QDQ format, default
    assert result.lowering["quantized_ops"] == ["Conv"] and result.lowering["calibration_images"] == 2
    meta = onnx_metadata(path)
    assert meta["precision"] == "int8-static" and meta["per_channel"] is True
    assert all(c.argmax_agreement > 0.5 for c in result.lowered_checks)
    score = evaluate_checkpoint(path, overrides=OVERRIDES, threads=1)
    assert score.model == "segformer_b0 (onnx int8-static)" and math.isfinite(score.metrics["miou"])
    matmul_only = tmp_path / "matmul.onnx"
    export_model(student, matmul_only, quantize=QuantizeOptions("int8-static", ops=("MatMul",),
                                                                quant_format="qoperator"),
                 calibration=lambda: evaluation_images(student, 1, overrides=OVERRIDES), **EXPORT)
    quantised = op_types(matmul_only)
    assert quantised["QLinearMatMul"] and not quantised["QLinearConv"]


def test_fp16_keeps_float32_input_and_output(student, tmp_path):
    path = tmp_path / "fp16.onnx"
    result = export_model(student, path, quantize=QuantizeOptions("fp16"), **EXPORT)
    graph = onnx.load(str(path)).graph
    assert graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in graph.initializer)
    assert all(c.max_abs_diff < 0.1 and c.argmax_agreement > 0.9 for c in result.lowered_checks)


def test_int8_dynamic_quantises_matmuls(student, tmp_path):
    path = tmp_path / "dynamic.onnx"
    export_model(student, path, quantize=QuantizeOptions("int8-dynamic"), **EXPORT)
    ops = op_types(path)
    assert ops["MatMulInteger"] or ops["DynamicQuantizeLinear"]
    assert not ops["ConvInteger"]


def test_precision_int8_is_the_dynamic_matmul_graph(student, tmp_path, capsys):
    path = tmp_path / "int8.onnx"
    code = main(["export", str(student), "-o", str(path), "--exporter", "torchscript", "--no-progress",
                 "--precision", "int8", "--input-size", "64", "96"])
    assert code == 0 and "int8-dynamic" in capsys.readouterr().out
    ops = op_types(path)
    assert (ops["MatMulInteger"] or ops["DynamicQuantizeLinear"]) and not ops["ConvInteger"]
    assert onnx_metadata(path)["precision"] == "int8-dynamic"


@pytest.mark.parametrize(("arguments", "message"), [
    (["--precision", "int8-static"], "--precision int8-static needs calibration images"),
    (["--precision", "int8-static", "--calibration-data", "x", "--quantize-ops", "Conv,Frobnicate"],
     "--quantize-ops: Frobnicate cannot be quantised statically"),
    (["--precision", "int8-dynamic", "--quantize-ops", ","], "--quantize-ops needs at least one"),
])
def test_bad_precision_options_are_one_sentence_and_write_nothing(student, tmp_path, capsys, arguments,
                                                                    message):
    out = tmp_path / "out" / "student.onnx"
    code = main(["export", str(student), "-o", str(out), "--exporter", "torchscript", "--no-progress",
                 *arguments])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith(f"error: {message}") and "\n" not in err
    assert not out.exists() and (not out.parent.exists() or list(out.parent.iterdir()) == [])


def test_a_precision_needs_an_onnx_output(student, tmp_path, capsys):
    code = main(["export", str(student), "-o", str(tmp_path / "s.safetensors"), "--precision", "fp16"])
    assert code == 2 and "applies to ONNX output only" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_operator_profile_sums_to_the_kernel_time(fp32_graph):
    profile = onnx_operator_profile(fp32_graph, np.zeros((1, 3, 32, 64), np.float32), threads=1, runs=1)
    shares = sum(row["share"] for row in profile["ops"])
    assert shares == pytest.approx(1.0) and profile["kernel_ms"] > 0
    assert {"MatMul", "Conv"} & {row["op"] for row in profile["ops"]}
    assert "1 thread(s)" in format_operator_profile(profile)


@pytest.mark.slow  # two evaluations and an export: ~15 s of CPU
def test_tradeoff_scores_times_and_plots_each_variant(student, tmp_path):
    result = deployment_tradeoff(student, overrides=OVERRIDES, output=tmp_path / "graphs",
                                 variants=["eager", "ort-fp32", "ort-int8-dynamic"], threads=1, repeats=2,
                                 warmup=0, exporter="torchscript", input_size=(32, 64), peak_size=64,
                                 config_file=None)
    rows = {row["variant"]: row for row in result["rows"]}
    assert all(row["status"] == "ok" for row in rows.values()), rows
    assert rows["ort-fp32"]["miou"] == pytest.approx(rows["eager"]["miou"], abs=1e-6)
    assert rows["ort-fp32"]["speed_vs_baseline_wall"] == pytest.approx(1.0)
    assert rows["ort-int8-dynamic"]["size_mb"] < rows["ort-fp32"]["size_mb"]
    assert result["input_size"] == [1, 3, 32, 64] and result["threads"] == 1
    table = format_tradeoff(result)
    assert "1x3x32x64" in table and result["machine"]["cpu"]["model"] in table
    written = write_tradeoff(result, tmp_path / "out")
    assert sorted(written) == ["tradeoff.json", "tradeoff.md", "tradeoff.png"]
    assert json.loads(written["tradeoff.json"].read_text())["rows"][0]["variant"] == "eager"


def test_fused_attention_is_one_onnxruntime_kernel_per_attention_and_matches(student, tmp_path):
    path = tmp_path / "fused.onnx"
    result = export_model(student, path, attention="fused", **EXPORT)  # parity checked at 1e-4
    assert result.max_abs_diff < 1e-4
    heads = [node for node in onnx.load(str(path)).graph.node if node.op_type == "MultiHeadAttention"]
    assert len(heads) == 8 and {n.domain for n in heads} == {"com.microsoft"}  # MiT-B0: 2+2+2+2 blocks
    assert not op_types(path)["Softmax"]
    with pytest.raises(ConfigError, match="--attention fused needs --exporter torchscript"):
        export_model(student, tmp_path / "other.onnx", attention="fused",
                     **{**EXPORT, "exporter": "dynamo"})


def test_exported_accuracy_scores_source_and_graph_on_the_same_split(student, fp32_graph):
    check = exported_accuracy(student, fp32_graph, overrides=OVERRIDES, threads=1, max_drop=0.1)
    independent = 100 * evaluate_checkpoint(fp32_graph, overrides=OVERRIDES, threads=1).metrics["miou"]
    assert check.exported == pytest.approx(independent) and check.split == "val" and check.images == 3
    assert abs(check.drop) <= 0.1 and not check.flagged
    assert AccuracyCheck(50.0, 47.5, "val", 3, 2.0).flagged
    assert not AccuracyCheck(50.0, 48.5, "val", 3, 2.0).flagged
    assert AccuracyCheck(50.0, float("nan"), "val", 3, 2.0).flagged
    with pytest.raises(ConfigError, match="--max-drop"):
        exported_accuracy(student, fp32_graph, max_drop=-1)


def test_an_export_that_loses_more_than_max_drop_is_flagged_and_kept(student, tmp_path, capsys,
                                                                      monkeypatch):
    from transkd.cli import export as export_cli

    seen = {}

    def fake_accuracy(source, graph, data_root, *, last, max_drop):
        seen.update(source=source, graph=graph, data_root=data_root, max_drop=max_drop)
        return AccuracyCheck(40.0, 36.5, "val", 3, max_drop)

    monkeypatch.setattr(export_cli, "exported_accuracy", fake_accuracy)
    path = tmp_path / "int8.onnx"
    code = main(["export", str(student), "-o", str(path), "--exporter", "torchscript", "--no-progress",
                 "--precision", "int8", "--input-size", "32", "64", "--eval-data", "--max-drop", "3"])
    out, err = capsys.readouterr()
    assert code == export_cli.ACCURACY_FLAGGED and path.is_file()
    assert seen == {"source": str(student), "graph": path, "data_root": None, "max_drop": 3.0}
    assert "drop 3.50 points (--max-drop 3)" in out
    assert err.startswith("WARNING: ") and "loses 3.50 mIoU points" in err and err.count("\n") == 1


@pytest.mark.parametrize(("images", "message"), [
    ([], "gave no images"),
    ([np.zeros((1, 1, 32, 64))], "has shape (1, 1, 32, 64)"),
    ([np.zeros((1, 3, 32, 64)), np.zeros((1, 3, 8, 16))], "calibration image 1 is 8x16"),
    ([np.zeros((1, 3, 200, 300))], "calibration image 0 is 200x300"),
])
def test_calibration_images_that_cannot_calibrate_are_one_sentence(images, message):
    with pytest.raises(ConfigError, match=re.escape(message)) as error:
        checked_calibration(images, 32, 64)
    assert "\n" not in str(error.value)
    assert len(checked_calibration([np.zeros((3, 40, 60))], 32, 64)) == 1


def test_eval_data_on_a_run_folder_scores_the_graph_with_the_runs_config(student, tmp_path, capsys):
    """The graph's own metadata names no data location or sizes: it is scored with the run's config."""
    run = tmp_path / "run"
    (run / "last").mkdir(parents=True)
    (run / "config.yaml").write_text(load_config(None, OVERRIDES).to_yaml(), encoding="utf-8")
    (run / "last" / "model.safetensors").write_bytes(Path(student).read_bytes())
    out = tmp_path / "fp32.onnx"
    code = main(["export", str(run), "--last", "-o", str(out), "--exporter", "torchscript", "--no-progress",
                 "--input-size", "32", "64", "--eval-data", "--max-drop", "0.1"])
    printed = capsys.readouterr().out
    assert code == 0 and "mIoU on val (3 images, same pipeline)" in printed
    assert "drop 0.00 points (--max-drop 0.1)" in printed
