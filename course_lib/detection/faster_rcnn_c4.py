"""Faster R-CNN with a ResNet "C4" backbone: the original, single-scale layout (Ren et al., NeurIPS
2015) with the ResNet design of He et al. (CVPR 2016, appendix A), as in Detectron's R-50-C4.

    image -> conv1 .. conv4_x (C4: stride 16, 1024 channels)
          -> RPN on C4: 3x3 conv, 9 anchors per position (scales 128, 256, 512 x ratios 1:2, 1:1, 2:1)
          -> RoIAlign 14x14 on C4 (RoIPool in the 2015 paper)
          -> conv5_x as the box head (first block stride 2: 14x14 -> 7x7), global average pool -> 2048-d
          -> cls_score (K + 1), bbox_pred (4 (K + 1))

Unlike the FPN model, the 9 conv layers of conv5_x run once *per RoI*: about 1.6 GFLOPs of
forward pass per RoI, so the cost grows with the number of RoIs. And every object, small or
large, is seen through the one stride-16 map C4; the FPN review in the course's sources quotes
21.9 AP for Faster R-CNN (C4) against 36.2 AP with FPN on COCO, 5.8 against 18.2 on small objects.

Paper configuration (py-faster-rcnn's ``config.py``): RPN pre-/post-NMS top-n 12000/2000 in
training, 6000/300 in testing, NMS 0.7; anchors labelled at 0.7/0.3, 256 per image, half
positive; RoIs labelled at 0.5, 512 per image, 25% foreground; box weights (10, 10, 5, 5);
score threshold 0.05, NMS 0.5, 100 detections. Every one is a keyword of the constructors.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor, nn

from course_lib.backbones.resnet import IntermediateLayerGetter, ResNet, build_resnet, unfreeze_batch_norm
from course_lib.ops import AnchorGenerator, roi_align, roi_pool

from .builder import build_detector
from .generalized_rcnn import FasterRCNN
from .roi_heads import FastRCNNPredictor, init_like_fast_rcnn

__all__ = ["TwoStageConfig", "ResNetC4", "ResNetC5Head", "SingleLevelRoIPool", "build_resnet", "fasterrcnn_resnet50_c4",
           "fasterrcnn_resnet101_c4"]

# 3 scales x 3 aspect ratios = 9 anchors per C4 position (Faster R-CNN sec. 3.1.1)
PAPER_ANCHOR_SIZES, PAPER_ASPECT_RATIOS = (128, 256, 512), (0.5, 1.0, 2.0)
@dataclass(frozen=True)
class TwoStageConfig:
    """The paper's settings of a two-stage detector's RPN and RoI heads: the builder's keywords, in the one form of
    the course's configuration (frozen dataclasses, as :mod:`course_lib.profiles`' groups). A later chapter's
    detector subclasses it and states only what its paper changes (R-FCN: :data:`~course_lib.detection.rfcn.
    PAPER_RFCN_CONFIG`); ``dataclasses.replace`` makes a variant."""

    rpn_pre_nms_top_n_train: int = 12000
    rpn_pre_nms_top_n_test: int = 6000
    rpn_post_nms_top_n_train: int = 2000
    rpn_post_nms_top_n_test: int = 300
    rpn_nms_thresh: float = 0.7
    rpn_fg_iou_thresh: float = 0.7
    rpn_bg_iou_thresh: float = 0.3
    rpn_batch_size_per_image: int = 256
    rpn_positive_fraction: float = 0.5
    box_fg_iou_thresh: float = 0.5
    box_bg_iou_thresh: float = 0.5
    box_batch_size_per_image: int | None = 512
    box_positive_fraction: float = 0.25
    bbox_reg_weights: tuple[float, float, float, float] = (10.0, 10.0, 5.0, 5.0)
    box_score_thresh: float = 0.05
    box_nms_thresh: float = 0.5
    box_detections_per_img: int = 100

    def keywords(self) -> dict:
        """The settings as a builder's keyword arguments."""
        return dataclasses.asdict(self)


PAPER_C4_CONFIG = TwoStageConfig()


class ResNetC4(nn.Module):
    """The shared trunk: a ResNet up to conv4_x, returning ``{"0": C4}`` (stride 16, 1024 channels;
    ``out_channels`` is read from conv4_x, so a narrower ResNet -- ``width`` -- has fewer)."""

    def __init__(self, resnet: ResNet):
        super().__init__()
        self.body = IntermediateLayerGetter(resnet, {"layer3": "0"})
        self.out_channels = resnet.layer3[-1].conv3.out_channels

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        return self.body(x)


class ResNetC5Head(nn.Module):
    """conv5_x as the per-RoI box head (He et al. 2016, appendix A): RoI features [R, 1024, 14, 14]
    -> ``layer4`` (stride 2) -> [R, 2048, 7, 7] -> global average pool -> [R, 2048] (``out_channels``)."""

    def __init__(self, layer4: nn.Module):
        super().__init__()
        self.layer4 = layer4
        self.out_channels = layer4[-1].conv3.out_channels

    def forward(self, x: Tensor) -> Tensor:
        return F.adaptive_avg_pool2d(self.layer4(x), 1).flatten(1)


class SingleLevelRoIPool(nn.Module):
    """RoI pooling on one feature map of known stride: ``method="align"`` (RoIAlign, Mask R-CNN,
    ``sampling_ratio`` 0 = adaptive) or ``"pool"`` (the RoI max pooling of Fast R-CNN sec. 2.1 and
    the 2015 Faster R-CNN). Same call as ``MultiScaleRoIAlign``: ``(features, proposals, image_shapes)``."""

    def __init__(self, featmap_name: str = "0", output_size: int = 14, spatial_scale: float = 1 / 16,
                 sampling_ratio: int = 0, method: str = "align"):
        super().__init__()
        if method not in ("align", "pool"):
            raise ValueError(f"method must be 'align' (RoIAlign) or 'pool' (RoIPool), got {method!r}")
        self.featmap_name = featmap_name
        self.output_size = (output_size, output_size)
        self.spatial_scale = spatial_scale
        self.sampling_ratio = sampling_ratio
        self.method = method

    def forward(self, features: dict[str, Tensor], proposals: list[Tensor],
                image_shapes: list[tuple[int, int]] | None = None) -> Tensor:
        x = features[self.featmap_name]
        if self.method == "pool":
            return roi_pool(x, proposals, self.output_size, self.spatial_scale)
        return roi_align(x, proposals, self.output_size, self.spatial_scale, self.sampling_ratio, aligned=False)

    def extra_repr(self) -> str:
        return (f"featmap_name={self.featmap_name!r}, output_size={self.output_size}, "
                f"spatial_scale={self.spatial_scale}, method={self.method!r}")


def _fasterrcnn_c4(depth: int, *, weights, num_classes, weights_backbone, trainable_backbone_layers,
                   width=1.0, head_batch_norm="frozen", **kwargs) -> FasterRCNN:
    if head_batch_norm not in ("frozen", "trainable"):
        raise ValueError(f"head_batch_norm must be 'frozen' (the papers') or 'trainable', got {head_batch_norm!r}")
    if "box_predictor" in kwargs:
        raise ValueError("fasterrcnn_resnet*_c4 builds its box predictor for num_classes (initialised as in Fast "
                         "R-CNN); to use another one, build the model and replace model.roi_heads.box_predictor.")

    def make(num_classes, weights_backbone, trainable_layers, norm_layer):
        resnet = build_resnet(depth, weights_backbone=weights_backbone, trainable_layers=trainable_layers,
                              norm_layer=norm_layer, width=width)
        config = {**PAPER_C4_CONFIG.keywords(), **kwargs}
        anchor_sizes = tuple(config.pop("rpn_anchor_sizes", PAPER_ANCHOR_SIZES))
        aspect_ratios = tuple(config.pop("rpn_aspect_ratios", PAPER_ASPECT_RATIOS))
        # the C4 pieces, unless given: the paper's anchors, 14x14 RoIAlign on C4, conv5_x as the box head
        if config.get("rpn") is None and config.get("rpn_anchor_generator") is None:
            config["rpn_anchor_generator"] = AnchorGenerator((anchor_sizes,), (aspect_ratios,))
        elif {"rpn_anchor_sizes", "rpn_aspect_ratios"} & set(kwargs):
            raise ValueError("Pass rpn_anchor_sizes or rpn_anchor_generator (rpn_aspect_ratios too), not both.")
        if config.get("roi_heads") is None:
            if config.get("box_roi_pool") is None:
                config["box_roi_pool"] = SingleLevelRoIPool("0", output_size=14, spatial_scale=1 / 16, sampling_ratio=0)
            if config.get("box_head") is None:
                config["box_head"] = ResNetC5Head(resnet.layer4)
                if head_batch_norm == "trainable":  # only a pretrained (frozen) conv5_x has anything to unfreeze
                    unfreeze_batch_norm(config["box_head"])
            config["box_predictor"] = init_like_fast_rcnn(FastRCNNPredictor(resnet.layer4[-1].conv3.out_channels,
                                                                            num_classes))
        return FasterRCNN(ResNetC4(resnet), None, **config)

    return build_detector(make, f"a Faster R-CNN ResNet-{depth}-C4", weights=weights, num_classes=num_classes,
                          weights_backbone=weights_backbone, trainable_backbone_layers=trainable_backbone_layers)


def fasterrcnn_resnet50_c4(*, weights: str | os.PathLike | None = None, num_classes: int | None = None,
                           weights_backbone: str | os.PathLike | None = None,
                           trainable_backbone_layers: int | None = None, width: float = 1.0,
                           head_batch_norm: str = "frozen", **kwargs) -> FasterRCNN:
    """Faster R-CNN, ResNet-50-C4, paper configuration (see the module docstring); torchvision's builder shape.

    Args:
        weights: a local file with a state dict of this whole model (``torch.save(model.state_dict(), path)``);
            it fixes ``num_classes`` when that is not given.
        num_classes: object classes + 1 (background); default: the file's, else 91 (COCO's ids, as torchvision).
        weights_backbone: a local file with a torchvision ResNet-50 state dict (ImageNet weights).
            With either file the batch norm is frozen and the first ``5 - trainable_backbone_layers``
            stages too (default 3 trainable); without, the model trains from scratch with ordinary
            batch norm and every stage trainable.
        width: the ResNet's channel multiplier (1.0 = the paper's; the course's laptop profile trains a
            narrower copy of the same network, ``PROFILE.detector.width``).
        head_batch_norm: the conv5_x box head's batch norm when the backbone is pretrained: ``"frozen"`` (the
            papers', torchvision's) or ``"trainable"`` (``PROFILE.detector.c4_head_batch_norm``: ``nn.BatchNorm2d``
            starting from the pretrained statistics, re-estimated on the RoIs). The ``cpu`` profile's control: its
            C4 reached AP50 0.06-0.07 after 200 steps with the head's batch norm frozen (three learning rates,
            AdamW and SGD) and 0.20-0.24 with it trainable (two rates), the RPN's recall the same
            (AR@300 0.23-0.27): the head, not the proposals. Its pretraining classified 64-px crops, so conv5_x
            saw 4 x 4 maps, not the 14 x 14 that ImageNet's 224-px crops give it and C4's RoIAlign pools.
        **kwargs: any :class:`FasterRCNN` keyword, overriding the paper's values, e.g. ``min_size`` (the course
            passes ``PROFILE.resize.faster_rcnn.min_size``), ``rpn_anchor_sizes=(64, 128, 256)`` (the 3 scales; the paper's
            128, 256, 512 are for 600-px images), ``rpn_post_nms_top_n_test=100`` or
            ``box_roi_pool=SingleLevelRoIPool(method="pool")``.
    """
    return _fasterrcnn_c4(50, weights=weights, num_classes=num_classes, weights_backbone=weights_backbone,
                          trainable_backbone_layers=trainable_backbone_layers, width=width,
                          head_batch_norm=head_batch_norm, **kwargs)


def fasterrcnn_resnet101_c4(*, weights: str | os.PathLike | None = None, num_classes: int | None = None,
                            weights_backbone: str | os.PathLike | None = None,
                            trainable_backbone_layers: int | None = None, width: float = 1.0,
                            head_batch_norm: str = "frozen", **kwargs) -> FasterRCNN:
    """Faster R-CNN, ResNet-101-C4 (the model of He et al. 2016's COCO results); as
    :func:`fasterrcnn_resnet50_c4` with a torchvision ResNet-101 state dict for ``weights_backbone``."""
    return _fasterrcnn_c4(101, weights=weights, num_classes=num_classes, weights_backbone=weights_backbone,
                          trainable_backbone_layers=trainable_backbone_layers, width=width,
                          head_batch_norm=head_batch_norm, **kwargs)
