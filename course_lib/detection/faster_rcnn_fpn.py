"""Faster R-CNN with a ResNet-FPN backbone (Lin et al., CVPR 2017, sec. 4), built like torchvision's
``fasterrcnn_resnet50_fpn`` so that its state dict loads as it is::

    transform   shorter side 800, longer side <= 1333, ImageNet normalisation, pad to a multiple of 32
    backbone    body: ResNet C2..C5 ("0".."3")  ->  fpn: P2..P5 ("0".."3") + P6 ("pool"), d = 256
    rpn         one shared 3x3 + sibling 1x1 head on P2..P6, one anchor size per level (32^2 on P2 ...
                512^2 on P6) x 3 aspect ratios = 15 anchors (sec. 4.1); top-n per level before NMS
    roi_heads   RoIAlign 7x7 (sampling ratio 2) from P_k, k = floor(4 + log2(sqrt(wh) / 224)) clamped to
                [2, 5] (eq. 1), then two 1024-d fully connected layers and the class / box predictors

Defaults are torchvision's (min_size 800, max_size 1333, RPN pre/post NMS top-n 2000/2000 in training and
1000/1000 in testing, 100 detections per image ...); every ``FasterRCNN`` keyword can be passed on.

Weights are local files (nothing is downloaded in this course): ``weights`` = a whole detector's state dict
(e.g. torchvision's ``fasterrcnn_resnet50_fpn_coco-258fb6c6.pth``, or ``torch.save(model.state_dict(), path)``),
``weights_backbone`` = a torchvision ResNet's ImageNet state dict. As in torchvision, giving either one
freezes the batch norms (``FrozenBatchNorm2d``) and the first stages (``trainable_backbone_layers``, default 3);
without weights everything trains and batch norm is ordinary ``nn.BatchNorm2d``.

The paper's ablations (Tables 1-2, rows (d)-(f)) are three switches, everything else unchanged:
``fpn_top_down=False`` (d) bottom-up pyramid, ``fpn_lateral=False`` (e) top-down pyramid without 1x1
lateral connections, ``rois_from_p2_only=True`` (f) every RoI pooled from the finest level P2.
"""
from __future__ import annotations

import os

from torch import nn

from course_lib.backbones.resnet import FrozenBatchNorm2d, overwrite_eps, resnet_body
from course_lib.backbones.width import scale_channels
from course_lib.ops import MultiScaleRoIAlign

from .builder import build_detector
from .fpn import BackboneWithFPN, FeaturePyramidNetwork, LastLevelMaxPool, fpn_anchor_generator
from .generalized_rcnn import FasterRCNN
from .roi_heads import FastRCNNPredictor, TwoMLPHead

__all__ = ["resnet_fpn_backbone", "fasterrcnn_resnet50_fpn", "fasterrcnn_resnet101_fpn"]

# torchvision's published detection weights were trained with FrozenBatchNorm2d(eps=0) (pytorch/vision#2933)
PUBLISHED_WEIGHTS_BN_EPS = 0.0


def resnet_fpn_backbone(depth: int = 50, *, weights_backbone: str | os.PathLike | None = None,
                        trainable_layers: int = 3, norm_layer=FrozenBatchNorm2d, out_channels: int | None = None,
                        top_down: bool = True, lateral: bool = True, returned_layers: list[int] | None = None,
                        extra_blocks: nn.Module | None = None, width: float = 1.0) -> BackboneWithFPN:
    """ResNet-``depth`` C2..C5 (``body``) followed by an FPN with P6 (``fpn``): every level has ``out_channels``
    (default d = 256, the paper's, times ``width``).

    C_k has 256 * 2^(k-2) channels (ResNet-50/101: 256, 512, 1024, 2048) and stride 2^k; the FPN's
    ``in_channels_list`` is read from the body. ``returned_layers`` (default [1, 2, 3, 4]) and ``extra_blocks``
    (default ``LastLevelMaxPool()``: P6) as in torchvision's ``_resnet_fpn_extractor``. ``width``: the channel
    multiplier of the whole backbone (1.0 = the paper's), for the course's laptop profile.
    """
    out_channels = scale_channels(256, width) if out_channels is None else out_channels
    body = resnet_body(depth, returned_layers=returned_layers, trainable_layers=trainable_layers,
                       norm_layer=norm_layer, weights=weights_backbone, width=width)
    extra_blocks = LastLevelMaxPool() if extra_blocks is None else extra_blocks
    fpn = FeaturePyramidNetwork(body.out_channels_list, out_channels, extra_blocks, top_down=top_down, lateral=lateral)
    return BackboneWithFPN(body, fpn, out_channels)


def _fasterrcnn_resnet_fpn(depth: int, *, weights, num_classes, weights_backbone, trainable_backbone_layers,
                           fpn_top_down, fpn_lateral, rois_from_p2_only, frozen_bn_eps, width=1.0,
                           **kwargs) -> FasterRCNN:
    if rois_from_p2_only:
        if "box_roi_pool" in kwargs:
            raise ValueError("Pass either rois_from_p2_only=True or box_roi_pool, not both.")
        # (f): the same 7x7 RoIAlign, but with a single level the level mapper sends every RoI to P2
        kwargs["box_roi_pool"] = MultiScaleRoIAlign(featmap_names=["0"], output_size=7, sampling_ratio=2)
    anchors = {key: kwargs.pop(key) for key in ("rpn_anchor_sizes", "rpn_aspect_ratios") if key in kwargs}
    if anchors:  # the spelling of every builder: one size per level here (P2..P6)
        if kwargs.get("rpn_anchor_generator") is not None:
            raise ValueError("Pass rpn_anchor_sizes or rpn_anchor_generator (rpn_aspect_ratios too), not both.")
        kwargs["rpn_anchor_generator"] = fpn_anchor_generator(anchors.get("rpn_anchor_sizes"),
                                                              anchors.get("rpn_aspect_ratios", (0.5, 1.0, 2.0)))

    def make(num_classes, weights_backbone, trainable_layers, norm_layer):
        backbone = resnet_fpn_backbone(depth, weights_backbone=weights_backbone, trainable_layers=trainable_layers,
                                       norm_layer=norm_layer, top_down=fpn_top_down, lateral=fpn_lateral, width=width)
        if width != 1.0 and not {"box_head", "box_predictor", "roi_heads"} & set(kwargs):
            # the two fully connected layers (fc6, fc7: 1024-d, sec. 4.2) narrowed like the backbone
            pool = kwargs.get("box_roi_pool")
            resolution = 7 if pool is None else pool.output_size[0]
            representation = scale_channels(1024, width)
            return FasterRCNN(backbone, None, box_head=TwoMLPHead(backbone.out_channels * resolution ** 2,
                                                                  representation),
                              box_predictor=FastRCNNPredictor(representation, num_classes), **kwargs)
        return FasterRCNN(backbone, num_classes=num_classes, **kwargs)

    model = build_detector(make, f"a Faster R-CNN ResNet-{depth}-FPN", weights=weights, num_classes=num_classes,
                           weights_backbone=weights_backbone, trainable_backbone_layers=trainable_backbone_layers)
    if weights is not None:
        overwrite_eps(model, PUBLISHED_WEIGHTS_BN_EPS if frozen_bn_eps is None else frozen_bn_eps)
    elif frozen_bn_eps is not None:
        overwrite_eps(model, frozen_bn_eps)
    return model


def fasterrcnn_resnet50_fpn(*, weights: str | os.PathLike | None = None, num_classes: int | None = None,
                            weights_backbone: str | os.PathLike | None = None,
                            trainable_backbone_layers: int | None = None,
                            fpn_top_down: bool = True, fpn_lateral: bool = True, rois_from_p2_only: bool = False,
                            frozen_bn_eps: float | None = None, width: float = 1.0, **kwargs) -> FasterRCNN:
    """Faster R-CNN ResNet-50-FPN with torchvision's module names and defaults (see the module docstring).

    Args:
        weights: path of a detector state dict; it fixes ``num_classes`` when that is not given, replaces
            ``weights_backbone``, and sets the frozen batch norms' eps to 0.0 -- the convention of torchvision's
            published COCO weights, which were trained that way (``_utils.overwrite_eps``). For a checkpoint
            trained with eps = 1e-5 (e.g. one of yours made with ``weights_backbone``), pass ``frozen_bn_eps=1e-5``.
        num_classes: classes including the background (default 91, COCO's ids).
        weights_backbone: path of a torchvision ResNet-50 ImageNet state dict.
        trainable_backbone_layers: ResNet stages to fine-tune, counted from conv5_x (0-5; default 3 with weights,
            5 without).
        fpn_top_down / fpn_lateral / rois_from_p2_only: the paper's ablations (d), (e), (f).
        frozen_bn_eps: eps of the frozen batch norms (default: 0.0 with ``weights``, else 1e-5).
        width: channel multiplier of the backbone, the FPN's d = 256 and the 1024-d box head (1.0 = the paper's);
            the course's laptop profile trains a narrower copy of the same network (``PROFILE.detector.width``).
        **kwargs: any ``FasterRCNN`` keyword (``min_size``, ``rpn_post_nms_top_n_train``, ``box_roi_pool``,
            ``roi_heads`` ...), and ``rpn_anchor_sizes`` (one per level P2..P6; default 32 ... 512) /
            ``rpn_aspect_ratios`` (0.5, 1, 2), the anchor keywords of every builder of the course.
    """
    return _fasterrcnn_resnet_fpn(50, weights=weights, num_classes=num_classes, weights_backbone=weights_backbone,
                                  trainable_backbone_layers=trainable_backbone_layers, fpn_top_down=fpn_top_down,
                                  fpn_lateral=fpn_lateral, rois_from_p2_only=rois_from_p2_only,
                                  frozen_bn_eps=frozen_bn_eps, width=width, **kwargs)


def fasterrcnn_resnet101_fpn(*, weights: str | os.PathLike | None = None, num_classes: int | None = None,
                             weights_backbone: str | os.PathLike | None = None,
                             trainable_backbone_layers: int | None = None,
                             fpn_top_down: bool = True, fpn_lateral: bool = True, rois_from_p2_only: bool = False,
                             frozen_bn_eps: float | None = None, width: float = 1.0, **kwargs) -> FasterRCNN:
    """Faster R-CNN ResNet-101-FPN: the same as :func:`fasterrcnn_resnet50_fpn` with 23 blocks in conv4_x.

    torchvision has no builder for it; its equivalent is
    ``FasterRCNN(resnet_fpn_backbone(backbone_name="resnet101", ...), num_classes)``, whose keys this model shares.
    """
    return _fasterrcnn_resnet_fpn(101, weights=weights, num_classes=num_classes, weights_backbone=weights_backbone,
                                  trainable_backbone_layers=trainable_backbone_layers, fpn_top_down=fpn_top_down,
                                  fpn_lateral=fpn_lateral, rois_from_p2_only=rois_from_p2_only,
                                  frozen_bn_eps=frozen_bn_eps, width=width, **kwargs)
