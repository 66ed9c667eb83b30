"""Datasets of the course: where they are, how to read them, how to look at them.

    from course_lib.data import dataset_dir, CocoDetection, SegmentationDataset, detection_collate

    root = dataset_dir("small_objects")          # data/<profile>/small_objects, checked complete
    train = CocoDetection(root / "images", root / "annotations" / "instances_train.json")
    image, target = train[0]                     # tv_tensors.Image, {"boxes", "labels", ...}

The offline synthetic datasets are built by ``python -m course_lib.data.make_synthetic`` (``make lab``
and ``make test`` do it for you); real ones (PASCAL VOC 2012, COCO 2017, Tsinghua-Tencent 100K)
by ``data_scripts/prepare_*.py`` into the same formats.
"""
from .elastic import elastic_deform, elastic_displacements
from .coco import CocoDetection, detection_collate, load_coco
from .image_io import read_label_png, read_rgb
from .paths import DATA_CHOICES, REAL_DATASETS, SYNTHETIC_DATASETS, data_root, data_selection, dataset_dir, repo_root
from .segmentation import SegmentationDataset, read_classes, segmentation_collate
from .visualize import colorize_mask, draw_detections, show_segmentation

__all__ = [
    "CocoDetection",
    "elastic_deform",
    "elastic_displacements",
    "detection_collate",
    "load_coco",
    "SegmentationDataset",
    "segmentation_collate",
    "read_classes",
    "read_rgb",
    "read_label_png",
    "dataset_dir",
    "data_selection",
    "DATA_CHOICES",
    "data_root",
    "repo_root",
    "SYNTHETIC_DATASETS",
    "REAL_DATASETS",
    "colorize_mask",
    "draw_detections",
    "show_segmentation",
]
