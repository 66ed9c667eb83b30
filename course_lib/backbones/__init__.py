"""Backbones built from scratch with torchvision's parameter names, so its state_dict files load as they are.

- ``vgg``: VGG16 (Simonyan & Zisserman, 2015) -- FCN's and Fast R-CNN's backbone, fully connected layers as convolutions.
- ``resnet``: ResNet-50/101 v1.5 with frozen batch norm -- the Faster R-CNN (C4) and FPN detectors' backbone.
- ``width``: ``scale_channels``, the width multiplier's one rule (``width=1.0``: the paper's channels).
"""
from .resnet import FrozenBatchNorm2d, ResNet, load_torchvision_resnet, resnet50, resnet101, resnet_body
from .vgg import VGG16
from .width import scale_channels

__all__ = ["VGG16", "ResNet", "FrozenBatchNorm2d", "resnet50", "resnet101", "resnet_body", "load_torchvision_resnet",
           "scale_channels"]
