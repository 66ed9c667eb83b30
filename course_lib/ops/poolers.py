"""Multi-scale RoIAlign: pool each RoI from the pyramid level that suits its size (FPN).

A feature pyramid (Lin et al., *Feature Pyramid Networks*, sec. 4.2) has levels ``P2..P5`` of
strides 4..32: level ``k`` has stride ``2^k``. A RoI of width ``w`` and height ``h`` (in image
pixels) is pooled from level

    k = floor(k0 + log2(sqrt(w h) / 224))                      (FPN, eq. 1)

clamped to the levels there are: ``k0 = 4`` is the level an ImageNet-sized 224x224 RoI maps
to (the level a C4 detector would use); half the size goes one level finer. Each level then
runs plain RoIAlign with its own ``spatial_scale = 1 / stride``.

With the levels P2..P5 (consecutive) this is ``torchvision.ops.MultiScaleRoIAlign`` exactly
(tests/ops/test_poolers.py). Beyond it, every map carries its own level number, so a pyramid may

* have gaps (maps of strides 4 and 16 only): a RoI whose level has no map is pooled from the
  *nearest* level that has one (or refused, ``missing_level="error"``) -- torchvision assumes
  consecutive levels and pools level-3 RoIs from the stride-16 map, level-4 RoIs from nothing;
* reach below P2: EFPN's P2' (Deng et al. 2021) has stride 2, i.e. level 1;
* take a detector's own level rule (``level_mapper=``): EFPN's small-RoI rule (sec. IV-A3) is
  ``course_lib.detection.efpn.EFPNLevelMapper``, a :class:`LevelMapper` subclass -- chapter 8's, not ops'.
"""
from __future__ import annotations

import math
from typing import Mapping, Optional, Sequence, Union

import torch
from torch import Tensor, nn

from .boxes import box_area
from .pooling import _one_thread, _output_size, convert_boxes_to_roi_format, roi_align

__all__ = ["LevelMapper", "MultiScaleRoIAlign", "MISSING_LEVEL_RULES", "level_name"]

#: what a RoI whose eq.-1 level has no feature map gets: "nearest" -- the available level nearest on eq. 1's
#: log2 scale; "error" -- a ValueError that names the sizes and the levels there are.
MISSING_LEVEL_RULES = ("nearest", "error")


def level_name(level: int) -> str:
    """The papers' name of pyramid level ``level`` (stride 2^level): ``"P2"`` .. ``"P6"``; level 1, EFPN's
    extended level at stride 2 built from C2' (Deng et al. 2021, eq. 1), is ``"P2'"``."""
    return "P2'" if level == 1 else f"P{level}"


def _sizes(boxlists: Sequence[Tensor]) -> Tensor:
    """``sqrt(w h)`` of every box of every image, concatenated."""
    return torch.cat([box_area(boxes) for boxes in boxlists]).sqrt_()


class LevelMapper:
    """Which pyramid level each RoI is pooled from: FPN eq. 1, ``k = floor(k0 + log2(sqrt(wh) / s0))``.

    Args:
        k_min, k_max: the finest and coarsest level (e.g. 2 and 5 for P2..P5): the levels ``k_min..k_max``,
            torchvision's signature. Or leave them out and pass ``levels``.
        canonical_scale: ``s0 = 224``, the ImageNet pre-training size.
        canonical_level: ``k0 = 4``, the level a ``s0 x s0`` RoI maps to.
        eps: added before the floor so that sizes exactly on a boundary (e.g. 112) are not
            pushed down a level by rounding error.
        levels: the level numbers that have a feature map, e.g. ``[2, 4]`` (a gap) or ``[1, 2, 3, 4, 5]``
            (EFPN's P2' = level 1, stride 2). Every level appears once.
        missing_level: a RoI whose clamped eq.-1 level ``k`` is not in ``levels`` (only possible with gaps)
            goes to the available level ``l`` nearest to ``k0 + log2(sqrt(wh) / s0)`` measured to the size range
            ``[l, l + 1)`` that level covers (``"nearest"``; halfway between two levels: the finer one), or
            raises a ValueError (``"error"``). Never to a wrong level, never to none.

    Calling the mapper with a list of ``Tensor[L_i, 4]`` boxes (one per image) returns the ``int64`` *index*
    of every box's level in ``levels`` (sorted, finest first; with ``k_min..k_max`` that is ``k - k_min``,
    as torchvision's), in the order of the concatenated boxes. :meth:`level` returns the level numbers.
    """

    def __init__(
        self,
        k_min: Optional[int] = None,
        k_max: Optional[int] = None,
        canonical_scale: float = 224,
        canonical_level: int = 4,
        eps: float = 1e-6,
        *,
        levels: Optional[Sequence[int]] = None,
        missing_level: str = "nearest",
    ):
        if levels is None:
            if k_min is None or k_max is None:
                raise ValueError("LevelMapper needs k_min and k_max (levels k_min..k_max) or levels=[...]")
            if k_min > k_max:
                raise ValueError(f"LevelMapper: k_min ({k_min}) must not exceed k_max ({k_max})")
            levels = range(k_min, k_max + 1)
        elif k_min is not None or k_max is not None:
            raise ValueError("LevelMapper: pass either k_min and k_max or levels, not both")
        levels = [int(k) for k in levels]
        if not levels or len(set(levels)) != len(levels):
            raise ValueError(f"LevelMapper: levels must be distinct level numbers, at least one; got {levels}")
        if missing_level not in MISSING_LEVEL_RULES:
            raise ValueError(f"missing_level must be one of {MISSING_LEVEL_RULES}, got {missing_level!r}")
        self.levels = sorted(levels)
        # the levels eq. 1 chooses among (a subclass may take some out for a rule of its own: EFPN's P2')
        self.eq1_levels = list(self.levels)
        # consecutive levels (FPN's P2..P5): no level can be missing and a level's index is k - k_min
        self._gaps = self.eq1_levels != list(range(self.eq1_levels[0], self.eq1_levels[-1] + 1))
        self._consecutive = self.levels == list(range(self.levels[0], self.levels[-1] + 1))
        self.k_min, self.k_max = self.eq1_levels[0], self.eq1_levels[-1]
        self.s0 = canonical_scale
        self.lvl0 = canonical_level
        self.eps = eps
        self.missing_level = missing_level

    def unclamped(self, boxlists: Sequence[Tensor]) -> Tensor:
        """``k0 + log2(sqrt(wh) / s0)`` of every box (float, before the floor and the clamp)."""
        return self.lvl0 + torch.log2(_sizes(boxlists) / self.s0)

    def level(self, boxlists: Sequence[Tensor]) -> Tensor:
        """The level number ``k`` (stride ``2^k``) each box is pooled from, ``int64``, after every rule."""
        sizes = _sizes(boxlists)
        # the same arithmetic as torchvision's mapper, (k0 + log2(size / s0)) + eps with eps a tensor of the boxes'
        # dtype, in place on one new tensor (the same operations on the same values, fewer temporaries)
        shifted = torch.log2(sizes / self.s0).add_(self.lvl0).add_(torch.tensor(self.eps, dtype=sizes.dtype))
        k = torch.floor(shifted).clamp_(min=self.k_min, max=self.k_max).to(torch.int64)
        if self._gaps:
            k = self._fill_gaps(k, shifted, sizes)
        return k

    def _fill_gaps(self, k: Tensor, shifted: Tensor, sizes: Tensor) -> Tensor:
        """The ``missing_level`` rule for RoIs whose eq.-1 level has no map."""
        available = torch.tensor(self.eq1_levels, dtype=torch.int64, device=k.device)
        missing = ~torch.isin(k, available)
        if bool(missing.any()):
            if self.missing_level == "error":
                sizes = sizes[missing]
                raise ValueError(
                    f"{int(missing.sum())} RoIs map to levels {sorted(set(k[missing].tolist()))} (sqrt(wh) from "
                    f"{float(sizes.min()):.1f} to {float(sizes.max()):.1f} px) that have no feature map; the levels "
                    f"are {self.eq1_levels}. Add the missing maps or pass missing_level='nearest'.")
            # k lies strictly between two available levels (it is clamped to [k_min, k_max]): compare the
            # distances of the unfloored value to the size ranges [lo, lo + 1) and [hi, hi + 1)
            above = torch.searchsorted(available, k[missing])  # index of the first available level > k
            lo, hi = available[above - 1], available[above]
            to_lo = shifted[missing] - (lo + 1).to(shifted.dtype)
            to_hi = hi.to(shifted.dtype) - shifted[missing]
            k[missing] = torch.where(to_hi < to_lo, hi, lo)
        return k

    def __call__(self, boxlists: Sequence[Tensor]) -> Tensor:
        k = self.level(boxlists)
        if self._consecutive:
            return k.sub_(self.levels[0])  # k is level()'s new tensor
        return torch.searchsorted(torch.tensor(self.levels, dtype=torch.int64, device=k.device), k)

    def __repr__(self) -> str:
        return (f"LevelMapper(levels={self.levels}, canonical_scale={self.s0}, canonical_level={self.lvl0}, "
                f"eps={self.eps}, missing_level={self.missing_level!r})")


def _infer_scale(feature: Tensor, image_size: Sequence[int]) -> float:
    """``spatial_scale`` of a level: feature height / image height rounded to a power of two
    (backbones halve the resolution stage by stage; padding makes the ratio inexact)."""
    approx = float(feature.shape[-2]) / float(image_size[0])
    return 2.0 ** float(torch.tensor(approx).log2().round())


def _largest(image_shapes: Sequence[tuple[int, int]]) -> tuple[int, int]:
    if len(image_shapes) == 0:
        raise ValueError("MultiScaleRoIAlign: image_shapes is empty; pass the (height, width) of every image")
    return max(s[0] for s in image_shapes), max(s[1] for s in image_shapes)


class MultiScaleRoIAlign(nn.Module):
    """RoIAlign on a feature pyramid, each RoI from its level (FPN eq. 1); torchvision's, plus explicit levels.

    Args:
        featmap_names: the pyramid levels to pool from (keys of the feature dict), e.g. ``["0", "1", "2", "3"]``
            for P2..P5.
        output_size: ``int`` or ``(PH, PW)``, e.g. 7 for the box head, 14 for the mask head.
        sampling_ratio: RoIAlign's sampling points per bin and axis (``<= 0``: adaptive).
        canonical_scale, canonical_level: ``224`` and ``k0 = 4`` of eq. 1.
        levels: ``{name: level number}`` (stride ``2^level``) of the maps, e.g. ``course_lib.detection.fpn.FPN_LEVELS``
            or EFPN's ``{"p2_prime": 1, "0": 2, ...}``; may name more maps than ``featmap_names``. ``None``: each
            map's level is inferred from its size on the first call (``-log2`` of feature height / image height,
            rounded), map by map -- so gaps are seen, unlike torchvision, which assumes consecutive levels.
            With explicit levels the maps' sizes are checked against them on the first call.
        missing_level: see :class:`LevelMapper` (``"nearest"`` / ``"error"`` for a RoI whose level has no map).
        level_mapper: the level rule itself, a :class:`LevelMapper` (or subclass: a detector's own rule, e.g.
            EFPN's in ``course_lib.detection.efpn``) whose ``levels`` are the maps' levels; ``None``: eq. 1
            (with ``missing_level``) over the levels found.

    ``forward(x, boxes, image_shapes, *, return_levels=False)``: ``x`` an (ordered) dict of
    ``Tensor[N, C, H_l, W_l]``, ``boxes`` a list of ``Tensor[L_i, 4]`` in image coordinates, ``image_shapes``
    the ``(height, width)`` of each image before the backbone. Returns ``Tensor[sum L_i, C, PH, PW]`` in the
    order of the concatenated boxes, and with ``return_levels=True`` also the ``int64`` level number of each
    RoI. As in torchvision, the levels' scales are inferred from the first call's shapes and kept
    (``scales`` in the order of ``featmap_names``' maps; ``map_levels`` the :class:`LevelMapper`).
    """

    def __init__(
        self,
        featmap_names: Sequence[str],
        output_size: Union[int, tuple[int, int], list[int]],
        sampling_ratio: int,
        *,
        canonical_scale: float = 224,
        canonical_level: int = 4,
        levels: Optional[Mapping[str, int]] = None,
        missing_level: str = "nearest",
        level_mapper: Optional[LevelMapper] = None,
    ):
        super().__init__()
        if isinstance(featmap_names, str):
            raise ValueError(f"featmap_names must be a list of names, got the string {featmap_names!r}")
        self.featmap_names = list(featmap_names)
        self.output_size = _output_size(output_size)
        self.sampling_ratio = sampling_ratio
        self.canonical_scale = canonical_scale
        self.canonical_level = canonical_level
        if levels is not None:
            unknown = [name for name in self.featmap_names if name not in levels]
            if unknown:
                raise ValueError(f"MultiScaleRoIAlign: levels {dict(levels)} has no level number for the maps "
                                 f"{unknown}; give every name in featmap_names its level (stride 2^level)")
            levels = {name: int(levels[name]) for name in self.featmap_names}
        self.levels = levels
        self.missing_level = missing_level
        if missing_level not in MISSING_LEVEL_RULES:  # fail at construction, not at the first batch
            raise ValueError(f"missing_level must be one of {MISSING_LEVEL_RULES}, got {missing_level!r}")
        self.scales: Optional[list[float]] = None
        self.map_levels: Optional[LevelMapper] = level_mapper
        self.feature_levels: Optional[list[int]] = None  # the level of each pooled map, in the dict's order

    def _setup(self, names: list[str], features: list[Tensor], image_shapes: Sequence[tuple[int, int]]) -> None:
        largest = _largest(image_shapes)
        inferred = [_infer_scale(feature, largest) for feature in features]
        if self.levels is None:
            feature_levels = [int(round(-math.log2(scale))) for scale in inferred]
        else:
            feature_levels = [self.levels[name] for name in names]
            wrong = [f"{name!r} (level {k}: stride {2 ** k}, but the map is {feature.shape[-2]} rows for "
                     f"{largest[0]}-pixel images: stride {round(1 / s)})"
                     for name, k, s, feature in zip(names, feature_levels, inferred, features) if s != 2.0 ** -k]
            if wrong:
                raise ValueError(f"MultiScaleRoIAlign: the maps do not have the strides of their levels: "
                                 f"{', '.join(wrong)}. Fix the levels table or the maps.")
        if len(set(feature_levels)) != len(feature_levels):
            raise ValueError(f"MultiScaleRoIAlign: two maps share a level: {dict(zip(names, feature_levels))}; "
                             "pool each level from one map (pass featmap_names without the duplicate)")
        mapper = self.map_levels or LevelMapper(levels=feature_levels, canonical_scale=self.canonical_scale,
                                                canonical_level=self.canonical_level, missing_level=self.missing_level)
        if sorted(mapper.levels) != sorted(feature_levels):
            raise ValueError(f"MultiScaleRoIAlign: the level rule {mapper} is for the levels {mapper.levels}, but the "
                             f"maps have the levels {dict(zip(names, feature_levels))}.")
        self.scales, self.map_levels, self.feature_levels = [2.0 ** -k for k in feature_levels], mapper, feature_levels

    @_one_thread()  # the level mapping's small ops too: see _one_thread
    def forward(self, x: dict[str, Tensor], boxes: list[Tensor], image_shapes: list[tuple[int, int]], *,
                return_levels: bool = False) -> Union[Tensor, tuple[Tensor, Tensor]]:
        names = [name for name in x if name in self.featmap_names]
        features = [x[name] for name in names]
        if not features:
            raise ValueError(
                f"MultiScaleRoIAlign: none of featmap_names {self.featmap_names} is among the "
                f"feature maps {list(x)}"
            )
        if self.scales is None or self.map_levels is None:
            self._setup(names, features, image_shapes)
        rois = convert_boxes_to_roi_format(boxes)
        pool = dict(output_size=self.output_size, sampling_ratio=self.sampling_ratio)
        if len(features) == 1:  # every RoI from the one map, whatever its size (as torchvision)
            result = roi_align(features[0], rois, spatial_scale=self.scales[0], **pool)
            if return_levels:
                return result, torch.full((rois.shape[0],), self.feature_levels[0], dtype=torch.int64,
                                          device=rois.device)
            return result

        levels = self.map_levels.level(boxes)
        first = features[0]
        result = first.new_zeros((rois.shape[0], first.shape[1]) + self.output_size)
        for feature, scale, level in zip(features, self.scales, self.feature_levels):  # a few pyramid levels
            in_level = torch.where(levels == level)[0]
            # levels may differ in dtype under autocast: match result's before copying in
            result[in_level] = roi_align(feature, rois[in_level], spatial_scale=scale, **pool).to(result.dtype)
        return (result, levels) if return_levels else result

    def extra_repr(self) -> str:
        extra = "" if self.levels is None else f", levels={self.levels}"
        return (
            f"featmap_names={self.featmap_names}, output_size={self.output_size}, "
            f"sampling_ratio={self.sampling_ratio}{extra}"
        )
