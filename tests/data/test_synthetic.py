"""The offline synthetic datasets: deterministic, complete, and shaped as the chapters need."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from pycocotools.coco import COCO
from scipy import ndimage

from course_lib.data import SegmentationDataset, dataset_dir, read_label_png
from course_lib.data.synthetic import SYNTHETIC_DATASETS, build_dataset, dataset_params
from course_lib.data.synthetic.common import split_ids
from course_lib.data.synthetic import segmentation_scenes as scenes
from course_lib.data.synthetic import traffic_signs
from course_lib.profiles import get_profile, replace

from .conftest import load_script

CI = get_profile("ci")


def file_hashes(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def coco_areas(root: Path) -> np.ndarray:
    areas = []
    for split in ("train", "val"):
        data = json.loads((root / "annotations" / f"instances_{split}.json").read_text())
        areas += [a["area"] for a in data["annotations"]]
    return np.array(areas)


# ------------------------------------------------------------------ determinism, layout, atomicity
def test_same_seed_gives_identical_bytes_other_seed_differs(ci_data, tmp_path):
    again, other = tmp_path / "again", tmp_path / "other"
    for name in SYNTHETIC_DATASETS:
        build_dataset(name, again, CI, seed=0, progress=False)
    build_dataset("segmentation", other, CI, seed=1, progress=False)
    build_dataset("small_objects", other, CI, seed=1, progress=False)
    for name in SYNTHETIC_DATASETS:
        first, second = file_hashes(ci_data / name), file_hashes(again / name)
        assert first == second, f"{name}: files differ between two builds with seed 0"
    for name in ("segmentation", "small_objects"):
        first, third = file_hashes(ci_data / name), file_hashes(other / name)
        images = [k for k in first if k.startswith("images/")]
        assert images and all(first[k] != third[k] for k in images), f"{name}: seed 1 repeated an image of seed 0"


def test_images_do_not_depend_on_order_or_workers(ci_data, tmp_path):
    """Image i comes from its own random stream: two worker processes give the same bytes."""
    build_dataset("multiscale", tmp_path, CI, seed=0, workers=2, progress=False)
    assert file_hashes(tmp_path / "multiscale") == file_hashes(ci_data / "multiscale")


def test_layout_marker_and_splits(ci_data):
    seg = ci_data / "segmentation"
    marker = json.loads((seg / "DONE.json").read_text())
    assert marker["dataset"] == "segmentation" and marker["seed"] == 0 and marker["profile"] == "ci"
    assert marker["num_images"] == CI.data.segmentation_images
    train = (seg / "splits" / "train.txt").read_text().split()
    val = (seg / "splits" / "val.txt").read_text().split()
    assert len(train) + len(val) == CI.data.segmentation_images and not set(train) & set(val) and val
    for stem in train + val:
        for sub in ("images", "masks", "instances"):
            assert (seg / sub / f"{stem}.png").is_file()
    classes = json.loads((seg / "classes.json").read_text())
    assert [c["name"] for c in classes["classes"]][:1] == ["background"] and classes["ignore_index"] == 255
    for name, count, size in (("small_objects", CI.data.small_objects_images, CI.data.small_objects_size),
                              ("multiscale", CI.data.multiscale_images, CI.data.multiscale_size)):
        images = sorted((ci_data / name / "images").glob("*.jpg"))
        assert len(images) == count
        marker = json.loads((ci_data / name / "DONE.json").read_text())
        assert marker["image_size"] == list(size)


def test_pycocotools_loads_every_json_and_boxes_are_inside(ci_data):
    for name in ("small_objects", "multiscale"):
        n_images = 0
        for split in ("train", "val"):
            coco = COCO(str(ci_data / name / "annotations" / f"instances_{split}.json"))
            n_images += len(coco.imgs)
            assert all(c["name"] for c in coco.cats.values())
            assert coco.anns, f"{name}/{split} has no annotations"
            for ann in coco.anns.values():
                img = coco.imgs[ann["image_id"]]
                x, y, w, h = ann["bbox"]
                assert w > 0 and h > 0 and x >= 0 and y >= 0 and x + w <= img["width"] and y + h <= img["height"]
                assert ann["iscrowd"] == 0 and ann["area"] == w * h and ann["category_id"] in coco.cats
            for img in coco.imgs.values():
                assert (ci_data / name / "images" / img["file_name"]).is_file()
        assert n_images == json.loads((ci_data / name / "DONE.json").read_text())["num_images"]


def test_skip_existing_keeps_complete_and_rebuilds_incomplete(ci_data, tmp_path):
    dest, built = build_dataset("small_objects", tmp_path, CI, seed=0, progress=False)
    assert built
    stamp = (dest / "DONE.json").stat().st_mtime_ns
    assert build_dataset("small_objects", tmp_path, CI, seed=0, skip_existing=True, progress=False)[1] is False
    assert (dest / "DONE.json").stat().st_mtime_ns == stamp
    # other parameters (seed) -> rebuilt; no marker -> incomplete -> rebuilt
    assert build_dataset("small_objects", tmp_path, CI, seed=3, skip_existing=True, progress=False)[1] is True
    (dest / "DONE.json").unlink()
    assert build_dataset("small_objects", tmp_path, CI, seed=0, skip_existing=True, progress=False)[1] is True
    assert file_hashes(dest) == file_hashes(ci_data / "small_objects")


def test_failed_build_leaves_nothing(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(traffic_signs, "generate_image", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        build_dataset("small_objects", tmp_path, CI, seed=0, progress=False)
    assert list(tmp_path.iterdir()) == [], "a failed build left files behind"


def test_make_synthetic_cli_skips_and_reports_disk_use(ci_data, capsys):
    script = load_script("make_synthetic")
    assert script.main(["--profile", "ci", "--out", str(ci_data), "--skip-existing", "--quiet"]) == 0
    out = capsys.readouterr().out
    for name in SYNTHETIC_DATASETS:
        assert f"{name}: complete, skipped" in out
    assert "on disk" in out and "KiB" in out


def test_dataset_dir_names_the_command(ci_data, tmp_path, monkeypatch):
    monkeypatch.setenv("COURSE_DATA_DIR", str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"python -m course_lib.data.make_synthetic --profile ci --only multiscale"):
        dataset_dir("multiscale", "ci")
    (tmp_path / "ci" / "multiscale").mkdir(parents=True)  # exists but has no DONE.json: incomplete
    with pytest.raises(FileNotFoundError, match="incomplete"):
        dataset_dir("multiscale", "ci")
    with pytest.raises(ValueError, match="Unknown dataset 'imagenet'"):
        dataset_dir("imagenet")
    with pytest.raises(FileNotFoundError, match="prepare_voc.py"):
        dataset_dir("voc_seg")


def test_dataset_dir_finds_a_complete_dataset(ci_data, tmp_path, monkeypatch):
    (tmp_path / "ci").mkdir()
    (tmp_path / "ci" / "segmentation").symlink_to(ci_data / "segmentation")
    monkeypatch.setenv("COURSE_DATA_DIR", str(tmp_path))
    assert dataset_dir("segmentation", "ci") == tmp_path / "ci" / "segmentation"
    assert len(SegmentationDataset(dataset_dir("segmentation", "ci"), "val")) >= 1


def test_a_larger_validation_split_keeps_the_training_images(ci_data, tmp_path):
    """The cpu profile grew its detection sets' validation splits (issue 19) by adding images at the end: image i is
    the same whatever the split, so the training images and their boxes are byte for byte the old ones."""
    grown = replace(CI, data=dict(multiscale_images=CI.data.multiscale_images + 3,
                                  multiscale_val_images=CI.data.multiscale_val_images + 3))
    dest, _ = build_dataset("multiscale", tmp_path, grown, seed=0, progress=False)
    old, new = ({split: json.loads((root / "annotations" / f"instances_{split}.json").read_text())
                 for split in ("train", "val")} for root in (ci_data / "multiscale", dest))
    assert new["train"] == old["train"]
    assert len(new["val"]["images"]) == len(old["val"]["images"]) + 3 == grown.data.multiscale_val_images
    for image in new["train"]["images"]:
        name = image["file_name"]
        assert (dest / "images" / name).read_bytes() == (ci_data / "multiscale" / "images" / name).read_bytes()
    assert split_ids(10, num_val=4) == (list(range(6)), [6, 7, 8, 9]) and split_ids(10) == (list(range(8)), [8, 9])
    with pytest.raises(ValueError, match="num_val=11 of 10 images"):
        split_ids(10, num_val=11)
    for val in (0, CI.data.multiscale_images):  # no validation image, or no training one
        with pytest.raises(ValueError, match=rf"multiscale has 12 images, {val} of them for validation.*1 to 11"):
            dataset_params("multiscale", replace(CI, data=dict(multiscale_val_images=val)))


def test_dataset_dir_refuses_a_dataset_built_for_other_parameters(ci_data, tmp_path, monkeypatch):
    (tmp_path / "ci").mkdir()
    dest, _ = build_dataset("multiscale", tmp_path / "ci", CI, seed=0, progress=False)
    monkeypatch.setenv("COURSE_DATA_DIR", str(tmp_path))
    assert dataset_dir("multiscale", "ci") == dest
    marker = json.loads((dest / "DONE.json").read_text())
    del marker["num_val_images"]  # as written before the profiles named their validation splits
    marker["num_images"] = 10
    (dest / "DONE.json").write_text(json.dumps(marker))
    with pytest.raises(FileNotFoundError, match=r"built for other parameters than profile 'ci' gives now: num_images "
                       r"10 \(the profile: 12\), num_val_images None \(the profile: 2\)\. Rebuild it .*\n"
                       r"    python -m course_lib.data.make_synthetic --profile ci --only multiscale"):
        dataset_dir("multiscale", "ci")
    marker = dataset_params("multiscale", CI, seed=3)  # another seed (make_synthetic --seed 3) is a choice, not stale
    (dest / "DONE.json").write_text(json.dumps(marker))
    assert dataset_dir("multiscale", "ci") == dest
    (dest / "DONE.json").write_text("{not json")
    with pytest.raises(FileNotFoundError, match="cannot be read"):
        dataset_dir("multiscale", "ci")


# ------------------------------------------------------------------ what the chapters need
def test_small_objects_are_mostly_small(ci_data):
    """COCO buckets by box area. ci (8 images, seed 0): 40 signs, 60% small, 28% medium, 12% large."""
    areas = coco_areas(ci_data / "small_objects")
    small, medium, large = (areas < 32**2).mean(), ((areas >= 32**2) & (areas < 96**2)).mean(), (areas >= 96**2).mean()
    assert len(areas) >= 30
    assert small > 0.5, f"only {small:.0%} of the signs are small"
    assert 0.1 < medium < 0.45 and 0 < large < 0.2, (small, medium, large)


def test_small_objects_distribution_over_many_images():
    """The generator's distribution on 40 more images (seed 7, 256 px): most signs small, some
    medium, a few large, all classes drawn. (Measured: 243 signs, 67% small, 25% medium, 8% large.)"""
    annotations = [a for i in range(40) for a in traffic_signs.generate_image(7, i, 256, 256)[1]]
    areas = np.array([a["area"] for a in annotations])
    small, large = (areas < 32**2).mean(), (areas >= 96**2).mean()
    assert len(areas) > 150 and 0.55 < small < 0.8 and 0.02 < large < 0.15, (len(areas), small, large)
    assert len({a["category_id"] for a in annotations}) == len(traffic_signs.SIGN_CLASSES)


def test_multiscale_boxes_cover_every_octave(ci_data):
    """sqrt(area) from 16 px up to the image: each octave -- each FPN level's anchor scale -- has boxes."""
    sides = np.sqrt(coco_areas(ci_data / "multiscale"))
    counts, _ = np.histogram(sides, bins=[16, 32, 64, 128, 256])
    assert (counts >= 3).all(), f"boxes per octave 16-32-64-128-256: {counts.tolist()}"
    assert sides.min() >= 8


def test_segmentation_has_thin_structures_and_small_regions(ci_data):
    root = ci_data / "segmentation"
    wire_pixels = thick_wire_pixels = 0
    dot_sizes = []
    for mask_path in sorted((root / "masks").glob("*.png")):
        mask = read_label_png(mask_path)
        wire = mask == scenes.WIRE
        wire_pixels += wire.sum()
        thick_wire_pixels += ndimage.binary_erosion(wire, iterations=2).sum()  # survives only where >= 5 px wide
        labels, n = ndimage.label(mask == scenes.DOT)
        dot_sizes += np.bincount(labels.ravel())[1:].tolist()
    assert wire_pixels > 500 and thick_wire_pixels / wire_pixels < 0.02, (wire_pixels, thick_wire_pixels)
    assert len(dot_sizes) > 20 and np.median(dot_sizes) <= 40, dot_sizes


def touching_pairs(instances: np.ndarray, cls: np.ndarray, radius: int = 2) -> set[tuple[int, int]]:
    """Pairs of distinct cell instances with pixels at most ``radius`` px apart (vectorized over shifts)."""
    cells = np.where(cls == scenes.CELL, instances, 0)
    pairs = set()
    h, w = cells.shape
    for dy in range(-radius, radius + 1):
        for dx in range(-radius, radius + 1):
            a = cells[max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)]
            b = cells[max(-dy, 0) : h + min(-dy, 0), max(-dx, 0) : w + min(-dx, 0)]
            hit = (a > 0) & (b > 0) & (a < b)
            pairs |= set(zip(a[hit].tolist(), b[hit].tolist()))
    return pairs


def test_segmentation_has_touching_instances_separated_by_background(ci_data):
    """As in U-Net: cells of one class touch, and the 1-2 px between them is background (0), not ignore."""
    root = ci_data / "segmentation"
    images_with_touching, membrane_values = 0, []
    for mask_path in sorted((root / "masks").glob("*.png")):
        mask = read_label_png(mask_path)
        inst = read_label_png(root / "instances" / mask_path.name)
        assert ((inst > 0) == ((mask > 0) & (mask != 255))).all(), "instance ids must cover exactly the objects"
        pairs = touching_pairs(inst, mask)
        images_with_touching += bool(pairs)
        for a, b in pairs:
            between = ndimage.binary_dilation(inst == a) & ndimage.binary_dilation(inst == b) & (inst == 0)
            membrane_values += mask[between].tolist()
    assert images_with_touching >= 0.75 * CI.data.segmentation_images
    membrane_values = np.array(membrane_values)
    assert len(membrane_values) > 50 and (membrane_values == 0).mean() > 0.9, np.bincount(membrane_values % 256)


def test_segmentation_ignore_band_hugs_object_borders(ci_data):
    root = ci_data / "segmentation"
    for mask_path in sorted((root / "masks").glob("*.png"))[:6]:
        mask = read_label_png(mask_path)
        objects = (mask > 0) & (mask != 255)
        ignore = mask == 255
        assert ignore.any() and set(np.unique(mask).tolist()) <= {0, 1, 2, 3, 4, 5, 255}
        assert not (ignore & ~ndimage.binary_dilation(objects)).any(), "an ignore pixel far from any object"
        # a thin band: it never covers more than the objects themselves
        assert ignore.sum() < objects.sum()
