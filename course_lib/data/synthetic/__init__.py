"""The course's offline default datasets, generated locally and deterministically.

* ``segmentation``  -- scenes for FCN and U-Net (:mod:`.segmentation_scenes`);
* ``small_objects`` -- traffic signs modelled on Tsinghua-Tencent 100K, for EFPN (:mod:`.traffic_signs`);
* ``multiscale``    -- shapes from 16 to 400 px for the R-CNN family and FPN (:mod:`.multiscale`).

Image ``i`` of a dataset depends only on ``(seed, dataset, i)`` (its own ``numpy`` random
stream), so the same seed gives byte-identical files whatever the order or number of workers.
Each dataset is built in a temporary directory and moved into place with ``DONE.json`` (its
parameters) written last: a directory without the marker is incomplete.

Command line: ``python -m course_lib.data.make_synthetic --help``.
"""
from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from ..atomic import AtomicDirectory, remove_stale_temporaries
from ..image_io import write_jpeg, write_json, write_png
from ..paths import SYNTHETIC_DATASETS
from . import multiscale, segmentation_scenes, traffic_signs
from .common import coco_json, is_complete, marker_params, split_ids

__all__ = ["SYNTHETIC_DATASETS", "build_dataset", "dataset_params"]


def dataset_params(name: str, profile, seed: int = 0) -> dict:
    """The parameters recorded in ``DONE.json`` for dataset ``name`` of ``profile``."""
    data = profile.data
    if name == "segmentation":  # its validation split: the last 20 % (split_ids)
        return marker_params(name, seed, profile.name, data.segmentation_images,
                             (data.segmentation_side, data.segmentation_side))
    if name == "small_objects":
        count, val, size = data.small_objects_images, data.small_objects_val_images, data.small_objects_size
    elif name == "multiscale":
        count, val, size = data.multiscale_images, data.multiscale_val_images, data.multiscale_size
    else:
        raise ValueError(f"Unknown synthetic dataset {name!r}; choose from {', '.join(SYNTHETIC_DATASETS)}")
    if not 1 <= val < count:
        raise ValueError(f"profile {profile.name!r}: {name} has {count} images, {val} of them for validation; give it "
                         f"at least one validation and one training image (data.{name}_val_images from 1 to "
                         f"{count - 1}).")
    return marker_params(name, seed, profile.name, count, size, num_val_images=val)


# ------------------------------------------------------------------ one image (run in workers)
def _segmentation_item(args) -> None:
    root, seed, index, size = args
    image, mask, instances = segmentation_scenes.generate_scene(seed, index, size)
    stem = f"{index:06d}"
    write_png(root / "images" / f"{stem}.png", image)
    write_png(root / "masks" / f"{stem}.png", mask, palette=segmentation_scenes.palette())
    write_png(root / "instances" / f"{stem}.png", instances)


def _detection_item(args) -> list[dict]:
    name, root, seed, index, (height, width) = args
    module = traffic_signs if name == "small_objects" else multiscale
    image, annotations = module.generate_image(seed, index, height, width)
    write_jpeg(root / "images" / f"{index:06d}.jpg", image)
    return [dict(a, image_id=index + 1) for a in annotations]


def _map(fn, items, workers: int, progress: bool, desc: str) -> list:
    from tqdm.auto import tqdm

    bar = tqdm(total=len(items), desc=desc, unit="img", disable=not progress)
    results = []
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            for r in pool.map(fn, items, chunksize=max(1, len(items) // (8 * workers))):
                results.append(r)
                bar.update()
    else:
        for item in items:
            results.append(fn(item))
            bar.update()
    bar.close()
    return results


# ------------------------------------------------------------------ datasets
def _build_segmentation(root: Path, params: dict, workers: int, progress: bool) -> None:
    for sub in ("images", "masks", "instances", "splits"):
        (root / sub).mkdir()
    seed, count, size = params["seed"], params["num_images"], params["image_size"][0]
    _map(_segmentation_item, [(root, seed, i, size) for i in range(count)], workers, progress, "segmentation")
    train, val = split_ids(count)
    for split, ids in (("train", train), ("val", val)):
        (root / "splits" / f"{split}.txt").write_text("".join(f"{i:06d}\n" for i in ids))
    write_json(root / "classes.json", segmentation_scenes.classes_json(), indent=1)


def _build_detection(root: Path, params: dict, workers: int, progress: bool) -> None:
    name = params["dataset"]
    (root / "images").mkdir()
    (root / "annotations").mkdir()
    seed, count, (height, width) = params["seed"], params["num_images"], params["image_size"]
    items = [(name, root, seed, i, (height, width)) for i in range(count)]
    per_image = _map(_detection_item, items, workers, progress, name)
    module = traffic_signs if name == "small_objects" else multiscale
    description = {
        "small_objects": "Synthetic traffic signs modelled on Tsinghua-Tencent 100K (course_lib.data.synthetic)",
        "multiscale": "Synthetic multi-scale shapes for the R-CNN family and FPN (course_lib.data.synthetic)",
    }[name]
    for split, ids in zip(("train", "val"), split_ids(count, num_val=params["num_val_images"])):
        images = [{"id": i + 1, "file_name": f"{i:06d}.jpg", "height": height, "width": width} for i in ids]
        annotations = [a for i in ids for a in per_image[i]]
        write_json(root / "annotations" / f"instances_{split}.json",
                   coco_json(images, annotations, module.categories(), description))


def build_dataset(
    name: str,
    out_root: str | os.PathLike,
    profile,
    seed: int = 0,
    skip_existing: bool = False,
    workers: int = 1,
    progress: bool = True,
) -> tuple[Path, bool]:
    """Build dataset ``name`` for ``profile`` into ``out_root/name``.

    Returns ``(path, built)``; with ``skip_existing`` a complete directory with the same
    parameters is kept (``built=False``).
    """
    params = dataset_params(name, profile, seed)
    dest = Path(out_root) / name
    remove_stale_temporaries(dest.parent)  # also when the complete dataset is kept below
    if skip_existing and is_complete(dest, params):
        return dest, False
    build = _build_segmentation if name == "segmentation" else _build_detection
    with AtomicDirectory(dest, params) as tmp:
        build(tmp, params, workers, progress)
    return dest, True
