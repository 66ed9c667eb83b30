"""Boxes, suppression, anchors and RoI pooling in pure PyTorch.

Same names, signatures and semantics as ``torchvision.ops`` (and the helpers of
``torchvision.models.detection``) so that what students learn transfers; every
function is tested equal to its torchvision counterpart in ``tests/ops``.
"""
from .boxes import (
    box_area,
    box_convert,
    box_iou,
    clip_boxes_to_image,
    generalized_box_iou,
    remove_small_boxes,
)
from .box_coder import BoxCoder
from .nms import batched_nms, nms
from .pooling import roi_align, roi_pool
from .ps_pooling import ps_roi_align, ps_roi_pool
from .poolers import LevelMapper, MultiScaleRoIAlign
from .image_list import ImageList
from .anchors import AnchorGenerator, feature_map_sizes
from .matcher import BalancedPositiveNegativeSampler, Matcher

__all__ = [
    "box_area", "box_convert", "box_iou", "clip_boxes_to_image", "generalized_box_iou",
    "remove_small_boxes", "BoxCoder", "nms", "batched_nms", "roi_pool", "roi_align",
    "ps_roi_pool", "ps_roi_align", "LevelMapper", "MultiScaleRoIAlign", "ImageList",
    "AnchorGenerator", "feature_map_sizes", "Matcher", "BalancedPositiveNegativeSampler",
]
