"""Chapter 03's exercises: U-Net's weight map (eq. 2) and the crop-and-concatenate of the expansive path (Sec. 2),
checked against :func:`course_lib.segmentation.unet_weight_map` and the library's ``UpBlock``.
"""
from __future__ import annotations

import numpy as np
import torch

from course_lib.segmentation import center_crop, unet_weight_map

from .core import Case, Hint, check_function

__all__ = ["check_weight_map", "check_crop_and_concat", "reference_weight_map", "reference_crop_and_concat"]

CHAPTER = "ch03"


def reference_weight_map(instances, labels, class_weights, w0=10.0, sigma=5.0):
    """The library's eq. 2 map (float32, 0 on unlabelled pixels)."""
    return unet_weight_map(instances, labels, w0=w0, sigma=sigma, class_weights=class_weights)


def _disks(size: int, centres, radius: float) -> torch.Tensor:
    yy, xx = np.mgrid[:size, :size]
    inst = np.zeros((size, size), dtype=np.int64)
    for i, (cy, cx) in enumerate(centres, 1):
        inst[(yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2] = i
    return torch.from_numpy(inst)


def _weight_cases() -> list[Case]:
    g = torch.Generator().manual_seed(1500)
    cases = []
    two = torch.zeros(9, 9, dtype=torch.int64)
    two[:, :2], two[:, 5:] = 1, 2
    cases.append(Case("two cells, 3 px apart", (two, (two > 0).long(), torch.tensor([1.0, 1.0]))))
    empty = torch.zeros(12, 10, dtype=torch.int64)
    cases.append(Case("no cell at all", (empty, empty.clone(), torch.tensor([0.7, 2.0]))))
    one = _disks(16, [(8, 8)], 4)
    cases.append(Case("a single cell (no second nearest)", (one, (one > 0).long(), torch.tensor([0.6, 3.0]))))
    centres = (torch.rand(9, 2, generator=g) * 56 + 4).tolist()
    many = _disks(64, centres, 6)
    labels = (many > 0).long()
    labels[(torch.rand(64, 64, generator=g) < 0.05)] = 255  # a few unlabelled pixels
    cases.append(Case("large: 9 cells on 64 x 64, some pixels unlabelled, w0 = 8, sigma = 3",
                      (many, labels, torch.tensor([0.8, 1.7]), 8.0, 3.0)))
    return cases


def check_weight_map(weight_map):
    """Check ``weight_map(instances, labels, class_weights, w0=10, sigma=5) -> H x W`` weights (eq. 2)."""
    hints = [
        Hint("Add the border term on background pixels only (the gaps between cells): inside a cell d1 = 0 and the "
             "term would be large on every cell's rim.",
             when=lambda out, exp, case: isinstance(out, torch.Tensor) and out.shape == exp.shape
             and bool((out - exp)[torch.as_tensor(case.args[0]) > 0].abs().max() > 1e-3)),
        Hint("d1 and d2 are the distances to the nearest and the second-nearest *cell* (one distance transform per "
             "instance, then the two smallest per pixel); with fewer than two cells there is no border term.",
             when=lambda out, exp, case: True),
        Hint("Unlabelled pixels (label 255) get weight 0, and w_c is looked up by each pixel's class.",
             when=lambda out, exp, case: "unlabelled" in case.label),
    ]
    return check_function("weight_map", weight_map, reference=reference_weight_map, cases=_weight_cases(),
                          chapter=CHAPTER, hints=hints, atol=1e-4, rtol=1e-4)


def reference_crop_and_concat(skip: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """``cat([center_crop(skip, up.shape[-2:]), up], dim=1)``: the contracting path's map first, as in ``UpBlock``."""
    return torch.cat([center_crop(skip, up.shape[-2:]), up], dim=1)


def _concat_cases() -> list[Case]:
    g = torch.Generator().manual_seed(1501)
    r = lambda *shape: torch.randn(*shape, generator=g)  # noqa: E731
    return [
        Case("the paper's last step: 64 x 392 x 392 skip, 64 x 388 x 388 up-convolved (channels scaled down to 2)",
             (r(1, 2, 392, 392), r(1, 2, 388, 388))),
        Case("level 4 of a 188-pixel tile: 16 x 16 skip, 8 x 8 up", (r(2, 16, 16, 16), r(2, 16, 8, 8))),
        Case("odd difference (9 x 7 -> 4 x 4): the extra row and column go at the bottom / right",
             (r(2, 4, 9, 7), r(2, 3, 4, 4))),
        Case("the same size: nothing to crop", (r(1, 3, 6, 6), r(1, 5, 6, 6))),
        Case("large: batch 4, 32 channels each, 64 -> 56", (r(4, 32, 64, 64), r(4, 32, 56, 56))),
    ]


def check_crop_and_concat(crop_and_concat):
    """Check ``crop_and_concat(skip, up) -> N x (C_skip + C_up) x h x w`` (and its gradients)."""
    def top_left(out, exp, case):
        skip, up = case.args
        alt = torch.cat([skip[..., : up.shape[-2], : up.shape[-1]], up], 1)
        return isinstance(out, torch.Tensor) and out.shape == alt.shape and torch.allclose(out, alt)

    def swapped(out, exp, case):
        skip, up = case.args
        return isinstance(out, torch.Tensor) and out.shape == exp.shape and torch.allclose(
            out, torch.cat([up, center_crop(skip, up.shape[-2:])], 1))

    hints = [
        Hint("Crop the *centre* of the skip map: the valid convolutions lost the same border on every side.",
             when=top_left),
        Hint("Put the contracting path's (cropped) map first, then the up-convolved one, as the library's UpBlock "
             "does -- the next convolution's weights depend on the order.", when=swapped),
        Hint("Centre: top = (H - h) // 2, left = (W - w) // 2 (an odd extra row or column stays at the bottom / "
             "right).", when=lambda out, exp, case: "odd" in case.label),
    ]
    return check_function("crop_and_concat", crop_and_concat, reference=reference_crop_and_concat,
                          cases=_concat_cases(), chapter=CHAPTER, hints=hints, check_grad=True)
