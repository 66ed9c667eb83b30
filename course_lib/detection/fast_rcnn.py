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

The sampler and the post-processing are R-CNN's (:mod:`course_lib.detection.rcnn`) with
Fast R-CNN's settings: 64 RoIs per image, 25% foreground, background IoU in [0.1, 0.5).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..backbones.vgg import VGG16
from ..ops import BoxCoder, roi_pool
from .rcnn import clean_proposals, clean_targets, postprocess_detections, sample_rois
from .roi_heads import FastRCNNPredictor, box_deltas_of_labels, init_like_fast_rcnn
from .transform import GeneralizedRCNNTransform, resize_boxes

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

    def forward(self, features: Tensor, rois: list[Tensor]) -> Tensor:
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
        x = self.drop6(self.relu6(self.fc6(x)))
        x = self.drop7(self.relu7(self.fc7(x)))
        return x.flatten(1)


def smooth_l1(x: Tensor, beta: float = 1.0) -> Tensor:
    """Eq. 3: 0.5 x^2 if |x| < 1, |x| - 0.5 otherwise (``beta`` = 1; generalised as
    0.5 x^2 / beta if |x| < beta, |x| - 0.5 beta otherwise). Less sensitive to outliers than L2."""
    ax = x.abs()
    return torch.where(ax < beta, 0.5 * x ** 2 / beta, ax - 0.5 * beta)


def fast_rcnn_loss(
    class_logits: Tensor,
    box_regression: Tensor,
    labels: Tensor,
    regression_targets: Tensor,
    box_loss_weight: float = 1.0,
    beta: float = 1.0,
) -> tuple[Tensor, Tensor]:
    """The multi-task loss, eq. 1, averaged over the R sampled RoIs:

        L(p, u, t^u, v) = L_cls(p, u) + lambda [u >= 1] L_loc(t^u, v)

    with ``L_cls = -log p_u`` (cross-entropy over K+1 classes) and
    ``L_loc = sum_{i in x,y,w,h} smooth_L1(t^u_i - v_i)`` (eq. 2) on the offsets ``t^u``
    predicted for the true class u; background RoIs (u = 0) have no box loss.
    ``lambda`` = ``box_loss_weight`` = 1 in the paper. Returns ``(loss_classifier, loss_box_reg)``;
    ``box_loss_weight`` is already applied to the second. With ``beta = 1/9`` this is
    torchvision's ``fastrcnn_loss``.

    Shapes: ``class_logits`` (R, K+1), ``box_regression`` (R, 4 (K+1)) or class-agnostic (R, 4),
    ``labels`` (R,), ``regression_targets`` (R, 4).
    """
    if labels.numel() == 0:  # nothing sampled: zero losses that still reach the parameters
        zero = class_logits.sum() * 0.0 + box_regression.sum() * 0.0
        return zero, zero.clone()
    loss_cls = F.cross_entropy(class_logits, labels)
    fg = torch.where(labels > 0)[0]
    offsets = box_deltas_of_labels(box_regression[fg], labels[fg])  # t^u of the true class
    loss_loc = smooth_l1(offsets - regression_targets[fg], beta).sum() / labels.numel()
    return loss_cls, box_loss_weight * loss_loc


class FastRCNNRoIHeads(nn.Module):
    """Everything after the backbone: sample RoIs (training), pool, classify and regress,
    then the loss (training) or the detections (testing).

    The head itself is :meth:`predict`, the same contract as chapter 5's
    :class:`~course_lib.detection.roi_heads.RoIHeads`: ``(features, proposals, image_sizes) ->
    (class_logits, box_regression)``; a variant overrides it and keeps sampling, loss and NMS.

    Args:
        box_roi_pool: RoI pooling (7 x 7, scale 1/16).
        box_head: pooled features -> vectors (fc6, fc7).
        box_predictor: vectors -> (class logits, class-specific offsets).
        rois_per_image: R / N = 128 / 2 = 64 in the paper.
        positive_fraction: 0.25; ``fg_iou_thresh`` 0.5; ``bg_iou_thresh`` [0.1, 0.5).
        bbox_reg_weights: (10, 10, 5, 5): the targets normalised "to have zero mean and unit
            variance" with the standard deviations (0.1, 0.1, 0.2, 0.2) of the authors' code.
        box_loss_weight: lambda of eq. 1 (1). ``smooth_l1_beta``: 1 (eq. 3).
        score_thresh, nms_thresh, detections_per_img: test-time post-processing.
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
        super().__init__()
        self.box_roi_pool, self.box_head, self.box_predictor = box_roi_pool, box_head, box_predictor
        self.rois_per_image, self.positive_fraction = rois_per_image, positive_fraction
        self.fg_iou_thresh, self.bg_iou_thresh = fg_iou_thresh, tuple(bg_iou_thresh)
        self.box_coder = BoxCoder(bbox_reg_weights)
        self.box_loss_weight, self.smooth_l1_beta = box_loss_weight, smooth_l1_beta
        self.score_thresh, self.nms_thresh, self.detections_per_img = score_thresh, nms_thresh, detections_per_img

    def select_training_samples(self, proposals: list[Tensor], targets: list[dict]) -> tuple[list[Tensor], Tensor, Tensor]:
        """Sample each image's RoIs; returns the RoIs, their labels and regression targets."""
        rois, labels, regression_targets = [], [], []
        for props, target in zip(proposals, targets):
            r, lab, matched = sample_rois(props, target["boxes"], target["labels"], self.rois_per_image,
                                          self.positive_fraction, self.fg_iou_thresh, self.bg_iou_thresh)
            rois.append(r)
            labels.append(lab)
            regression_targets.append(self.box_coder.encode_single(matched, r))
        return rois, torch.cat(labels), torch.cat(regression_targets)

    def predict(self, features: Tensor, proposals: list[Tensor], image_sizes: list[tuple[int, int]]
                ) -> tuple[Tensor, Tensor]:
        """Class logits (R, K+1) and class-specific offsets (R, 4 (K+1)) of the RoIs, in order:
        RoI pooling -> fc6, fc7 -> the two sibling layers (Figure 1)."""
        return self.box_predictor(self.box_head(self.box_roi_pool(features, proposals)))

    def forward(self, features: Tensor, proposals: list[Tensor], image_sizes: list[tuple[int, int]],
                targets: list[dict] | None = None) -> tuple[list[dict], dict[str, Tensor]]:
        if self.training:
            if targets is None:
                raise ValueError("Fast R-CNN in training mode needs targets; call model.eval() to detect.")
            proposals, labels, regression_targets = self.select_training_samples(proposals, targets)
        class_logits, box_regression = self.predict(features, proposals, image_sizes)
        if self.training:
            loss_cls, loss_box = fast_rcnn_loss(class_logits, box_regression, labels, regression_targets,
                                                self.box_loss_weight, self.smooth_l1_beta)
            return [], {"loss_classifier": loss_cls, "loss_box_reg": loss_box}
        return self.postprocess(class_logits, box_regression, proposals, image_sizes), {}

    def postprocess(self, class_logits: Tensor, box_regression: Tensor, proposals: list[Tensor],
                    image_sizes: list[tuple[int, int]]) -> list[dict]:
        """Softmax scores and class-specific boxes of every RoI, then R-CNN's per-class NMS."""
        scores = F.softmax(class_logits, -1).split([len(p) for p in proposals])
        offsets = box_regression.split([len(p) for p in proposals])
        detections = []
        for s, t, props, size in zip(scores, offsets, proposals, image_sizes):
            boxes = self.box_coder.decode_single(t, props).reshape(len(props), t.shape[1] // 4, 4)
            detections.append(postprocess_detections(s[:, 1:], boxes[:, 1:], size, self.score_thresh,
                                                      self.nms_thresh, self.detections_per_img))
        return detections


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
        image_list, targets = self.transform(list(images), clean_targets(targets))
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
