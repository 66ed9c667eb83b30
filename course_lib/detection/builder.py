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

Weights are local files (nothing is downloaded in this course): ``weights`` = a state dict of the whole detector
(``torch.save(model.state_dict(), path)``), ``weights_backbone`` = a torchvision ResNet's ImageNet state dict.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Callable

from torch import nn

from course_lib.backbones.resnet import backbone_training_setup
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
                   num_classes: int | None, weights_backbone: str | os.PathLike | None,
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
    for arg, value in (("weights", weights), ("weights_backbone", weights_backbone)):
        if value is not None and not isinstance(value, (str, os.PathLike)) and not (
                arg == "weights" and isinstance(value, Mapping)):
            raise TypeError(f"{arg} must be the path of a local state dict file (nothing is downloaded in this "
                            f"course), got {type(value).__name__}: save one with torch.save(model.state_dict(), path).")
    state_dict = None
    if weights is not None:
        state_dict, source = read_weights(weights)
        weights_backbone = None
        if num_classes is None and num_classes_key in state_dict:
            num_classes = int(state_dict[num_classes_key].shape[0])
    elif weights_backbone is not None:
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
