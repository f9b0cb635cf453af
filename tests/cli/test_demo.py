import json
from pathlib import Path

from transkd.cli import main
from transkd.config import load_config
from transkd.engine.demo import SIZES, demo_config

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
    assert masks and overlays
    results = json.loads((output / "results.json").read_text())
    assert [row["run"] for row in results["rows"]] == ["teacher", "student", "transkd_base"]
    distilled = results["rows"][2]
    assert distilled["params"] == results["rows"][1]["params"]  # the deployed student is plain B0
    assert distilled["params_training"] > distilled["params"]
    assert "| run | network | method | val mIoU (%) | params (M) | GMACs" in out
    assert "conv+linear" in out and "32x64" in out

    code = main(["demo", "--tiny", "--output", str(output)])
    assert code == 2 and "is not empty" in capsys.readouterr().err


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

    from transkd.engine.visualize import colorize, overlay

    label = np.array([[0, 1], [255, 1]], dtype=np.uint8)
    mask = colorize(label, [(10, 20, 30), (200, 100, 0)])
    assert mask[0, 0].tolist() == [10, 20, 30] and mask[0, 1].tolist() == [200, 100, 0]
    assert mask[1, 0].tolist() == [0, 0, 0]
    blended = overlay(np.full((2, 2, 3), 100, np.uint8), mask, alpha=0.5)
    assert blended[0, 1].tolist() == [150, 100, 50]
