"""The real-data scripts on small archives fabricated in each dataset's real layout."""
from __future__ import annotations

import io
import json
import os
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools.coco import COCO

from course_lib.data import CocoDetection, SegmentationDataset, dataset_dir
from course_lib.data.download import ChecksumError, UnsafeArchiveError

from .conftest import dead_pid, load_script

voc = load_script("prepare_voc")
coco_script = load_script("prepare_coco")
tt100k = load_script("prepare_tt100k")


def jpeg_bytes(width: int, height: int, color=(120, 60, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buf, format="JPEG")
    return buf.getvalue()


def png_bytes(array: np.ndarray, palette: list[int] | None = None) -> bytes:
    image = Image.fromarray(array.astype(np.uint8))
    if palette is not None:
        image = Image.frombytes("P", image.size, array.astype(np.uint8).tobytes())
        image.putpalette(palette)
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def write_tar(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


def write_zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


# ------------------------------------------------------------------ PASCAL VOC 2012
VOC_XML = """<annotation><folder>VOC2012</folder><filename>{stem}.jpg</filename>
<size><width>{w}</width><height>{h}</height><depth>3</depth></size>{objects}</annotation>"""
VOC_OBJECT = """<object><name>{name}</name><pose>Left</pose><truncated>{trunc}</truncated><difficult>{diff}</difficult>
<bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin><xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>"""


def voc_mask(h: int, w: int, cls: int) -> tuple[np.ndarray, np.ndarray]:
    """A class mask with one object of class ``cls`` and VOC's 255 border, and its instance mask."""
    mask = np.zeros((h, w), np.uint8)
    mask[5:15, 5:20] = 255
    mask[6:14, 6:19] = cls
    inst = np.where(mask == cls, 1, mask)  # VOC's SegmentationObject: ids and the same 255 border
    return mask, inst


def fabricate_voc(tmp_path: Path) -> Path:
    base = "VOCdevkit/VOC2012/"
    members: dict[str, bytes] = {}
    palette = voc.voc_colormap().ravel().tolist()
    stems = {"2007_000027": ("person", 15), "2008_000123": ("cat", 8), "2011_001000": ("dog", 12)}
    for stem, (name, cls) in stems.items():
        members[f"{base}JPEGImages/{stem}.jpg"] = jpeg_bytes(40, 30)
        mask, inst = voc_mask(30, 40, cls)
        members[f"{base}SegmentationClass/{stem}.png"] = png_bytes(mask, palette)
        members[f"{base}SegmentationObject/{stem}.png"] = png_bytes(inst, palette)
        objects = VOC_OBJECT.format(name=name, trunc=0, diff=0, b=(11, 21, 30, 28))
        if stem == "2007_000027":
            objects += VOC_OBJECT.format(name="chair", trunc=1, diff=1, b=(1, 1, 10, 10))
        members[f"{base}Annotations/{stem}.xml"] = VOC_XML.format(stem=stem, w=40, h=30, objects=objects).encode()
    members[f"{base}ImageSets/Segmentation/train.txt"] = b"2007_000027\n2008_000123\n"
    members[f"{base}ImageSets/Segmentation/val.txt"] = b"2011_001000\n"
    members[f"{base}ImageSets/Main/train.txt"] = b"2007_000027\n2011_001000\n"
    members[f"{base}ImageSets/Main/val.txt"] = b"2008_000123\n"
    members[f"{base}ImageSets/Main/trainval.txt"] = b"2007_000027\n2008_000123\n2011_001000\n"
    return write_tar(tmp_path / "VOCtrainval_11-May-2012.tar", members)


def fabricate_voc2007(tmp_path: Path, test_list: bool = True) -> list[Path]:
    """VOC 2007's two archives: trainval (000005, 000007 | 000009) and test (000001, 000002), both VOCdevkit/VOC2007."""
    archives = []
    for name, lists in (("VOCtrainval_06-Nov-2007.tar", {"train": ["000005", "000007"], "val": ["000009"]}),
                        ("VOCtest_06-Nov-2007.tar", {"test": ["000001", "000002"]} if test_list else {})):
        stems = ["000005", "000007", "000009"] if "train" in lists else ["000001", "000002"]
        if "train" in lists:
            lists["trainval"] = lists["train"] + lists["val"]
        members = {f"VOCdevkit/VOC2007/ImageSets/Main/{split}.txt": "".join(f"{s}\n" for s in v).encode()
                   for split, v in lists.items()}
        for i, stem in enumerate(stems):
            objects = VOC_OBJECT.format(name="car", trunc=0, diff=0, b=(1 + i, 2, 20, 12 + i))
            if stem == "000001":
                objects += VOC_OBJECT.format(name="bottle", trunc=0, diff=1, b=(30, 5, 35, 25))
            members[f"VOCdevkit/VOC2007/Annotations/{stem}.xml"] = VOC_XML.format(stem=stem, w=40, h=30,
                                                                                  objects=objects).encode()
            members[f"VOCdevkit/VOC2007/JPEGImages/{stem}.jpg"] = jpeg_bytes(40, 30)
        archives.append(write_tar(tmp_path / name, members))
    return archives


def test_voc_colormap_is_the_devkits():
    cmap = voc.voc_colormap()
    assert cmap[1].tolist() == [128, 0, 0] and cmap[15].tolist() == [192, 128, 128] and cmap[255].tolist() == [224, 224, 192]


def test_prepare_voc_on_a_fabricated_archive(tmp_path):
    archive = fabricate_voc(tmp_path)
    out = tmp_path / "real"
    with pytest.raises(ChecksumError, match="MD5"):  # the published MD5 is checked unless told not to
        voc.main(["--archive", str(archive), "--out", str(out)])
    assert voc.main(["--archive", str(archive), "--out", str(out), "--skip-checksum"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["voc_det", "voc_seg"], "the extracted tree must be removed"

    seg = SegmentationDataset(out / "voc_seg", "train", with_instances=True)
    assert seg.num_classes == 21 and seg.class_names[15] == "person" and len(seg) == 2
    assert seg.colors[15].tolist() == [192, 128, 128]
    image, mask, inst = seg[0]
    expected_mask, expected_inst = voc_mask(30, 40, 15)
    assert image.shape == (3, 30, 40) and torch.equal(mask, torch.from_numpy(expected_mask.astype(np.int64)))
    assert (mask == 255).any(), "VOC's 255 borders are kept in the class mask"
    assert torch.equal(inst, torch.from_numpy(np.where(expected_inst == 255, 0, expected_inst).astype(np.int64)))
    assert SegmentationDataset(out / "voc_seg", "val").ids == ["2011_001000"]

    train = CocoDetection(out / "voc_det" / "images", out / "voc_det" / "annotations" / "instances_train.json")
    assert train.num_classes == 21 and train.class_names[1:3] == ["aeroplane", "bicycle"]
    assert train.ids == [2007000027, 2011001000]
    _, target = train[0]
    # VOC (11, 21, 30, 28), 1-based inclusive -> continuous XYXY (10, 20, 30, 28); the difficult chair is crowd
    assert target["boxes"].tolist() == [[10, 20, 30, 28]] and target["labels"].tolist() == [15]
    everything = CocoDetection(out / "voc_det" / "images", out / "voc_det" / "annotations" / "instances_train.json",
                               skip_crowd=False)[0][1]
    assert everything["iscrowd"].tolist() == [0, 1] and everything["labels"].tolist() == [15, 9]
    gt = COCO(str(out / "voc_det" / "annotations" / "instances_val.json"))
    assert [a["bbox"] for a in gt.anns.values()] == [[10.0, 20.0, 20.0, 8.0]]
    assert json.loads((out / "voc_det" / "DONE.json").read_text())["num_train"] == 2


def test_prepare_voc_refuses_a_malicious_archive(tmp_path):
    archive = write_tar(tmp_path / "VOCtrainval_11-May-2012.tar",
                        {"VOCdevkit/VOC2012/ok.txt": b"ok", "../evil.txt": b"evil", "/abs/path": b"evil"})
    out = tmp_path / "real"
    with pytest.raises(UnsafeArchiveError, match="'../evil.txt'"):
        voc.main(["--archive", str(archive), "--out", str(out), "--skip-checksum"])
    assert not (tmp_path / "evil.txt").exists() and not (out / "voc_seg").exists()
    assert not any(out.rglob("ok.txt")), "nothing may be extracted from a refused archive"


def test_prepare_voc_removes_what_an_interrupted_run_left(tmp_path, capsys, live_pid):
    """Before: a killed run's .extracted-voc and .voc_seg.tmp-<pid> (hard links to the same images, so
    the space stayed taken) were left for good, and a later run left them too."""
    archive = fabricate_voc(tmp_path)
    out = tmp_path / "real"
    dead = dead_pid()
    for name in (".extracted-voc/VOCdevkit", f".extracted-voc.tmp-{dead}", f".voc_seg.tmp-{dead}/images"):
        (out / name).mkdir(parents=True)
    (out / f".extracted-voc.tmp-{dead}" / "a.jpg").write_bytes(bytes(2000))
    os.link(out / f".extracted-voc.tmp-{dead}" / "a.jpg", out / f".voc_seg.tmp-{dead}" / "images" / "a.jpg")
    live = out / f".voc_det.tmp-{live_pid}"  # another process's build, still running
    live.mkdir()
    assert voc.main(["--archive", str(archive), "--out", str(out), "--skip-checksum"]) == 0
    assert sorted(p.name for p in out.iterdir()) == [live.name, "voc_det", "voc_seg"]
    assert (f"Removed what interrupted runs left in {out}: .extracted-voc, .extracted-voc.tmp-{dead}, "
            f".voc_seg.tmp-{dead} (2.0 KB freed)\n") in capsys.readouterr().out


def test_prepare_voc_leaves_nothing_behind_when_it_fails_or_keeps_the_tree_when_asked(tmp_path):
    """Before: an archive without VOCdevkit/VOC2012 left the extracted tree in the hidden .extracted-voc."""
    archive = write_tar(tmp_path / "VOCtrainval_11-May-2012.tar", {"other/x.txt": b"x"})
    out = tmp_path / "real"
    with pytest.raises(FileNotFoundError, match="has no VOCdevkit/VOC2012 directory"):
        voc.main(["--archive", str(archive), "--out", str(out), "--skip-checksum"])
    assert list(out.iterdir()) == []
    archive = fabricate_voc(tmp_path)
    voc.main(["--archive", str(archive), "--out", str(out), "--skip-checksum", "--keep-extracted", "--only", "seg"])
    assert sorted(p.name for p in out.iterdir()) == ["VOCdevkit", "voc_seg"]
    assert (out / "VOCdevkit" / "VOC2012" / "JPEGImages" / "2007_000027.jpg").is_file()


def test_prepare_voc_builds_the_detection_papers_07_and_07_plus_12_sets(tmp_path, monkeypatch):
    archives = [*fabricate_voc2007(tmp_path), fabricate_voc(tmp_path)]
    out = tmp_path / "real"
    args = ["--out", str(out), "--release", "2007", "--release", "07+12"] + [a for p in archives for a in ("--archive", str(p))]
    with pytest.raises(ChecksumError, match="VOCtrainval_06-Nov-2007.tar: MD5"):
        voc.main(args)
    assert voc.main(args + ["--skip-checksum"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["voc0712_det", "voc07_det"], "nothing else, nothing extracted"

    def load(name, split, **kwargs):
        return CocoDetection(out / name / "images", out / name / "annotations" / f"instances_{split}.json", **kwargs)

    trainval07, test07 = load("voc07_det", "trainval"), load("voc07_det", "test")
    assert trainval07.ids == [5, 7, 9] and test07.ids == [1, 2] and trainval07.class_names[7] == "car"
    image, target = test07[0]
    assert image.shape == (3, 30, 40) and target["boxes"].tolist() == [[0, 1, 20, 12]] and target["labels"].tolist() == [7]
    assert load("voc07_det", "test", skip_crowd=False)[0][1]["iscrowd"].tolist() == [0, 1], "difficult -> crowd"
    assert test07.coco.imgs[1]["file_name"] == "VOC2007/000001.jpg"

    trainval0712 = load("voc0712_det", "trainval")
    assert trainval0712.ids == [5, 7, 9, 2007000027, 2008000123, 2011001000]
    assert [trainval0712.coco.imgs[i]["file_name"] for i in (9, 2007000027)] == ["VOC2007/000009.jpg",
                                                                               "VOC2012/2007_000027.jpg"]
    assert [len(trainval0712.coco.getAnnIds(imgIds=[i])) for i in trainval0712.ids] == [1, 1, 1, 2, 1, 1]
    assert trainval0712[4][1]["boxes"].tolist() == [[10, 20, 30, 28]] and trainval0712[4][1]["labels"].tolist() == [8]
    test0712 = load("voc0712_det", "test")
    assert test0712.coco.dataset["images"] == test07.coco.dataset["images"]
    assert test0712.coco.dataset["annotations"] == test07.coco.dataset["annotations"]
    for name in ("voc07_det", "voc0712_det"):  # the notebooks read train / val: the same files
        ann = out / name / "annotations"
        assert (ann / "instances_train.json").read_bytes() == (ann / "instances_trainval.json").read_bytes()
        assert (ann / "instances_val.json").read_bytes() == (ann / "instances_test.json").read_bytes()
    assert json.loads((out / "voc0712_det" / "DONE.json").read_text())["num_trainval"] == 6
    assert json.loads((out / "voc07_det" / "DONE.json").read_text())["num_test"] == 2
    monkeypatch.setenv("COURSE_DATA_DIR", str(tmp_path))  # what COURSE_DATA=voc0712 (make instructor DATA=...) reads
    monkeypatch.setenv("COURSE_DATA", "voc0712")
    assert dataset_dir("multiscale") == out / "voc0712_det"


def test_prepare_voc_names_a_test_archive_without_its_test_list_and_writes_nothing(tmp_path):
    archives = [*fabricate_voc2007(tmp_path, test_list=False), fabricate_voc(tmp_path)]
    out = tmp_path / "real"
    args = ["--out", str(out), "--skip-checksum", "--release", "2012", "--release", "07+12"]
    with pytest.raises(FileNotFoundError, match=r"VOCtest_06-Nov-2007.tar has no VOCdevkit/VOC2007/ImageSets/Main/test.txt"):
        voc.main(args + [a for p in archives for a in ("--archive", str(p))])
    assert list(out.iterdir()) == [], "2012's sets, asked for first, are not built either"


# ------------------------------------------------------------------ MS COCO 2017
def fabricate_coco(tmp_path: Path) -> list[Path]:
    images = [{"id": 139, "file_name": "000000000139.jpg", "height": 30, "width": 40},
              {"id": 285, "file_name": "000000000285.jpg", "height": 20, "width": 20}]
    annotations = [
        {"id": 1, "image_id": 139, "category_id": 18, "bbox": [1.5, 2.0, 10.0, 12.5], "area": 100.0, "iscrowd": 0},
        {"id": 2, "image_id": 139, "category_id": 1, "bbox": [0, 0, 40, 30], "area": 900.0, "iscrowd": 1},
        {"id": 3, "image_id": 285, "category_id": 1, "bbox": [3, 4, 5, 6], "area": 30.0, "iscrowd": 0},
    ]
    categories = [{"id": 1, "name": "person", "supercategory": "person"}, {"id": 18, "name": "dog", "supercategory": "animal"}]
    ann = json.dumps({"images": images, "annotations": annotations, "categories": categories}).encode()
    return [
        write_zip(tmp_path / "annotations_trainval2017.zip", {"annotations/instances_val2017.json": ann}),
        write_zip(tmp_path / "val2017.zip", {f"val2017/{im['file_name']}": jpeg_bytes(im["width"], im["height"]) for im in images}),
    ]


def test_prepare_coco_on_fabricated_archives(tmp_path, monkeypatch):
    archives = fabricate_coco(tmp_path)
    out = tmp_path / "real"
    monkeypatch.setenv("CI", "1")  # the train archive is not given: fetch would have to ask -> exits
    with pytest.raises(SystemExit, match="--yes"):
        coco_script.main(["--archive", str(archives[0]), "--archive", str(archives[1]), "--out", str(out),
                          "--download-dir", str(tmp_path / "dl")])
    args = ["--splits", "val", "--out", str(out), "--skip-checksum"]
    assert coco_script.main(args + [a for p in archives for a in ("--archive", str(p))]) == 0
    root = out / "coco"
    ds = CocoDetection(root / "images", root / "annotations" / "instances_val.json")
    assert ds.class_names == ["background", "person", "dog"] and ds.cat_id_to_label == {1: 1, 18: 2}
    image, target = ds[0]
    assert image.shape == (3, 30, 40)
    assert target["boxes"].tolist() == [[1.5, 2.0, 11.5, 14.5]] and target["labels"].tolist() == [2]
    assert sorted(p.name for p in out.iterdir()) == ["coco"]


def test_prepare_coco_names_missing_images(tmp_path):
    archives = fabricate_coco(tmp_path)
    write_zip(archives[1], {"val2017/000000000139.jpg": jpeg_bytes(40, 30)})  # one image missing
    args = ["--splits", "val", "--out", str(tmp_path / "real"), "--skip-checksum"]
    with pytest.raises(FileNotFoundError, match=r"1 images listed in .*instances_val2017.json .*000000000285.jpg"):
        coco_script.main(args + [a for p in archives for a in ("--archive", str(p))])
    assert not (tmp_path / "real" / "coco").exists()


def test_prepare_coco_refuses_a_malicious_archive(tmp_path):
    archives = fabricate_coco(tmp_path)
    write_zip(archives[1], {"val2017/000000000139.jpg": jpeg_bytes(40, 30), "/abs/path": b"evil"})
    args = ["--splits", "val", "--out", str(tmp_path / "real"), "--skip-checksum"]
    with pytest.raises(UnsafeArchiveError, match="'/abs/path'"):
        coco_script.main(args + [a for p in archives for a in ("--archive", str(p))])
    assert not (tmp_path / "real" / "coco").exists()


# ------------------------------------------------------------------ Tsinghua-Tencent 100K
def fabricate_tt100k(tmp_path: Path) -> Path:
    def obj(category, xmin, ymin, xmax, ymax):
        return {"category": category, "bbox": {"xmin": xmin, "ymin": ymin, "xmax": xmax, "ymax": ymax}}

    imgs = {
        "10": {"id": 10, "path": "train/10.jpg", "objects": [obj("pl80", 10.5, 4.0, 22.25, 16.0), obj("i5", 1, 1, 5, 5)]},
        "11": {"id": 11, "path": "train/11.jpg", "objects": [obj("pl80", 0, 0, 8, 8), obj("w55", 30, 2, 40, 12)]},
        "20": {"id": 20, "path": "test/20.jpg", "objects": [obj("pl80", 3, 3, 9, 9), obj("w55", 1, 1, 4, 4)]},
        "30": {"id": 30, "path": "other/30.jpg", "objects": []},
    }
    members = {"data/annotations.json": json.dumps({"types": ["i5", "pl80", "w55"], "imgs": imgs}).encode()}
    for img in imgs.values():
        members[f"data/{img['path']}"] = jpeg_bytes(48, 32)
    members["data/train/ids.txt"] = b"10\n11\n"
    return write_zip(tmp_path / "data.zip", members)


def test_prepare_tt100k_on_a_fabricated_archive(tmp_path, capsys):
    archive = fabricate_tt100k(tmp_path)
    out = tmp_path / "real"
    # pl80 has 3 instances, w55 2, i5 1: "more than 1" keeps pl80 and w55, like the paper's "> 100"
    assert tt100k.main(["--archive", str(archive), "--out", str(out), "--min-instances", "1"]) == 0
    assert "2 classes with more than 1 instances" in capsys.readouterr().out
    root = out / "tt100k"
    train = CocoDetection(root / "images", root / "annotations" / "instances_train.json")
    assert train.class_names == ["background", "pl80", "w55"] and train.ids == [10, 11]
    image, target = train[0]
    assert image.shape == (3, 32, 48)
    assert target["boxes"].tolist() == [[10.5, 4.0, 22.25, 16.0]] and target["labels"].tolist() == [1]
    assert train[1][1]["labels"].tolist() == [1, 2]
    test = COCO(str(root / "annotations" / "instances_test.json"))
    assert list(test.imgs) == [20] and test.imgs[20]["file_name"] == "test/20.jpg" and len(test.anns) == 2
    assert (root / "annotations" / "instances_val.json").read_bytes() == (root / "annotations" / "instances_test.json").read_bytes()
    assert not (root / "images" / "other").exists() and sorted(p.name for p in out.iterdir()) == ["tt100k"]


def test_prepare_tt100k_all_classes_and_refusal(tmp_path):
    archive = fabricate_tt100k(tmp_path)
    out = tmp_path / "real"
    tt100k.main(["--archive", str(archive), "--out", str(out), "--all-classes"])
    assert [c["name"] for c in COCO(str(out / "tt100k" / "annotations" / "instances_train.json")).cats.values()] == ["i5", "pl80", "w55"]
    with pytest.raises(ValueError, match="no class has more than 100 instances"):
        tt100k.main(["--archive", str(archive), "--out", str(tmp_path / "other")])
    (tmp_path / "evil").mkdir()
    evil = write_zip(tmp_path / "evil" / "data.zip", {"data/annotations.json": b"{}", "data/../../evil.txt": b"evil"})
    with pytest.raises(UnsafeArchiveError, match="'data/../../evil.txt'"):
        tt100k.main(["--archive", str(evil), "--out", str(tmp_path / "x")])
    assert not (tmp_path / "evil.txt").exists() and not (tmp_path / "x" / "tt100k").exists()
