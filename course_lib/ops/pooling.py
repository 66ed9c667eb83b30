"""RoI pooling in pure PyTorch: RoIPool (Fast R-CNN) and RoIAlign (Mask R-CNN).

Both turn a region of interest (RoI) of any size into a fixed ``output_size`` grid of
features, so that a head with fully connected layers can follow:

* **RoIPool** (Girshick, *Fast R-CNN*, sec. 2.1): the RoI is rounded to the feature grid and
  divided into an ``H x W`` grid of sub-windows of size about ``h/H x w/W``; each output is
  the max over its sub-window.
* **RoIAlign** (He et al., *Mask R-CNN*, sec. 3): nothing is rounded; each bin is the average
  of the feature map bilinearly interpolated at a regular grid of sampling points.

Everything is computed for all RoIs, bins and samples at once. Both poolings reduce a
*bag of pixels* per (RoI, bin):

* RoIAlign is *linear* in the feature map: a bin is a weighted sum of pixels (the 4 bilinear
  neighbours of each sampling point, weights ``w_y * w_x``) divided by the number of points.
* RoIPool's bin is the max over the pixels of its sub-window.

We list every bin's (pixel, weight) entries with tensor index arithmetic, lay the map out as
one row of channels per pixel, and let ``F.embedding_bag`` -- a fused gather-and-reduce
(sum or max) over such bags -- compute all bins of all RoIs in one call, differentiably.

RoIAlign's *forward* is instead computed point by point in torchvision's order of operations
(``_roi_align_point_by_point``), so its values equal torchvision's to the last bit; the
embedding_bag form gives its gradient. Rounding, clamping and edge cases follow ``torchvision.ops``
exactly (``tests/ops`` checks equality on random inputs). Where a model needs the compiled speed, wrap it in
:class:`use_torchvision_kernels` to call torchvision's kernels instead (tested equal).
"""
from __future__ import annotations

import bisect
import contextlib
import math
from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "roi_pool",
    "roi_align",
    "use_torchvision_kernels",
    "torchvision_kernels_enabled",
    "check_roi_boxes_shape",
    "convert_boxes_to_roi_format",
]

Boxes = Union[Tensor, Sequence[Tensor]]

# RoIs are processed in chunks of similar size, each with at most this many (bin, pixel)
# entries, so that the index tensors stay small (~100 MB) whatever the RoIs.
CHUNK_ENTRIES = 1 << 22
# RoIAlign's exact forward fetches at most this many numbers per step ([RoIs, PH*PW, J, 4, C] blocks),
# adds J <= POINTS_PER_STEP sampling points per step (a sum over J + 1 < 16 values, see
# _roi_align_point_by_point), and computes the sampling points of at most SETUP_ENTRIES entries at once
# (measured on bench_ops' 512 RoIs, 256 channels: 1 << 19 and J = 4 were fastest, 1 << 20 or 1 << 22 slower)
POINT_CHUNK = 1 << 19
# RoIPool's forward fetches at most this many numbers per step; -FLT_MAX is its kernel's starting max
POOL_CHUNK = 1 << 19
FLT_MAX = 3.4028234663852886e38
POINTS_PER_STEP = 4
SETUP_ENTRIES = 1 << 16

# --------------------------------------------------------------------------- speed switch


@contextlib.contextmanager
def _one_thread():
    """Run the block (or, as a decorator, the function) with one intra-op thread, then restore the
    setting -- as torchvision's CPU RoI and NMS kernels run. Our ops are sequences of memory-bound
    steps: split across the threads they gain little on 2 cores, and when the cores are shared with
    other processes every parallel region waits for a descheduled thread. Measured on the course's
    2-core machine at load 8: ``torch.ceil`` of 300 x 7 numbers took 16 ms with 2 threads (a
    scheduler tick), bench_ops' adaptive roi_align 10x longer with 2 threads than with 1."""
    threads = torch.get_num_threads()
    if threads > 1:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if threads > 1:
            torch.set_num_threads(threads)


_USE_TORCHVISION = False


class use_torchvision_kernels:
    """Switch the RoI ops (``roi_pool``, ``roi_align``, ``ps_roi_*``, ``MultiScaleRoIAlign``)
    to torchvision's compiled kernels -- same results, faster on CPU.

    Works like ``torch.set_grad_enabled``: calling it sets the switch, and used as a context
    manager it restores the previous setting on exit::

        with use_torchvision_kernels():      # only inside the block
            model(images)
        use_torchvision_kernels(True)        # from now on
    """

    def __init__(self, enabled: bool = True):
        global _USE_TORCHVISION
        self.previous = _USE_TORCHVISION
        _USE_TORCHVISION = bool(enabled)

    def __enter__(self) -> "use_torchvision_kernels":
        return self

    def __exit__(self, *exc_info) -> None:
        global _USE_TORCHVISION
        _USE_TORCHVISION = self.previous


def torchvision_kernels_enabled() -> bool:
    """True when :class:`use_torchvision_kernels` is on (default: off, the pure-PyTorch path)."""
    return _USE_TORCHVISION


# ------------------------------------------------------------------ boxes and arguments


def check_roi_boxes_shape(boxes: Boxes) -> None:
    """Boxes are a ``Tensor[K, 5]`` (batch index, x1, y1, x2, y2) or a list with one
    ``Tensor[L, 4]`` (x1, y1, x2, y2) per image; raise a ValueError that says which otherwise."""
    if isinstance(boxes, (list, tuple)):
        for i, b in enumerate(boxes):
            if not isinstance(b, Tensor) or b.dim() != 2 or b.shape[1] != 4:
                shape = tuple(b.shape) if isinstance(b, Tensor) else type(b).__name__
                raise ValueError(
                    f"boxes[{i}] must be a Tensor[L, 4] of (x1, y1, x2, y2) for image {i}, got {shape}"
                )
    elif isinstance(boxes, Tensor):
        if boxes.dim() != 2 or boxes.shape[1] != 5:
            hint = ""
            if boxes.dim() == 2 and boxes.shape[1] == 4:
                hint = (
                    " -- these look like plain (x1, y1, x2, y2) boxes: pass a list with one "
                    "Tensor[L, 4] per image (e.g. [boxes]) or prepend the batch index column"
                )
            raise ValueError(
                f"boxes must be a Tensor[K, 5] of (batch index, x1, y1, x2, y2), got shape "
                f"{tuple(boxes.shape)}{hint}"
            )
    else:
        raise ValueError(
            f"boxes must be a Tensor[K, 5] or a list of Tensor[L, 4], got {type(boxes).__name__}"
        )


def convert_boxes_to_roi_format(boxes: Sequence[Tensor]) -> Tensor:
    """``[Tensor[L_i, 4]]`` -> ``Tensor[sum L_i, 5]`` with the image index ``i`` in column 0."""
    if len(boxes) == 0:
        return torch.zeros(0, 5)
    ids = [torch.full_like(b[:, :1], i) for i, b in enumerate(boxes)]
    return torch.cat([torch.cat(ids), torch.cat(list(boxes))], dim=1)


def _output_size(output_size) -> tuple[int, int]:
    size = (output_size, output_size) if isinstance(output_size, int) else output_size
    is_pair = isinstance(size, (tuple, list, torch.Size)) and len(size) == 2
    if not is_pair or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in size):
        raise ValueError(
            f"output_size must be a positive int or a pair (height, width) of positive ints, "
            f"got {output_size!r}"
        )
    return tuple(size)


def _compute_dtype(input: Tensor) -> torch.dtype:
    """float32 and float64 are computed as they are; half precision is computed in float32."""
    return input.dtype if input.dtype in (torch.float32, torch.float64) else torch.float32


def _prepare(input: Tensor, boxes: Boxes, output_size, spatial_scale: float, op: str):
    """Validate the arguments shared by every RoI op; return (rois Tensor[K, 5], (PH, PW))."""
    if not isinstance(input, Tensor) or input.dim() != 4:
        shape = tuple(input.shape) if isinstance(input, Tensor) else type(input).__name__
        raise ValueError(f"{op}: input must be a 4-D Tensor[N, C, H, W], got {shape}")
    if not input.is_floating_point():
        raise ValueError(f"{op}: input must be a floating-point tensor, got {input.dtype}")
    if input.shape[2] == 0 or input.shape[3] == 0:
        raise ValueError(f"{op}: input has an empty feature map (H, W) = {tuple(input.shape[2:])}")
    size = _output_size(output_size)
    if not (isinstance(spatial_scale, (int, float)) and math.isfinite(spatial_scale) and spatial_scale > 0):
        raise ValueError(
            f"{op}: spatial_scale must be a positive number (feature size / image size, e.g. 1/16), "
            f"got {spatial_scale!r}"
        )
    check_roi_boxes_shape(boxes)
    rois = boxes if isinstance(boxes, Tensor) else convert_boxes_to_roi_format(boxes)
    rois = rois.to(device=input.device, dtype=_compute_dtype(input))
    finite = torch.isfinite(rois).all(dim=1)
    if not bool(finite.all()):
        k = int(torch.nonzero(~finite)[0])
        raise ValueError(
            f"{op}: boxes contain NaN or infinite coordinates (RoI {k}: {rois[k].tolist()}); "
            "check the box regression upstream"
        )
    batch_size = input.shape[0]
    in_range = (rois[:, 0] >= 0) & (rois[:, 0] < batch_size)
    if not bool(in_range.all()):
        k = int(torch.nonzero(~in_range)[0])
        raise ValueError(
            f"{op}: RoI {k} has batch index {rois[k, 0].item():g}, outside [0, {batch_size - 1}] "
            f"for an input with N = {batch_size} images"
        )
    return rois, size


# ------------------------------------------------------------------------- building blocks


def _no_rois(input: Tensor, channels: int, ph: int, pw: int) -> Tensor:
    """The empty result ``[0, channels, PH, PW]``, still attached to ``input``'s graph so that
    ``backward`` gives it a (zero) gradient, as torchvision's kernels do."""
    return input.reshape(-1)[:0].reshape(0, channels, ph, pw)


def _pixel_table(input: Tensor) -> Tensor:
    """``[N, C, H, W]`` -> ``[N*H*W, C]``: one row of channels per pixel, row ``(n*H + y)*W + x``.

    Fetching a pixel then copies its C channels at once."""
    n, c, h, w = input.shape
    return input.permute(0, 2, 3, 1).reshape(n * h * w, c)


def _bags(keep: Tensor) -> tuple[Tensor, Tensor]:
    """Padded ``[R, J]`` entries -> positions of the kept ones (flat) and where each row's bag starts."""
    sizes = keep.sum(dim=1)
    return torch.nonzero(keep.reshape(-1)).squeeze(1), torch.cumsum(sizes, 0) - sizes


def _sum_of_pixels(table: Tensor, pixels: Tensor, weights: Optional[Tensor], keep: Tensor) -> Tensor:
    """``out[r] = sum_j weights[r, j] * table[pixels[r, j]]`` over the entries with ``keep[r, j]``
    (weights None: all 1).

    ``F.embedding_bag`` -- the recommender-systems op that sums the table rows listed in each
    "bag" -- does exactly this in one fused, differentiable kernel: a bag is one RoI bin, its
    rows are pixels. An empty bag gives 0."""
    kept, offsets = _bags(keep)
    weights = None if weights is None else weights.reshape(-1)[kept].to(table.dtype)
    return F.embedding_bag(pixels.reshape(-1)[kept], table, offsets, mode="sum", per_sample_weights=weights)


def _max_of_pixels(table: Tensor, pixels: Tensor, keep: Tensor) -> Tensor:
    """``out[r] = max_j table[pixels[r, j]]`` over the entries with ``keep[r, j]``; 0 if there are none.

    The gradient flows to the first maximal entry of each bag (``embedding_bag``'s max mode)."""
    kept, offsets = _bags(keep)
    return F.embedding_bag(pixels.reshape(-1)[kept], table, offsets, mode="max")


def _round_half_away_from_zero(x: Tensor) -> Tensor:
    """C's ``round()``: halves go away from zero (``torch.round`` sends them to the even neighbour)."""
    whole = torch.trunc(x)
    return whole + torch.sign(x) * ((x - whole).abs() >= 0.5)


def _bilinear_axis(
    start: Tensor, bin_size: Tensor, grid: Tensor, max_grid: int, pooled: int, length: int
) -> tuple[Tensor, Tensor, Tensor]:
    """Sampling points along one axis and their two interpolation neighbours (Mask R-CNN sec. 3).

    Bin ``p`` of a RoI starting at ``start`` holds ``grid`` regularly spaced points
    ``start + p*bin_size + (i + 0.5) * bin_size / grid``, ``i < grid``. Each point at ``t``
    reads pixels ``floor(t)`` and ``floor(t) + 1`` with weights ``1 - frac(t)`` and ``frac(t)``.
    Like torchvision, a point outside ``[-1, length]`` reads nothing; inside, ``t`` is clamped
    to ``[0, length - 1]`` (the border pixel is repeated).

    start, bin_size, grid: ``[K]``. Returns pixel index and weight, both ``[K, pooled, max_grid, 2]``,
    and ``[K, pooled, max_grid]`` whether the point counts (False for points a RoI does not have,
    ``i >= grid``, or that fall outside).
    """
    dtype = start.dtype
    p = torch.arange(pooled, device=start.device, dtype=dtype).view(1, -1, 1)
    i = torch.arange(max_grid, device=start.device, dtype=dtype).view(1, 1, -1)
    start, bin_size, grid = start.view(-1, 1, 1), bin_size.view(-1, 1, 1), grid.view(-1, 1, 1)
    t = start + p * bin_size + (i + 0.5) * bin_size / grid.clamp(min=1).to(dtype)
    inside = (i < grid) & (t >= -1) & (t <= length)
    t = torch.where(inside, t, 0).clamp(min=0)
    low = t.to(torch.int64)  # t >= 0: truncation is floor
    at_border = low >= length - 1
    low = low.clamp(max=length - 1)
    high = torch.where(at_border, low, low + 1)
    t = torch.where(at_border, low.to(dtype), t)
    frac = t - low.to(dtype)
    return torch.stack([low, high], dim=-1), torch.stack([1 - frac, frac], dim=-1), inside


def _merge_shared_pixels(
    index: Tensor, weight: Tensor, inside: Tensor, length: int
) -> tuple[Tensor, Tensor, Tensor]:
    """Add up the weights of the points of a bin that read the same pixel.

    With dense sampling (adaptive: about one point per pixel) neighbouring points share their
    neighbours, so a bin reads a window of about ``bin_size + 2`` consecutive pixels rather than
    2 per point -- up to 4x fewer (pixel, weight) entries in 2-D. Input ``[K, P, G, 2]`` (and
    ``inside [K, P, G]``); output ``[K, P, E]`` entries per bin: the window if it is shorter
    than ``2G``, else the points' neighbours as they are.
    """
    keep = inside.unsqueeze(-1).expand_as(index).flatten(2)
    index, weight = index.flatten(2), weight.flatten(2)
    first = torch.where(keep, index, length).amin(dim=2, keepdim=True)
    last = torch.where(keep, index, -1).amax(dim=2, keepdim=True)
    span = int((last - first).max().clamp(min=0)) + 1
    if span >= index.shape[2]:
        return index, weight, keep
    offset = torch.where(keep, index - first, 0)
    window = (*index.shape[:2], span)
    merged_weight = weight.new_zeros(window).scatter_add_(2, offset, torch.where(keep, weight, 0))
    merged_keep = keep.new_zeros(window, dtype=torch.int64).scatter_add_(2, offset, keep.long()) > 0
    merged_index = (first + torch.arange(span, device=index.device)).clamp(max=length - 1)
    return merged_index, merged_weight, merged_keep


def _bilinear_entries(
    pixel_offset: Tensor,
    y_start: Tensor,
    x_start: Tensor,
    bin_h: Tensor,
    bin_w: Tensor,
    grid_h: Tensor,
    grid_w: Tensor,
    pooled: tuple[int, int],
    height: int,
    width: int,
) -> tuple[Tensor, Tensor, Tensor]:
    """All (pixel, weight, keep) entries of RoIAlign: ``[K * PH * PW, Ey * Ex]`` each.

    ``pixel_offset[k, ph, pw]`` is the table row of pixel (0, 0) that bin (ph, pw) of RoI k reads
    (it encodes the image, and for position-sensitive pooling the channel group).
    Bilinear weights factor into a y part and an x part: ``w = w_y * w_x``."""
    gy, gx = int(grid_h.max().clamp(min=1)), int(grid_w.max().clamp(min=1))
    row, w_row, in_row = _merge_shared_pixels(*_bilinear_axis(y_start, bin_h, grid_h, gy, pooled[0], height), height)
    col, w_col, in_col = _merge_shared_pixels(*_bilinear_axis(x_start, bin_w, grid_w, gx, pooled[1], width), width)
    # row, col: [K, PH, Ey] and [K, PW, Ex] pixel rows / columns with their weights and masks

    def along_y(t: Tensor) -> Tensor:  # [K, PH, Ey] -> [K, PH, 1, Ey, 1]
        return t[:, :, None, :, None]

    def along_x(t: Tensor) -> Tensor:  # [K, PW, Ex] -> [K, 1, PW, 1, Ex]
        return t[:, None, :, None, :]

    pixels = pixel_offset[..., None, None] + along_y(row) * width + along_x(col)  # [K, PH, PW, Ey, Ex]
    weights = along_y(w_row) * along_x(w_col)
    keep = along_y(in_row) & along_x(in_col)
    rows = pixels.shape[0] * pooled[0] * pooled[1]
    return pixels.reshape(rows, -1), weights.reshape(rows, -1), keep.reshape(rows, -1)


def _roi_chunks(extent: Tensor, cost_per_cell: int, budget: int) -> list[Tensor]:
    """Split RoIs into chunks of similar size whose padded work fits in ``budget``.

    ``extent: [K, 2]`` is each RoI's (height, width) in work units; a chunk is padded to its
    largest extent, costing ``len(chunk) * max_h * max_w * cost_per_cell``. RoIs are grouped by
    extents rounded up to powers of two (padding at most doubles each side), and each group is
    cut to fit the budget. A loop over groups and chunks, never over single RoIs."""
    extent = extent.clamp(min=1)
    k = extent.shape[0]
    if k * int(extent[:, 0].max()) * int(extent[:, 1].max()) * cost_per_cell <= budget:
        return [torch.arange(k, device=extent.device)]
    log_extent = torch.ceil(torch.log2(extent.double())).long()
    group = log_extent[:, 0] * 64 + log_extent[:, 1]
    chunks = []
    for g in torch.unique(group).tolist():
        members = torch.nonzero(group == g).flatten()
        padded = int(extent[members, 0].max()) * int(extent[members, 1].max()) * cost_per_cell
        chunks.extend(members.split(max(1, budget // padded)))
    return chunks


def _in_chunks(fn, chunks: list[Tensor], *per_roi: Tensor) -> Tensor:
    """Apply ``fn`` to each chunk of the per-RoI tensors and put the results back in RoI order."""
    if len(chunks) == 1:
        return fn(*per_roi)
    outputs = [fn(*(t[idx] for t in per_roi)) for idx in chunks]
    order = torch.argsort(torch.cat(chunks))
    return torch.cat(outputs).index_select(0, order)


# ------------------------------------------------------------------------------ RoIAlign


def _roi_align_setup(rois: Tensor, ph: int, pw: int, spatial_scale: float, sampling_ratio: int, aligned: bool):
    """Per RoI: table offset of its image, top-left corner (y1, x1) on the map, bin size, sampling
    grid and number of points -- in torchvision's arithmetic, in the RoIs' dtype."""
    offset = 0.5 if aligned else 0.0
    batch = rois[:, 0].to(torch.int64)
    x1, y1, x2, y2 = (rois[:, 1:] * spatial_scale - offset).unbind(dim=1)
    roi_w, roi_h = x2 - x1, y2 - y1
    if not aligned:  # legacy: force malformed RoIs to be 1x1
        roi_w, roi_h = roi_w.clamp(min=1), roi_h.clamp(min=1)
    bin_h, bin_w = roi_h / ph, roi_w / pw
    if sampling_ratio > 0:
        grid_h = grid_w = torch.full_like(batch, sampling_ratio)
    else:  # adaptive: about one sampling point per feature pixel
        grid_h, grid_w = torch.ceil(bin_h).to(torch.int64), torch.ceil(bin_w).to(torch.int64)
    count = (grid_h * grid_w).clamp(min=1).to(rois.dtype)
    return batch, y1, x1, bin_h, bin_w, grid_h, grid_w, count


def _roi_align_sum_of_pixels(table: Tensor, height: int, width: int, rois: Tensor, ph: int, pw: int,
                             spatial_scale: float, sampling_ratio: int, aligned: bool) -> Tensor:
    """RoIAlign as one weighted sum of pixels per bin (``embedding_bag``) of a :func:`_pixel_table`:
    differentiable, the weights of points that share a pixel merged. Used for the gradient of :func:`roi_align`."""
    c = table.shape[1]
    batch, y1, x1, bin_h, bin_w, grid_h, grid_w, count = _roi_align_setup(
        rois, ph, pw, spatial_scale, sampling_ratio, aligned)
    pixel_offset = (batch * height * width).view(-1, 1, 1)

    def pool(offset_, y1_, x1_, bin_h_, bin_w_, grid_h_, grid_w_, count_):
        pixels, weights, keep = _bilinear_entries(
            offset_.expand(-1, ph, pw), y1_, x1_, bin_h_, bin_w_, grid_h_, grid_w_, (ph, pw), height, width
        )
        summed = _sum_of_pixels(table, pixels, weights, keep).view(-1, ph, pw, c)
        return summed / count_.view(-1, 1, 1, 1)

    extent = torch.stack([grid_h, grid_w], dim=1)
    chunks = _roi_chunks(extent, 4 * ph * pw, CHUNK_ENTRIES)
    return _in_chunks(pool, chunks, pixel_offset, y1, x1, bin_h, bin_w, grid_h, grid_w, count)


def _sampling_points(y1: Tensor, x1: Tensor, bin_h: Tensor, bin_w: Tensor,
                     grid_h: Tensor, grid_w: Tensor, points: Tensor, padded: int, ph: int, pw: int,
                     height: int, width: int, base: Tensor, zero_row: int) -> tuple[Tensor, Tensor]:
    """Table rows and bilinear weights of every sampling point of a group of RoIs, in torchvision's order.

    Point ``j`` of a bin is ``(iy, ix) = divmod(j, grid_w)`` (row by row, as torchvision's loops), for
    ``j < padded``. Its position, neighbours and weights use torchvision's ``pre_calc`` arithmetic:
    ``y = y1 + ph * bin_h + (iy + .5) * bin_h / grid_h``, ``w1..w4 = hy*hx, hy*lx, ly*hx, ly*lx``. A point
    outside the map gets torchvision's all-zero entry (weights 0 at the image's pixel (0, 0), so that
    ``0 * v`` is added exactly as there); points beyond a RoI's grid (padding) read ``zero_row``, a row of
    zeros, with weight 0, and add exactly nothing. Returns pixels and weights ``[M, PH, PW, padded, 4]``."""
    dtype = y1.dtype
    j = torch.arange(padded, device=y1.device)
    gw = grid_w.clamp(min=1).view(-1, 1)
    real = j < points.view(-1, 1)  # [M, padded]
    iy, ix = torch.where(real, j // gw, 0), torch.where(real, j % gw, 0)

    def axis(start: Tensor, bin_size: Tensor, grid: Tensor, i: Tensor, pooled: int, length: int):
        p = torch.arange(pooled, device=start.device, dtype=dtype).view(1, -1, 1)
        bin_size = bin_size.view(-1, 1, 1)
        t = start.view(-1, 1, 1) + p * bin_size + (i[:, None, :].to(dtype) + 0.5) * bin_size / grid.clamp(
            min=1).view(-1, 1, 1).to(dtype)  # [M, pooled, padded]
        inside = (t >= -1) & (t <= length)
        t = t.clamp(min=0)
        low = t.to(torch.int64)  # t >= 0: truncation is floor
        at_border = low >= length - 1
        low = low.clamp(max=length - 1)
        high = torch.where(at_border, low, low + 1)
        frac = torch.where(at_border, low.to(dtype), t) - low.to(dtype)
        return low, high, 1 - frac, frac, inside

    y_lo, y_hi, hy, ly, in_y = axis(y1, bin_h, grid_h, iy, ph, height)
    x_lo, x_hi, hx, lx, in_x = axis(x1, bin_w, grid_w, ix, pw, width)
    # a point outside the map or beyond the grid gets y (or x) factors 0, so its four weights are exactly 0
    # (the factors are finite and >= 0): masked on the small per-axis tensors, not on the full weights
    in_y = in_y & real[:, None, :]
    hy, ly, hx, lx = (torch.where(inside, f, 0) for inside, f in ((in_y, hy), (in_y, ly), (in_x, hx), (in_x, lx)))

    def along_y(t: Tensor) -> Tensor:  # [M, PH, padded] -> [M, PH, 1, padded]
        return t[:, :, None, :]

    def along_x(t: Tensor) -> Tensor:  # [M, PW, padded] -> [M, 1, PW, padded]
        return t[:, None, :, :]

    row_lo, row_hi = base.view(-1, 1, 1, 1) + along_y(y_lo) * width, base.view(-1, 1, 1, 1) + along_y(y_hi) * width
    shape = (y1.shape[0], ph, pw, padded, 4)
    pixels, weights = base.new_empty(shape), hy.new_empty(shape)
    for k, (row, col, fy, fx) in enumerate(((row_lo, x_lo, hy, hx), (row_lo, x_hi, hy, lx),
                                            (row_hi, x_lo, ly, hx), (row_hi, x_hi, ly, lx))):  # the 4 neighbours
        torch.add(row, along_x(col), out=pixels[..., k])
        torch.mul(along_y(fy), along_x(fx), out=weights[..., k])
    # outside the map: the image's pixel (0, 0), as torchvision; beyond the grid: zero_row
    elsewhere = torch.where(real, base.view(-1, 1), zero_row)[:, None, None, :, None]
    return torch.where((along_y(in_y) & along_x(in_x))[..., None], pixels, elsewhere), weights


def _roi_align_point_by_point(input: Tensor, rois: Tensor, ph: int, pw: int, spatial_scale: float,
                              sampling_ratio: int, aligned: bool) -> Tensor:
    """RoIAlign with torchvision's CPU kernel's arithmetic, operation for operation, so the result is the
    same to the last bit: each sampling point's bilinear value ``w1 v1 + w2 v2 + w3 v3 + w4 v4`` (in that
    order), the points of a bin added one after the other (row by row) to a sum that starts at 0, then
    divided by their number. Returns ``[K, C, PH, PW]``.

    Every step is a few large tensor operations over a block of RoIs, bins, points and channels:

    1. the pixels and weights of all sampling points are computed once per group of RoIs
       (:func:`_sampling_points`), RoIs sorted by their number of points so that a group pads little;
    2. ``index_select`` fetches the 4 neighbours of ``J`` points of every bin of a block of RoIs at once
       (rows of the channels-last table) and one ``mul_`` applies their weights;
    3. three additions give the ``J`` points' values, and ``J`` additions add them to the running sums in
       order. (Not ``torch.sum``: its CPU kernel adds 4 or more values in an order that depends on the
       shape, e.g. differently for 3 channels than for 256.)
    """
    n, c, height, width = input.shape
    batch, y1, x1, bin_h, bin_w, grid_h, grid_w, count = _roi_align_setup(
        rois, ph, pw, spatial_scale, sampling_ratio, aligned)
    k, bins, pixels_in_map = rois.shape[0], ph * pw, n * height * width
    table = input.new_empty(pixels_in_map + 1, c)  # channels-last, and a last row of zeros for padding
    table[:pixels_in_map].view(n, height, width, c).copy_(input.permute(0, 2, 3, 1))
    table[pixels_in_map].zero_()
    # no points when a grid side is <= 0 (torchvision's loops do not run; count is still >= 1)
    points = grid_h.clamp(min=0) * grid_w.clamp(min=0)
    order = torch.argsort(points, descending=True, stable=True)
    sorted_points = points.index_select(0, order).tolist()
    fewer_points = [-p for p in sorted_points]  # ascending, for bisect
    base = batch * pixels_in_map // n
    out = input.new_empty(k, bins, c)
    start = 0
    while start < k:
        most = max(1, sorted_points[start])
        step = min(POINTS_PER_STEP, most)  # J: points added per step
        padded = -(-most // step) * step
        per_step = max(1, POINT_CHUNK // (bins * step * 4 * c))  # RoIs fetched per step
        group = max(per_step, SETUP_ENTRIES // (bins * padded * 4) // per_step * per_step)
        # and only RoIs with more than half the first one's points, so that padding at most doubles the work
        # (with few channels per_step is hundreds of RoIs: bench_ops' RoIs on 1 channel took 9x longer without this)
        similar = bisect.bisect_left(fewer_points, -(most // 2), lo=start + 1) - start
        idx = order[start:start + min(group, similar)]
        pixels, weights = _sampling_points(
            y1=y1[idx], x1=x1[idx], bin_h=bin_h[idx], bin_w=bin_w[idx], grid_h=grid_h[idx],
            grid_w=grid_w[idx], points=points[idx], padded=padded, ph=ph, pw=pw, height=height, width=width,
            base=base[idx], zero_row=pixels_in_map)
        m = idx.numel()
        # [M, bins, steps, J, 4] -> [steps, M, bins, J, 4]: one step's entries of a block contiguous
        pixels = pixels.view(m, bins, -1, step, 4).permute(2, 0, 1, 3, 4).contiguous()
        weights = weights.view(m, bins, -1, step, 4, 1).permute(2, 0, 1, 3, 4, 5).contiguous()
        # the steps' intermediate tensors, allocated once per group and refilled (a new megabyte-sized tensor
        # per step costs the allocator's time and fresh pages)
        fetched, summed = table.new_empty(per_step * bins * step * 4, c), table.new_empty(per_step, bins, step, c)
        for first in range(0, m, per_step):
            rows = slice(first, min(first + per_step, m))
            r = rows.stop - rows.start
            steps = -(-max(1, sorted_points[start + first]) // step)  # this block's own largest grid
            total, value = table.new_zeros(r, bins, c), summed[:r]
            for s in range(steps):
                entries = pixels[s, rows].reshape(-1)
                values = torch.index_select(table, 0, entries, out=fetched[:entries.numel()])
                values = values.view(r, bins, step, 4, c).mul_(weights[s, rows])
                v1, v2, v3, v4 = values.unbind(3)
                torch.add(v1, v2, out=value)  # w1 v1 + w2 v2 + w3 v3 + w4 v4, J points at once
                value += v3
                value += v4
                for point in value.unbind(2):  # ((sum + value_1) + value_2) + ...
                    total += point
            torch.div(total, count[idx[rows]].view(-1, 1, 1), out=out[start + rows.start:start + rows.stop])
        start += m
    # back to the RoIs' order and to channels-first in one copy
    result = input.new_empty(k, c, ph, pw)
    result.view(k, c, bins).index_copy_(0, order, out.transpose(1, 2))
    return result


class _RoIAlign(torch.autograd.Function):
    """Forward: :func:`_roi_align_point_by_point` (torchvision's values, bit for bit). Backward: the
    transpose of the same linear map, through the differentiable :func:`_roi_align_sum_of_pixels`
    (RoIAlign is linear in the features, so its gradient does not depend on their values)."""

    @staticmethod
    def forward(ctx, table_input: Tensor, rois: Tensor, ph: int, pw: int, spatial_scale: float,
                sampling_ratio: int, aligned: bool) -> Tensor:
        ctx.save_for_backward(rois)
        ctx.args = (ph, pw, spatial_scale, sampling_ratio, aligned)
        ctx.input_shape, ctx.input_dtype = table_input.shape, table_input.dtype
        return _roi_align_point_by_point(table_input, rois, *ctx.args)

    @staticmethod
    def backward(ctx, grad_output: Tensor):
        (rois,) = ctx.saved_tensors
        n, c, height, width = ctx.input_shape
        with torch.enable_grad(), _one_thread():
            # the gradient with respect to the channels-last table itself: no NCHW map of zeros to fill and copy
            table = grad_output.new_zeros(n * height * width, c, dtype=ctx.input_dtype).requires_grad_()
            pooled = _roi_align_sum_of_pixels(table, height, width, rois, *ctx.args)
            (grad_table,) = torch.autograd.grad(pooled, table, grad_output.permute(0, 2, 3, 1).to(pooled.dtype))
        return grad_table.view(n, height, width, c).permute(0, 3, 1, 2), None, None, None, None, None, None


@_one_thread()
def roi_align(
    input: Tensor,
    boxes: Boxes,
    output_size,
    spatial_scale: float = 1.0,
    sampling_ratio: int = -1,
    aligned: bool = False,
) -> Tensor:
    """RoIAlign (Mask R-CNN, sec. 3), same semantics as ``torchvision.ops.roi_align``.

    Each RoI is divided into ``output_size`` bins without any rounding; each bin averages the
    feature map bilinearly interpolated at ``sampling_ratio x sampling_ratio`` regularly spaced
    points (adaptive when ``sampling_ratio <= 0``: ``ceil(roi_size / output_size)`` points per
    bin and axis, per RoI).

    The values are torchvision's CPU kernel's to the last bit in float32 and float64 (same
    operations in the same order, :func:`_roi_align_point_by_point`): RoIs of exactly equal content
    get exactly equal features in both, so a detector's equal scores -- and the order NMS leaves
    them in -- are the same as torchvision's.

    Args:
        input: ``Tensor[N, C, H, W]`` feature maps.
        boxes: ``Tensor[K, 5]`` (batch index, x1, y1, x2, y2) or a list of ``Tensor[L, 4]``
            (one per image), in image coordinates.
        output_size: ``int`` or ``(PH, PW)``.
        spatial_scale: feature size / image size (e.g. 1/16 for a stride-16 map).
        sampling_ratio: points per bin and axis; ``<= 0`` for adaptive.
        aligned: shift the box by -0.5 pixel so that pixel centres sit at integer + 0.5
            (Detectron2); if False (the legacy default) a RoI is at least 1x1 pixel.

    Returns:
        ``Tensor[K, C, PH, PW]`` of the input's dtype.
    """
    rois, (ph, pw) = _prepare(input, boxes, output_size, spatial_scale, "roi_align")
    if not isinstance(sampling_ratio, int):
        raise ValueError(f"roi_align: sampling_ratio must be an int (<= 0: adaptive), got {sampling_ratio!r}")
    if _USE_TORCHVISION:
        import torchvision

        return torchvision.ops.roi_align(
            input, rois.to(input.dtype), (ph, pw), spatial_scale, sampling_ratio, aligned
        )
    c = input.shape[1]
    if rois.shape[0] == 0:
        return _no_rois(input, c, ph, pw)
    return _RoIAlign.apply(input.to(rois.dtype), rois, ph, pw, float(spatial_scale), sampling_ratio,
                           aligned).to(input.dtype)


# ------------------------------------------------------------------------------- RoIPool


def _pool_windows(start: Tensor, size: Tensor, pooled: int, limit: int, dtype) -> tuple[Tensor, Tensor]:
    """Integer sub-windows ``[lo, hi)`` of a RoI rounded to the grid (Fast R-CNN sec. 2.1).

    Bin ``p`` covers ``floor(p * size / pooled)`` to ``ceil((p + 1) * size / pooled)`` from the
    RoI's start, clipped to ``[0, limit]``. start, size: ``[K]`` ints. Returns two ``[K, pooled]``."""
    bin_size = (size.to(dtype) / pooled).view(-1, 1)
    p = torch.arange(pooled, device=start.device, dtype=dtype)
    lo = torch.floor(p * bin_size).to(torch.int64) + start.view(-1, 1)
    hi = torch.ceil((p + 1) * bin_size).to(torch.int64) + start.view(-1, 1)
    return lo.clamp(0, limit), hi.clamp(0, limit)


def _window_pixels(
    pixel_offset: Tensor, h_lo: Tensor, h_hi: Tensor, w_lo: Tensor, w_hi: Tensor, width: int
) -> tuple[Tensor, Tensor]:
    """Every pixel of every sub-window, padded to the largest window of the chunk.

    Returns table rows ``[K, PH, PW, Bh * Bw]`` and a mask of the real (non-padding) ones."""
    bh = int((h_hi - h_lo).max().clamp(min=1))
    bw = int((w_hi - w_lo).max().clamp(min=1))
    rows = h_lo[..., None] + torch.arange(bh, device=h_lo.device)  # [K, PH, Bh]
    cols = w_lo[..., None] + torch.arange(bw, device=w_lo.device)  # [K, PW, Bw]
    real = (rows < h_hi[..., None])[:, :, None, :, None] & (cols < w_hi[..., None])[:, None, :, None, :]
    pixels = pixel_offset[..., None, None] + rows[:, :, None, :, None] * width + cols[:, None, :, None, :]
    k, ph, pw = pixels.shape[:3]
    return pixels.reshape(k, ph, pw, -1), real.reshape(k, ph, pw, -1)


def _roi_pool_by_window_size(input: Tensor, batch: Tensor, h_lo: Tensor, h_hi: Tensor, w_lo: Tensor,
                             w_hi: Tensor) -> Tensor:
    """RoIPool's forward, ``[K * PH * PW, C]``: the max of every sub-window ``[h_lo, h_hi) x [w_lo, w_hi)``.

    The bins of all RoIs are sorted by their number of pixels; a block of bins of about the same size
    lists its pixels row by row (padded with a row of -inf), one ``index_select`` fetches them from the
    channels-last table and one ``amax`` reduces them -- far fewer, vectorised passes than
    ``embedding_bag``'s max. Values are torchvision's: its kernel keeps ``v > maxval`` from
    ``-FLT_MAX``, so NaN never wins (NaN is -inf here) and a bin is at least ``-FLT_MAX``; an empty bin is 0."""
    n, c, height, width = input.shape
    pixels_in_map = n * height * width
    table = input.new_empty(pixels_in_map + 1, c)
    torch.nan_to_num(input.permute(0, 2, 3, 1), nan=-math.inf, posinf=math.inf, neginf=-math.inf,
                     out=table[:pixels_in_map].view(n, height, width, c))
    table[pixels_in_map].fill_(-math.inf)
    bin_h, bin_w = (h_hi - h_lo).clamp(min=0), (w_hi - w_lo).clamp(min=0)  # [K, PH], [K, PW]
    ph, pw = bin_h.shape[1], bin_w.shape[1]
    area = (bin_h[:, :, None] * bin_w[:, None, :]).reshape(-1)
    first = ((batch[:, None] * height + h_lo).view(-1, ph, 1) * width + w_lo.view(-1, 1, pw)).reshape(-1)
    bin_w = bin_w.view(-1, 1, pw).expand(-1, ph, -1).reshape(-1).clamp(min=1)
    order = torch.argsort(area, descending=True, stable=True)
    sorted_area = area.index_select(0, order).tolist()
    out = table.new_empty(area.shape[0], c)
    start = 0
    while start < len(sorted_area):
        most = max(1, sorted_area[start])
        idx = order[start:start + max(1, POOL_CHUNK // (most * c))]
        entry = torch.arange(most, device=input.device)
        columns = bin_w.index_select(0, idx)[:, None]
        pixels = first.index_select(0, idx)[:, None] + (entry // columns) * width + entry % columns
        pixels = torch.where(entry < area.index_select(0, idx)[:, None], pixels, pixels_in_map)
        values = table.index_select(0, pixels.reshape(-1)).view(idx.numel(), most, c)
        torch.amax(values, dim=1, out=out[start:start + idx.numel()])
        start += idx.numel()
    out.clamp_(min=-FLT_MAX)
    out.masked_fill_((area.index_select(0, order) == 0)[:, None], 0.0)
    result = torch.empty_like(out)
    return result.index_copy_(0, order, out)


@_one_thread()
def roi_pool(input: Tensor, boxes: Boxes, output_size, spatial_scale: float = 1.0) -> Tensor:
    """RoI max pooling (Fast R-CNN, sec. 2.1), same semantics as ``torchvision.ops.roi_pool``.

    The RoI is scaled and rounded to the feature grid (``round`` half away from zero; at least
    1x1, inclusive end), cut into ``PH x PW`` sub-windows of about ``h/PH x w/PW`` pixels
    (floor/ceil of the boundaries, clipped to the map), and each output is the max of its
    sub-window -- 0 for an empty one. The gradient flows to the (first) max, as in the paper.

    Args: as :func:`roi_align`. Returns ``Tensor[K, C, PH, PW]`` of the input's dtype.
    """
    rois, (ph, pw) = _prepare(input, boxes, output_size, spatial_scale, "roi_pool")
    if _USE_TORCHVISION:
        import torchvision

        return torchvision.ops.roi_pool(input, rois.to(input.dtype), (ph, pw), spatial_scale)
    n, c, height, width = input.shape
    if rois.shape[0] == 0:
        return _no_rois(input, c, ph, pw)

    batch = rois[:, 0].to(torch.int64)
    x1, y1, x2, y2 = _round_half_away_from_zero(rois[:, 1:] * spatial_scale).to(torch.int64).unbind(dim=1)
    roi_w, roi_h = (x2 - x1 + 1).clamp(min=1), (y2 - y1 + 1).clamp(min=1)
    h_lo, h_hi = _pool_windows(y1, roi_h, ph, height, rois.dtype)
    w_lo, w_hi = _pool_windows(x1, roi_w, pw, width, rois.dtype)

    if not (torch.is_grad_enabled() and input.requires_grad):
        out = _roi_pool_by_window_size(input.to(rois.dtype), batch, h_lo, h_hi, w_lo, w_hi)
        return out.view(-1, ph, pw, c).permute(0, 3, 1, 2).contiguous().to(input.dtype)
    table = _pixel_table(input.to(rois.dtype))
    pixel_offset = (batch * height * width).view(-1, 1, 1).expand(-1, ph, pw)

    def pool(offset_, h_lo_, h_hi_, w_lo_, w_hi_):
        pixels, real = _window_pixels(offset_, h_lo_, h_hi_, w_lo_, w_hi_, width)
        return _max_of_pixels(table, pixels.flatten(0, 2), real.flatten(0, 2)).view(-1, ph, pw, c)

    extent = torch.stack([(h_hi - h_lo).amax(1), (w_hi - w_lo).amax(1)], dim=1)
    chunks = _roi_chunks(extent, ph * pw, CHUNK_ENTRIES)
    out = _in_chunks(pool, chunks, pixel_offset, h_lo, h_hi, w_lo, w_hi)
    return out.permute(0, 3, 1, 2).contiguous().to(input.dtype)
