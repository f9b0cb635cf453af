"""Selection off the reported split, the reported split scored once, and compute budgets."""

import json
import math

import numpy as np
import pytest
import torch

from transkd.cli import main
from transkd.config import load_config
from transkd.errors import ConfigError
from transkd.models import create_model
from transkd.report.stats import miou_of
from transkd.weights.io import save_model

TINY = ["--set", "data.options={length: 12, size: [32, 64]}", "--set", "data.val_options={length: 4}",
        "--set", "protocol.image_size=[32, 64]", "--set", "train.batch_size=2",
        "--set", "train.iterations=6", "--set", "schedule.kind=standard",
        "--set", "schedule.warmup_iters=1", "--set", "train.val_interval=2",
        "--set", "train.num_workers=0", "--set", "train.tensorboard=false",
        "--set", "eval.batch_size=4", "--set", "train.log_interval=1", "--no-progress"]


def records(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def summary(run_dir):
    return json.loads((run_dir / "summary.json").read_text())


def test_holdout_chooses_and_the_reported_split_is_scored_once_at_the_end(tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert main(["train", *TINY, "--set", "data.selection=train_holdout:0.25", "-o", str(run_dir)]) == 0
    out = capsys.readouterr().out
    assert "val mIoU (evaluated once; best on train_holdout 25%)" in out
    kinds = [r["kind"] for r in records(run_dir)]
    selects = [r for r in records(run_dir) if r["kind"] == "select"]
    vals = [r for r in records(run_dir) if r["kind"] == "val"]
    assert [r["step"] for r in selects] == [2, 4, 6] and all(r["split"] == "train_holdout" for r in selects)
    assert vals and all(r["reported"] and r["step"] == 6 for r in vals)
    assert kinds.index("val") > max(i for i, k in enumerate(kinds) if k in ("select", "train"))
    saved = summary(run_dir)
    assert saved["selection"]["label"] == "best on train_holdout 25%, 3 images"
    best = max(selects, key=lambda r: r["miou"])
    assert saved["best"]["step"] == best["step"]
    assert math.isclose(saved["best"]["selected_on"]["miou"], best["miou"])
    confusion = np.load(run_dir / saved["per_image_confusion"])["confusion"]
    assert confusion.shape == (4, 10, 10)  # the 4 validation images, one matrix each
    assert math.isclose(miou_of(confusion.sum(0)), saved["best"]["miou"])
    assert saved["compute"]["train_macs"] == saved["compute"]["per_step"] * 6


def test_last_reports_the_last_checkpoint_without_scoring_anything_before(tmp_path):
    run_dir = tmp_path / "run"
    assert main(["train", *TINY, "--set", "data.selection=last", "-o", str(run_dir)]) == 0
    kinds = [r["kind"] for r in records(run_dir)]
    assert "select" not in kinds and kinds.count("val") == 1
    saved = summary(run_dir)
    assert saved["best"]["step"] == 6 and saved["selection"]["label"] == "last checkpoint (no selection)"
    assert (run_dir / "best" / "model.safetensors").is_file()


@pytest.mark.slow
def test_a_macs_budget_gives_a_costlier_method_fewer_steps_and_the_schedule_spans_them(tmp_path):
    torch.manual_seed(0)
    teacher = save_model(create_model("segformer_b0", num_classes=10), tmp_path / "t.safetensors")
    budget = ["--set", "train.budget=macs:3e9", "--set", "optim.lr=0.001"]
    assert main(["train", *TINY, *budget, "-o", str(tmp_path / "plain")]) == 0
    assert main(["distill", *TINY, *budget, "--method", "kd", "--teacher", str(teacher),
                 "-o", str(tmp_path / "kd")]) == 0
    steps = {}
    for name in ("plain", "kd"):
        saved = summary(tmp_path / name)
        per_step = saved["compute"]["per_step"]
        steps[name] = saved["total_steps"]
        assert steps[name] == math.floor(3e9 / per_step) == saved["budget"]["steps"] == saved["steps"]
        last_lr = [r for r in records(tmp_path / name) if r["kind"] == "train"][-1]["lr"]
        assert math.isclose(last_lr, 0.001 / steps[name], rel_tol=1e-6)  # poly decay over the budget
    compute = summary(tmp_path / "kd")["compute"]
    assert compute["teacher_forward"] == compute["student_forward"] > 0
    assert compute["per_image"] == 3 * compute["student_forward"] + compute["teacher_forward"]
    assert steps["kd"] < steps["plain"]


def test_budget_and_selection_errors_name_the_key():
    with pytest.raises(ConfigError, match="config key 'train.budget' must be steps:N"):
        load_config(None, ["train.budget=flops:3"])
    with pytest.raises(ConfigError, match="config key 'data.selection' must be"):
        load_config(None, ["data.selection=test"])
    assert load_config(None, ["train.budget=steps:5"]).train.budget == "steps:5"


def test_a_seconds_budget_is_turned_into_steps_once_from_a_calibration(tmp_path):
    run_dir = tmp_path / "run"
    assert main(["train", *TINY, "--set", "train.budget=seconds:1.5", "-o", str(run_dir)]) == 0
    saved = summary(run_dir)
    calibrated = saved["budget"]["calibrated_step_seconds"]
    assert calibrated > 0 and saved["total_steps"] == saved["steps"] == max(1, math.floor(1.5 / calibrated))
    assert saved["compute"]["step_seconds"] > 0 and saved["compute"]["wall_seconds"] > 0


@pytest.mark.slow
def test_an_interrupted_holdout_run_resumes_to_the_same_reported_checkpoint(tmp_path):
    from transkd.config import load_config
    from transkd.engine.run import execute, plan_run

    overrides = [TINY[i + 1] for i in range(0, len(TINY) - 1, 2)]  # the --set values
    def config(name):
        return load_config(None, [*overrides, "data.selection=train_holdout:0.25",
                                  "train.checkpoint_interval=1", f"output.dir={tmp_path / name}"])

    whole = execute(plan_run(config("whole")))
    steps = {"n": 0}

    def stop_after_three():
        steps["n"] += 1
        if steps["n"] == 3:
            raise KeyboardInterrupt

    assert execute(plan_run(config("parts")), on_step=stop_after_three).status == "interrupted"
    assert not (tmp_path / "parts" / "evaluation").exists()  # val not scored before the end
    resumed = execute(plan_run(config("parts"), resume="auto"))
    assert resumed.status == "completed"
    assert resumed.best["step"] == whole.best["step"] and resumed.best["miou"] == whole.best["miou"]
    assert summary(tmp_path / "parts")["best"] == summary(tmp_path / "whole")["best"]
