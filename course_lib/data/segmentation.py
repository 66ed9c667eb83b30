"""Semantic segmentation datasets in the course's layout (that of PASCAL VOC's ``SegmentationClass``)::

    root/
      images/<id>.png|.jpg      RGB image
      masks/<id>.png            class id per pixel (uint8, mode L or P); 255 = ignore (object borders)
      instances/<id>.png        optional: instance id per pixel (0 = no instance)
      splits/train.txt, val.txt one <id> per line
      classes.json              {"classes": [{"id", "name", "color"}, ...], "ignore_index": 255}

The synthetic ``segmentation`` set and the prepared PASCAL VOC 2012 (``voc_seg``) share it.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torchvision import tv_tensors

from .image_io import read_json, read_label_png, read_rgb

__all__ = ["SegmentationDataset", "segmentation_collate", "read_classes"]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")


def read_classes(root: str | os.PathLike) -> dict:
    """Parse ``root/classes.json``: ``{"names": [...], "colors": uint8 [K, 3], "ignore_index": int}``."""
    path = Path(root) / "classes.json"
    meta = read_json(path, what="Class list")
    try:
        classes = sorted(meta["classes"], key=lambda c: int(c["id"]))
        ids = [int(c["id"]) for c in classes]
        names = [str(c["name"]) for c in classes]
        colors = np.array([c["color"] for c in classes], dtype=np.uint8).reshape(-1, 3)
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{path}: expected {{'classes': [{{'id', 'name', 'color'}}, ...]}} ({exc!r})") from exc
    if ids != list(range(len(ids))):
        raise ValueError(f"{path}: class ids must be 0..K-1 without gaps, got {ids}")
    return {"names": names, "colors": colors, "ignore_index": int(meta.get("ignore_index", 255))}


class SegmentationDataset(torch.utils.data.Dataset):
    """Images with a class id per pixel.

    Returns ``(image, mask)`` -- ``tv_tensors.Image`` (``uint8 [3, H, W]``) and ``tv_tensors.Mask``
    (``int64 [H, W]``, values in ``0..num_classes-1`` or :attr:`ignore_index` = 255) -- or, with
    ``with_instances=True``, ``(image, mask, instances)`` where ``instances`` is a
    ``tv_tensors.Mask`` (``int64 [H, W]``) of instance ids, 0 where there is no instance (what
    U-Net's weight map needs). ``transforms`` is called as ``transforms(image, mask)`` (or with the
    three), so ``torchvision.transforms.v2`` crops and flips move them together.

    Images that are not 8-bit RGB are converted as :func:`course_lib.data.image_io.read_rgb`
    documents. A mask value that is neither a class id nor 255, or a mask whose size differs from
    its image, is an error naming the file.
    """

    def __init__(self, root: str | os.PathLike, split: str = "train", transforms=None, with_instances: bool = False):
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(
                f"Segmentation dataset not found: {self.root}. For the synthetic set run "
                "`python -m course_lib.data.make_synthetic --only segmentation` (see course_lib.data.dataset_dir)."
            )
        split_file = self.root / "splits" / f"{split}.txt"
        if not split_file.is_file():
            available = sorted(p.stem for p in (self.root / "splits").glob("*.txt"))
            raise FileNotFoundError(f"Split file not found: {split_file} (available splits: {available or 'none'})")
        self.ids = [line.strip() for line in split_file.read_text().splitlines() if line.strip()]
        meta = read_classes(self.root)
        self.class_names: list[str] = meta["names"]
        self.colors: np.ndarray = meta["colors"]
        self.ignore_index: int = meta["ignore_index"]
        self.num_classes = len(self.class_names)
        self.split = split
        self.transforms = transforms
        self.with_instances = with_instances
        if with_instances and not (self.root / "instances").is_dir():
            raise FileNotFoundError(f"with_instances=True but {self.root / 'instances'} does not exist")

    def __len__(self) -> int:
        return len(self.ids)

    def image_path(self, index: int) -> Path:
        stem = self.ids[index]
        for ext in IMAGE_EXTENSIONS:
            path = self.root / "images" / f"{stem}{ext}"
            if path.is_file():
                return path
        raise FileNotFoundError(
            f"No image for id {stem!r} (listed in splits/{self.split}.txt): looked for "
            f"{self.root / 'images' / stem}{{{','.join(IMAGE_EXTENSIONS)}}}"
        )

    def _read_mask(self, path: Path, shape) -> np.ndarray:
        mask = read_label_png(path)
        if mask.shape != shape:
            raise ValueError(f"{path} is {mask.shape[1]}x{mask.shape[0]} but its image is {shape[1]}x{shape[0]}")
        return mask

    def __getitem__(self, index: int):
        stem = self.ids[index]
        array = read_rgb(self.image_path(index))
        shape = array.shape[:2]
        mask_path = self.root / "masks" / f"{stem}.png"
        mask = self._read_mask(mask_path, shape)
        bad = (mask >= self.num_classes) & (mask != self.ignore_index) | (mask < 0)
        if bad.any():
            values = np.unique(mask[bad]).tolist()
            raise ValueError(
                f"{mask_path}: values {values[:10]} are neither class ids 0..{self.num_classes - 1} "
                f"nor the ignore index {self.ignore_index}"
            )
        image = tv_tensors.Image(torch.from_numpy(array).permute(2, 0, 1))
        sample = [image, tv_tensors.Mask(torch.from_numpy(mask))]
        if self.with_instances:
            instances = self._read_mask(self.root / "instances" / f"{stem}.png", shape)
            sample.append(tv_tensors.Mask(torch.from_numpy(instances)))
        if self.transforms is not None:
            sample = self.transforms(*sample)
        return tuple(sample)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({len(self)} images, split={self.split!r}, classes={self.class_names})"


def segmentation_collate(batch):
    """Stack ``[(image, mask[, instances]), ...]`` into batch tensors ``[B, 3, H, W]``, ``[B, H, W]``...

    All samples must have the same size: add a crop or resize transform otherwise.
    """
    columns = list(zip(*batch))
    sizes = {tuple(t.shape[-2:]) for t in columns[0]}
    if len(sizes) > 1:
        raise ValueError(
            f"segmentation_collate: images of different sizes {sorted(sizes)} cannot be stacked; "
            "add e.g. torchvision.transforms.v2.RandomCrop / Resize to the dataset's transforms"
        )
    return tuple(torch.stack([torch.as_tensor(t) for t in col]) for col in columns)
