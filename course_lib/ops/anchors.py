"""Anchors: the reference boxes that the RPN classifies and regresses.

Faster R-CNN (Ren et al. 2015, sec. 3.1.1): at every position of a feature map
with stride s, place k reference boxes ("anchors") centred on that position, of
several scales and aspect ratios -- 3 scales (128², 256², 512² pixels) x 3 ratios
(1:2, 1:1, 2:1) = 9 anchors per position on the single C4 / conv5 map. The RPN
predicts, for each of them, an objectness score and box offsets (``BoxCoder``).

FPN (Lin et al. 2017, sec. 4.1) instead gives each pyramid level P2..P6 (strides
4..64) one scale, 32², 64², 128², 256², 512², with the same 3 ratios: 15 anchor
shapes in total, 3 per position.

Conventions (torchvision's, reproduced exactly):

* aspect ratio = height / width; an anchor of size s and ratio r has
  ``w = s / sqrt(r)``, ``h = s * sqrt(r)``, so its area stays s²;
* a "cell anchor" is centred on (0, 0) and its corners are rounded to whole pixels;
* the anchors of grid cell (i, j) are the cell anchors shifted by
  ``(j * stride_w, i * stride_h)`` -- the cell's top-left corner, not its centre;
* order: row by row, column by column, and for each position all its anchors
  (ratios outer, sizes inner), matching the RPN head's ``[A, H, W]`` -> ``[H, W, A]`` flattening.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from .image_list import ImageList

__all__ = ["AnchorGenerator", "feature_map_sizes"]


def feature_map_sizes(image_size: tuple[int, int], strides=(4, 8, 16, 32, 64)) -> list[tuple[int, int]]:
    """``(H_k, W_k)`` of the feature map of each stride for a padded ``(H, W)`` batch, as a ResNet (+ FPN's P6)
    computes it: every stride-2 step (conv1, the max-pool, each stage's first block, P6's subsampling) rounds *up*,
    so ``H_k = ceil(H / stride)`` -- an 800 x 1216 batch gives P6 13 x 19, not 800 // 64 = 12 rows.
    The one place notebooks and tests count feature-map cells (and so anchors) without running a network."""
    sizes = []
    for stride in strides:
        if stride < 1 or stride & (stride - 1):
            raise ValueError(f"feature_map_sizes: strides must be powers of 2, got {stride} in {tuple(strides)}")
        h, w = image_size
        for _ in range(stride.bit_length() - 1):
            h, w = (h + 1) // 2, (w + 1) // 2
        sizes.append((h, w))
    return sizes


class AnchorGenerator(nn.Module):
    """Anchors for every feature map of a batch.

    Args:
        sizes (tuple[tuple[int, ...], ...]): anchor sizes (sqrt of the area, pixels)
            for each feature map, e.g. ``((32,), (64,), (128,), (256,), (512,))`` for FPN
            or ``((128, 256, 512),)`` for a single C4 map. A flat tuple means one size per map.
        aspect_ratios (tuple[tuple[float, ...], ...]): height / width ratios for each
            feature map (a flat tuple is used for every map).

    ``forward(image_list, feature_maps)`` returns one ``[sum_l H_l W_l A_l, 4]`` tensor of
    "xyxy" anchors per image, the feature maps' anchors concatenated in order.
    """

    def __init__(
        self,
        sizes: tuple = ((128, 256, 512),),
        aspect_ratios: tuple = ((0.5, 1.0, 2.0),),
    ) -> None:
        super().__init__()
        if not isinstance(sizes[0], (list, tuple)):
            sizes = tuple((s,) for s in sizes)
        if not isinstance(aspect_ratios[0], (list, tuple)):
            aspect_ratios = (aspect_ratios,) * len(sizes)
        if len(sizes) != len(aspect_ratios):
            raise ValueError(
                f"AnchorGenerator: sizes and aspect_ratios must give one tuple per feature map, got "
                f"{len(sizes)} sizes {sizes} and {len(aspect_ratios)} aspect_ratios {aspect_ratios}"
            )
        self.sizes = sizes
        self.aspect_ratios = aspect_ratios
        # float32 like torchvision, so the rounding of the corners is identical; cast in forward
        self.cell_anchors = [self.generate_anchors(s, r) for s, r in zip(sizes, aspect_ratios)]

    def generate_anchors(
        self,
        scales: list[int],
        aspect_ratios: list[float],
        dtype: torch.dtype = torch.float32,
        device: torch.device = torch.device("cpu"),
    ) -> Tensor:
        """Zero-centred anchors ``[len(aspect_ratios) * len(scales), 4]`` for one feature map.

        For ratio r = h / w and size s: ``h = s * sqrt(r)``, ``w = s / sqrt(r)``;
        corners ``(-w/2, -h/2, w/2, h/2)`` rounded to whole pixels. Ratios vary slowest.
        """
        scales = torch.as_tensor(scales, dtype=dtype, device=device)
        aspect_ratios = torch.as_tensor(aspect_ratios, dtype=dtype, device=device)
        if (scales <= 0).any() or (aspect_ratios <= 0).any():
            raise ValueError(
                f"AnchorGenerator: sizes and aspect ratios must be positive, got {scales.tolist()} and "
                f"{aspect_ratios.tolist()}"
            )
        h_ratios = torch.sqrt(aspect_ratios)
        w_ratios = 1 / h_ratios
        ws = (w_ratios[:, None] * scales[None, :]).view(-1)
        hs = (h_ratios[:, None] * scales[None, :]).view(-1)
        return (torch.stack([-ws, -hs, ws, hs], dim=1) / 2).round()

    def num_anchors_per_location(self) -> list[int]:
        """A = len(sizes) * len(ratios) anchors per position, for each feature map."""
        return [len(s) * len(r) for s, r in zip(self.sizes, self.aspect_ratios)]

    def grid_anchors(self, grid_sizes: list[tuple[int, int]], strides: list[tuple[int, int]]) -> list[Tensor]:
        """All anchors of each feature map: its cell anchors shifted to every grid position.

        Args:
            grid_sizes: ``(H, W)`` of each feature map.
            strides: ``(stride_h, stride_w)`` in image pixels of each feature map.

        Returns:
            list[Tensor[H * W * A, 4]]: per feature map, position-major then anchor.
        """
        if not len(grid_sizes) == len(strides) == len(self.cell_anchors):
            raise ValueError(
                f"AnchorGenerator: got {len(grid_sizes)} feature maps but sizes/aspect_ratios for "
                f"{len(self.cell_anchors)}: give one tuple of sizes and of ratios per feature map"
            )
        anchors = []
        for (grid_h, grid_w), (stride_h, stride_w), cell in zip(grid_sizes, strides, self.cell_anchors):
            device = cell.device
            shifts_x = torch.arange(grid_w, dtype=torch.int32, device=device) * stride_w
            shifts_y = torch.arange(grid_h, dtype=torch.int32, device=device) * stride_h
            shift_y, shift_x = torch.meshgrid(shifts_y, shifts_x, indexing="ij")
            shift_x, shift_y = shift_x.reshape(-1), shift_y.reshape(-1)
            shifts = torch.stack((shift_x, shift_y, shift_x, shift_y), dim=1)  # [H * W, 4]
            # every (position, cell anchor) pair: [H * W, 1, 4] + [1, A, 4]
            anchors.append((shifts[:, None, :] + cell[None, :, :]).reshape(-1, 4))
        return anchors

    def forward(self, image_list: ImageList, feature_maps: list[Tensor]) -> list[Tensor]:
        """Anchors for each image of the batch, over all feature maps.

        The stride of a feature map is the padded batch size divided by the map size,
        rounded down (as in torchvision). It is usually the network's stride, but not
        always: an 800-pixel-high batch gives P5 25 rows and P6 13, so P6's vertical
        stride is 800 // 13 = 61, not 64. Every image of the batch gets the same
        anchors, laid out over the padded tensor.

        Args:
            image_list (ImageList): the padded batch (only its tensor's H, W and the
                number of images are used).
            feature_maps (list[Tensor[B, C, H_l, W_l]]): one per entry of ``sizes``.

        Returns:
            list[Tensor[sum_l H_l W_l A_l, 4]]: one tensor per image, in the feature maps'
            dtype and device.
        """
        if not (hasattr(image_list, "tensors") and hasattr(image_list, "image_sizes")):
            raise TypeError(f"AnchorGenerator: image_list must be an ImageList, got {type(image_list).__name__}")
        if len(feature_maps) != len(self.cell_anchors):
            raise ValueError(
                f"AnchorGenerator: got {len(feature_maps)} feature maps but sizes/aspect_ratios for "
                f"{len(self.cell_anchors)} (sizes={self.sizes}): give one tuple of sizes and of ratios per feature map"
            )
        image_h, image_w = image_list.tensors.shape[-2:]
        grid_sizes = [tuple(f.shape[-2:]) for f in feature_maps]
        if any(h == 0 or w == 0 or h > image_h or w > image_w for h, w in grid_sizes):
            raise ValueError(
                f"AnchorGenerator: feature map sizes {grid_sizes} must be between 1 and the padded image "
                f"size {(image_h, image_w)}"
            )
        strides = [(image_h // h, image_w // w) for h, w in grid_sizes]
        dtype, device = feature_maps[0].dtype, feature_maps[0].device
        # cast once (a no-op afterwards); the float32 rounding at construction is kept
        self.cell_anchors = [cell.to(dtype=dtype, device=device) for cell in self.cell_anchors]
        anchors_per_map = torch.cat(self.grid_anchors(grid_sizes, strides))
        return [anchors_per_map.clone() for _ in image_list.image_sizes]
