"""Shared pieces of the synthetic datasets: random streams, noise textures, COCO JSON, atomic builds."""
from __future__ import annotations

import os
import shutil
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from ..image_io import write_json
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


def split_ids(num_images: int, val_fraction: float = 0.2) -> tuple[list[int], list[int]]:
    """Train / val indices: the last ``max(1, round(val_fraction * n))`` images are validation."""
    num_val = max(1, int(round(val_fraction * num_images))) if num_images > 1 else 0
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


def directory_size(path: Path) -> tuple[int, int]:
    """(number of files, total bytes) under ``path``."""
    files = [p for p in Path(path).rglob("*") if p.is_file()]
    return len(files), sum(p.stat().st_size for p in files)


def marker_params(name: str, seed: int, profile_name: str, num_images: int, image_size) -> dict:
    return {
        "dataset": name,
        "seed": int(seed),
        "profile": profile_name,
        "num_images": int(num_images),
        "image_size": list(image_size) if isinstance(image_size, (tuple, list)) else [int(image_size)] * 2,
        "generator_version": GENERATOR_VERSION,
    }


def is_complete(path: Path, params: dict) -> bool:
    """True when ``path/DONE.json`` exists and records the same parameters."""
    marker = Path(path) / MARKER
    if not marker.is_file():
        return False
    import json

    try:
        recorded = json.loads(marker.read_text())
    except (OSError, ValueError):
        return False
    return all(recorded.get(k) == v for k, v in params.items())


class AtomicDirectory:
    """Build a directory under a temporary name next to ``dest``; on success write ``DONE.json``
    last and move it into place (an older ``dest`` is replaced); on failure remove it.

    >>> with AtomicDirectory(dest, params) as tmp:
    ...     (tmp / "images").mkdir()   # write everything under tmp
    """

    def __init__(self, dest: Path, params: dict):
        self.dest = Path(dest)
        self.params = params
        self.tmp = self.dest.parent / f".{self.dest.name}.tmp-{os.getpid()}"

    def __enter__(self) -> Path:
        self.dest.parent.mkdir(parents=True, exist_ok=True)
        if self.tmp.exists():
            shutil.rmtree(self.tmp)
        self.tmp.mkdir()
        return self.tmp

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return False
        num_files, num_bytes = directory_size(self.tmp)
        write_json(self.tmp / MARKER, dict(self.params, files=num_files, bytes=num_bytes), indent=1)
        old = self.dest.parent / f".{self.dest.name}.old-{os.getpid()}"
        if self.dest.exists():
            os.replace(self.dest, old)
        os.replace(self.tmp, self.dest)
        shutil.rmtree(old, ignore_errors=True)
        return False
