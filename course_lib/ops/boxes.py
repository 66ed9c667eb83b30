"""Box geometry: formats, areas, IoU, GIoU, clipping and filtering.

A box is four numbers. Detectors store them as corners ``(x1, y1, x2, y2)``
("xyxy": top-left and bottom-right, in pixels, x to the right and y down); a
box of width ``x2 - x1`` and height ``y2 - y1``. There is no ``+ 1``: a box
from x = 0 to x = 10 is 10 pixels wide (torchvision's convention, unlike the
original R-CNN code that counted pixels inclusively).

Everything here works on whole tensors of boxes at once (``[..., 4]``), never box by box,
and equals ``torchvision.ops`` exactly (``tests/ops/test_boxes.py``).

Where validation lives. Functions that *compare* user-facing boxes (``box_iou``,
``generalized_box_iou``, and ``nms`` in ``nms.py``) reject NaN coordinates and
inverted boxes (``x2 < x1``) with a ``ValueError``: an inverted box has a negative
area and silently corrupts every IoU it takes part in. Zero-area boxes
(``x2 == x1``) are valid everywhere. The plumbing that detectors run on raw network
output (``box_convert``, ``box_area``, ``clip_boxes_to_image``,
``remove_small_boxes``) only checks shapes: decoded boxes may legitimately be
degenerate or even NaN there, and ``remove_small_boxes`` is exactly the step that
throws such boxes away.
"""
from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "box_area",
    "box_convert",
    "box_iou",
    "clip_boxes_to_image",
    "generalized_box_iou",
    "remove_small_boxes",
]

_FORMATS = ("xyxy", "xywh", "cxcywh")


# --------------------------------------------------------------------------- checks
def _check_shape(boxes: Tensor, fn: str, name: str = "boxes", shape: str = "[..., 4]") -> None:
    """Cheap (no data read): ``boxes`` must be a tensor shaped like ``shape``
    ("[..., 4]": any number of leading dimensions; "[..., N, 4]": at least one)."""
    if not isinstance(boxes, Tensor):
        raise TypeError(f"{fn}: {name} must be a torch.Tensor of shape {shape}, got {type(boxes).__name__}")
    if boxes.dim() < shape.count(",") or boxes.shape[-1] != 4:
        raise ValueError(f"{fn}: {name} must have shape {shape} (4 numbers per box), got {list(boxes.shape)}")


def _check_fmt(fmt: str, fn: str, name: str = "fmt") -> None:
    if fmt not in _FORMATS:
        raise ValueError(
            f"{fn}: unsupported box format {name}={fmt!r}; use one of {_FORMATS} "
            "(rotated formats are not part of course_lib)"
        )


def _check_valid(boxes: Tensor, fn: str, name: str = "boxes", fmt: str = "xyxy") -> None:
    """Reject NaN coordinates and inverted boxes with one vectorised reduction.

    For "xyxy" a box is valid when ``x2 >= x1`` and ``y2 >= y1``; for "xywh" and
    "cxcywh" when ``w >= 0`` and ``h >= 0``. Comparisons with NaN are False, so one
    ``>=`` catches both problems. Zero-area boxes pass.
    """
    if boxes.numel() == 0:
        return
    if fmt == "xyxy":
        ok = boxes[..., 2:] >= boxes[..., :2]
    else:  # also catch NaN positions: NaN == NaN is False
        ok = (boxes[..., 2:] >= 0) & (boxes[..., :2] == boxes[..., :2])
    if bool(ok.all()):
        return
    flat = boxes.reshape(-1, 4)
    bad = int((~ok.reshape(-1, 2).all(dim=1)).nonzero()[0, 0])
    box = [round(float(v), 4) for v in flat[bad]]
    what = "x2 >= x1 and y2 >= y1" if fmt == "xyxy" else "w >= 0 and h >= 0"
    raise ValueError(
        f"{fn}: {name} must be {fmt} boxes without NaN and with {what}; box {bad} (counting over "
        f"{list(boxes.shape[:-1])}) is {box}. Convert the format with box_convert or drop bad boxes first."
    )


def _upcast(t: Tensor) -> Tensor:
    """Float16/bfloat16 -> float32 and small ints -> int32 before multiplying
    coordinates, so that areas do not overflow (as torchvision does)."""
    if t.is_floating_point():
        return t if t.dtype in (torch.float32, torch.float64) else t.float()
    return t if t.dtype in (torch.int32, torch.int64) else t.int()


# --------------------------------------------------------------------------- formats
def _xyxy_from(boxes: Tensor, fmt: str) -> Tensor:
    if fmt == "xyxy":
        return boxes
    a, b, w, h = boxes.unbind(-1)
    if fmt == "xywh":  # (x1, y1) is the top-left corner
        return torch.stack((a, b, a + w, b + h), dim=-1)
    # "cxcywh": (a, b) is the centre
    return torch.stack((a - 0.5 * w, b - 0.5 * h, a + 0.5 * w, b + 0.5 * h), dim=-1)


def _xyxy_to(boxes: Tensor, fmt: str) -> Tensor:
    if fmt == "xyxy":
        return boxes
    x1, y1, x2, y2 = boxes.unbind(-1)
    w, h = x2 - x1, y2 - y1
    if fmt == "xywh":
        return torch.stack((x1, y1, w, h), dim=-1)
    return torch.stack(((x1 + x2) / 2, (y1 + y2) / 2, w, h), dim=-1)


def box_convert(boxes: Tensor, in_fmt: str, out_fmt: str) -> Tensor:
    """Convert boxes between the three axis-aligned formats.

    * ``"xyxy"``: corners ``(x1, y1, x2, y2)`` -- what every function here expects;
    * ``"xywh"``: top-left corner and size ``(x1, y1, w, h)`` -- the COCO annotation format;
    * ``"cxcywh"``: centre and size ``(cx, cy, w, h)`` -- the R-CNN box parameterisation
      (see ``BoxCoder``) and DETR's output.

    Every conversion goes through corners, so xywh -> cxcywh is xywh -> xyxy -> cxcywh.

    Args:
        boxes (Tensor[..., 4]): boxes in ``in_fmt``; any leading batch dimensions.
        in_fmt, out_fmt (str): one of "xyxy", "xywh", "cxcywh".

    Returns:
        Tensor[..., 4]: a new tensor (a copy even when ``in_fmt == out_fmt``).
    """
    _check_fmt(in_fmt, "box_convert", "in_fmt")
    _check_fmt(out_fmt, "box_convert", "out_fmt")
    _check_shape(boxes, "box_convert")
    if in_fmt == out_fmt:
        return boxes.clone()
    return _xyxy_to(_xyxy_from(boxes, in_fmt), out_fmt)


def box_area(boxes: Tensor, fmt: str = "xyxy") -> Tensor:
    """Area ``w * h`` of each box, ``(x2 - x1) * (y2 - y1)`` for corners.

    Args:
        boxes (Tensor[..., 4]): boxes in format ``fmt`` (default "xyxy").

    Returns:
        Tensor[...]: one area per box (float16 is computed in float32).
    """
    _check_fmt(fmt, "box_area")
    _check_shape(boxes, "box_area")
    boxes = _upcast(boxes)
    if fmt == "xyxy":
        x1, y1, x2, y2 = boxes.unbind(-1)
        return (x2 - x1).mul_(y2 - y1)  # in place on the new tensor of widths: one temporary fewer
    return boxes[..., 2] * boxes[..., 3]


# --------------------------------------------------------------------------- IoU
def _corners(boxes: Tensor, fmt: str) -> tuple[Tensor, Tensor]:
    """Top-left and bottom-right corners, each ``[..., 2]``."""
    if fmt == "xyxy":
        return boxes[..., :2], boxes[..., 2:]
    if fmt == "xywh":
        return boxes[..., :2], boxes[..., :2] + boxes[..., 2:]
    return boxes[..., :2] - boxes[..., 2:] / 2, boxes[..., :2] + boxes[..., 2:] / 2


def _inter_union(boxes1: Tensor, boxes2: Tensor, fmt: str = "xyxy") -> tuple[Tensor, Tensor]:
    """Pairwise intersection and union areas, ``[..., N, M]`` each (no checks).

    The intersection of two boxes is the box between the larger top-left corner and
    the smaller bottom-right corner, empty (0) when they do not overlap;
    ``union = area1 + area2 - intersection``.
    """
    area1 = box_area(boxes1, fmt)
    area2 = box_area(boxes2, fmt)
    lt1, rb1 = _corners(boxes1, fmt)
    lt2, rb2 = _corners(boxes2, fmt)
    lt = torch.max(lt1[..., :, None, :], lt2[..., None, :, :])  # [..., N, M, 2]
    rb = torch.min(rb1[..., :, None, :], rb2[..., None, :, :])
    wh = _upcast(rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    union = area1[..., :, None] + area2[..., None, :] - inter
    return inter, union


def _check_pair(boxes1: Tensor, boxes2: Tensor, fn: str, fmt: str) -> None:
    _check_fmt(fmt, fn)
    _check_shape(boxes1, fn, "boxes1", "[..., N, 4]")
    _check_shape(boxes2, fn, "boxes2", "[..., M, 4]")
    try:
        torch.broadcast_shapes(boxes1.shape[:-2], boxes2.shape[:-2])
    except RuntimeError:
        raise ValueError(
            f"{fn}: the batch dimensions of boxes1 {list(boxes1.shape)} and boxes2 "
            f"{list(boxes2.shape)} do not broadcast"
        ) from None
    _check_valid(boxes1, fn, "boxes1", fmt)
    _check_valid(boxes2, fn, "boxes2", fmt)


def box_iou(boxes1: Tensor, boxes2: Tensor, fmt: str = "xyxy") -> Tensor:
    """Intersection over union (Jaccard index) of every pair of boxes.

    ``IoU(A, B) = |A ∩ B| / |A ∪ B|``, 1 for identical boxes and 0 for disjoint ones.
    It is the overlap measure of the whole R-CNN family: R-CNN labels a proposal as
    an object when IoU >= 0.5 with a ground-truth box, Faster R-CNN (sec. 3.1.2) labels
    an anchor positive at IoU >= 0.7 and negative below 0.3, and NMS suppresses boxes
    overlapping a better one by more than a threshold.

    Two zero-area boxes have union 0 and IoU 0/0 = NaN (as in torchvision); NaN is never
    above a threshold, so such pairs neither match nor suppress each other.

    Args:
        boxes1 (Tensor[..., N, 4]), boxes2 (Tensor[..., M, 4]): boxes in ``fmt``.
        fmt (str): "xyxy" (default), "xywh" or "cxcywh".

    Returns:
        Tensor[..., N, M]: ``iou[..., i, j] = IoU(boxes1[..., i], boxes2[..., j])``.

    Raises:
        ValueError: wrong shapes, NaN coordinates or inverted boxes (x2 < x1).
    """
    _check_pair(boxes1, boxes2, "box_iou", fmt)
    inter, union = _inter_union(boxes1, boxes2, fmt)
    return inter / union


def generalized_box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Generalized IoU (Rezatofighi et al., CVPR 2019, Algorithm 1) of every pair.

    ``GIoU(A, B) = IoU(A, B) - |C \\ (A ∪ B)| / |C|`` where ``C`` is the smallest box
    enclosing both A and B. Unlike IoU it keeps decreasing as disjoint boxes move
    apart (from 1 for identical boxes towards -1), which makes ``1 - GIoU`` a usable
    regression loss even without overlap.

    Args:
        boxes1 (Tensor[..., N, 4]), boxes2 (Tensor[..., M, 4]): boxes in "xyxy".

    Returns:
        Tensor[..., N, M]: pairwise GIoU in [-1, 1].

    Raises:
        ValueError: wrong shapes, NaN coordinates or inverted boxes (x2 < x1).
    """
    _check_pair(boxes1, boxes2, "generalized_box_iou", "xyxy")
    inter, union = _inter_union(boxes1, boxes2)
    iou = inter / union
    lt = torch.min(boxes1[..., :, None, :2], boxes2[..., None, :, :2])  # enclosing box C
    rb = torch.max(boxes1[..., :, None, 2:], boxes2[..., None, :, 2:])
    wh = _upcast(rb - lt).clamp(min=0)
    area_c = wh[..., 0] * wh[..., 1]
    return iou - (area_c - union) / area_c


# --------------------------------------------------------------------------- clip / filter
def clip_boxes_to_image(boxes: Tensor, size: tuple[int, int]) -> Tensor:
    """Clamp box corners into the image: ``0 <= x <= width`` and ``0 <= y <= height``.

    Faster R-CNN (sec. 3.1.3) clips proposals to the image boundary at test time;
    a box that lies completely outside becomes a zero-area box on the border,
    which ``remove_small_boxes`` then drops.

    Args:
        boxes (Tensor[..., 4]): "xyxy" boxes (degenerate or out-of-image boxes allowed).
        size (tuple[int, int]): image ``(height, width)`` -- note the order.

    Returns:
        Tensor[..., 4]: clipped boxes, same shape and dtype.
    """
    _check_shape(boxes, "clip_boxes_to_image")
    if len(size) != 2:
        raise ValueError(f"clip_boxes_to_image: size must be (height, width), got {size!r}")
    height, width = size
    x1, y1, x2, y2 = boxes.unbind(-1)
    return torch.stack(
        (x1.clamp(min=0, max=width), y1.clamp(min=0, max=height), x2.clamp(min=0, max=width), y2.clamp(min=0, max=height)),
        dim=-1,
    )


def remove_small_boxes(boxes: Tensor, min_size: float) -> Tensor:
    """Indices of the boxes whose width and height are both at least ``min_size``.

    The RPN (and the final detector output) use it after clipping to discard
    degenerate boxes; a NaN box fails the test and is discarded too.

    Args:
        boxes (Tensor[N, 4]): "xyxy" boxes (degenerate boxes allowed: that is the point).
        min_size (float): smallest side length to keep.

    Returns:
        Tensor[K] (int64): indices into ``boxes`` of the boxes kept, ascending.
    """
    _check_shape(boxes, "remove_small_boxes")
    ws = boxes[..., 2] - boxes[..., 0]
    hs = boxes[..., 3] - boxes[..., 1]
    keep = (ws >= min_size) & (hs >= min_size)
    return torch.where(keep)[0]
