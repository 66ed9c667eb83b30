"""The Region Proposal Network (Ren et al., "Faster R-CNN: Towards Real-Time Object Detection with
Region Proposal Networks", NeurIPS 2015, sec. 3.1).

A small network slides over the backbone's feature map(s). At every position it looks at a 3x3
window and, for each of the A anchors centred there (3 scales x 3 aspect ratios = 9 in the
paper), predicts

* an *objectness* logit: is there an object (any class) in this anchor?
* four *box deltas* t = (t_x, t_y, t_w, t_h) that move and stretch the anchor onto it
  (paper eq. 2: t_x = (x - x_a) / w_a, t_w = log(w / w_a), ...).

Inference turns the best-scoring decoded anchors into proposals (sec. 3.3: top-n, clip, NMS 0.7).
Training labels anchors against the ground truth (sec. 3.1.2: positive if IoU >= 0.7, or the best
anchor of a ground-truth box; negative if IoU < 0.3 with all; others ignored), samples 256 of
them, at most half positive, and minimises (eq. 1)

    L = 1/N_cls sum_i L_cls(p_i, p_i*)  +  lambda/N_reg sum_i p_i* L_reg(t_i, t_i*)

with binary cross-entropy for L_cls and smooth L1 for L_reg. Like torchvision (and
Detectron), both terms are normalised by the number of sampled anchors (the paper's
N_reg ~ 2400 anchor locations with lambda = 10 gives about the same weight).

Numerically identical to ``torchvision.models.detection.rpn`` (same parameters, same random
draws), written to be read next to the paper.
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from course_lib.ops import (
    AnchorGenerator,
    BalancedPositiveNegativeSampler,
    BoxCoder,
    ImageList,
    Matcher,
    batched_nms,
    box_iou,
    clip_boxes_to_image,
    remove_small_boxes,
)

__all__ = ["RPNHead", "RegionProposalNetwork", "concat_box_prediction_layers"]


class RPNHead(nn.Module):
    """The sliding-window head (paper Fig. 3): a 3x3 conv + ReLU ("intermediate layer") shared by
    two sibling 1x1 convs, ``cls_logits`` (A objectness logits) and ``bbox_pred`` (4A deltas).
    One head serves every pyramid level. Initialised from N(0, 0.01^2), zero biases (sec. 3.1.3).

    Parameter names are torchvision's (``conv.0.0.weight``); state dicts from torchvision < 0.13
    (``conv.weight``) are renamed on load.
    """

    _version = 2

    def __init__(self, in_channels: int, num_anchors: int, conv_depth: int = 1, *, conv_channels: int | None = None):
        # conv_channels: width of the 3x3 layer(s); None = in_channels (torchvision). R-FCN: 512 on C4's 1024.
        super().__init__()
        width = in_channels if conv_channels is None else conv_channels
        self.conv = nn.Sequential(*[
            nn.Sequential(nn.Conv2d(in_channels if i == 0 else width, width, kernel_size=3, padding=1),
                          nn.ReLU(inplace=True))
            for i in range(conv_depth)
        ])
        self.cls_logits = nn.Conv2d(width, num_anchors, kernel_size=1)
        self.bbox_pred = nn.Conv2d(width, num_anchors * 4, kernel_size=1)
        for layer in self.modules():
            if isinstance(layer, nn.Conv2d):
                nn.init.normal_(layer.weight, std=0.01)
                nn.init.constant_(layer.bias, 0)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        if local_metadata.get("version", None) is None or local_metadata["version"] < 2:
            for kind in ("weight", "bias"):
                old_key, new_key = f"{prefix}conv.{kind}", f"{prefix}conv.0.0.{kind}"
                if old_key in state_dict:
                    state_dict[new_key] = state_dict.pop(old_key)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)

    def forward(self, features: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        """Per level: objectness [N, A, H, W] and deltas [N, 4A, H, W]."""
        objectness, deltas = [], []
        for feature in features:
            t = self.conv(feature)
            objectness.append(self.cls_logits(t))
            deltas.append(self.bbox_pred(t))
        return objectness, deltas


def _per_anchor(layer: Tensor, channels: int) -> Tensor:
    """[N, A*C, H, W] -> [N, H*W*A, C]: rows in the anchors' order (row y, column x, anchor a)."""
    n, _, h, w = layer.shape
    return layer.view(n, -1, channels, h, w).permute(0, 3, 4, 1, 2).reshape(n, -1, channels)


def concat_box_prediction_layers(objectness: list[Tensor], deltas: list[Tensor]) -> tuple[Tensor, Tensor]:
    """Flatten the head's per-level outputs to one row per anchor, levels concatenated (the order
    in which ``AnchorGenerator`` lists the anchors): objectness [N*total, 1], deltas [N*total, 4]."""
    objectness = torch.cat([_per_anchor(o, o.shape[1] // (d.shape[1] // 4)) for o, d in zip(objectness, deltas)], 1)
    deltas = torch.cat([_per_anchor(d, 4) for d in deltas], 1)
    return objectness.flatten(0, -2), deltas.reshape(-1, 4)


class RegionProposalNetwork(nn.Module):
    """Anchors + head + proposal selection (+ losses in training).

    Args:
        anchor_generator: anchors for each feature map (``course_lib.ops.AnchorGenerator``).
        head: e.g. :class:`RPNHead`.
        fg_iou_thresh, bg_iou_thresh: IoU >= fg is positive, < bg negative (paper: 0.7, 0.3).
        batch_size_per_image, positive_fraction: anchors sampled per image for the loss (256, 0.5).
        pre_nms_top_n, post_nms_top_n: ``{"training": n, "testing": n}``; pre: best anchors kept
            per level before NMS, post: proposals kept per image after NMS.
        nms_thresh: IoU threshold of the NMS among proposals (0.7).
        score_thresh: proposals with objectness probability below it are dropped (0 keeps all).
        featmap_names: the feature maps the RPN runs on, by name (``None``: every map it is given, in the dict's
            order, as torchvision). R-FCN's RPN reads C4 while its score maps read the dilated C5:
            ``featmap_names=["c4"]``. Anchors are generated for these maps only, so the anchor generator needs
            one size tuple per *named* map.

    ``forward(images, features, targets=None)`` returns ``(proposals, losses)``: one [P, 4] tensor
    of (x1, y1, x2, y2) boxes per image (best first) and, in training, ``loss_objectness`` and
    ``loss_rpn_box_reg``.
    """

    def __init__(self, anchor_generator: AnchorGenerator, head: nn.Module,
                 fg_iou_thresh: float, bg_iou_thresh: float,
                 batch_size_per_image: int, positive_fraction: float,
                 pre_nms_top_n: dict[str, int], post_nms_top_n: dict[str, int],
                 nms_thresh: float, score_thresh: float = 0.0, featmap_names: list[str] | None = None):
        super().__init__()
        if isinstance(featmap_names, str) or (featmap_names is not None and len(featmap_names) == 0):
            raise ValueError(f"featmap_names must be None (every map) or a non-empty list of names, e.g. ['c4']; "
                             f"got {featmap_names!r}")
        self.featmap_names = None if featmap_names is None else list(featmap_names)
        for name, value in (("pre_nms_top_n", pre_nms_top_n), ("post_nms_top_n", post_nms_top_n)):
            if not isinstance(value, dict) or set(value) != {"training", "testing"}:
                raise ValueError(f"{name} must be a dict with keys 'training' and 'testing', got {value!r}")
        self.anchor_generator = anchor_generator
        self.head = head
        self.box_coder = BoxCoder(weights=(1.0, 1.0, 1.0, 1.0))
        # training: anchor labels (sec. 3.1.2) and the 256-anchor mini-batch
        self.box_similarity = box_iou
        self.proposal_matcher = Matcher(fg_iou_thresh, bg_iou_thresh, allow_low_quality_matches=True)
        self.fg_bg_sampler = BalancedPositiveNegativeSampler(batch_size_per_image, positive_fraction)
        # inference: proposal selection (sec. 3.3)
        self._pre_nms_top_n = pre_nms_top_n
        self._post_nms_top_n = post_nms_top_n
        self.nms_thresh = nms_thresh
        self.score_thresh = score_thresh
        self.min_size = 1e-3

    def on_maps(self, featmap_names: list[str]) -> "RegionProposalNetwork":
        """This RPN -- its anchor generator and head shared, not copied, and its settings -- run on the maps
        ``featmap_names`` only (EFPN: FPN's P2..P6, no anchors on the extended P2')."""
        rpn = RegionProposalNetwork(
            self.anchor_generator, self.head, self.proposal_matcher.high_threshold, self.proposal_matcher.low_threshold,
            self.fg_bg_sampler.batch_size_per_image, self.fg_bg_sampler.positive_fraction, dict(self._pre_nms_top_n),
            dict(self._post_nms_top_n), self.nms_thresh, self.score_thresh, featmap_names)
        rpn.min_size = self.min_size
        return rpn.train(self.training)

    def _mode(self, mode: str | None) -> str:
        if mode is None:
            return "training" if self.training else "testing"
        if mode not in ("training", "testing"):
            raise ValueError(f"mode={mode!r}: 'training' or 'testing' (None: the module's current mode).")
        return mode

    def pre_nms_top_n(self, mode: str | None = None) -> int:
        """Top-scoring boxes kept per feature map before NMS (sec. 3.3), in ``mode`` (default: the current one)."""
        return self._pre_nms_top_n[self._mode(mode)]

    def post_nms_top_n(self, mode: str | None = None) -> int:
        """Proposals kept per image after NMS (sec. 3.3: 2000 for training, 300 at test time in the paper)."""
        return self._post_nms_top_n[self._mode(mode)]

    def boxes_into_nms(self, anchors_per_level: list[int], mode: str | None = None) -> int:
        """How many boxes of one image enter NMS, given its anchors on each map: the ``pre_nms_top_n`` best of every
        map, summed (all of a map's anchors where it has fewer). The limit is per map, so an FPN with five levels
        sends up to five times as many boxes into NMS as a one-map (C4) RPN with the same ``pre_nms_top_n``."""
        return sum(min(self.pre_nms_top_n(mode), n) for n in anchors_per_level)

    @contextlib.contextmanager
    def proposal_counts(self, *, pre_nms_top_n: int | None = None, post_nms_top_n: int | None = None,
                        mode: str = "testing"):
        """``with rpn.proposal_counts(post_nms_top_n=2000): ...`` -- other proposal counts for ``mode`` inside the
        block (a recall curve up to 2000 proposals, say), the configured ones again after it, also on an error."""
        mode = self._mode(mode)
        saved = self._pre_nms_top_n, self._post_nms_top_n
        for name, value in (("pre_nms_top_n", pre_nms_top_n), ("post_nms_top_n", post_nms_top_n)):
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise ValueError(f"{name}={value!r}: an integer >= 1 (or None to keep {getattr(self, name)(mode)}).")
        if pre_nms_top_n is not None:
            self._pre_nms_top_n = {**saved[0], mode: pre_nms_top_n}
        if post_nms_top_n is not None:
            self._post_nms_top_n = {**saved[1], mode: post_nms_top_n}
        try:
            yield self
        finally:
            self._pre_nms_top_n, self._post_nms_top_n = saved

    # ----------------------------------------------------------------------------- training
    def assign_targets_to_anchors(self, anchors: list[Tensor], targets: list[dict[str, Tensor]]
                                  ) -> tuple[list[Tensor], list[Tensor]]:
        """Per image: a label per anchor (1 object, 0 background, -1 ignored) and the ground-truth
        box it regresses to (sec. 3.1.2)."""
        labels, matched_gt_boxes = [], []
        for anchors_per_image, target in zip(anchors, targets):
            gt_boxes = target["boxes"]
            if gt_boxes.numel() == 0:  # an image without objects: every anchor is background
                matched = torch.zeros(anchors_per_image.shape, dtype=torch.float32, device=anchors_per_image.device)
                labels_per_image = torch.zeros(anchors_per_image.shape[0], dtype=torch.float32,
                                               device=anchors_per_image.device)
            else:
                matched_idxs = self.proposal_matcher(self.box_similarity(gt_boxes, anchors_per_image))
                # negatives (-1) and ignored (-2) anchors get gt 0 as a dummy regression target
                matched = gt_boxes[matched_idxs.clamp(min=0)]
                labels_per_image = (matched_idxs >= 0).to(torch.float32)
                labels_per_image[matched_idxs == self.proposal_matcher.BELOW_LOW_THRESHOLD] = 0.0
                labels_per_image[matched_idxs == self.proposal_matcher.BETWEEN_THRESHOLDS] = -1.0
            labels.append(labels_per_image)
            matched_gt_boxes.append(matched)
        return labels, matched_gt_boxes

    def compute_loss(self, objectness: Tensor, pred_bbox_deltas: Tensor, labels: list[Tensor],
                     regression_targets: list[Tensor]) -> tuple[Tensor, Tensor]:
        """Eq. 1 over a random mini-batch of anchors: BCE on the sampled anchors, smooth L1
        (beta = 1/9) on the sampled positives, both divided by the number sampled."""
        sampled_pos, sampled_neg = self.fg_bg_sampler(labels)
        sampled_pos = torch.where(torch.cat(sampled_pos, dim=0))[0]
        sampled_neg = torch.where(torch.cat(sampled_neg, dim=0))[0]
        sampled = torch.cat([sampled_pos, sampled_neg], dim=0)
        if sampled.numel() == 0:  # no anchor at all: nothing to learn, and no NaN from a mean over nothing
            zero = objectness.sum() * 0.0 + pred_bbox_deltas.sum() * 0.0
            return zero, zero.clone()

        objectness = objectness.flatten()
        labels = torch.cat(labels, dim=0)
        regression_targets = torch.cat(regression_targets, dim=0)
        box_loss = F.smooth_l1_loss(pred_bbox_deltas[sampled_pos], regression_targets[sampled_pos],
                                    beta=1 / 9, reduction="sum") / sampled.numel()
        objectness_loss = F.binary_cross_entropy_with_logits(objectness[sampled], labels[sampled])
        return objectness_loss, box_loss

    # ---------------------------------------------------------------------------- inference
    def _top_n_per_level(self, objectness: Tensor, num_anchors_per_level: list[int]) -> Tensor:
        """Indices (into all anchors) of the ``pre_nms_top_n`` best anchors of every level."""
        indices, offset = [], 0
        for ob in objectness.split(num_anchors_per_level, 1):
            _, top = ob.topk(min(self.pre_nms_top_n(), ob.shape[1]), dim=1)
            indices.append(top + offset)
            offset += ob.shape[1]
        return torch.cat(indices, dim=1)

    def filter_proposals(self, proposals: Tensor, objectness: Tensor, image_shapes: list[tuple[int, int]],
                         num_anchors_per_level: list[int]) -> tuple[list[Tensor], list[Tensor]]:
        """Top-n per level -> clip to the image -> drop tiny boxes -> drop low scores ->
        NMS (per level) -> the post-NMS top-n. Returns boxes and objectness probabilities."""
        num_images = proposals.shape[0]
        objectness = objectness.detach().reshape(num_images, -1)  # proposals are not back-propagated
        levels = torch.cat([torch.full((n,), i, dtype=torch.int64, device=proposals.device)
                            for i, n in enumerate(num_anchors_per_level)]).reshape(1, -1).expand_as(objectness)

        top_n_idx = self._top_n_per_level(objectness, num_anchors_per_level)
        image_idx = torch.arange(num_images, device=proposals.device)[:, None]
        objectness, levels, proposals = (objectness[image_idx, top_n_idx], levels[image_idx, top_n_idx],
                                         proposals[image_idx, top_n_idx])
        probabilities = torch.sigmoid(objectness)

        final_boxes, final_scores = [], []
        for boxes, scores, lvl, image_shape in zip(proposals, probabilities, levels, image_shapes):
            boxes = clip_boxes_to_image(boxes, image_shape)
            keep = remove_small_boxes(boxes, self.min_size)
            boxes, scores, lvl = boxes[keep], scores[keep], lvl[keep]
            keep = torch.where(scores >= self.score_thresh)[0]
            boxes, scores, lvl = boxes[keep], scores[keep], lvl[keep]
            keep = batched_nms(boxes, scores, lvl, self.nms_thresh)[: self.post_nms_top_n()]
            final_boxes.append(boxes[keep])
            final_scores.append(scores[keep])
        return final_boxes, final_scores

    def select_features(self, features: dict[str, Tensor]) -> list[Tensor]:
        """The maps the RPN runs on: all of them (``featmap_names=None``) or the named ones, in the given order."""
        if self.featmap_names is None:
            return list(features.values())
        missing = [name for name in self.featmap_names if name not in features]
        if missing:
            raise ValueError(f"RegionProposalNetwork: featmap_names {missing} are not among the feature maps "
                             f"{list(features)}; pass names of the backbone's outputs (or None for all of them)")
        return [features[name] for name in self.featmap_names]

    def forward(self, images: ImageList, features: dict[str, Tensor],
                targets: list[dict[str, Tensor]] | None = None) -> tuple[list[Tensor], dict[str, Tensor]]:
        features = self.select_features(features)
        objectness, pred_bbox_deltas = self.head(features)
        anchors = self.anchor_generator(images, features)

        num_images = len(anchors)
        num_anchors_per_level = [o[0].numel() for o in objectness]  # A * H * W per level
        objectness, pred_bbox_deltas = concat_box_prediction_layers(objectness, pred_bbox_deltas)
        # decoding is not back-propagated: Faster R-CNN treats proposals as fixed inputs of stage 2
        proposals = self.box_coder.decode(pred_bbox_deltas.detach(), anchors).view(num_images, -1, 4)
        boxes, _scores = self.filter_proposals(proposals, objectness, images.image_sizes, num_anchors_per_level)

        losses = {}
        if self.training:
            if targets is None:
                raise ValueError("The RPN needs targets in training mode (call model.eval() for inference).")
            labels, matched_gt_boxes = self.assign_targets_to_anchors(anchors, targets)
            regression_targets = self.box_coder.encode(matched_gt_boxes, anchors)
            loss_objectness, loss_rpn_box_reg = self.compute_loss(
                objectness, pred_bbox_deltas, labels, regression_targets)
            losses = {"loss_objectness": loss_objectness, "loss_rpn_box_reg": loss_rpn_box_reg}
        return boxes, losses
