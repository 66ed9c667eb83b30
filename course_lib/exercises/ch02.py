"""Chapter 02's exercises: the bilinear kernel (FCN Sec. 3.3, the reference code's ``upsample_filt``) and FCN-16s's
fusion of pool4 (crop at offset 5, then add; Sec. 4.2), checked against :mod:`course_lib.segmentation.fcn`.
"""
from __future__ import annotations

import math

import torch

from course_lib.segmentation import bilinear_kernel as reference_bilinear_kernel
from course_lib.segmentation import bilinear_upsampling
from course_lib.segmentation import crop

from .core import Case, Hint, check_function

__all__ = ["check_bilinear_kernel", "check_upsampling_weight", "check_fuse_pool4", "fcn16s_fusion_shapes", "reference_fuse_pool4"]

CHAPTER = "ch02"


def check_bilinear_kernel(bilinear_kernel):
    """Check ``bilinear_kernel(size) -> size x size`` kernel against the library's (even and odd sizes)."""
    cases = [Case(f"size {s}" + (" (odd)" if s % 2 else f" (upsampling x{s // 2})"), (s,)) for s in (4, 16, 3, 1, 2, 64)]

    def centre_off_by_half(out, exp, case):
        size = case.args[0]
        if size % 2 or not isinstance(out, torch.Tensor) or out.shape != exp.shape:
            return False
        return bool(out.argmax() != exp.argmax()) or not torch.allclose(out, out.flip(0).flip(1))

    hints = [
        Hint("For an even size 2f the centre lies between two pixels, at c = f - 0.5, so the kernel is symmetric "
             "(k == k.flip(0).flip(1)); for an odd size it is the middle pixel, c = f - 1 with f = (size + 1) // 2.",
             when=lambda out, exp, case: centre_off_by_half(out, exp, case) or case.args[0] % 2 == 1),
        Hint("Each factor (1 - |i - c| / f) falls from 1 at the centre to 1 / f at the outermost pixel: divide by f, "
             "the upsampling factor, not by the size.", when=lambda out, exp, case: True),
    ]
    return check_function("bilinear_kernel", bilinear_kernel, reference=reference_bilinear_kernel, cases=cases,
                          chapter=CHAPTER, hints=hints, atol=1e-6, rtol=0.0)


def reference_upsampling_weight(channels: int, factor: int) -> torch.Tensor:
    """The weight of the library's ``bilinear_upsampling(channels, factor)`` (``surgery.interp`` of the reference code)."""
    return bilinear_upsampling(channels, factor).weight.detach()


def check_upsampling_weight(upsampling_weight):
    """Check ``upsampling_weight(channels, factor) -> channels x channels x 2f x 2f`` ConvTranspose2d weight."""
    cases = [Case("1 channel, x2", (1, 2)), Case("21 classes, x2 (upscore2)", (21, 2)), Case("3 channels, x8", (3, 8)),
             Case("x1 (a 2 x 2 kernel)", (2, 1)), Case("large: 21 classes, x32 (FCN-32s's upscore)", (21, 32))]

    def mixes_channels(out, exp, case):
        return (isinstance(out, torch.Tensor) and out.shape == exp.shape and case.args[0] > 1
                and bool((out[0, 1] != 0).any()))

    hints = [
        Hint("Each class is upsampled on its own: only weight[c, c] holds the kernel, every weight[c, d] with d != c "
             "stays zero (otherwise the classes' scores mix).", when=mixes_channels),
        Hint("A transposed convolution upsampling by f has stride f and a kernel of side 2f: weight shape "
             "(channels, channels, 2f, 2f).", when=lambda out, exp, case: isinstance(out, torch.Tensor)
             and out.shape != exp.shape),
    ]
    return check_function("upsampling_weight", upsampling_weight, reference=reference_upsampling_weight, cases=cases,
                          chapter=CHAPTER, hints=hints, atol=1e-6, rtol=0.0)


def fcn16s_fusion_shapes(height: int, width: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """The sizes of ``upscore2`` and ``score_pool4`` in FCN-16s for an ``height x width`` image.

    conv1_1's padding of 100 adds 198 pixels (two 3x3 convs), each ceil-mode pool halves, rounding up; fc6 (7x7,
    valid) takes 6 from pool5; the x2 up-convolution (kernel 4, stride 2) gives ``2 (n - 1) + 4``.
    """
    def sizes(n):
        n += 198
        for _ in range(4):
            n = math.ceil(n / 2)
        pool4 = n
        return 2 * (math.ceil(pool4 / 2) - 6) + 2, pool4

    (uh, ph), (uw, pw) = sizes(height), sizes(width)
    return (uh, uw), (ph, pw)


def reference_fuse_pool4(upscore2: torch.Tensor, score_pool4: torch.Tensor) -> torch.Tensor:
    """FCN-16s's ``fuse_pool4 = upscore2 + crop(score_pool4, offset 5)`` (the reference code's Crop layer)."""
    return upscore2 + crop(score_pool4, upscore2, 5)


def _fusion_cases() -> list[Case]:
    g = torch.Generator().manual_seed(1400)
    cases = []
    for label, (h, w), n, k in [("a PASCAL VOC image, 375 x 500", (375, 500), 1, 21),
                                ("a 227 x 300 image", (227, 300), 2, 3),
                                ("the smallest image, 1 x 1", (1, 1), 1, 21),
                                ("a 64 x 97 image, batch of 3", (64, 97), 3, 5),
                                ("large: 500 x 500, 21 classes, batch of 2", (500, 500), 2, 21)]:
        (uh, uw), (ph, pw) = fcn16s_fusion_shapes(h, w)
        cases.append(Case(f"{label} (upscore2 {uh} x {uw}, score_pool4 {ph} x {pw})",
                          (torch.randn(n, k, uh, uw, generator=g), torch.randn(n, k, ph, pw, generator=g))))
    return cases


def _centre_crop_sum(upscore2, score_pool4):
    h, w = upscore2.shape[-2:]
    top, left = (score_pool4.shape[-2] - h) // 2, (score_pool4.shape[-1] - w) // 2
    return upscore2 + score_pool4[..., top:top + h, left:left + w]


def check_fuse_pool4(fuse_pool4):
    """Check ``fuse_pool4(upscore2, score_pool4) -> upscore2 + cropped score_pool4`` (and its gradients)."""
    hints = [
        Hint("A centre crop is not the alignment: the offset is fixed by the layers' strides and paddings, not by "
             "the sizes of the two maps. Work it out from pool4 at 16 q - 91.5 and upscore2 at 16 v - 11.5.",
             when=lambda out, exp, case: isinstance(out, torch.Tensor) and out.shape == exp.shape
             and torch.allclose(out, _centre_crop_sum(*case.args), atol=1e-6)),
        Hint("The crop offset is where pixel 0 of upscore2 lies in score_pool4's coordinates: "
             "(-11.5 - (-91.5)) / 16.", when=lambda out, exp, case: True),
    ]
    return check_function("fuse_pool4", fuse_pool4, reference=reference_fuse_pool4, cases=_fusion_cases(),
                          chapter=CHAPTER, hints=hints, check_grad=True)
