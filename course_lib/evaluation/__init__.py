"""Evaluation: COCO AP/AR and proposal recall (pycocotools), the EFPN paper's accuracy /
recall / F1 per object size, the FCN paper's segmentation metrics, and torchvision's published
COCO detector scored by this pipeline (``reference``), and the bootstrap standard error of AP over images
(``bootstrap``)."""
from .detection import (
    SIZE_RANGES,
    all_objects_findable,
    ap50_by_size,
    TT100K_SIZE_RANGES,
    coco_evaluate,
    efpn_metrics,
    evaluate_detector,
    greedy_match,
    iou_greedy_match,
    proposal_recall,
    tt100k_metrics,
)
from .bootstrap import bootstrap_ap, bootstrap_ap_difference, bootstrap_miou, bootstrap_ratio
from .segmentation import (ConfusionMatrix, boundary_mask, evaluate_segmentation, membrane_mask, separation_counts,
                           small_region_mask)

__all__ = [
    "coco_evaluate", "ap50_by_size", "proposal_recall", "efpn_metrics", "tt100k_metrics", "greedy_match", "iou_greedy_match",
    "evaluate_detector", "all_objects_findable", "SIZE_RANGES", "TT100K_SIZE_RANGES",
    "bootstrap_ap", "bootstrap_ap_difference", "bootstrap_miou", "bootstrap_ratio", "ConfusionMatrix", "boundary_mask", "small_region_mask",
    "evaluate_segmentation", "membrane_mask", "separation_counts",
    "evaluate_reference", "reference_model",
]


def __getattr__(name: str):
    """``evaluate_reference`` / ``reference_model`` load the detectors: imported when first asked for (so this
    package stays light, and ``python -m course_lib.evaluation.reference`` runs without runpy's double import)."""
    if name in ("evaluate_reference", "reference_model"):
        from . import reference

        return getattr(reference, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
