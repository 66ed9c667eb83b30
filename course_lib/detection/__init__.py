"""Two-stage detectors: the R-CNN family composed like torchvision's detection package.

    transform -> backbone -> (neck) -> RPN -> RoI heads -> post-processing

Every piece is its own small module (``transform.py``, ``rpn.py``, ``roi_heads.py``,
``generalized_rcnn.py``) with torchvision's names, so its checkpoints load as they are.
"""
from .generalized_rcnn import FasterRCNN, GeneralizedRCNN, detection_loss
from .roi_heads import FastRCNNPredictor, RoIHeads, TwoMLPHead
from .rpn import RegionProposalNetwork, RPNHead
from .transform import GeneralizedRCNNTransform
from .faster_rcnn_c4 import SingleLevelRoIPool, fasterrcnn_resnet50_c4, fasterrcnn_resnet101_c4
from .selective_search import selective_search
from .rcnn import RCNN, rcnn_vgg16, warp_regions
from .fast_rcnn import FastRCNN, FastRCNNRoIHeads, fast_rcnn_vgg16
from .fpn import BackboneWithFPN, FeaturePyramidNetwork, LastLevelMaxPool
from .faster_rcnn_fpn import fasterrcnn_resnet50_fpn, fasterrcnn_resnet101_fpn, resnet_fpn_backbone
from .rfcn import RFCN, RFCNRoIHeads, rfcn_resnet50, rfcn_resnet101

__all__ = [
    "GeneralizedRCNN", "FasterRCNN", "detection_loss", "GeneralizedRCNNTransform", "RPNHead", "RegionProposalNetwork",
    "RoIHeads", "TwoMLPHead", "FastRCNNPredictor",
    "fasterrcnn_resnet50_c4", "fasterrcnn_resnet101_c4", "SingleLevelRoIPool",
    "selective_search", "RCNN", "rcnn_vgg16", "warp_regions", "FastRCNN", "FastRCNNRoIHeads", "fast_rcnn_vgg16",
    "FeaturePyramidNetwork", "LastLevelMaxPool", "BackboneWithFPN",
    "fasterrcnn_resnet50_fpn", "fasterrcnn_resnet101_fpn", "resnet_fpn_backbone",
    "RFCN", "RFCNRoIHeads", "rfcn_resnet50", "rfcn_resnet101",
]
