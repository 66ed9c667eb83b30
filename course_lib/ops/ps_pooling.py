"""Position-sensitive RoI pooling (R-FCN) in pure PyTorch.

R-FCN (Dai et al., *R-FCN*, sec. 2) ends its fully convolutional network with ``k^2 (C+1)``
*position-sensitive score maps*: for every class, one map per cell of a ``k x k`` grid over the
object ("top-left part", "top-centre part", ...). PSRoI pooling divides a RoI into ``k x k``
bins and bin ``(i, j)`` reads only the map of part ``(i, j)`` (eq. 1)::

    r_c(i, j) = mean over (x, y) in bin(i, j) of z_{i,j,c}(x, y)

so a class scores high only if every part is in its place. Channel layout, as torchvision:
input channel ``c_in = (c_out * k_h + i) * k_w + j`` -- the ``k^2`` maps of one output channel
are consecutive.

* :func:`ps_roi_pool` -- average over integer sub-windows (R-FCN).
* :func:`ps_roi_align` -- bilinear sampling instead of rounding (Light-Head R-CNN).

Both are linear in the feature map, so they reuse the sparse weighted-sum machinery of
:mod:`course_lib.ops.pooling` with one table of pixels per part.
"""
from __future__ import annotations

import torch
from torch import Tensor

from . import pooling
from .pooling import (
    Boxes,
    _bilinear_entries,
    _in_chunks,
    _no_rois,
    _one_thread,
    _pool_windows,
    _prepare,
    _roi_chunks,
    _round_half_away_from_zero,
    _sum_of_pixels,
    _window_pixels,
)

__all__ = ["ps_roi_pool", "ps_roi_align"]


def _check_channels(input: Tensor, ph: int, pw: int, op: str) -> int:
    """Number of output channels ``C / (PH*PW)``; a clear error if C is not a multiple."""
    c = input.shape[1]
    if c % (ph * pw) != 0:
        raise ValueError(
            f"{op}: input has {c} channels, which is not a multiple of output_size "
            f"{ph}x{pw} = {ph * pw}: position-sensitive maps come in k*k groups "
            f"(R-FCN: k^2 (C+1) channels)"
        )
    return c // (ph * pw)


def _part_tables(input: Tensor, ph: int, pw: int, dtype) -> Tensor:
    """``[N, C_out*PH*PW, H, W]`` -> ``[PH*PW*N*H*W, C_out]``: for each part (bin) ``j`` its own
    table of pixels holding the ``C_out`` maps of that part; row ``((j*N + n)*H + y)*W + x``."""
    n, c, h, w = input.shape
    parts = input.to(dtype).view(n, c // (ph * pw), ph * pw, h, w)
    # the permuted view is a valid 2-d table already, but its rows are strided (one channel every PH*PW*H*W
    # numbers): embedding_bag gathers such rows 35x slower than contiguous ones, so one copy pays for itself
    return parts.permute(2, 0, 3, 4, 1).reshape(ph * pw * n * h * w, c // (ph * pw)).contiguous()


def _part_offsets(batch: Tensor, ph: int, pw: int, n: int, h: int, w: int) -> Tensor:
    """Table row of pixel (0, 0) for every (RoI, bin): part ``j = i*PW + j`` of image ``batch``."""
    part = torch.arange(ph * pw, device=batch.device).view(1, ph, pw)
    return (part * n + batch.view(-1, 1, 1)) * (h * w)


@_one_thread()
def ps_roi_pool(input: Tensor, boxes: Boxes, output_size, spatial_scale: float = 1.0) -> Tensor:
    """Position-sensitive RoI average pooling (R-FCN, sec. 2, eq. 1), as ``torchvision.ops.ps_roi_pool``.

    The RoI is rounded to the grid (``round`` half away from zero, at least 1x1), cut into
    ``PH x PW`` integer sub-windows (floor/ceil of the boundaries) and bin ``(i, j)`` averages
    its sub-window of part ``(i, j)``'s maps; an empty sub-window gives 0. Like torchvision,
    the sub-windows are clipped to ``[0, H-1] x [0, W-1]`` (so the last row and column of the
    map are never read).

    Args: as :func:`course_lib.ops.roi_pool`; ``C`` must be a multiple of ``PH * PW``.
    Returns: ``Tensor[K, C / (PH*PW), PH, PW]`` of the input's dtype.
    """
    rois, (ph, pw) = _prepare(input, boxes, output_size, spatial_scale, "ps_roi_pool")
    n, c, height, width = input.shape
    c_out = _check_channels(input, ph, pw, "ps_roi_pool")
    if pooling.torchvision_kernels_enabled():
        import torchvision

        return torchvision.ops.ps_roi_pool(input, rois.to(input.dtype), (ph, pw), spatial_scale)
    if rois.shape[0] == 0:
        return _no_rois(input, c_out, ph, pw)
    table = _part_tables(input, ph, pw, rois.dtype)

    batch = rois[:, 0].to(torch.int64)
    x1, y1, x2, y2 = _round_half_away_from_zero(rois[:, 1:] * spatial_scale).to(torch.int64).unbind(dim=1)
    roi_w, roi_h = (x2 - x1).clamp(min=1), (y2 - y1).clamp(min=1)
    h_lo, h_hi = _pool_windows(y1, roi_h, ph, height - 1, rois.dtype)
    w_lo, w_hi = _pool_windows(x1, roi_w, pw, width - 1, rois.dtype)
    pixel_offset = _part_offsets(batch, ph, pw, n, height, width)

    def pool(offset_, h_lo_, h_hi_, w_lo_, w_hi_):
        pixels, real = _window_pixels(offset_, h_lo_, h_hi_, w_lo_, w_hi_, width)
        summed = _sum_of_pixels(table, pixels.flatten(0, 2), None, real.flatten(0, 2)).view(-1, ph, pw, c_out)
        area = ((h_hi_ - h_lo_)[:, :, None] * (w_hi_ - w_lo_)[:, None, :]).clamp(min=1).to(summed.dtype)
        empty = (h_hi_ <= h_lo_)[:, :, None] | (w_hi_ <= w_lo_)[:, None, :]
        return torch.where(empty[..., None], 0, summed / area[..., None])

    extent = torch.stack([(h_hi - h_lo).amax(1), (w_hi - w_lo).amax(1)], dim=1)
    chunks = _roi_chunks(extent, ph * pw, pooling.CHUNK_ENTRIES)
    out = _in_chunks(pool, chunks, pixel_offset, h_lo, h_hi, w_lo, w_hi)
    return out.permute(0, 3, 1, 2).contiguous().to(input.dtype)


@_one_thread()
def ps_roi_align(
    input: Tensor, boxes: Boxes, output_size, spatial_scale: float = 1.0, sampling_ratio: int = -1
) -> Tensor:
    """Position-sensitive RoIAlign (Light-Head R-CNN), as ``torchvision.ops.ps_roi_align``.

    Bin ``(i, j)`` averages part ``(i, j)``'s maps bilinearly sampled at a regular grid of
    points, exactly like :func:`course_lib.ops.roi_align` with ``aligned=True`` (boxes shifted
    by -0.5 pixel, no minimum size). Like torchvision, the average divides by the number of
    sampling points, so an adaptive-sampling RoI of zero width or height gives 0/0 = NaN.

    Args: as :func:`course_lib.ops.roi_align`; ``C`` must be a multiple of ``PH * PW``.
    Returns: ``Tensor[K, C / (PH*PW), PH, PW]`` of the input's dtype.
    """
    rois, (ph, pw) = _prepare(input, boxes, output_size, spatial_scale, "ps_roi_align")
    if not isinstance(sampling_ratio, int):
        raise ValueError(f"ps_roi_align: sampling_ratio must be an int (<= 0: adaptive), got {sampling_ratio!r}")
    n, c, height, width = input.shape
    c_out = _check_channels(input, ph, pw, "ps_roi_align")
    if pooling.torchvision_kernels_enabled():
        import torchvision

        return torchvision.ops.ps_roi_align(input, rois.to(input.dtype), (ph, pw), spatial_scale, sampling_ratio)
    if rois.shape[0] == 0:
        return _no_rois(input, c_out, ph, pw)
    table = _part_tables(input, ph, pw, rois.dtype)

    batch = rois[:, 0].to(torch.int64)
    x1, y1, x2, y2 = (rois[:, 1:] * spatial_scale - 0.5).unbind(dim=1)
    bin_h, bin_w = (y2 - y1) / ph, (x2 - x1) / pw
    if sampling_ratio > 0:
        grid_h = grid_w = torch.full_like(batch, sampling_ratio)
    else:
        grid_h, grid_w = torch.ceil(bin_h).to(torch.int64), torch.ceil(bin_w).to(torch.int64)
    count = (grid_h * grid_w).to(rois.dtype)  # not clamped: torchvision's 0/0 = NaN for empty RoIs
    pixel_offset = _part_offsets(batch, ph, pw, n, height, width)

    def pool(offset_, y1_, x1_, bin_h_, bin_w_, grid_h_, grid_w_, count_):
        pixels, weights, keep = _bilinear_entries(
            offset_, y1_, x1_, bin_h_, bin_w_, grid_h_, grid_w_, (ph, pw), height, width
        )
        summed = _sum_of_pixels(table, pixels, weights, keep).view(-1, ph, pw, c_out)
        return summed / count_.view(-1, 1, 1, 1)

    extent = torch.stack([grid_h, grid_w], dim=1)
    chunks = _roi_chunks(extent, 4 * ph * pw, pooling.CHUNK_ENTRIES)
    out = _in_chunks(pool, chunks, pixel_offset, y1, x1, bin_h, bin_w, grid_h, grid_w, count)
    return out.permute(0, 3, 1, 2).contiguous().to(input.dtype)
