"""What a two-stage detector does to its input before the backbone, and to its output after the
RoI heads (torchvision's ``GeneralizedRCNNTransform``, numerically identical):

1. **normalise** each image with the backbone's ImageNet mean and std;
2. **resize** it so that its shorter side is ``min_size`` (Faster R-CNN sec. 3.3: "we re-scale
   the images such that their shorter side is s = 600 pixels"; Detectron / FPN use 800) unless the
   longer side would exceed ``max_size`` (1333), scaling the target boxes by the same factors;
3. **batch** the images of different sizes into one zero-padded tensor whose height and width are
   multiples of ``size_divisible`` = 32 (the stride of C5: every level of the pyramid then has
   an integer size and aligns with the image);
4. after detection, **postprocess** maps the boxes back to each original image size.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from course_lib.ops import ImageList

__all__ = ["GeneralizedRCNNTransform", "resize_boxes"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def resize_boxes(boxes: Tensor, original_size: tuple[int, int], new_size: tuple[int, int]) -> Tensor:
    """Scale (x1, y1, x2, y2) boxes from an image of ``original_size`` (h, w) to ``new_size``, with
    one ratio per axis (rounding makes the two ratios differ slightly)."""
    ratio_h, ratio_w = (
        torch.tensor(new, dtype=torch.float32, device=boxes.device)
        / torch.tensor(old, dtype=torch.float32, device=boxes.device)
        for new, old in zip(new_size, original_size)
    )
    x1, y1, x2, y2 = boxes.unbind(1)
    return torch.stack((x1 * ratio_w, y1 * ratio_h, x2 * ratio_w, y2 * ratio_h), dim=1)


class GeneralizedRCNNTransform(nn.Module):
    """Normalise, resize, batch (and later un-resize) images and targets for a two-stage detector.

    Args:
        min_size: target length of the shorter side; a tuple means "pick one at random per image
            in training" (multi-scale training; evaluation uses the last one).
        max_size: cap on the longer side.
        image_mean, image_std: per-channel normalisation (ImageNet statistics by default).
        size_divisible: the batched tensor's height and width are padded up to multiples of this.

    Input images are ``[C, H, W]`` tensors, float in [0, 1] (uint8 images are divided by 255).
    ``C`` must be 3; a 1-channel (grayscale) image is repeated to 3 channels, which is what
    torchvision's broadcasting does too. Targets are dicts with ``boxes`` [N, 4] in (x1, y1, x2, y2)
    pixels; they are copied, never modified in place.
    """

    def __init__(self, min_size: int | tuple[int, ...] = 800, max_size: int = 1333,
                 image_mean: tuple[float, ...] | list[float] | None = None,
                 image_std: tuple[float, ...] | list[float] | None = None, size_divisible: int = 32):
        super().__init__()
        self.min_size = tuple(min_size) if isinstance(min_size, (list, tuple)) else (min_size,)
        if not self.min_size or min(self.min_size) <= 0 or max_size <= 0:
            raise ValueError(f"min_size and max_size must be positive, got min_size={min_size}, max_size={max_size}")
        self.max_size = max_size
        self.image_mean = list(IMAGENET_MEAN if image_mean is None else image_mean)
        self.image_std = list(IMAGENET_STD if image_std is None else image_std)
        self.size_divisible = size_divisible

    def forward(self, images: list[Tensor], targets: list[dict[str, Tensor]] | None = None
                ) -> tuple[ImageList, list[dict[str, Tensor]] | None]:
        if targets is not None:
            if len(targets) != len(images):
                raise ValueError(f"Got {len(images)} images but {len(targets)} targets; pass one target dict per image.")
            targets = [dict(t) for t in targets]  # shallow copies: the caller's dicts stay as they were
        resized = []
        for i, image in enumerate(images):
            image = self.normalize(self._check_image(image, i))
            target = targets[i] if targets is not None else None
            image, target = self.resize(image, target)
            resized.append(image)
            if target is not None:
                targets[i] = target
        image_sizes = [(int(img.shape[-2]), int(img.shape[-1])) for img in resized]
        return ImageList(self.batch_images(resized, self.size_divisible), image_sizes), targets

    @staticmethod
    def _check_image(image: Tensor, index: int) -> Tensor:
        if not isinstance(image, Tensor) or image.dim() != 3:
            shape = tuple(image.shape) if isinstance(image, Tensor) else type(image).__name__
            raise ValueError(f"Image {index} must be a [C, H, W] tensor, got {shape}.")
        image = image.as_subclass(Tensor)  # tv_tensors.Image -> plain tensor
        if image.shape[0] == 1:
            image = image.expand(3, -1, -1)  # grayscale: same gray in R, G and B
        elif image.shape[0] != 3:
            raise ValueError(f"Image {index} has {image.shape[0]} channels (shape {tuple(image.shape)}); "
                             "the detector takes RGB (3) or grayscale (1). Drop an alpha channel with image[:3].")
        if min(image.shape[-2:]) == 0:
            raise ValueError(f"Image {index} is empty (shape {tuple(image.shape)}).")
        if image.dtype == torch.uint8:
            image = image.float() / 255
        elif not image.is_floating_point():
            raise TypeError(f"Image {index} has dtype {image.dtype}; pass float images in [0, 1] or uint8.")
        return image

    def normalize(self, image: Tensor) -> Tensor:
        mean = torch.as_tensor(self.image_mean, dtype=image.dtype, device=image.device)
        std = torch.as_tensor(self.image_std, dtype=image.dtype, device=image.device)
        return (image - mean[:, None, None]) / std[:, None, None]

    def resize(self, image: Tensor, target: dict[str, Tensor] | None = None
               ) -> tuple[Tensor, dict[str, Tensor] | None]:
        """Scale by ``s = min(min_size / shorter side, max_size / longer side)`` (bilinear)."""
        h, w = image.shape[-2:]
        if self.training:
            # torchvision draws the scale with torch's RNG even when there is only one: same
            # random stream, so the samplers downstream draw the same anchors and RoIs
            size = self.min_size[int(torch.empty(1).uniform_(0.0, float(len(self.min_size))).item())]
        else:
            size = self.min_size[-1]
        scale = min(size / min(h, w), self.max_size / max(h, w))
        if math.floor(h * scale) < 1 or math.floor(w * scale) < 1:
            raise ValueError(f"An image of size {h}x{w} would be resized to less than one pixel "
                             f"(min_size={size}, max_size={self.max_size}); its aspect ratio is too extreme.")
        image = F.interpolate(image[None], scale_factor=scale, mode="bilinear",
                              recompute_scale_factor=True, align_corners=False)[0]
        if target is not None:
            target["boxes"] = resize_boxes(target["boxes"].as_subclass(Tensor), (h, w), image.shape[-2:])
        return image, target

    @staticmethod
    def batch_images(images: list[Tensor], size_divisible: int = 32) -> Tensor:
        """Zero-pad every image at the bottom and right to a common size divisible by ``size_divisible``."""
        height = int(math.ceil(max(img.shape[-2] for img in images) / size_divisible) * size_divisible)
        width = int(math.ceil(max(img.shape[-1] for img in images) / size_divisible) * size_divisible)
        return torch.stack([F.pad(img, (0, width - img.shape[-1], 0, height - img.shape[-2])) for img in images])

    def postprocess(self, result: list[dict[str, Tensor]], image_shapes: list[tuple[int, int]],
                    original_image_sizes: list[tuple[int, int]]) -> list[dict[str, Tensor]]:
        """Map each image's detected boxes from the resized image back to the original one."""
        if self.training:
            return result
        for pred, resized, original in zip(result, image_shapes, original_image_sizes):
            pred["boxes"] = resize_boxes(pred["boxes"], resized, original)
        return result

    def extra_repr(self) -> str:
        return (f"Normalize(mean={self.image_mean}, std={self.image_std}), "
                f"Resize(min_size={self.min_size}, max_size={self.max_size}, mode='bilinear'), "
                f"size_divisible={self.size_divisible}")
