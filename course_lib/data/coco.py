"""Detection datasets in COCO format (``images/`` + ``annotations/instances_<split>.json``).

The synthetic ``small_objects`` and ``multiscale`` sets, and the prepared VOC-detection, COCO 2017
and Tsinghua-Tencent 100K sets all use this one format, so one class reads them all.

A sample is ``(image, target)`` in the form torchvision's detection models take:
``image`` a ``tv_tensors.Image`` (``uint8 [3, H, W]``) and ``target`` a dict with
``boxes`` (``tv_tensors.BoundingBoxes``, XYXY, float32), ``labels`` (int64), ``image_id``,
``area`` and ``iscrowd``. Because boxes are a ``tv_tensors`` type, ``torchvision.transforms.v2``
transforms (flip, resize, crop...) move the image and its boxes together.
"""
from __future__ import annotations

import contextlib
import io
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from torchvision import tv_tensors

from .image_io import read_json, read_rgb

__all__ = ["CocoDetection", "detection_collate", "load_coco"]


def load_coco(ann_file: str | os.PathLike):
    """A ``pycocotools.coco.COCO`` object for ``ann_file``, with clear errors.

    A missing file, invalid JSON or a file without ``images`` / ``annotations`` / ``categories``
    is an error that names the file (pycocotools itself would fail with a bare ``KeyError``). So is
    an image, annotation or category id (or an annotation's ``image_id`` / ``category_id``) that is missing, not an
    integer (``"12"``) or used twice: pycocotools would silently keep only the last entry of an id.
    """
    from pycocotools.coco import COCO

    ann_file = Path(ann_file)
    data = read_json(ann_file, what="COCO annotation file")
    if not isinstance(data, dict):
        raise ValueError(f"COCO annotation file {ann_file}: expected a JSON object, got {type(data).__name__}")
    missing = [k for k in ("images", "annotations", "categories") if not isinstance(data.get(k), list)]
    if missing:
        raise ValueError(f"COCO annotation file {ann_file} has no {', '.join(repr(k) for k in missing)} list")
    for key, what in (("images", "image"), ("annotations", "annotation"), ("categories", "category")):
        ids = _integer_ids(ann_file, data[key], "id", what)
        values, counts = np.unique(ids, return_counts=True)
        if (counts > 1).any():
            repeated = values[counts > 1]
            raise ValueError(
                f"{ann_file}: {what} id(s) {repeated[:10].tolist()}{' ...' if len(repeated) > 10 else ''} appear more "
                f"than once in {key!r}; {_REPEATED_ID[key]}. Give every {what} its own id (fix the file, or rebuild "
                "it with the script that made it)"
            )
    for key in ("image_id", "category_id"):  # pycocotools' lookups would miss a "12" without a word
        _integer_ids(ann_file, data["annotations"], key, "annotation")
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints "creating index..."
        coco.createIndex()
    return coco


# what a repeated id would silently do (pycocotools indexes each list by id: the last entry wins)
_REPEATED_ID = {
    "images": "the boxes of one image would become the targets of another file",
    "annotations": "evaluation would count one of those boxes twice and lose the other",
    "categories": "one category's name would replace another's",
}


def _integer_ids(ann_file: Path, entries: list, key: str, what: str) -> np.ndarray:
    """``entry[key]`` of every entry as an int64 array, in one pass; an entry without it, or with
    a value that is not a JSON integer (``"12"``, ``12.0``, ``null``), is an error naming the entry."""
    values = [e.get(key) if isinstance(e, dict) else None for e in entries]
    ids = np.array(values)
    if (ids.dtype.kind in "iu" and ids.ndim == 1) or not values:
        return ids.astype(np.int64)
    i = next((i for i, v in enumerate(values) if type(v) is not int), 0)
    entry = entries[i] if isinstance(entries[i], dict) else {}
    name = f"{what} #{i + 1}" + "".join(f" ({k} {entry[k]!r})" for k in ("id", "file_name") if k in entry and k != key)
    value = f"{key} {values[i]!r} (a {type(values[i]).__name__})" if key in entry else f"no {key!r}"
    raise ValueError(
        f"{ann_file}: {name} has {value}; every {what} needs an integer {key!r}, written without quotes "
        '(12, not "12"). Fix the file, or rebuild it with the script that made it'
    )


class CocoDetection(torch.utils.data.Dataset):
    """Images and boxes from a COCO-format annotation file.

    Args:
        images_dir: directory that the ``file_name`` of each image is relative to.
        ann_file: the COCO JSON (``instances_<split>.json``).
        transforms: optional callable ``(image, target) -> (image, target)``, e.g. a
            ``torchvision.transforms.v2.Compose``.
        category_ids: which COCO category ids to use, in label order; ``None`` = all, sorted by
            id. Annotations of other categories are left out of the targets.
        skip_crowd: leave ``iscrowd=1`` annotations out of the targets (as torchvision's detection
            references do for training; evaluation reads them from :attr:`coco`). VOC's
            "difficult" objects are stored as crowd by ``data_scripts/prepare_voc.py``.

    Labels are contiguous: ``1..K`` for the ``K`` categories and ``0`` for background, as
    torchvision's detectors expect; ``num_classes = K + 1``. :attr:`cat_id_to_label`,
    :attr:`label_to_cat_id` and :attr:`class_names` (``class_names[0] == "background"``) map
    between them.

    Images that are not 8-bit RGB (grey, RGBA, palette, 16-bit...) are converted as
    :func:`course_lib.data.image_io.read_rgb` documents; an image whose size differs from its
    ``images`` entry is an error naming the file.

    Annotation checks (at construction, for all annotations at once):

    * a ``category_id`` that is not among ``categories`` -> ``ValueError`` naming the annotation id
      and the value;
    * a ``bbox`` value that is NaN or infinite (JSON's ``NaN`` / ``Infinity``) -> ``ValueError`` naming
      the file, the annotation id and the box;
    * a box reaching outside its image -> **clipped** to ``[0, W] x [0, H]`` (COCO boxes often
      overshoot by a fraction of a pixel);
    * a box with zero (or negative) width or height, before or after clipping -> **dropped with a
      warning** naming the file and the annotation ids (a zero-area box has no IoU with anything
      and would break the box encoding of every detector).

    ``area`` and ``iscrowd`` are the file's values (COCO's evaluation buckets sizes by ``area``);
    :attr:`coco` keeps the file's annotations unchanged, for evaluation.
    """

    def __init__(
        self,
        images_dir: str | os.PathLike,
        ann_file: str | os.PathLike,
        transforms=None,
        category_ids=None,
        skip_crowd: bool = True,
    ):
        self.images_dir = Path(images_dir)
        self.ann_file = Path(ann_file)
        if not self.images_dir.is_dir():
            raise FileNotFoundError(f"Image directory not found: {self.images_dir} (annotations: {self.ann_file})")
        self.transforms = transforms
        self.coco = load_coco(self.ann_file)
        data = self.coco.dataset

        # --- categories -> contiguous labels 1..K ---
        all_cat_ids = sorted(int(c["id"]) for c in data["categories"])
        if category_ids is None:
            category_ids = all_cat_ids
        else:
            category_ids = [int(c) for c in category_ids]
            unknown = sorted(set(category_ids) - set(all_cat_ids))
            if unknown:
                raise ValueError(
                    f"category_ids {unknown} are not categories of {self.ann_file} (it has {all_cat_ids})"
                )
        self.cat_ids = category_ids
        self.cat_id_to_label = {cat_id: i + 1 for i, cat_id in enumerate(category_ids)}
        self.label_to_cat_id = {label: cat_id for cat_id, label in self.cat_id_to_label.items()}
        names = {int(c["id"]): c["name"] for c in data["categories"]}
        self.class_names = ["background"] + [names[c] for c in category_ids]
        self.num_classes = len(self.class_names)

        # --- images: sorted ids ---
        incomplete = [img for img in data["images"] if not {"id", "file_name", "height", "width"} <= img.keys()]
        if incomplete:
            raise ValueError(
                f"{self.ann_file}: every image needs 'id', 'file_name', 'height' and 'width'; "
                f"this one does not: {incomplete[0]}"
            )
        self.ids = sorted(int(i) for i in self.coco.imgs)
        self._targets = self._index_annotations(data["annotations"], set(all_cat_ids), skip_crowd)

    # ------------------------------------------------------------------ annotations
    def _index_annotations(self, anns, known_cat_ids, skip_crowd):
        """Validate all annotations at once and group them per image as arrays."""
        n = len(anns)
        empty = (np.zeros((0, 4), np.float32), np.zeros(0, np.int64), np.zeros(0, np.float32), np.zeros(0, np.int64))
        if n == 0:
            return {image_id: empty for image_id in self.ids}
        try:
            ann_ids = np.array([a["id"] for a in anns], dtype=np.int64)
            image_ids = np.array([a["image_id"] for a in anns], dtype=np.int64)
            cat_ids = np.array([a["category_id"] for a in anns], dtype=np.int64)
            xywh = np.array([a["bbox"] for a in anns], dtype=np.float64).reshape(n, 4)
        except (KeyError, ValueError, TypeError) as exc:
            raise ValueError(
                f"{self.ann_file}: every annotation needs 'id', 'image_id', 'category_id' and a 4-number "
                f"'bbox' [x, y, w, h] ({exc!r})"
            ) from exc
        not_finite = ~np.isfinite(xywh).all(axis=1)
        if not_finite.any():  # JSON allows NaN / Infinity; they would surface much later as NaN losses
            i = int(np.flatnonzero(not_finite)[0])
            raise ValueError(
                f"{self.ann_file}: annotation id {ann_ids[i]} has bbox {anns[i]['bbox']!r} with a value that is not "
                f"a finite number ({int(not_finite.sum())} such annotations); fix or remove them in the file"
            )
        iscrowd = np.array([a.get("iscrowd", 0) for a in anns], dtype=np.int64)
        area = np.array([a.get("area", 0.0) for a in anns], dtype=np.float64)

        unknown = ~np.isin(cat_ids, np.array(sorted(known_cat_ids), dtype=np.int64))
        if unknown.any():
            i = int(np.flatnonzero(unknown)[0])
            raise ValueError(
                f"{self.ann_file}: annotation id {ann_ids[i]} has category_id {cat_ids[i]}, which is not one "
                f"of the file's categories {sorted(known_cat_ids)} ({int(unknown.sum())} such annotations)"
            )
        orphan = ~np.isin(image_ids, np.array(self.ids, dtype=np.int64))
        if orphan.any():
            i = int(np.flatnonzero(orphan)[0])
            raise ValueError(
                f"{self.ann_file}: annotation id {ann_ids[i]} refers to image_id {image_ids[i]}, "
                "which is not in 'images'"
            )

        # xywh -> xyxy, clipped to the image (sizes from the 'images' list)
        sizes = {int(i): (img["height"], img["width"]) for i, img in self.coco.imgs.items()}
        hw = np.array([sizes[int(i)] for i in image_ids], dtype=np.float64)
        boxes = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)
        boxes[:, 0::2] = boxes[:, 0::2].clip(0, hw[:, 1:2])
        boxes[:, 1::2] = boxes[:, 1::2].clip(0, hw[:, 0:1])

        degenerate = (boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1])
        if degenerate.any():
            bad = ann_ids[degenerate]
            warnings.warn(
                f"{self.ann_file}: dropped {len(bad)} annotation(s) whose box has zero area inside its image "
                f"(annotation ids {bad[:10].tolist()}{' ...' if len(bad) > 10 else ''})",
                stacklevel=3,
            )
        keep = ~degenerate & np.isin(cat_ids, np.array(self.cat_ids, dtype=np.int64))
        if skip_crowd:
            keep &= iscrowd == 0
        lut = np.zeros(max([0, *self.cat_ids, int(cat_ids.max())]) + 1, dtype=np.int64)
        lut[self.cat_ids] = np.arange(1, len(self.cat_ids) + 1)

        targets = {image_id: empty for image_id in self.ids}
        idx = np.flatnonzero(keep)
        idx = idx[np.argsort(image_ids[idx], kind="stable")]  # group per image, keep file order within
        groups = np.split(idx, np.flatnonzero(np.diff(image_ids[idx])) + 1) if len(idx) else []
        for g in groups:
            targets[int(image_ids[g[0]])] = (
                boxes[g].astype(np.float32),
                lut[cat_ids[g]],
                area[g].astype(np.float32),
                iscrowd[g],
            )
        return targets

    # ------------------------------------------------------------------ dataset protocol
    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int):
        image_id = self.ids[index]
        info = self.coco.imgs[image_id]
        path = self.images_dir / info["file_name"]
        array = read_rgb(path)
        h, w = array.shape[:2]
        if (h, w) != (info["height"], info["width"]):
            raise ValueError(
                f"{path} is {w}x{h} pixels but {self.ann_file} says {info['width']}x{info['height']} "
                f"(image id {image_id}); the annotations belong to another version of the image"
            )
        image = tv_tensors.Image(torch.from_numpy(array).permute(2, 0, 1))
        boxes, labels, area, iscrowd = self._targets[image_id]
        target = {
            # copies: a transform that edits the target in place must not edit the dataset
            "boxes": tv_tensors.BoundingBoxes(torch.tensor(boxes), format="XYXY", canvas_size=(h, w)),
            "labels": torch.tensor(labels),
            "image_id": image_id,
            "area": torch.tensor(area),
            "iscrowd": torch.tensor(iscrowd),
        }
        if self.transforms is not None:
            image, target = self.transforms(image, target)
        return image, target

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({len(self)} images, {self.num_classes - 1} classes, "
            f"images_dir={str(self.images_dir)!r}, ann_file={str(self.ann_file)!r})"
        )


def detection_collate(batch):
    """``[(image, target), ...] -> (list of images, list of targets)``.

    Detection images differ in size and number of boxes, so they are not stacked: the model's
    transform batches them (``ImageList``).
    """
    images, targets = zip(*batch) if batch else ((), ())
    return list(images), list(targets)
