"""Reference solutions of chapter 01 (see solutions/README.md)."""
import torch
from torch import nn


def extract_windows(images, window, stride):
    """All window x window windows at stride, as one batch ordered image, row, column; and (rows, cols)."""
    n, c = images.shape[:2]
    w = images.unfold(2, window, stride).unfold(3, window, stride)  # N, C, rows, cols, k, k
    rows, cols = w.shape[2], w.shape[3]
    return w.permute(0, 2, 3, 1, 4, 5).reshape(n * rows * cols, c, window, window), (rows, cols)


def linear_to_conv(linear, in_channels, kernel_size):
    """The Conv2d computing `linear` at every position: the same weights viewed as (out, C, kh, kw)."""
    kh, kw = (kernel_size, kernel_size) if isinstance(kernel_size, int) else kernel_size
    conv = nn.Conv2d(in_channels, linear.out_features, (kh, kw), bias=linear.bias is not None)
    with torch.no_grad():
        conv.weight.copy_(linear.weight.view(linear.out_features, in_channels, kh, kw))
        if linear.bias is not None:
            conv.bias.copy_(linear.bias)
    return conv


ANSWERS = {
    "shift_and_stitch_passes": 16,  # stride 4: shifts (dy, dx) in {0, 1, 2, 3} x {0, 1, 2, 3}
}
