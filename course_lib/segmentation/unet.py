"""U-Net: Ronneberger, Fischer & Brox, "U-Net: Convolutional Networks for Biomedical Image
Segmentation", MICCAI 2015.

    contracting path: 4 x [two 3x3 convs + ReLU, 2x2 max-pool], channels 64 -> 128 -> 256 -> 512
    bottom:           two 3x3 convs + ReLU, 1024 channels (dropout: "end of the contracting path")
    expansive path:   4 x [2x2 up-convolution halving the channels, crop-and-concatenate the
                      contracting path's map, two 3x3 convs + ReLU]
    classifier:       1x1 convolution to the classes

Unlike FCN, the skip connections *concatenate* (and the decoder convolves the result) instead of
adding class scores, and the expansive path has as many channels as the contracting one: the
network is "more or less symmetric" (Sec. 1).

``padding="valid"`` is the paper's network: unpadded convolutions, so a 572 x 572 tile gives a
388 x 388 map -- each output pixel sees its full context, and a large image is segmented tile by
tile with the missing context at the border mirrored (the overlap-tile strategy, Fig. 2):
:func:`unet_tiled_inference`. ``padding="same"`` pads every 3x3 convolution so that the output has
the input's size, for any size.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..backbones.width import scale_channels
from .common import ClassCountCheck, center_crop, check_images, to_float_images

__all__ = [
    "UNet",
    "UNET_CHANNELS",
    "unet_output_size",
    "nearest_valid_sizes",
    "mirror_pad",
    "unet_tiled_inference",
    "TiledUNet",
]

#: feature channels per level of the paper's network (Fig. 1)
UNET_CHANNELS = (64, 128, 256, 512, 1024)
#: total down-sampling of the 4 max-pools: a valid input side must fit them evenly
_MULTIPLE = 2 ** (len(UNET_CHANNELS) - 1)
#: pixels of context the valid network consumes on each side: (572 - 388) / 2
BORDER = 92
#: the smallest valid input side (its output is 4 x 4)
MIN_VALID_SIZE = 188


def _is_valid(size: int) -> bool:
    return size >= MIN_VALID_SIZE and (size - MIN_VALID_SIZE) % _MULTIPLE == 0


def nearest_valid_sizes(size: int) -> tuple[int, ...]:
    """The valid input sides of the valid U-Net nearest to ``size`` (one, or the one below and above)."""
    if size <= MIN_VALID_SIZE:
        return (MIN_VALID_SIZE,)
    below = MIN_VALID_SIZE + (size - MIN_VALID_SIZE) // _MULTIPLE * _MULTIPLE
    return (below,) if below == size else (below, below + _MULTIPLE)


def unet_output_size(size: int, padding: str = "valid") -> int:
    """The output side of U-Net for an input side ``size`` (valid: 572 -> 388; same: unchanged).

    Valid: each 3x3 convolution takes 2 pixels, each pool halves, each up-convolution doubles:
    s -> (s - 4)/2 -> ... four times, 4 more at the bottom, then x2 - 4 four times.
    """
    if padding == "same":
        return size
    if padding != "valid":
        raise ValueError(f"padding must be 'valid' or 'same', got {padding!r}")
    if not _is_valid(size):
        sizes = " and ".join(f"{s} (output {s - 2 * BORDER})" for s in nearest_valid_sizes(size))
        raise ValueError(
            f"UNet(padding='valid') cannot take a side of {size} pixels: every 2x2 max-pool must see an "
            f"even size after the unpadded convolutions, which holds for sides 16k + 60 with k >= 8 "
            f"(188, 204, ..., 572, ...). Nearest valid sizes: {sizes}. Mirror-pad the image to one of "
            "them (unet_tiled_inference does this for any image), or build UNet(padding='same')."
        )
    return size - 2 * BORDER


class DoubleConv(nn.Sequential):
    """Two 3x3 convolutions, each followed by a ReLU ("the repeated application of two 3x3
    convolutions (unpadded convolutions), each followed by a rectified linear unit", Sec. 2)."""

    def __init__(self, in_channels: int, out_channels: int, padding: int):
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 3, padding=padding),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_channels, out_channels, 3, padding=padding),
            nn.ReLU(inplace=True),
        )


class UpBlock(nn.Module):
    """One step of the expansive path: "an upsampling of the feature map followed by a 2x2
    convolution ('up-convolution') that halves the number of feature channels, a concatenation with
    the correspondingly cropped feature map from the contracting path, and two 3x3 convolutions"."""

    def __init__(self, in_channels: int, out_channels: int, padding: int):
        super().__init__()
        self.up = nn.ConvTranspose2d(in_channels, out_channels, 2, stride=2)
        self.conv = DoubleConv(2 * out_channels, out_channels, padding)

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        x = self.up(x)
        return self.conv(torch.cat([center_crop(skip, x.shape[-2:]), x], dim=1))


class UNet(ClassCountCheck, nn.Module):
    """U-Net (Fig. 1 of the paper). ``UNet(1, 2)`` is the paper's network: 31.0 M parameters.

    Args:
        in_channels: image channels (the paper's EM images: 1).
        num_classes: output classes (paper: 2, cell / background).
        padding: ``"valid"`` (paper: 572 -> 388, see :func:`unet_output_size`) or ``"same"``
            (output size = input size, any size; the input is zero-padded to a multiple of 16
            internally and the output cropped back).
        width: channel multiplier (1.0 = the paper's 64 ... 1024).
        dropout: dropout probability at the end of the contracting path (Sec. 3.1).

    Input ``N x in_channels x H x W`` (uint8 or float); output ``N x num_classes x H' x W'`` logits.
    """

    _score_parameters = ("classifier.weight", "classifier.bias")

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 2,
        *,
        padding: str = "valid",
        width: float = 1.0,
        dropout: float = 0.5,
    ):
        super().__init__()
        if padding not in ("valid", "same"):
            raise ValueError(f"padding must be 'valid' (the paper) or 'same', got {padding!r}")
        if not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.padding = padding
        self.width = width
        pad = 0 if padding == "valid" else 1
        c = [scale_channels(ch, width) for ch in UNET_CHANNELS]

        self.contracting = nn.ModuleList(
            DoubleConv(c_in, c_out, pad) for c_in, c_out in zip([in_channels] + c[:-1], c)
        )
        self.pool = nn.MaxPool2d(2, stride=2)
        self.dropout = nn.Dropout(dropout)
        self.expansive = nn.ModuleList(UpBlock(c_in, c_out, pad) for c_in, c_out in zip(c[:0:-1], c[-2::-1]))
        self.classifier = nn.Conv2d(c[0], num_classes, 1)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Gaussian weights with std sqrt(2 / N), N the incoming nodes of one neuron (Sec. 3), zero biases.

        N is ``in x 3 x 3`` for a 3x3 convolution and ``in`` for the 1x1 classifier and for the 2x2,
        stride-2 up-convolution (each of its outputs sees one pixel of each input channel).
        """
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                fan_in = m.in_channels * m.kernel_size[0] * m.kernel_size[1]
            elif isinstance(m, nn.ConvTranspose2d):
                fan_in = m.in_channels
            else:
                continue
            nn.init.normal_(m.weight, std=math.sqrt(2.0 / fan_in))
            nn.init.zeros_(m.bias)

    def output_size(self, size: int) -> int:
        """Output side for input side ``size``; raises (naming the nearest valid sizes) if invalid."""
        return unet_output_size(size, self.padding)

    def forward(self, images: Tensor) -> Tensor:
        check_images(images, self.in_channels, "UNet")
        x = to_float_images(images)
        h, w = x.shape[-2:]
        if self.padding == "valid":
            self.output_size(h), self.output_size(w)  # raise for an invalid size
        else:
            x = F.pad(x, (0, -w % _MULTIPLE, 0, -h % _MULTIPLE))

        skips = []
        for level, block in enumerate(self.contracting):
            if level > 0:
                x = self.pool(x)
            x = block(x)
            skips.append(x)
        x = self.dropout(skips.pop())
        for block in self.expansive:
            x = block(x, skips.pop())
        scores = self.classifier(x)
        return scores[..., :h, :w] if self.padding == "same" else scores


def _reflect_index(n: int, before: int, after: int, device=None) -> Tensor:
    """Indices into a length-``n`` axis for mirror padding by ``before``/``after`` pixels (edge not
    repeated, like ``F.pad(mode="reflect")``, but any amount: the mirror repeats if needed)."""
    i = torch.arange(-before, n + after, device=device)
    if n == 1:
        return torch.zeros_like(i)
    period = 2 * (n - 1)
    i = i.remainder(period)
    return torch.where(i < n, i, period - i)


def mirror_pad(images: Tensor, top: int, bottom: int, left: int, right: int) -> Tensor:
    """Mirror the image at its borders ("the missing context is extrapolated by mirroring the input
    image", Fig. 2). Equals ``F.pad(images, (left, right, top, bottom), mode="reflect")`` where that
    works, and also for pads larger than the image."""
    h, w = images.shape[-2:]
    rows = _reflect_index(h, top, bottom, images.device)
    cols = _reflect_index(w, left, right, images.device)
    return images[..., rows[:, None], cols[None, :]]


@torch.no_grad()
def unet_tiled_inference(model: UNet, image: Tensor, tile: int | None = 572, batch_size: int = 4) -> Tensor:
    """Segment an image of any size with the valid U-Net, tile by tile (the overlap-tile strategy).

    The image is mirror-padded by the network's border (92 px) and cut into ``tile x tile`` input
    tiles; each gives ``tile - 184`` output pixels of which the first multiple of 16 is kept, so that
    every tile starts on the 16-pixel grid of the max-pools. Tiled inference then equals running the
    network once over the whole mirror-padded image (``tile=None`` does that). Returns the scores,
    ``num_classes x H x W`` for one ``C x H x W`` image (or ``N x num_classes x H x W``). The model
    runs in eval mode (no dropout) and is put back in its previous mode afterwards.
    """
    was_training = model.training
    model.eval()
    try:
        return _tiled_inference(model, image, tile, batch_size)
    finally:
        model.train(was_training)


def _tiled_inference(model: UNet, image: Tensor, tile: int | None, batch_size: int) -> Tensor:
    if not isinstance(model, UNet) or model.padding != "valid":
        raise ValueError("unet_tiled_inference needs a UNet(padding='valid'); a 'same' U-Net takes the image as is")
    single = image.dim() == 3
    images = image.unsqueeze(0) if single else image
    check_images(images, model.in_channels, "unet_tiled_inference")
    n, _, h, w = images.shape

    if tile is None:  # one tile covering the whole image: the reference result
        out_h, out_w = (-(-s // _MULTIPLE) * _MULTIPLE + 4 for s in (h, w))  # a valid output side >= s
        padded = mirror_pad(images, BORDER, out_h - h + BORDER, BORDER, out_w - w + BORDER)
        scores = model(padded)[..., :h, :w]
        return scores[0] if single else scores

    out_tile = unet_output_size(tile)
    step = out_tile // _MULTIPLE * _MULTIPLE  # kept output pixels per tile: a multiple of 16
    if step == 0:
        raise ValueError(f"tile={tile} gives a {out_tile}-pixel output; use a valid tile of at least 204 (or 572)")
    ny, nx = -(-h // step), -(-w // step)
    padded = mirror_pad(
        images, BORDER, (ny - 1) * step + tile - h - BORDER, BORDER, (nx - 1) * step + tile - w - BORDER
    )
    # all tiles as one batch of views: (N, C, ny, nx, tile, tile) -> (N * ny * nx, C, tile, tile)
    tiles = padded.unfold(2, tile, step).unfold(3, tile, step)
    tiles = tiles.permute(0, 2, 3, 1, 4, 5).reshape(n * ny * nx, -1, tile, tile)
    outputs = torch.cat([model(tiles[i : i + batch_size])[..., :step, :step] for i in range(0, len(tiles), batch_size)])
    k = outputs.shape[1]
    scores = outputs.view(n, ny, nx, k, step, step).permute(0, 3, 1, 4, 2, 5).reshape(n, k, ny * step, nx * step)
    scores = scores[..., :h, :w]
    return scores[0] if single else scores


class TiledUNet(nn.Module):
    """A valid U-Net as a module that maps any image to scores of its size, by overlap-tile
    inference (:func:`unet_tiled_inference`); for evaluation loops that expect ``H x W`` outputs.
    ``tile=None`` runs the whole mirror-padded image at once."""

    def __init__(self, unet: UNet, tile: int | None = None, batch_size: int = 4):
        super().__init__()
        self.unet, self.tile, self.batch_size = unet, tile, batch_size

    def forward(self, images: Tensor) -> Tensor:
        return unet_tiled_inference(self.unet, images, tile=self.tile, batch_size=self.batch_size)
