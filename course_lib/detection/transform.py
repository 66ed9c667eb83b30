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

It also holds the two input checks every detector of the course (R-CNN to EFPN) runs, written once:
:func:`as_float_rgb` for an image and :func:`check_targets` for the ground truth.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from course_lib.ops import ImageList
from course_lib.segmentation.common import IMAGENET_MEAN, IMAGENET_STD, to_float_images

__all__ = ["GeneralizedRCNNTransform", "resize_boxes", "as_float_rgb", "check_targets"]


def as_float_rgb(image: Tensor, index: int = 0) -> Tensor:
    """Image ``index`` of a batch, a ``[C, H, W]`` tensor (a ``tv_tensors.Image`` too), as a plain float RGB
    image in [0, 1]: uint8 is divided by 255, a 1-channel (grayscale) image repeated to 3 channels (what
    torchvision's broadcasting does too). Anything else is an error that names the image."""
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
    if not (image.dtype == torch.uint8 or image.is_floating_point()):
        raise TypeError(f"Image {index} has dtype {image.dtype}; pass float images in [0, 1] or uint8.")
    return to_float_images(image)


def check_targets(targets: list[dict[str, Tensor]]) -> list[dict[str, Tensor]]:
    """The one check of the ground truth, run by every detector (R-CNN, Fast R-CNN, ``GeneralizedRCNN`` and
    so Faster R-CNN C4/FPN, R-FCN, EFPN, and the RoI heads themselves). Returns shallow copies with plain
    tensors: ``boxes`` [N, 4] float (x1, y1, x2, y2) pixels, ``labels`` [N] int64. An image without objects
    has boxes of shape [0, 4] (an empty [0] tensor is accepted too) and trains as pure background.

    The rule for a degenerate box: a box without positive width and height (x1 >= x2 or y1 >= y2) has no area,
    no IoU and no regression target, and is an **error** that names the image and the box -- never silently
    dropped -- so the dataset gets fixed where it is built (``CocoDetection`` drops such annotations, with a
    warning naming them). Non-finite boxes, non-float boxes, non-int64 labels and a box/label count mismatch are
    errors too."""
    if not isinstance(targets, (list, tuple)):
        raise TypeError(f"targets must be a list of dicts (one per image), got {type(targets).__name__}")
    checked = []
    for i, target in enumerate(targets):
        if not isinstance(target, dict) or "boxes" not in target or "labels" not in target:
            keys = sorted(target) if isinstance(target, dict) else f"{target!r:.80}"
            raise ValueError(f"Target {i} needs 'boxes' and 'labels', got {keys}.")
        target = dict(target)
        boxes, labels = target["boxes"], target["labels"]
        if not isinstance(boxes, Tensor) or not isinstance(labels, Tensor):
            raise TypeError(f"Target {i}: boxes and labels must be tensors, got {type(boxes).__name__} and "
                            f"{type(labels).__name__}.")
        boxes, labels = boxes.as_subclass(Tensor), labels.as_subclass(Tensor).reshape(-1)  # tv_tensors -> plain
        if boxes.numel() == 0:
            boxes = boxes.reshape(0, 4)  # an image without objects
        if boxes.dim() != 2 or boxes.shape[-1] != 4:
            raise ValueError(f"Target {i}: boxes must have shape [N, 4], got {tuple(boxes.shape)}.")
        if not boxes.is_floating_point():
            raise TypeError(f"Target {i}: boxes must be float (x1, y1, x2, y2) pixels, got {boxes.dtype}; "
                            "convert them with boxes.float().")
        if labels.dtype != torch.int64:
            raise TypeError(f"Target {i}: labels must be int64, got {labels.dtype}.")
        if labels.shape != boxes.shape[:1]:
            raise ValueError(f"Target {i}: {boxes.shape[0]} boxes but labels of shape "
                             f"{tuple(target['labels'].shape)}; give one label per box.")
        if not torch.isfinite(boxes).all():
            j = int(torch.where(~torch.isfinite(boxes).all(1))[0][0])
            raise ValueError(f"Target {i}: box {j} = {boxes[j].tolist()} is not finite.")
        degenerate = (boxes[:, 2:] <= boxes[:, :2]).any(1)
        if degenerate.any():
            j = int(torch.where(degenerate)[0][0])
            raise ValueError(
                f"All boxes need a positive width and height (x1 < x2, y1 < y2). Found box {j} = "
                f"{boxes[j].tolist()} in the target of image {i}. Remove such boxes from the dataset, "
                "e.g. keep = course_lib.ops.remove_small_boxes(boxes, 1e-3).")
        target["boxes"], target["labels"] = boxes, labels
        checked.append(target)
    return checked


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
            image = self.normalize(as_float_rgb(image, i))
            target = targets[i] if targets is not None else None
            image, target = self.resize(image, target)
            resized.append(image)
            if target is not None:
                targets[i] = target
        image_sizes = [(int(img.shape[-2]), int(img.shape[-1])) for img in resized]
        return ImageList(self.batch_images(resized, self.size_divisible), image_sizes), targets

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
        if scale != 1.0:  # at scale 1 bilinear sampling reads every pixel where it is: the same image, skipped
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
