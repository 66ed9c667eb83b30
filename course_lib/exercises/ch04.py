"""Checkers for chapter 4 (R-CNN and Fast R-CNN): RoI max pooling, the RoI sampler, the multi-task loss.

Each ``check_<name>(fn)`` runs ``fn`` on hidden, seeded cases against torchvision or ``course_lib`` and returns
``fn``, or raises :class:`ExerciseFailed` with a hint aimed at the likely mistake.
"""
from __future__ import annotations

import math

import torch
import torchvision

from course_lib.detection.fast_rcnn import fast_rcnn_loss
from course_lib.detection.rcnn import sample_rois as library_sample_rois
from course_lib.ops import box_iou

from .core import Case, Hint, check_function

__all__ = ["check_roi_max_pool", "check_sample_rois", "check_multitask_loss"]

CHAPTER = "ch04"


def _boxes(n, g, scale=100.0, min_size=1.0):
    xy = torch.rand(n, 2, generator=g) * scale
    return torch.cat([xy, xy + torch.rand(n, 2, generator=g) * scale / 2 + min_size], dim=1)


# ------------------------------------------------------------------------------------------------ RoI max pooling
def _roi_pool_reference(features, rois, output_size, spatial_scale):
    return torchvision.ops.roi_pool(features, rois, output_size, spatial_scale)


def check_roi_max_pool(fn):
    """``roi_max_pool(features [N, C, H, W], rois [R, 5] (image index, x1, y1, x2, y2), output_size, spatial_scale)
    -> [R, C, output_size, output_size]``, equal to ``torchvision.ops.roi_pool`` (Fast R-CNN sec. 2.1)."""
    g = torch.Generator().manual_seed(4)
    ramp = torch.arange(64.0).reshape(1, 1, 8, 8)
    maps = torch.randn(2, 6, 20, 24, generator=g)
    rois = torch.cat([torch.randint(0, 2, (12, 1), generator=g).float(), _boxes(12, g, 300, 16)], 1)
    outside = torch.tensor([[0, -45.0, -45, 100, 90], [1, 300, 250, 420, 400], [0, 210, 10, 900, 60]])
    half = torch.tensor([[0, 8.0, 24, 56, 72], [1, 24.0, 8, 40, 40]])  # x / 16 ends in .5: round half away from 0
    tiny = torch.tensor([[0, 33.0, 33, 33, 33], [1, 100, 40, 104, 300]])  # a point, and a 1-cell-wide column
    big = torch.randn(2, 16, 38, 50, generator=g)
    big_rois = torch.cat([torch.randint(0, 2, (150, 1), generator=g).float(), _boxes(150, g, 800, 8)], 1)
    cases = [
        Case("one RoI on an 8 x 8 ramp, 2 x 2 bins", (ramp, torch.tensor([[0, 1.3, 1.3, 6.7, 6.7]]), 2, 1.0)),
        Case("12 random RoIs on 2 images, 7 x 7, scale 1/16", (maps, rois, 7, 1 / 16)),
        Case("coordinates on half cells", (maps, half, 3, 1 / 16)),
        Case("RoIs crossing the map's border (empty bins are 0)", (maps, outside, 7, 1 / 16)),
        Case("a point and a thin column", (maps, tiny, 7, 1 / 16)),
        Case("no RoIs", (maps, torch.zeros(0, 5), 7, 1 / 16)),
        Case("150 RoIs on 16 x 38 x 50 maps", (big, big_rois, 7, 1 / 16)),
    ]
    hints = [
        Hint("A window from cell x1 to cell x2 (both rounded) is x2 - x1 + 1 cells wide, and at least 1.",
             when=lambda out, exp, case: case.label.startswith(("one RoI", "a point"))),
        Hint("Round the scaled corners half away from zero (floor(x + 0.5) for x >= 0), like C's round(); "
             "torch.round rounds half to even.", when=lambda out, exp, case: case.label == "coordinates on half cells"),
        Hint("Clip each bin to the map ([0, H) and [0, W)); a bin left empty pools to 0.",
             when=lambda out, exp, case: case.label.startswith("RoIs crossing")),
        Hint("Bin i of a window of n cells spans floor(i n / k) to ceil((i + 1) n / k) (exclusive), offset by the "
             "window's first cell; each RoI reads the feature map of its own image (column 0).",
             when=lambda out, exp, case: isinstance(out, torch.Tensor) and out.shape == exp.shape),
    ]
    return check_function("roi_max_pool", fn, reference=_roi_pool_reference, cases=cases, chapter=CHAPTER,
                          hints=hints)


# ---------------------------------------------------------------------------------------------------- RoI sampler
def _sampler_reference(proposals, gt_boxes, gt_labels, num_samples=64, positive_fraction=0.25, fg_iou_thresh=0.5,
                       bg_iou_thresh=(0.1, 0.5)):
    rois, labels, _ = library_sample_rois(proposals, gt_boxes, gt_labels, num_samples=num_samples,
                                          positive_fraction=positive_fraction, fg_iou_thresh=fg_iou_thresh,
                                          bg_iou_thresh=bg_iou_thresh)
    return rois, labels


def _check_sample(out, expected, case):
    proposals, gt_boxes, gt_labels = case.args
    kw = {"num_samples": 64, "positive_fraction": 0.25, "fg_iou_thresh": 0.5, "bg_iou_thresh": (0.1, 0.5), **case.kwargs}
    if not (isinstance(out, (tuple, list)) and len(out) == 2 and all(isinstance(t, torch.Tensor) for t in out)):
        return "return (rois [S, 4], labels [S])", math.inf
    rois, labels = out
    exp_rois, exp_labels = expected
    if rois.shape != (len(labels), 4) or labels.dim() != 1:
        return f"rois must be [S, 4] and labels [S]; got {tuple(rois.shape)} and {tuple(labels.shape)}", math.inf
    n_fg, n_bg = int((labels > 0).sum()), int((labels == 0).sum())
    e_fg, e_bg = int((exp_labels > 0).sum()), int((exp_labels == 0).sum())
    if (labels < 0).any():
        return "labels are classes (>= 1) or background (0)", math.inf
    if n_fg != e_fg:
        return f"{n_fg} foreground RoIs, expected {e_fg}", math.inf
    if n_bg != e_bg:
        return f"{n_bg} background RoIs, expected {e_bg}", math.inf
    candidates = torch.cat([proposals.reshape(-1, 4), gt_boxes.reshape(-1, 4)])
    same = (rois[:, None, :] == candidates[None, :, :]).all(-1)
    if len(rois) and not same.any(1).all():
        return "every RoI must be one of the proposals or ground-truth boxes (unchanged)", math.inf
    index = same.float().argmax(1)
    if len(index.unique()) != len(index):
        return "an RoI was drawn twice (sample without replacement)", math.inf
    if len(gt_boxes):
        iou, best = box_iou(rois, gt_boxes).max(1) if len(rois) else (torch.zeros(0), torch.zeros(0, dtype=torch.long))
        fg, bg = labels > 0, labels == 0
        if (iou[fg] < kw["fg_iou_thresh"]).any():
            return "a foreground RoI has IoU below fg_iou_thresh with every object", math.inf
        if not torch.equal(labels[fg].long(), gt_labels[best[fg]].long()):
            return "a foreground RoI must carry the class of the object it overlaps most", math.inf
        lo, hi = kw["bg_iou_thresh"]
        if ((iou[bg] < lo) | (iou[bg] >= hi)).any():
            return f"a background RoI has its best IoU outside [{lo}, {hi})", math.inf
    return None, 0.0


def check_sample_rois(fn):
    """``sample_rois(proposals [P, 4], gt_boxes [G, 4], gt_labels [G], num_samples=64, positive_fraction=0.25,
    fg_iou_thresh=0.5, bg_iou_thresh=(0.1, 0.5)) -> (rois [S, 4], labels [S])`` (Fast R-CNN sec. 2.3): the
    ground-truth boxes join the proposals; at most ``round(positive_fraction * num_samples)`` foreground RoIs (best
    IoU >= 0.5, labelled with that object's class), background (best IoU in [0.1, 0.5), label 0) fills the rest,
    both drawn at random without replacement; fewer when there are too few. An image without objects: every
    proposal is a background candidate. Compared with ``course_lib.detection.rcnn.sample_rois`` by counts and by
    the rule each RoI must satisfy (the draw itself is random)."""
    g = torch.Generator().manual_seed(6)
    gt = torch.tensor([[20.0, 20, 120, 120], [200, 60, 260, 200], [300, 300, 340, 330]])
    labels = torch.tensor([1, 3, 2])

    def around(box, n, spread):
        jitter = torch.randn(n, 4, generator=g) * spread * (box[2:] - box[:2]).repeat(2)
        out = box + jitter
        return torch.cat([torch.minimum(out[:, :2], out[:, 2:] - 1), torch.maximum(out[:, 2:], out[:, :2] + 1)], 1)

    mixed = torch.cat([around(gt[0], 40, 0.05), around(gt[1], 40, 0.3), around(gt[2], 30, 0.6), _boxes(60, g, 400)])
    far = _boxes(80, g, 60) + 500  # IoU 0 with every object
    few_bg = torch.cat([around(gt[0], 3, 0.4), far])
    only_far = far
    cases = [
        Case("150 proposals around 3 objects", (mixed, gt, labels)),
        Case("few background candidates in [0.1, 0.5), many below 0.1", (few_bg, gt, labels)),
        Case("no proposal overlaps an object (the ground truth joins)", (only_far, gt, labels)),
        Case("an image without objects", (mixed, torch.zeros(0, 4), torch.zeros(0, dtype=torch.int64))),
        Case("128 RoIs, half foreground, thresholds 0.6 / [0, 0.4)", (mixed, gt, labels),
             {"num_samples": 128, "positive_fraction": 0.5, "fg_iou_thresh": 0.6, "bg_iou_thresh": (0.0, 0.4)}),
        Case("no proposals", (torch.zeros(0, 4), gt, labels)),
    ]
    hints = [
        Hint("Background RoIs need their best IoU in [0.1, 0.5): the lower bound is 'a heuristic for hard example "
             "mining' (sec. 2.3) -- except in an image without objects, where every proposal qualifies.",
             when=lambda out, exp, case: "background" in case.label or "without objects" in case.label),
        Hint("Add the ground-truth boxes to the proposals before sampling (they are the best foreground RoIs).",
             when=lambda out, exp, case: "ground truth joins" in case.label or case.label == "no proposals"),
        Hint("Take at most round(positive_fraction * num_samples) foreground RoIs, then fill up to num_samples with "
             "background.", when=lambda out, exp, case: True),
    ]
    return check_function("sample_rois", fn, reference=_sampler_reference, cases=cases, chapter=CHAPTER, hints=hints,
                          compare_fn=_check_sample)


# ------------------------------------------------------------------------------------------------ multi-task loss
def _loss_reference(class_logits, box_regression, labels, regression_targets, lam=1.0):
    loss_cls, loss_loc = fast_rcnn_loss(class_logits, box_regression, labels, regression_targets,
                                        box_loss_weight=lam, beta=1.0)
    return loss_cls + loss_loc


def _loss_variant(class_logits, box_regression, labels, targets, lam=1.0, *, per_fg=False, column=None, l2=False):
    import torch.nn.functional as F
    if labels.numel() == 0:
        return class_logits.sum() * 0.0
    cls = F.cross_entropy(class_logits, labels)
    fg = torch.where(labels > 0)[0]
    cols = labels[fg] if column is None else torch.full_like(labels[fg], column)
    t = box_regression.reshape(len(labels), -1, 4)[fg, cols] - targets[fg]
    per = 0.5 * t ** 2 if l2 else torch.where(t.abs() < 1, 0.5 * t ** 2, t.abs() - 0.5)
    return cls + lam * per.sum() / (max(len(fg), 1) if per_fg else labels.numel())


def check_multitask_loss(fn):
    """``multitask_loss(class_logits [R, K+1], box_regression [R, 4 (K+1)], labels [R], regression_targets [R, 4],
    lam=1.0) -> L`` (a 0-d tensor): Fast R-CNN eq. 1-3 averaged over the R RoIs, equal to the sum of
    ``course_lib.detection.fast_rcnn.fast_rcnn_loss`` (beta = 1), gradients included."""
    g = torch.Generator().manual_seed(8)

    def batch(r, k, fg_fraction=0.3, scale=1.0):
        logits = torch.randn(r, k + 1, generator=g) * 2
        reg = torch.randn(r, 4 * (k + 1), generator=g) * scale
        lab = torch.where(torch.rand(r, generator=g) < fg_fraction, torch.randint(1, k + 1, (r,), generator=g), 0)
        return logits, reg, lab, torch.randn(r, 4, generator=g) * scale

    cases = [
        Case("one foreground RoI", (torch.tensor([[0.0, 2, 0, 0, 0, 0]]), torch.zeros(1, 24), torch.tensor([1]),
                                    torch.tensor([[0.2, -0.1, 0.3, 1.8]]))),
        Case("16 RoIs, 4 classes + background", batch(16, 4)),
        Case("only background RoIs (no box loss)", batch(8, 3, fg_fraction=0.0)),
        Case("large offsets (the linear part of smooth L1)", batch(32, 5, scale=4.0)),
        Case("lambda = 2", batch(16, 4), {"lam": 2.0}),
        Case("no RoIs (a zero loss)", (torch.zeros(0, 5), torch.zeros(0, 20), torch.zeros(0, dtype=torch.int64),
                                       torch.zeros(0, 4))),
        Case("512 RoIs, 80 classes", batch(512, 80, scale=2.0)),
    ]

    def like(**kw):
        return lambda out, exp, case: isinstance(out, torch.Tensor) and torch.allclose(
            out.detach(), _loss_variant(*case.args, **case.kwargs, **kw).detach(), atol=1e-5)

    hints = [
        Hint("Average the box loss over all R sampled RoIs, not over the foreground ones only.", when=like(per_fg=True)),
        Hint("Take the 4 offsets predicted for the RoI's *true* class u: columns 4u .. 4u + 3.", when=like(column=0)),
        Hint("L_loc is smooth L1 (eq. 3): 0.5 x^2 for |x| < 1, |x| - 0.5 beyond -- not L2.", when=like(l2=True)),
        Hint("With no RoI at all return a zero that is still connected to the inputs (e.g. class_logits.sum() * 0).",
             when=lambda out, exp, case: case.label.startswith("no RoIs")),
    ]
    return check_function("multitask_loss", fn, reference=_loss_reference, cases=cases, chapter=CHAPTER, hints=hints,
                          check_grad=True)
