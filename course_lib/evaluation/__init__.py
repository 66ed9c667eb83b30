"""Evaluation: COCO AP/AR and proposal recall (pycocotools), the EFPN paper's accuracy /
recall / F1 per object size, and the FCN paper's segmentation metrics."""
from .detection import SIZE_RANGES, coco_evaluate, efpn_metrics, evaluate_detector, greedy_match, proposal_recall
from .segmentation import ConfusionMatrix, boundary_mask, evaluate_segmentation, small_region_mask

__all__ = [
    "coco_evaluate", "proposal_recall", "efpn_metrics", "greedy_match", "evaluate_detector", "SIZE_RANGES",
    "ConfusionMatrix", "boundary_mask", "small_region_mask", "evaluate_segmentation",
]
