"""``transkd bench``: labelled rows for each backend, a failing backend reported (not raised),
the matmul peak, and checkpoints as well as model names."""

from __future__ import annotations

import json

import pytest
import torch

from transkd.cli import main
from transkd.deploy.bench import bench_model, format_bench, summarize
from transkd.errors import ConfigError
from transkd.models import create_model
from transkd.models.linear import cpu_matmul_backend
from transkd.weights.io import save_model

TINY = dict(input_size=(64, 64), batch=2, threads=1, repeats=2, warmup=1, peak_size=64)
#: The peak takes the CPU matmul library of the models' linear layers (see models.linear).
PEAK_WHAT = ("oneDNN matmul fp32 64x64 @ 64x64 (transkd's linear layers)"
             if cpu_matmul_backend() == "onednn" else "torch.mm fp32 64x64 @ 64x64")


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return create_model("segformer_b0", num_classes=3).eval()


def test_rows_for_each_backend_and_a_failing_one_is_unavailable(model):
    result = bench_model(model, backends=("eager", "onnxruntime", "compile"), exporter="torchscript",
                         compile_backend="no_such_backend", source="random weights", **TINY)
    assert {"model", "num_classes", "weights", "input_size", "batch", "threads", "repeats", "warmup",
            "flops_per_forward", "flops_convention", "peak", "rows", "machine"} <= set(result)
    assert result["input_size"] == [2, 3, 64, 64] and result["threads"] == 1 and result["batch"] == 2
    assert result["flops_per_forward"] > 0 and "flop_counter" in result["flops_convention"]
    assert result["peak"]["what"] == PEAK_WHAT and result["peak"]["gflops_per_s"] > 0
    assert result["machine"]["cpu_matmul"].startswith(cpu_matmul_backend())
    assert {"load_average_before", "load_average_after", "cpu_count", "torch"} <= set(result["machine"])
    rows = {row["backend"]: row for row in result["rows"]}
    assert list(rows) == ["eager", "onnxruntime", "compile"]
    for name in ("eager", "onnxruntime"):
        row = rows[name]
        assert row["status"] == "ok", row.get("reason")
        latency = row["latency"]
        assert latency["repeats"] == 2
        order = [latency[k] for k in ("min_ms", "q25_ms", "median_ms", "q75_ms", "max_ms")]
        assert order == sorted(order)
        assert row["images_per_s"] == pytest.approx(2 / (latency["median_ms"] / 1e3))
        assert row["gflops_per_s"] == pytest.approx(result["flops_per_forward"] / latency["median_ms"] / 1e6)
        assert row["fraction_of_peak"] == pytest.approx(row["gflops_per_s"] / row["peak_gflops_per_s"])
    assert rows["compile"]["status"] == "unavailable"
    assert "no_such_backend" in rows["compile"]["reason"] and "latency" not in rows["compile"]
    table = format_bench(result)
    assert "input 2x3x64x64 (batch 2) · 1 thread(s)" in table
    assert "compile      unavailable: InvalidBackend" in table
    assert PEAK_WHAT in table and "GFLOP/s" in table and "load average" in table
    assert "timed right before each backend" in table and "host memory: " in table


def test_each_backend_is_scored_against_the_ceiling_timed_right_before_it(model, monkeypatch):
    """A shared machine drifts between blocks: each row's share uses the matmul timed next to it."""
    from transkd.deploy import bench

    calls = []
    real = bench.time_runs

    def recording(run, warmup, repeats, tick=None):
        calls.append((warmup, repeats))
        return real(run, warmup, repeats, tick)

    monkeypatch.setattr(bench, "time_runs", recording)
    result = bench_model(model, backends=("eager", "onnxruntime"), exporter="torchscript", **TINY)
    assert calls == [(1, 3), (1, 2), (1, 3), (1, 2)]  # ceiling, eager, ceiling, onnxruntime
    assert result["peak"]["latency"]["repeats"] == 6
    for row in result["rows"]:
        assert row["fraction_of_peak"] == pytest.approx(row["gflops_per_s"] / row["peak_gflops_per_s"])


def test_cli_json_with_a_model_name_and_with_a_checkpoint(model, tmp_path, capsys):
    threads = torch.get_num_threads()
    common = ["--input-size", "64", "64", "--threads", "1", "--repeats", "1", "--warmup", "0",
              "--backends", "eager", "--peak-size", "32", "--json"]
    assert main(["bench", "segformer_b0", "--num-classes", "3", *common]) == 0
    by_name = json.loads(capsys.readouterr().out)
    assert by_name["weights"].startswith("random weights") and by_name["num_classes"] == 3
    assert by_name["rows"][0]["status"] == "ok" and by_name["input_size"] == [1, 3, 64, 64]
    path = save_model(model, tmp_path / "student.safetensors")
    assert main(["bench", str(path), *common]) == 0
    by_file = json.loads(capsys.readouterr().out)
    assert by_file["weights"] == f"weights from {path}"
    assert by_file["flops_per_forward"] == by_name["flops_per_forward"]
    assert torch.get_num_threads() == threads


def test_cli_errors_are_one_sentence(model, tmp_path, capsys):
    assert main(["bench", "not_a_model"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: not_a_model is neither an existing file nor a model name")
    path = save_model(model, tmp_path / "student.safetensors")
    assert main(["bench", str(path), "--num-classes", "5"]) == 2
    assert "--num-classes applies to model names only" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="repeats must be an integer of at least 1"):
        bench_model(model, input_size=(64, 64), repeats=0)


def test_summary_statistics():
    summary = summarize([0.004, 0.001, 0.003, 0.002])
    assert summary["median_ms"] == pytest.approx(2.5) and summary["repeats"] == 4
    assert (summary["min_ms"], summary["max_ms"]) == pytest.approx((1.0, 4.0))
    assert (summary["q25_ms"], summary["q75_ms"]) == pytest.approx((1.75, 3.25))


def test_time_runs_ticks_after_every_call_warmup_included():
    from transkd.deploy.bench import time_runs

    calls, ticks = [], []
    timings = time_runs(lambda: calls.append(1), warmup=2, repeats=3, tick=lambda: ticks.append(len(calls)))
    assert len(timings) == 3 and ticks == [1, 2, 3, 4, 5]
