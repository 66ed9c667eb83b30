"""Synthetic multi-scale detection for the R-CNN family and FPN.

Five shape classes at sizes from 16 px to 400 px (or most of the image), drawn log-uniformly so
that each octave -- and so each FPN level P2..P6 with its anchor of 32..512 px (FPN section 4.1) --
gets boxes. Colour hints at the class but varies (the shape decides), objects sit on textured
backgrounds with clutter and may partly occlude one another (each keeps at least 70% of its
pixels visible). Boxes are the tight boxes of the whole shape.
"""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from .common import image_rng, log_uniform, smooth_noise, to_uint8

NAME = "multiscale"
# name, base colour (jittered per object)
SHAPE_CLASSES = [
    ("ellipse", (210, 70, 60)),
    ("rectangle", (60, 120, 210)),
    ("triangle", (230, 190, 50)),
    ("ring", (80, 180, 90)),
    ("cross", (170, 80, 190)),
]
MIN_SIDE, MAX_SIDE = 16.0, 400.0
MIN_VISIBLE = 0.7


def categories() -> list[dict]:
    return [{"id": i + 1, "name": name, "supercategory": "shape"} for i, (name, _) in enumerate(SHAPE_CLASSES)]


def shape_mask(label: int, width: int, height: int, rng: np.random.Generator) -> np.ndarray:
    """Boolean ``[height, width]`` mask of a shape of class ``label`` filling its box."""
    canvas = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    w, h = width - 1, height - 1
    name = SHAPE_CLASSES[label - 1][0]
    if name == "ellipse":
        draw.ellipse([0, 0, w, h], fill=1)
    elif name == "rectangle":
        draw.rectangle([0, 0, w, h], fill=1)
    elif name == "triangle":
        apex = rng.uniform(0.2, 0.8) * w
        draw.polygon([(apex, 0), (w, h), (0, h)], fill=1)
    elif name == "ring":
        t = rng.uniform(0.18, 0.3)
        draw.ellipse([0, 0, w, h], fill=1)
        draw.ellipse([t * w, t * h, (1 - t) * w, (1 - t) * h], fill=0)
    elif name == "cross":
        t = rng.uniform(0.3, 0.42)
        draw.rectangle([t * w, 0, (1 - t) * w, h], fill=1)
        draw.rectangle([0, t * h, w, (1 - t) * h], fill=1)
    return np.asarray(canvas).astype(bool)


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    base = rng.uniform(70, 190, 3)
    image = base + np.stack([smooth_noise(rng, (height, width), scale=max(height, width) / 5) for _ in range(3)], -1) * 35
    canvas = Image.fromarray(to_uint8(image))
    draw = ImageDraw.Draw(canvas)
    scale = np.sqrt(height * width) / 256
    for _ in range(int(rng.integers(6, 14) * scale)):  # clutter: strokes and arcs of any colour
        color = tuple(int(v) for v in rng.uniform(30, 230, 3))
        p = rng.uniform(0, 1, 4) * [width, height, width, height]
        if rng.random() < 0.6:
            draw.line([(p[0], p[1]), (p[2], p[3])], fill=color, width=int(rng.integers(1, 4)))
        else:
            box = [min(p[0], p[2]), min(p[1], p[3]), max(p[0], p[2]), max(p[1], p[3])]
            draw.arc(box, rng.uniform(0, 360), rng.uniform(0, 360), fill=color, width=int(rng.integers(1, 4)))
    return np.asarray(canvas).astype(np.float32)


def generate_image(seed: int, index: int, height: int, width: int) -> tuple[np.ndarray, list[dict]]:
    """Image ``index``: ``(uint8 [H, W, 3], [{"bbox": [x, y, w, h], "category_id", "area"}, ...])``."""
    rng = image_rng(seed, NAME, index)
    image = _background(rng, height, width)
    texture = smooth_noise(rng, (height, width), scale=8)
    scale = np.sqrt(height * width) / 256
    n = int(rng.integers(3, 8) * np.sqrt(scale))
    max_side = min(MAX_SIDE, 0.85 * min(height, width))
    sides = np.sort(log_uniform(rng, MIN_SIDE, max_side, n))[::-1]  # large first: small ones on top
    owner = np.zeros((height, width), np.int32)  # which object each pixel shows (0 = background)
    full, visible = [], []  # pixels per object: drawn, still visible
    annotations = []
    for side in sides:
        label = int(rng.integers(1, len(SHAPE_CLASSES) + 1))
        aspect = log_uniform(rng, 0.6, 1.6)
        w = int(np.clip(round(side * np.sqrt(aspect)), 8, width))
        h = int(np.clip(round(side / np.sqrt(aspect)), 8, height))
        mask = shape_mask(label, w, h, rng)
        for _ in range(20):
            x, y = int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1))
            covered = np.bincount(owner[y : y + h, x : x + w][mask], minlength=len(full) + 1)[1:]
            if np.all(np.asarray(visible) - covered >= MIN_VISIBLE * np.asarray(full)):
                break
        else:
            continue  # no place where it would leave the others visible enough
        visible = list(np.asarray(visible) - covered)
        full.append(int(mask.sum()))
        visible.append(full[-1])
        owner[y : y + h, x : x + w][mask] = len(full)

        color = np.array(SHAPE_CLASSES[label - 1][1], np.float32) + rng.uniform(-35, 35, 3)
        region = image[y : y + h, x : x + w]
        shade = 1 + 0.15 * texture[y : y + h, x : x + w][mask] + 0.1 * np.linspace(-1, 1, h)[:, None].repeat(w, 1)[mask]
        region[mask] = color * shade[:, None]
        ys, xs = np.nonzero(mask)  # the tight box of the drawn pixels
        bx, by = x + int(xs.min()), y + int(ys.min())
        bw, bh = int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)
        annotations.append({"bbox": [bx, by, bw, bh], "category_id": label, "area": float(bw * bh), "iscrowd": 0})
    image = image + rng.normal(0, 5, image.shape).astype(np.float32)
    return to_uint8(image), annotations
