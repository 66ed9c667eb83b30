"""The Feature Pyramid Network neck (Lin et al., "Feature Pyramid Networks for Object Detection", CVPR 2017).

A ResNet's bottom-up pathway ends each stage with a map C_k of stride 2^k (C2 ... C5: strides 4 ... 32).
FPN turns them into a pyramid P2 ... P5 that is *semantically strong at every scale* (sec. 3):

    M5 = lateral_5(C5)                          1x1 conv to d = 256 channels
    M_k = lateral_k(C_k) + upsample(M_{k+1})    top-down pathway: nearest-neighbour x2, added element-wise
    P_k = output_k(M_k)                         3x3 conv "to reduce the aliasing effect of upsampling"
    P6 = subsample(P5)                          stride-2 subsampling of P5, only for the RPN (sec. 4.1)

Parameter names follow torchvision's ``FeaturePyramidNetwork`` so that its checkpoints load as they are:
the lateral 1x1 convolutions are ``inner_blocks.<i>.0`` and the 3x3 output convolutions are
``layer_blocks.<i>.0`` (``<i>`` = 0 for C2/P2 ... 3 for C5/P5). Outputs are named as torchvision names them,
because the RPN and the RoI pooler refer to levels by these names. ``FPN_LEVELS`` is the one table that says
which level each name is (level k has stride 2^k)::

    "0" = P2 (stride 4), "1" = P3 (8), "2" = P4 (16), "3" = P5 (32), "pool" = P6 (64)

Code that needs a level's number or stride reads it from a table like this (``FPN_LEVELS[name]``), never from the
position of a name in a list; a neck with other levels (EFPN's P2' at stride 2 = level 1) has its own table.

Two switches reproduce the paper's ablations (Table 1 and 2, rows (d) and (e)); the third one, (f) "only the
finest level P2 for RoIs", is a choice of the RoI pooler, see ``faster_rcnn_fpn.py``:

* ``top_down=False`` -- (d) *bottom-up pyramid*: no top-down pathway, P_k = output_k(lateral_k(C_k)); each level
  is only as semantically strong as its own stage (what SSD-style in-network pyramids do).
* ``lateral=False`` -- (e) *top-down pyramid without 1x1 lateral connections*: only C5 enters (through its 1x1
  convolution, "to start the iteration"), M_k = upsample(M_{k+1}); fine resolution, but its locations are
  imprecise because the maps were downsampled and upsampled several times.
"""
from __future__ import annotations

from collections import OrderedDict

import torch.nn.functional as F
from torch import Tensor, nn

from course_lib.ops import AnchorGenerator
from course_lib.ops.poolers import level_name  # the levels' names, for chapter 7's readers (chapter 3b uses them too)

__all__ = ["FPN_LEVELS", "FPN_ROI_LEVELS", "fpn_anchor_generator", "level_name", "ExtraFPNBlock", "FeaturePyramidNetwork",
           "LastLevelMaxPool", "BackboneWithFPN"]

#: torchvision's names of the FPN outputs -> level number k (stride 2^k): P2..P5 and P6 ("pool", RPN only).
FPN_LEVELS: dict[str, int] = {"0": 2, "1": 3, "2": 4, "3": 5, "pool": 6}
#: the levels RoIs are pooled from (sec. 4.2: P2..P5; P6 serves only the RPN's largest anchors).
FPN_ROI_LEVELS: list[str] = ["0", "1", "2", "3"]


def fpn_anchor_generator(sizes: tuple[int, ...] | None = None,
                         aspect_ratios: tuple[float, ...] = (0.5, 1.0, 2.0)) -> AnchorGenerator:
    """FPN's anchors (sec. 4.1): one size per level of ``FPN_LEVELS`` (P2..P6), by default 8 times its stride --
    32^2 on P2 ... 512^2 on P6 -- with 3 aspect ratios (15 anchors in all); the default of ``FasterRCNN``, as
    torchvision's. ``sizes``: one size per level instead (the FPN builders' ``rpn_anchor_sizes``)."""
    if sizes is None:
        sizes = tuple(8 * 2 ** level for level in FPN_LEVELS.values())
    if len(sizes) != len(FPN_LEVELS):
        raise ValueError(f"FPN's anchors have one size per level {list(FPN_LEVELS)} (P2..P6), got {tuple(sizes)}.")
    return AnchorGenerator(tuple((int(s),) for s in sizes), (tuple(aspect_ratios),) * len(sizes))


class ExtraFPNBlock(nn.Module):
    """An extra block of the FPN (torchvision's contract): ``forward(results, x, names) -> (results, names)``.

    ``results`` are the FPN's outputs P2..P5 (finest first), ``x`` the maps that entered it (C2..C5), ``names``
    their names; the block returns the lists with its own levels added (e.g. P6), so one block can read any
    output or input (EFPN's extension reads P3, P4 and C2'). It must not change the lists it is given.
    """

    def forward(self, results: list[Tensor], x: list[Tensor], names: list[str]) -> tuple[list[Tensor], list[str]]:
        raise NotImplementedError(f"{type(self).__name__} must implement forward(results, x, names)")


class LastLevelMaxPool(ExtraFPNBlock):
    """P6 = P5 subsampled with stride 2 (sec. 4.1: "P6 is simply a stride two subsampling of P5"), named "pool".

    Written as ``max_pool2d(kernel_size=1, stride=2)`` like torchvision: a 1x1 max is the value itself, so this
    keeps every second row and column. P6 serves the RPN's 512^2 anchors; RoIs are never pooled from it.
    """

    def forward(self, results: list[Tensor], x: list[Tensor], names: list[str]) -> tuple[list[Tensor], list[str]]:
        p6 = F.max_pool2d(results[-1], kernel_size=1, stride=2, padding=0)
        return results + [p6], names + ["pool"]


class FeaturePyramidNetwork(nn.Module):
    """Top-down pathway and lateral connections over bottom-up maps C2 ... C5 (sec. 3, Fig. 3).

    Args:
        in_channels_list: channels of the incoming maps, finest first (ResNet-50: [256, 512, 1024, 2048]).
        out_channels: d, the channels of every pyramid level (the paper's d = 256).
        extra_blocks: an :class:`ExtraFPNBlock` that adds levels from the outputs and inputs
            (``LastLevelMaxPool``: P6), or None.
        top_down: False gives ablation (d), a bottom-up pyramid without the top-down pathway.
        lateral: False gives ablation (e), a top-down pyramid without the 1x1 lateral connections.

    ``forward`` takes an ordered dict of maps, finest first, and returns an ordered dict with the same names
    (plus the names the extra block adds), every map with ``out_channels`` channels.
    """

    # version 2 wraps each convolution in a Sequential (torchvision's Conv2dNormActivation): ``inner_blocks.0.0``;
    # checkpoints without a version (torchvision < 0.11) name it ``inner_blocks.0``; see _load_from_state_dict.
    _version = 2

    def __init__(
        self,
        in_channels_list: list[int],
        out_channels: int = 256,
        extra_blocks: nn.Module | None = None,
        *,
        top_down: bool = True,
        lateral: bool = True,
    ):
        super().__init__()
        if not in_channels_list or any(int(c) <= 0 for c in in_channels_list):
            raise ValueError(f"in_channels_list must be a non-empty list of positive ints, got {in_channels_list!r}")
        if out_channels <= 0:
            raise ValueError(f"out_channels must be positive, got {out_channels}")
        if not (top_down or lateral):
            raise ValueError(
                "top_down=False and lateral=False leaves only C5: without lateral connections the top-down "
                "pathway is the only way the finer levels receive features. Switch off at most one of them."
            )
        self.top_down = top_down
        self.lateral = lateral
        coarsest = len(in_channels_list) - 1
        # Lateral 1x1 convolutions. Without lateral connections only C5 keeps its 1x1 convolution; the other slots
        # hold parameter-free placeholders so that indices stay level numbers.
        self.inner_blocks = nn.ModuleList(
            nn.Sequential(nn.Conv2d(c, out_channels, kernel_size=1)) if (lateral or i == coarsest) else nn.Identity()
            for i, c in enumerate(in_channels_list)
        )
        # 3x3 output convolutions, one per level (not shared across levels, unlike the heads).
        self.layer_blocks = nn.ModuleList(
            nn.Sequential(nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1)) for _ in in_channels_list
        )
        for m in self.modules():  # torchvision's initialisation (before the extra block is attached)
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_uniform_(m.weight, a=1)
                nn.init.constant_(m.bias, 0)
        self.extra_blocks = extra_blocks

    def forward(self, features: dict[str, Tensor]) -> OrderedDict[str, Tensor]:
        names, c = list(features.keys()), list(features.values())
        if len(c) != len(self.layer_blocks):
            raise ValueError(
                f"FeaturePyramidNetwork was built for {len(self.layer_blocks)} levels, got {len(c)} maps: {names}"
            )
        coarsest = len(c) - 1
        m = self.inner_blocks[coarsest](c[coarsest])  # M5: the 1x1 convolution that starts the iteration
        p = [self.layer_blocks[coarsest](m)]
        for k in range(coarsest - 1, -1, -1):  # finer and finer levels
            if self.top_down and self.lateral:
                lateral = self.inner_blocks[k](c[k])
                m = lateral + F.interpolate(m, size=lateral.shape[-2:], mode="nearest")
            elif self.lateral:  # (d) bottom-up pyramid: nothing comes down from the coarser level
                m = self.inner_blocks[k](c[k])
            else:  # (e) top-down pyramid: nothing comes in from the side
                m = F.interpolate(m, size=c[k].shape[-2:], mode="nearest")
            p.insert(0, self.layer_blocks[k](m))
        if self.extra_blocks is not None:
            p, names = self.extra_blocks(p, c, names)
        return OrderedDict(zip(names, p))

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, *args, **kwargs):
        """Accept checkpoints written before version 2 (``inner_blocks.0.weight`` -> ``inner_blocks.0.0.weight``),
        exactly as torchvision's ``FeaturePyramidNetwork`` does."""
        version = local_metadata.get("version", None)
        if version is None or version < 2:
            for block in ("inner_blocks", "layer_blocks"):
                for i in range(len(self.inner_blocks)):
                    for kind in ("weight", "bias"):
                        old_key, new_key = f"{prefix}{block}.{i}.{kind}", f"{prefix}{block}.{i}.0.{kind}"
                        if old_key in state_dict:
                            state_dict[new_key] = state_dict.pop(old_key)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, *args, **kwargs)


class BackboneWithFPN(nn.Module):
    """Bottom-up pathway (``body``: image -> ordered dict of C2 ... C5) followed by the FPN (``fpn``).

    ``out_channels`` tells the RPN and the box head how many channels every level has (the paper's d).
    """

    def __init__(self, body: nn.Module, fpn: FeaturePyramidNetwork, out_channels: int):
        super().__init__()
        self.body = body
        self.fpn = fpn
        self.out_channels = out_channels

    def forward(self, images: Tensor) -> OrderedDict[str, Tensor]:
        return self.fpn(self.body(images))
