"""The second stage of Faster R-CNN: the Fast R-CNN detector on the RPN's proposals (Girshick,
"Fast R-CNN", ICCV 2015, sec. 2; Ren et al. 2015, sec. 3.2).

For every proposal (a region of interest, RoI), RoI pooling cuts a fixed-size feature map
(7x7 on FPN levels, 14x14 on C4), a *box head* turns it into a vector and a *predictor* gives

* K + 1 class scores (class 0 = background), softmax-normalised;
* 4 box deltas per class, t^k = (t_x, t_y, t_w, t_h), relative to the RoI (the RPN's
  parameterisation, divided by weights (10, 10, 5, 5) so the four deltas have similar spread).

Training (Fast R-CNN sec. 2.3): the ground-truth boxes join the proposals; a RoI is foreground
(its gt's class) if IoU >= 0.5, background otherwise; 512 RoIs per image are sampled, at most 25%
foreground; the multi-task loss (Fast R-CNN eq. 1)

    L(p, u, t^u, v) = L_cls(p, u) + lambda [u >= 1] L_loc(t^u, v)

is cross-entropy plus smooth L1 on the deltas *of the true class only*, both averaged over the
sampled RoIs. Inference: per class, decode, clip, drop scores <= 0.05 and tiny boxes, NMS 0.5 per
class, keep the best 100 per image.

Numerically identical to the box part of ``torchvision.models.detection.roi_heads.RoIHeads``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from course_lib.ops import (
    BalancedPositiveNegativeSampler,
    BoxCoder,
    Matcher,
    batched_nms,
    box_iou,
    clip_boxes_to_image,
    remove_small_boxes,
)

__all__ = ["RoIHeads", "TwoMLPHead", "FastRCNNPredictor", "fastrcnn_loss"]


class TwoMLPHead(nn.Module):
    """The FPN paper's box head (sec. 4.2): flatten, two 1024-d fully connected layers (fc6, fc7),
    each followed by ReLU. Named fc6/fc7 after VGG16's layers that Fast R-CNN used in this place."""

    def __init__(self, in_channels: int, representation_size: int = 1024):
        super().__init__()
        self.fc6 = nn.Linear(in_channels, representation_size)
        self.fc7 = nn.Linear(representation_size, representation_size)

    def forward(self, x: Tensor) -> Tensor:
        x = x.flatten(start_dim=1)
        return F.relu(self.fc7(F.relu(self.fc6(x))))


class FastRCNNPredictor(nn.Module):
    """The two sibling output layers of Fast R-CNN (Fig. 1): ``cls_score`` (K + 1 logits) and
    ``bbox_pred`` (4 deltas for each of the K + 1 classes)."""

    def __init__(self, in_channels: int, num_classes: int):
        super().__init__()
        self.cls_score = nn.Linear(in_channels, num_classes)
        self.bbox_pred = nn.Linear(in_channels, num_classes * 4)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if x.dim() == 4 and list(x.shape[2:]) != [1, 1]:
            raise ValueError(f"FastRCNNPredictor takes [N, C] or [N, C, 1, 1] features, got {tuple(x.shape)}")
        x = x.flatten(start_dim=1)
        return self.cls_score(x), self.bbox_pred(x)


def fastrcnn_loss(class_logits: Tensor, box_regression: Tensor, labels: list[Tensor],
                  regression_targets: list[Tensor]) -> tuple[Tensor, Tensor]:
    """Fast R-CNN eq. 1: cross-entropy over all sampled RoIs, plus smooth L1 (beta = 1/9) between the
    foreground RoIs' deltas *for their true class u* and their targets v, divided by the number of
    sampled RoIs (the [u >= 1] indicator zeroes the background's box term)."""
    labels = torch.cat(labels, dim=0)
    regression_targets = torch.cat(regression_targets, dim=0)
    if labels.numel() == 0:  # no RoI at all (an empty image without proposals): no NaN from a mean over nothing
        zero = class_logits.sum() * 0.0 + box_regression.sum() * 0.0
        return zero, zero.clone()

    classification_loss = F.cross_entropy(class_logits, labels)

    foreground = torch.where(labels > 0)[0]
    num_rois = class_logits.shape[0]
    box_regression = box_regression.reshape(num_rois, box_regression.size(-1) // 4, 4)
    box_loss = F.smooth_l1_loss(box_regression[foreground, labels[foreground]], regression_targets[foreground],
                                beta=1 / 9, reduction="sum") / labels.numel()
    return classification_loss, box_loss


class RoIHeads(nn.Module):
    """RoI pooling + box head + predictor, with RoI sampling and loss in training and the
    per-class post-processing in inference.

    Args (torchvision's names and order):
        box_roi_pool: ``(features, proposals, image_shapes) -> [R, C, S, S]``, e.g.
            ``course_lib.ops.MultiScaleRoIAlign``.
        box_head: pooled features -> vectors (e.g. :class:`TwoMLPHead`).
        box_predictor: vectors -> (class logits, box deltas) (e.g. :class:`FastRCNNPredictor`).
        fg_iou_thresh, bg_iou_thresh: RoI is foreground if IoU >= fg, background if < bg (0.5, 0.5).
        batch_size_per_image, positive_fraction: RoIs sampled per image (512, 0.25).
        bbox_reg_weights: BoxCoder weights, (10, 10, 5, 5) when None.
        score_thresh, nms_thresh, detections_per_img: inference (0.05, 0.5, 100).
    """

    def __init__(self, box_roi_pool: nn.Module, box_head: nn.Module, box_predictor: nn.Module,
                 fg_iou_thresh: float, bg_iou_thresh: float, batch_size_per_image: int,
                 positive_fraction: float, bbox_reg_weights: tuple[float, float, float, float] | None,
                 score_thresh: float, nms_thresh: float, detections_per_img: int):
        super().__init__()
        self.box_similarity = box_iou
        self.proposal_matcher = Matcher(fg_iou_thresh, bg_iou_thresh, allow_low_quality_matches=False)
        self.fg_bg_sampler = BalancedPositiveNegativeSampler(batch_size_per_image, positive_fraction)
        self.box_coder = BoxCoder((10.0, 10.0, 5.0, 5.0) if bbox_reg_weights is None else bbox_reg_weights)
        self.box_roi_pool = box_roi_pool
        self.box_head = box_head
        self.box_predictor = box_predictor
        self.score_thresh = score_thresh
        self.nms_thresh = nms_thresh
        self.detections_per_img = detections_per_img

    # ----------------------------------------------------------------------------- training
    @staticmethod
    def check_targets(targets: list[dict[str, Tensor]] | None) -> None:
        if targets is None:
            raise ValueError("The RoI heads need targets in training mode (call model.eval() for inference).")
        for i, t in enumerate(targets):
            if "boxes" not in t or "labels" not in t:
                raise ValueError(f"Target {i} needs 'boxes' and 'labels', got keys {sorted(t)}.")
            if not t["boxes"].is_floating_point():
                raise TypeError(f"Target {i}: boxes must be a float tensor, got {t['boxes'].dtype}.")
            if t["labels"].dtype != torch.int64:
                raise TypeError(f"Target {i}: labels must be int64, got {t['labels'].dtype}.")
            if t["labels"].shape != t["boxes"].shape[:1]:
                raise ValueError(f"Target {i}: {t['boxes'].shape[0]} boxes but labels of shape "
                                 f"{tuple(t['labels'].shape)}; give one label per box.")

    def assign_targets_to_proposals(self, proposals: list[Tensor], gt_boxes: list[Tensor],
                                    gt_labels: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        """Per image: the index of each proposal's gt box and its class (0 background, -1 ignored)."""
        matched_idxs, labels = [], []
        for proposals_in_image, gt_boxes_in_image, gt_labels_in_image in zip(proposals, gt_boxes, gt_labels):
            if gt_boxes_in_image.numel() == 0:  # an image without objects: all background
                device = proposals_in_image.device
                clamped = torch.zeros(proposals_in_image.shape[0], dtype=torch.int64, device=device)
                labels_in_image = torch.zeros(proposals_in_image.shape[0], dtype=torch.int64, device=device)
            else:
                matched = self.proposal_matcher(box_iou(gt_boxes_in_image, proposals_in_image))
                clamped = matched.clamp(min=0)
                labels_in_image = gt_labels_in_image[clamped].to(torch.int64)
                labels_in_image[matched == self.proposal_matcher.BELOW_LOW_THRESHOLD] = 0
                labels_in_image[matched == self.proposal_matcher.BETWEEN_THRESHOLDS] = -1
            matched_idxs.append(clamped)
            labels.append(labels_in_image)
        return matched_idxs, labels

    def subsample(self, labels: list[Tensor]) -> list[Tensor]:
        """Indices of the sampled RoIs of each image (at most ``positive_fraction`` foreground)."""
        sampled_pos, sampled_neg = self.fg_bg_sampler(labels)
        return [torch.where(pos | neg)[0] for pos, neg in zip(sampled_pos, sampled_neg)]

    def select_training_samples(self, proposals: list[Tensor], targets: list[dict[str, Tensor]]
                                ) -> tuple[list[Tensor], list[Tensor], list[Tensor], list[Tensor]]:
        """Add the gt boxes to the proposals, label them, sample, and encode regression targets."""
        self.check_targets(targets)
        dtype, device = proposals[0].dtype, proposals[0].device
        gt_boxes = [t["boxes"].to(dtype) for t in targets]
        gt_labels = [t["labels"] for t in targets]
        # the gt boxes are proposals too: perfect positives from the first iteration on
        proposals = [torch.cat((p, gt)) for p, gt in zip(proposals, gt_boxes)]
        matched_idxs, labels = self.assign_targets_to_proposals(proposals, gt_boxes, gt_labels)
        sampled_inds = self.subsample(labels)

        matched_gt_boxes = []
        for i, inds in enumerate(sampled_inds):
            proposals[i], labels[i], matched_idxs[i] = proposals[i][inds], labels[i][inds], matched_idxs[i][inds]
            gt = gt_boxes[i] if gt_boxes[i].numel() > 0 else torch.zeros((1, 4), dtype=dtype, device=device)
            matched_gt_boxes.append(gt[matched_idxs[i]])
        regression_targets = self.box_coder.encode(matched_gt_boxes, proposals)
        return proposals, matched_idxs, labels, regression_targets

    # ---------------------------------------------------------------------------- inference
    def postprocess_detections(self, class_logits: Tensor, box_regression: Tensor, proposals: list[Tensor],
                               image_shapes: list[tuple[int, int]]) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
        """Every (RoI, class) pair becomes a candidate detection: decode the class's deltas, clip,
        drop background / low scores / tiny boxes, NMS per class, keep the best ``detections_per_img``."""
        num_classes = class_logits.shape[-1]
        boxes_per_image = [p.shape[0] for p in proposals]
        # [R, K + 1, 4] (the reshape also covers R = 0, where decode cannot infer K + 1)
        pred_boxes = self.box_coder.decode(box_regression, proposals).reshape(-1, num_classes, 4)
        pred_scores = F.softmax(class_logits, -1)

        all_boxes, all_scores, all_labels = [], [], []
        for boxes, scores, image_shape in zip(pred_boxes.split(boxes_per_image, 0),
                                              pred_scores.split(boxes_per_image, 0), image_shapes):
            boxes = clip_boxes_to_image(boxes, image_shape)
            labels = torch.arange(num_classes, device=class_logits.device).view(1, -1).expand_as(scores)
            # drop the background column, then one row per (RoI, class)
            boxes, scores, labels = boxes[:, 1:].reshape(-1, 4), scores[:, 1:].reshape(-1), labels[:, 1:].reshape(-1)

            keep = torch.where(scores > self.score_thresh)[0]
            boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
            keep = remove_small_boxes(boxes, min_size=1e-2)
            boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
            keep = batched_nms(boxes, scores, labels, self.nms_thresh)[: self.detections_per_img]
            all_boxes.append(boxes[keep])
            all_scores.append(scores[keep])
            all_labels.append(labels[keep])
        return all_boxes, all_scores, all_labels

    def forward(self, features: dict[str, Tensor], proposals: list[Tensor], image_shapes: list[tuple[int, int]],
                targets: list[dict[str, Tensor]] | None = None
                ) -> tuple[list[dict[str, Tensor]], dict[str, Tensor]]:
        """Returns (detections, losses): in training ``([], {loss_classifier, loss_box_reg})``, in
        inference ``([{boxes, labels, scores} per image], {})``, boxes in the resized image."""
        if self.training:
            proposals, _matched_idxs, labels, regression_targets = self.select_training_samples(proposals, targets)

        box_features = self.box_head(self.box_roi_pool(features, proposals, image_shapes))
        class_logits, box_regression = self.box_predictor(box_features)

        if self.training:
            self._check_label_range(targets, class_logits.shape[-1])
            loss_classifier, loss_box_reg = fastrcnn_loss(class_logits, box_regression, labels, regression_targets)
            return [], {"loss_classifier": loss_classifier, "loss_box_reg": loss_box_reg}

        boxes, scores, labels = self.postprocess_detections(class_logits, box_regression, proposals, image_shapes)
        return [{"boxes": b, "labels": l, "scores": s} for b, l, s in zip(boxes, labels, scores)], {}

    @staticmethod
    def _check_label_range(targets: list[dict[str, Tensor]], num_classes: int) -> None:
        for i, t in enumerate(targets):
            bad = (t["labels"] < 1) | (t["labels"] >= num_classes)
            if bad.any():
                raise ValueError(
                    f"Target {i} has label {int(t['labels'][bad][0])}, but labels must be in 1..{num_classes - 1} "
                    f"(0 is the background; the predictor has num_classes={num_classes} including it).")
