import json
import os
import signal
from pathlib import Path

import pytest

from transkd.cli import main
from transkd.config import load_config
from transkd.recipes.demo import SIZES, demo_config

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "synthetic"


def test_tiny_demo_runs_end_to_end(tmp_path, capsys):
    output = tmp_path / "demo"
    code = main(["demo", "--tiny", "--methods", "transkd_base", "--output", str(output)])
    out, err = capsys.readouterr()
    assert code == 0, err
    for name in ("results.md", "results.json", "curves.png", "predictions/grid.png"):
        assert (output / name).is_file(), name
    for run, network in (("teacher", "model"), ("student", "model"), ("transkd_base", "student")):
        for name in ("config.yaml", "metrics.jsonl", "checkpoints/last.pt", f"best/{network}.safetensors"):
            assert (output / run / name).is_file(), f"{run}/{name}"
    masks = sorted(p.name for p in (output / "predictions").glob("*_transkd_base_mask.png"))
    overlays = sorted((output / "predictions").glob("*_teacher_overlay.png"))
    assert masks and overlays and (output / "predictions" / "legend.png").is_file()
    results = json.loads((output / "results.json").read_text())
    assert [row["run"] for row in results["rows"]] == ["teacher", "student", "transkd_base"]
    distilled = results["rows"][2]
    assert distilled["params"] == results["rows"][1]["params"]  # the deployed student is plain B0
    assert distilled["params_training"] > distilled["params"]
    assert "| run | network | method | val mIoU (%) | params (M) | GMACs" in out
    assert "conv+linear" in out and "32x64" in out

    code = main(["demo", "--tiny", "--output", str(output)])  # the same demo again: nothing retrained
    out = capsys.readouterr().out
    assert code == 0 and out.count("(finished before: kept)") == 3
    (output / "notes.txt").write_text("mine")
    code = main(["demo", "--tiny", "--output", str(output)])
    err = capsys.readouterr().err
    assert code == 2 and err.strip() == (f"error: demo folder {output} holds notes.txt, which is not part "
                                         "of this demo; choose another folder with --output")


@pytest.mark.slow  # three demos of two steps a network
def test_interrupted_demo_continues_where_it_stopped(tmp_path, capsys, monkeypatch):
    """Ctrl-C during the student: the finished teacher is kept, the student resumes from its
    checkpoint, and the message says how to continue."""
    from transkd.engine.trainer import Trainer

    output = tmp_path / "demo"
    args = ["demo", "--tiny", "--minutes", "10", "--output", str(output)]  # two steps a network
    original = Trainer._train_step
    steps = []

    def interrupt_third_step(self, *step_args):
        stats = original(self, *step_args)
        steps.append(1)
        if len(steps) == 3:  # the student's first step
            os.kill(os.getpid(), signal.SIGINT)
        return stats

    monkeypatch.setattr(Trainer, "_train_step", interrupt_third_step)
    assert main(args) == 130
    out = capsys.readouterr().out
    assert (f"interrupted during the student run at step 1/2; run `transkd demo --tiny --minutes 10 "
            f"--output {output}` again to continue") in out
    teacher_metrics = (output / "teacher" / "metrics.jsonl").read_bytes()
    monkeypatch.setattr(Trainer, "_train_step", original)

    assert main(args) == 0
    out = capsys.readouterr().out
    assert "[1/3] teacher: segformer_b1" in out and "(finished before: kept)" in out
    assert "[2/3] student: segformer_b0, 2 steps of batch 2 at 32x64 (continuing where it stopped)" in out
    assert (output / "teacher" / "metrics.jsonl").read_bytes() == teacher_metrics
    student = [json.loads(line) for line in (output / "student" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in student if r.get("event") == "resumed"] == [1]
    results = json.loads((output / "results.json").read_text())
    assert [row["steps"] for row in results["rows"]] == [2, 2, 2]

    code = main(["demo", "--tiny", "--output", str(output)])  # other settings: refused, nothing lost
    err = capsys.readouterr().err
    assert code == 2 and "holds a teacher run with other settings" in err
    assert (output / "teacher" / "metrics.jsonl").read_bytes() == teacher_metrics


def test_demo_presets_match_the_demo():
    """configs/synthetic holds the demo's runs as presets; they must not drift from the demo."""
    size = SIZES["default"]
    out = Path("runs/synthetic")
    expected = {
        "teacher_b1_demo": demo_config("teacher", size, 5.0, out / "teacher_b1_demo"),
        "student_b0_demo": demo_config("student", size, 5.0, out / "student_b0_demo"),
    }
    for method in ("transkd_base", "transkd_gl", "transkd_ea"):
        expected[f"{method}_b1-b0_demo"] = demo_config(
            "distill", size, 5.0, out / f"{method}_b1-b0_demo", method=method,
            teacher_weights="runs/synthetic/teacher_b1_demo/best/model.safetensors")
    for stem, config in expected.items():
        assert load_config(CONFIGS / f"{stem}.yaml") == config, stem


def test_colour_masks_use_the_palette_and_draw_void_black():
    import numpy as np

    from transkd.data.colours import colorize, legend_image, overlay

    label = np.array([[0, 1], [255, 1]], dtype=np.uint8)
    mask = colorize(label, [(10, 20, 30), (200, 100, 0)])
    assert mask[0, 0].tolist() == [10, 20, 30] and mask[0, 1].tolist() == [200, 100, 0]
    assert mask[1, 0].tolist() == [0, 0, 0]
    blended = overlay(np.full((2, 2, 3), 100, np.uint8), mask, alpha=0.5)
    assert blended[0, 1].tolist() == [150, 100, 50]
    legend = legend_image(["road", "car"], [(10, 20, 30), (200, 100, 0)], columns=3)
    colours = {tuple(c) for _, c in legend.getcolors(1 << 16)}
    assert {(10, 20, 30), (200, 100, 0), (0, 0, 0)} <= colours  # both classes and "ignored"
