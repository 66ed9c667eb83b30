"""The width multiplier every backbone and head of the course takes (``width=1.0`` is the paper's network).

A laptop profile trains the same architecture with fewer channels per layer (as MobileNet's width multiplier
does): each layer's channel count is scaled by the same factor, so the depth, strides and the code path stay the
paper's. One rule, here, for VGG16, U-Net, ResNet and the detectors' necks and heads.
"""


def scale_channels(channels: int, width: float) -> int:
    """``channels`` times the width multiplier, rounded (at least 1); ``width=1.0`` is the paper's network."""
    if not width > 0:
        raise ValueError(f"width multiplier must be > 0 (1.0 = the paper's channels), got {width!r}")
    return max(1, int(round(channels * width)))
