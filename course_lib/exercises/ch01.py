"""Chapter 01's exercises: every window with ``Tensor.unfold``, and the Linear -> Conv2d surgery (FCN Sec. 3.1).

The references are the library's own :func:`course_lib.segmentation.extract_windows` and
:func:`course_lib.backbones.vgg.linear_to_conv`, which the chapter's sliding-window CNN and its convolutionalized
twin are built on.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from course_lib.backbones.vgg import linear_to_conv as reference_linear_to_conv
from course_lib.segmentation import extract_windows as reference_extract_windows

from .core import Case, Hint, check_answer, check_function, compare

__all__ = ["check_extract_windows", "check_linear_to_conv", "check_shift_and_stitch_passes"]

CHAPTER = "ch01"


def _window_cases() -> list[Case]:
    g = torch.Generator().manual_seed(1300)
    return [
        Case("one 1 x 12 x 12 image, window 4, stride 4", (torch.rand(1, 1, 12, 12, generator=g), 4, 4)),
        Case("two 3 x 10 x 7 images, window 3, stride 2 (sizes not a multiple of the stride)",
             (torch.rand(2, 3, 10, 7, generator=g), 3, 2)),
        Case("the window is the whole image", (torch.rand(2, 2, 6, 6, generator=g), 6, 1)),
        Case("stride larger than the window", (torch.rand(1, 2, 11, 9, generator=g), 2, 5)),
        Case("no images (N = 0)", (torch.rand(0, 3, 16, 16, generator=g), 8, 4)),
        Case("large: two 3 x 64 x 48 images, window 32, stride 8", (torch.rand(2, 3, 64, 48, generator=g), 32, 8)),
    ]


def _grid_of(out):
    return tuple(out[1]) if isinstance(out, (tuple, list)) and len(out) == 2 else None


def check_extract_windows(extract_windows):
    """Check ``extract_windows(images, window, stride) -> (windows, (rows, cols))`` against the library."""
    hints = [
        Hint("Along one axis of size n a window of size k at stride s fits (n - k) // s + 1 times.",
             when=lambda out, exp, case: _grid_of(out) is not None and _grid_of(out) != tuple(exp[1])),
        Hint("Order the windows image by image, then row by row, then column by column, each as C x k x k: after "
             "the two unfolds the tensor is N, C, rows, cols, k, k -- move C next to the k's before reshaping.",
             when=lambda out, exp, case: _grid_of(out) == tuple(exp[1])),
    ]
    return check_function("extract_windows", extract_windows, reference=reference_extract_windows,
                          cases=_window_cases(), chapter=CHAPTER, hints=hints, atol=0.0, rtol=0.0)


def _linear(in_features: int, out_features: int, bias: bool, seed: int) -> nn.Linear:
    torch.manual_seed(seed)
    return nn.Linear(in_features, out_features, bias=bias)


def _conv_cases() -> list[Case]:
    return [
        Case("Linear(8 * 3 * 3 -> 5), a 3 x 3 kernel over 8 channels", (_linear(72, 5, True, 0), 8, 3)),
        Case("a 2 x 5 (not square) kernel over 4 channels", (_linear(40, 3, True, 1), 4, (2, 5))),
        Case("a 1 x 1 kernel (fc2 of the chapter)", (_linear(6, 4, True, 2), 6, 1)),
        Case("no bias", (_linear(18, 7, False, 3), 2, 3)),
        Case("large: fc1 of the patch classifier, 32 x 5 x 5 -> 128", (_linear(800, 128, True, 4), 32, 5)),
    ]


def _compare_convs(out, expected, case):
    """The student's module must compute the reference convolution on a hidden feature map larger than the kernel."""
    if not isinstance(out, nn.Module):
        return f"expected an nn.Module (a Conv2d), got {type(out).__name__}", math.inf
    kh, kw = expected.kernel_size
    g = torch.Generator().manual_seed(kh * 31 + kw)
    x = torch.randn(2, expected.in_channels, kh + 3, kw + 2, generator=g)
    if isinstance(out, nn.Conv2d) and tuple(out.weight.shape) != tuple(expected.weight.shape):
        return (f"the Conv2d's weight has shape {tuple(out.weight.shape)}, expected "
                f"{tuple(expected.weight.shape)} (out_channels, in_channels, kh, kw)"), math.inf
    with torch.no_grad():
        try:
            y = out(x)
        except Exception as e:  # noqa: BLE001 -- reported as the student's error
            return f"calling it on a {tuple(x.shape)} map raised {type(e).__name__}: {e}", math.inf
        return compare(y, expected(x), atol=1e-5, rtol=1e-4, path=f"its output on a {tuple(x.shape)} map")


def check_linear_to_conv(linear_to_conv):
    """Check ``linear_to_conv(linear, in_channels, kernel_size) -> nn.Conv2d`` computing ``linear`` at every position."""
    hints = [
        Hint("nn.Flatten orders a C x kh x kw map channel first, then rows, then columns: view the weight as "
             "(out_features, in_channels, kh, kw), the layout of a Conv2d kernel, without permuting.",
             when=lambda out, exp, case: isinstance(out, nn.Module)),
        Hint("Copy the bias too (and build the Conv2d without one when the Linear has none).",
             when=lambda out, exp, case: isinstance(out, nn.Conv2d) and (out.bias is None) != (exp.bias is None)),
    ]
    return check_function("linear_to_conv", linear_to_conv, reference=reference_linear_to_conv, cases=_conv_cases(),
                          chapter=CHAPTER, hints=hints, compare_fn=_compare_convs)


#: quiz digests (the answers are in solutions/ch01.py's ANSWERS, not here)
SHIFT_AND_STITCH_PASSES = "b17ef6d19c7a5b1ee83b907c595526dcb1eb06db8227d650d5dda0a9f4ce8cd9"


def check_shift_and_stitch_passes(answer):
    """Quiz: how many passes of the stride-4 dense network does shift-and-stitch need for the stride-1 map?"""
    check_answer("shift_and_stitch_passes", answer, SHIFT_AND_STITCH_PASSES, chapter=CHAPTER,
                 hint="One pass per shift (dy, dx) of the input, each in 0 .. stride - 1.")
