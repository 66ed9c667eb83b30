"""FCN-32s, FCN-16s and FCN-8s: Long, Shelhamer & Darrell, "Fully Convolutional Networks for
Semantic Segmentation", CVPR 2015 -- as in the paper's reference code (``voc-fcn{32,16,8}s/net.py``
of shelhamer/fcn.berkeleyvision.org).

    image -> Normalize -> VGG16 (conv1_1 padding 100, ceil-mode pools, fc6 7x7 / fc7 1x1 convs)
          -> score_fr (1x1 conv to class scores, stride 32)
          -> [FCN-16s: x2 upsampling + score_pool4]  -> [FCN-8s: x2 upsampling + score_pool3]
          -> bilinear upsampling to stride 1 -> crop to the image

Skips are fused by *addition* (Sec. 4.2, Fig. 3). This is the *staged* variant: 32s is trained,
then initialises 16s (:meth:`FCN16s.from_fcn32s`), which initialises 8s (:meth:`FCN8s.from_fcn16s`);
the pool4/pool3 scores are added unscaled. (The "at-once" variant, ``voc-fcn8s-atonce``, trains all
streams together and scales pool4 by 0.01 and pool3 by 0.0001 first; it is not implemented here.)

Crop offsets. Every layer maps output coordinate y to input coordinate ``s * y + (k - 1) / 2 - p``
(stride s, kernel k, padding p; ``caffe.coord_map``). Composing them, score_fr pixel y lies at
image pixel ``32 y + 12.5`` and pool4 pixel q at ``16 q - 91.5``; a transposed convolution (kernel
2f, stride f) maps its input y to output ``f y + f - 0.5``. The offsets that make every sum and the
output pixel-aligned with the image follow: 32s crops at 19; 16s at 5 (pool4) and 27; 8s at 5
(pool4), 9 (pool3) and 31. The padding of 100 makes the network accept *any* image size.
"""
from __future__ import annotations

import os
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ..backbones.vgg import VGG16
from ..backbones.weights import WeightsEnum
from .common import IMAGENET_MEAN, IMAGENET_STD, ClassCountCheck, Normalize, check_images, crop

__all__ = ["bilinear_kernel", "bilinear_upsampling", "FCN32s", "FCN16s", "FCN8s"]


def bilinear_kernel(size: int) -> Tensor:
    """The 2D bilinear interpolation kernel of side ``size`` (the reference's ``surgery.upsample_filt``).

    For upsampling by f use size 2f: ``k[i, j] = (1 - |i - c| / f) (1 - |j - c| / f)``, c = f - 0.5
    (c = f - 1 when size is odd).
    """
    factor = (size + 1) // 2
    center = factor - 1 if size % 2 == 1 else factor - 0.5
    r = torch.arange(size, dtype=torch.float64)
    k1 = 1 - (r - center).abs() / factor
    return (k1[:, None] * k1[None, :]).float()


def bilinear_upsampling(channels: int, factor: int, learnable: bool = False) -> nn.ConvTranspose2d:
    """x ``factor`` upsampling: a transposed convolution (kernel 2 factor, stride factor, no bias)
    initialised to bilinear interpolation of each channel separately (FCN Sec. 3.3, ``surgery.interp``).

    ``learnable=False`` freezes it (the reference code's ``lr_mult=0``; the paper fixes the last one).
    """
    up = nn.ConvTranspose2d(channels, channels, 2 * factor, stride=factor, bias=False)
    with torch.no_grad():
        up.weight.zero_()
        idx = torch.arange(channels)
        up.weight[idx, idx] = bilinear_kernel(2 * factor)
    up.weight.requires_grad_(learnable)
    return up


def score_layer(in_channels: int, num_classes: int) -> nn.Conv2d:
    """1x1 convolution to class scores, zero-initialised (FCN Sec. 4.3: "We zero-initialize the
    class scoring layer, as random initialization yielded neither better performance nor faster
    convergence"; also the reference's default Caffe filler)."""
    conv = nn.Conv2d(in_channels, num_classes, 1)
    nn.init.zeros_(conv.weight)
    nn.init.zeros_(conv.bias)
    return conv


class _FCN(ClassCountCheck, nn.Module):
    """What the three variants share: normalisation, the VGG16 backbone and score_fr."""

    #: the stride of the coarsest prediction that reaches the output
    output_stride: int = 32

    def __init__(
        self,
        num_classes: int = 21,
        *,
        width: float = 1.0,
        learnable_upsampling: bool = False,
        dropout: float = 0.5,
        image_mean: Sequence[float] = IMAGENET_MEAN,
        image_std: Sequence[float] = IMAGENET_STD,
    ):
        super().__init__()
        if not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be a positive int (PASCAL VOC: 21), got {num_classes!r}")
        self.num_classes = num_classes
        self.config = dict(
            num_classes=num_classes, width=width, learnable_upsampling=learnable_upsampling,
            dropout=dropout, image_mean=tuple(image_mean), image_std=tuple(image_std),
        )
        self.transform = Normalize(image_mean, image_std)
        self.backbone = VGG16(width=width, conv1_padding=100, ceil_mode=True, dropout=dropout)
        self.score_fr = score_layer(self.backbone.out_channels["fc7"], num_classes)

    @property
    def _score_parameters(self) -> tuple[str, ...]:
        return tuple(k for k, _ in self.named_parameters() if k.startswith(("score", "upscore")))

    def load_imagenet_vgg16(self, state_dict: "dict[str, Tensor] | str | os.PathLike | WeightsEnum") -> list[str]:
        """Initialise the backbone from a torchvision ``vgg16`` ImageNet state dict, its file, or torchvision's
        weights by name (``"IMAGENET1K_V1"``, from its cache, verified), fc6/fc7 convolutionalized; fc8 is
        dropped. Returns the dropped keys."""
        return self.backbone.load_torchvision_state_dict(state_dict)

    def _features(self, images: Tensor) -> dict[str, Tensor]:
        check_images(images, 3, type(self).__name__)
        return self.backbone(self.transform(images))

    def _init_from(self, coarser: "_FCN", *layers: str) -> None:
        """Copy the backbone and ``layers`` from the previous stage (staged training, Sec. 4.2)."""
        if coarser.num_classes != self.num_classes:
            raise ValueError("the coarser FCN has a different number of classes")
        self.backbone.load_state_dict(coarser.backbone.state_dict())
        for name in ("score_fr",) + layers:
            getattr(self, name).load_state_dict(getattr(coarser, name).state_dict())
        param = next(coarser.parameters())
        self.to(device=param.device, dtype=param.dtype)
        self.train(coarser.training)


class FCN32s(_FCN):
    """FCN-32s: class scores at stride 32, upsampled x32 in one step (``upscore``, 64x64, stride 32).

    Input: ``N x 3 x H x W`` images (uint8, or float in [0, 1]), any H, W >= 1.
    Output: ``N x num_classes x H x W`` scores (logits).
    """

    output_stride = 32

    def __init__(self, num_classes: int = 21, **kwargs):
        super().__init__(num_classes, **kwargs)
        self.upscore = bilinear_upsampling(num_classes, 32, learnable=False)

    def forward(self, images: Tensor) -> Tensor:
        features = self._features(images)
        score_fr = self.score_fr(features["fc7"])
        return crop(self.upscore(score_fr), images, offset=19)


class FCN16s(_FCN):
    """FCN-16s: stride-32 scores upsampled x2 (``upscore2``) plus pool4's scores, then x16.

    "We add a 1x1 convolution layer on top of pool4 to produce additional class predictions. We fuse
    this output with the predictions computed on top of conv7 (fc7) at stride 32 by adding a 2x
    upsampling layer and summing both predictions" (Sec. 4.2).
    """

    output_stride = 16

    def __init__(self, num_classes: int = 21, **kwargs):
        super().__init__(num_classes, **kwargs)
        learnable = self.config["learnable_upsampling"]
        self.upscore2 = bilinear_upsampling(num_classes, 2, learnable=learnable)
        self.score_pool4 = score_layer(self.backbone.out_channels["pool4"], num_classes)
        self.upscore16 = bilinear_upsampling(num_classes, 16, learnable=False)

    @classmethod
    def from_fcn32s(cls, fcn32s: FCN32s) -> "FCN16s":
        """Staged training: a new FCN-16s with FCN-32s's backbone and score_fr; score_pool4 starts at zero."""
        model = cls(**fcn32s.config)
        model._init_from(fcn32s)
        return model

    def forward(self, images: Tensor) -> Tensor:
        features = self._features(images)
        upscore2 = self.upscore2(self.score_fr(features["fc7"]))
        score_pool4c = crop(self.score_pool4(features["pool4"]), upscore2, offset=5)
        upscore16 = self.upscore16(upscore2 + score_pool4c)
        return crop(upscore16, images, offset=27)


class FCN8s(_FCN):
    """FCN-8s: FCN-16s's fused stride-16 scores upsampled x2 (``upscore_pool4``) plus pool3's, then x8."""

    output_stride = 8

    def __init__(self, num_classes: int = 21, **kwargs):
        super().__init__(num_classes, **kwargs)
        learnable = self.config["learnable_upsampling"]
        self.upscore2 = bilinear_upsampling(num_classes, 2, learnable=learnable)
        self.score_pool4 = score_layer(self.backbone.out_channels["pool4"], num_classes)
        self.upscore_pool4 = bilinear_upsampling(num_classes, 2, learnable=learnable)
        self.score_pool3 = score_layer(self.backbone.out_channels["pool3"], num_classes)
        self.upscore8 = bilinear_upsampling(num_classes, 8, learnable=False)

    @classmethod
    def from_fcn16s(cls, fcn16s: FCN16s) -> "FCN8s":
        """Staged training: a new FCN-8s from FCN-16s (backbone, score_fr, score_pool4, upscore2);
        score_pool3 starts at zero."""
        model = cls(**fcn16s.config)
        model._init_from(fcn16s, "score_pool4", "upscore2")
        return model

    def forward(self, images: Tensor) -> Tensor:
        features = self._features(images)
        upscore2 = self.upscore2(self.score_fr(features["fc7"]))
        score_pool4c = crop(self.score_pool4(features["pool4"]), upscore2, offset=5)
        upscore_pool4 = self.upscore_pool4(upscore2 + score_pool4c)
        score_pool3c = crop(self.score_pool3(features["pool3"]), upscore_pool4, offset=9)
        upscore8 = self.upscore8(upscore_pool4 + score_pool3c)
        return crop(upscore8, images, offset=31)
