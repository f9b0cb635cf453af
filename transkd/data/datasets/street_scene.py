"""A procedural street-scene renderer: a labelled image from a random generator, in milliseconds.

The scene follows a pinhole camera over a flat street: the road and sidewalks converge to a
vanishing point, facades stand on the sidewalk edges with heights in metres, and objects (cars,
people, poles with signs, trees) are scaled by their distance and painted far to near, so nearer
objects occlude farther ones. Colours are drawn per image and per object (a car may be any
colour), so recognising a class needs shape and context, not a colour lookup; thin classes (poles,
signs, people) reward models that keep fine detail. Everything is numpy on small arrays.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Class ids of the synthetic dataset (order = train ids).
ROAD, SIDEWALK, BUILDING, FENCE, POLE, SIGN, VEGETATION, SKY, PERSON, CAR = range(10)
STREET_CLASSES = ("road", "sidewalk", "building", "fence", "pole", "traffic sign", "vegetation",
                  "sky", "person", "car")
VOID = 255

# Texture amplitude per class (low-frequency blotches, per-pixel grain); index 255 = void.
_LOW_AMP = np.full(256, 0.02, dtype=np.float32)
_FINE_AMP = np.full(256, 0.02, dtype=np.float32)
for _cls, _low, _fine in ((ROAD, 0.07, 0.06), (SIDEWALK, 0.05, 0.05), (BUILDING, 0.08, 0.03),
                          (FENCE, 0.05, 0.05), (POLE, 0.03, 0.02), (SIGN, 0.02, 0.02),
                          (VEGETATION, 0.35, 0.16), (SKY, 0.03, 0.01), (PERSON, 0.05, 0.03),
                          (CAR, 0.04, 0.02)):
    _LOW_AMP[_cls], _FINE_AMP[_cls] = _low, _fine

_CAR_COLORS = np.array([[0.85, 0.85, 0.85], [0.1, 0.1, 0.1], [0.5, 0.5, 0.52], [0.65, 0.1, 0.1],
                        [0.1, 0.2, 0.55], [0.25, 0.3, 0.28], [0.8, 0.7, 0.2], [0.9, 0.9, 0.8]],
                       dtype=np.float32)
_SKY_TOPS = ((0.3, 0.5, 0.85), (0.6, 0.65, 0.7), (0.75, 0.6, 0.5), (0.45, 0.6, 0.8))
_HAZE = np.array([0.85, 0.87, 0.9], dtype=np.float32)
_SIGN_STYLES = (  # (face, border)
    ((0.95, 0.95, 0.95), (0.8, 0.05, 0.05)), ((0.1, 0.3, 0.75), (0.95, 0.95, 0.95)),
    ((0.95, 0.8, 0.1), (0.1, 0.1, 0.1)), ((0.1, 0.5, 0.25), (0.95, 0.95, 0.95)),
    ((0.85, 0.1, 0.1), (0.95, 0.95, 0.95)),
)


def _frac(x: np.ndarray, period: float) -> np.ndarray:
    """Position within a repeating pattern of ``period`` (0..1); cheaper than ``np.mod``."""
    y = x * np.float32(1.0 / period)
    return y - np.floor(y)


@dataclass
class Camera:
    """Per-image camera and street geometry (metres, pixels)."""

    height: int
    width: int
    horizon: float       # row of the horizon
    vanish: float        # column of the vanishing point
    ppm: float           # pixels per metre at the bottom row
    z0: float            # distance (m) seen at the bottom row
    cam_x: float         # camera lateral position, metres from the left road edge
    road: float          # road width (m)
    walk_left: float     # sidewalk widths (m)
    walk_right: float

    def scale(self, distance: float) -> float:
        """Depth scale s (1 at the bottom row, 0 at the horizon) of a ground point."""
        return self.z0 / distance

    def ground_row(self, s: float) -> float:
        return self.horizon + s * (self.height - self.horizon)

    def column(self, s: float, lateral: float) -> float:
        return self.vanish + s * self.ppm * (lateral - self.cam_x)


class StreetRenderer:
    """Renders ``(image uint8 (H, W, 3), label uint8 (H, W))`` from a ``np.random.Generator``."""

    def __init__(self, height: int, width: int):
        self.height, self.width = height, width
        self.rows = np.arange(height, dtype=np.float32)[:, None]
        self.cols = np.arange(width, dtype=np.float32)[None, :]

    # -- entry point -------------------------------------------------------------------------
    def render(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        cam = self._camera(rng)
        label = np.full((self.height, self.width), SKY, dtype=np.uint8)
        ground = self._ground(cam, label)
        self._skyline(cam, rng, label)
        facade = self._facades(cam, rng, label)
        image = self._base_colors(cam, rng, label, ground, facade)
        self._objects(cam, rng, label, image)
        self._ego_vehicle(rng, label, image)
        self._finish(rng, label, image)
        image *= np.float32(255.0)
        np.clip(image, 0.0, 255.0, out=image)
        return image.astype(np.uint8), label

    def _camera(self, rng: np.random.Generator) -> Camera:
        h, w = self.height, self.width
        horizon = h * rng.uniform(0.38, 0.52)
        cam_height = rng.uniform(1.6, 3.0)
        ppm = (h - horizon) / cam_height
        focal = w * rng.uniform(0.7, 1.0)
        road = rng.uniform(6.0, 12.0)
        return Camera(h, w, horizon, w * rng.uniform(0.4, 0.6), ppm, focal / ppm,
                      road * rng.uniform(0.25, 0.75), road, rng.uniform(1.5, 4.5), rng.uniform(1.5, 4.5))

    # -- background layers (label only; colours follow) -------------------------------------
    def _ground(self, cam: Camera, label: np.ndarray) -> dict[str, np.ndarray]:
        s_row = np.maximum((self.rows - cam.horizon) / (self.height - cam.horizon), 1e-4)
        lateral = cam.cam_x + (self.cols - cam.vanish) / (s_row * cam.ppm)   # metres, (H, W)
        below = self.rows > cam.horizon
        road = below & (lateral >= 0) & (lateral <= cam.road)
        walk = below & ~road & (lateral >= -cam.walk_left) & (lateral <= cam.road + cam.walk_right)
        verge = below & ~road & ~walk
        label[verge] = VEGETATION
        label[walk] = SIDEWALK
        label[road] = ROAD
        return {"lateral": lateral, "distance": cam.z0 / s_row, "road": road, "walk": walk,
                "below": below}

    def _skyline(self, cam: Camera, rng: np.random.Generator, label: np.ndarray) -> None:
        """Distant buildings and tree lines standing on the horizon."""
        edges = np.cumsum(rng.integers(3, 16, size=self.width // 3 + 1))
        heights = rng.uniform(0.0, 0.28, size=edges.size) * cam.horizon
        heights[rng.random(edges.size) < 0.2] = 0.0
        kinds = np.where(rng.random(edges.size) < 0.25, VEGETATION, BUILDING).astype(np.uint8)
        block = np.searchsorted(edges, np.arange(self.width), side="right")
        top = cam.horizon - heights[block]
        mask = (self.rows >= top[None, :]) & (self.rows <= cam.horizon + 1)
        np.copyto(label, np.broadcast_to(kinds[block][None, :], label.shape), where=mask & (label == SKY))

    def _facades(self, cam: Camera, rng: np.random.Generator, label: np.ndarray) -> dict[str, np.ndarray]:
        """Building, hedge and fence segments standing on each sidewalk's outer edge."""
        cols = self.cols[0]
        left = cols < cam.vanish
        offset = np.where(left, cam.cam_x + cam.walk_left, cam.road + cam.walk_right - cam.cam_x)
        s_col = np.abs(cols - cam.vanish) / (cam.ppm * offset) + 1e-6
        dist = cam.z0 / s_col
        height_m = np.zeros(self.width, dtype=np.float32)
        kind = np.zeros(self.width, dtype=np.uint8)
        seg_id = np.zeros(self.width, dtype=np.int64)
        n = 14
        for side_index, side in enumerate((left, ~left)):
            bounds = np.cumsum(rng.uniform(6.0, 30.0, size=n)) + rng.uniform(-5.0, 2.0)
            r = rng.random(n)
            kinds = np.where(r < 0.6, BUILDING, np.where(r < 0.85, VEGETATION, FENCE)).astype(np.uint8)
            heights = np.where(kinds == BUILDING, rng.uniform(6.0, 28.0, n),
                               np.where(kinds == VEGETATION, rng.uniform(1.5, 7.0, n),
                                        rng.uniform(1.0, 2.2, n)))
            idx = np.minimum(np.searchsorted(bounds, dist[side]), n - 1)
            height_m[side] = heights[idx]
            kind[side] = kinds[idx]
            seg_id[side] = idx + side_index * n
        ragged = (kind == VEGETATION) * rng.uniform(0.0, 0.9, size=self.width) * np.abs(
            np.sin(cols * rng.uniform(0.2, 0.6)))
        base = cam.horizon + s_col * (self.height - cam.horizon)
        top = base - s_col * cam.ppm * (height_m + ragged)
        mask = (self.rows >= top[None, :]) & (self.rows <= base[None, :])
        np.copyto(label, np.broadcast_to(kind[None, :], label.shape), where=mask)
        up = (base[None, :] - self.rows) / (s_col * cam.ppm)[None, :]     # metres above the base
        return {"mask": mask, "kind": kind, "seg": seg_id, "dist": dist, "up": up, "offset": offset}

    def _base_colors(self, cam: Camera, rng: np.random.Generator, label: np.ndarray,
                     ground: dict[str, np.ndarray], facade: dict[str, np.ndarray]) -> np.ndarray:
        """Colours of the background layers. Patterns are built as one (H, W) shade factor with
        arithmetic on boolean masks, which is much cheaper than masked writes into (H, W, 3)."""
        lut = np.zeros((256, 3), dtype=np.float32)
        lut[ROAD] = rng.uniform(0.22, 0.45) * rng.uniform(0.92, 1.08, 3)
        lut[SIDEWALK] = rng.uniform(0.45, 0.7) * rng.uniform(0.9, 1.1, 3)
        lut[VEGETATION] = (rng.uniform(0.15, 0.35), rng.uniform(0.3, 0.5), rng.uniform(0.08, 0.2))
        lut[BUILDING] = rng.uniform(0.35, 0.6) * rng.uniform(0.85, 1.15, 3)
        lut[FENCE] = rng.uniform(0.35, 0.6) * rng.uniform(0.85, 1.15, 3)
        image = np.take(lut, label, axis=0)
        # Sky: a gradient from the zenith colour to a haze at the horizon.
        sky_top = np.array(_SKY_TOPS[rng.integers(len(_SKY_TOPS))], np.float32)
        t = np.clip(self.rows / max(cam.horizon, 1.0), 0.0, 1.0)[..., None]
        np.copyto(image, np.broadcast_to(sky_top * (1 - t) + _HAZE * t, image.shape),
                  where=(label == SKY)[..., None])
        # Facades: one colour per segment; window grids and fence slats in metres on the facade.
        segments = int(facade["seg"].max()) + 1
        seg_colors = (rng.uniform(0.25, 0.75, size=(segments, 1))
                      * rng.uniform(0.8, 1.2, size=(segments, 3))).astype(np.float32)
        building = facade["mask"] & (label == BUILDING)
        np.copyto(image, np.broadcast_to(np.take(seg_colors, facade["seg"], axis=0), image.shape),
                  where=building[..., None])
        up, along = facade["up"], facade["dist"][None, :]
        row_band, column_band = _frac(up, 3.2), _frac(along, 3.5)
        # No windows where a 3.5 m bay spans under ~3 px on the receding facade (foreshortening
        # f * offset * 3.5 / d^2): there they would only alias into stripes.
        near = along * along < (cam.ppm * cam.z0 * 1.2) * facade["offset"][None, :]
        windows = building & near & (up > 1.0) & (row_band > 0.34) & (row_band < 0.75) & (column_band > 0.34)
        slats = facade["mask"] & (label == FENCE) & (_frac(along, 0.6) < 0.33)
        # Road markings (dashed lane line, solid edge lines) and sidewalk paving joints.
        lateral, dist = ground["lateral"], ground["distance"]
        lane = cam.road * (0.33, 0.5, 0.67)[rng.integers(3)]
        marks = ground["road"] & (((np.abs(lateral - lane) < 0.08) & (_frac(dist, 9.0) < 0.33))
                                  | (np.abs(lateral - 0.25) < 0.08)
                                  | (np.abs(lateral - (cam.road - 0.25)) < 0.08))
        mark_color = rng.uniform(0.75, 0.95) * np.array([1.0, 1.0, rng.uniform(0.6, 1.0)], np.float32)
        np.copyto(image, mark_color, where=marks[..., None])
        joints = (label == SIDEWALK) & ((_frac(dist, 1.2) < 0.1) | (_frac(lateral, 1.2) < 0.08))
        shade = 1.0 - np.float32(0.6) * windows - np.float32(0.4) * slats - np.float32(0.2) * joints
        # A shadow over part of the ground (image only): light comes from one side.
        if rng.random() < 0.5:
            edge = rng.uniform(-2.0, cam.road + 2.0) + rng.uniform(-0.1, 0.1) * dist
            side = (lateral < edge) if rng.random() < 0.5 else (lateral > edge)
            shadow = ground["below"] & side & (label != BUILDING)
            shade *= 1.0 - np.float32(rng.uniform(0.25, 0.55)) * shadow
        image *= shade[..., None]
        return image

    # -- objects -----------------------------------------------------------------------------
    def _objects(self, cam: Camera, rng: np.random.Generator, label: np.ndarray, image: np.ndarray) -> None:
        far = 55.0
        objects: list[tuple[float, str, float]] = []  # (distance, kind, lateral)
        for _ in range(rng.integers(0, 7)):
            lane = rng.uniform(0.2, 0.8) if rng.random() < 0.7 else rng.choice([0.08, 0.92])
            objects.append((rng.uniform(cam.z0 * 0.9, far), "car", lane * cam.road))
        for _ in range(rng.integers(0, 6)):
            objects.append((rng.uniform(cam.z0 * 0.8, 35.0), "person", self._walk_position(cam, rng, 0.2)))
        for _ in range(rng.integers(1, 6)):
            curb = rng.uniform(0.25, 0.5)
            lateral = -curb if rng.random() < 0.5 else cam.road + curb
            objects.append((rng.uniform(cam.z0 * 0.8, 45.0), "pole", lateral))
        for _ in range(rng.integers(0, 5)):
            objects.append((rng.uniform(cam.z0 * 1.0, 45.0), "tree", self._walk_position(cam, rng, 0.0)))
        draw = {"car": self._car, "person": self._person, "pole": self._pole, "tree": self._tree}
        for distance, kind, lateral in sorted(objects, key=lambda o: -o[0]):
            s = cam.scale(distance)
            draw[kind](cam, rng, label, image, s, cam.column(s, lateral), cam.ground_row(s))

    @staticmethod
    def _walk_position(cam: Camera, rng: np.random.Generator, p_road: float) -> float:
        if rng.random() < p_road:
            return rng.uniform(0.5, cam.road - 0.5)
        if rng.random() < 0.5:
            return -rng.uniform(0.4, max(cam.walk_left - 0.3, 0.5))
        return cam.road + rng.uniform(0.4, max(cam.walk_right - 0.3, 0.5))

    def _window(self, top: float, left: float, shape: tuple[int, int]):
        """Image slices and matching local slices of a box placed at (``top``, ``left``), or None."""
        top, left = int(round(top)), int(round(left))
        y0, x0 = max(top, 0), max(left, 0)
        y1, x1 = min(top + shape[0], self.height), min(left + shape[1], self.width)
        if y0 >= y1 or x0 >= x1:
            return None
        return (slice(y0, y1), slice(x0, x1)), (slice(y0 - top, y1 - top), slice(x0 - left, x1 - left))

    def _paint(self, label: np.ndarray, image: np.ndarray, top: float, left: float, mask: np.ndarray,
               cls: int, color: np.ndarray) -> None:
        """Paint ``mask`` (local, placed at row ``top``, column ``left``) with a class and colour.

        ``color`` is one RGB triple or a per-pixel (h, w, 3) array.
        """
        window = self._window(top, left, mask.shape)
        if window is None:
            return
        dst, local = window
        m = mask[local]
        label[dst][m] = cls
        image[dst][m] = color[local][m] if color.ndim == 3 else color

    def _darken(self, image: np.ndarray, top: float, left: float, mask: np.ndarray, factor: float) -> None:
        window = self._window(top, left, mask.shape)
        if window is not None:
            dst, local = window
            image[dst][mask[local]] *= factor

    @staticmethod
    def _grid(h: float, w: float) -> tuple[np.ndarray, np.ndarray, int, int]:
        """Local coordinates in [0, 1] over a box of ``h`` x ``w`` pixels (pixel centres)."""
        hh, ww = max(int(np.ceil(h)), 1), max(int(np.ceil(w)), 1)
        v = (np.arange(hh, dtype=np.float32)[:, None] + 0.5) / h
        u = (np.arange(ww, dtype=np.float32)[None, :] + 0.5) / w
        return v, u, hh, ww

    def _car(self, cam, rng, label, image, s, cx, base) -> None:
        width = s * cam.ppm * rng.uniform(1.6, 2.0)
        height = s * cam.ppm * rng.uniform(1.35, 1.7) * (1.4 if rng.random() < 0.15 else 1.0)
        if width < 2.0:
            return
        v, u, hh, ww = self._grid(height, width)
        c = np.abs(u - 0.5)
        roof = rng.uniform(0.35, 0.5)
        cabin_half = 0.5 - 0.16 * (roof - v) / roof - 0.04
        body = np.broadcast_to((v >= roof) & (c <= 0.5), (hh, ww))
        mask = body | ((v < roof) & (v > 0.03) & (c <= cabin_half))
        color = np.broadcast_to(_CAR_COLORS[rng.integers(len(_CAR_COLORS))] * rng.uniform(0.85, 1.1),
                                (hh, ww, 3)).copy()
        color[(v > 0.08) & (v < roof - 0.03) & (c < cabin_half - 0.06)] = (0.1, 0.12, 0.16)   # glass
        color[(v > 0.86) & (c > 0.3)] = (0.04, 0.04, 0.04)                                    # wheels
        color[(v > 0.5) & (v < 0.6) & (c > 0.36) & (c < 0.47)] = (0.8, 0.05, 0.05)            # lights
        color[(v > 0.64) & (v < 0.74) & (c < 0.1)] = (0.9, 0.9, 0.85)                         # plate
        shadow_h = max(height * 0.08, 1.0)
        sv, su, sh, sw = self._grid(shadow_h, width * 1.15)
        shadow = ((sv - 0.5) ** 2 * 4 + (su - 0.5) ** 2 * 4) <= 1.0
        self._darken(image, base - shadow_h / 2, cx - width * 0.575, np.broadcast_to(shadow, (sh, sw)), 0.45)
        self._paint(label, image, base - height, cx - width / 2, mask, CAR, color)

    def _person(self, cam, rng, label, image, s, cx, base) -> None:
        height = s * cam.ppm * rng.uniform(1.5, 1.9)
        if height < 4.0:
            return
        width = height * 0.36
        v, u, hh, ww = self._grid(height, width)
        x = (u - 0.5) * width / height                      # horizontal offset in body heights
        stride = rng.uniform(0.0, 0.25)
        head = ((v - 0.07) / 0.065) ** 2 + (x / 0.05) ** 2 <= 1.0
        torso = (v >= 0.13) & (v <= 0.53) & (np.abs(x) <= 0.11 - 0.02 * (v - 0.13))
        arms = (v >= 0.15) & (v <= 0.47) & (np.abs(x) > 0.11) & (np.abs(x) <= 0.15 + 0.05 * stride)
        spread = 0.035 + stride * (v - 0.5)
        legs = (v > 0.5) & ((np.abs(x - spread) <= 0.042) | (np.abs(x + spread) <= 0.042))
        mask = head | torso | arms | legs
        color = np.empty((hh, ww, 3), dtype=np.float32)
        color[:] = rng.uniform(0.05, 0.9, 3)                                  # shirt
        color[v[:, 0] > 0.5] = rng.uniform(0.05, 0.5) * rng.uniform(0.7, 1.2, 3)  # trousers
        color[head] = np.array([0.85, 0.65, 0.5], np.float32) * rng.uniform(0.4, 1.05)
        self._paint(label, image, base - height, cx - ww / 2, mask, PERSON, color)

    def _pole(self, cam, rng, label, image, s, cx, base) -> None:
        height = s * cam.ppm * rng.uniform(3.5, 8.0)
        if height < 3.0:
            return
        width = max(1.0, round(s * cam.ppm * rng.uniform(0.12, 0.25)))
        metal = np.float32(rng.uniform(0.25, 0.6)) * rng.uniform(0.9, 1.1, 3).astype(np.float32)
        self._paint(label, image, base - height, cx - width / 2, np.ones((int(height), int(width)), bool),
                    POLE, metal)
        if rng.random() < 0.3:   # street-light arm over the road side
            arm = s * cam.ppm * rng.uniform(0.8, 2.5)
            side = 1.0 if cx < cam.vanish else -1.0
            left = cx if side > 0 else cx - arm
            thick = max(1, int(round(width * 0.7)))
            self._paint(label, image, base - height, left, np.ones((thick, int(arm) + 1), bool), POLE, metal)
        if rng.random() < 0.7:
            self._sign(cam, rng, label, image, s, cx, base - s * cam.ppm * min(rng.uniform(2.0, 3.6),
                                                                               height / (s * cam.ppm) - 0.3))

    def _sign(self, cam, rng, label, image, s, cx, center_row) -> None:
        size = s * cam.ppm * rng.uniform(0.5, 0.9)
        if size < 2.0:
            return
        shape = rng.integers(4)
        aspect = rng.uniform(1.2, 2.0) if shape == 3 else 1.0
        v, u, hh, ww = self._grid(size, size * aspect)
        dv, du = v - 0.5, u - 0.5
        if shape == 0:      # disc
            inside = dv**2 + du**2
            mask, inner = inside <= 0.25, inside <= 0.13
        elif shape == 1:    # triangle, point up
            mask = (v >= 0.1) & (np.abs(du) <= 0.5 * v)
            inner = (v >= 0.35) & (v <= 0.85) & (np.abs(du) <= 0.5 * v - 0.12)
        elif shape == 2:    # diamond
            dist = np.abs(dv) + np.abs(du)
            mask, inner = dist <= 0.5, dist <= 0.33
        else:               # rectangle
            mask = np.ones((hh, ww), bool)
            inner = (np.abs(dv) < 0.38) & (np.abs(du) < 0.42)
        face, border = (np.array(c, np.float32) for c in _SIGN_STYLES[rng.integers(len(_SIGN_STYLES))])
        color = np.empty((hh, ww, 3), dtype=np.float32)
        color[:] = border
        color[np.broadcast_to(inner, (hh, ww))] = face
        offset = rng.choice([-0.5, 0.0, 0.5]) * ww
        self._paint(label, image, center_row - hh / 2, cx - ww / 2 + offset,
                    np.broadcast_to(mask, (hh, ww)), SIGN, color)

    def _tree(self, cam, rng, label, image, s, cx, base) -> None:
        trunk_h = s * cam.ppm * rng.uniform(1.5, 3.0)
        radius = s * cam.ppm * rng.uniform(1.2, 2.6)
        if radius < 2.0:
            return
        trunk_w = max(1.0, s * cam.ppm * rng.uniform(0.2, 0.4))
        bark = np.array([0.3, 0.22, 0.15], np.float32) * rng.uniform(0.6, 1.2)
        self._paint(label, image, base - trunk_h, cx - trunk_w / 2,
                    np.ones((int(trunk_h) + 1, int(trunk_w)), bool), VEGETATION, bark)
        ry = radius * rng.uniform(0.8, 1.3)
        v, u, hh, ww = self._grid(2 * ry, 2 * radius)
        dv, du = (v - 0.5) * 2, (u - 0.5) * 2
        angle = np.arctan2(dv, du)
        wobble = 1.0 + 0.15 * np.sin(angle * rng.integers(3, 8) + rng.uniform(0, 6.3)) \
            + 0.08 * np.sin(angle * rng.integers(9, 15) + rng.uniform(0, 6.3))
        mask = dv**2 + du**2 <= wobble**2
        leaves = np.array([rng.uniform(0.1, 0.3), rng.uniform(0.3, 0.5), rng.uniform(0.05, 0.15)], np.float32)
        self._paint(label, image, base - trunk_h - 1.6 * ry, cx - radius, mask, VEGETATION, leaves)

    # -- finishing ---------------------------------------------------------------------------
    def _ego_vehicle(self, rng: np.random.Generator, label: np.ndarray, image: np.ndarray) -> None:
        """Sometimes the car's own bonnet at the bottom: labelled void, like Cityscapes' ego vehicle."""
        if rng.random() >= 0.25:
            return
        peak = self.height * rng.uniform(0.05, 0.12)
        x = (self.cols - self.width * rng.uniform(0.4, 0.6)) / (self.width * 0.75)
        top = self.height - peak * np.clip(1.0 - x**2, 0.0, 1.0)
        mask = self.rows >= top
        label[mask] = VOID
        image[mask] = rng.uniform(0.05, 0.4) * rng.uniform(0.8, 1.2, 3)

    def _finish(self, rng: np.random.Generator, label: np.ndarray, image: np.ndarray) -> None:
        """Class textures, then lighting (gain, colour cast, vertical falloff) and sensor grain."""
        low = self._smooth_noise(rng, cell=8)
        grain = rng.random((self.height, self.width), dtype=np.float32) - np.float32(0.5)
        texture = 1.0 + np.take(_LOW_AMP, label) * low + np.take(_FINE_AMP, label) * (grain * 3.0)
        falloff = 1.0 + np.float32(rng.uniform(-0.2, 0.2)) * (self.rows / self.height - 0.5)
        gain = (rng.uniform(0.55, 1.35) * rng.uniform(0.85, 1.15, 3)).astype(np.float32)
        image *= (texture * falloff)[..., None]
        image *= gain

    def _smooth_noise(self, rng: np.random.Generator, cell: int) -> np.ndarray:
        """Bilinearly upsampled Gaussian noise: blotches about ``cell`` pixels wide."""
        gh, gw = self.height // cell + 2, self.width // cell + 2
        grid = rng.standard_normal((gh, gw), dtype=np.float32)
        ys, xs = self.rows[:, 0] / cell, self.cols[0] / cell
        y0, x0 = ys.astype(np.int64), xs.astype(np.int64)
        fy, fx = (ys - y0)[:, None], (xs - x0)[None, :]
        rows = np.take(grid, y0, axis=0) * (1 - fy) + np.take(grid, y0 + 1, axis=0) * fy
        return np.take(rows, x0, axis=1) * (1 - fx) + np.take(rows, x0 + 1, axis=1) * fx
