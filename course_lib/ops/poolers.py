"""Multi-scale RoIAlign: pool each RoI from the pyramid level that suits its size (FPN).

A feature pyramid (Lin et al., *Feature Pyramid Networks*, sec. 4.2) has levels ``P2..P5`` of
strides 4..32. A RoI of width ``w`` and height ``h`` (in image pixels) is pooled from level

    k = floor(k0 + log2(sqrt(w h) / 224))                      (FPN, eq. 1)

clamped to the levels there are: ``k0 = 4`` is the level an ImageNet-sized 224x224 RoI maps
to (the level a C4 detector would use); half the size goes one level finer. Each level then
runs plain RoIAlign with its own ``spatial_scale = 1 / stride``.

Same contract and results as ``torchvision.ops.MultiScaleRoIAlign`` (tests/ops/test_poolers.py).
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
from torch import Tensor, nn

from .boxes import box_area
from .pooling import _output_size, convert_boxes_to_roi_format, roi_align

__all__ = ["LevelMapper", "MultiScaleRoIAlign"]


class LevelMapper:
    """Which pyramid level each RoI is pooled from: FPN eq. 1, ``k = floor(k0 + log2(sqrt(wh) / s0))``.

    Args:
        k_min, k_max: the finest and coarsest level there are (e.g. 2 and 5 for P2..P5).
        canonical_scale: ``s0 = 224``, the ImageNet pre-training size.
        canonical_level: ``k0 = 4``, the level a ``s0 x s0`` RoI maps to.
        eps: added before the floor so that sizes exactly on a boundary (e.g. 112) are not
            pushed down a level by rounding error.

    Called with a list of ``Tensor[L_i, 4]`` boxes (one per image), returns the ``int64`` level
    of every box, counted from ``k_min`` (0 = finest level), in the order of the concatenated boxes.
    """

    def __init__(
        self,
        k_min: int,
        k_max: int,
        canonical_scale: int = 224,
        canonical_level: int = 4,
        eps: float = 1e-6,
    ):
        if k_min > k_max:
            raise ValueError(f"LevelMapper: k_min ({k_min}) must not exceed k_max ({k_max})")
        self.k_min = k_min
        self.k_max = k_max
        self.s0 = canonical_scale
        self.lvl0 = canonical_level
        self.eps = eps

    def __call__(self, boxlists: Sequence[Tensor]) -> Tensor:
        s = torch.sqrt(torch.cat([box_area(boxes) for boxes in boxlists]))
        k = torch.floor(self.lvl0 + torch.log2(s / self.s0) + torch.tensor(self.eps, dtype=s.dtype))
        k = torch.clamp(k, min=self.k_min, max=self.k_max)
        return k.to(torch.int64) - self.k_min

    def __repr__(self) -> str:
        return (
            f"LevelMapper(k_min={self.k_min}, k_max={self.k_max}, canonical_scale={self.s0}, "
            f"canonical_level={self.lvl0}, eps={self.eps})"
        )


def _infer_scale(feature: Tensor, image_size: Sequence[int]) -> float:
    """``spatial_scale`` of a level: feature height / image height rounded to a power of two
    (backbones halve the resolution stage by stage; padding makes the ratio inexact)."""
    approx = float(feature.shape[-2]) / float(image_size[0])
    return 2.0 ** float(torch.tensor(approx).log2().round())


def _setup_scales(
    features: Sequence[Tensor], image_shapes: Sequence[tuple[int, int]], canonical_scale: int, canonical_level: int
) -> tuple[list[float], LevelMapper]:
    """Scales of the levels from the largest image of the batch, and the LevelMapper for
    levels ``k_min = -log2(scale of the finest)`` .. ``k_max = -log2(scale of the coarsest)``."""
    if len(image_shapes) == 0:
        raise ValueError("MultiScaleRoIAlign: image_shapes is empty; pass the (height, width) of every image")
    largest = (max(s[0] for s in image_shapes), max(s[1] for s in image_shapes))
    scales = [_infer_scale(feature, largest) for feature in features]
    k_min = int(-torch.log2(torch.tensor(scales[0], dtype=torch.float32)).item())
    k_max = int(-torch.log2(torch.tensor(scales[-1], dtype=torch.float32)).item())
    return scales, LevelMapper(k_min, k_max, canonical_scale=canonical_scale, canonical_level=canonical_level)


class MultiScaleRoIAlign(nn.Module):
    """RoIAlign on a feature pyramid, each RoI from its FPN level (eq. 1); as torchvision's.

    Args:
        featmap_names: the pyramid levels to pool from (keys of the feature dict), finest first
            in the dict's order, e.g. ``["0", "1", "2", "3"]`` for P2..P5.
        output_size: ``int`` or ``(PH, PW)``, e.g. 7 for the box head, 14 for the mask head.
        sampling_ratio: RoIAlign's sampling points per bin and axis (``<= 0``: adaptive).
        canonical_scale, canonical_level: ``224`` and ``k0 = 4`` of eq. 1.

    ``forward(x, boxes, image_shapes)``: ``x`` an (ordered) dict of ``Tensor[N, C, H_l, W_l]``,
    ``boxes`` a list of ``Tensor[L_i, 4]`` in image coordinates, ``image_shapes`` the
    ``(height, width)`` of each image before the backbone. Returns ``Tensor[sum L_i, C, PH, PW]``
    in the order of the concatenated boxes. As in torchvision, the levels' scales are inferred
    from the first call's shapes and kept.
    """

    def __init__(
        self,
        featmap_names: Sequence[str],
        output_size: Union[int, tuple[int, int], list[int]],
        sampling_ratio: int,
        *,
        canonical_scale: int = 224,
        canonical_level: int = 4,
    ):
        super().__init__()
        if isinstance(featmap_names, str):
            raise ValueError(f"featmap_names must be a list of names, got the string {featmap_names!r}")
        self.featmap_names = list(featmap_names)
        self.output_size = _output_size(output_size)
        self.sampling_ratio = sampling_ratio
        self.canonical_scale = canonical_scale
        self.canonical_level = canonical_level
        self.scales: Optional[list[float]] = None
        self.map_levels: Optional[LevelMapper] = None

    def forward(self, x: dict[str, Tensor], boxes: list[Tensor], image_shapes: list[tuple[int, int]]) -> Tensor:
        features = [feature for name, feature in x.items() if name in self.featmap_names]
        if not features:
            raise ValueError(
                f"MultiScaleRoIAlign: none of featmap_names {self.featmap_names} is among the "
                f"feature maps {list(x)}"
            )
        if self.scales is None or self.map_levels is None:
            self.scales, self.map_levels = _setup_scales(
                features, image_shapes, self.canonical_scale, self.canonical_level
            )
        rois = convert_boxes_to_roi_format(boxes)
        pool = dict(output_size=self.output_size, sampling_ratio=self.sampling_ratio)
        if len(features) == 1:
            return roi_align(features[0], rois, spatial_scale=self.scales[0], **pool)

        levels = self.map_levels(boxes)
        first = features[0]
        result = first.new_zeros((rois.shape[0], first.shape[1]) + self.output_size)
        for level, (feature, scale) in enumerate(zip(features, self.scales)):  # a few pyramid levels
            in_level = torch.where(levels == level)[0]
            # levels may differ in dtype under autocast: match result's before copying in
            result[in_level] = roi_align(feature, rois[in_level], spatial_scale=scale, **pool).to(result.dtype)
        return result

    def extra_repr(self) -> str:
        return (
            f"featmap_names={self.featmap_names}, output_size={self.output_size}, "
            f"sampling_ratio={self.sampling_ratio}"
        )
