"""What every segmentation model of chapters 1-3 shares: checking and normalising the input,
cropping, and loading checkpoints with a clear error when the number of classes differs."""
from __future__ import annotations

import os
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from course_lib.state_dict import read_state_dict

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "check_images",
    "to_float_images",
    "Normalize",
    "center_crop",
    "crop",
    "ClassCountCheck",
    "load_checkpoint",
]

#: torchvision's ImageNet statistics (RGB, images in [0, 1]); what its VGG16 weights expect
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def check_images(images: Tensor, in_channels: int, model: str) -> None:
    """Raise a clear error unless ``images`` is an ``N x in_channels x H x W`` tensor."""
    if not isinstance(images, Tensor):
        raise TypeError(f"{model} expects a tensor of images (N, C, H, W), got {type(images).__name__}")
    if images.dim() == 3:
        raise ValueError(
            f"{model} expects a batch (N, C, H, W), got one image of shape {tuple(images.shape)}: "
            "use images.unsqueeze(0)"
        )
    if images.dim() != 4:
        raise ValueError(f"{model} expects a batch of images (N, C, H, W), got shape {tuple(images.shape)}")
    channels = images.shape[1]
    if channels != in_channels:
        hint = ""
        if in_channels == 3 and channels == 1:
            hint = " Convert grayscale to RGB with images.expand(-1, 3, -1, -1)."
        elif in_channels == 3 and channels == 4:
            hint = " Drop the alpha channel with images[:, :3]."
        elif channels not in (1, 3, 4):
            hint = " Is the tensor channels-last (N, H, W, C)? Use images.permute(0, 3, 1, 2)."
        raise ValueError(
            f"{model} expects {in_channels}-channel images, got {channels} channels "
            f"(shape {tuple(images.shape)}).{hint}"
        )
    if not (images.is_floating_point() or images.dtype == torch.uint8):
        raise TypeError(f"{model} expects uint8 or floating point images, got {images.dtype}")


def to_float_images(images: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    """uint8 images (0..255) -> float in [0, 1]; floating point images pass unchanged."""
    if images.dtype == torch.uint8:
        return images.to(dtype) / 255.0
    return images


class Normalize(nn.Module):
    """``(image - mean) / std`` per channel; uint8 images are first scaled to [0, 1]."""

    def __init__(self, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD):
        super().__init__()
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32).view(-1, 1, 1), persistent=False)
        self.register_buffer("std", torch.as_tensor(std, dtype=torch.float32).view(-1, 1, 1), persistent=False)

    def forward(self, images: Tensor) -> Tensor:
        images = to_float_images(images, self.mean.dtype)
        return (images - self.mean) / self.std


def crop(x: Tensor, like: Tensor, offset: int) -> Tensor:
    """``x[..., offset:offset + H, offset:offset + W]`` with ``H x W`` the size of ``like``.

    The FCN reference code's ``Crop`` layer: the offset is where the first pixel of ``like`` lies
    in ``x``'s coordinates, worked out from every layer's padding and stride (``caffe.coord_map``).
    """
    h, w = like.shape[-2:]
    if x.shape[-2] < offset + h or x.shape[-1] < offset + w:
        raise ValueError(
            f"cannot crop {h}x{w} at offset {offset} from a {x.shape[-2]}x{x.shape[-1]} map"
        )
    return x[..., offset : offset + h, offset : offset + w]


def center_crop(x: Tensor, size: Sequence[int]) -> Tensor:
    """The central ``size`` window of ``x`` (U-Net's crop before concatenation)."""
    h, w = size
    top = (x.shape[-2] - h) // 2
    left = (x.shape[-1] - w) // 2
    if top < 0 or left < 0:
        raise ValueError(f"cannot center-crop {h}x{w} from a {x.shape[-2]}x{x.shape[-1]} map")
    return x[..., top : top + h, left : left + w]


class ClassCountCheck:
    """Mixin for models with a ``num_classes``: ``load_state_dict`` first checks the score layers.

    ``_score_parameters`` lists the parameters whose first dimension is the number of classes.
    """

    num_classes: int
    _score_parameters: tuple[str, ...] = ()

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        for key in self._score_parameters:
            if key in state_dict and state_dict[key].shape[0] != self.num_classes:
                found = state_dict[key].shape[0]
                layers = sorted({k.rsplit(".", 1)[0] for k in self._score_parameters})
                raise ValueError(
                    f"the checkpoint predicts {found} classes ({key} has shape {tuple(state_dict[key].shape)}), "
                    f"but this {type(self).__name__} was built with num_classes={self.num_classes}. "
                    f"Build it with num_classes={found} to use the checkpoint as it is, or, to fine-tune it on "
                    f"{self.num_classes} classes, delete the score layers ({', '.join(layers)}) from the state "
                    "dict and load the rest with strict=False."
                )
        return super().load_state_dict(state_dict, strict=strict, assign=assign)


def load_checkpoint(model: nn.Module, path: "str | os.PathLike", strict: bool = True) -> nn.Module:
    """Load a state dict saved with ``torch.save`` (bare, or under ``"model"`` as the engine saves it)."""
    state_dict = read_state_dict(path, missing=(
        f"no checkpoint at {os.fspath(path)!r}: train the model first, or check the path"))
    model.load_state_dict(state_dict, strict=strict)
    return model
