"""CocoDetection and SegmentationDataset: documented types, joint v2 transforms, bad input."""
from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import tv_tensors
from torchvision.transforms import v2

from course_lib.data import (
    CocoDetection,
    SegmentationDataset,
    colorize_mask,
    detection_collate,
    draw_detections,
    segmentation_collate,
    show_segmentation,
)
from course_lib.data.image_io import write_png
from course_lib.evaluation.detection import coco_evaluate


def coco_split(root, split="train"):
    return root / "images", root / "annotations" / f"instances_{split}.json"


# ------------------------------------------------------------------ CocoDetection
def test_coco_detection_returns_documented_types(ci_data):
    root = ci_data / "small_objects"
    ds = CocoDetection(*coco_split(root))
    data = json.loads(coco_split(root)[1].read_text())
    assert len(ds) == len(data["images"]) and ds.num_classes == len(data["categories"]) + 1
    assert ds.class_names[0] == "background" and ds.class_names[1] == "speed_limit_30"
    assert ds.coco.getImgIds() and ds.cat_id_to_label == {c["id"]: c["id"] for c in data["categories"]}
    image, target = ds[0]
    assert isinstance(image, tv_tensors.Image) and image.dtype == torch.uint8 and image.shape[0] == 3
    boxes = target["boxes"]
    assert isinstance(boxes, tv_tensors.BoundingBoxes) and boxes.format == tv_tensors.BoundingBoxFormat.XYXY
    assert boxes.dtype == torch.float32 and tuple(boxes.canvas_size) == tuple(image.shape[-2:])
    assert target["labels"].dtype == torch.int64 and (target["labels"] >= 1).all()
    assert target["iscrowd"].dtype == torch.int64 and target["area"].dtype == torch.float32
    image_id = target["image_id"]
    anns = ds.coco.loadAnns(ds.coco.getAnnIds(imgIds=image_id))
    expected = torch.tensor([[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in anns)], dtype=torch.float32)
    assert torch.equal(boxes.as_subclass(torch.Tensor), expected)
    assert target["labels"].tolist() == [ds.cat_id_to_label[a["category_id"]] for a in anns]


def test_coco_detection_pixels_are_the_file(ci_data):
    root = ci_data / "multiscale"
    ds = CocoDetection(*coco_split(root, "val"))
    image, target = ds[0]
    info = ds.coco.imgs[target["image_id"]]
    with Image.open(root / "images" / info["file_name"]) as im:
        assert torch.equal(image.permute(1, 2, 0), torch.from_numpy(np.array(im.convert("RGB"))))


def test_v2_transforms_move_image_and_boxes_together(ci_data):
    images_dir, ann = coco_split(ci_data / "small_objects")
    plain = CocoDetection(images_dir, ann)
    flipped = CocoDetection(images_dir, ann, transforms=v2.RandomHorizontalFlip(p=1.0))
    resized = CocoDetection(images_dir, ann, transforms=v2.Compose([v2.Resize((128, 64)), v2.ToDtype(torch.float32, scale=True)]))
    image, target = plain[1]
    h, w = image.shape[-2:]
    f_image, f_target = flipped[1]
    assert torch.equal(f_image, image.flip(-1))
    x0, y0, x1, y1 = target["boxes"].unbind(-1)
    assert torch.equal(f_target["boxes"].as_subclass(torch.Tensor), torch.stack([w - x1, y0, w - x0, y1], -1))
    assert torch.equal(f_target["labels"], target["labels"])
    r_image, r_target = resized[1]
    assert r_image.shape == (3, 128, 64) and r_image.dtype == torch.float32
    scale = torch.tensor([64 / w, 128 / h, 64 / w, 128 / h])
    torch.testing.assert_close(r_target["boxes"].as_subclass(torch.Tensor), target["boxes"].as_subclass(torch.Tensor) * scale)
    assert tuple(r_target["boxes"].canvas_size) == (128, 64)


def test_targets_are_copies(ci_data):
    ds = CocoDetection(*coco_split(ci_data / "small_objects"))
    _, target = ds[0]
    target["boxes"].zero_()
    assert ds[0][1]["boxes"].sum() > 0


def test_category_subset_and_collate_and_dataloader(ci_data):
    images_dir, ann = coco_split(ci_data / "small_objects")
    ds = CocoDetection(images_dir, ann, category_ids=[5, 2])
    assert ds.class_names[1:] == ["no_entry", "speed_limit_50"] and ds.label_to_cat_id == {1: 5, 2: 2}
    full = CocoDetection(images_dir, ann)
    n_full = sum(int(((full[i][1]["labels"] == 5) | (full[i][1]["labels"] == 2)).sum()) for i in range(len(full)))
    labels = torch.cat([ds[i][1]["labels"] for i in range(len(ds))])
    assert len(labels) == n_full and set(labels.tolist()) <= {1, 2}
    loader = torch.utils.data.DataLoader(full, batch_size=3, collate_fn=detection_collate)
    images, targets = next(iter(loader))
    assert isinstance(images, list) and len(images) == 3 and isinstance(targets[0]["boxes"], tv_tensors.BoundingBoxes)
    with pytest.raises(ValueError, match=r"category_ids \[99\]"):
        CocoDetection(images_dir, ann, category_ids=[99])


# ------------------------------------------------------------------ CocoDetection: bad input
def make_coco(tmp_path, annotations, images=None, categories=None, sizes=((20, 30),), mode="RGB"):
    """A tiny COCO dataset: one image per size (H, W), written in ``mode``."""
    (tmp_path / "images").mkdir(exist_ok=True)
    if images is None:
        images = []
        for i, (h, w) in enumerate(sizes):
            name = f"{i}.png"
            array = np.full((h, w, 3), 100, np.uint8)
            Image.fromarray(array).convert(mode).save(tmp_path / "images" / name)
            images.append({"id": i + 1, "file_name": name, "height": h, "width": w})
    data = {"images": images, "annotations": annotations,
            "categories": categories or [{"id": 1, "name": "sign"}, {"id": 3, "name": "car"}]}
    path = tmp_path / "ann.json"
    path.write_text(json.dumps(data))
    return tmp_path / "images", path


def ann(id, bbox, category_id=1, image_id=1, **kw):
    return {"id": id, "image_id": image_id, "category_id": category_id, "bbox": bbox, "area": bbox[2] * bbox[3], **kw}


def test_missing_or_corrupt_annotation_file_is_named(tmp_path):
    images_dir, path = make_coco(tmp_path, [])
    with pytest.raises(FileNotFoundError, match="nothere.json"):
        CocoDetection(images_dir, tmp_path / "nothere.json")
    path.write_text('{"images": [')
    with pytest.raises(ValueError, match=r"ann\.json is not valid JSON"):
        CocoDetection(images_dir, path)
    path.write_text('{"images": [], "annotations": []}')
    with pytest.raises(ValueError, match=r"ann\.json has no 'categories'"):
        CocoDetection(images_dir, path)
    with pytest.raises(FileNotFoundError, match="Image directory not found"):
        CocoDetection(tmp_path / "noimages", path)
    path.write_text(json.dumps({"images": [{"id": 1, "file_name": "0.png", "width": 30}], "annotations": [],
                                "categories": []}))
    with pytest.raises(ValueError, match=r"ann\.json: every image needs .*'height'"):
        CocoDetection(images_dir, path)


def test_unknown_category_is_an_error_naming_annotation_and_value(tmp_path):
    images_dir, path = make_coco(tmp_path, [ann(1, [1, 1, 5, 5]), ann(17, [2, 2, 5, 5], category_id=2)])
    with pytest.raises(ValueError, match=r"annotation id 17 has category_id 2"):
        CocoDetection(images_dir, path)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_nan_or_infinite_box_is_an_error_naming_annotation_and_value(tmp_path, value):
    images_dir, path = make_coco(tmp_path, [ann(1, [1, 1, 5, 5]), ann(23, [2, 2, value, 5])])
    assert str(value).lower().lstrip("-")[:3] in path.read_text().lower()  # json.dumps writes NaN / Infinity
    with pytest.raises(ValueError, match=rf"ann\.json: annotation id 23 has bbox \[2, 2, {value}, 5\].*not a finite"):
        CocoDetection(images_dir, path)


def test_repeated_image_ids_are_an_error_naming_file_and_ids(tmp_path):
    """Before: no error; image 2.png's box became 0.png's target (pycocotools keeps the last entry)."""
    images_dir, path = make_coco(tmp_path, [ann(1, [1, 1, 5, 5], image_id=1), ann(2, [2, 2, 5, 5], image_id=7)],
                                 sizes=((20, 30),) * 3)
    data = json.loads(path.read_text())
    data["images"][1]["id"] = data["images"][2]["id"] = 7
    path.write_text(json.dumps(data))
    message = r"ann\.json: image id\(s\) \[7\] appear more than once in 'images'.*Give every image its own id"
    with pytest.raises(ValueError, match=message):
        CocoDetection(images_dir, path)
    with pytest.raises(ValueError, match=message):  # evaluation's ground truth reads the file the same way
        coco_evaluate(path, [])


def test_repeated_annotation_ids_are_an_error_naming_file_and_ids(tmp_path):
    """Before: training kept both boxes, evaluation's ground truth had the second one twice."""
    images_dir, path = make_coco(tmp_path, [ann(4, [1, 1, 5, 5]), ann(4, [10, 10, 5, 5]), ann(5, [2, 2, 3, 3])])
    message = r"ann\.json: annotation id\(s\) \[4\] appear more than once in 'annotations'; evaluation would"
    with pytest.raises(ValueError, match=message):
        CocoDetection(images_dir, path)
    with pytest.raises(ValueError, match=message):
        coco_evaluate(str(path), [])


@pytest.mark.parametrize("where", ["image", "annotation", "category"])
def test_string_image_id_is_an_error_naming_file_entry_and_value(tmp_path, where):
    """Before: a bare int() ValueError (or, for "1", an image whose boxes evaluation never saw)."""
    images_dir, path = make_coco(tmp_path, [ann(9, [1, 1, 5, 5])])
    data = json.loads(path.read_text())
    if where == "image":
        data["images"][0]["id"] = "0001.png"
        message = r"ann\.json: image #1 \(file_name '0\.png'\) has id '0001\.png' \(a str\); every image needs an integer"
    elif where == "annotation":
        data["annotations"][0]["image_id"] = "1"
        message = r"ann\.json: annotation #1 \(id 9\) has image_id '1' \(a str\); .*\(12, not \"12\"\)"
    else:
        data["annotations"][0]["category_id"] = "1"
        message = r"ann\.json: annotation #1 \(id 9\) has category_id '1' \(a str\); every annotation needs"
    path.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=message):
        CocoDetection(images_dir, path)
    with pytest.raises(ValueError, match=message):
        coco_evaluate(path, [])



def test_missing_image_id_is_an_error_naming_the_annotation(tmp_path):
    """Before: pycocotools' bare KeyError: 'image_id'."""
    images_dir, path = make_coco(tmp_path, [{"id": 9, "category_id": 1, "bbox": [1, 1, 5, 5]}])
    with pytest.raises(ValueError, match=r"ann\.json: annotation #1 \(id 9\) has no 'image_id'; every annotation"):
        CocoDetection(images_dir, path)


def test_boxes_outside_the_image_are_clipped(tmp_path):
    images_dir, path = make_coco(tmp_path, [ann(1, [-3, 5, 10, 40]), ann(2, [25, -2.5, 10, 4], category_id=3)])
    ds = CocoDetection(images_dir, path)  # image is 30 wide, 20 high
    _, target = ds[0]
    assert target["boxes"].tolist() == [[0, 5, 7, 20], [25, 0, 30, 1.5]]
    assert target["labels"].tolist() == [1, 2]


def test_zero_area_boxes_are_dropped_with_a_warning(tmp_path):
    images_dir, path = make_coco(tmp_path, [ann(1, [1, 1, 5, 5]), ann(7, [4, 4, 0, 3]), ann(8, [40, 2, 5, 5])])
    with pytest.warns(UserWarning, match=r"dropped 2 annotation\(s\).*annotation ids \[7, 8\]"):
        ds = CocoDetection(images_dir, path)
    assert ds[0][1]["boxes"].tolist() == [[1, 1, 6, 6]]


def test_crowd_is_skipped_by_default(tmp_path):
    images_dir, path = make_coco(tmp_path, [ann(1, [1, 1, 5, 5]), ann(2, [2, 2, 5, 5], iscrowd=1)])
    assert len(CocoDetection(images_dir, path)[0][1]["boxes"]) == 1
    target = CocoDetection(images_dir, path, skip_crowd=False)[0][1]
    assert target["iscrowd"].tolist() == [0, 1]


def test_grey_and_16_bit_images_become_rgb_uint8(tmp_path):
    images_dir, path = make_coco(tmp_path, [ann(1, [1, 1, 5, 5])], mode="L")
    image, _ = CocoDetection(images_dir, path)[0]
    assert image.shape == (3, 20, 30) and image.dtype == torch.uint8 and (image == 100).all()
    Image.fromarray(np.full((20, 30), 65535, np.uint16)).save(images_dir / "0.png")
    image, _ = CocoDetection(images_dir, path)[0]
    assert (image == 255).all()


def test_image_of_another_size_than_annotated_is_an_error(tmp_path):
    images_dir, path = make_coco(tmp_path, [ann(1, [1, 1, 5, 5])])
    Image.new("RGB", (31, 20)).save(images_dir / "0.png")
    with pytest.raises(ValueError, match=r"0\.png is 31x20 pixels but .*ann\.json says 30x20"):
        CocoDetection(images_dir, path)[0]


def test_images_without_annotations_have_empty_targets(tmp_path):
    images_dir, path = make_coco(tmp_path, [ann(1, [1, 1, 5, 5], image_id=2)], sizes=((20, 30), (10, 10)))
    _, target = CocoDetection(images_dir, path)[0]
    assert target["boxes"].shape == (0, 4) and target["labels"].shape == (0,)
    out = v2.RandomHorizontalFlip(p=1.0)(*CocoDetection(images_dir, path)[0])
    assert out[1]["boxes"].shape == (0, 4)


# ------------------------------------------------------------------ SegmentationDataset
def test_segmentation_dataset_returns_documented_types(ci_data):
    ds = SegmentationDataset(ci_data / "segmentation", "train", with_instances=True)
    assert ds.num_classes == 6 and ds.class_names[:2] == ["background", "cell"] and ds.ignore_index == 255
    image, mask, instances = ds[0]
    assert isinstance(image, tv_tensors.Image) and image.dtype == torch.uint8 and image.shape == (3, 128, 128)
    assert isinstance(mask, tv_tensors.Mask) and mask.dtype == torch.int64 and mask.shape == (128, 128)
    assert isinstance(instances, tv_tensors.Mask) and instances.dtype == torch.int64
    assert set(mask.unique().tolist()) <= set(range(6)) | {255}
    assert len(SegmentationDataset(ci_data / "segmentation")[0]) == 2


def test_segmentation_transforms_are_joint(ci_data):
    root = ci_data / "segmentation"
    plain = SegmentationDataset(root, with_instances=True)
    t = v2.Compose([v2.RandomHorizontalFlip(p=1.0), v2.CenterCrop(64)])
    image, mask, inst = plain[2]
    t_image, t_mask, t_inst = SegmentationDataset(root, transforms=t, with_instances=True)[2]
    assert isinstance(t_mask, tv_tensors.Mask) and t_mask.shape == (64, 64)
    assert torch.equal(t_image, image.flip(-1)[:, 32:96, 32:96])
    assert torch.equal(t_mask, mask.flip(-1)[32:96, 32:96]) and torch.equal(t_inst, inst.flip(-1)[32:96, 32:96])
    batch = segmentation_collate([SegmentationDataset(root, transforms=t)[i] for i in range(3)])
    assert batch[0].shape == (3, 3, 64, 64) and batch[1].shape == (3, 64, 64) and batch[1].dtype == torch.int64
    with pytest.raises(ValueError, match="different sizes"):
        segmentation_collate([plain[0][:2], SegmentationDataset(root, transforms=t)[0]])


def make_segmentation(tmp_path, mask: np.ndarray, image_size=None):
    for sub in ("images", "masks", "splits"):
        (tmp_path / sub).mkdir(exist_ok=True)
    h, w = image_size or mask.shape
    Image.new("RGB", (w, h), (10, 20, 30)).save(tmp_path / "images" / "a.png")
    write_png(tmp_path / "masks" / "a.png", mask.astype(np.uint8))
    (tmp_path / "splits" / "train.txt").write_text("a\n")
    (tmp_path / "classes.json").write_text(json.dumps(
        {"classes": [{"id": 0, "name": "bg", "color": [0, 0, 0]}, {"id": 1, "name": "x", "color": [9, 9, 9]}]}))
    return tmp_path


def test_segmentation_bad_input_is_named(tmp_path):
    root = make_segmentation(tmp_path, np.array([[0, 1], [255, 7]]))
    with pytest.raises(ValueError, match=r"masks/a\.png: values \[7\]"):
        SegmentationDataset(root)[0]
    make_segmentation(tmp_path, np.zeros((2, 2)), image_size=(3, 3))
    with pytest.raises(ValueError, match=r"a\.png is 2x2 but its image is 3x3"):
        SegmentationDataset(root)[0]
    with pytest.raises(FileNotFoundError, match=r"val\.txt \(available splits: \['train'\]\)"):
        SegmentationDataset(root, "val")
    with pytest.raises(FileNotFoundError, match="with_instances=True"):
        SegmentationDataset(root, with_instances=True)
    with pytest.raises(FileNotFoundError, match="make_synthetic"):
        SegmentationDataset(tmp_path / "nowhere")
    (root / "images" / "a.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"No image for id 'a'"):
        SegmentationDataset(root)[0]


# ------------------------------------------------------------------ plotting helpers
def test_colorize_and_plot_helpers(ci_data):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = np.array([[0, 0, 0], [255, 0, 0]], np.uint8)
    out = colorize_mask(torch.tensor([[0, 1], [255, 1]]), colors)
    assert out.tolist() == [[[0, 0, 0], [255, 0, 0]], [[224, 224, 192], [255, 0, 0]]]
    with pytest.raises(ValueError, match=r"mask values \[2\]"):
        colorize_mask(np.array([[2]]), colors)
    seg = SegmentationDataset(ci_data / "segmentation")
    det = CocoDetection(*coco_split(ci_data / "small_objects"))
    fig, axes = plt.subplots(1, 2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        show_segmentation(*seg[0], class_names=seg.class_names, colors=seg.colors, ax=axes[0])
        image, target = det[0]
        draw_detections(image, target["boxes"], target["labels"], scores=torch.ones(len(target["labels"])),
                        class_names=det.class_names, ax=axes[1])
    assert len(axes[1].collections[0].get_paths()) == len(target["boxes"])
    assert len(axes[1].texts) == len(target["boxes"])
    plt.close(fig)
