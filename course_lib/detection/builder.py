"""The one shape of every detector builder in the course: torchvision's

    fasterrcnn_resnet50_fpn(*, weights=None, num_classes=None, weights_backbone=None,
                            trainable_backbone_layers=None, **kwargs)

:func:`build_detector` is the part all builders share -- reading the weights files, choosing the number of
classes, torchvision's trained-vs-random backbone rule, and loading the detector's weights -- and a builder
(``fasterrcnn_resnet50_c4``, ``fasterrcnn_resnet50_fpn``, R-FCN, EFPN) only says how to make its network::

    def fasterrcnn_resnet50_fpn(*, weights=None, num_classes=None, weights_backbone=None,
                                trainable_backbone_layers=None, **kwargs):
        def make(num_classes, weights_backbone, trainable_layers, norm_layer):
            backbone = resnet_fpn_backbone(50, weights_backbone=weights_backbone, ...)
            return FasterRCNN(backbone, num_classes=num_classes, **kwargs)
        return build_detector(make, "a Faster R-CNN ResNet-50-FPN", weights=weights, num_classes=num_classes, ...)

``weights`` = a state dict of the whole detector, a local file (``torch.save(model.state_dict(), path)``) or in
memory; ``weights_backbone`` = a torchvision ResNet's ImageNet weights: a local file, or torchvision's by name or enum
(``"IMAGENET1K_V1"``, read from its cache and verified: :mod:`course_lib.backbones.weights`).
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Callable

from torch import nn

from course_lib.backbones.resnet import backbone_training_setup
from course_lib.backbones.weights import WeightsEnum, is_weights_file
from course_lib.state_dict import load_state_dict_checked, read_state_dict

__all__ = ["build_detector", "read_weights", "COCO_NUM_CLASSES"]

COCO_NUM_CLASSES = 91  # torchvision's default: COCO's category ids 1..90 plus the background
PREDICTOR_KEY = "roi_heads.box_predictor.cls_score.weight"  # [num_classes, d]: where a file says its classes


def read_weights(weights: str | os.PathLike | Mapping) -> tuple[dict, str]:
    """``(state dict, how to name it in a message)`` of a builder's ``weights``: a local file, or a state dict already
    in memory (EFPN's builder hands chapter 7's builder the top four levels of its own file this way)."""
    if isinstance(weights, Mapping):
        return dict(weights), "the given state dict"
    return read_state_dict(weights), repr(os.fspath(weights))


def build_detector(make: Callable[..., nn.Module], name: str, *, weights: str | os.PathLike | Mapping | None,
                   num_classes: int | None, weights_backbone: "str | os.PathLike | WeightsEnum | None",
                   trainable_backbone_layers: int | None, num_classes_key: str = PREDICTOR_KEY) -> nn.Module:
    """torchvision's builder recipe around ``make(num_classes=, weights_backbone=, trainable_layers=, norm_layer=)``.

    1. The files are read first, so a wrong path fails at once, not after building the network.
    2. With ``weights`` the backbone file is not needed (the detector's weights contain the backbone's), and
       ``num_classes`` defaults to the file's (its ``num_classes_key`` has one row per class); else to 91.
    3. With either file batch norm is frozen and ``trainable_backbone_layers`` (default 3) stages train;
       without, ordinary batch norm and all 5 stages (``backbone_training_setup``).
    4. ``make`` builds the network; ``weights`` are loaded into it, a mismatch named key by key.

    ``name`` describes the model in errors ("a Faster R-CNN ResNet-50-FPN").
    """
    if weights is not None and not isinstance(weights, (str, os.PathLike, Mapping)):
        raise TypeError(f"weights must be the path of a local state dict file (or a state dict), got "
                        f"{type(weights).__name__}: save one with torch.save(model.state_dict(), path).")
    if weights_backbone is not None and not isinstance(weights_backbone, (str, os.PathLike, WeightsEnum)):
        raise TypeError(f"weights_backbone must be a local state dict file or torchvision's ImageNet weights by name "
                        f"('IMAGENET1K_V1') or enum, got {type(weights_backbone).__name__}.")
    state_dict = None
    if weights is not None:
        state_dict, source = read_weights(weights)
        weights_backbone = None
        if num_classes is None and num_classes_key in state_dict:
            num_classes = int(state_dict[num_classes_key].shape[0])
    elif weights_backbone is not None and is_weights_file(weights_backbone):
        read_state_dict(weights_backbone)  # read again by the backbone; here only to fail before building
    if num_classes is None:
        num_classes = COCO_NUM_CLASSES
    if not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"num_classes counts the object classes + 1 for the background, so it must be an int "
                         f">= 2, got {num_classes!r}.")

    trainable_layers, norm_layer = backbone_training_setup(weights, weights_backbone, trainable_backbone_layers)
    model = make(num_classes=num_classes, weights_backbone=weights_backbone, trainable_layers=trainable_layers,
                 norm_layer=norm_layer)
    if state_dict is not None:
        load_state_dict_checked(
            model, state_dict, source, model_name=f"{name} with num_classes={num_classes}",
            fix="Save them with torch.save(model.state_dict(), path) from the same architecture "
                "(pass num_classes to match the file).")
    return model
