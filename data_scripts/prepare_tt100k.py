#!/usr/bin/env python
"""Download Tsinghua-Tencent 100K (TT100K, Zhu et al., CVPR 2016) and convert it to COCO JSON.

    python data_scripts/prepare_tt100k.py                  # asks before downloading (tens of GB)
    python data_scripts/prepare_tt100k.py --archive ~/Downloads/data.zip

TT100K's ``data/annotations.json`` lists ``imgs`` -- ``{id: {"path": "train/123.jpg",
"objects": [{"category": "pl80", "bbox": {"xmin", "ymin", "xmax", "ymax"}}, ...]}}`` -- and
``types`` (the class names). Following the protocol of the TT100K paper that the EFPN paper uses
(section IV-A: "we select 45 classes with more than 100 instances for evaluation"), only classes
with more than ``--min-instances`` (default 100) instances in train + test are kept; the script
prints how many that leaves (45 on the 2016 release). ``--all-classes`` keeps every class instead
(EFPN also trains on the others "for better generalization").

Writes ``--out``/tt100k (default ``data/real/tt100k``): ``images/{train,test}/*.jpg`` (as in the
archive) and ``annotations/instances_train.json``, ``instances_test.json`` (COCO: boxes
``[xmin, ymin, xmax - xmin, ymax - ymin]``, ``area`` = box area, ``iscrowd`` 0, categories sorted
by name), and ``instances_val.json``, the test split again (a hard link) under the name the course's
notebooks read for their evaluation split (``make instructor DATA=tt100k``). Images in ``other/`` (no signs
annotated) are left out.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
from collections import Counter
from pathlib import Path

from PIL import Image

try:
    import course_lib  # noqa: F401
except ImportError:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from course_lib.data.atomic import TEMPORARY_PATTERNS, AtomicDirectory, remove_stale_temporaries
from course_lib.data.download import RemoteFile, fetch, safe_extract
from course_lib.data.image_io import read_json, write_json
from course_lib.data.paths import data_root

# ---------------------------------------------------------------------------------------------
# Where the data is: the 2016 release used by the TT100K and EFPN papers. The project publishes no
# checksum, so none is claimed: the script prints the SHA-256 for you to compare with a trusted copy.
# The size is a rough guess for the plan shown before downloading (not verified here).
FILES = [
    RemoteFile(
        name="data.zip",
        url="https://cg.cs.tsinghua.edu.cn/traffic-sign/data_model_code/data.zip",
        size=20_000_000_000,
        extracted_size=20_000_000_000,
    ),
]
SPLITS = ("train", "test")
# ---------------------------------------------------------------------------------------------


def select_classes(imgs: dict, min_instances: int) -> list[str]:
    """Class names with more than ``min_instances`` instances in train + test, sorted."""
    counts = Counter(
        obj["category"] for img in imgs.values() if img["path"].split("/")[0] in SPLITS for obj in img.get("objects", [])
    )
    return sorted(name for name, n in counts.items() if n > min_instances)


def convert(root: Path, out: Path, min_instances: int = 100, all_classes: bool = False) -> Path:
    """TT100K's ``root`` (the archive's ``data/`` directory) -> ``out/tt100k`` in COCO format."""
    ann_file = root / "annotations.json"
    data = read_json(ann_file, what="TT100K annotation file")
    try:
        imgs, types = data["imgs"], data["types"]
    except (KeyError, TypeError):
        raise ValueError(f"{ann_file}: expected {{'imgs': {{...}}, 'types': [...]}} (TT100K's format)") from None
    names = sorted(types) if all_classes else select_classes(imgs, min_instances)
    if not names:
        raise ValueError(f"{ann_file}: no class has more than {min_instances} instances")
    print(f"{len(names)} classes {'(all)' if all_classes else f'with more than {min_instances} instances'}"
          f"{' -- the TT100K/EFPN protocol has 45' if not all_classes and len(names) != 45 else ''}")
    cat_ids = {name: i + 1 for i, name in enumerate(names)}
    categories = [{"id": i, "name": name, "supercategory": name[0]} for name, i in cat_ids.items()]

    params = {"dataset": "tt100k", "source": FILES[0].name, "num_classes": len(names),
              "min_instances": None if all_classes else min_instances}
    with AtomicDirectory(out / "tt100k", params) as tmp:
        (tmp / "annotations").mkdir()
        (tmp / "images").mkdir()
        for split in SPLITS:
            images, annotations = [], []
            for key in sorted(imgs, key=lambda k: int(imgs[k].get("id", k))):
                img = imgs[key]
                path = img["path"]
                if path.split("/")[0] != split:
                    continue
                image_path = root / path
                try:
                    with Image.open(image_path) as im:  # reads the header only
                        width, height = im.size
                except OSError as exc:
                    raise FileNotFoundError(f"{ann_file} lists {path}, which cannot be read: {exc}") from exc
                image_id = int(img.get("id", key))
                images.append({"id": image_id, "file_name": path, "width": width, "height": height})
                for obj in img.get("objects", []):
                    if obj["category"] not in cat_ids:
                        continue
                    b = obj["bbox"]
                    x, y, w, h = b["xmin"], b["ymin"], b["xmax"] - b["xmin"], b["ymax"] - b["ymin"]
                    annotations.append({"id": len(annotations) + 1, "image_id": image_id, "iscrowd": 0,
                                        "category_id": cat_ids[obj["category"]], "bbox": [x, y, w, h], "area": w * h})
            shutil.move(str(root / split), str(tmp / "images" / split))
            write_json(tmp / "annotations" / f"instances_{split}.json", {
                "info": {"description": f"Tsinghua-Tencent 100K, {split} (data_scripts/prepare_tt100k.py)"},
                "licenses": [], "images": images, "annotations": annotations, "categories": categories,
            })
            print(f"{split}: {len(images)} images, {len(annotations)} signs")
        # The paper evaluates on test; the notebooks read "val" as their evaluation split (as for VOC, COCO).
        try:
            os.link(tmp / "annotations" / "instances_test.json", tmp / "annotations" / "instances_val.json")
        except OSError:
            shutil.copyfile(tmp / "annotations" / "instances_test.json", tmp / "annotations" / "instances_val.json")
    return out / "tt100k"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=None, help="output root (default: data/real)")
    parser.add_argument("--download-dir", type=Path, default=None, help="where archives go (default: data/downloads)")
    parser.add_argument("--archive", action="append", default=[], help="use this already downloaded data.zip")
    parser.add_argument("--yes", action="store_true", help="download without asking")
    parser.add_argument("--skip-checksum", action="store_true", help="do not verify known checksums")
    parser.add_argument("--min-instances", type=int, default=100, help="keep classes with more instances (100)")
    parser.add_argument("--all-classes", action="store_true", help="keep every class")
    args = parser.parse_args(argv)
    out = args.out or data_root() / "real"
    download_dir = args.download_dir or data_root() / "downloads"

    remove_stale_temporaries(out, (*TEMPORARY_PATTERNS, r"\.extracted-tt100k"))  # the latter: older versions' name
    archives = fetch(FILES, download_dir, local=args.archive, assume_yes=args.yes, verify=not args.skip_checksum)
    work = out / f".extracted-tt100k.tmp-{os.getpid()}"
    try:
        safe_extract(archives[FILES[0].name], work)
        if not (work / "data" / "annotations.json").is_file():
            raise FileNotFoundError(f"{archives[FILES[0].name]} has no data/annotations.json: is it TT100K's data.zip?")
        print(f"Prepared {convert(work / 'data', out, args.min_instances, args.all_classes)}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
