"""Chapter 01's checkers accept the solution and reject the stub and plausible wrong answers."""
import pytest
import torch
from torch import nn

from course_lib.exercises import ExerciseFailed, NotAttempted, ch01
from course_lib.exercises import load_solution as solution


def test_extract_windows(stub):
    ch01.check_extract_windows(solution("ch01", "extract_windows"))
    with pytest.raises(NotAttempted):
        ch01.check_extract_windows(stub)

    def channels_last(images, window, stride):  # forgot to move C next to the window axes
        n, c = images.shape[:2]
        w = images.unfold(2, window, stride).unfold(3, window, stride)
        rows, cols = w.shape[2:4]
        return w.reshape(n * rows * cols, c, window, window), (rows, cols)

    def off_by_one(images, window, stride):  # a loop over range(0, H - window, stride) misses the last window
        n, c, h, w = images.shape
        tops, lefts = range(0, h - window, stride), range(0, w - window, stride)
        crops = [images[:, :, t:t + window, l:l + window] for t in tops for l in lefts]
        out = torch.stack(crops, 1).reshape(-1, c, window, window) if crops else images.new_zeros(0, c, window, window)
        return out, (len(tops), len(lefts))

    with pytest.raises(ExerciseFailed, match="move C next to"):
        ch01.check_extract_windows(channels_last)
    with pytest.raises(ExerciseFailed, match=r"\(n - k\) // s \+ 1"):
        ch01.check_extract_windows(off_by_one)


def test_linear_to_conv(stub):
    ch01.check_linear_to_conv(solution("ch01", "linear_to_conv"))
    with pytest.raises(NotAttempted):
        ch01.check_linear_to_conv(stub)

    def channel_last_view(linear, in_channels, kernel_size):  # reads the weights as (out, kh, kw, C)
        kh, kw = (kernel_size, kernel_size) if isinstance(kernel_size, int) else kernel_size
        conv = nn.Conv2d(in_channels, linear.out_features, (kh, kw), bias=linear.bias is not None)
        with torch.no_grad():
            conv.weight.copy_(linear.weight.view(linear.out_features, kh, kw, in_channels).permute(0, 3, 1, 2))
            if linear.bias is not None:
                conv.bias.copy_(linear.bias)
        return conv

    def forgets_bias(linear, in_channels, kernel_size):
        kh, kw = (kernel_size, kernel_size) if isinstance(kernel_size, int) else kernel_size
        conv = nn.Conv2d(in_channels, linear.out_features, (kh, kw), bias=False)
        with torch.no_grad():
            conv.weight.copy_(linear.weight.view(linear.out_features, in_channels, kh, kw))
        return conv

    with pytest.raises(ExerciseFailed, match="without permuting"):
        ch01.check_linear_to_conv(channel_last_view)
    with pytest.raises(ExerciseFailed, match="Copy the bias"):
        ch01.check_linear_to_conv(forgets_bias)


def test_shift_and_stitch_quiz(monkeypatch):
    ch01.check_shift_and_stitch_passes(solution("ch01", "ANSWERS")["shift_and_stitch_passes"])
    with pytest.raises(NotAttempted):
        ch01.check_shift_and_stitch_passes(...)
    for wrong in (4, 8, 15):  # the stride, two axes of it, an off-by-one
        with pytest.raises(ExerciseFailed, match="One pass per shift"):
            ch01.check_shift_and_stitch_passes(wrong)
    monkeypatch.setenv("COURSE_SOLUTIONS", "1")
    ch01.check_shift_and_stitch_passes(...)
