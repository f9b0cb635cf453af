"""Joint image/label transforms on numpy arrays, driven by an explicit random generator.

Every transform is a callable ``(image, label, rng) -> (image, label)``: ``image`` is (H, W, 3)
(uint8 until :class:`Normalize`), ``label`` is (h, w) uint8. Randomness comes only from ``rng``
(a ``numpy.random.Generator``), so a sample's augmentation is a pure function of its seed and
does not depend on worker processes or on the resume point. Images are resized with PIL
(bilinear), labels always with nearest neighbour so that no new class ids appear.

Sizes are ``(height, width)`` unless a name says otherwise (``scale`` follows the mmsegmentation
convention ``(long side, short side)``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
from PIL import Image

Transform = Callable[[np.ndarray, np.ndarray, np.random.Generator], tuple]


# --------------------------------------------------------------------------- functional helpers

def resize_image(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a uint8 (H, W, 3) image to ``size`` = (height, width)."""
    h, w = size
    if image.shape[:2] == (h, w):
        return image
    return np.asarray(Image.fromarray(image).resize((w, h), Image.BILINEAR))


def resize_label(label: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of a uint8 (H, W) label map to ``size`` = (height, width)."""
    h, w = size
    if label.shape[:2] == (h, w):
        return label
    return np.asarray(Image.fromarray(label).resize((w, h), Image.NEAREST))


def short_side_size(height: int, width: int, short_side: int) -> tuple[int, int]:
    """(height, width) after scaling so that the shorter side equals ``short_side``."""
    factor = short_side / min(height, width)
    return _scaled(height, width, factor)


def keep_ratio_size(height: int, width: int, scale: tuple[float, float]) -> tuple[int, int]:
    """Largest (height, width) with the same aspect ratio fitting ``scale`` = (long, short) bounds.

    This is mmsegmentation's ``keep_ratio`` rescale: Cityscapes 1024×2048 with (2048, 1024) stays put.
    """
    long_bound, short_bound = max(scale), min(scale)
    factor = min(long_bound / max(height, width), short_bound / min(height, width))
    return _scaled(height, width, factor)


def label_size(image_size: tuple[int, int], label_scale: float) -> tuple[int, int]:
    """Label (height, width) for a given image size; rounded up, like the 1/4 logits of a stride-4 stem."""
    h, w = image_size
    if label_scale == 1.0:
        return h, w
    return max(1, math.ceil(h * label_scale - 1e-9)), max(1, math.ceil(w * label_scale - 1e-9))


def shift_array(array: np.ndarray, dy: int, dx: int, fill: float) -> np.ndarray:
    """Translate content by (dy, dx) pixels (positive = down/right); vacated pixels get ``fill``."""
    if dy == 0 and dx == 0:
        return array
    out = np.full_like(array, fill)
    h, w = array.shape[:2]
    if abs(dy) >= h or abs(dx) >= w:
        return out
    src_y, dst_y = (slice(0, h - dy), slice(dy, h)) if dy >= 0 else (slice(-dy, h), slice(0, h + dy))
    src_x, dst_x = (slice(0, w - dx), slice(dx, w)) if dx >= 0 else (slice(-dx, w), slice(0, w + dx))
    out[dst_y, dst_x] = array[src_y, src_x]
    return out


def reference_shift_array(array: np.ndarray, dy: int, dx: int, pad_fill: float,
                          edge_fill: float) -> np.ndarray:
    """The reference code's shift: PIL ``ImageOps.expand(border=(dx, dy, 0, 0), fill=pad_fill)``
    then a crop back to the original size.

    A positive shift pads the top/left with ``pad_fill``; a negative one moves the content up/left
    and the crop runs past the canvas, whose pixels PIL fills with ``edge_fill`` (0), so those
    bottom rows / right columns win where both meet.
    """
    out = shift_array(array, dy, dx, pad_fill)
    h, w = array.shape[:2]
    if dy < 0:
        out[max(h + dy, 0):] = edge_fill
    if dx < 0:
        out[:, max(w + dx, 0):] = edge_fill
    return out


def _scaled(height: int, width: int, factor: float) -> tuple[int, int]:
    return max(1, int(height * factor + 0.5)), max(1, int(width * factor + 0.5))


def _pair(value: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(value, int):
        return value, value
    a, b = value
    return int(a), int(b)


# --------------------------------------------------------------------------- transforms

class Compose:
    """Apply transforms in order, threading the same generator through all of them."""

    def __init__(self, transforms: Sequence[Transform], deferred: Normalize | None = None) -> None:
        self.transforms = list(transforms)
        #: The normalisation this pipeline leaves to the device (its images stay uint8), or None.
        self.deferred = deferred

    def __call__(self, image, label, rng: np.random.Generator):
        for transform in self.transforms:
            image, label = transform(image, label, rng)
        return image, label

    def __repr__(self) -> str:
        inner = ", ".join(repr(t) for t in self.transforms)
        return f"Compose([{inner}])"


class Resize:
    """Deterministic resize: to a fixed ``size``, a ``short_side``, or a keep-ratio ``scale`` bound.

    With none of the three the image is left alone. The label is resized (nearest) to the new
    image size times ``label_scale`` — straight from the original label, so a 1/4-resolution
    label is one nearest sampling, not two. ``keep_label`` leaves the label untouched, for
    evaluation at the original resolution.
    """

    def __init__(self, size: tuple[int, int] | None = None, short_side: int | None = None,
                 scale: tuple[int, int] | None = None, label_scale: float = 1.0,
                 keep_label: bool = False) -> None:
        if sum(x is not None for x in (size, short_side, scale)) > 1:
            raise ValueError("Resize takes at most one of size, short_side and scale")
        self.size = _pair(size) if size is not None else None
        self.short_side = short_side
        self.scale = tuple(scale) if scale is not None else None
        self.label_scale = label_scale
        self.keep_label = keep_label

    def target_size(self, height: int, width: int) -> tuple[int, int]:
        if self.size is not None:
            return self.size
        if self.short_side is not None:
            return short_side_size(height, width, self.short_side)
        if self.scale is not None:
            return keep_ratio_size(height, width, self.scale)
        return height, width

    def __call__(self, image, label, rng=None):
        size = self.target_size(*image.shape[:2])
        if self.keep_label:
            return resize_image(image, size), label
        return resize_image(image, size), resize_label(label, label_size(size, self.label_scale))

    def __repr__(self) -> str:
        return (f"Resize(size={self.size}, short_side={self.short_side}, scale={self.scale}, "
                f"label_scale={self.label_scale}, keep_label={self.keep_label})")


class RandomResize:
    """Resize by a ratio drawn uniformly from ``ratio_range`` (mmsegmentation's random scale).

    With ``scale`` = (long, short) the ratio multiplies that bound and the image is rescaled to
    fit it keeping its aspect ratio; without it the ratio multiplies the image's own size.
    """

    def __init__(self, ratio_range: tuple[float, float] = (0.5, 2.0),
                 scale: tuple[int, int] | None = None) -> None:
        self.ratio_range = (float(ratio_range[0]), float(ratio_range[1]))
        self.scale = tuple(scale) if scale is not None else None

    def draw_size(self, height: int, width: int, rng: np.random.Generator) -> tuple[int, int]:
        """The (height, width) this transform resizes a ``height`` × ``width`` image to."""
        ratio = rng.uniform(*self.ratio_range)
        if self.scale is None:
            return _scaled(height, width, ratio)
        return keep_ratio_size(height, width, (self.scale[0] * ratio, self.scale[1] * ratio))

    def __call__(self, image, label, rng: np.random.Generator):
        size = self.draw_size(*image.shape[:2], rng)
        return resize_image(image, size), resize_label(label, size)

    def __repr__(self) -> str:
        return f"RandomResize(ratio_range={self.ratio_range}, scale={self.scale})"


class RandomCrop:
    """Random crop of at most ``crop_size``; pair with :class:`PadTo` for a fixed output size.

    ``cat_max_ratio`` < 1 re-draws the crop (up to 10 times) while one class covers more than
    that share of the labelled pixels, as in mmsegmentation, so crops are not all road or sky.
    """

    attempts = 10

    def __init__(self, crop_size: int | tuple[int, int], cat_max_ratio: float = 1.0,
                 ignore_index: int = 255) -> None:
        self.crop_size = _pair(crop_size)
        self.cat_max_ratio = float(cat_max_ratio)
        self.ignore_index = ignore_index

    def _draw(self, height: int, width: int, rng: np.random.Generator) -> tuple[slice, slice]:
        ch, cw = self.crop_size
        top = int(rng.integers(0, max(height - ch, 0) + 1))
        left = int(rng.integers(0, max(width - cw, 0) + 1))
        return slice(top, top + ch), slice(left, left + cw)

    def _balanced(self, label: np.ndarray) -> bool:
        counts = np.bincount(label.ravel(), minlength=256)
        if 0 <= self.ignore_index < counts.size:
            counts[self.ignore_index] = 0
        present = counts[counts > 0]
        return present.size > 1 and present.max() < self.cat_max_ratio * present.sum()

    def select(self, label: np.ndarray, rng: np.random.Generator) -> tuple[slice, slice]:
        """Row and column slices of the crop, clipped to the label's extent."""
        rows, cols = self._draw(*label.shape, rng)
        if self.cat_max_ratio < 1.0:
            for _ in range(self.attempts - 1):
                if self._balanced(label[rows, cols]):
                    break
                rows, cols = self._draw(*label.shape, rng)
        h, w = label.shape
        return slice(rows.start, min(rows.stop, h)), slice(cols.start, min(cols.stop, w))

    def __call__(self, image, label, rng: np.random.Generator):
        if image.shape[:2] != label.shape[:2]:
            raise ValueError(f"RandomCrop needs image and label of the same size, got "
                             f"{image.shape[:2]} and {label.shape[:2]}")
        rows, cols = self.select(label, rng)
        return image[rows, cols], label[rows, cols]

    def __repr__(self) -> str:
        return f"RandomCrop(crop_size={self.crop_size}, cat_max_ratio={self.cat_max_ratio})"


class RandomResizeCrop:
    """:class:`RandomResize` then :class:`RandomCrop`, resizing only the image pixels that survive.

    The label is resized whole (the crop choice may look at it); the image is resampled from
    the source box that maps onto the crop, which gives the same pixels as resizing everything
    and cropping (PIL samples the same source coordinates) at a fraction of the cost when the
    scale ratio is large. Random draws happen in the same order as the two separate transforms.
    """

    def __init__(self, resize: RandomResize, crop: RandomCrop) -> None:
        self.resize = resize
        self.crop = crop

    def __call__(self, image, label, rng: np.random.Generator):
        height, width = image.shape[:2]
        if label.shape[:2] != (height, width):
            raise ValueError(f"RandomResizeCrop needs image and label of the same size, got "
                             f"{image.shape[:2]} and {label.shape[:2]}")
        size = self.resize.draw_size(height, width, rng)
        label = resize_label(label, size)
        rows, cols = self.crop.select(label, rng)
        fy, fx = height / size[0], width / size[1]
        box = (cols.start * fx, rows.start * fy, cols.stop * fx, rows.stop * fy)
        out_size = (cols.stop - cols.start, rows.stop - rows.start)
        image = np.asarray(Image.fromarray(image).resize(out_size, Image.BILINEAR, box=box))
        return image, label[rows, cols]

    def __repr__(self) -> str:
        return f"RandomResizeCrop({self.resize!r}, {self.crop!r})"


class PadTo:
    """Pad bottom/right up to ``size`` (image with ``image_fill``, label with ``label_fill``)."""

    def __init__(self, size: int | tuple[int, int], image_fill: float = 0.0, label_fill: int = 255,
                 label_scale: float = 1.0) -> None:
        self.size = _pair(size)
        self.image_fill = image_fill
        self.label_fill = label_fill
        self.label_scale = label_scale

    @staticmethod
    def _pad(array: np.ndarray, size: tuple[int, int], fill) -> np.ndarray:
        h, w = array.shape[:2]
        if h >= size[0] and w >= size[1]:
            return array
        out = np.full((max(h, size[0]), max(w, size[1]), *array.shape[2:]), fill, dtype=array.dtype)
        out[:h, :w] = array
        return out

    def __call__(self, image, label, rng=None):
        return (self._pad(image, self.size, self.image_fill),
                self._pad(label, label_size(self.size, self.label_scale), self.label_fill))

    def __repr__(self) -> str:
        return f"PadTo(size={self.size}, image_fill={self.image_fill}, label_fill={self.label_fill})"


class RandomHorizontalFlip:
    """Mirror image and label left-right with probability ``p`` (works at any label resolution)."""

    def __init__(self, p: float = 0.5) -> None:
        self.p = float(p)

    def __call__(self, image, label, rng: np.random.Generator):
        if rng.random() < self.p:
            return image[:, ::-1], label[:, ::-1]
        return image, label

    def __repr__(self) -> str:
        return f"RandomHorizontalFlip(p={self.p})"


class RandomShift:
    """Translate by integers dx, dy drawn uniformly in [-max_shift, max_shift].

    The label moves by ``round(d * label_scale)`` pixels (half to even) and its vacated border
    gets ``label_fill``, so a 1/4-resolution label stays aligned with the image. Shifts smaller
    than half a label pixel leave the label in place, the nearest representable alignment.
    ``label_edge_fill`` set (with ``label_scale=1``) reproduces the reference code instead: the
    label moves by the image's pixel count, a positive shift pads it with ``label_fill`` and
    a negative one leaves ``label_edge_fill`` where its crop runs past the edge
    (:func:`reference_shift_array`).
    """

    def __init__(self, max_shift: int = 2, image_fill: int = 0, label_fill: int = 255,
                 label_scale: float = 1.0, label_edge_fill: int | None = None) -> None:
        self.max_shift = int(max_shift)
        self.image_fill = image_fill
        self.label_fill = label_fill
        self.label_scale = float(label_scale)
        self.label_edge_fill = label_edge_fill

    def __call__(self, image, label, rng: np.random.Generator):
        dx, dy = (int(v) for v in rng.integers(-self.max_shift, self.max_shift + 1, size=2))
        ldx, ldy = (int(np.round(d * self.label_scale)) for d in (dx, dy))
        if self.label_edge_fill is None:
            shifted = shift_array(label, ldy, ldx, self.label_fill)
        else:
            shifted = reference_shift_array(label, ldy, ldx, self.label_fill, self.label_edge_fill)
        return shift_array(image, dy, dx, self.image_fill), shifted

    def __repr__(self) -> str:
        edge = "" if self.label_edge_fill is None else f", label_edge_fill={self.label_edge_fill}"
        return (f"RandomShift(max_shift={self.max_shift}, label_scale={self.label_scale}, "
                f"label_fill={self.label_fill}{edge})")


class PhotoMetricDistortion:
    """mmsegmentation's colour jitter on uint8 RGB, each step with probability 0.5.

    Brightness (add a delta in ±``brightness_delta``), contrast (multiply by a factor in
    ``contrast_range``, randomly before or after the HSV steps), saturation (multiply S by a factor
    in ``saturation_range``) and hue (add an integer in ±``hue_delta`` in OpenCV units, 180 per
    turn). Values are clipped to [0, 255] after every step; HSV runs in PIL (H, S, V in 0..255).
    """

    def __init__(self, brightness_delta: int = 32, contrast_range: tuple[float, float] = (0.5, 1.5),
                 saturation_range: tuple[float, float] = (0.5, 1.5), hue_delta: int = 18) -> None:
        self.brightness_delta = brightness_delta
        self.contrast_range = tuple(contrast_range)
        self.saturation_range = tuple(saturation_range)
        self.hue_delta = hue_delta

    @staticmethod
    def _clip(values: np.ndarray) -> np.ndarray:
        return np.clip(values, 0, 255).astype(np.uint8)

    def _contrast(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if rng.random() < 0.5:
            return self._clip(image.astype(np.float32) * rng.uniform(*self.contrast_range))
        return image

    def _hsv(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        saturation = rng.uniform(*self.saturation_range) if rng.random() < 0.5 else None
        hue = int(rng.integers(-self.hue_delta, self.hue_delta + 1)) if rng.random() < 0.5 else None
        if saturation is None and hue is None:
            return image
        hsv = np.array(Image.fromarray(np.ascontiguousarray(image)).convert("HSV"))
        if saturation is not None:
            hsv[..., 1] = self._clip(hsv[..., 1].astype(np.float32) * saturation)
        if hue is not None:
            shift = int(round(hue * 256 / 180))
            hsv[..., 0] = ((hsv[..., 0].astype(np.int16) + shift) % 256).astype(np.uint8)
        return np.asarray(Image.fromarray(hsv, mode="HSV").convert("RGB"))

    def __call__(self, image, label, rng: np.random.Generator):
        if rng.random() < 0.5:
            delta = rng.uniform(-self.brightness_delta, self.brightness_delta)
            image = self._clip(image.astype(np.float32) + delta)
        contrast_first = rng.random() < 0.5
        if contrast_first:
            image = self._contrast(image, rng)
        image = self._hsv(image, rng)
        if not contrast_first:
            image = self._contrast(image, rng)
        return image, label

    def __repr__(self) -> str:
        return (f"PhotoMetricDistortion(brightness_delta={self.brightness_delta}, "
                f"contrast_range={self.contrast_range}, saturation_range={self.saturation_range}, "
                f"hue_delta={self.hue_delta})")


class Normalize:
    """uint8 → float32 in [0, 1], then ``(x - mean) / std`` per channel (mean/std in [0, 1] units).

    ``mean=(0, 0, 0), std=(1, 1, 1)`` gives the plain [0, 1] input of the paper's reference code.
    """

    def __init__(self, mean: Sequence[float] = (0.0, 0.0, 0.0), std: Sequence[float] = (1.0, 1.0, 1.0)):
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        # Fold /255, -mean and /std into one multiply-add per pixel.
        self._gain = np.array([1.0 / (255.0 * s) for s in self.std], dtype=np.float32)
        self._bias = np.array([-m / s for m, s in zip(self.mean, self.std)], dtype=np.float32)

    def __call__(self, image, label, rng=None):
        out = np.empty(image.shape, dtype=np.float32)
        np.multiply(image, self._gain, out=out)
        out += self._bias
        return out, label

    def batch(self, images: torch.Tensor) -> torch.Tensor:
        """A uint8 (N, 3, H, W) batch — or (N, 4, H, W) with :class:`MarkValid`'s channel —
        normalised where it lies (on the GPU after a uint8 copy, a quarter of float32's bytes).

        Bit-identical to :meth:`__call__`: the same float32 gain and bias, one rounded multiply
        and one rounded add (two kernels, so no fused multiply-add); padded pixels become 0."""
        if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] not in (3, 4):
            raise ValueError(f"Normalize.batch takes a uint8 (N, 3|4, H, W) batch, got "
                             f"{images.dtype} {tuple(images.shape)}")
        gain = torch.from_numpy(self._gain).to(images.device).view(1, 3, 1, 1)
        bias = torch.from_numpy(self._bias).to(images.device).view(1, 3, 1, 1)
        out = torch.mul(images[:, :3], gain)
        out.add_(bias)
        if images.shape[1] == 4:
            out.masked_fill_(images[:, 3:] == 0, 0.0)  # padding: +0.0, as the pipeline pads
        return out

    def __repr__(self) -> str:
        return f"Normalize(mean={self.mean}, std={self.std})"


class MarkValid:
    """Append a uint8 channel of ones to an (H, W, 3) uint8 image.

    Where normalisation is left to the device and the image is padded afterwards (padding that
    must read 0 after normalisation), padding fills this channel with 0 too, so
    :meth:`Normalize.batch` can zero exactly the padded pixels."""

    def __call__(self, image, label, rng=None):
        ones = np.ones((*image.shape[:2], 1), dtype=np.uint8)
        return np.concatenate([image, ones], axis=2), label

    def __repr__(self) -> str:
        return "MarkValid()"


class VoidToClass:
    """Relabel ``ignore_index`` pixels as class ``void_class`` (the reference code's extra class)."""

    def __init__(self, ignore_index: int, void_class: int) -> None:
        self.ignore_index = ignore_index
        self.void_class = void_class

    def __call__(self, image, label, rng=None):
        if self.ignore_index == self.void_class:
            return image, label
        return image, np.where(label == self.ignore_index, np.uint8(self.void_class), label)

    def __repr__(self) -> str:
        return f"VoidToClass(ignore_index={self.ignore_index}, void_class={self.void_class})"


class ToTensor:
    """(H, W, C) image → float32 tensor (C, H, W), or uint8 with ``keep_uint8`` (normalisation
    left to the device); (h, w) label → int64 tensor (h, w)."""

    def __init__(self, keep_uint8: bool = False) -> None:
        self.keep_uint8 = keep_uint8

    def __call__(self, image, label, rng=None):
        dtype = np.uint8 if self.keep_uint8 else np.float32
        if self.keep_uint8 and image.dtype != np.uint8:
            raise ValueError(f"ToTensor(keep_uint8=True) takes a uint8 image, got {image.dtype}")
        chw = np.ascontiguousarray(image.transpose(2, 0, 1), dtype=dtype)
        if not chw.flags.writeable:
            chw = chw.copy()
        return torch.from_numpy(chw), torch.from_numpy(label.astype(np.int64))

    def __repr__(self) -> str:
        return "ToTensor(keep_uint8=True)" if self.keep_uint8 else "ToTensor()"
