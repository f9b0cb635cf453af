"""``transkd predict``: masks/overlays at the input size in the palette colours, skipped bad inputs,
one-sentence errors, and outputs that are never half-written."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from transkd.cli import main
from transkd.deploy import Student, generated_palette
from transkd.deploy.predict import (
    InputImage,
    PredictOptions,
    collect_inputs,
    segment_image,
    write_png,
)
from transkd.errors import CheckpointError, ConfigError
from transkd.models import create_model
from transkd.weights.io import model_file, save_model, save_state_dict

PALETTE = [[255, 0, 0], [0, 255, 0], [0, 0, 255]]


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return create_model("segformer_b0", num_classes=4).eval()  # 3 classes + the paper's void output


@pytest.fixture(scope="module")
def student_file(model, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("student") / "student.safetensors"
    return save_model(model, path, dataset="toy", class_names=["road", "car", "sky"], palette=PALETTE,
                      void_as_extra_class=True, resize={"short_side": 40})


def write_image(path: Path, height: int, width: int, seed: int) -> np.ndarray:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return pixels


def expected_ids(model, image: np.ndarray, short_side: int, classes: int) -> np.ndarray:
    """Independent reference: resize (PIL bilinear), normalise, forward, upsample, arg-max."""
    height, width = image.shape[:2]
    factor = short_side / min(height, width)
    size = (int(height * factor + 0.5), int(width * factor + 0.5))
    resized = np.asarray(Image.fromarray(image).resize(size[::-1], Image.BILINEAR), dtype=np.float32)
    mean, std = np.array(model.input_mean) * 255, np.array(model.input_std) * 255
    x = torch.from_numpy(((resized - mean) / std).transpose(2, 0, 1).astype(np.float32))[None]
    with torch.inference_mode():
        logits = F.interpolate(model(x), size=(height, width), mode="bilinear", align_corners=False)
    return logits[0, :classes].argmax(0).numpy()


def test_masks_overlays_and_raw_at_input_size_in_palette_colours(student_file, model, tmp_path, capsys):
    images = {"wide": write_image(tmp_path / "in" / "wide.png", 40, 60, 1),
              "odd": write_image(tmp_path / "in" / "odd.png", 37, 51, 2),
              "wide2": write_image(tmp_path / "in" / "wide2.png", 40, 60, 3)}
    out = tmp_path / "out"
    code = main(["predict", str(student_file), str(tmp_path / "in"), "--output", str(out), "--raw",
                 "--batch-size", "2", "--no-progress"])
    assert code == 0
    assert "wrote 3 of 3" in capsys.readouterr().out
    reference = Student.load(student_file).model
    for name, pixels in images.items():
        mask = Image.open(out / "masks" / f"{name}.png")
        assert mask.mode == "P" and mask.size == (pixels.shape[1], pixels.shape[0])
        assert mask.getpalette()[:9] == [v for c in PALETTE for v in c]
        ids = np.asarray(mask)
        assert set(np.unique(ids)) <= {0, 1, 2}  # the void output is never predicted
        np.testing.assert_array_equal(ids, expected_ids(reference, pixels, 40, 3))
        np.testing.assert_array_equal(np.asarray(Image.open(out / "raw" / f"{name}.png")), ids)
        overlay = np.asarray(Image.open(out / "overlays" / f"{name}.png"), dtype=np.float64)
        blend = 0.5 * pixels + 0.5 * np.asarray(PALETTE, dtype=np.float64)[ids]
        assert overlay.shape == pixels.shape and np.abs(overlay - blend).max() <= 0.5 + 1e-9
    legend = json.loads((out / "classes.json").read_text())
    assert legend["class_names"] == ["road", "car", "sky"] and legend["palette"] == PALETTE
    assert legend["resize"] == {"short_side": 40} and legend["palette_generated"] is False
    picture = Image.open(out / "legend.png").convert("RGB")  # the same legend as a picture
    assert {tuple(c) for c in PALETTE} <= {c for _, c in picture.getcolors(1 << 16)}
    assert not [p for p in out.rglob("*") if p.name.startswith(".")]  # no temporary files left


def test_student_without_names_or_palette_gets_generated_colours(model, tmp_path):
    plain = save_model(model, tmp_path / "plain.safetensors")
    write_image(tmp_path / "one.jpg", 33, 45, 4)
    pixels = np.asarray(Image.open(tmp_path / "one.jpg").convert("RGB"))  # JPEG is lossy: read back
    assert main(["predict", str(plain), str(tmp_path / "one.jpg"), "-o", str(tmp_path / "out"),
                 "--no-progress", "--no-overlays"]) == 0
    mask = Image.open(tmp_path / "out" / "masks" / "one.png")
    palette = generated_palette(4)
    assert mask.size == (45, 33) and mask.getpalette()[:12] == [v for c in palette for v in c]
    assert len(set(palette)) == 4 and (0, 0, 0) not in palette
    assert not (tmp_path / "out" / "overlays").exists()
    reference = Student.load(plain).model
    np.testing.assert_array_equal(np.asarray(mask), expected_ids(reference, pixels, 33, 4))


def test_corrupt_and_non_image_inputs_are_skipped_with_a_warning_and_exit_1(student_file, tmp_path, capsys):
    write_image(tmp_path / "in" / "good.png", 40, 48, 5)
    (tmp_path / "in" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)
    notes = tmp_path / "notes.txt"
    notes.write_text("not an image")
    out = tmp_path / "out"
    code = main(["predict", str(student_file), str(tmp_path / "in"), str(notes), "-o", str(out),
                 "--no-progress"])
    err = capsys.readouterr().err
    assert code == 1
    assert f"warning: skipping {tmp_path / 'in' / 'broken.png'}" in err
    assert f"warning: skipping {notes}" in err
    assert "2 of 3 input(s) could not be read" in err
    assert (out / "masks" / "good.png").is_file() and (out / "overlays" / "good.png").is_file()
    assert not (out / "masks" / "broken.png").exists() and not (out / "masks" / "notes.png").exists()


@pytest.mark.parametrize("make_bad", ["adapters", "random", "pickle"])
def test_a_checkpoint_that_is_not_a_student_is_one_sentence(make_bad, tmp_path, capsys):
    write_image(tmp_path / "a.png", 32, 32, 6)
    if make_bad == "adapters":
        bad = save_state_dict({"csf.0.weight": torch.zeros(2)}, tmp_path / "adapters.safetensors",
                              {"student": "segformer_b0"})
    elif make_bad == "random":
        bad = tmp_path / "random.safetensors"
        bad.write_bytes(np.random.default_rng(0).bytes(256))
    else:
        bad = tmp_path / "last.pt"
        torch.save({"model": {}}, bad)
    assert main(["predict", str(bad), str(tmp_path / "a.png"), "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and str(bad) in err and "\n" not in err
    assert not (tmp_path / "out" / "masks").exists()


def test_output_that_is_a_file_is_one_sentence(student_file, tmp_path, capsys):
    write_image(tmp_path / "a.png", 32, 32, 7)
    (tmp_path / "taken").write_text("")
    assert main(["predict", str(student_file), str(tmp_path / "a.png"), "-o", str(tmp_path / "taken")]) == 2
    err = capsys.readouterr().err.strip()
    taken = tmp_path / "taken"
    assert err == f"error: --output {taken} is an existing file; give a folder for the predictions"


def test_sliding_window_without_resize_and_tiny_images(student_file, tmp_path):
    write_image(tmp_path / "in" / "big.png", 45, 70, 8)
    write_image(tmp_path / "in" / "tiny.png", 9, 13, 9)  # below the encoder's minimum: padded
    out = tmp_path / "out"
    assert main(["predict", str(student_file), str(tmp_path / "in"), "-o", str(out), "--mode", "slide",
                 "--crop", "32", "32", "--stride", "24", "24", "--resize-short-side", "0",
                 "--no-progress"]) == 0
    assert Image.open(out / "masks" / "big.png").size == (70, 45)
    assert Image.open(out / "masks" / "tiny.png").size == (13, 9)
    legend = json.loads((out / "classes.json").read_text())
    assert legend["inference"] == "slide 32x32 stride 24x24" and legend["resize"] is None


def test_segment_image_matches_the_files_written(student_file, tmp_path):
    pixels = write_image(tmp_path / "x.png", 36, 52, 10)
    student = Student.load(student_file)
    assert main(["predict", str(student_file), str(tmp_path / "x.png"), "-o", str(tmp_path / "o"),
                 "--no-progress", "--flip"]) == 0
    ids = segment_image(student, pixels, PredictOptions(flip=True))
    np.testing.assert_array_equal(ids, np.asarray(Image.open(tmp_path / "o" / "masks" / "x.png")))


def test_collect_inputs_globs_folders_duplicates_and_name_clashes(tmp_path):
    for name in ("a.png", "b.jpg", "notes.txt", "sub/c.png"):
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")
    found = collect_inputs([str(tmp_path / "*"), str(tmp_path / "a.png")])
    assert [i.name for i in found] == ["a", "b"]  # glob keeps image suffixes; duplicate dropped
    nested = collect_inputs([tmp_path], recursive=True)
    assert [i.name for i in nested] == ["a", "b", "sub/c"]
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "a.jpg").write_bytes(b"")
    with pytest.raises(ConfigError, match="would both write a.png"):
        collect_inputs([tmp_path / "a.png", tmp_path / "other"])
    with pytest.raises(ConfigError, match="no image file matches"):
        collect_inputs([str(tmp_path / "*.zzz")])
    with pytest.raises(FileNotFoundError, match="does not exist"):
        collect_inputs([tmp_path / "missing.png"])
    assert collect_inputs([tmp_path / "notes.txt"]) == [InputImage(tmp_path / "notes.txt", "notes")]


def test_a_failed_write_leaves_no_file(tmp_path, monkeypatch):
    image = Image.fromarray(np.zeros((4, 4), dtype=np.uint8))
    original_save = Image.Image.save

    def save_then_fail(self, fp, *args, **kwargs):
        original_save(self, fp, *args, **kwargs)  # bytes reach the temporary file ...
        raise OSError("disk full")                # ... then the write fails

    monkeypatch.setattr(Image.Image, "save", save_then_fail)
    with pytest.raises(OSError, match="disk full"):
        write_png(tmp_path / "masks" / "x.png", image)
    assert list((tmp_path / "masks").iterdir()) == []


def test_a_run_folder_means_its_best_student(student_file, tmp_path):
    run = tmp_path / "run"
    (run / "best").mkdir(parents=True)
    (run / "best" / "student.safetensors").write_bytes(student_file.read_bytes())
    assert model_file(run) == run / "best" / "student.safetensors"
    assert Student.load(run).class_names == ("road", "car", "sky")
    with pytest.raises(CheckpointError, match="folder without a deployable network"):
        model_file(tmp_path)
