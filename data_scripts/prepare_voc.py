#!/usr/bin/env python
"""Download PASCAL VOC 2012 and prepare it in the course's formats.

    python data_scripts/prepare_voc.py                   # asks before downloading 2 GB
    python data_scripts/prepare_voc.py --yes             # no question (scripts, CI)
    python data_scripts/prepare_voc.py --archive ~/Downloads/VOCtrainval_11-May-2012.tar

Writes, under ``--out`` (default ``data/real``):

* ``voc_seg/`` -- the segmentation layout of ``course_lib.data.SegmentationDataset``: the 2913
  images of ``ImageSets/Segmentation`` (train 1464, val 1449), ``masks/`` = ``SegmentationClass``
  unchanged (palette PNGs: 21 class ids, 255 on object borders and "void"), ``instances/`` from
  ``SegmentationObject`` (instance ids; its 255 borders become 0 = no instance), ``classes.json``
  with VOC's names and colour map.
* ``voc_det/`` -- COCO JSON for ``course_lib.data.CocoDetection``: ``annotations/instances_train.json``
  and ``instances_val.json`` from ``ImageSets/Main`` and the XML files. VOC's 1-based inclusive
  pixel boxes become COCO ``[xmin - 1, ymin - 1, xmax - xmin + 1, ymax - ymin + 1]``; "difficult"
  objects get ``iscrowd=1`` (COCOeval then ignores them, as VOC's protocol does) and keep a
  ``difficult`` flag.

Images are hard-linked from the extracted archive (copied where links are impossible), so the
extracted tree can be deleted afterwards (it is, unless ``--keep-extracted``, which keeps it as
``--out``/VOCdevkit). What an interrupted run left under ``--out`` is removed first.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

try:
    import course_lib  # noqa: F401
except ImportError:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from course_lib.data.atomic import TEMPORARY_PATTERNS, AtomicDirectory, remove_stale_temporaries
from course_lib.data.download import RemoteFile, fetch, safe_extract
from course_lib.data.image_io import read_label_png, write_json, write_png
from course_lib.data.paths import data_root

# ---------------------------------------------------------------------------------------------
# Where the data is. MD5: the sum torchvision's VOCSegmentation checks (torchvision/datasets/voc.py);
# no SHA-256 is published, so none is claimed. Sizes are approximate (for the plan shown first).
# The original host is http://host.robots.ox.ac.uk/pascal/VOC/voc2012/ (same file).
FILES = [
    RemoteFile(
        name="VOCtrainval_11-May-2012.tar",
        url="https://thor.robots.ox.ac.uk/pascal/VOC/voc2012/VOCtrainval_11-May-2012.tar",
        size=2_000_000_000,
        extracted_size=2_000_000_000,
        sha256=None,
        md5="6cd6e144f989b92b3379bac3b3de84fd",
    ),
]
# ---------------------------------------------------------------------------------------------

CLASSES = [
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
]
IGNORE_INDEX = 255


def voc_colormap(n: int = 256) -> np.ndarray:
    """VOC's colour map (devkit ``labelcolormap.m``): the bits of the id spread over R, G, B."""
    ids = np.arange(n)
    cmap = np.zeros((n, 3), np.uint8)
    c = ids.copy()
    for j in range(8):
        for channel in range(3):
            cmap[:, channel] |= (((c >> channel) & 1) << (7 - j)).astype(np.uint8)
        c >>= 3
    return cmap


def link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def read_split(path: Path) -> list[str]:
    if not path.is_file():
        raise FileNotFoundError(f"Split file not found: {path} (is this a complete VOC2012 devkit?)")
    return [line.split()[0] for line in path.read_text().splitlines() if line.strip()]


def voc_image_id(stem: str) -> int:
    """``2008_000123`` -> ``2008000123`` (unique, stable, an integer as COCO wants)."""
    if not re.fullmatch(r"\d{4}_\d{6}", stem):
        raise ValueError(f"Unexpected VOC image name {stem!r} (expected YYYY_NNNNNN)")
    return int(stem.replace("_", ""))


def prepare_segmentation(devkit: Path, out: Path) -> Path:
    """``VOCdevkit/VOC2012`` -> ``out/voc_seg`` (see the module docstring)."""
    splits = {s: read_split(devkit / "ImageSets" / "Segmentation" / f"{s}.txt") for s in ("train", "val")}
    colors = voc_colormap()
    with AtomicDirectory(out / "voc_seg", {"dataset": "voc_seg", "source": FILES[0].name,
                                           **{f"num_{s}": len(v) for s, v in splits.items()}}) as tmp:
        for sub in ("images", "masks", "instances", "splits"):
            (tmp / sub).mkdir()
        for split, stems in splits.items():
            (tmp / "splits" / f"{split}.txt").write_text("".join(f"{s}\n" for s in stems))
            for stem in stems:
                mask_path = devkit / "SegmentationClass" / f"{stem}.png"
                mask = read_label_png(mask_path)
                bad = (mask >= len(CLASSES)) & (mask != IGNORE_INDEX)
                if bad.any():
                    raise ValueError(f"{mask_path}: values {np.unique(mask[bad]).tolist()} are not VOC class ids")
                link_or_copy(devkit / "JPEGImages" / f"{stem}.jpg", tmp / "images" / f"{stem}.jpg")
                link_or_copy(mask_path, tmp / "masks" / f"{stem}.png")
                instances = read_label_png(devkit / "SegmentationObject" / f"{stem}.png")
                instances[instances == IGNORE_INDEX] = 0
                write_png(tmp / "instances" / f"{stem}.png", instances.astype(np.uint8))
        write_json(tmp / "classes.json", {
            "classes": [{"id": i, "name": n, "color": colors[i].tolist()} for i, n in enumerate(CLASSES)],
            "ignore_index": IGNORE_INDEX,
            "ignore_color": colors[IGNORE_INDEX].tolist(),
            "description": "PASCAL VOC 2012 segmentation (data_scripts/prepare_voc.py)",
        }, indent=1)
    return out / "voc_seg"


def parse_voc_xml(path: Path, cat_ids: dict[str, int]) -> tuple[dict, list[dict]]:
    """One VOC annotation file -> (COCO image entry, COCO annotations without ids)."""
    try:
        root = ET.parse(path).getroot()
        stem = Path(root.findtext("filename")).stem
        width, height = int(root.findtext("size/width")), int(root.findtext("size/height"))
    except (ET.ParseError, TypeError, ValueError) as exc:
        raise ValueError(f"{path}: not a valid VOC annotation ({exc})") from exc
    image_id = voc_image_id(stem)
    annotations = []
    for obj in root.iter("object"):
        name = (obj.findtext("name") or "").strip()
        if name not in cat_ids:
            raise ValueError(f"{path}: unknown VOC class {name!r}")
        try:
            xmin, ymin, xmax, ymax = (float(obj.findtext(f"bndbox/{k}")) for k in ("xmin", "ymin", "xmax", "ymax"))
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{path}: object {name!r} has no valid bndbox") from exc
        difficult = int(obj.findtext("difficult") or 0)
        x, y, w, h = xmin - 1, ymin - 1, xmax - xmin + 1, ymax - ymin + 1  # 1-based inclusive -> continuous
        annotations.append({
            "image_id": image_id, "category_id": cat_ids[name], "bbox": [x, y, w, h], "area": w * h,
            "iscrowd": difficult, "difficult": difficult, "truncated": int(obj.findtext("truncated") or 0),
        })
    return {"id": image_id, "file_name": f"{stem}.jpg", "width": width, "height": height}, annotations


def prepare_detection(devkit: Path, out: Path) -> Path:
    """``VOCdevkit/VOC2012`` -> ``out/voc_det`` in COCO format (see the module docstring)."""
    cat_ids = {name: i for i, name in enumerate(CLASSES) if i > 0}
    categories = [{"id": i, "name": name, "supercategory": "voc"} for name, i in cat_ids.items()]
    splits = {s: read_split(devkit / "ImageSets" / "Main" / f"{s}.txt") for s in ("train", "val")}
    with AtomicDirectory(out / "voc_det", {"dataset": "voc_det", "source": FILES[0].name,
                                           **{f"num_{s}": len(v) for s, v in splits.items()}}) as tmp:
        (tmp / "images").mkdir()
        (tmp / "annotations").mkdir()
        for split, stems in splits.items():
            images, annotations = [], []
            for stem in stems:
                image, anns = parse_voc_xml(devkit / "Annotations" / f"{stem}.xml", cat_ids)
                images.append(image)
                annotations.extend(anns)
                link_or_copy(devkit / "JPEGImages" / f"{stem}.jpg", tmp / "images" / f"{stem}.jpg")
            annotations = [dict(a, id=i + 1) for i, a in enumerate(annotations)]
            write_json(tmp / "annotations" / f"instances_{split}.json", {
                "info": {"description": f"PASCAL VOC 2012 detection, {split} (data_scripts/prepare_voc.py)"},
                "licenses": [], "images": images, "annotations": annotations, "categories": categories,
            })
    return out / "voc_det"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=None, help="output root (default: data/real)")
    parser.add_argument("--download-dir", type=Path, default=None, help="where archives go (default: data/downloads)")
    parser.add_argument("--archive", action="append", default=[], help="use this already downloaded archive")
    parser.add_argument("--yes", action="store_true", help="download without asking")
    parser.add_argument("--skip-checksum", action="store_true", help="do not verify the archive's checksum")
    parser.add_argument("--keep-extracted", action="store_true", help="keep the extracted tree as OUT/VOCdevkit")
    parser.add_argument("--only", choices=("seg", "det"), default=None, help="prepare only one of the two")
    args = parser.parse_args(argv)
    out = args.out or data_root() / "real"
    download_dir = args.download_dir or data_root() / "downloads"

    remove_stale_temporaries(out, (*TEMPORARY_PATTERNS, r"\.extracted-voc"))  # the latter: older versions' name
    archives = fetch(FILES, download_dir, local=args.archive, assume_yes=args.yes, verify=not args.skip_checksum)
    work = out / f".extracted-voc.tmp-{os.getpid()}"
    try:
        safe_extract(archives[FILES[0].name], work)
        devkit = work / "VOCdevkit" / "VOC2012"
        if not devkit.is_dir():
            raise FileNotFoundError(f"{archives[FILES[0].name]} has no VOCdevkit/VOC2012 directory")
        if args.only in (None, "seg"):
            print(f"Prepared {prepare_segmentation(devkit, out)}")
        if args.only in (None, "det"):
            print(f"Prepared {prepare_detection(devkit, out)}")
        if args.keep_extracted:
            shutil.rmtree(out / "VOCdevkit", ignore_errors=True)
            os.replace(work / "VOCdevkit", out / "VOCdevkit")
            print(f"Kept the extracted archive in {out / 'VOCdevkit'}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
