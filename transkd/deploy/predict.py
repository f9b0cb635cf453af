"""Segment image files with a saved student: colour masks, overlays and raw class-id masks.

Each image is read with PIL (EXIF orientation applied, converted to RGB), resized the way the
student was evaluated (the ``resize`` metadata, or ``resize_short_side``), normalised with the
student's own mean/std and run whole or in sliding windows. The logits are resized (bilinear)
straight to the original size before the arg-max, so every output has the input's pixel size.

Outputs under the output folder, one PNG per input named after it:
``masks/<name>.png`` (palette PNG: pixel value = class id, shown in the class colours),
``overlays/<name>.png`` (the mask blended over the image) and, on request, ``raw/<name>.png``
(grey-level class ids). ``classes.json`` records names, colours and the settings used, and
``legend.png`` shows which colour is which class. Every file
is written to a temporary name and renamed, so an interrupted run leaves no half-written PNG.
"""

from __future__ import annotations

import glob
import json
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps
from tqdm import tqdm

from ..data.colours import legend_image
from ..data.transforms import Normalize, Resize, resize_image
from ..errors import CheckpointError, ConfigError
from ..inference import InferenceOptions, is_size, predict_logits
from ..weights.io import atomic_write
from . import Student

IMAGE_SUFFIXES = (".bmp", ".gif", ".jpeg", ".jpg", ".pgm", ".png", ".ppm", ".tif", ".tiff", ".webp")
GLOB_CHARACTERS = "*?["
#: Whole-image inputs smaller than this (either side) go through the padded sliding-window path:
#: the MiT/PVTv2 stage-1 spatial reduction (an 8×8 conv on the 1/4 grid) needs sides of 29 px.
MIN_WHOLE_SIDE = 32
#: Palette PNGs hold at most 256 colours; beyond that masks are written as RGB.
MAX_PALETTE_CLASSES = 256


@dataclass(frozen=True)
class InputImage:
    """One file to segment and the name its outputs get (``a/b`` for ``--recursive`` sub-folders)."""

    path: Path
    name: str


class UnreadableImageError(Exception):
    """An input file that PIL cannot decode as an image."""


# --------------------------------------------------------------------------- inputs

def collect_inputs(inputs: Sequence[str | Path], recursive: bool = False) -> list[InputImage]:
    """Files named by ``inputs``: image files, folders (their image files) and glob patterns.

    A file given by name is taken whatever its suffix (an unreadable one is skipped later with a
    warning); folders and patterns contribute files with an image suffix only. Duplicates are
    dropped; two inputs that would write the same output name are refused.
    """
    found: list[InputImage] = []
    for item in inputs:
        text = str(item)
        path = Path(text)
        if path.is_dir():
            files = _folder_images(path, recursive)
            if not files:
                where = "or its sub-folders " if recursive else ""
                raise ConfigError(f"input folder {path} {where}holds no image files "
                                  f"({' '.join(IMAGE_SUFFIXES)})")
            found.extend(InputImage(f, f.relative_to(path).with_suffix("").as_posix()) for f in files)
        elif path.is_file():
            found.append(InputImage(path, path.stem))
        elif any(c in text for c in GLOB_CHARACTERS):
            matches = sorted(Path(p) for p in glob.glob(text, recursive=True)
                             if Path(p).is_file() and Path(p).suffix.lower() in IMAGE_SUFFIXES)
            if not matches:
                raise ConfigError(f"no image file matches the input pattern {text!r}")
            found.extend(InputImage(m, m.stem) for m in matches)
        else:
            raise FileNotFoundError(f"input {text} does not exist")
    return _unique(found)


def _folder_images(folder: Path, recursive: bool) -> list[Path]:
    candidates = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(p for p in candidates if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                  and not p.name.startswith("."))


def _unique(items: list[InputImage]) -> list[InputImage]:
    seen_paths: set[Path] = set()
    names: dict[str, Path] = {}
    unique = []
    for item in items:
        resolved = item.path.resolve()
        if resolved in seen_paths:
            continue
        seen_paths.add(resolved)
        key = item.name.lower()  # a.png and A.png collide on case-insensitive file systems
        if key in names:
            raise ConfigError(f"inputs {names[key]} and {item.path} would both write {item.name}.png; "
                              "predict them into separate output folders")
        names[key] = item.path
        unique.append(item)
    return unique


def read_rgb(path: str | Path) -> np.ndarray:
    """(H, W, 3) uint8 RGB pixels, upright per EXIF; UnreadableImageError with PIL's reason."""
    try:
        with Image.open(path) as image:
            upright = ImageOps.exif_transpose(image)
            return np.asarray(upright.convert("RGB"))
    except Exception as exc:  # PIL raises OSError, ValueError, SyntaxError, DecompressionBombError...
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UnreadableImageError(f"not a readable image ({reason})") from None


# --------------------------------------------------------------------------- settings

@dataclass(frozen=True)
class ResizeSpec:
    """How inputs are resized before the network: at most one of the three, else the original size."""

    short_side: int | None = None
    size: tuple[int, int] | None = None
    scale: tuple[int, int] | None = None

    def target(self, height: int, width: int) -> tuple[int, int]:
        return Resize(size=self.size, short_side=self.short_side, scale=self.scale).target_size(height, width)

    def describe(self) -> str:
        if self.short_side is not None:
            return f"short side resized to {self.short_side}"
        if self.size is not None:
            return f"resized to {self.size[0]}x{self.size[1]} (HxW)"
        if self.scale is not None:
            return f"keep-ratio resize within {self.scale[0]}x{self.scale[1]} (long x short)"
        return "original size"

    def to_dict(self) -> dict[str, Any] | None:
        for key in ("short_side", "size", "scale"):
            value = getattr(self, key)
            if value is not None:
                return {key: list(value) if isinstance(value, tuple) else value}
        return None


def resize_from_metadata(metadata: dict[str, Any], source: str = "the student") -> ResizeSpec:
    """The ``resize`` metadata entry as a :class:`ResizeSpec`; absent or null = original size."""
    saved = metadata.get("resize")
    if saved is None:
        return ResizeSpec()
    if isinstance(saved, dict) and len(saved) == 1:
        key, value = next(iter(saved.items()))
        if key == "short_side" and _positive_int(value):
            return ResizeSpec(short_side=value)
        if key in ("size", "scale") and isinstance(value, list) and is_size(value):
            return ResizeSpec(**{key: (value[0], value[1])})
    raise CheckpointError(f"{source} has an invalid 'resize' metadata entry {saved!r}; expected "
                          "{'short_side': N}, {'size': [H, W]}, {'scale': [long, short]} or null")


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


@dataclass
class PredictOptions:
    """Choices of ``transkd predict``; ``None`` means "as the student's metadata says".

    ``resize_short_side`` 0 keeps the original size even if the student was evaluated resized.
    ``crop`` without ``mode`` means sliding windows.
    """

    mode: str | None = None
    crop: tuple[int, int] | None = None
    stride: tuple[int, int] | None = None
    scales: tuple[float, ...] = (1.0,)
    flip: bool = False
    resize_short_side: int | None = None
    batch_size: int = 1
    overlays: bool = True
    raw: bool = False
    alpha: float = 0.5

    def validate(self) -> PredictOptions:
        if not _positive_int(self.batch_size):
            raise ConfigError(f"batch size must be a positive integer, got {self.batch_size!r}")
        if not (isinstance(self.alpha, (int, float)) and 0.0 <= self.alpha <= 1.0):
            raise ConfigError(f"overlay alpha must be a number in [0, 1], got {self.alpha!r}")
        if self.resize_short_side is not None and (
                isinstance(self.resize_short_side, bool) or not isinstance(self.resize_short_side, int)
                or self.resize_short_side < 0):
            raise ConfigError(f"resize short side must be a positive integer (0 = original size), "
                              f"got {self.resize_short_side!r}")
        return self

    def resize_for(self, student: Student) -> ResizeSpec:
        if self.resize_short_side is None:
            return resize_from_metadata(student.metadata, str(student.path))
        return ResizeSpec(short_side=self.resize_short_side or None)

    def inference_for(self, student: Student) -> InferenceOptions:
        """Explicit options first, then the student's ``inference_options``, then whole-image."""
        saved = student.metadata.get("inference_options")
        saved = saved if isinstance(saved, dict) else {}
        mode = self.mode or ("slide" if self.crop is not None else saved.get("mode", "whole"))
        crop, stride = self.crop, self.stride
        if mode == "slide" and saved.get("mode") == "slide" and crop is None:  # the saved windows
            crop = _size_or_none(saved.get("crop"))
            stride = stride if stride is not None else _size_or_none(saved.get("stride"))
        return InferenceOptions(mode=mode, crop=crop, stride=stride, scales=tuple(self.scales),
                                flip=self.flip).validate()


def _size_or_none(value: Any) -> tuple[int, int] | None:
    if isinstance(value, list) and is_size(value):
        return value[0], value[1]
    return None


def describe_inference(options: InferenceOptions) -> str:
    text = options.mode
    if options.mode == "slide":
        stride = options.window_stride()
        text += f" {options.crop[0]}x{options.crop[1]} stride {stride[0]}x{stride[1]}"
    if len(options.scales) > 1 or options.scales[0] != 1.0:
        text += f", scales {list(options.scales)}"
    if options.flip:
        text += ", flip"
    return text


# --------------------------------------------------------------------------- inference

def segment(student: Student, images: torch.Tensor, inference: InferenceOptions,
            out_size: tuple[int, int]) -> torch.Tensor:
    """Class ids (B, *out_size), int64 on the CPU, for normalised images (B, 3, H, W)."""
    height, width = images.shape[-2:]
    if inference.mode == "whole" and min(height, width) < MIN_WHOLE_SIDE:
        inference = replace(inference, mode="slide", stride=None,
                            crop=(max(height, MIN_WHOLE_SIDE), max(width, MIN_WHOLE_SIDE)))
    param = next(student.model.parameters())
    with torch.inference_mode():
        logits = predict_logits(student.model, images.to(param.device, param.dtype), mode=inference.mode,
                                crop=inference.crop, stride=inference.stride, scales=inference.scales,
                                flip=inference.flip, out_size=out_size)
        return logits[:, :student.num_classes].argmax(dim=1).cpu()


def segment_image(student: Student, image: np.ndarray, options: PredictOptions | None = None) -> np.ndarray:
    """Class ids (H, W) for one (H, W, 3) uint8 RGB image, at its own size."""
    options = (options or PredictOptions()).validate()
    batch = _prepare(image, options.resize_for(student), Normalize(student.mean, student.std))
    ids = segment(student, batch.unsqueeze(0), options.inference_for(student), image.shape[:2])
    return ids[0].numpy()


def _prepare(image: np.ndarray, resize: ResizeSpec, normalize: Normalize) -> torch.Tensor:
    resized = resize_image(image, resize.target(*image.shape[:2]))
    pixels, _ = normalize(resized, None)
    return torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1)))


# --------------------------------------------------------------------------- outputs

def mask_image(ids: np.ndarray, palette: Sequence[Sequence[int]]) -> Image.Image:
    """A palette PNG whose pixel values are the class ids (RGB when there are over 256 classes)."""
    if len(palette) > MAX_PALETTE_CLASSES:
        return Image.fromarray(np.asarray(palette, dtype=np.uint8)[ids])
    mask = Image.fromarray(ids.astype(np.uint8))
    flat = [v for colour in palette for v in colour]
    mask.putpalette(flat + [0] * (3 * 256 - len(flat)))  # turns the grey-level image into mode "P"
    return mask


def overlay_image(image: np.ndarray, ids: np.ndarray, palette: Sequence[Sequence[int]],
                  alpha: float) -> Image.Image:
    """The class colours blended over the image with weight ``alpha``."""
    colours = np.asarray(palette, dtype=np.float32)[ids]
    mixed = (1.0 - alpha) * image.astype(np.float32) + alpha * colours
    return Image.fromarray(np.rint(mixed).clip(0, 255).astype(np.uint8))


def raw_image(ids: np.ndarray, num_classes: int) -> Image.Image:
    """Grey-level class ids: 8-bit, or 16-bit beyond 256 classes."""
    return Image.fromarray(ids.astype(np.uint8 if num_classes <= 256 else np.uint16))


def write_png(path: Path, image: Image.Image) -> Path:
    return atomic_write(path, lambda tmp: image.save(tmp, format="PNG"))


def prepare_output_dir(path: str | Path) -> Path:
    """Create the output folder, or fail with one sentence if it cannot be one."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"output folder {path} is an existing file; give a folder for the predictions")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create output folder {path}: {exc.strerror or exc}") from None
    return path


# --------------------------------------------------------------------------- the loop

@dataclass
class PredictResult:
    """What a run wrote and which inputs it skipped (with the reason)."""

    output_dir: Path
    written: list[str] = field(default_factory=list)
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    resize: str = ""
    inference: str = ""
    device: str = ""
    inputs: int = 0


SkipHandler = Callable[[Path, str], None]


def _warn_skip(path: Path, reason: str) -> None:
    warnings.warn(f"skipping {path}: {reason}", stacklevel=3)


def predict_files(student: Student, inputs: Sequence[InputImage], output_dir: str | Path,
                  options: PredictOptions | None = None, on_skip: SkipHandler | None = None,
                  progress: bool = False) -> PredictResult:
    """Segment every input and write its outputs; unreadable inputs are reported and skipped.

    Consecutive images with the same original and network size share a batch of up to
    ``options.batch_size`` (memory grows with batch × classes × original pixels).
    """
    options = (options or PredictOptions()).validate()
    on_skip = on_skip or _warn_skip
    resize, inference = options.resize_for(student), options.inference_for(student)
    output_dir = prepare_output_dir(output_dir)
    result = PredictResult(output_dir, resize=resize.describe(), inference=describe_inference(inference))
    _write_legend(student, output_dir, resize, result)
    normalize = Normalize(student.mean, student.std)
    pending: list[tuple[InputImage, np.ndarray, torch.Tensor]] = []
    bar = tqdm(total=len(inputs), desc="predict", unit="img", disable=None if progress else True)

    def flush() -> None:
        if not pending:
            return
        original = pending[0][1].shape[:2]
        ids = segment(student, torch.stack([t for _, _, t in pending]), inference, original).numpy()
        for (item, image, _), image_ids in zip(pending, ids):
            _write_outputs(student, output_dir, item.name, image, image_ids, options)
            result.written.append(item.name)
        bar.update(len(pending))
        pending.clear()

    try:
        for item in inputs:
            try:
                image = read_rgb(item.path)
            except UnreadableImageError as exc:
                result.skipped.append((item.path, str(exc)))
                on_skip(item.path, str(exc))
                bar.update(1)
                continue
            tensor = _prepare(image, resize, normalize)
            if pending and (len(pending) == options.batch_size
                            or pending[0][1].shape != image.shape or pending[0][2].shape != tensor.shape):
                flush()
            pending.append((item, image, tensor))
        flush()
    finally:
        bar.close()
    return result


def _write_outputs(student: Student, output_dir: Path, name: str, image: np.ndarray, ids: np.ndarray,
                   options: PredictOptions) -> None:
    write_png(output_dir / "masks" / f"{name}.png", mask_image(ids, student.palette))
    if options.overlays:
        write_png(output_dir / "overlays" / f"{name}.png",
                  overlay_image(image, ids, student.palette, options.alpha))
    if options.raw:
        write_png(output_dir / "raw" / f"{name}.png", raw_image(ids, student.num_classes))


def _write_legend(student: Student, output_dir: Path, resize: ResizeSpec, result: PredictResult) -> None:
    legend = {
        "student": str(student.path),
        "architecture": student.name,
        "dataset": student.metadata.get("dataset"),
        "class_names": list(student.class_names),
        "palette": [list(c) for c in student.palette],
        "palette_generated": student.palette_generated,
        "resize": resize.to_dict(),
        "inference": result.inference,
    }
    text = json.dumps(legend, indent=2) + "\n"
    atomic_write(output_dir / "classes.json", lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    write_png(output_dir / "legend.png", legend_image(student.class_names, student.palette))


def resolve_device(name: str = "auto") -> str:
    """``auto`` (cuda if available, else cpu) or a named device that torch can use."""
    device = ("cuda" if torch.cuda.is_available() else "cpu") if name == "auto" else name
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {device} asks for a GPU but torch sees no CUDA device")
    return device


def predict_images(model: str | Path, inputs: Sequence[str | Path], output_dir: str | Path,
                   options: PredictOptions | None = None, *, device: str = "auto", last: bool = False,
                   recursive: bool = False, on_skip: SkipHandler | None = None, progress: bool = False,
                   announce: Callable[[str], None] | None = None) -> PredictResult:
    """What ``transkd predict`` runs: load the student at ``model`` (file or run folder), collect
    ``inputs`` (files, folders, glob patterns) and write masks and overlays to ``output_dir``.

    ``announce`` hears which student was loaded before the (long) prediction starts.
    """
    options = (options or PredictOptions()).validate()
    output = Path(output_dir)
    if output.exists() and not output.is_dir():
        raise ConfigError(f"--output {output} is an existing file; give a folder for the predictions")
    if options.stride is not None and options.mode == "whole":
        raise ConfigError("--stride applies to --mode slide only")
    images = collect_inputs(inputs, recursive=recursive)
    device = resolve_device(device)
    student = Student.load(model, device=device, last=last)
    if announce is not None:
        announce(f"student: {student.describe()}")
        if student.palette_generated:
            announce("colours: generated palette (the student file carries none)")
    result = predict_files(student, images, output, options, on_skip=on_skip, progress=progress)
    result.device, result.inputs = device, len(images)
    return result
