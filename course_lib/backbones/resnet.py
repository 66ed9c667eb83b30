"""ResNet-50/101 (He et al., "Deep Residual Learning for Image Recognition", CVPR 2016) as a
detection backbone.

The stages are named as in the paper's Table 1 and as in torchvision::

    paper      module             stride  channels (ResNet-50/101)   detection name
    conv1      conv1, bn1, relu   2       64
    conv2_x    maxpool, layer1    4       256                        C2 -> "0"
    conv3_x    layer2             8       512                        C3 -> "1"
    conv4_x    layer3             16      1024                       C4 -> "2"
    conv5_x    layer4             32      2048                       C5 -> "3"

Module tree and parameter names are identical to ``torchvision.models.resnet50`` (the v1.5
variant: the stride of a down-sampling bottleneck sits in its 3x3 convolution), so a
torchvision ResNet state dict saved to a file loads as-is (:func:`load_torchvision_resnet`).

Detectors fine-tune with small batches (1-2 images per GPU), far too few for batch
statistics, so the backbone's batch norm is *frozen*: :class:`FrozenBatchNorm2d` applies the
ImageNet statistics as a fixed affine map.
"""
from __future__ import annotations

import os
from collections import OrderedDict
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor, nn

from course_lib.state_dict import load_state_dict_checked

from .weights import WeightsEnum, read_weights, resolve_weights

from .width import scale_channels

__all__ = [
    "FrozenBatchNorm2d",
    "Bottleneck",
    "ResNet",
    "resnet50",
    "resnet101",
    "IntermediateLayerGetter",
    "freeze_layers",
    "overwrite_eps",
    "unfreeze_batch_norm",
    "load_torchvision_resnet",
    "ResNetBody",
    "build_resnet",
    "resnet_body",
]

NormLayer = Callable[[int], nn.Module]


class FrozenBatchNorm2d(nn.Module):
    """Batch norm with fixed statistics and affine parameters: ``y = (x - mean) / sqrt(var + eps) * w + b``.

    The four tensors are buffers (not parameters), so the optimiser never sees them. ``eps``
    defaults to 1e-5 like ``nn.BatchNorm2d``, which makes a frozen copy of a trained
    ``BatchNorm2d`` in eval mode compute the same function.

    torchvision's *published detection* weights (e.g. Faster R-CNN R50-FPN COCO_V1) were trained
    with ``eps = 0``; load them, then call ``overwrite_eps(model, 0.0)`` (torchvision does the
    same) or the features drift slightly from the ones the weights were trained with.
    """

    def __init__(self, num_features: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        # a BatchNorm2d state dict also counts batches; there is nothing to count here
        state_dict.pop(prefix + "num_batches_tracked", None)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)

    def forward(self, x: Tensor) -> Tensor:
        # fold the four tensors into one scale and one shift (same arithmetic as torchvision)
        scale = self.weight.reshape(1, -1, 1, 1) * (self.running_var.reshape(1, -1, 1, 1) + self.eps).rsqrt()
        shift = self.bias.reshape(1, -1, 1, 1) - self.running_mean.reshape(1, -1, 1, 1) * scale
        # torchvision writes x * scale + shift: two new maps. Adding the shift in place into the product's fresh
        # map rounds the same two operations in the same order (the same numbers, bit for bit) and allocates one
        # map instead of two -- half the time of this layer on 2 CPU cores (the addition's backward needs nothing
        # saved, and the product saves no map: scale and shift are buffers)
        return (x * scale).add_(shift)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"


def conv3x3(in_planes: int, out_planes: int, stride: int = 1, dilation: int = 1) -> nn.Conv2d:
    # padding = dilation keeps the size of a stride-1 map: a dilated 3x3 kernel spans 2 * dilation + 1 pixels
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=dilation, dilation=dilation,
                     bias=False)


def conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)


class Bottleneck(nn.Module):
    """The bottleneck residual block (paper Fig. 5 right): 1x1 reduce, 3x3, 1x1 expand (x4), plus
    the shortcut ``F(x) + x`` (paper eq. 1), or a strided 1x1 projection ``F(x) + W_s x`` (eq. 2)
    when the shape changes. The stride sits in the 3x3 conv (v1.5), not in the first 1x1; so does the
    ``dilation`` of a stage run *a trous* (see :class:`ResNet`)."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1,
                 downsample: nn.Module | None = None, norm_layer: NormLayer = nn.BatchNorm2d, *, dilation: int = 1):
        super().__init__()
        width = planes
        self.conv1 = conv1x1(inplanes, width)
        self.bn1 = norm_layer(width)
        self.conv2 = conv3x3(width, width, stride, dilation)
        self.bn2 = norm_layer(width)
        self.conv3 = conv1x1(width, planes * self.expansion)
        self.bn3 = norm_layer(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    """ResNet with bottleneck blocks (paper Table 1); ``layers`` = blocks per stage,
    (3, 4, 6, 3) for ResNet-50 and (3, 4, 23, 3) for ResNet-101.

    The construction order and the initialisation (Kaiming-normal fan-out convs, BN = identity)
    follow torchvision, so the same ``torch.manual_seed`` gives the same initial weights.

    ``replace_stride_with_dilation``: three booleans for conv3_x, conv4_x, conv5_x (torchvision's argument and
    semantics). A ``True`` stage keeps the resolution (its first block has stride 1) and multiplies the dilation
    of the 3x3 convolutions that follow by 2 instead (convolution "a trous"). R-FCN (Dai et al. 2016, sec. 2,
    "A trous and stride") runs conv5_x this way, ``[False, False, True]``: C5 at stride 16 instead of 32, with
    the same weights (a dilation has no parameters). As in torchvision, the first block of such a stage keeps
    the *previous* dilation and only the later blocks use the new one (R-FCN's released Caffe model dilates
    every res5 3x3, res5a's included: one convolution differs; we keep torchvision's layout).

    ``width``: channel multiplier (1.0 = the paper's 64, 256, 512, 1024, 2048). A smaller width keeps every
    layer, stride and block and only narrows them (0.25: 16, 64, 128, 256, 512), so a laptop profile trains the
    same network in minutes; torchvision's ImageNet weights fit only ``width=1.0``.
    """

    def __init__(self, layers: tuple[int, int, int, int], num_classes: int = 1000,
                 norm_layer: NormLayer = nn.BatchNorm2d, replace_stride_with_dilation: list[bool] | None = None,
                 *, width: float = 1.0):
        super().__init__()
        planes = [scale_channels(c, width) for c in (64, 128, 256, 512)]
        self.width = width
        if replace_stride_with_dilation is None:
            replace_stride_with_dilation = [False, False, False]
        if len(replace_stride_with_dilation) != 3 or not all(isinstance(d, bool) for d in replace_stride_with_dilation):
            raise ValueError("replace_stride_with_dilation must be three booleans (conv3_x, conv4_x, conv5_x), "
                             f"e.g. [False, False, True] for R-FCN's dilated conv5_x; got {replace_stride_with_dilation!r}")
        self.replace_stride_with_dilation = list(replace_stride_with_dilation)
        self._norm_layer = norm_layer
        self.dilation = 1
        self.inplanes = planes[0]
        self.conv1 = nn.Conv2d(3, planes[0], kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = norm_layer(planes[0])
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(planes[0], layers[0])  # conv2_x, stride 4
        dilate = replace_stride_with_dilation
        self.layer2 = self._make_layer(planes[1], layers[1], stride=2, dilate=dilate[0])  # conv3_x, stride 8
        self.layer3 = self._make_layer(planes[2], layers[2], stride=2, dilate=dilate[1])  # conv4_x, stride 16
        self.layer4 = self._make_layer(planes[3], layers[3], stride=2, dilate=dilate[2])  # conv5_x, stride 32
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(planes[3] * Bottleneck.expansion, num_classes)

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)

    def _make_layer(self, planes: int, blocks: int, stride: int = 1, dilate: bool = False) -> nn.Sequential:
        previous_dilation = self.dilation
        if dilate:  # trade the stride for a dilation of the later blocks' 3x3 convolutions
            self.dilation *= stride
            stride = 1
        downsample = None
        if stride != 1 or self.inplanes != planes * Bottleneck.expansion:
            # projection shortcut W_s (paper eq. 2, option B)
            downsample = nn.Sequential(
                conv1x1(self.inplanes, planes * Bottleneck.expansion, stride),
                self._norm_layer(planes * Bottleneck.expansion),
            )
        layers = [Bottleneck(self.inplanes, planes, stride, downsample, self._norm_layer, dilation=previous_dilation)]
        self.inplanes = planes * Bottleneck.expansion
        layers += [Bottleneck(self.inplanes, planes, norm_layer=self._norm_layer, dilation=self.dilation)
                   for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def resnet50(*, norm_layer: NormLayer = nn.BatchNorm2d, num_classes: int = 1000,
             replace_stride_with_dilation: list[bool] | None = None, width: float = 1.0) -> ResNet:
    """ResNet-50: 3, 4, 6 and 3 bottleneck blocks (paper Table 1); ``replace_stride_with_dilation`` as
    torchvision's (``[False, False, True]``: conv5_x a trous, output stride 16)."""
    return ResNet((3, 4, 6, 3), num_classes=num_classes, norm_layer=norm_layer,
                  replace_stride_with_dilation=replace_stride_with_dilation, width=width)


def resnet101(*, norm_layer: NormLayer = nn.BatchNorm2d, num_classes: int = 1000,
              replace_stride_with_dilation: list[bool] | None = None, width: float = 1.0) -> ResNet:
    """ResNet-101: 3, 4, 23 and 3 bottleneck blocks (paper Table 1); ``replace_stride_with_dilation`` as
    torchvision's (``[False, False, True]``: conv5_x a trous, output stride 16)."""
    return ResNet((3, 4, 23, 3), num_classes=num_classes, norm_layer=norm_layer,
                  replace_stride_with_dilation=replace_stride_with_dilation, width=width)


class IntermediateLayerGetter(nn.ModuleDict):
    """Runs the children of ``model`` in order and returns the outputs of the ones named in
    ``return_layers`` (``{child name: output name}``), e.g. ``{"layer1": "0", ..., "layer4": "3"}``
    for C2..C5. Children after the last returned one (avgpool, fc) are dropped, so the state
    dict keys are the model's own (``conv1.weight``, ``layer1.0.conv1.weight`` ...)."""

    def __init__(self, model: nn.Module, return_layers: dict[str, str]):
        children = [name for name, _ in model.named_children()]
        missing = set(return_layers) - set(children)
        if missing:
            raise ValueError(f"return_layers {sorted(missing)} are not children of the model; "
                             f"its children are {children}")
        layers = OrderedDict()
        remaining = set(return_layers)
        for name, module in model.named_children():
            layers[name] = module
            remaining.discard(name)
            if not remaining:
                break
        super().__init__(layers)
        self.return_layers = dict(return_layers)

    def forward(self, x: Tensor) -> OrderedDict[str, Tensor]:
        out = OrderedDict()
        for name, module in self.items():
            x = module(x)
            if name in self.return_layers:
                out[self.return_layers[name]] = x
        return out


class ResNetBody(IntermediateLayerGetter):
    """A ResNet cut after its last returned stage: ``forward(x)`` returns the stages' outputs by name (C2..C5 as
    ``"0".."3"`` for an FPN), with torchvision's state-dict keys (``conv1.weight``, ``layer1.0.conv1.weight`` ...).

    ``stem(x)`` is conv1 - bn1 - relu (stride 2, *before* the 3x3 max-pool), so EFPN's C2' (Deng et al. 2021,
    Table I: conv2_x without the max-pool, sharing conv2_x's weights; 800x800 input -> C2 200x200, C2' 400x400)
    is ``body.layer1(body.stem(x))``. ``out_channels_list`` and ``strides`` describe the returned maps, in order
    (the FPN's ``in_channels_list`` is read from here, not written down).
    """

    def stem(self, x: Tensor) -> Tensor:
        return self["relu"](self["bn1"](self["conv1"](x)))

    def after_stem(self, stem: Tensor) -> OrderedDict[str, Tensor]:
        """``forward(x)`` from ``stem(x)`` on (the max-pool, then the stages): EFPN computes the stem once for C2..C5
        and for C2'."""
        out = OrderedDict()
        for name, module in self.items():
            if name in ("conv1", "bn1", "relu"):
                continue
            stem = module(stem)
            if name in self.return_layers:
                out[self.return_layers[name]] = stem
        return out

    @property
    def out_channels_list(self) -> list[int]:
        return [self[layer][-1].conv3.out_channels for layer in self if layer in self.return_layers]

    @property
    def strides(self) -> list[int]:
        """The stride of each returned map: 4 after the max-pool, times the stride of every stage on the way."""
        stride, strides = 4, {}
        for name in ("layer1", "layer2", "layer3", "layer4"):
            if name in self:
                stride *= self[name][0].conv2.stride[0]
                strides[name] = stride
        return [strides[layer] for layer in self if layer in self.return_layers]


def freeze_layers(model: nn.Module, trainable_layers: int) -> None:
    """Freeze all but the last ``trainable_layers`` stages (0..5), counted from conv5_x down to
    conv1, like torchvision's detection models (default 3: conv1 and conv2_x stay frozen: their
    generic low-level filters gain little from fine-tuning and cost memory)."""
    if not 0 <= trainable_layers <= 5:
        raise ValueError(f"trainable_layers must be in [0, 5] (5 = train everything), got {trainable_layers}")
    layers_to_train = ["layer4", "layer3", "layer2", "layer1", "conv1"][:trainable_layers]
    if trainable_layers == 5:
        layers_to_train.append("bn1")
    for name, parameter in model.named_parameters():
        if not any(name.startswith(layer) for layer in layers_to_train):
            parameter.requires_grad_(False)


def overwrite_eps(model: nn.Module, eps: float) -> None:
    """Set ``eps`` of every :class:`FrozenBatchNorm2d` in ``model`` (use 0.0 after loading
    torchvision's published detection weights, which were trained that way)."""
    for module in model.modules():
        if isinstance(module, FrozenBatchNorm2d):
            module.eps = eps


def unfreeze_batch_norm(model: nn.Module) -> nn.Module:
    """Replace every :class:`FrozenBatchNorm2d` in ``model`` by an ``nn.BatchNorm2d`` holding the same statistics and
    affine parameters: in eval mode it computes the same function (to rounding); in training it normalises by each
    batch's statistics, re-estimates its running ones and learns its scale and shift (trainable if any parameter of ``model`` is, as a
    frozen stage's stays frozen). Returns ``model``."""
    trainable = any(p.requires_grad for p in model.parameters())
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, FrozenBatchNorm2d):
                bn = nn.BatchNorm2d(child.weight.numel(), eps=child.eps).to(child.weight.device)
                with torch.no_grad():
                    for key in ("weight", "bias", "running_mean", "running_var"):
                        getattr(bn, key).copy_(getattr(child, key))
                bn.requires_grad_(trainable)
                setattr(parent, name, bn)
    return model


def load_torchvision_resnet(model: nn.Module, weights: "str | os.PathLike | WeightsEnum") -> nn.Module:
    """Load torchvision ResNet ImageNet weights into ``model``: a :class:`ResNet`, or a body made by
    :func:`resnet_body` / :class:`IntermediateLayerGetter` (keys the body does not have, e.g. ``fc.*``, are skipped).

    ``weights``: a local file (``torch.save(torchvision.models.resnet50(...).state_dict(), path)``), a torchvision
    weights name (``"IMAGENET1K_V1"``, ``"DEFAULT"``) or enum member (``ResNet50_Weights.IMAGENET1K_V1``), read from
    torchvision's cache and verified (:mod:`course_lib.backbones.weights`). Only ``width=1.0`` fits them."""
    width = getattr(model, "width", 1.0)  # a body cut from a narrow ResNet fails below, key by key
    # ResNet-50 and -101 differ in conv4_x's depth (paper Table 1: 6 or 23 blocks)
    arch = {6: "resnet50", 23: "resnet101"}.get(len(model.layer3)) if hasattr(model, "layer3") else None
    resolved = resolve_weights(weights, arch or "resnet50")
    if width != 1.0 and not isinstance(resolved, Path):  # a file may hold a narrow ResNet: checked key by key
        raise ValueError(f"{_describe(weights)} holds a ResNet with the paper's channels, but this ResNet has "
                         f"width={width}: build it with width=1.0 to load ImageNet weights (or pass the file of a "
                         "narrow backbone, e.g. data_scripts/pretrain_backbones.py's).")
    if arch is None and not isinstance(resolved, Path):
        raise ValueError(f"{weights!r}: weights by name need to know the depth, and this body has no conv4_x "
                         "(layer3); load them before cutting the network (resnet_body(weights=...)), or pass a file.")
    state_dict, source = read_weights(resolved, arch or "resnet50")
    own = model.state_dict()
    if isinstance(model, ResNet) and not any(k.startswith("fc.") for k in state_dict):
        # a backbone file without a classifier (course_lib.pretraining's): no detector uses fc, it keeps its own
        state_dict = {**state_dict, **{k: v for k, v in own.items() if k.startswith("fc.")}}
    if not isinstance(model, ResNet):
        # a body keeps a prefix of the stages; drop the stages (and the classifier) it cut off
        kept_stages = {k.split(".")[0] for k in own}
        state_dict = {k: v for k, v in state_dict.items() if k.split(".")[0] in kept_stages}
    load_state_dict_checked(model, state_dict, source, fix=f"Check that it was saved from a ResNet of the same depth "
                            f"and width ({width:g}), e.g. by data_scripts/pretrain_backbones.py for this profile.")
    return model


def _describe(weights) -> str:
    return repr(os.fspath(weights)) if isinstance(weights, (str, os.PathLike)) else repr(weights)


def build_resnet(depth: int, *, weights_backbone: "str | os.PathLike | WeightsEnum | None" = None,
                 trainable_layers: int = 3, norm_layer: NormLayer = FrozenBatchNorm2d, width: float = 1.0,
                 replace_stride_with_dilation: list[bool] | None = None) -> ResNet:
    """The whole ResNet-``depth`` (50 or 101) a detector's backbone is cut from: built with ``norm_layer``, ``width``
    (channel multiplier) and ``replace_stride_with_dilation`` (R-FCN's conv5_x a trous: ``[False, False, True]``),
    torchvision's ImageNet weights loaded when given (``weights_backbone``: a local state dict file, or a weights
    name / enum as :func:`load_torchvision_resnet` takes), then the first ``5 - trainable_layers`` stages frozen.
    The FPN's body (:func:`resnet_body`) and the C4 / R-FCN trunks and heads are all cut from it."""
    builders = {50: resnet50, 101: resnet101}
    if depth not in builders:
        raise ValueError(f"depth must be 50 or 101, got {depth}")
    model = builders[depth](norm_layer=norm_layer, replace_stride_with_dilation=replace_stride_with_dilation,
                            width=width)
    if weights_backbone is not None:
        load_torchvision_resnet(model, weights_backbone)
    freeze_layers(model, trainable_layers)
    return model


def resnet_body(depth: int = 50, *, returned_layers: list[int] | None = None,
                return_layers: dict[str, str] | None = None, trainable_layers: int = 3,
                norm_layer: NormLayer = FrozenBatchNorm2d, weights: "str | os.PathLike | WeightsEnum | None" = None,
                replace_stride_with_dilation: list[bool] | None = None, width: float = 1.0) -> ResNetBody:
    """The ResNet-``depth`` feature extractor of a detector (a :class:`ResNetBody`).

    ``returned_layers``: the stages to return, as torchvision's ``_resnet_fpn_extractor`` (1 = conv2_x/C2 ...
    4 = conv5_x/C5), named ``"0", "1", ...`` in that order; default ``[1, 2, 3, 4]``: C2..C5 for an FPN.
    ``return_layers``: or explicit names, ``{child: output name}``, e.g. ``{"layer3": "c4", "layer4": "c5"}``.
    Batch norm is frozen and the first ``5 - trainable_layers`` stages too; ``weights``: torchvision's ResNet
    ImageNet weights (a local state dict file, or a weights name / enum as :func:`load_torchvision_resnet` takes),
    loaded before the cut; ``replace_stride_with_dilation`` and
    ``width`` (channel multiplier) as in :class:`ResNet` (R-FCN: ``[False, False, True]``); built by
    :func:`build_resnet`.
    """
    if returned_layers is not None and return_layers is not None:
        raise ValueError("Pass returned_layers (stage numbers) or return_layers (a {child: name} dict), not both.")
    if return_layers is None:
        returned_layers = [1, 2, 3, 4] if returned_layers is None else list(returned_layers)
        if not returned_layers or any(k not in (1, 2, 3, 4) for k in returned_layers) or \
                returned_layers != sorted(set(returned_layers)):
            raise ValueError("returned_layers must be increasing stage numbers in 1..4 (1 = conv2_x/C2, "
                             f"4 = conv5_x/C5), e.g. [2, 3, 4]; got {returned_layers!r}")
        return_layers = {f"layer{k}": str(i) for i, k in enumerate(returned_layers)}
    model = build_resnet(depth, weights_backbone=weights, trainable_layers=trainable_layers, norm_layer=norm_layer,
                         width=width, replace_stride_with_dilation=replace_stride_with_dilation)
    return ResNetBody(model, return_layers)


def backbone_training_setup(weights, weights_backbone, trainable_backbone_layers: int | None):
    """torchvision's rule for a detector's backbone: ``(trainable_layers, norm_layer)``.

    With weights (of the detector or its backbone) batch norm is frozen and the last 3 stages train by default;
    a randomly initialised backbone uses ordinary batch norm and trains all 5 stages (a different value is
    ignored, with a warning).
    """
    import warnings

    is_trained = weights is not None or weights_backbone is not None
    if not is_trained:
        if trainable_backbone_layers not in (None, 5):
            warnings.warn(f"trainable_backbone_layers={trainable_backbone_layers} has no effect without weights or "
                          "weights_backbone: a randomly initialised backbone trains all 5 stages (as in torchvision).")
        return 5, nn.BatchNorm2d
    return (3 if trainable_backbone_layers is None else trainable_backbone_layers), FrozenBatchNorm2d
