"""The second stage of every detector in the course: the Fast R-CNN detector (Girshick, "Fast R-CNN",
ICCV 2015, sec. 2), on selective-search proposals in chapter 4 (``fast_rcnn.FastRCNNRoIHeads`` gives
it that paper's settings) and on an RPN's proposals from chapter 5 on (Ren et al. 2015, sec. 3.2).
One sampler, one loss (:func:`fast_rcnn_loss`, with the per-RoI form for OHEM), one post-processing
(R-CNN's per-class NMS, ``rcnn.postprocess_detections``), one ``select_training_samples`` contract.

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

Three extensions for the later chapters, each off by default so the torchvision equality holds:

* **One head contract.** :meth:`RoIHeads.predict` ``(features, proposals, image_shapes) ->
  (class_logits [R, K + 1], box_regression [R, 4 (K + 1)] or [R, 4])`` is the one method a new
  head overrides; sampling, the loss and the post-processing stay. The default pools, runs the
  box head and the predictor; R-FCN (chapter 6) computes its score maps once per image, then
  pools and votes, with no layer per RoI.
* **Class-agnostic box regression** (R-FCN sec. 2, "class-agnostic bounding box regression"):
  ``box_regression`` of shape [R, 4] is one set of deltas shared by all classes. The loss reads
  it for every foreground RoI; the post-processing decodes it once and gives every class the
  same box. [R, 4 (K + 1)] is torchvision's class-specific layout; the shape tells them apart
  (K + 1 >= 2), anything else is an error.
* **Online hard example mining** (Shrivastava, Gupta, Girshick, CVPR 2016, sec. 4; R-FCN sec. 2,
  "Training"): with ``ohem_batch_size_per_image=B`` the loss of every sampled RoI is computed,
  and only the B RoIs of each image with the highest loss (classification + box, as the R-FCN
  code's ``BoxAnnotatorOHEM``) enter the loss and the backward pass. R-FCN: all 300 proposals
  (``batch_size_per_image=None``: no random sampling) and B = 128.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from course_lib.ops import BalancedPositiveNegativeSampler, BoxCoder, Matcher, box_iou

from .rcnn import postprocess_detections as per_class_nms
from .transform import check_targets as check_ground_truth

__all__ = ["RoIHeads", "TwoMLPHead", "FastRCNNPredictor", "init_like_fast_rcnn", "box_deltas_of_labels",
           "fast_rcnn_loss", "fastrcnn_loss", "fastrcnn_loss_per_roi", "ohem_select"]


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


def init_like_fast_rcnn(predictor: FastRCNNPredictor) -> FastRCNNPredictor:
    """Fast R-CNN sec. 2.3 ("SGD hyper-parameters"): the classification and box regression layers
    start from zero-mean Gaussians with std 0.01 and 0.001, biases 0. The boxes then start at the
    proposals (deltas ~ 0) and the classes near uniform, so the first steps are gentle.
    Used by Fast R-CNN (chapter 4) and the Faster R-CNN C4 model (chapter 5)."""
    nn.init.normal_(predictor.cls_score.weight, std=0.01)
    nn.init.normal_(predictor.bbox_pred.weight, std=0.001)
    nn.init.zeros_(predictor.cls_score.bias)
    nn.init.zeros_(predictor.bbox_pred.bias)
    return predictor


def _check_box_regression(class_logits: Tensor, box_regression: Tensor) -> bool:
    """True for class-agnostic [R, 4] deltas, False for class-specific [R, 4 (K + 1)]; else a clear error."""
    num_rois, num_classes = class_logits.shape
    if box_regression.dim() != 2 or box_regression.shape[0] != num_rois \
            or box_regression.shape[1] not in (4, 4 * num_classes):
        raise ValueError(
            f"box_regression must be [R, 4] (class-agnostic) or [R, 4 (K + 1)] = [{num_rois}, {4 * num_classes}] "
            f"(class-specific) for class_logits of shape {tuple(class_logits.shape)}, got {tuple(box_regression.shape)}.")
    return box_regression.shape[1] == 4


def box_deltas_of_labels(box_regression: Tensor, labels: Tensor) -> Tensor:
    """The deltas t^u each RoI predicts for its class u, [R, 4]: column block u of the class-specific
    [R, 4 (K + 1)] layout, or the shared deltas themselves when ``box_regression`` is [R, 4]."""
    if box_regression.shape[-1] == 4:
        return box_regression
    per_class = box_regression.reshape(box_regression.shape[0], box_regression.shape[-1] // 4, 4)
    return per_class[torch.arange(labels.numel(), device=labels.device), labels]


def fastrcnn_loss_per_roi(class_logits: Tensor, box_regression: Tensor, labels: Tensor,
                          regression_targets: Tensor, beta: float = 1 / 9) -> Tensor:
    """Each RoI's own multi-task loss, [R]: cross-entropy plus, for foreground RoIs, the smooth L1
    of its class's deltas summed over (x, y, w, h). The quantity OHEM ranks RoIs by (Shrivastava et
    al. sec. 4.1: "the loss represents how well the current network performs on each RoI")."""
    _check_box_regression(class_logits, box_regression)
    classification = F.cross_entropy(class_logits, labels, reduction="none")
    deltas = box_deltas_of_labels(box_regression, labels.clamp(min=0))
    box = F.smooth_l1_loss(deltas, regression_targets, beta=beta, reduction="none").sum(1)
    return classification + torch.where(labels > 0, box, torch.zeros_like(box))


def ohem_select(losses: Tensor, rois_per_image: list[int], batch_size_per_image: int) -> Tensor:
    """Online hard example mining: indices (into the concatenation of all images' RoIs, ascending) of
    the ``batch_size_per_image`` RoIs of each image with the highest ``losses`` (all of them when an
    image has fewer). Ties go to the RoI that comes first, so the choice is reproducible. The
    losses are only read (detached): the selection itself has no gradient."""
    if batch_size_per_image < 1:
        raise ValueError(f"ohem_batch_size_per_image must be >= 1 (R-FCN: 128), got {batch_size_per_image}.")
    if losses.dim() != 1 or losses.numel() != sum(rois_per_image):
        raise ValueError(f"losses must be one value per RoI ({sum(rois_per_image)}), got shape {tuple(losses.shape)}.")
    keep, start = [], 0
    for n in rois_per_image:
        order = torch.sort(losses[start:start + n].detach(), descending=True, stable=True).indices
        keep.append(order[:batch_size_per_image].sort().values + start)
        start += n
    return torch.cat(keep) if keep else torch.zeros(0, dtype=torch.int64, device=losses.device)


def fast_rcnn_loss(class_logits: Tensor, box_regression: Tensor, labels: Tensor, regression_targets: Tensor,
                   box_loss_weight: float = 1.0, beta: float = 1.0) -> tuple[Tensor, Tensor]:
    """The multi-task loss (Fast R-CNN eq. 1), averaged over the R sampled RoIs -- the one loss of every
    second stage in the course (chapters 4-8):

        L(p, u, t^u, v) = L_cls(p, u) + lambda [u >= 1] L_loc(t^u, v)

    with ``L_cls = -log p_u`` (cross-entropy over K + 1 classes) and ``L_loc = sum_{i in x,y,w,h}
    smooth_L1(t^u_i - v_i)`` (eq. 2, smooth L1 of eq. 3 with ``beta``: 1 in the paper and the R-FCN code,
    1/9 in torchvision) on the deltas ``t^u`` predicted for the true class u, divided by R; background RoIs
    (u = 0) have no box loss. ``lambda`` = ``box_loss_weight`` (1 in the paper) is applied to the second of
    the returned ``(loss_classifier, loss_box_reg)``. With ``beta = 1/9`` this is torchvision's ``fastrcnn_loss``.

    Shapes: ``class_logits`` [R, K + 1], ``box_regression`` class-specific [R, 4 (K + 1)] or class-agnostic
    [R, 4] (R-FCN: every foreground RoI reads the one set of deltas), ``labels`` [R], ``regression_targets`` [R, 4].
    The per-RoI form, for OHEM, is :func:`fastrcnn_loss_per_roi`."""
    if labels.numel() == 0:  # no RoI at all (an empty image without proposals): no NaN from a mean over nothing
        zero = class_logits.sum() * 0.0 + box_regression.sum() * 0.0
        return zero, zero.clone()
    _check_box_regression(class_logits, box_regression)
    classification_loss = F.cross_entropy(class_logits, labels)
    foreground = torch.where(labels > 0)[0]
    deltas = box_deltas_of_labels(box_regression[foreground], labels[foreground])  # t^u of the true class
    box_loss = F.smooth_l1_loss(deltas, regression_targets[foreground], beta=beta, reduction="sum") / labels.numel()
    return classification_loss, box_loss_weight * box_loss


def fastrcnn_loss(class_logits: Tensor, box_regression: Tensor, labels: list[Tensor],
                  regression_targets: list[Tensor], beta: float = 1 / 9) -> tuple[Tensor, Tensor]:
    """:func:`fast_rcnn_loss` with torchvision's call (one tensor per image, ``beta`` = 1/9)."""
    return fast_rcnn_loss(class_logits, box_regression, torch.cat(labels, dim=0), torch.cat(regression_targets, dim=0),
                          beta=beta)


class RoIHeads(nn.Module):
    """RoI pooling + box head + predictor, with RoI sampling and loss in training and the
    per-class post-processing in inference.

    Args (torchvision's names and order):
        box_roi_pool: ``(features, proposals, image_shapes) -> [R, C, S, S]``, e.g.
            ``course_lib.ops.MultiScaleRoIAlign``.
        box_head: pooled features -> vectors (e.g. :class:`TwoMLPHead`).
        box_predictor: vectors -> (class logits, box deltas) (e.g. :class:`FastRCNNPredictor`).
            The three are used by the default :meth:`predict` only; a head that overrides
            ``predict`` may pass ``None`` for those it does not have.
        fg_iou_thresh, bg_iou_thresh: RoI is foreground if IoU >= fg, background if < bg (0.5, 0.5).
            ``bg_iou_thresh=(lo, hi)``: background only in [lo, hi), RoIs below ``lo`` are ignored (Fast
            R-CNN sec. 2.3: [0.1, 0.5), "a heuristic for hard example mining"; an image without objects
            is all background).
        batch_size_per_image, positive_fraction: RoIs sampled per image (512, 0.25).
            ``batch_size_per_image=None``: no sampling, every labelled RoI (proposals + gt boxes)
            is used (the R-FCN code's ``batch_size = -1``, for OHEM).
        bbox_reg_weights: BoxCoder weights, (10, 10, 5, 5) when None.
        score_thresh, nms_thresh, detections_per_img: inference (0.05, 0.5, 100).

    The defaults are torchvision's values (its ``FasterRCNN``'s), so a new head can be built from
    its three modules alone. Keyword-only (not in torchvision):
        box_loss_weight: lambda of Fast R-CNN eq. 1 (1).
        ohem_batch_size_per_image: B for online hard example mining (see the module docstring);
            None (default) = the loss of every sampled RoI, as torchvision.
        smooth_l1_beta: of the box loss; 1/9 (torchvision). The R-FCN and py-faster-rcnn code use
            1 (Caffe's ``SmoothL1Loss`` with sigma 1).
    """

    def __init__(self, box_roi_pool: nn.Module | None, box_head: nn.Module | None, box_predictor: nn.Module | None,
                 fg_iou_thresh: float = 0.5, bg_iou_thresh: float | tuple[float, float] = 0.5,
                 batch_size_per_image: int | None = 512, positive_fraction: float = 0.25,
                 bbox_reg_weights: tuple[float, float, float, float] | None = None,
                 score_thresh: float = 0.05, nms_thresh: float = 0.5, detections_per_img: int = 100, *,
                 ohem_batch_size_per_image: int | None = None, smooth_l1_beta: float = 1 / 9,
                 box_loss_weight: float = 1.0):
        super().__init__()
        if ohem_batch_size_per_image is not None and ohem_batch_size_per_image < 1:
            raise ValueError(f"ohem_batch_size_per_image must be None (no OHEM) or >= 1 (R-FCN: 128), "
                             f"got {ohem_batch_size_per_image}.")
        self.box_similarity = box_iou
        # the background's range [lo, hi): lo = 0 (torchvision) unless a pair is given (Fast R-CNN)
        self.bg_iou_thresh = tuple(bg_iou_thresh) if isinstance(bg_iou_thresh, (tuple, list)) else (0.0, bg_iou_thresh)
        self.proposal_matcher = Matcher(fg_iou_thresh, self.bg_iou_thresh[1], allow_low_quality_matches=False)
        self.fg_bg_sampler = (None if batch_size_per_image is None
                              else BalancedPositiveNegativeSampler(batch_size_per_image, positive_fraction))
        self.box_coder = BoxCoder((10.0, 10.0, 5.0, 5.0) if bbox_reg_weights is None else bbox_reg_weights)
        self.box_roi_pool = box_roi_pool
        self.box_head = box_head
        self.box_predictor = box_predictor
        self.score_thresh = score_thresh
        self.nms_thresh = nms_thresh
        self.detections_per_img = detections_per_img
        self.ohem_batch_size_per_image = ohem_batch_size_per_image
        self.smooth_l1_beta = smooth_l1_beta
        self.box_loss_weight = box_loss_weight

    def settings(self) -> dict:
        """The keyword arguments of these heads besides their three modules: ``type(heads)(pool, head, predictor,
        **heads.settings())`` behaves as ``heads`` -- how a subclass is built around existing heads (EFPN)."""
        sampler = self.fg_bg_sampler
        return dict(fg_iou_thresh=self.proposal_matcher.high_threshold, bg_iou_thresh=self.bg_iou_thresh,
                    batch_size_per_image=None if sampler is None else sampler.batch_size_per_image,
                    positive_fraction=0.25 if sampler is None else sampler.positive_fraction,
                    bbox_reg_weights=self.box_coder.weights, score_thresh=self.score_thresh,
                    nms_thresh=self.nms_thresh, detections_per_img=self.detections_per_img,
                    ohem_batch_size_per_image=self.ohem_batch_size_per_image, smooth_l1_beta=self.smooth_l1_beta,
                    box_loss_weight=self.box_loss_weight)

    # ------------------------------------------------------------------------------ the head
    def predict(self, features: dict[str, Tensor], proposals: list[Tensor],
                image_shapes: list[tuple[int, int]]) -> tuple[Tensor, Tensor]:
        """Class logits [R, K + 1] and box deltas ([R, 4 (K + 1)] class-specific or [R, 4]
        class-agnostic) of the R = sum of ``len(p)`` RoIs, in the order of ``proposals``.

        The one method a new head overrides. Default (Fast R-CNN's per-RoI head): RoI pooling ->
        ``box_head`` -> ``box_predictor``."""
        box_features = self.box_head(self.box_roi_pool(features, proposals, image_shapes))
        return self.box_predictor(box_features)

    # ----------------------------------------------------------------------------- training
    @staticmethod
    def check_targets(targets: list[dict[str, Tensor]] | None) -> None:
        """Training needs targets, checked by the one rule of every detector (``transform.check_targets``)."""
        if targets is None:
            raise ValueError("The RoI heads need targets in training mode (call model.eval() for inference).")
        check_ground_truth(targets)

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
                iou = box_iou(gt_boxes_in_image, proposals_in_image)
                matched = self.proposal_matcher(iou)
                clamped = matched.clamp(min=0)
                labels_in_image = gt_labels_in_image[clamped].to(torch.int64)
                labels_in_image[matched == self.proposal_matcher.BELOW_LOW_THRESHOLD] = 0
                labels_in_image[matched == self.proposal_matcher.BETWEEN_THRESHOLDS] = -1
                if self.bg_iou_thresh[0] > 0:  # too far from every object to be a useful background
                    labels_in_image[iou.max(dim=0).values < self.bg_iou_thresh[0]] = -1
            matched_idxs.append(clamped)
            labels.append(labels_in_image)
        return matched_idxs, labels

    def subsample(self, labels: list[Tensor]) -> list[Tensor]:
        """Indices of the sampled RoIs of each image (at most ``positive_fraction`` foreground);
        without a sampler (``batch_size_per_image=None``) every RoI that is not ignored."""
        if self.fg_bg_sampler is None:
            return [torch.where(lab >= 0)[0] for lab in labels]
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
        if _check_box_regression(class_logits, box_regression):
            # class-agnostic: one box per RoI, the same for every class (the R-FCN code tiles it)
            pred_boxes = self.box_coder.decode(box_regression, proposals).reshape(-1, 1, 4)
            pred_boxes = pred_boxes.expand(-1, num_classes, 4)
        else:
            # [R, K + 1, 4] (the reshape also covers R = 0, where decode cannot infer K + 1)
            pred_boxes = self.box_coder.decode(box_regression, proposals).reshape(-1, num_classes, 4)
        pred_scores = F.softmax(class_logits, -1)

        all_boxes, all_scores, all_labels = [], [], []
        for boxes, scores, image_shape in zip(pred_boxes.split(boxes_per_image, 0),
                                              pred_scores.split(boxes_per_image, 0), image_shapes):
            # R-CNN's per-class NMS (R-CNN sec. 2.2) on the object classes, the background column dropped
            detections = per_class_nms(scores[:, 1:], boxes[:, 1:], image_shape, self.score_thresh,
                                       self.nms_thresh, self.detections_per_img)
            all_boxes.append(detections["boxes"])
            all_scores.append(detections["scores"])
            all_labels.append(detections["labels"])
        return all_boxes, all_scores, all_labels

    def forward(self, features: dict[str, Tensor], proposals: list[Tensor], image_shapes: list[tuple[int, int]],
                targets: list[dict[str, Tensor]] | None = None
                ) -> tuple[list[dict[str, Tensor]], dict[str, Tensor]]:
        """Returns (detections, losses): in training ``([], {loss_classifier, loss_box_reg})``, in
        inference ``([{boxes, labels, scores} per image], {})``, boxes in the resized image."""
        if self.training:
            proposals, _matched_idxs, labels, regression_targets = self.select_training_samples(proposals, targets)

        class_logits, box_regression = self.predict(features, proposals, image_shapes)

        if self.training:
            self._check_label_range(targets, class_logits.shape[-1])
            if self.ohem_batch_size_per_image is not None:
                class_logits, box_regression, labels, regression_targets = self.hard_examples(
                    class_logits, box_regression, labels, regression_targets)
            loss_classifier, loss_box_reg = fast_rcnn_loss(class_logits, box_regression, torch.cat(labels),
                                                           torch.cat(regression_targets), self.box_loss_weight,
                                                           self.smooth_l1_beta)
            return [], {"loss_classifier": loss_classifier, "loss_box_reg": loss_box_reg}

        boxes, scores, labels = self.postprocess_detections(class_logits, box_regression, proposals, image_shapes)
        return [{"boxes": b, "labels": l, "scores": s} for b, l, s in zip(boxes, labels, scores)], {}

    def hard_examples(self, class_logits: Tensor, box_regression: Tensor, labels: list[Tensor],
                      regression_targets: list[Tensor]) -> tuple[Tensor, Tensor, list[Tensor], list[Tensor]]:
        """OHEM (Shrivastava et al. 2016, sec. 4; R-FCN sec. 2): rank each image's sampled RoIs by
        their own loss and keep the ``ohem_batch_size_per_image`` hardest; the loss (and so the
        gradient) then covers those only, averaged over them."""
        counts = [lab.numel() for lab in labels]
        if sum(counts) == 0:
            return class_logits, box_regression, labels, regression_targets
        per_roi = fastrcnn_loss_per_roi(class_logits, box_regression, torch.cat(labels), torch.cat(regression_targets),
                                        beta=self.smooth_l1_beta)
        keep = ohem_select(per_roi, counts, self.ohem_batch_size_per_image)
        kept_counts = [min(n, self.ohem_batch_size_per_image) for n in counts]
        labels = list(torch.cat(labels)[keep].split(kept_counts))
        regression_targets = list(torch.cat(regression_targets)[keep].split(kept_counts))
        return class_logits[keep], box_regression[keep], labels, regression_targets

    @staticmethod
    def _check_label_range(targets: list[dict[str, Tensor]], num_classes: int) -> None:
        for i, t in enumerate(targets):
            bad = (t["labels"] < 1) | (t["labels"] >= num_classes)
            if bad.any():
                raise ValueError(
                    f"Target {i} has label {int(t['labels'][bad][0])}, but labels must be in 1..{num_classes - 1} "
                    f"(0 is the background; the predictor has num_classes={num_classes} including it).")
