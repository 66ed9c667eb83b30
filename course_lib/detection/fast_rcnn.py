"""Fast R-CNN (Girshick, "Fast R-CNN", ICCV 2015): one CNN pass per image, RoI pooling and
a multi-task head trained end to end.

R-CNN runs its CNN once per proposal. Fast R-CNN runs the convolutional layers once per
image and cuts every proposal's features out of the shared feature map (Figure 1)::

    images, proposals -> transform (normalise, resize to a 600 px shorter side, batch)
      -> backbone: VGG16 up to conv5_3 (stride 16)
      -> RoI max pooling of each proposal to 7 x 7 (section 2.1), in place of pool5
      -> box head: fc6, fc7 (4096)
      -> predictor: cls_score (K+1-way softmax) and bbox_pred (4 offsets per class), the
         ``FastRCNNPredictor`` of :mod:`course_lib.detection.roi_heads` initialised as the
         paper (section 2.3, ``init_like_fast_rcnn`` of ``roi_heads.py``, shared with chapter 5)
      -> training: sampled RoIs and the multi-task loss (section 2.3, eq. 1)
         testing: class-specific boxes, per-class NMS (section 3)

The second stage -- sampling, the loss, the per-class NMS of R-CNN -- is
:class:`~course_lib.detection.roi_heads.RoIHeads`, the one that chapters 5-8 use on an RPN's
proposals; :class:`FastRCNNRoIHeads` only gives it this paper's settings: 64 RoIs per image, 25%
foreground, background IoU in [0.1, 0.5), smooth L1 with beta = 1, NMS at 0.3.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..backbones.vgg import VGG16
from ..ops import roi_pool
from .rcnn import clean_proposals
from .roi_heads import FastRCNNPredictor, RoIHeads, fast_rcnn_loss, init_like_fast_rcnn
from .transform import GeneralizedRCNNTransform, check_targets, resize_boxes

__all__ = [
    "RoIPool",
    "VGG16Backbone",
    "VGG16BoxHead",
    "smooth_l1",
    "fast_rcnn_loss",
    "FastRCNNRoIHeads",
    "FastRCNN",
    "fast_rcnn_vgg16",
]


class RoIPool(nn.Module):
    """RoI max pooling (section 2.1): each RoI, projected onto the feature map (``spatial_scale``
    = 1/16 for conv5_3), is divided into an ``output_size`` grid of sub-windows of about
    h/H x w/W cells, each max-pooled: a fixed-size map for any box."""

    def __init__(self, output_size: int | tuple[int, int] = 7, spatial_scale: float = 1 / 16):
        super().__init__()
        self.output_size, self.spatial_scale = output_size, spatial_scale

    def forward(self, features: Tensor, rois: list[Tensor], image_shapes: list[tuple[int, int]] | None = None) -> Tensor:
        """``image_shapes`` is not needed (the scale is known); it is the pooler call of :class:`RoIHeads`."""
        return roi_pool(features, rois, self.output_size, self.spatial_scale)

    def extra_repr(self) -> str:
        return f"output_size={self.output_size}, spatial_scale={self.spatial_scale}"


class VGG16Backbone(nn.Module):
    """VGG16's convolutional layers up to conv5_3 and its ReLU (torchvision's ``features[:30]``):
    stride 16, ``out_channels`` = 512 at full width. pool5 is what RoI pooling replaces."""

    def __init__(self, vgg: VGG16):
        super().__init__()
        last = vgg.layer_names.index("relu5_3")
        self.features = vgg.features[:last + 1]
        self.out_channels = vgg.out_channels["conv5_3"]

    def forward(self, x: Tensor) -> Tensor:
        return self.features(x)


class VGG16BoxHead(nn.Module):
    """VGG16's fc6 and fc7 reading the 7 x 7 RoI-pooled map where they used to read pool5
    (section 2.2: "the last max pooling layer is replaced by a RoI pooling layer").

    The VGG16 of :mod:`course_lib.backbones.vgg` stores fc6 as a 7 x 7 convolution and fc7 as
    a 1 x 1 one; on a 7 x 7 input they are exactly the fully connected layers."""

    def __init__(self, vgg: VGG16):
        super().__init__()
        if not vgg.fully_connected:
            raise ValueError("The Fast R-CNN box head reuses fc6/fc7: build the VGG16 with fully_connected=True.")
        self.fc6, self.relu6, self.drop6 = vgg.fc6, vgg.relu6, vgg.drop6
        self.fc7, self.relu7, self.drop7 = vgg.fc7, vgg.relu7, vgg.drop7
        self.out_channels = vgg.out_channels["fc7"]

    def forward(self, x: Tensor) -> Tensor:
        x = self.drop6(self.relu6(_fully_connected(self.fc6, x)))
        x = self.drop7(self.relu7(_fully_connected(self.fc7, x[:, :, None, None])))
        return x


def _fully_connected(conv: nn.Conv2d, x: Tensor) -> Tensor:
    """``conv(x).flatten(1)`` for a kernel as large as ``x`` (fc6: 7 x 7 on the 7 x 7 pooled map): the matrix product
    it is, reading the weight in the order it is stored -- in channels-last (``fit`` on the CPU) the convolution
    copied fc6's weight to another layout at every step, forward and backward: 89 -> 55 CPU-ms a step for fc6 + fc7 at
    the cpu profile's sizes."""
    w = conv.weight
    if x.shape[-2:] != w.shape[-2:] or conv.groups != 1 or conv.padding != (0, 0) or conv.dilation != (1, 1):
        return conv(x).flatten(1)
    if not w.is_contiguous() and w.is_contiguous(memory_format=torch.channels_last):
        w, x = w.permute(0, 2, 3, 1), x.permute(0, 2, 3, 1)  # (out, kh, kw, in): a view of the stored weight
    return F.linear(x.flatten(1), w.flatten(1), conv.bias)


def smooth_l1(x: Tensor, beta: float = 1.0) -> Tensor:
    """Eq. 3: 0.5 x^2 if |x| < 1, |x| - 0.5 otherwise (``beta`` = 1; generalised as
    0.5 x^2 / beta if |x| < beta, |x| - 0.5 beta otherwise). Less sensitive to outliers than L2.
    The loss (:func:`~course_lib.detection.roi_heads.fast_rcnn_loss`) uses torch's equal
    ``F.smooth_l1_loss``; this is the formula to plot and read."""
    ax = x.abs()
    return torch.where(ax < beta, 0.5 * x ** 2 / beta, ax - 0.5 * beta)


class FastRCNNRoIHeads(RoIHeads):
    """Everything after the backbone: :class:`~course_lib.detection.roi_heads.RoIHeads` -- sample RoIs
    (training), pool, classify and regress, then the loss (eq. 1, :func:`fast_rcnn_loss`) or the detections
    (R-CNN's per-class NMS) -- with the Fast R-CNN paper's settings. Chapter 5 runs the same stage on an
    RPN's proposals; a variant overrides :meth:`predict` only.

    Args:
        box_roi_pool: RoI pooling (7 x 7, scale 1/16).
        box_head: pooled features -> vectors (fc6, fc7).
        box_predictor: vectors -> (class logits, class-specific offsets).
        rois_per_image: R / N = 128 / 2 = 64 in the paper.
        positive_fraction: 0.25; ``fg_iou_thresh`` 0.5; ``bg_iou_thresh`` [0.1, 0.5).
        bbox_reg_weights: (10, 10, 5, 5): the targets normalised "to have zero mean and unit
            variance" with the standard deviations (0.1, 0.1, 0.2, 0.2) of the authors' code.
        box_loss_weight: lambda of eq. 1 (1). ``smooth_l1_beta``: 1 (eq. 3).
        score_thresh, nms_thresh, detections_per_img: test-time post-processing (NMS at 0.3, the
            authors' code).
    """

    def __init__(
        self,
        box_roi_pool: nn.Module,
        box_head: nn.Module,
        box_predictor: nn.Module,
        *,
        rois_per_image: int = 64,
        positive_fraction: float = 0.25,
        fg_iou_thresh: float = 0.5,
        bg_iou_thresh: tuple[float, float] = (0.1, 0.5),
        bbox_reg_weights: tuple[float, float, float, float] = (10.0, 10.0, 5.0, 5.0),
        box_loss_weight: float = 1.0,
        smooth_l1_beta: float = 1.0,
        score_thresh: float = 0.05,
        nms_thresh: float = 0.3,
        detections_per_img: int = 100,
    ):
        super().__init__(box_roi_pool, box_head, box_predictor, fg_iou_thresh, bg_iou_thresh, rois_per_image,
                         positive_fraction, bbox_reg_weights, score_thresh, nms_thresh, detections_per_img,
                         box_loss_weight=box_loss_weight, smooth_l1_beta=smooth_l1_beta)


class FastRCNN(nn.Module):
    """Fast R-CNN: ``transform -> backbone -> roi_heads`` over images and their proposals.

    ``forward(images, proposals, targets=None)``: ``images`` a list of CxHxW tensors (uint8
    or float in [0, 1], RGB or grayscale), ``proposals`` one N_i x 4 tensor per image in its
    pixel coordinates (e.g. from :func:`~course_lib.detection.selective_search.selective_search`),
    ``targets`` dicts with ``boxes`` and ``labels`` (1..K). Training mode returns the losses
    ``{"loss_classifier", "loss_box_reg"}``; evaluation mode one dict per image with
    ``boxes``, ``scores`` and ``labels`` in the original image's coordinates.
    """

    def __init__(self, transform: nn.Module, backbone: nn.Module, roi_heads: FastRCNNRoIHeads):
        super().__init__()
        self.transform, self.backbone, self.roi_heads = transform, backbone, roi_heads

    def forward(self, images: Sequence[Tensor], proposals: Sequence[Tensor], targets: Sequence[dict] | None = None):
        if len(images) != len(proposals):
            raise ValueError(f"Got {len(images)} images but {len(proposals)} proposal sets: one per image.")
        if self.training and targets is None:
            raise ValueError("Fast R-CNN in training mode needs targets; call model.eval() to detect.")
        original_sizes = [tuple(img.shape[-2:]) for img in images]
        image_list, targets = self.transform(list(images), None if targets is None else check_targets(targets))
        # the proposals follow their image through the resize
        proposals = [resize_boxes(clean_proposals(p, size), size, new_size).to(image_list.tensors.device)
                     for p, size, new_size in zip(proposals, original_sizes, image_list.image_sizes)]
        features = self.backbone(image_list.tensors)
        detections, losses = self.roi_heads(features, proposals, image_list.image_sizes, targets)
        if self.training:
            return losses
        return self.transform.postprocess(detections, image_list.image_sizes, original_sizes)


def fast_rcnn_vgg16(
    num_classes: int,
    width: float = 1.0,
    min_size: int = 600,
    max_size: int = 1000,
    vgg: VGG16 | None = None,
    **roi_heads_kwargs,
) -> FastRCNN:
    """Fast R-CNN with VGG16 (the paper's model "L") at channel width ``width`` (1.0 = the
    paper: conv5_3 with 512 channels, fc6/fc7 with 4096), single-scale testing and training
    with a 600 px shorter side capped at 1000 (section 5.2). ``num_classes`` = K + 1, the
    object classes and the background (torchvision's convention, ``CocoDetection.num_classes``).
    Pass ``vgg`` to share the network with an R-CNN.
    """
    if num_classes < 2:
        raise ValueError(f"num_classes counts the background too (K + 1): it must be >= 2, got {num_classes}.")
    vgg = vgg if vgg is not None else VGG16(width=width, fully_connected=True)
    box_head = VGG16BoxHead(vgg)
    predictor = init_like_fast_rcnn(FastRCNNPredictor(box_head.out_channels, num_classes))
    roi_heads = FastRCNNRoIHeads(RoIPool(7, 1 / 16), box_head, predictor, **roi_heads_kwargs)
    transform = GeneralizedRCNNTransform(min_size, max_size, size_divisible=16)
    return FastRCNN(transform, VGG16Backbone(vgg), roi_heads)
