#!/usr/bin/env python
"""Download PASCAL VOC (2012, 2007) and prepare it in the course's formats.

    python data_scripts/prepare_voc.py                   # VOC 2012; asks before downloading 2 GB
    python data_scripts/prepare_voc.py --yes             # no question (scripts, CI)
    python data_scripts/prepare_voc.py --archive ~/Downloads/VOCtrainval_11-May-2012.tar
    python data_scripts/prepare_voc.py --release 2007 --release 07+12   # the detection papers' sets (2.9 GB)

Writes, under ``--out`` (default ``data/real``), for ``--release 2012`` (the default):

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

The sets Fast R-CNN, Faster R-CNN and R-FCN report on -- always evaluated on VOC 2007 test (4952 images),
trained on the "07" or "07+12" trainval set their tables name -- are the same COCO layout:

* ``--release 2007`` -> ``voc07_det/``: ``instances_trainval.json`` (VOC 2007 trainval, 5011 images) and
  ``instances_test.json`` (VOC 2007 test). Needs ``VOCtrainval_06-Nov-2007.tar`` and ``VOCtest_06-Nov-2007.tar``.
* ``--release 07+12`` -> ``voc0712_det/``: ``instances_trainval.json`` (VOC 2007 trainval + VOC 2012 trainval,
  5011 + 11540 images) and ``instances_test.json`` (VOC 2007 test). Needs the three archives.

In these two, an image's ``file_name`` is ``VOC2007/000001.jpg`` or ``VOC2012/2008_000002.jpg`` (2007 names
its images ``NNNNNN``, 2012 ``YYYY_NNNNNN``), its id ``1`` or ``2008000002``: the two releases' names and
ids never meet. ``instances_train.json`` / ``instances_val.json``
are the same files as trainval / test (hard links), the names the notebooks read.

Not built: FCN's "seg11valid" (Table 2, footnote 7: the 736 images of VOC 2011 segmentation val that are not
in SBD's training set); its image list is a file of FCN's own release, in no VOC archive.

Disk: the 2012 archive is 2 GB, the 2007 ones 0.46 + 0.45 GB; each is extracted (as much again) into a
temporary folder under ``--out``. Images are hard-linked from the extracted archive (copied where links are
impossible: then each set takes about its archives' size again), so the extracted tree can be deleted
afterwards (it is, unless ``--keep-extracted``, which keeps 2012's as ``--out``/VOCdevkit). What an
interrupted run left under ``--out`` is removed first. Every split list is read before anything is written.
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
# Where the data is. MD5: the sums torchvision's VOC datasets check (torchvision/datasets/voc.py,
# DATASET_YEAR_DICT "2012", "2007", "2007-test"); no SHA-256 is published, so none is claimed. Sizes are
# approximate (for the plan shown first). The original host is http://host.robots.ox.ac.uk/pascal/VOC/.
VOC2012 = RemoteFile(
    name="VOCtrainval_11-May-2012.tar",
    url="https://thor.robots.ox.ac.uk/pascal/VOC/voc2012/VOCtrainval_11-May-2012.tar",
    size=2_000_000_000, extracted_size=2_000_000_000, sha256=None, md5="6cd6e144f989b92b3379bac3b3de84fd",
)
VOC2007 = RemoteFile(
    name="VOCtrainval_06-Nov-2007.tar",
    url="https://thor.robots.ox.ac.uk/pascal/VOC/voc2007/VOCtrainval_06-Nov-2007.tar",
    size=460_000_000, extracted_size=460_000_000, sha256=None, md5="c52e279531787c972589f7e41ab4ae64",
)
VOC2007_TEST = RemoteFile(
    name="VOCtest_06-Nov-2007.tar",
    url="https://thor.robots.ox.ac.uk/pascal/VOC/voc2007/VOCtest_06-Nov-2007.tar",
    size=451_000_000, extracted_size=451_000_000, sha256=None, md5="b6e924de25625d8de591ea690078ad9f",
)
FILES = [VOC2012, VOC2007, VOC2007_TEST]
DEVKIT = {VOC2012.name: "VOC2012", VOC2007.name: "VOC2007", VOC2007_TEST.name: "VOC2007"}  # VOCdevkit/<this>
# ---------------------------------------------------------------------------------------------

# --release -> its detection set: directory, {split: [(archive, ImageSets/Main list), ...]}
DETECTION_SETS = {
    "2012": ("voc_det", {"train": [(VOC2012, "train")], "val": [(VOC2012, "val")]}),
    "2007": ("voc07_det", {"trainval": [(VOC2007, "trainval")], "test": [(VOC2007_TEST, "test")]}),
    "07+12": ("voc0712_det", {"trainval": [(VOC2007, "trainval"), (VOC2012, "trainval")],
                              "test": [(VOC2007_TEST, "test")]}),
}
NOTEBOOK_SPLITS = {"train": "trainval", "val": "test"}  # the names the notebooks read -> the papers' splits

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


def read_split(devkit: Path, relative: str, archive: str) -> list[str]:
    """The image names listed in ``devkit/relative`` (``ImageSets/Main/test.txt``), extracted from ``archive``."""
    path = devkit / relative
    if not path.is_file():
        raise FileNotFoundError(f"{archive} has no VOCdevkit/{devkit.name}/{relative}: it is not the complete "
                                f"official archive. Nothing was written; download it again (or pass the right --archive).")
    return [line.split()[0] for line in path.read_text().splitlines() if line.strip()]


def voc_image_id(stem: str) -> int:
    """``2008_000123`` -> ``2008000123``, VOC 2007's ``000123`` -> ``123`` (unique, stable, an integer as COCO wants)."""
    if not re.fullmatch(r"\d{4}_\d{6}|\d{6}", stem):
        raise ValueError(f"Unexpected VOC image name {stem!r} (expected YYYY_NNNNNN, or NNNNNN in VOC 2007)")
    return int(stem.replace("_", ""))


def prepare_segmentation(devkit: Path, splits: dict[str, list[str]], out: Path) -> Path:
    """``VOCdevkit/VOC2012`` and its ``ImageSets/Segmentation`` lists -> ``out/voc_seg`` (see the module docstring)."""
    colors = voc_colormap()
    with AtomicDirectory(out / "voc_seg", {"dataset": "voc_seg", "source": VOC2012.name,
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


def prepare_detection(name: str, splits: dict[str, list[tuple[Path, list[str]]]], out: Path) -> Path:
    """``out/name`` in COCO format from ``{split: [(VOCdevkit/VOC20xx, image names), ...]}`` (see the module
    docstring): ``voc_det`` keeps 2012's flat names, the papers' sets put each release's images in its folder."""
    cat_ids = {cls: i for i, cls in enumerate(CLASSES) if i > 0}
    categories = [{"id": i, "name": cls, "supercategory": "voc"} for cls, i in cat_ids.items()]
    nested = name != "voc_det"
    sources = sorted({devkit.parents[1].name for parts in splits.values() for devkit, _ in parts})  # <archive>/VOCdevkit/..
    with AtomicDirectory(out / name, {"dataset": name, "source": ", ".join(sources),
                                      **{f"num_{s}": sum(len(stems) for _, stems in v) for s, v in splits.items()}}) as tmp:
        (tmp / "annotations").mkdir()
        for split, parts in splits.items():
            images, annotations = [], []
            for devkit, stems in parts:
                folder = tmp / "images" / devkit.name if nested else tmp / "images"
                folder.mkdir(parents=True, exist_ok=True)
                for stem in stems:
                    image, anns = parse_voc_xml(devkit / "Annotations" / f"{stem}.xml", cat_ids)
                    images.append(dict(image, file_name=f"{devkit.name}/{stem}.jpg") if nested else image)
                    annotations.extend(anns)
                    link_or_copy(devkit / "JPEGImages" / f"{stem}.jpg", folder / f"{stem}.jpg")
            annotations = [dict(a, id=i + 1) for i, a in enumerate(annotations)]
            write_json(tmp / "annotations" / f"instances_{split}.json", {
                "info": {"description": f"PASCAL VOC detection ({name}), {split} (data_scripts/prepare_voc.py)"},
                "licenses": [], "images": images, "annotations": annotations, "categories": categories,
            })
        for alias, split in NOTEBOOK_SPLITS.items():
            if split in splits:
                link_or_copy(tmp / "annotations" / f"instances_{split}.json", tmp / "annotations" / f"instances_{alias}.json")
    return out / name


def detection_splits(release: str, devkits: dict[str, Path], archives: dict[str, Path]) -> dict:
    """``{split: [(VOCdevkit/VOC20xx, image names), ...]}`` of ``release``'s detection set, from the extracted archives."""
    return {split: [(devkits[a.name], read_split(devkits[a.name], f"ImageSets/Main/{names}.txt", archives[a.name]))
                    for a, names in parts] for split, parts in DETECTION_SETS[release][1].items()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=None, help="output root (default: data/real)")
    parser.add_argument("--download-dir", type=Path, default=None, help="where archives go (default: data/downloads)")
    parser.add_argument("--archive", action="append", default=[], help="use this already downloaded archive")
    parser.add_argument("--yes", action="store_true", help="download without asking")
    parser.add_argument("--skip-checksum", action="store_true", help="do not verify the archive's checksum")
    parser.add_argument("--keep-extracted", action="store_true", help="keep 2012's extracted tree as OUT/VOCdevkit")
    parser.add_argument("--only", choices=("seg", "det"), default=None, help="of release 2012, prepare only one of the two")
    parser.add_argument("--release", action="append", choices=tuple(DETECTION_SETS), default=None,
                        help="2012 (default): voc_seg + voc_det, 2 GB download; 2007: voc07_det (07 trainval, 07 test), "
                             "0.9 GB; 07+12: voc0712_det (07+12 trainval, 07 test), all 2.9 GB. Repeat to build several; "
                             "each archive is extracted once (as much disk again, temporarily)")
    args = parser.parse_args(argv)
    out = args.out or data_root() / "real"
    download_dir = args.download_dir or data_root() / "downloads"
    releases = list(dict.fromkeys(args.release or ["2012"]))
    segmentation = "2012" in releases and args.only != "det"
    detection = [r for r in releases if r != "2012" or args.only != "seg"]
    wanted = {archive for r in detection for parts in DETECTION_SETS[r][1].values() for archive, _ in parts}
    needed = [f for f in FILES if f in wanted or (segmentation and f is VOC2012)]

    remove_stale_temporaries(out, (*TEMPORARY_PATTERNS, r"\.extracted-voc"))  # the latter: older versions' name
    archives = fetch(needed, download_dir, local=args.archive, assume_yes=args.yes, verify=not args.skip_checksum)
    work = out / f".extracted-voc.tmp-{os.getpid()}"
    try:
        devkits = {}
        for f in needed:
            safe_extract(archives[f.name], work / f.name)
            devkits[f.name] = work / f.name / "VOCdevkit" / DEVKIT[f.name]
            if not devkits[f.name].is_dir():
                raise FileNotFoundError(f"{archives[f.name]} has no VOCdevkit/{DEVKIT[f.name]} directory")
        # every split list is read before anything is written: an incomplete archive changes nothing
        seg_splits = {s: read_split(devkits[VOC2012.name], f"ImageSets/Segmentation/{s}.txt", archives[VOC2012.name])
                      for s in ("train", "val")} if segmentation else None
        det_splits = {DETECTION_SETS[r][0]: detection_splits(r, devkits, archives) for r in detection}
        if segmentation:
            print(f"Prepared {prepare_segmentation(devkits[VOC2012.name], seg_splits, out)}")
        for name, splits in det_splits.items():
            print(f"Prepared {prepare_detection(name, splits, out)}")
        if args.keep_extracted and VOC2012 in needed:
            shutil.rmtree(out / "VOCdevkit", ignore_errors=True)
            os.replace(work / VOC2012.name / "VOCdevkit", out / "VOCdevkit")
            print(f"Kept the extracted archive in {out / 'VOCdevkit'}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
