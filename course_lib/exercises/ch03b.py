"""Checkers for chapter 3b (the detection toolkit): IoU, the box parameterisation, greedy NMS, the anchor grid.

Each ``check_<name>(fn)`` runs ``fn`` on hidden, seeded cases (random, empty, degenerate, large, exact ties) against
torchvision, prints the largest error and returns ``fn``; a wrong answer raises :class:`ExerciseFailed` with a hint.
"""
from __future__ import annotations

import torch
import torchvision

from .core import Case, Hint, check_function

__all__ = ["check_box_iou", "check_encode_boxes", "check_nms", "check_anchor_grid"]

CHAPTER = "ch03b"


def _boxes(n: int, g: torch.Generator, scale: float = 100.0, min_size: float = 1.0) -> torch.Tensor:
    xy = torch.rand(n, 2, generator=g) * scale
    wh = torch.rand(n, 2, generator=g) * scale / 2 + min_size
    return torch.cat([xy, xy + wh], dim=1)


def _close(a, b) -> bool:
    return isinstance(a, torch.Tensor) and a.shape == b.shape and torch.allclose(a.double(), b.double(), atol=1e-4,
                                                                                 equal_nan=True)


# ----------------------------------------------------------------------------------------------------------- IoU
def _iou_plus_one(b1, b2):  # the "+1 pixel" convention of old code: widths x2 - x1 + 1
    area = lambda b: (b[:, 2] - b[:, 0] + 1) * (b[:, 3] - b[:, 1] + 1)
    lt, rb = torch.max(b1[:, None, :2], b2[None, :, :2]), torch.min(b1[:, None, 2:], b2[None, :, 2:])
    wh = (rb - lt + 1).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    return inter / (area(b1)[:, None] + area(b2)[None] - inter)


def _iou_unclamped(b1, b2):  # forgot to clamp the intersection's width and height at 0
    area = lambda b: (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    lt, rb = torch.max(b1[:, None, :2], b2[None, :, :2]), torch.min(b1[:, None, 2:], b2[None, :, 2:])
    wh = rb - lt
    inter = wh[..., 0] * wh[..., 1]
    return inter / (area(b1)[:, None] + area(b2)[None] - inter)


def check_box_iou(fn):
    """``box_iou(boxes1 [N, 4], boxes2 [M, 4]) -> [N, M]`` (x1, y1, x2, y2), equal to ``torchvision.ops.box_iou``."""
    g = torch.Generator().manual_seed(3)
    a, b = _boxes(6, g), _boxes(9, g)
    apart = torch.tensor([[0.0, 0, 10, 10], [20, 20, 30, 30]])
    touching = torch.tensor([[10.0, 0, 20, 10], [0, 10, 10, 20], [5, 5, 15, 15]])
    flat = torch.tensor([[5.0, 5, 5, 15], [0, 0, 10, 10]])  # a zero-width box
    cases = [
        Case("two boxes, half overlapping", (torch.tensor([[0.0, 0, 10, 10]]), torch.tensor([[5.0, 0, 15, 10]]))),
        Case("6 x 9 random boxes", (a, b)),
        Case("disjoint and touching boxes (IoU 0)", (apart, touching)),
        Case("a zero-width box", (flat, a)),
        Case("no boxes on the left", (torch.zeros(0, 4), b)),
        Case("no boxes on the right", (a, torch.zeros(0, 4))),
        Case("500 x 300 random boxes", (_boxes(500, g, 800), _boxes(300, g, 800))),
    ]
    hints = [
        Hint("Boxes are continuous: a box's width is x2 - x1, not x2 - x1 + 1.",
             when=lambda out, exp, case: _close(out, _iou_plus_one(*case.args))),
        Hint("Boxes that do not overlap have a negative 'intersection width': clamp width and height at 0 before "
             "multiplying.", when=lambda out, exp, case: _close(out, _iou_unclamped(*case.args))),
        Hint("The result has one row per box of boxes1 and one column per box of boxes2 ([N, M]).",
             when=lambda out, exp, case: isinstance(out, torch.Tensor) and out.shape == exp.T.shape != exp.shape),
    ]
    return check_function("box_iou", fn, reference=torchvision.ops.box_iou, cases=cases, chapter=CHAPTER, hints=hints)


# ------------------------------------------------------------------------------------------------ box encoding
def _encode_reference(gt_boxes, proposals, weights=(10.0, 10.0, 5.0, 5.0)):
    coder = torchvision.models.detection._utils.BoxCoder(tuple(float(w) for w in weights))
    return coder.encode_single(gt_boxes, proposals)


def _encode_corners(gt, p, weights=(10.0, 10.0, 5.0, 5.0)):  # corners instead of centres
    wx, wy, ww, wh = weights
    pw, ph = p[:, 2] - p[:, 0], p[:, 3] - p[:, 1]
    gw, gh = gt[:, 2] - gt[:, 0], gt[:, 3] - gt[:, 1]
    return torch.stack([wx * (gt[:, 0] - p[:, 0]) / pw, wy * (gt[:, 1] - p[:, 1]) / ph,
                        ww * torch.log(gw / pw), wh * torch.log(gh / ph)], dim=1)


def check_encode_boxes(fn):
    """``encode_boxes(gt_boxes [N, 4], proposals [N, 4], weights=(10, 10, 5, 5)) -> [N, 4]`` weighted
    ``(t_x, t_y, t_w, t_h)`` (R-CNN appendix C), equal to torchvision's ``BoxCoder.encode_single``."""
    g = torch.Generator().manual_seed(5)
    p = _boxes(8, g)
    gt = p + torch.randn(8, 4, generator=g) * 3
    gt[:, 2:] = torch.maximum(gt[:, 2:], gt[:, :2] + 1)
    cases = [
        Case("one box, weights (1, 1, 1, 1)", (torch.tensor([[110.0, 90, 230, 200]]), torch.tensor([[100.0, 100, 200, 180]])),
             {"weights": (1.0, 1.0, 1.0, 1.0)}),
        Case("8 random pairs, weights (10, 10, 5, 5)", (gt, p), {"weights": (10.0, 10.0, 5.0, 5.0)}),
        Case("a box onto itself (all zeros)", (p[:3], p[:3]), {"weights": (10.0, 10.0, 5.0, 5.0)}),
        Case("no boxes", (torch.zeros(0, 4), torch.zeros(0, 4)), {"weights": (10.0, 10.0, 5.0, 5.0)}),
        Case("1000 random pairs, weights (1, 2, 3, 4)", (_boxes(1000, g, 900, 4), _boxes(1000, g, 900, 4)),
             {"weights": (1.0, 2.0, 3.0, 4.0)}),
    ]
    hints = [
        Hint("t_x and t_y move the proposal's centre: use centres (x1 + w / 2), not corners.",
             when=lambda out, exp, case: _close(out, _encode_corners(*case.args, **case.kwargs))),
        Hint("Multiply each target by its weight (w_x t_x, w_y t_y, w_w t_w, w_h t_h).",
             when=lambda out, exp, case: _close(out, _encode_reference(*case.args, weights=(1.0, 1.0, 1.0, 1.0)))),
        Hint("The size targets are log(G_w / P_w) and log(G_h / P_h): ground truth over proposal.",
             when=lambda out, exp, case: isinstance(out, torch.Tensor) and out.shape == exp.shape
             and torch.allclose(out[:, 2:], -exp[:, 2:], atol=1e-4) and exp[:, 2:].abs().max() > 1e-3),
    ]
    return check_function("encode_boxes", fn, reference=_encode_reference, cases=cases, chapter=CHAPTER, hints=hints)


# -------------------------------------------------------------------------------------------------------- NMS
def check_nms(fn):
    """``nms(boxes [N, 4], scores [N], iou_threshold) -> int64 indices`` of the kept boxes, best score first;
    a box is removed when its IoU with a kept, better box is *above* the threshold. Equal to torchvision.ops.nms,
    also on exact score ties (the earlier index wins)."""
    g = torch.Generator().manual_seed(7)
    boxes = _boxes(60, g, 200, 10)
    scores = torch.rand(60, generator=g)
    tied = torch.tensor([0.5, 0.9, 0.5, 0.9, 0.5, 0.7])
    tied_boxes = torch.tensor([[0.0, 0, 10, 10], [1, 0, 11, 10], [2, 0, 12, 10], [30, 30, 40, 40], [31, 30, 41, 40],
                               [0, 1, 10, 11]])
    half = torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 5], [0, 0, 10, 4.9]])  # IoU exactly 0.5, and 0.49
    big = _boxes(1500, g, 600, 8)
    cases = [
        Case("60 random boxes, threshold 0.5", (boxes, scores, 0.5)),
        Case("no boxes", (torch.zeros(0, 4), torch.zeros(0), 0.5)),
        Case("one box", (boxes[:1], scores[:1], 0.7)),
        Case("exact score ties", (tied_boxes, tied, 0.5)),
        Case("IoU exactly at the threshold (kept)", (half, torch.tensor([0.9, 0.8, 0.7]), 0.5)),
        Case("threshold 0: overlapping at all removes", (boxes, scores, 0.0)),
        Case("1500 random boxes, threshold 0.7", (big, torch.rand(1500, generator=g), 0.7)),
    ]
    hints = [
        Hint("Keep the indices into the input boxes, in the order they are kept (best score first), as int64.",
             when=lambda out, exp, case: isinstance(out, torch.Tensor) and out.numel() == exp.numel()
             and not torch.equal(out.long(), exp)),
        Hint("A box is suppressed only when its IoU is strictly above the threshold (IoU > t, not >= t).",
             when=lambda out, exp, case: case.label.startswith("IoU exactly")),
        Hint("On equal scores the box that comes first in the input wins: sort with stable=True.",
             when=lambda out, exp, case: case.label == "exact score ties"),
        Hint("With threshold 0 any overlap at all (IoU > 0) suppresses; boxes that merely touch have IoU 0.",
             when=lambda out, exp, case: case.label.startswith("threshold 0")),
    ]
    return check_function("nms", fn, reference=torchvision.ops.nms, cases=cases, chapter=CHAPTER, hints=hints)


# ------------------------------------------------------------------------------------------------ anchor grid
def _anchor_reference(grid_size, stride, sizes, aspect_ratios):
    from torchvision.models.detection.anchor_utils import AnchorGenerator

    gen = AnchorGenerator((tuple(sizes),), (tuple(aspect_ratios),))
    gen.cell_anchors = [a.to(torch.float32) for a in gen.cell_anchors]
    stride_t = torch.tensor(stride, dtype=torch.int64)
    return gen.grid_anchors([list(grid_size)], [[stride_t, stride_t]])[0]


def check_anchor_grid(fn):
    """``anchor_grid(grid_size=(H, W), stride, sizes, aspect_ratios) -> [H * W * A, 4]``: the anchors of one
    feature map, position-major (row by row), then ratio, then size; equal to torchvision's AnchorGenerator."""
    cases = [
        Case("1 x 1 map, one anchor", ((1, 1), 16, (32,), (1.0,))),
        Case("3 x 4 map, stride 16, 3 sizes x 3 ratios", ((3, 4), 16, (128, 256, 512), (0.5, 1.0, 2.0))),
        Case("non-square 2 x 5 map, stride 4, one size", ((2, 5), 4, (32,), (0.5, 1.0, 2.0))),
        Case("empty map (0 rows)", ((0, 5), 8, (64,), (1.0,))),
        Case("38 x 63 C4 map (600 x 1000 image)", ((38, 63), 16, (128, 256, 512), (0.5, 1.0, 2.0))),
    ]
    hints = [
        Hint("torchvision centres a cell's anchors on (stride * x, stride * y), the cell's top-left pixel -- "
             "not on its centre (stride * x + stride / 2).",
             when=lambda out, exp, case: _close(out, exp + case.args[1] / 2)),
        Hint("An aspect ratio is r = h / w: h = s * sqrt(r), w = s / sqrt(r).",
             when=lambda out, exp, case: _close(out, _anchor_reference(case.args[0], case.args[1], case.args[2],
                                                                       [1 / r for r in case.args[3]]))),
        Hint("Anchors go position by position (row-major: x changes fastest), and within a position ratio by ratio, "
             "size by size; the cell anchor's corners are rounded (torch.round) before shifting.",
             when=lambda out, exp, case: isinstance(out, torch.Tensor) and out.shape == exp.shape),
    ]
    return check_function("anchor_grid", fn, reference=_anchor_reference, cases=cases, chapter=CHAPTER, hints=hints)
