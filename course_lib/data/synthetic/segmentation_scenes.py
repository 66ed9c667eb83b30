"""Synthetic segmentation scenes: what FCN and U-Net have to get right.

Each scene has a textured, noisy background (class 0) with faint background-coloured clutter, and
five object classes chosen for what they teach:

* ``cell`` -- clusters of **touching instances of one class**, as in U-Net's microscopy images:
  neighbouring cells meet along a 1-2 px membrane that is labelled background in the class mask
  (U-Net section 3: "separation of touching objects of the same class"). Per-pixel instance ids
  are saved too, so U-Net's weight map ``w(x) = w_c(x) + w0 exp(-(d1 + d2)^2 / 2 sigma^2)`` can be
  computed.
* ``wire`` -- **thin structures** 1-3 px wide that a stride-32 prediction (FCN-32s) cannot resolve
  and the skip connections of FCN-8s can.
* ``dot`` -- **small regions** of a few pixels.
* ``block`` -- large striped rotated rectangles; ``triangle`` -- medium polygons.

Masks follow PASCAL VOC: uint8 class ids with 255 ("void", ignored by the loss and the metric) on
a thin band just outside every object boundary, except along the membranes between touching cells,
which must be learnt as background.
"""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFilter
from scipy import ndimage

from .common import image_rng, smooth_noise, to_uint8

NAME = "segmentation"
IGNORE_INDEX = 255
IGNORE_COLOR = [224, 224, 192]  # VOC's colour for void
# name, colour for plots (PASCAL VOC's palette), base colour in the image
CLASSES = [
    ("background", [0, 0, 0], None),
    ("cell", [128, 0, 0], (205, 150, 195)),
    ("wire", [0, 128, 0], (35, 85, 60)),
    ("dot", [128, 128, 0], (245, 225, 70)),
    ("block", [0, 0, 128], (70, 100, 180)),
    ("triangle", [128, 0, 128], (235, 135, 45)),
]
CELL, WIRE, DOT, BLOCK, TRIANGLE = 1, 2, 3, 4, 5
MEMBRANE_COLOR = np.array([70, 35, 75], np.float32)


def classes_json() -> dict:
    return {
        "classes": [{"id": i, "name": n, "color": c} for i, (n, c, _) in enumerate(CLASSES)],
        "ignore_index": IGNORE_INDEX,
        "ignore_color": IGNORE_COLOR,
        "description": "Synthetic segmentation scenes (course_lib.data.synthetic.segmentation_scenes)",
    }


def palette() -> list[int]:
    """Flat PNG palette: class colours, VOC's void colour at 255."""
    pal = np.zeros((256, 3), np.uint8)
    for i, (_, color, _) in enumerate(CLASSES):
        pal[i] = color
    pal[IGNORE_INDEX] = IGNORE_COLOR
    return pal.ravel().tolist()


def _window(size: int, points: np.ndarray, margin: float) -> tuple[slice, slice]:
    """The (rows, cols) slices of the image covering ``points`` (x, y) plus ``margin`` pixels."""
    lo = np.clip(np.floor(points.min(0) - margin), 0, size).astype(int)
    hi = np.clip(np.ceil(points.max(0) + margin) + 1, 0, size).astype(int)
    return slice(lo[1], hi[1]), slice(lo[0], hi[0])


def _draw_mask(window: tuple[slice, slice], points: np.ndarray, line_width: int = 0) -> np.ndarray:
    """Boolean mask over ``window`` of the polygon (or, with ``line_width``, the polyline) ``points``."""
    rows, cols = window
    canvas = Image.new("L", (cols.stop - cols.start, rows.stop - rows.start), 0)
    draw = ImageDraw.Draw(canvas)
    xy = [(float(x - cols.start), float(y - rows.start)) for x, y in points]
    if line_width:
        draw.line(xy, fill=1, width=line_width, joint="curve")
    else:
        draw.polygon(xy, fill=1)
    return np.asarray(canvas).astype(bool)


class _Scene:
    """Class map, instance map and image painted object by object (later objects on top).

    Every object is drawn inside its own window (a pair of slices) so that the cost of an object
    is its area, not the image's.
    """

    def __init__(self, rng: np.random.Generator, size: int):
        self.rng, self.size = rng, size
        self.cls = np.zeros((size, size), np.uint8)
        self.inst = np.zeros((size, size), np.int32)
        self.membrane = np.zeros((size, size), bool)
        self.next_id = 1
        jitter = rng.uniform(-18, 18, 3)
        self.base = {c: np.array(rgb, np.float32) + jitter for c, (_, _, rgb) in enumerate(CLASSES) if rgb}
        self.texture = smooth_noise(rng, (size, size), scale=size / 12)
        self.image = self._background()

    def _background(self) -> np.ndarray:
        rng, s = self.rng, self.size
        base = rng.uniform(95, 185, 3).astype(np.float32)
        shade = smooth_noise(rng, (s, s), scale=s / 3)[..., None] * rng.uniform(20, 40)
        tint = np.stack([smooth_noise(rng, (s, s), scale=s / 6) for _ in range(3)], -1) * 12
        image = base + shade + tint
        # faint clutter in background colours: strokes and rings that are *not* objects
        canvas = Image.fromarray(to_uint8(image))
        draw = ImageDraw.Draw(canvas)
        for _ in range(rng.integers(3, 8)):
            color = tuple(int(v) for v in np.clip(base + rng.uniform(-30, 30, 3), 0, 255))
            if rng.random() < 0.5:
                p = rng.uniform(0, s, 4)
                draw.line([(p[0], p[1]), (p[2], p[3])], fill=color, width=int(rng.integers(1, 4)))
            else:
                c, r = rng.uniform(0, s, 2), rng.uniform(0.03, 0.12) * s
                draw.ellipse([c[0] - r, c[1] - r, c[0] + r, c[1] + r], outline=color, width=int(rng.integers(1, 3)))
        return np.asarray(canvas).astype(np.float32)

    def paint(self, window, mask: np.ndarray, cls: int, color=None) -> None:
        """Give the pixels of ``mask`` (over ``window``) class ``cls``, a new instance id and a
        textured colour."""
        if not mask.any():
            return
        color = self.base[cls] if color is None else color
        brightness = 1.0 + 0.12 * self.texture[window][mask] + self.rng.uniform(-0.08, 0.08)
        self.image[window][mask] = color * brightness[:, None]
        self.cls[window][mask] = cls
        self.membrane[window][mask] = False
        self.inst[window][mask] = self.next_id
        self.next_id += 1

    def grid(self, window):
        rows, cols = window
        return np.mgrid[rows, cols].astype(np.float32)  # (yy, xx)

    # ------------------------------------------------------------------ objects
    def cell_cluster(self) -> None:
        """Touching cells: a power diagram of a few seeds, cut to the union of their discs."""
        rng, s = self.rng, self.size
        radius = rng.uniform(0.10, 0.17) * s
        center = rng.uniform(radius, s - radius, 2)
        n = int(rng.integers(3, 8))
        angle, r = rng.uniform(0, 2 * np.pi, n), radius * 0.75 * np.sqrt(rng.uniform(0, 1, n))
        seeds = center + np.stack([r * np.cos(angle), r * np.sin(angle)], 1)  # (x, y)
        radii = rng.uniform(0.38, 0.6, n) * radius
        window = _window(s, seeds, margin=radii.max() * 1.1 + 2)
        yy, xx = self.grid(window)
        # normalised distance of every pixel to every seed: [n, h, w]
        d = np.hypot(xx - seeds[:, 0, None, None], yy - seeds[:, 1, None, None]) / radii[:, None, None]
        d = d + 0.08 * smooth_noise(rng, xx.shape, scale=max(4.0, radius / 3))
        nearest, dmin = d.argmin(0), d.min(0)
        inside = dmin < 1.0
        label = np.where(inside, nearest + 1, 0)
        # membrane: a cell pixel whose right or lower neighbour belongs to another cell
        sep = np.zeros_like(inside)
        sep[:, :-1] |= (label[:, :-1] != label[:, 1:]) & (label[:, :-1] > 0) & (label[:, 1:] > 0)
        sep[:-1, :] |= (label[:-1, :] != label[1:, :]) & (label[:-1, :] > 0) & (label[1:, :] > 0)
        if s >= 256:
            sep = ndimage.binary_dilation(sep) & inside
        nucleus = dmin < rng.uniform(0.25, 0.4)
        image = self.image[window]
        for k in range(n):
            cell = (label == k + 1) & ~sep
            self.paint(window, cell, CELL, self.base[CELL] * rng.uniform(0.85, 1.1))
            image[cell & nucleus] *= 0.72  # a darker nucleus, still class "cell"
        image[sep] = MEMBRANE_COLOR * (1.0 + 0.1 * self.texture[window][sep, None])
        self.cls[window][sep] = 0
        self.inst[window][sep] = 0
        self.membrane[window][sep] = True

    def block(self) -> None:
        rng, s = self.rng, self.size
        w, h = rng.uniform(0.12, 0.3, 2) * s
        c, theta = rng.uniform(0.1 * s, 0.9 * s, 2), rng.uniform(0, np.pi)
        rot = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
        corners = np.array([[-w, -h], [w, -h], [w, h], [-w, h]]) / 2 @ rot.T + c
        window = _window(s, corners, margin=1)
        mask = _draw_mask(window, corners)
        yy, xx = self.grid(window)
        period = rng.uniform(4, 9)
        stripes = 1.0 + 0.18 * np.sin(2 * np.pi * (xx * np.cos(theta) + yy * np.sin(theta)) / period)
        self.paint(window, mask, BLOCK)
        self.image[window][mask] *= stripes[mask][:, None]

    def triangle(self) -> None:
        rng, s = self.rng, self.size
        c, r = rng.uniform(0.08 * s, 0.92 * s, 2), rng.uniform(0.05, 0.12) * s
        angles = rng.uniform(0, 2 * np.pi) + np.array([0, 2, 4]) * np.pi / 3 + rng.uniform(-0.4, 0.4, 3)
        corners = c + r * np.stack([np.cos(angles), np.sin(angles)], 1)
        window = _window(s, corners, margin=1)
        self.paint(window, _draw_mask(window, corners), TRIANGLE)

    def dot(self) -> None:
        rng, s = self.rng, self.size
        c, r = rng.uniform(4, s - 4, 2), rng.uniform(1.5, 3.5)
        window = _window(s, c[None], margin=r + 1)
        yy, xx = self.grid(window)
        self.paint(window, np.hypot(xx - c[0], yy - c[1]) <= r, DOT)

    def wire(self) -> None:
        """A smooth random walk drawn 1-3 px wide."""
        rng, s = self.rng, self.size
        steps = int(rng.integers(12, 30))
        heading = rng.uniform(0, 2 * np.pi) + np.cumsum(rng.normal(0, 0.25, steps))
        step = s / 28
        points = rng.uniform(0.1 * s, 0.9 * s, 2) + np.cumsum(step * np.stack([np.cos(heading), np.sin(heading)], 1), 0)
        width = int(rng.integers(1, 3 if s < 256 else 4))
        window = _window(s, points, margin=width + 1)
        self.paint(window, _draw_mask(window, points, line_width=width), WIRE)

    def finish(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        rng, s = self.rng, self.size
        image = self.image + rng.normal(0, 7, self.image.shape).astype(np.float32)
        image = np.asarray(Image.fromarray(to_uint8(image)).filter(ImageFilter.GaussianBlur(0.5)))
        # VOC-style void band: background pixels within `band` px of an object, except membranes
        band = max(1, s // 192)
        objects = self.cls > 0
        near = ndimage.binary_dilation(objects, iterations=band)
        mask = self.cls.copy()
        mask[near & ~objects & ~self.membrane] = IGNORE_INDEX
        # renumber instance ids 1..N in order of appearance (objects may have been painted over)
        ids = np.unique(self.inst)
        ids = ids[ids > 0]
        lut = np.zeros(self.next_id, np.uint8)
        if len(ids) > 254:
            raise RuntimeError(f"{len(ids)} instances do not fit in an 8-bit instance map")
        lut[ids] = np.arange(1, len(ids) + 1)
        return image, mask, lut[self.inst]


def generate_scene(seed: int, index: int, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Scene ``index``: ``(image uint8 [S, S, 3], class mask uint8 [S, S], instance ids uint8 [S, S])``."""
    rng = image_rng(seed, NAME, index)
    scene = _Scene(rng, size)
    density = (size / 128) ** 2
    counts = {
        "cell_cluster": rng.integers(1, 3) + int(density > 3),
        "block": rng.integers(1, 3),
        "triangle": rng.integers(1, 4),
        "dot": int(rng.integers(4, 10) * min(density, 4)),
        "wire": int(rng.integers(2, 4) * min(np.sqrt(density), 2)),
    }
    for kind in ("cell_cluster", "block", "triangle", "dot", "wire"):  # thin things last, on top
        for _ in range(int(counts[kind])):
            getattr(scene, kind)()
    return scene.finish()


__all__ = ["NAME", "CLASSES", "IGNORE_INDEX", "classes_json", "palette", "generate_scene"]
