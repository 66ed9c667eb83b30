"""Shared pieces of the synthetic datasets: random streams, noise textures, COCO JSON, atomic builds."""
from __future__ import annotations

import json
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from ..paths import MARKER

GENERATOR_VERSION = 1


def image_rng(seed: int, dataset: str, index: int) -> np.random.Generator:
    """The random stream of image ``index`` of ``dataset``: a function of ``(seed, dataset, index)``
    only, so an image does not depend on which images were generated before it."""
    return np.random.default_rng([int(seed), zlib.crc32(dataset.encode()), int(index)])


def smooth_noise(rng: np.random.Generator, shape: tuple[int, int], scale: float, octaves: int = 3) -> np.ndarray:
    """Fractal value noise in about ``[-1, 1]``: Gaussian grids of spacing ``scale``, ``scale/2``...
    bilinearly upsampled and summed with halving amplitude. ``float32 [H, W]``."""
    h, w = shape
    out = np.zeros((h, w), np.float32)
    amplitude, total = 1.0, 0.0
    for _ in range(octaves):
        gh, gw = max(2, int(np.ceil(h / scale)) + 1), max(2, int(np.ceil(w / scale)) + 1)
        grid = rng.standard_normal((gh, gw)).astype(np.float32)
        out += amplitude * np.asarray(Image.fromarray(grid).resize((w, h), Image.BILINEAR))
        total += amplitude
        amplitude *= 0.5
        scale = max(2.0, scale / 2)
    return out / total


def to_uint8(image: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def log_uniform(rng: np.random.Generator, low: float, high: float, size=None):
    return np.exp(rng.uniform(np.log(low), np.log(high), size))


def split_ids(num_images: int, val_fraction: float = 0.2, num_val: int | None = None) -> tuple[list[int], list[int]]:
    """Train / val indices: the last ``num_val`` images are validation, by default ``max(1, round(val_fraction *
    n))``. Image ``i`` is the same whatever the split, so a larger ``num_val`` with as many more images keeps the
    training images and adds validation ones."""
    if num_val is None:
        num_val = max(1, int(round(val_fraction * num_images))) if num_images > 1 else 0
    elif not 0 <= num_val <= num_images:
        raise ValueError(f"split_ids: num_val={num_val} of {num_images} images; give 0 to {num_images}.")
    return list(range(num_images - num_val)), list(range(num_images - num_val, num_images))


def coco_json(images: list[dict], annotations: list[dict], categories: list[dict], description: str) -> dict:
    """A COCO-format dict (annotation ids renumbered 1..N in order)."""
    annotations = [dict(a, id=i + 1) for i, a in enumerate(annotations)]
    return {
        "info": {"description": description, "version": str(GENERATOR_VERSION)},
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": categories,
    }


def marker_params(name: str, seed: int, profile_name: str, num_images: int, image_size,
                  num_val_images: int | None = None) -> dict:
    params = {
        "dataset": name,
        "seed": int(seed),
        "profile": profile_name,
        "num_images": int(num_images),
        "image_size": list(image_size) if isinstance(image_size, (tuple, list)) else [int(image_size)] * 2,
        "generator_version": GENERATOR_VERSION,
    }
    if num_val_images is not None:  # the detection sets: the last num_val_images are the validation split
        params["num_val_images"] = int(num_val_images)
    return params


def read_marker(path: Path) -> dict | None:
    """The parameters ``path/DONE.json`` records; None when it is missing or unreadable."""
    try:
        return json.loads((Path(path) / MARKER).read_text())
    except (OSError, ValueError):
        return None


def marker_differences(recorded: dict, params: dict) -> dict:
    """``{key: (recorded, wanted)}`` for every parameter of ``params`` that ``recorded`` does not hold."""
    return {key: (recorded.get(key), value) for key, value in params.items() if recorded.get(key) != value}


def is_complete(path: Path, params: dict) -> bool:
    """True when ``path/DONE.json`` exists and records the same parameters."""
    recorded = read_marker(path)
    return recorded is not None and not marker_differences(recorded, params)
