"""Non-maximum suppression (NMS): one detection per object.

A detector fires many overlapping boxes on every object. Greedy NMS keeps the
best one and drops its near-duplicates (R-CNN sec. 2.2; Faster R-CNN sec. 3.3
applies it to the RPN proposals with IoU 0.7):

    sort the boxes by score, highest first
    for each box, in that order:
        if no box kept so far overlaps it with IoU > iou_threshold: keep it

The textbook loop above visits every box and compares it with every kept one.
This implementation gives exactly the same answer as torchvision's kernel (same
indices, same order: a stable sort, so equal scores keep the lower index first), but
vectorised, in blocks of sorted boxes:

1. Inside a block of ``BLOCK`` boxes, compute the ``over[i, j] = IoU > threshold``
   matrix and solve "keep j unless a *kept* i < j has ``over[i, j]``" by rounds
   of a matrix-vector product (``_greedy_within``).
2. Compare the boxes kept in the block with all later boxes at once and drop
   those they suppress; the next block is made of the survivors only.

So the work is proportional to (kept boxes) x (boxes), as in the textbook loop,
but done by a few large tensor operations per block instead of one Python step
per box, on the CPU and the GPU alike.

``batched_nms`` runs NMS independently per class (or per image, or per pyramid level):
boxes of different categories never suppress each other. It makes torchvision's
choices, so that it returns the very same indices in the very same order -- also
among exactly equal scores, which a detector produces in bulk on a blank image:

* up to 1000 boxes on the CPU (``boxes.numel() <= 4000``; 25 000 boxes on a GPU) the
  *coordinate trick*: every class's boxes are shifted by ``class * (max_coordinate + 1)``
  so that different classes cannot overlap, and one ``nms`` runs on all of them. The
  result is sorted by decreasing score, equal scores by index (``nms``'s stable order).
  The shift is done in the boxes' dtype, so it rounds (in float32 a class-79 box at
  x ~ 80 000 moves by up to 1/256 px) and can flip an IoU that lies close to the
  threshold; we shift, and round, exactly as torchvision does.
* above that, the *per-class* strategy: exact NMS within each class (here all classes side
  by side in one padded ``[classes, M, M]`` IoU tensor when that is small, else one pass over
  the boxes grouped by class; not torchvision's Python loop over the classes),
  then the kept indices, in increasing order, sorted by ``scores[keep].sort(descending=True)``
  -- PyTorch's default, *unstable* sort, so equal scores come in whatever order that sort
  leaves them; calling the same sort on the same values reproduces it.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from .pooling import _one_thread

__all__ = ["nms", "batched_nms"]

# Sizes keep every intermediate tensor below 2**15 elements: small enough to stay in the
# CPU cache and below PyTorch's threshold for splitting an operation across threads
# (whose synchronisation costs more than it saves here, and a lot on a busy machine).
# For the same reason gathers use index_select / masked_select rather than tensor[index],
# whose CPU kernel goes multi-threaded on a few thousand elements.
BLOCK = 128  # boxes resolved together: BLOCK x BLOCK IoU matrices
CHUNK = 2**15 - 1  # most IoUs computed at a time when comparing kept boxes with later ones
MAX_ROUNDS = 10  # vectorised rounds per block before falling back to the loop over kept boxes
SIDE_BY_SIDE = 1 << 20  # batched_nms: largest [groups, M, M] IoU tensor for all groups at once


# --------------------------------------------------------------------------- checks
def _check_inputs(fn: str, boxes: Tensor, scores: Tensor, iou_threshold: float, idxs: Tensor | None = None) -> None:
    """Shapes always; then one vectorised pass for NaN / infinite / inverted boxes and NaN scores.

    Zero-area boxes (x2 == x1) are valid: they overlap nothing (IoU 0, or 0/0 = NaN with
    another zero-area box, which is never above the threshold) and are simply kept.
    Infinite coordinates are rejected: detectors clip their boxes to the image before NMS.
    """
    if not isinstance(boxes, Tensor) or boxes.dim() != 2 or boxes.shape[1] != 4:
        got = list(boxes.shape) if isinstance(boxes, Tensor) else type(boxes).__name__
        raise ValueError(f"{fn}: boxes must have shape [N, 4] (x1, y1, x2, y2), got {got}")
    if not boxes.is_floating_point():
        raise ValueError(f"{fn}: boxes must be floating point, got {boxes.dtype}; call boxes.float() first")
    if not float(iou_threshold) >= 0:  # also catches NaN
        raise ValueError(f"{fn}: iou_threshold must be >= 0 (an IoU is never negative), got {iou_threshold}")
    n = boxes.shape[0]
    if not isinstance(scores, Tensor) or scores.shape != (n,):
        got = list(scores.shape) if isinstance(scores, Tensor) else type(scores).__name__
        raise ValueError(f"{fn}: scores must have shape [N] = [{n}] (one per box), got {got}")
    if idxs is not None:
        if not isinstance(idxs, Tensor) or idxs.shape != (n,):
            got = list(idxs.shape) if isinstance(idxs, Tensor) else type(idxs).__name__
            raise ValueError(f"{fn}: idxs must have shape [N] = [{n}] (one category per box), got {got}")
        if idxs.is_floating_point() or idxs.is_complex() or idxs.dtype == torch.bool:
            raise ValueError(f"{fn}: idxs must hold integer category ids, got {idxs.dtype}")
    if n == 0:
        return
    sides = boxes[:, 2:] - boxes[:, :2]  # NaN if a coordinate is NaN (or inf - inf), inf if one is inf
    smallest, largest = torch.aminmax(sides)  # both NaN if any side is
    if not (bool(smallest >= 0) and bool(largest < float("inf"))):
        valid = ((sides >= 0) & (sides < float("inf"))).all(dim=1)
        i = int((~valid).nonzero()[0, 0])
        raise ValueError(
            f"{fn}: boxes must be finite (x1, y1, x2, y2) with x2 >= x1 and y2 >= y1; box {i} is "
            f"{[round(float(v), 4) for v in boxes[i]]}. Convert with box_convert or filter the boxes first."
        )
    if bool(scores.amin().isnan()):
        raise ValueError(f"{fn}: scores contain NaN (box {int(scores.isnan().nonzero()[0, 0])})")


def _threshold(iou_threshold: float, dtype: torch.dtype, device: torch.device) -> Tensor:
    """The threshold as a tensor of the IoU dtype, rounded *down*.

    torchvision compares each float32 IoU with the double threshold. Rounding the
    threshold down to the largest float32 <= it gives the same decisions in float32
    (0.3 would otherwise round up to 0.30000001 and an IoU equal to that would be
    kept instead of suppressed).
    """
    threshold = float(iou_threshold)
    t = torch.tensor(threshold, dtype=dtype, device=device)
    if t.double().item() > threshold:
        t = torch.nextafter(t, torch.tensor(float("-inf"), dtype=dtype, device=device))
    return t


# --------------------------------------------------------------------------- the algorithm
def _columns(boxes: Tensor) -> Tensor:
    """``[5, N]``: the rows x1, y1, x2, y2 and area (``(x2 - x1) * (y2 - y1)``, as
    torchvision's kernel computes it), contiguous, so that any subset of boxes is one
    ``index_select`` away and areas are computed once."""
    x1, y1, x2, y2 = boxes.unbind(1)
    return torch.stack((x1, y1, x2, y2, (x2 - x1) * (y2 - y1)))


def _over(a: Tensor, b: Tensor, threshold: Tensor, tiny: float, broadcast: bool = False) -> Tensor:
    """``[len(a), len(b)]`` matrix, ``> 0`` exactly where ``IoU(a_i, b_j) > threshold``.

    ``a`` and ``b`` are ``_columns`` (with ``broadcast``: already shaped to broadcast each other, e.g.
    ``[5, G, M, 1]`` and ``[5, G, 1, M]``). The IoU uses ``box_iou``'s arithmetic (and torchvision's NMS kernel's), ``inter / (area_a + area_b - inter)`` in the boxes'
    dtype, so every comparison with the threshold is decided bit for bit the same. The
    result is ``max(IoU - threshold, 0)``: for floats ``x > t`` exactly when ``x - t > 0``.
    Floats rather than bools so that "does any kept box suppress j" is a vector-matrix
    product. Two zero-area boxes have union 0 and IoU 0 / 0 = NaN, never above the
    threshold; clamping the union to ``tiny`` (the smallest positive float, changing no
    other union) makes that IoU 0 instead, which a product cannot turn into NaN.
    """
    ax1, ay1, ax2, ay2, area_a = a if broadcast else a[:, :, None]  # each [len(a), 1] (broadcast: as given)
    bx1, by1, bx2, by2, area_b = b  # each [len(b)]
    inter_w = torch.minimum(ax2, bx2).sub_(torch.maximum(ax1, bx1)).clamp_(min=0)
    inter_h = torch.minimum(ay2, by2).sub_(torch.maximum(ay1, by1)).clamp_(min=0)
    inter = inter_w.mul_(inter_h)
    union = (area_a + area_b).sub_(inter).clamp_(min=tiny)
    return inter.div_(union).sub_(threshold).clamp_(min=0)


def _greedy_within(over: Tensor) -> Tensor:
    """Greedy NMS inside one block, given ``over[i, j] > 0`` when box i (before j)
    overlaps box j by more than the threshold.

    Box j is kept iff no kept box i < j has ``over[i, j] > 0``. Each round recomputes
    ``keep`` from the previous round's answer with one vector-matrix product. Box 0 is
    always kept, so after round 1 box 0 is final, after round 2 box 1 is, and so on;
    the rounds stop as soon as nothing changes, which is the (unique) greedy answer.
    Suppression chains are usually short, so a few rounds suffice; a long chain (box 1
    suppresses box 2, which would have suppressed box 3, ...) would need one round per
    link, and is finished by the textbook loop instead.
    """
    keep = torch.ones(over.shape[0], dtype=torch.bool, device=over.device)
    for _ in range(MAX_ROUNDS):
        new_keep = (keep.to(over.dtype) @ over) == 0  # [j]: is j overlapped by no kept i?
        if torch.equal(new_keep, keep):
            return keep
        keep = new_keep
    return _greedy_loop(over > 0)


def _greedy_loop(over: Tensor) -> Tensor:
    """The textbook greedy pass over a block, one step per *kept* box, on the CPU:
    keep the first box not suppressed yet, suppress everything it overlaps, repeat."""
    over_np = over.cpu().numpy()
    n = len(over_np)
    keep, suppressed = np.zeros(n, dtype=bool), np.zeros(n, dtype=bool)
    i = 0
    while True:
        keep[i] = True
        suppressed |= over_np[i]
        if i + 1 == n:
            break
        i = i + 1 + int(np.argmin(suppressed[i + 1 :]))  # first box after i not suppressed, if any
        if suppressed[i]:
            break
    return torch.from_numpy(keep).to(over.device)


def _greedy_nms(boxes: Tensor, groups: Tensor | None, iou_threshold: float) -> Tensor:
    """Keep-mask of greedy NMS over ``boxes`` taken in the given order (best first).

    With ``groups`` (sorted ascending, the order within each group best first) a box
    only suppresses boxes of its own group.
    """
    n, device = boxes.shape[0], boxes.device
    keep = torch.zeros(n, dtype=torch.bool, device=device)
    if n == 0:
        return keep
    if boxes.dtype not in (torch.float32, torch.float64):
        boxes = boxes.float()  # half precision: IoUs in float32
    threshold = _threshold(iou_threshold, boxes.dtype, device)
    columns = _columns(boxes)
    tiny = torch.nextafter(boxes.new_zeros(()), boxes.new_ones(())).item()  # smallest positive float
    if groups is not None:  # group_end[p]: one past the last position of p's group (groups are sorted)
        boundary = torch.full_like(groups, n)
        boundary[:-1] = torch.where(groups[1:] != groups[:-1], torch.arange(1, n, device=device), n)
        group_end = boundary.flip(0).cummin(0).values.flip(0)

    candidates = torch.arange(n, device=device)  # positions not suppressed yet, in order
    position = torch.arange(min(BLOCK, n), device=device)
    before = (position[:, None] < position[None, :]).to(boxes.dtype)  # [i, j] = 1 if i < j
    while candidates.numel() > 0:
        block, later = candidates[:BLOCK], candidates[BLOCK:]

        # 1. greedy NMS inside the block: over[i, j] > 0 iff i < j and IoU > threshold
        mask = before[: len(block), : len(block)]
        if groups is not None:
            block_groups = groups.index_select(0, block)
            mask = torch.where(block_groups[:, None] == block_groups[None, :], mask, 0)
        block_columns = columns.index_select(1, block)
        over = _over(block_columns, block_columns, threshold, tiny).mul_(mask)
        kept = block.masked_select(_greedy_within(over))
        keep.index_fill_(0, kept, True)

        # 2. later boxes overlapped by a kept box are suppressed
        if groups is not None:  # only the block's last group continues after the block
            last = block[-1:]
            kept = kept.masked_select(groups.index_select(0, kept) == groups[last])
            same_group = int(torch.searchsorted(later, group_end[last]))  # later is sorted
            later, other_groups = later[:same_group], later[same_group:]
        if later.numel() > 0 and kept.numel() > 0:
            kept_columns, ones = columns.index_select(1, kept), torch.ones(len(kept), dtype=boxes.dtype, device=device)
            chunk = max(1, CHUNK // len(kept))
            excess = torch.cat(  # [len(later)]: > 0 iff some kept box overlaps it by more than the threshold
                [
                    ones @ _over(kept_columns, columns.index_select(1, later[s : s + chunk]), threshold, tiny)
                    for s in range(0, len(later), chunk)
                ]
            )
            later = later.masked_select(excess == 0)
        candidates = later if groups is None else torch.cat((later, other_groups))
    return keep


def _greedy_nms_side_by_side(boxes: Tensor, groups: Tensor, iou_threshold: float) -> Tensor | None:
    """Keep-mask of greedy NMS within each group, all groups at once: the boxes of each group (sorted
    ascending, best first within each) padded to the largest group, one ``[G, M, M]`` tensor of
    ``IoU > threshold`` (``_over``'s arithmetic) and the rounds of ``_greedy_within`` as batched
    products. For many small groups (80 classes of ~60 boxes) this is a few operations instead of
    ``_greedy_nms``'s blocks of 128; None when the padded matrices would exceed ``SIDE_BY_SIDE``
    numbers or a suppression chain needs more than ``MAX_ROUNDS`` rounds (``_greedy_nms`` then)."""
    n, device = boxes.shape[0], boxes.device
    _, sizes = torch.unique_consecutive(groups, return_counts=True)
    g, m = sizes.numel(), int(sizes.max())
    if g * m * m > SIDE_BY_SIDE:
        return None
    if boxes.dtype not in (torch.float32, torch.float64):
        boxes = boxes.float()  # half precision: IoUs in float32
    starts = torch.cumsum(sizes, 0) - sizes
    group_of = torch.repeat_interleave(torch.arange(g, device=device), sizes)
    slot = group_of * m + torch.arange(n, device=device) - starts.index_select(0, group_of)  # [n] in [G * M]
    columns = boxes.new_zeros(5, g * m)  # padding: zero-area boxes at 0, IoU 0 with anything
    columns.index_copy_(1, slot, _columns(boxes))
    columns = columns.view(5, g, m)
    tiny = torch.nextafter(boxes.new_zeros(()), boxes.new_ones(())).item()
    threshold = _threshold(iou_threshold, boxes.dtype, device)
    over = _over(columns.unsqueeze(-1), columns.unsqueeze(-2), threshold, tiny, broadcast=True)  # [G, M, M]
    over.mul_(torch.ones(m, m, dtype=boxes.dtype, device=device).triu_(1))  # [g, i, j]: only i < j suppresses
    keep = torch.ones(g, 1, m, dtype=boxes.dtype, device=device)
    for _ in range(MAX_ROUNDS):
        new_keep = (torch.bmm(keep, over) == 0).to(boxes.dtype)
        if torch.equal(new_keep, keep):
            return keep.view(-1).index_select(0, slot) > 0
        keep = new_keep
    return None


# --------------------------------------------------------------------------- public API
def nms(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """Greedy non-maximum suppression.

    Repeatedly keeps the highest-scoring remaining box and removes every box that
    overlaps it with IoU > ``iou_threshold`` (strictly greater).

    Args:
        boxes (Tensor[N, 4]): "xyxy" boxes with ``x2 >= x1`` and ``y2 >= y1``.
        scores (Tensor[N]): one score per box.
        iou_threshold (float): boxes overlapping a kept box with IoU above it are removed.

    Returns:
        Tensor[K] (int64): indices of the kept boxes, by decreasing score (equal scores:
        lower index first).

    Raises:
        ValueError: wrong shapes, non-float boxes, NaN or inverted boxes, NaN scores.
    """
    _check_inputs("nms", boxes, scores, iou_threshold)
    order = scores.sort(descending=True, stable=True).indices
    return order.masked_select(_greedy_nms(boxes.index_select(0, order), None, iou_threshold))


# torchvision.ops.batched_nms uses the per-class strategy above these sizes (boxes.numel(), i.e. 4 x boxes)
VANILLA_ABOVE = {"cpu": 4000}  # any other device: VANILLA_ABOVE_OTHER
VANILLA_ABOVE_OTHER = 100_000


@_one_thread()  # as torchvision's kernel; [G, M, M] tensors split across threads wait for each other
def batched_nms(boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float) -> Tensor:
    """NMS separately within each category: boxes with different ``idxs`` never
    suppress each other (Fast R-CNN sec. 3 runs NMS per class; torchvision's RPN runs
    it per feature-pyramid level). Same indices, same order as ``torchvision.ops.batched_nms``
    on the same device (see the module docstring for its two strategies).

    Args:
        boxes (Tensor[N, 4]): "xyxy" boxes (an empty tensor of any shape gives an empty result,
            whatever the other arguments, or None, as in torchvision).
        scores (Tensor[N]): one score per box.
        idxs (Tensor[N]): integer category (class, level, image ...) of each box.
        iou_threshold (float): IoU above which a box is removed by a better one of its category.

    Returns:
        Tensor[K] (int64): indices of the kept boxes, by decreasing score over all
        categories; equal scores in torchvision's order (by index up to 1000 boxes on the
        CPU, else as PyTorch's unstable sort leaves them).
    """
    if isinstance(boxes, Tensor) and boxes.numel() == 0:
        # torchvision returns before looking at the other arguments, so its own tests call
        # batched_nms(empty, None, None, None); None is accepted here too, a non-empty tensor is not
        for name, t in (("scores", scores), ("idxs", idxs)):
            if t is not None and (not isinstance(t, Tensor) or t.numel() != 0):
                got = list(t.shape) if isinstance(t, Tensor) else type(t).__name__
                raise ValueError(f"batched_nms: boxes are empty, so {name} must be empty too, got {got}")
        return torch.empty((0,), dtype=torch.int64, device=boxes.device)
    _check_inputs("batched_nms", boxes, scores, iou_threshold, idxs)
    if boxes.numel() > VANILLA_ABOVE.get(boxes.device.type, VANILLA_ABOVE_OTHER):
        return _batched_nms_per_class(boxes, scores, idxs, iou_threshold)
    return _batched_nms_coordinate_trick(boxes, scores, idxs, iou_threshold)


def _batched_nms_coordinate_trick(boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float) -> Tensor:
    """torchvision's small-input strategy, operation for operation: shift each category's boxes
    by ``idx * (max coordinate + 1)`` (in the boxes' dtype) so that categories cannot overlap, then
    one NMS over all."""
    max_coordinate = boxes.max()
    offsets = idxs.to(boxes) * (max_coordinate + torch.tensor(1).to(boxes))
    shifted = boxes + offsets[:, None]
    order = scores.sort(descending=True, stable=True).indices
    return order.masked_select(_greedy_nms(shifted.index_select(0, order), None, iou_threshold))


def _batched_nms_per_class(boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float) -> Tensor:
    """torchvision's large-input strategy (``_batched_nms_vanilla``): exact NMS within each category,
    then the kept indices (increasing) reordered by the same unstable descending sort of their scores."""
    sorted_scores, by_score = scores.sort(descending=True, stable=True)
    by_class = idxs.index_select(0, by_score).sort(stable=True).indices
    order = by_score.index_select(0, by_class)  # class by class, best first within each class
    boxes_in_order, groups_in_order = boxes.index_select(0, order), idxs.index_select(0, order)
    keep_in_order = _greedy_nms_side_by_side(boxes_in_order, groups_in_order, iou_threshold)
    if keep_in_order is None:  # a large category, or a long suppression chain
        keep_in_order = _greedy_nms(boxes_in_order, groups_in_order, iou_threshold)
    keep_mask = torch.zeros_like(keep_in_order)
    keep_mask.index_fill_(0, order.masked_select(keep_in_order), True)
    if not bool((sorted_scores[1:] == sorted_scores[:-1]).any()):
        # no two scores are equal: every sort gives the one order by decreasing score, which by_score already is
        return by_score.masked_select(keep_mask.index_select(0, by_score))
    keep = torch.where(keep_mask)[0]
    return keep[scores[keep].sort(descending=True)[1]]
