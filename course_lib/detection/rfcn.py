"""R-FCN (Dai, Li, He & Sun, "R-FCN: Object Detection via Region-based Fully Convolutional Networks",
NeurIPS 2016, arXiv:1605.06409): Faster R-CNN with *no learnable layer per RoI*.

    image -> ResNet conv1 .. conv4_x (C4, stride 16) -> RPN (3x3 conv, 512 channels; 9 anchors)
                                    -> conv5_x "a trous" (stride 1, dilation 2: C5 stays at stride 16)
          -> conv_new_1: 1x1 conv 2048 -> 1024 + ReLU                                  (sec. 2, "Backbone")
          -> rfcn_cls: 1x1 conv to k^2 (C + 1) position-sensitive score maps (k = 7, VOC: 1029)
             rfcn_bbox: 1x1 conv to 4 k^2 class-agnostic box maps (196)    [the official code: 8 k^2 = 392]
          -> per RoI: PSRoI pooling (eq. 1) + a mean over the k x k bins (the vote, eq. 2) -> C + 1 logits
                                                                                      and 4 box deltas

The chapter-5 C4 detector runs conv5_x (9 conv layers, ~1.6 GFLOPs) once per RoI; here everything
up to the score maps runs once per image and a RoI costs one pooling and one mean, so the head's
time is nearly flat in the number of RoIs (``tests/benchmarks/bench_rfcn.py``).

PSRoI pooling (eq. 1): bin (i, j) of a RoI averages, over its pixels, the score map of part (i, j)
only; ``course_lib.ops.ps_roi_pool`` (equal to ``torchvision.ops.ps_roi_pool``) reads input channel
``(c * k + i) * k + j`` for class c, bin row i, bin column j: class-major, the channel layout of the
official Caffe ``PSROIPooling``, so official weights map one to one. The channels only: the bin
geometry differs (torchvision rounds the scaled corners to whole cells and clips the bins to
[0, H-1] x [0, W-1], so it never reads the map's last row and column; Caffe keeps fractional bins).

Voting: the paper's text says "we simply vote by averaging the scores" (sec. 2) while its eq. 2
writes r_c = sum over the k^2 bins; the official code averages (``Pooling AVE`` k x k after
``PSROIPooling``), which :func:`position_sensitive_vote` does. The two differ by the
factor k^2 before the softmax, i.e. by a scaling of the last layer's weights that training absorbs.

Box regression (sec. 2, "class-agnostic bounding box regression"): the paper's 4k^2 maps give one
(t_x, t_y, t_w, t_h) per RoI. The released prototxts give ``rfcn_bbox`` 392 = 8 * 7^2 outputs
("2*4*(7^2) (bg/fg)*(dx, dy, dw, dh)") and train only the foreground 4 (their regression targets
are laid out as for two classes, background and object); ``box_maps=8`` reproduces that layout
(so those weights load) and reads channels 4..7; the background 4 never receive a gradient.

Training (sec. 2 "Training", the official ``rfcn_end2end_ohem`` config): RoI positive at IoU >= 0.5;
the RPN gives 300 proposals per image, *all* of them (plus the ground truth) are scored, and OHEM
back-propagates the 128 with the highest loss (``batch_size_per_image=None``,
``ohem_batch_size_per_image=128`` of :class:`~course_lib.detection.roi_heads.RoIHeads`). Testing:
300 RoIs, NMS 0.3. Images resized to a 600 px shorter side (at most 1000).
"""
from __future__ import annotations

import os
from dataclasses import dataclass

from torch import Tensor, nn

from course_lib.backbones.resnet import IntermediateLayerGetter, ResNet
from course_lib.backbones.width import scale_channels
from course_lib.ops import AnchorGenerator, ps_roi_pool

from .builder import build_detector, read_weights
from .faster_rcnn_c4 import TwoStageConfig, build_resnet
from .generalized_rcnn import FasterRCNN
from .roi_heads import RoIHeads
from .rpn import RPNHead

__all__ = ["RFCN", "RFCNBackbone", "PSScoreMaps", "PSRoIPool", "RFCNRoIHeads", "position_sensitive_vote",
           "rfcn_resnet50", "rfcn_resnet101", "RFCNConfig", "PAPER_RFCN_CONFIG"]

# The paper's VOC setting (sec. 2 and 4.1) with the official code's values where the paper is silent
# (py-R-FCN experiments/cfgs/rfcn_end2end_ohem.yml and the py-faster-rcnn defaults it inherits).
@dataclass(frozen=True)
class RFCNConfig(TwoStageConfig):
    """Chapter 5's two-stage settings plus what R-FCN alone sets: its input size, the RPN's anchors and conv, OHEM and
    the smooth L1's beta."""

    min_size: int = 600
    max_size: int = 1000
    rpn_anchor_sizes: tuple[int, ...] = (128, 256, 512)
    rpn_aspect_ratios: tuple[float, ...] = (0.5, 1.0, 2.0)
    rpn_conv_channels: int = 512
    ohem_batch_size_per_image: int | None = 128
    smooth_l1_beta: float = 1.0


PAPER_RFCN_CONFIG = RFCNConfig(  # what R-FCN changes from Faster R-CNN's settings
    rpn_pre_nms_top_n_train=6000, rpn_post_nms_top_n_train=300, rpn_pre_nms_top_n_test=6000,
    box_batch_size_per_image=None, box_nms_thresh=0.3)


class RFCNBackbone(nn.Module):
    """ResNet conv1 .. conv5_x without average pool and fc, returning ``{"c4": C4, "c5": C5}``, both at
    stride 16 when conv5_x runs a trous (1024 and 2048 channels, fewer for a narrower ``width``). The RPN reads
    ``"c4"`` (conv4_x's last block, ``res4b22`` in ResNet-101), the score maps ``"c5"``."""

    def __init__(self, resnet: ResNet):
        super().__init__()
        self.out_channels = resnet.layer3[-1].conv3.out_channels  # of "c4", the map the RPN reads
        self.c5_channels = resnet.layer4[-1].conv3.out_channels
        if resnet.replace_stride_with_dilation != [False, False, True]:
            raise ValueError("R-FCN's conv5_x runs a trous: build the ResNet with "
                             "replace_stride_with_dilation=[False, False, True] (C5 at stride 16), got "
                             f"{resnet.replace_stride_with_dilation}.")
        self.body = IntermediateLayerGetter(resnet, {"layer3": "c4", "layer4": "c5"})

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        return self.body(x)


def dilate_res5a(resnet: ResNet) -> ResNet:
    """Give res5a's 3x3 convolution dilation 2 too (the official prototxts dilate every 3x3 of conv5_x,
    ``res5a_branch2b`` included; torchvision keeps the first block of a dilated stage at the previous
    dilation). Same weights, one convolution's sampling grid differs."""
    conv = resnet.layer4[0].conv2
    conv.dilation, conv.padding = (2, 2), (2, 2)
    return resnet


class PSScoreMaps(nn.Module):
    """The per-image layers after C5 (sec. 2): ``conv_new_1`` (1x1, 2048 -> 1024, ReLU), then
    ``rfcn_cls`` (1x1 -> k^2 (C + 1) position-sensitive score maps) and ``rfcn_bbox`` (1x1 ->
    ``box_maps`` k^2 box maps: 4 as the paper, 8 as the official code). Names as the official
    prototxts; every weight starts from N(0, 0.01^2), biases 0 (their ``weight_filler``)."""

    def __init__(self, in_channels: int, num_classes: int, k: int = 7, reduced_channels: int = 1024,
                 box_maps: int = 4):
        super().__init__()
        if not isinstance(k, int) or k < 1:
            raise ValueError(f"k (bins per side of the position-sensitive grid) must be an int >= 1, got {k!r}")
        if box_maps not in (4, 8):
            raise ValueError(f"box_maps must be 4 (the paper's 4k^2 class-agnostic maps) or 8 (the official code's "
                             f"8k^2: background and foreground deltas), got {box_maps!r}")
        if num_classes < 2:
            raise ValueError(f"num_classes counts the background too (C + 1), so it must be >= 2, got {num_classes}")
        self.k, self.num_classes, self.box_maps = k, num_classes, box_maps
        self.conv_new_1 = nn.Conv2d(in_channels, reduced_channels, kernel_size=1)
        self.relu = nn.ReLU(inplace=True)
        self.rfcn_cls = nn.Conv2d(reduced_channels, k * k * num_classes, kernel_size=1)
        self.rfcn_bbox = nn.Conv2d(reduced_channels, k * k * box_maps, kernel_size=1)
        for conv in (self.conv_new_1, self.rfcn_cls, self.rfcn_bbox):
            nn.init.normal_(conv.weight, std=0.01)
            nn.init.zeros_(conv.bias)

    def forward(self, c5: Tensor) -> tuple[Tensor, Tensor]:
        """``[N, 2048, H, W]`` -> (``[N, k^2 (C+1), H, W]`` class maps, ``[N, box_maps k^2, H, W]`` box maps)."""
        x = self.relu(self.conv_new_1(c5))
        return self.rfcn_cls(x), self.rfcn_bbox(x)

    def extra_repr(self) -> str:
        return f"k={self.k}, num_classes={self.num_classes}, box_maps={self.box_maps}"


class PSRoIPool(nn.Module):
    """Position-sensitive RoI pooling (eq. 1) of one map of known stride: ``(maps, rois) ->
    [R, maps / k^2, k, k]`` with ``course_lib.ops.ps_roi_pool``."""

    def __init__(self, output_size: int = 7, spatial_scale: float = 1 / 16):
        super().__init__()
        self.output_size, self.spatial_scale = output_size, spatial_scale

    def forward(self, maps: Tensor, rois: list[Tensor]) -> Tensor:
        return ps_roi_pool(maps, rois, self.output_size, self.spatial_scale)

    def extra_repr(self) -> str:
        return f"output_size={self.output_size}, spatial_scale={self.spatial_scale}"


def position_sensitive_vote(pooled: Tensor) -> Tensor:
    """The vote (eq. 2): ``[R, C, k, k] -> [R, C]``, the *mean* of the k^2 bins as the official code
    (``Pooling AVE``); the paper's text writes a sum, k^2 times larger (see the module docstring)."""
    return pooled.mean(dim=(2, 3))


class RFCNRoIHeads(RoIHeads):
    """:class:`RoIHeads` with R-FCN's :meth:`predict`: score maps once per image, then per RoI a
    PSRoI pooling and a mean -- no layer runs per RoI. Sampling, OHEM, the loss and the
    post-processing (class-agnostic boxes, NMS per class) are the base class's.

    Args: ``score_maps`` (:class:`PSScoreMaps`), ``featmap_name`` (the map it reads, ``"c5"``),
    ``spatial_scale`` (1/16), then :class:`RoIHeads`' arguments after its three modules.
    """

    def __init__(self, score_maps: PSScoreMaps, *args, featmap_name: str = "c5", spatial_scale: float = 1 / 16,
                 **kwargs):
        super().__init__(PSRoIPool(score_maps.k, spatial_scale), None, None, *args, **kwargs)
        self.score_maps = score_maps
        self.featmap_name = featmap_name

    def predict(self, features: dict[str, Tensor], proposals: list[Tensor],
                image_shapes: list[tuple[int, int]]) -> tuple[Tensor, Tensor]:
        """Class logits ``[R, C + 1]`` (the vote of each class's k^2 bins) and class-agnostic deltas
        ``[R, 4]`` (the vote of the box maps; with 8 maps per bin, the foreground 4)."""
        if self.featmap_name not in features:
            raise ValueError(f"RFCNRoIHeads reads the feature map {self.featmap_name!r}, but got {list(features)}.")
        cls_maps, box_maps = self.score_maps(features[self.featmap_name])
        class_logits = position_sensitive_vote(self.box_roi_pool(cls_maps, proposals))
        box_regression = position_sensitive_vote(self.box_roi_pool(box_maps, proposals))
        if self.score_maps.box_maps == 8:  # official layout: (background 4, foreground 4); keep the foreground
            box_regression = box_regression[:, 4:]
        return class_logits, box_regression


class RFCN(FasterRCNN):
    """transform -> :class:`RFCNBackbone` (C4, C5) -> RPN on C4 -> :class:`RFCNRoIHeads` on C5 ->
    postprocess: a :class:`FasterRCNN` built with ``roi_heads=RFCNRoIHeads(...)`` and ``rpn_featmap_names=["c4"]``. torchvision's contract (see :mod:`course_lib.detection.generalized_rcnn`): train mode
    returns ``{"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"}``, eval mode one
    ``{"boxes", "labels", "scores"}`` per image in its original pixels."""


NUM_CLASSES_KEY = "roi_heads.score_maps.rfcn_cls.weight"  # [k^2 (C + 1), 1024, 1, 1]


def _num_classes_of(state: dict[str, Tensor], k: int, source: str) -> int:
    key = NUM_CLASSES_KEY
    if key not in state:
        raise ValueError(f"{source} has no {key!r}: it is not an R-FCN state dict (saved from rfcn_resnet50/101).")
    channels = state[key].shape[0]
    if channels % (k * k):
        raise ValueError(f"k={k} does not fit {source}: its rfcn_cls has {channels} output channels, not a multiple "
                         f"of k^2 = {k * k}. Pass the k the weights were trained with.")
    return channels // (k * k)


def _rfcn(depth: int, *, weights, num_classes, weights_backbone, trainable_backbone_layers, k, box_maps,
          dilate_first_block, width, kwargs) -> RFCN:
    stages = {name: kwargs.pop(name) for name in ("rpn", "roi_heads") if name in kwargs}  # given whole
    settings = PAPER_RFCN_CONFIG.keywords()
    unknown = sorted(set(kwargs) - set(settings))
    if unknown:
        raise TypeError(f"rfcn_resnet{depth}() got unexpected keyword arguments {unknown}; "
                        f"it takes {sorted(settings)}, rpn and roi_heads besides its own.")
    config = {**settings, **kwargs}
    if weights is not None:  # rfcn_cls has k^2 (C + 1) rows, not one per class: read C + 1 (and check k) here
        state_dict, source = read_weights(weights)
        found = _num_classes_of(state_dict, k, source)
        if num_classes is not None and num_classes != found:
            raise ValueError(f"num_classes={num_classes} disagrees with {source}, which was trained with "
                             f"num_classes={found} (k={k}); pass num_classes={found} or None.")
        num_classes = found

    def make(*, num_classes, weights_backbone, trainable_layers, norm_layer):
        resnet = build_resnet(depth, weights_backbone=weights_backbone, trainable_layers=trainable_layers,
                              norm_layer=norm_layer, width=width, replace_stride_with_dilation=[False, False, True])
        if dilate_first_block:  # a different sampling grid, the same weights: after loading them is the same
            dilate_res5a(resnet)
        backbone = RFCNBackbone(resnet)
        if "rpn" in stages:
            rpn = dict(rpn=stages["rpn"])
        else:  # the RPN on C4: 3 x 3 anchors, a 512-d 3x3 conv (sec. 2 and 4.1)
            anchors = AnchorGenerator((tuple(config["rpn_anchor_sizes"]),), (tuple(config["rpn_aspect_ratios"]),))
            rpn = dict(rpn_anchor_generator=anchors, rpn_featmap_names=["c4"],
                       rpn_head=RPNHead(backbone.out_channels, anchors.num_anchors_per_location()[0],
                                        conv_channels=scale_channels(config["rpn_conv_channels"], width)))
        roi_heads = stages.get("roi_heads") or RFCNRoIHeads(
            PSScoreMaps(backbone.c5_channels, num_classes, k=k, box_maps=box_maps,
                        reduced_channels=scale_channels(1024, width)),
            **{key: config[f"box_{key}"] for key in ("fg_iou_thresh", "bg_iou_thresh", "batch_size_per_image",
                                                     "positive_fraction", "score_thresh", "nms_thresh",
                                                     "detections_per_img")},
            bbox_reg_weights=config["bbox_reg_weights"], ohem_batch_size_per_image=config["ohem_batch_size_per_image"],
            smooth_l1_beta=config["smooth_l1_beta"])
        rpn_settings = {key: value for key, value in config.items() if key.startswith("rpn_")
                        and key not in ("rpn_anchor_sizes", "rpn_aspect_ratios", "rpn_conv_channels")}
        return RFCN(backbone, min_size=config["min_size"], max_size=config["max_size"], roi_heads=roi_heads, **rpn,
                    **rpn_settings)

    return build_detector(make, f"an R-FCN ResNet-{depth} (k={k}, box_maps={box_maps})", weights=weights,
                          num_classes=num_classes, weights_backbone=weights_backbone,
                          trainable_backbone_layers=trainable_backbone_layers, num_classes_key=NUM_CLASSES_KEY)


def rfcn_resnet101(*, weights: str | os.PathLike | None = None, num_classes: int | None = None,
                   weights_backbone: str | os.PathLike | None = None, trainable_backbone_layers: int | None = None,
                   k: int = 7, box_maps: int = 4, dilate_first_block: bool = True, width: float = 1.0,
                   **kwargs) -> RFCN:
    """R-FCN with ResNet-101, the paper's configuration (:data:`PAPER_RFCN_CONFIG`, module docstring).

    Args:
        weights: a local file with a state dict of this whole model; ``num_classes`` is then read from
            it (a different ``num_classes`` is an error).
        num_classes: object classes + 1 (VOC: 21), torchvision's convention; default: the file's, else 91
            (COCO's ids, as torchvision's builders).
        weights_backbone: a local torchvision ResNet-101 state dict (ImageNet weights). With either
            file batch norm is frozen and conv1 + conv2_x too (3 trainable stages, as the official
            code's ``lr_mult: 0``); without, everything trains with ordinary batch norm.
        k: bins per side of the position-sensitive grid (7; the paper's Table 2 also has 1 and 3).
        box_maps: 4 (the paper, 4k^2 box maps) or 8 (the official code, 8k^2; see the module docstring).
        dilate_first_block: True (the paper and the official code): every 3x3 of conv5_x has dilation 2;
            False: torchvision's ``replace_stride_with_dilation`` layout (res5a's 3x3 undilated).
        width: channel multiplier of the ResNet, the RPN's 512-d conv and the 1024-d ``conv_new_1`` (1.0 = the
            paper's); the course's laptop profile trains a narrower copy of the same network (``PROFILE.detector.width``).
        **kwargs: any key of :data:`PAPER_RFCN_CONFIG`, e.g. ``min_size=300``,
            ``rpn_post_nms_top_n_test=100``, ``ohem_batch_size_per_image=None`` (no OHEM); or ``rpn=`` /
            ``roi_heads=`` to replace a stage whole (as every builder of the course).
    """
    return _rfcn(101, weights=weights, num_classes=num_classes, weights_backbone=weights_backbone,
                 trainable_backbone_layers=trainable_backbone_layers, k=k, box_maps=box_maps,
                 dilate_first_block=dilate_first_block, width=width, kwargs=kwargs)


def rfcn_resnet50(*, weights: str | os.PathLike | None = None, num_classes: int | None = None,
                  weights_backbone: str | os.PathLike | None = None, trainable_backbone_layers: int | None = None,
                  k: int = 7, box_maps: int = 4, dilate_first_block: bool = True, width: float = 1.0,
                  **kwargs) -> RFCN:
    """R-FCN with ResNet-50; as :func:`rfcn_resnet101` (a torchvision ResNet-50 state dict for ``weights_backbone``)."""
    return _rfcn(50, weights=weights, num_classes=num_classes, weights_backbone=weights_backbone,
                 trainable_backbone_layers=trainable_backbone_layers, k=k, box_maps=box_maps,
                 dilate_first_block=dilate_first_block, width=width, kwargs=kwargs)
