"""Synthetic small-object detection, modelled on Tsinghua-Tencent 100K (TT100K).

TT100K (Zhu et al., CVPR 2016; the EFPN paper's benchmark, section IV-A) photographs Chinese
streets at high resolution with traffic signs so small that "92% of instances cover an area less
than 0.2% of the entire image". Its classes are prohibitory (red ring or red disc), mandatory
(blue disc) and warning (yellow triangle with a black border) signs that differ by an inner
symbol: digits, bars, arrows.

Here: 15 sign classes of those families (plus stop, give way, pedestrian crossing and priority
road), drawn 4x supersampled and downsampled, on street-like backgrounds (sky gradient, building
facades with windows, trees, road with lane lines, poles) with *distractors*: red, blue, yellow
and white discs and rectangles that are not signs. Sign sizes follow COCO's scale buckets (area
of the box): about 68% small (< 32^2), 27% medium (32^2..96^2), 5% large (> 96^2) -- and one
image in four has a large sign, a close-up -- so most instances are small, as in TT100K.
"""
from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from .common import image_rng, log_uniform, smooth_noise, to_uint8

NAME = "small_objects"
RED, WHITE, BLUE, YELLOW, BLACK = (205, 30, 35), (245, 245, 240), (20, 70, 175), (250, 200, 20), (20, 20, 20)

# name, TT100K-style family, outline shape, outer colour, inner colour, symbol, symbol colour
SIGN_CLASSES = [
    ("speed_limit_30", "prohibitory", "circle", RED, WHITE, "30", BLACK),
    ("speed_limit_50", "prohibitory", "circle", RED, WHITE, "50", BLACK),
    ("speed_limit_80", "prohibitory", "circle", RED, WHITE, "80", BLACK),
    ("speed_limit_120", "prohibitory", "circle", RED, WHITE, "120", BLACK),
    ("no_entry", "prohibitory", "circle", WHITE, RED, "bar", WHITE),
    ("no_parking", "prohibitory", "circle", RED, BLUE, "slash", RED),
    ("go_straight", "mandatory", "circle", WHITE, BLUE, "arrow_up", WHITE),
    ("turn_right", "mandatory", "circle", WHITE, BLUE, "arrow_right", WHITE),
    ("min_speed_60", "mandatory", "circle", WHITE, BLUE, "60", WHITE),
    ("warning", "warning", "triangle", BLACK, YELLOW, "exclamation", BLACK),
    ("crossroads", "warning", "triangle", BLACK, YELLOW, "cross", BLACK),
    ("give_way", "prohibitory", "inverted_triangle", RED, WHITE, None, None),
    ("stop", "prohibitory", "octagon", WHITE, RED, "bar", WHITE),
    ("pedestrian_crossing", "indicative", "square", WHITE, BLUE, "triangle", WHITE),
    ("priority_road", "indicative", "diamond", WHITE, YELLOW, None, None),
]
# ring width as a fraction of the sign: red rings are wide, white borders thin
RING = {RED: 0.14, WHITE: 0.06, BLACK: 0.10}
ASPECT = {"triangle": 0.87, "inverted_triangle": 0.87}  # height / width; 1 for the others

# COCO scale buckets by box area, and the side (sqrt of area) ranges drawn from each
BUCKET_PROBS = (0.68, 0.27, 0.05)  # small, medium, large
BUCKET_SIDES = ((8.0, 31.0), (33.0, 95.0), (97.0, 256.0))
SUPERSAMPLE = 4


def categories() -> list[dict]:
    return [{"id": i + 1, "name": name, "supercategory": family} for i, (name, family, *_) in enumerate(SIGN_CLASSES)]


# ---------------------------------------------------------------------------------------- signs
def _outline(shape: str, w: float, h: float, inset: float) -> list[tuple[float, float]] | tuple:
    """Polygon (or ellipse box) of the sign's outline shrunk by ``inset`` (fraction of the width)."""
    d = inset * w
    if shape == "circle":
        return (d, d, w - d, h - d)
    if shape == "square":
        return [(d, d), (w - d, d), (w - d, h - d), (d, h - d)]
    cx, cy = w / 2, h / 2
    if shape == "diamond":
        return [(cx, 1.4 * d), (w - 1.4 * d, cy), (cx, h - 1.4 * d), (1.4 * d, cy)]
    if shape == "octagon":
        angles = np.deg2rad(22.5 + 45 * np.arange(8))
        return list(zip(cx + (cx - d) * np.cos(angles), cy + (cy - d) * np.sin(angles)))
    # triangles: shrink towards the centroid
    if shape == "triangle":
        pts, centroid = np.array([(cx, 0), (w, h), (0, h)]), np.array([cx, 2 * h / 3])
    else:  # inverted_triangle
        pts, centroid = np.array([(0, 0), (w, 0), (cx, h)]), np.array([cx, h / 3])
    scale = 1 - 3.2 * inset  # the inradius of an equilateral triangle is a third of its height
    return [tuple(p) for p in centroid + (pts - centroid) * scale]


# seven-segment digits: segments a..g as (x0, y0, x1, y1) in a 1 x 2 cell
_SEGMENTS = {
    "a": (0, 0, 1, 0.2), "b": (0.8, 0, 1, 1.05), "c": (0.8, 0.95, 1, 2), "d": (0, 1.8, 1, 2),
    "e": (0, 0.95, 0.2, 2), "f": (0, 0, 0.2, 1.05), "g": (0, 0.9, 1, 1.1),
}
_DIGITS = {"0": "abcdef", "1": "bc", "2": "abged", "3": "abgcd", "4": "fgbc", "5": "afgcd",
           "6": "afgedc", "7": "abc", "8": "abcdefg", "9": "abcdfg"}


def _draw_symbol(draw: ImageDraw.ImageDraw, symbol: str, color, w: float, h: float, shape: str) -> None:
    """Draw the inner symbol in the unit box of the sign, scaled to ``w x h``."""
    def box(x0, y0, x1, y1):
        draw.rectangle([x0 * w, y0 * h, x1 * w, y1 * h], fill=color)

    def poly(points):
        draw.polygon([(x * w, y * h) for x, y in points], fill=color)

    dy = 0.12 if shape == "triangle" else 0.0  # a triangle's centre of mass is low
    if symbol.isdigit():
        n = len(symbol)
        cell_w = 0.2 if n == 2 else 0.15
        gap = 0.06 if n == 2 else 0.04
        total = n * cell_w + (n - 1) * gap
        cell_h = 0.2  # half the digit height
        x = 0.5 - total / 2
        for ch in symbol:
            for seg in _DIGITS[ch]:
                x0, y0, x1, y1 = _SEGMENTS[seg]
                box(x + x0 * cell_w, 0.3 + y0 * cell_h, x + x1 * cell_w, 0.3 + y1 * cell_h)
            x += cell_w + gap
    elif symbol == "bar":
        box(0.2, 0.42, 0.8, 0.58)
    elif symbol == "slash":
        draw.line([(0.22 * w, 0.22 * h), (0.78 * w, 0.78 * h)], fill=color, width=max(1, int(0.11 * w)))
    elif symbol == "arrow_up":
        box(0.44, 0.42, 0.56, 0.8)
        poly([(0.5, 0.17), (0.72, 0.46), (0.28, 0.46)])
    elif symbol == "arrow_right":
        box(0.2, 0.44, 0.58, 0.56)
        poly([(0.83, 0.5), (0.54, 0.28), (0.54, 0.72)])
    elif symbol == "exclamation":
        box(0.46, 0.33 + dy, 0.54, 0.63 + dy)
        box(0.46, 0.68 + dy, 0.54, 0.75 + dy)
    elif symbol == "cross":
        box(0.46, 0.32 + dy, 0.54, 0.78 + dy)
        box(0.3, 0.5 + dy, 0.7, 0.58 + dy)
    elif symbol == "triangle":
        poly([(0.5, 0.2), (0.8, 0.76), (0.2, 0.76)])
    else:
        raise ValueError(f"unknown sign symbol {symbol!r}")


def render_sign(label: int, width: int, height: int) -> np.ndarray:
    """Sign of class ``label`` (1-based) as ``float32 [height, width, 4]`` RGBA in 0..1 (alpha =
    coverage), drawn at 4x and downsampled so that small signs have anti-aliased edges."""
    _, _, shape, outer, inner, symbol, symbol_color = SIGN_CLASSES[label - 1]
    W, H = width * SUPERSAMPLE, height * SUPERSAMPLE
    canvas = Image.new("RGBA", (W, H), (0, 0, 0, 0))
    draw = ImageDraw.Draw(canvas)
    for inset, color in ((0.0, outer), (RING.get(outer, 0.08) if outer != inner else 0.0, inner)):
        outline = _outline(shape, W, H, inset)
        if shape == "circle":
            draw.ellipse(outline, fill=color + (255,))
        else:
            draw.polygon(outline, fill=color + (255,))
    if symbol is not None:
        _draw_symbol(draw, symbol, symbol_color + (255,), W, H, shape)
    small = canvas.resize((width, height), Image.LANCZOS)
    return np.asarray(small).astype(np.float32) / 255.0


# ---------------------------------------------------------------------------------------- scene
def street_background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A street-like ``float32 [H, W, 3]`` scene: sky, facades with windows, trees, road, poles,
    and sign-coloured distractors (tail lights, shop signs, billboards)."""
    H, W = height, width
    horizon = rng.uniform(0.4, 0.65) * H
    y = np.arange(H, dtype=np.float32)[:, None, None] / H
    sky_top, sky_low = rng.uniform([60, 110, 170], [140, 170, 230]), rng.uniform([180, 195, 205], [230, 235, 240])
    t = np.clip(y * H / horizon, 0, 1)
    sky = sky_top * (1 - t) + sky_low * t
    road = rng.uniform(85, 125) * (1.15 - 0.4 * (y - horizon / H))
    image = np.where(y * H < horizon, sky, road).astype(np.float32) * np.ones((1, W, 1), np.float32)

    scale = np.sqrt(H * W) / 256
    # facades with a grid of windows (blue-grey rectangles: distractors for blue signs)
    x = int(rng.uniform(-0.1, 0.1) * W)
    while x < W:
        bw, top = int(rng.uniform(0.1, 0.3) * W), int(rng.uniform(0.05, 0.8) * horizon)
        x0, x1, bottom = max(x, 0), min(x + bw, W), int(horizon) + 2
        if x1 > x0 and bottom > top:
            region = image[top:bottom, x0:x1]
            region[:] = rng.uniform([90, 80, 70], [200, 190, 180])
            win = max(2.0, rng.uniform(3, 7) * scale)
            yy, xx = np.mgrid[top:bottom, x0:x1]
            windows = ((xx - x) % (2 * win) >= win) & ((yy - top) % (2.2 * win) >= 0.9 * win) & (yy < horizon - win)
            region[windows] = rng.uniform([40, 60, 90], [120, 150, 190])
        x += bw + int(rng.uniform(0, 0.05) * W) + 1

    canvas = Image.fromarray(to_uint8(image))
    draw = ImageDraw.Draw(canvas)
    # trees
    for _ in range(rng.integers(1, 5)):
        cx, r = rng.uniform(0, W), rng.uniform(0.04, 0.12) * W
        cy = horizon - rng.uniform(0.3, 1.2) * r
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=tuple(int(v) for v in rng.uniform([30, 70, 20], [90, 140, 60])))
    # lane lines converging to the vanishing point
    vx = rng.uniform(0.3, 0.7) * W
    for end in rng.uniform(-0.5, 1.5, rng.integers(2, 5)) * W:
        color = (235, 235, 225) if rng.random() < 0.7 else (225, 190, 40)
        draw.line([(vx, horizon), (end, H)], fill=color, width=max(1, int(2 * scale)))
    # poles without signs
    for _ in range(rng.integers(1, 4)):
        px, pw = rng.uniform(0, W), max(1, int(rng.uniform(1, 3) * scale))
        draw.rectangle([px, rng.uniform(0.1, 0.6) * H, px + pw, H], fill=(110, 110, 115))
    # distractors in sign colours: discs, rectangles, rings with no symbol inside
    palette = [RED, BLUE, YELLOW, WHITE, (230, 120, 30), (200, 40, 120)]
    for _ in range(int(rng.integers(4, 10) * scale)):
        color = palette[rng.integers(len(palette))]
        side = log_uniform(rng, 4, 40 * scale)
        cx, cy = rng.uniform(0, W), rng.uniform(0.05, 0.9) * H
        kind = rng.integers(3)
        bbox = [cx, cy, cx + side * rng.uniform(0.6, 2.5), cy + side]
        if kind == 0:
            draw.ellipse(bbox[:2] + [cx + side, cy + side], fill=color)
        elif kind == 1:
            draw.rectangle(bbox, fill=color)
        else:
            draw.ellipse(bbox[:2] + [cx + side, cy + side], outline=color, width=max(1, int(side / 8)))
    image = np.asarray(canvas).astype(np.float32)
    shade = smooth_noise(rng, (H, W), scale=max(H, W) / 4)[..., None] * rng.uniform(10, 25)
    return image + shade


def _sample_sizes(rng: np.random.Generator, n: int, index: int, max_side: float) -> np.ndarray:
    """sqrt(box area) of ``n`` signs: bucket by ``BUCKET_PROBS``, log-uniform within the bucket."""
    buckets = rng.choice(3, size=n, p=BUCKET_PROBS)
    if index % 4 == 0:
        buckets[0] = 2  # one close-up in four images
    lo = np.array([BUCKET_SIDES[b][0] for b in buckets])
    hi = np.array([min(BUCKET_SIDES[b][1], max_side) for b in buckets])
    lo = np.minimum(lo, hi)
    return log_uniform(rng, lo, hi)


def _overlaps(boxes: np.ndarray, box, gap: int) -> bool:
    """Whether ``box`` (x, y, w, h) comes within ``gap`` px of any of ``boxes`` ``[N, 4]`` (x, y, w, h)."""
    x, y, w, h = box
    apart = (x + w + gap < boxes[:, 0]) | (boxes[:, 0] + boxes[:, 2] + gap < x) \
        | (y + h + gap < boxes[:, 1]) | (boxes[:, 1] + boxes[:, 3] + gap < y)
    return bool((~apart).any())


def generate_image(seed: int, index: int, height: int, width: int) -> tuple[np.ndarray, list[dict]]:
    """Image ``index``: ``(uint8 [H, W, 3], [{"bbox": [x, y, w, h], "category_id", "area"}, ...])``."""
    rng = image_rng(seed, NAME, index)
    image = street_background(rng, height, width)
    scale = np.sqrt(height * width) / 256
    n = int(rng.integers(4, 9) * np.sqrt(scale))
    labels = rng.integers(1, len(SIGN_CLASSES) + 1, n)
    sides = _sample_sizes(rng, n, index, max_side=0.45 * min(height, width))

    boxes: list[tuple[int, int, int, int]] = []  # x, y, w, h
    annotations = []
    for label, side in zip(labels, sides):
        shape = SIGN_CLASSES[label - 1][2]
        aspect = ASPECT.get(shape, 1.0)
        w = max(4, int(round(side / np.sqrt(aspect))))
        h = max(4, int(round(side * np.sqrt(aspect))))
        if w >= width or h >= height:
            continue
        placed = None
        for _ in range(30):
            if boxes and rng.random() < 0.35:  # signs come in groups on one pole
                px, py, pw, ph = boxes[rng.integers(len(boxes))]
                x = int(px + pw / 2 - w / 2)
                y = py + ph + int(rng.integers(0, 3)) if rng.random() < 0.5 else py - h - int(rng.integers(0, 3))
            else:
                x = int(rng.integers(0, width - w + 1))
                y = int(rng.integers(int(0.03 * height), max(int(0.03 * height) + 1, int(0.85 * height) - h + 1)))
            if not (0 <= x <= width - w and 0 <= y <= height - h):
                continue
            if not _overlaps(np.array(boxes).reshape(-1, 4), (x, y, w, h), gap=1):
                placed = (x, y, w, h)
                break
        if placed is None:
            continue
        boxes.append(placed)
        annotations.append({"bbox": list(placed), "category_id": int(label), "area": float(w * h), "iscrowd": 0})

    # poles first (signs are drawn over them), then the signs, each with its own lighting
    for x, y, w, h in boxes:
        pw = max(1, int(round(0.08 * w)))
        x0 = x + w // 2 - pw // 2
        image[y + h : min(height, y + h + int(rng.uniform(1, 4) * h)), x0 : x0 + pw] = rng.uniform(95, 130)
    for (x, y, w, h), ann in zip(boxes, annotations):
        rgba = render_sign(ann["category_id"], w, h)
        light = rng.uniform(0.6, 1.1) * (1 + rng.uniform(-0.06, 0.06, 3))
        alpha = rgba[..., 3:]
        region = image[y : y + h, x : x + w]
        region[:] = region * (1 - alpha) + 255.0 * rgba[..., :3] * light * alpha

    image = image + rng.normal(0, 4, image.shape).astype(np.float32)
    return to_uint8(image), annotations
