"""Checkers for chapter 5 (Faster R-CNN): the RPN's anchor labels and its proposal filtering.

Each ``check_<name>(fn)`` runs ``fn`` on hidden, seeded cases against ``course_lib.detection.RegionProposalNetwork``
(tested equal to torchvision's) and returns ``fn``, or raises :class:`ExerciseFailed` with a hint.
"""
from __future__ import annotations

import torch
from torch import nn

from course_lib.detection.rpn import RegionProposalNetwork
from course_lib.ops import AnchorGenerator, BoxCoder, ImageList

from .core import Case, Hint, check_function

__all__ = ["check_label_anchors", "check_filter_proposals"]

CHAPTER = "ch05"


def _rpn(fg=0.7, bg=0.3, pre=6000, post=300, nms_thresh=0.7) -> RegionProposalNetwork:
    rpn = RegionProposalNetwork(AnchorGenerator(), nn.Identity(), fg, bg, 256, 0.5,
                                {"training": pre, "testing": pre}, {"training": post, "testing": post}, nms_thresh)
    return rpn.eval()


def _anchors(grid, stride, sizes=(32, 64, 128), ratios=(0.5, 1.0, 2.0)):
    h, w = grid
    gen = AnchorGenerator((tuple(sizes),), (tuple(ratios),))
    return gen(ImageList(torch.zeros(1, 1, h * stride, w * stride), [(h * stride, w * stride)]),
               [torch.zeros(1, 1, h, w)])[0]


# ---------------------------------------------------------------------------------------------- anchor labels
def _label_reference(anchors, gt_boxes, fg_iou_thresh=0.7, bg_iou_thresh=0.3):
    labels, _ = _rpn(fg_iou_thresh, bg_iou_thresh).assign_targets_to_anchors([anchors], [{"boxes": gt_boxes}])
    return labels[0].to(torch.int64)


def _label_variant(anchors, gt_boxes, fg=0.7, bg=0.3, *, low_quality=True, strict_fg=False, ties=True):
    from course_lib.ops import box_iou
    if len(gt_boxes) == 0:
        return torch.zeros(len(anchors), dtype=torch.int64)
    iou = box_iou(gt_boxes, anchors)
    best = iou.max(0).values
    labels = torch.full((len(anchors),), -1, dtype=torch.int64)
    labels[best < bg] = 0
    labels[(best > fg) if strict_fg else (best >= fg)] = 1
    if low_quality:
        if ties:
            labels[(iou == iou.max(1, keepdim=True).values).any(0)] = 1
        else:
            labels[iou.argmax(1)] = 1
    return labels


def check_label_anchors(fn):
    """``label_anchors(anchors [A, 4], gt_boxes [G, 4], fg_iou_thresh=0.7, bg_iou_thresh=0.3) -> int64 [A]``:
    1 (object), 0 (background), -1 (ignored), Faster R-CNN sec. 3.1.2, equal to the library's RPN targets."""
    g = torch.Generator().manual_seed(9)
    grid = _anchors((6, 8), 16)
    gts = torch.tensor([[10.0, 12, 60, 70], [70, 20, 118, 52], [30, 60, 45, 74]])
    exact = torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 7], [0, 0, 10, 3], [0, 0, 10, 2.9], [50, 50, 60, 60]])
    twins = torch.tensor([[0.0, 0, 20, 20], [0, 0, 20, 20], [5, 5, 25, 25], [100, 100, 140, 140]])
    lonely = torch.tensor([[200.0, 200, 204, 204]])  # best IoU with any anchor is tiny
    big = _anchors((38, 63), 16, (128, 256, 512))
    big_gt = torch.rand(12, 2, generator=g) * 800
    big_gt = torch.cat([big_gt, big_gt + torch.rand(12, 2, generator=g) * 300 + 20], 1)
    cases = [
        Case("a 6 x 8 grid of 9 anchors and 3 objects", (grid, gts)),
        Case("IoU exactly 0.7 (positive) and exactly 0.3 (ignored)", (exact, torch.tensor([[0.0, 0, 10, 10]]))),
        Case("an object whose best anchor is below 0.3", (torch.cat([grid, torch.tensor([[190.0, 190, 210, 210]])]),
                                                          torch.cat([gts, lonely]))),
        Case("two anchors tie for an object's best IoU", (twins, torch.tensor([[0.0, 0, 30, 30]]))),
        Case("an image without objects", (grid, torch.zeros(0, 4))),
        Case("thresholds 0.5 / 0.4", (grid, gts), {"fg_iou_thresh": 0.5, "bg_iou_thresh": 0.4}),
        Case("21,546 anchors of a 600 x 1000 image, 12 objects", (big, big_gt)),
    ]

    def like(**kw):
        return lambda out, exp, case: isinstance(out, torch.Tensor) and out.shape == exp.shape and torch.equal(
            out.long(), _label_variant(*case.args, *(case.kwargs.get(k) for k in ("fg_iou_thresh", "bg_iou_thresh")
                                                      if k in case.kwargs), **kw))

    hints = [
        Hint("Each object's best anchor is positive too, whatever its IoU (sec. 3.1.2: 'so that every object has "
             "one').", when=like(low_quality=False)),
        Hint("Positive means IoU >= 0.7: the paper writes 'higher than 0.7', but its released code, torchvision's "
             "Matcher and this course count exactly 0.7 as positive; negative means IoU < 0.3 with every object.",
             when=lambda out, exp, case: case.label.startswith("IoU exactly")),
        Hint("When several anchors tie for an object's best IoU, all of them are positive (compare with the max, not "
             "argmax).", when=like(ties=False)),
        Hint("No object at all: every anchor is background (0).", when=lambda out, exp, case: "without" in case.label),
    ]
    return check_function("label_anchors", fn, reference=_label_reference, cases=cases, chapter=CHAPTER, hints=hints)


# ------------------------------------------------------------------------------------------ proposal filtering
def _filter_reference(anchors, objectness, deltas, image_size, pre_nms_top_n=6000, post_nms_top_n=300,
                      nms_thresh=0.7):
    rpn = _rpn(pre=pre_nms_top_n, post=post_nms_top_n, nms_thresh=nms_thresh)
    proposals = BoxCoder((1.0, 1.0, 1.0, 1.0)).decode_single(deltas, anchors)
    boxes, scores = rpn.filter_proposals(proposals[None], objectness[None], [tuple(image_size)], [len(anchors)])
    return boxes[0], scores[0]


def check_filter_proposals(fn):
    """``filter_proposals(anchors [A, 4], objectness [A] (logits), deltas [A, 4], image_size (H, W),
    pre_nms_top_n=6000, post_nms_top_n=300, nms_thresh=0.7) -> (boxes [P, 4], scores [P])`` for one image and one
    feature map: decode, keep the ``pre_nms_top_n`` best-scored, clip to the image, drop boxes under 1e-3 px, NMS,
    keep the ``post_nms_top_n`` best; scores are probabilities. Equal to the library's RPN (= torchvision's)."""
    g = torch.Generator().manual_seed(10)

    def field(grid, stride, scale=0.3, sizes=(32, 64, 128)):
        a = _anchors(grid, stride, sizes)
        # distinct probabilities, far apart in float32: the order of exactly tied scores after NMS is a convention
        # (torchvision's sort is unstable there), not something to reproduce
        p = (torch.randperm(len(a), generator=g).double() + 1) / (len(a) + 1) * 0.98 + 0.01
        return a, torch.logit(p).float(), torch.randn(len(a), 4, generator=g) * scale

    a1, o1, d1 = field((10, 12), 16)
    a2, o2, d2 = field((10, 12), 16, scale=1.5)  # many boxes cross the border
    a3, o3, d3 = field((4, 5), 16)
    d3[:10, 2] = -30.0  # ten boxes squashed to (almost) zero width
    a4, o4, d4 = field((38, 63), 16, sizes=(128, 256, 512))
    cases = [
        Case("1,080 anchors, all taken before NMS", (a1, o1, d1, (160, 192), 6000, 300, 0.7)),
        Case("the 200 best of 1,080 before NMS, 40 after", (a1, o1, d1, (160, 192), 200, 40, 0.7)),
        Case("boxes crossing the image border", (a2, o2, d2, (160, 192), 500, 100, 0.7)),
        Case("degenerate boxes (zero width)", (a3, o3, d3, (64, 80), 6000, 300, 0.7)),
        Case("NMS at 0.5", (a1, o1, d1, (160, 192), 6000, 300, 0.5)),
        Case("no anchors", (torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, 4), (64, 64), 6000, 300, 0.7)),
        Case("21,546 anchors (600 x 1000): 6000 before NMS, 300 after", (a4, o4, d4, (600, 1000), 6000, 300, 0.7)),
    ]

    def outs(out):
        return isinstance(out, (tuple, list)) and len(out) == 2

    hints = [
        Hint("Take the pre_nms_top_n best *before* NMS and the post_nms_top_n best of what NMS keeps -- not the "
             "post-NMS number first.", when=lambda out, exp, case: outs(out) and len(out[0]) < len(exp[0])),
        Hint("Clip the decoded boxes to the image (clip_boxes_to_image) before NMS.",
             when=lambda out, exp, case: outs(out) and isinstance(out[0], torch.Tensor) and out[0].numel() > 0
             and ((out[0] < 0).any() or (out[0][:, 0::2] > case.args[3][1]).any()
                  or (out[0][:, 1::2] > case.args[3][0]).any())),
        Hint("Scores are probabilities: torch.sigmoid of the objectness logits.",
             when=lambda out, exp, case: outs(out) and isinstance(out[1], torch.Tensor) and out[1].numel() > 0
             and ((out[1] < 0) | (out[1] > 1)).any()),
        Hint("Use the nms_thresh you are given.", when=lambda out, exp, case: case.label == "NMS at 0.5"),
        Hint("Drop boxes narrower or lower than 1e-3 px after clipping (remove_small_boxes).",
             when=lambda out, exp, case: "degenerate" in case.label),
    ]
    return check_function("filter_proposals", fn, reference=_filter_reference, cases=cases, chapter=CHAPTER,
                          hints=hints, atol=1e-4)
