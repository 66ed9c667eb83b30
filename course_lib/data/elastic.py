"""U-Net's elastic deformation (Ronneberger et al., MICCAI 2015, Sec. 3.1):

    "We generate smooth deformations using random displacement vectors on a coarse 3 by 3 grid. The displacements
    are sampled from a Gaussian distribution with 10 pixels standard deviation. Per-pixel displacements are then
    computed using bicubic interpolation."

The same displacement field moves the image and every map that goes with it (labels, instance ids, weight maps): the
image is resampled bilinearly, the maps by nearest neighbour so that labels stay labels. Pixels pulled from outside
the image are mirrored, as U-Net's overlap-tile strategy mirrors its context.

    image, labels, weights = elastic_deform(image, labels, weights, generator=g)
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["elastic_displacements", "elastic_deform"]


def elastic_displacements(height: int, width: int, *, grid: int = 3, std: float = 10.0,
                          generator: torch.Generator | None = None, dtype: torch.dtype = torch.float32) -> Tensor:
    """A smooth ``2 x height x width`` field (dy, dx) in pixels: Gaussian displacements (``std`` pixels) on a coarse
    ``grid x grid`` lattice spanning the image corner to corner, interpolated bicubically to every pixel."""
    if grid < 2:
        raise ValueError(f"grid must be at least 2 (the paper uses 3), got {grid}")
    if height < 1 or width < 1:
        raise ValueError(f"cannot deform an empty {height} x {width} image")
    coarse = torch.randn(1, 2, grid, grid, generator=generator, dtype=torch.float64) * std
    field = F.interpolate(coarse, size=(height, width), mode="bicubic", align_corners=True)[0]
    return field.to(dtype)


def elastic_deform(image: Tensor, *maps: Tensor, displacements: Tensor | None = None, grid: int = 3,
                   std: float = 10.0, generator: torch.Generator | None = None) -> tuple[Tensor, ...]:
    """Warp ``image`` (``C x H x W``, uint8 or float) and each of ``maps`` (``H x W``, any dtype) by one elastic field.

    ``out[y, x] = in[y + dy(y, x), x + dx(y, x)]``; ``displacements`` (``2 x H x W``, dy then dx) defaults to
    :func:`elastic_displacements` with the paper's 3 x 3 grid and 10 px. Returns ``(image, *maps)`` with the input
    dtypes; the image is interpolated bilinearly, the maps take the nearest pixel's value.
    """
    if image.dim() != 3:
        raise ValueError(f"elastic_deform expects one C x H x W image, got shape {tuple(image.shape)}")
    h, w = image.shape[-2:]
    for i, m in enumerate(maps):
        if tuple(m.shape) != (h, w):
            raise ValueError(f"map {i} has shape {tuple(m.shape)}, but the image is {h} x {w}: every map must cover "
                             "the image's pixels")
    if displacements is None:
        displacements = elastic_displacements(h, w, grid=grid, std=std, generator=generator)
    if tuple(displacements.shape) != (2, h, w):
        raise ValueError(f"displacements must have shape (2, {h}, {w}), got {tuple(displacements.shape)}")
    d = displacements.to(torch.float32)
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij")
    # grid_sample's normalised coordinates (align_corners=True: -1 and 1 are the centres of the border pixels)
    gy = 2 * (ys + d[0]) / max(h - 1, 1) - 1
    gx = 2 * (xs + d[1]) / max(w - 1, 1) - 1
    sample_at = torch.stack([gx, gy], dim=-1)[None]

    def warp(x: Tensor, mode: str) -> Tensor:
        src = x.to(torch.float32)[None]
        out = F.grid_sample(src, sample_at, mode=mode, padding_mode="reflection", align_corners=True)[0]
        if x.dtype == torch.uint8:
            return out.round().clamp(0, 255).to(torch.uint8)
        return out.to(x.dtype) if x.is_floating_point() else out.round().to(x.dtype)

    return (warp(image, "bilinear"), *(warp(m[None], "nearest")[0] for m in maps))
