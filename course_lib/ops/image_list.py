"""A batch of images of different sizes, padded into one tensor."""
from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["ImageList"]


class ImageList:
    """Images of different sizes padded to one ``[B, C, H, W]`` tensor, plus their true sizes.

    Detectors resize each image so that its shorter side is 800 px (Faster R-CNN,
    FPN), which gives every image in a batch a different size. The transform pads
    them at the bottom and right into one tensor so that the backbone sees a
    regular batch, and remembers each image's size before padding: anchors are laid
    out over the padded tensor, while proposals are clipped to each image's own size.

    Args:
        tensors (Tensor[B, C, H, W]): the padded batch.
        image_sizes (list[tuple[int, int]]): ``(height, width)`` of each image before
            padding, one per batch element.
    """

    def __init__(self, tensors: Tensor, image_sizes: list[tuple[int, int]]) -> None:
        if not isinstance(tensors, Tensor) or tensors.dim() != 4:
            got = list(tensors.shape) if isinstance(tensors, Tensor) else type(tensors).__name__
            raise ValueError(f"ImageList: tensors must be a padded batch [B, C, H, W], got {got}")
        if len(image_sizes) != tensors.shape[0]:
            raise ValueError(
                f"ImageList: image_sizes must give one (height, width) per image, got {len(image_sizes)} "
                f"sizes for a batch of {tensors.shape[0]}"
            )
        self.tensors = tensors
        self.image_sizes = image_sizes

    def to(self, *args, **kwargs) -> "ImageList":
        """Move (or cast) the padded tensor, like ``Tensor.to``; the sizes are kept."""
        return ImageList(self.tensors.to(*args, **kwargs), self.image_sizes)

    def __len__(self) -> int:
        return len(self.image_sizes)

    def __repr__(self) -> str:
        return f"ImageList(tensors={list(self.tensors.shape)}, image_sizes={self.image_sizes})"
