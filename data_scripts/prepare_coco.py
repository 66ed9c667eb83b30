#!/usr/bin/env python
"""Download MS COCO 2017 (detection) and prepare it in the course's layout.

    python data_scripts/prepare_coco.py --splits val     # 5k images, about 1 GB: enough to evaluate
    python data_scripts/prepare_coco.py --yes            # train + val, about 19 GB, no question
    python data_scripts/prepare_coco.py --archive val2017.zip --archive annotations_trainval2017.zip --splits val

Writes ``--out``/coco (default ``data/real/coco``): ``images/`` (train2017 and val2017 images
side by side; their file names never collide) and ``annotations/instances_train.json``,
``instances_val.json`` -- the official files, unchanged -- for ``course_lib.data.CocoDetection``.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

try:
    import course_lib  # noqa: F401
except ImportError:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from course_lib.data.atomic import TEMPORARY_PATTERNS, AtomicDirectory, remove_stale_temporaries
from course_lib.data.download import RemoteFile, fetch, safe_extract
from course_lib.data.image_io import read_json
from course_lib.data.paths import data_root

# ---------------------------------------------------------------------------------------------
# Where the data is. cocodataset.org publishes no checksums for these archives, so none is claimed
# here: the script prints each file's SHA-256 for you to compare with a trusted copy.
# Sizes are approximate (for the plan shown before downloading).
FILES = {
    "train": RemoteFile("train2017.zip", "http://images.cocodataset.org/zips/train2017.zip",
                        size=18_000_000_000, extracted_size=18_500_000_000),
    "val": RemoteFile("val2017.zip", "http://images.cocodataset.org/zips/val2017.zip",
                      size=780_000_000, extracted_size=790_000_000),
    "annotations": RemoteFile("annotations_trainval2017.zip",
                              "http://images.cocodataset.org/annotations/annotations_trainval2017.zip",
                              size=250_000_000, extracted_size=800_000_000),
}
# ---------------------------------------------------------------------------------------------


def prepare(extracted: Path, out: Path, splits: list[str]) -> Path:
    """``extracted/{train2017,val2017,annotations}`` -> ``out/coco``; checks that every image the
    annotations list is there."""
    params = {"dataset": "coco", "source": "COCO 2017", "splits": sorted(splits)}
    with AtomicDirectory(out / "coco", params) as tmp:
        (tmp / "images").mkdir()
        (tmp / "annotations").mkdir()
        for split in splits:
            ann = extracted / "annotations" / f"instances_{split}2017.json"
            data = read_json(ann, what="COCO annotation file")
            image_dir = extracted / f"{split}2017"
            if not image_dir.is_dir():
                raise FileNotFoundError(f"{image_dir} not found: is {FILES[split].name} extracted?")
            names = {entry.name for entry in os.scandir(image_dir)}
            missing = [img["file_name"] for img in data.get("images", []) if img["file_name"] not in names]
            if missing:
                raise FileNotFoundError(f"{len(missing)} images listed in {ann} are not in {image_dir}, e.g. {missing[:3]}")
            for name in names:
                os.replace(image_dir / name, tmp / "images" / name)
            os.replace(ann, tmp / "annotations" / f"instances_{split}.json")
            print(f"{split}: {len(data['images'])} images, {len(data['annotations'])} annotations")
    return out / "coco"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--splits", nargs="+", choices=("train", "val"), default=["train", "val"])
    parser.add_argument("--out", type=Path, default=None, help="output root (default: data/real)")
    parser.add_argument("--download-dir", type=Path, default=None, help="where archives go (default: data/downloads)")
    parser.add_argument("--archive", action="append", default=[], help="use this already downloaded archive")
    parser.add_argument("--yes", action="store_true", help="download without asking")
    parser.add_argument("--skip-checksum", action="store_true", help="do not verify known checksums")
    args = parser.parse_args(argv)
    out = args.out or data_root() / "real"
    download_dir = args.download_dir or data_root() / "downloads"

    files = [FILES[s] for s in args.splits] + [FILES["annotations"]]
    remove_stale_temporaries(out, (*TEMPORARY_PATTERNS, r"\.extracted-coco"))  # the latter: older versions' name
    archives = fetch(files, download_dir, local=args.archive, assume_yes=args.yes, verify=not args.skip_checksum)
    work = out / f".extracted-coco.tmp-{os.getpid()}"
    try:
        for f in files:
            safe_extract(archives[f.name], work)
        print(f"Prepared {prepare(work, out, args.splits)}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
