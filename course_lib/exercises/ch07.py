"""Checkers for chapter 7 (FPN): the top-down pathway with its ablation switches, and the RoI level mapper.

Each ``check_<name>(fn)`` runs ``fn`` on hidden, seeded cases against ``course_lib``'s FeaturePyramidNetwork and
LevelMapper (tested equal to torchvision's) and returns ``fn``, or raises :class:`ExerciseFailed` with a hint.
"""
from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F

from course_lib.detection.fpn import FeaturePyramidNetwork
from course_lib.ops import LevelMapper

from .core import Case, Hint, check_function

__all__ = ["check_top_down_pathway", "check_level_of_rois"]

CHAPTER = "ch07"


# ---------------------------------------------------------------------------------------------- top-down pathway
def _neck(channels, out_channels, seed, **switches):
    torch.manual_seed(seed)
    neck = FeaturePyramidNetwork(list(channels), out_channels, **switches)
    with torch.no_grad():  # non-zero biases, so that a forgotten convolution shows
        for m in neck.modules():
            if isinstance(m, torch.nn.Conv2d):
                m.bias.normal_()
    return neck.eval()


def _top_down_reference(features, inner_blocks, layer_blocks, top_down=True, lateral=True):
    channels = [f.shape[1] for f in features]
    out_channels = layer_blocks[0][0].out_channels
    neck = FeaturePyramidNetwork(channels, out_channels, top_down=top_down, lateral=lateral)
    state = {f"inner_blocks.{k}": v for k, v in inner_blocks.state_dict().items()}
    state.update({f"layer_blocks.{k}": v for k, v in layer_blocks.state_dict().items()})
    neck.load_state_dict(state)
    with torch.no_grad():
        return list(neck(OrderedDict((str(i), f) for i, f in enumerate(features))).values())


def _variant(features, inner_blocks, layer_blocks, top_down=True, lateral=True, *, mode="nearest", output=True,
             accumulate=True):
    with torch.no_grad():
        n = len(features)
        m = inner_blocks[n - 1](features[n - 1])
        out = [layer_blocks[n - 1](m) if output else m]
        for k in range(n - 2, -1, -1):
            side = inner_blocks[k](features[k]) if lateral else None
            size = features[k].shape[-2:]
            up = F.interpolate(m if accumulate else inner_blocks[k + 1](features[k + 1]), size=size, mode=mode)
            m = (side + up) if (top_down and lateral) else (side if lateral else up)
            out.insert(0, layer_blocks[k](m) if output else m)
        return out


def check_top_down_pathway(fn):
    """``top_down_pathway(features, inner_blocks, layer_blocks, top_down=True, lateral=True) -> [P2, ..., P5]``:
    FPN sec. 3 with ``features`` = [C2, ..., C5] (finest first), ``inner_blocks`` the lateral 1x1 convolutions L_k
    and ``layer_blocks`` the 3x3 output convolutions O_k; ``top_down=False`` is ablation (d), ``lateral=False``
    ablation (e) (then only ``inner_blocks[-1]``, on C5, is a convolution). Equal to ``FeaturePyramidNetwork``."""
    g = torch.Generator().manual_seed(11)
    channels = (8, 16, 24, 32)

    def maps(batch, size, chans=channels):
        h, w = size
        return [torch.randn(batch, c, -(-h // 2 ** i), -(-w // 2 ** i), generator=g) for i, c in enumerate(chans)]

    def case(label, batch, size, seed, chans=channels, out=16, **switches):
        neck = _neck(chans, out, seed, **switches)
        return Case(label, (maps(batch, size, chans), neck.inner_blocks, neck.layer_blocks), dict(switches))

    cases = [
        case("one image, 32 x 32 C2", 1, (32, 32), 0),
        case("odd sizes (C4 is 3 x 6, C5 2 x 3): upsample to the lateral map's size", 2, (10, 23), 1),
        case("(d) bottom-up pyramid: top_down=False", 2, (16, 24), 2, top_down=False),
        case("(e) no lateral connections: lateral=False", 2, (16, 24), 3, lateral=False),
        case("a 100 x 152 C2 (an 400 x 608 image), 32 channels", 1, (100, 152), 4, (32, 64, 96, 128), 32),
    ]
    hints = [
        Hint("Upsample by nearest neighbour (F.interpolate(..., mode='nearest')), as the paper does 'for simplicity'.",
             when=lambda out, exp, case: _same(out, _variant(*case.args, **case.kwargs, mode="bilinear"))),
        Hint("P_k = O_k(M_k): apply the 3x3 output convolution to every merged map.",
             when=lambda out, exp, case: _same(out, _variant(*case.args, **case.kwargs, output=False))),
        Hint("Upsample the *merged* map M_{k+1} (which already carries everything coarser), not L_{k+1}(C_{k+1}).",
             when=lambda out, exp, case: _same(out, _variant(*case.args, **case.kwargs, accumulate=False))),
        Hint("F.interpolate(m, size=lateral.shape[-2:]): with odd sizes a factor of 2 does not give the lateral's size.",
             when=lambda out, exp, case: case.label.startswith("odd")),
        Hint("(d): M_k = L_k(C_k), nothing from above; (e): M_k = up(M_{k+1}), nothing from the side (only C5 has an L).",
             when=lambda out, exp, case: case.label.startswith(("(d)", "(e)"))),
    ]
    return check_function("top_down_pathway", fn, reference=_top_down_reference, cases=cases, chapter=CHAPTER,
                          hints=hints, atol=1e-4)


def _same(out, expected) -> bool:
    return isinstance(out, (list, tuple)) and len(out) == len(expected) and all(
        isinstance(a, torch.Tensor) and a.shape == b.shape and torch.allclose(a, b, atol=1e-4)
        for a, b in zip(out, expected))


# -------------------------------------------------------------------------------------------------- level mapper
def _levels_reference(boxes, k_min=2, k_max=5, canonical_scale=224, canonical_level=4):
    mapper = LevelMapper(k_min, k_max, canonical_scale=canonical_scale, canonical_level=canonical_level)
    return mapper([boxes]) + k_min


def _levels_variant(boxes, k_min=2, k_max=5, canonical_scale=224, canonical_level=4, *, eps=1e-6, rounding=torch.floor,
                    area=False, clamp=True):
    s = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    s = s if area else torch.sqrt(s)
    k = rounding(canonical_level + torch.log2(s / canonical_scale) + eps)
    return (k.clamp(k_min, k_max) if clamp else k).to(torch.int64)


def check_level_of_rois(fn):
    """``level_of_rois(boxes [R, 4], k_min=2, k_max=5, canonical_scale=224, canonical_level=4) -> int64 [R]``: the level
    k of P_k each RoI is pooled from, FPN eq. 1 ``k = floor(k0 + log2(sqrt(wh) / 224))`` clamped to
    [k_min, k_max]; equal to ``course_lib.ops.LevelMapper`` (+ k_min)."""
    g = torch.Generator().manual_seed(12)

    def squares(sides, offset=0.0):
        sides = torch.as_tensor(sides, dtype=torch.float32)
        return torch.stack([torch.full_like(sides, offset), torch.full_like(sides, offset), sides + offset,
                            sides + offset], 1)

    xy = torch.rand(400, 2, generator=g) * 600
    random = torch.cat([xy, xy + torch.rand(400, 2, generator=g) ** 2 * 700 + 1], 1)
    cases = [
        Case("224, 112 and 448 px squares (P4, P3, P5)", (squares([224.0, 112.0, 448.0]),)),
        Case("tiny and huge boxes (clamped to P2 and P5)", (squares([4.0, 30.0, 1500.0, 3000.0]),)),
        Case("exactly on a boundary (sqrt(wh) = 112 * 2^j up to float32 rounding)", (torch.tensor([
            [11.105895042419434, 297.3506164550781, 352.2110595703125, 334.12518310546875],
            [483.7873229980469, 445.26861572265625, 1098.982421875, 526.8297119140625],
            [449.8400573730469, 261.85150146484375, 513.7435913085938, 458.14727783203125],
            [351.0072326660156, 38.76176452636719, 450.9803466796875, 540.6566162109375],
            [275.7554626464844, 336.8176574707031, 884.4908447265625, 419.2442626953125]]),)),
        Case("thin boxes: 28 x 448 (sqrt(wh) = 112)", (torch.tensor([[0.0, 0, 28, 448], [0, 0, 448, 28]]),)),
        Case("no boxes", (torch.zeros(0, 4),)),
        Case("levels 3 ... 6, k0 = 5", (random[:50],), {"k_min": 3, "k_max": 6, "canonical_level": 5}),
        Case("400 random boxes", (random,)),
    ]

    def like(**kw):
        return lambda out, exp, case: isinstance(out, torch.Tensor) and out.shape == exp.shape and torch.equal(
            out.long(), _levels_variant(*case.args, **case.kwargs, **kw))

    hints = [
        Hint("floor, not round: a 200 x 200 RoI is still on P3 (k = floor(3.84)).", when=like(rounding=torch.round)),
        Hint("The scale is sqrt(w h), the side of a square of the same area -- not the area itself.", when=like(area=True)),
        Hint("Clamp k to [k_min, k_max]: there is no P1 or P6 for RoIs.", when=like(clamp=False)),
        Hint("Return the level k itself (2 ... 5 by default), not an index from 0.",
             when=lambda out, exp, case: isinstance(out, torch.Tensor) and out.shape == exp.shape
             and torch.equal(out.long() + case.kwargs.get("k_min", 2), exp)),
        Hint("In float32, sqrt(wh) of a box on a boundary can come out a hair below it: add a tiny eps (1e-6) before "
             "the floor, as torchvision's LevelMapper does, so that such an RoI is not pushed a level down.",
             when=lambda out, exp, case: case.label.startswith("exactly")),
    ]
    return check_function("level_of_rois", fn, reference=_levels_reference, cases=cases, chapter=CHAPTER, hints=hints)
