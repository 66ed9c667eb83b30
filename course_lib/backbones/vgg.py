"""VGG16 (Simonyan & Zisserman, "Very Deep Convolutional Networks", ICLR 2015, configuration D)
as a *fully convolutional* feature extractor, for FCN (chapter 2) and Fast R-CNN.

Thirteen 3x3 convolutions in five blocks, each block closed by a 2x2 max-pool (stride 2), then
the classifier's three fully connected layers. Named as in the paper and the FCN reference code::

    block  layers                                  stride  channels
    1      conv1_1 conv1_2 pool1                   2       64
    2      conv2_1 conv2_2 pool2                   4       128
    3      conv3_1 conv3_2 conv3_3 pool3           8       256
    4      conv4_1 conv4_2 conv4_3 pool4           16      512
    5      conv5_1 conv5_2 conv5_3 pool5           32      512
    fc     fc6 (7x7 conv) fc7 (1x1) [fc8 (1x1)]    32      4096

``features`` is an ``nn.Sequential`` with exactly torchvision's indices (``features.0`` is conv1_1,
``features.28`` is conv5_3), so a torchvision ``vgg16`` state dict loads as-is; its fully connected
``classifier.0/3/6`` are *convolutionalized* on the way in (:func:`convolutionalize_vgg16_state_dict`):
"fully connected layers can also be viewed as convolutions with kernels that cover their entire
input regions" (Long et al., CVPR 2015, Sec. 3.1).
"""
from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

from course_lib.state_dict import read_state_dict

from .weights import WeightsEnum, read_weights, resolve_weights
from .width import scale_channels

__all__ = [
    "VGG16",
    "VGG16_BLOCKS",
    "vgg16_layer_names",
    "linear_to_conv",
    "convolutionalize_vgg16_state_dict",
]

#: output channels of the convolutions of each block (configuration "D" of the paper's Table 1)
VGG16_BLOCKS: tuple[tuple[int, ...], ...] = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))
FC_CHANNELS = 4096


def vgg16_layer_names() -> list[str]:
    """The names of ``features[0], features[1], ...``: conv1_1, relu1_1, conv1_2, relu1_2, pool1, ..."""
    names = []
    for b, convs in enumerate(VGG16_BLOCKS, start=1):
        for c in range(1, len(convs) + 1):
            names += [f"conv{b}_{c}", f"relu{b}_{c}"]
        names.append(f"pool{b}")
    return names


def linear_to_conv(linear: nn.Linear, in_channels: int, kernel_size: int | tuple[int, int]) -> nn.Conv2d:
    """The convolution that computes ``linear`` at every position ("net surgery", FCN Sec. 3.1).

    A fully connected layer that reads a flattened ``in_channels x kh x kw`` map is a ``kh x kw``
    convolution with the same weights viewed as ``(out, in_channels, kh, kw)``: ``torch.flatten``
    orders the inputs channel-major, exactly like a convolution kernel.
    """
    kh, kw = (kernel_size, kernel_size) if isinstance(kernel_size, int) else kernel_size
    if linear.in_features != in_channels * kh * kw:
        raise ValueError(
            f"a Linear with {linear.in_features} inputs cannot read a {in_channels}x{kh}x{kw} map "
            f"({in_channels * kh * kw} values): pass the channels and size of the map it was trained on"
        )
    conv = nn.utils.skip_init(
        nn.Conv2d, in_channels, linear.out_features, (kh, kw), bias=linear.bias is not None,
        device=linear.weight.device, dtype=linear.weight.dtype,
    )
    with torch.no_grad():
        conv.weight.copy_(linear.weight.view(linear.out_features, in_channels, kh, kw))
        if linear.bias is not None:
            conv.bias.copy_(linear.bias)
    return conv


def _conv(*args, **kwargs) -> nn.Conv2d:
    """An uninitialised ``nn.Conv2d`` (:meth:`VGG16.reset_parameters` initialises it once; fc6
    alone has 103 M weights, so initialising twice costs seconds). Like ``nn.Conv2d`` it is created on
    the default device (e.g. inside ``with torch.device("meta"):``)."""
    kwargs.setdefault("device", torch.get_default_device())
    return nn.utils.skip_init(nn.Conv2d, *args, **kwargs)


class VGG16(nn.Module):
    """VGG16 as a fully convolutional network; ``forward`` returns the named feature maps.

    Args:
        width: channel multiplier (1.0 = the paper: 64 ... 512 conv channels, 4096 in fc6/fc7).
            Smaller widths keep the architecture (every layer, kernel, stride and padding) and only
            thin the layers, for the course's CPU profiles.
        conv1_padding: padding of conv1_1. 1 in VGG; FCN uses 100 so that the 7x7 fc6 fits any
            input and the upsampled scores cover it (FCN reference code, ``voc-fcn*/net.py``).
        ceil_mode: max-pool output size rounded up (Caffe's convention, used by FCN) or down (VGG
            in torchvision).
        fully_connected: add fc6 (7x7 convolution, 4096), fc7 (1x1, 4096), each with ReLU and
            dropout. Without them the network ends at pool5.
        num_classes: add fc8 (1x1 convolution to ``num_classes`` scores), the ImageNet classifier.
        dropout: dropout probability after fc6 and fc7 (paper: 0.5).

    Returns (``forward``): an ``OrderedDict`` with ``pool1`` ... ``pool5``, ``conv5_3`` (after its
    ReLU; stride 16, what Fast R-CNN pools from) and, when present, ``fc7`` (after ReLU and
    dropout) and ``fc8``. Their channels are in ``self.out_channels``.
    """

    def __init__(
        self,
        *,
        width: float = 1.0,
        conv1_padding: int = 1,
        ceil_mode: bool = False,
        fully_connected: bool = True,
        num_classes: int | None = None,
        dropout: float = 0.5,
    ):
        super().__init__()
        self.width = width
        layers: list[nn.Module] = []
        in_channels = 3
        for convs in VGG16_BLOCKS:
            for channels in convs:
                out_channels = scale_channels(channels, width)
                padding = conv1_padding if not layers else 1
                layers += [_conv(in_channels, out_channels, 3, padding=padding), nn.ReLU(inplace=True)]
                in_channels = out_channels
            layers.append(nn.MaxPool2d(2, stride=2, ceil_mode=ceil_mode))
        self.features = nn.Sequential(*layers)
        self.layer_names = vgg16_layer_names()

        c = {f"pool{b}": scale_channels(convs[-1], width) for b, convs in enumerate(VGG16_BLOCKS, start=1)}
        c["conv5_3"] = c["pool5"]
        self.fully_connected = fully_connected
        if fully_connected:
            fc = scale_channels(FC_CHANNELS, width)
            self.fc6 = _conv(c["pool5"], fc, 7)
            self.relu6 = nn.ReLU(inplace=True)
            self.drop6 = nn.Dropout(dropout)
            self.fc7 = _conv(fc, fc, 1)
            self.relu7 = nn.ReLU(inplace=True)
            self.drop7 = nn.Dropout(dropout)
            c["fc7"] = fc
        elif num_classes is not None:
            raise ValueError("fc8 (num_classes) needs fc6/fc7: pass fully_connected=True")
        self.num_classes = num_classes
        if num_classes is not None:
            self.fc8 = _conv(c["fc7"], num_classes, 1)
            c["fc8"] = num_classes
        self.out_channels = c
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """He initialisation (std = sqrt(2 / fan_in)) for every convolution, zero biases."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> "OrderedDict[str, Tensor]":
        out: OrderedDict[str, Tensor] = OrderedDict()
        for name, layer in zip(self.layer_names, self.features):
            x = layer(x)
            if name.startswith("pool"):
                out[name] = x
            elif name == "relu5_3":
                out["conv5_3"] = x
        if self.fully_connected:
            x = self.drop6(self.relu6(self.fc6(x)))
            x = self.drop7(self.relu7(self.fc7(x)))
            out["fc7"] = x
        if self.num_classes is not None:
            out["fc8"] = self.fc8(x)
        return out

    def load_torchvision_state_dict(self, state_dict: "dict[str, Tensor] | str | os.PathLike | WeightsEnum") -> list[str]:
        """Load a torchvision ``vgg16`` state dict, with net surgery: the dict itself, the file it was saved to, or
        torchvision's ImageNet weights by name (``"IMAGENET1K_V1"``) or enum (``VGG16_Weights.IMAGENET1K_V1``), read
        from torchvision's cache and verified (:mod:`course_lib.backbones.weights`).

        ``features.*`` load as they are; ``classifier.0`` (fc6), ``classifier.3`` (fc7) and, if this
        network has fc8 with 1000 classes, ``classifier.6`` are reshaped into convolutions. Returns
        the torchvision keys that were dropped (e.g. fc8 when this network has none), as the FCN
        reference code's ``surgery.transplant`` does. A state dict of ``features.*`` alone -- a backbone without its
        classifier, as :mod:`course_lib.pretraining` writes for the laptop's narrow VGG16 -- loads the thirteen
        convolutions and leaves fc6 / fc7 as they are.
        """
        if not isinstance(state_dict, Mapping):
            if self.width != 1.0 and not isinstance(resolve_weights(state_dict, "vgg16"), Path):
                raise ValueError(f"torchvision's VGG16 weights have the paper's channels; this VGG16 has "
                                 f"width={self.width}. Build it with width=1.0 to load them.")
            state_dict = _load(state_dict)
        converted = convolutionalize_vgg16_state_dict(state_dict)
        own = self.state_dict()
        dropped = [k for k in converted if k not in own]
        for k in dropped:
            converted.pop(k)
        for k, v in converted.items():
            if v.shape != own[k].shape:
                hint = ("torchvision's VGG16 weights have the paper's channels: build the network with width=1.0"
                        if self.width != 1.0 and k == "features.0.weight" and v.shape[0] == 64 else
                        "is it a vgg16 (not vgg16_bn / vgg19) state dict, of this network's width?")
                raise ValueError(f"{k}: the file has shape {tuple(v.shape)}, this network (width {self.width:g}) "
                                 f"{tuple(own[k].shape)}; {hint}")
        missing = [k for k in own if k not in converted]
        features_only = not any(k.startswith(("fc6.", "fc7.", "fc8.")) for k in converted)
        allowed = ("fc6.", "fc7.", "fc8.") if features_only else ("fc8.",)
        lacking = [k for k in missing if not k.startswith(allowed)]
        if lacking:
            raise ValueError(f"the state dict lacks {lacking}: is it a torchvision vgg16 state dict?")
        self.load_state_dict(converted, strict=False)
        return [k.replace("fc6", "classifier.0").replace("fc7", "classifier.3").replace("fc8", "classifier.6")
                for k in dropped]


def convolutionalize_vgg16_state_dict(state_dict: dict[str, Tensor]) -> "OrderedDict[str, Tensor]":
    """torchvision VGG16 keys -> ours: ``classifier.{0,3,6}`` (fully connected) become fc6/fc7/fc8 convs.

    fc6 reads the 512 x 7 x 7 pool5 map, so its (4096, 25088) matrix becomes a (4096, 512, 7, 7)
    kernel; fc7 and fc8 read a 1 x 1 map: (out, in) -> (out, in, 1, 1).
    """
    expected = "features.0.weight"
    if expected not in state_dict:
        some = ", ".join(list(state_dict)[:4])
        raise ValueError(
            f"not a torchvision vgg16 state dict: no key {expected!r} (found {some}, ...). "
            "Save one with torch.save(torchvision.models.vgg16(weights=...).state_dict(), path)."
        )
    rename = {"classifier.0": "fc6", "classifier.3": "fc7", "classifier.6": "fc8"}
    out: OrderedDict[str, Tensor] = OrderedDict()
    for key, value in state_dict.items():
        layer, _, kind = key.rpartition(".")
        if layer in rename:
            if kind == "weight":
                c_in = 512 if layer == "classifier.0" else value.shape[1]
                k = 7 if layer == "classifier.0" else 1
                if value.shape[1] != c_in * k * k:
                    raise ValueError(f"{key} has shape {tuple(value.shape)}, expected (*, {c_in * k * k})")
                value = value.reshape(value.shape[0], c_in, k, k)
            key = f"{rename[layer]}.{kind}"
        out[key] = value
    return out


def _load(weights: "str | os.PathLike | WeightsEnum") -> dict[str, Tensor]:
    resolved = resolve_weights(weights, "vgg16")
    if isinstance(resolved, Path):
        return read_state_dict(resolved, missing=(
            f"no VGG16 weights at {os.fspath(resolved)!r}: pass weights='IMAGENET1K_V1' (torchvision's, from its "
            "cache), or save them with torch.save(torchvision.models.vgg16(weights='IMAGENET1K_V1').state_dict(), path)"))
    return read_weights(resolved, "vgg16")[0]
