"""RoILevelExplorer: which pyramid level an RoI is pooled from.

FPN (Lin et al., CVPR 2017), eq. 1: an RoI of width w and height h (in input-image pixels) is assigned
to level  k = floor(k0 + log2(sqrt(w*h) / 224)),  clamped to the levels that exist (P2-P5); 224 is the
canonical ImageNet pre-training size and k0 = 4 the level an RoI of 224 x 224 maps to.

EFPN (Deng et al., 2021) keeps that rule (its eq. 2) and adds an extended level P2' (stride 2, built from
C2' and the Feature Texture Transfer module) for small RoIs (sec. IV-A3): "RoIs with size smaller than 112
are assigned to the pyramid level P2'" (COCO, 800 px; 56 px on Tsinghua-Tencent 100K at 1400 px).

Nothing here re-implements the rule: :func:`level_mapper` builds the ``course_lib.ops.LevelMapper`` that the
detector's ``MultiScaleRoIAlign`` builds for the same levels and options -- with ``efpn=True`` chapter 8's
``course_lib.detection.efpn.EFPNLevelMapper``, the rule EFPN's pooler is handed, imported only then (chapter 3b's
explorer loads no detector) -- and the level names come from ``course_lib.ops.poolers.level_name``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import ipywidgets as widgets
import numpy as np
import torch
from matplotlib.patches import Rectangle

from course_lib.ops import LevelMapper
from course_lib.ops.poolers import level_name

from ._figure import Explorer, FigureView

__all__ = ["RoILevel", "level_mapper", "roi_level", "RoILevelExplorer"]


@dataclass
class RoILevel:
    unclamped: float  # k0 + log2(sqrt(wh)/224) before the floor
    level: int  # the level number after every rule: 2..5 (P2..P5), or 1 for EFPN's P2'
    name: str  # "P2".."P5", or "P2'"
    stride: int  # 2 ** level
    pooled_cells: float  # how many feature-map cells the RoI spans on its level (sqrt(wh) / stride)
    small: bool  # taken by EFPN's small-object rule (sqrt(wh) < threshold)


def level_mapper(*, k0: int = 4, canonical_size: float = 224.0, k_min: int = 2, k_max: int = 5, efpn: bool = False,
                 efpn_threshold: float = 112.0) -> LevelMapper:
    """The detector's mapper for P_k_min..P_k_max (FPN eq. 1); with ``efpn`` EFPN's own rule,
    ``course_lib.detection.efpn.EFPNLevelMapper(efpn_threshold)`` (P2' below the threshold, eq. 1 over P2..P5) --
    what EFPN's ``MultiScaleRoIAlign(..., level_mapper=...)`` uses."""
    if not efpn:
        return LevelMapper(k_min, k_max, canonical_scale=canonical_size, canonical_level=k0)
    if (k_min, k_max) != (2, 5):
        raise ValueError(f"EFPN's rule is for P2', P2..P5 (k_min=2, k_max=5), got k_min={k_min}, k_max={k_max}")
    from course_lib.detection.efpn import EFPNLevelMapper  # chapter 8's rule: loaded only when asked for

    return EFPNLevelMapper(efpn_threshold, canonical_scale=canonical_size, canonical_level=k0)


def _boxes(widths, heights) -> list[torch.Tensor]:
    wh = torch.stack([torch.as_tensor(widths, dtype=torch.float64).reshape(-1),
                      torch.as_tensor(heights, dtype=torch.float64).reshape(-1)], dim=1)
    return [torch.cat([torch.zeros_like(wh), wh], dim=1)]


def roi_level(width: float, height: float, *, k0: int = 4, canonical_size: float = 224.0, k_min: int = 2,
              k_max: int = 5, efpn: bool = False, efpn_threshold: float = 112.0) -> RoILevel:
    """The level an RoI of ``width`` x ``height`` pixels is pooled from (FPN eq. 1; EFPN's P2' rule with ``efpn``),
    computed by :func:`level_mapper`, i.e. by the detector's own ``LevelMapper``."""
    if not (width > 0 and height > 0):
        raise ValueError(f"an RoI needs positive width and height, got {width} x {height}")
    mapper = level_mapper(k0=k0, canonical_size=canonical_size, k_min=k_min, k_max=k_max, efpn=efpn,
                          efpn_threshold=efpn_threshold)
    boxes = _boxes([width], [height])
    level = int(mapper.level(boxes)[0])
    scale = math.sqrt(width * height)
    stride = 2 ** level
    return RoILevel(unclamped=float(mapper.unclamped(boxes)[0]), level=level, name=level_name(level), stride=stride,
                    pooled_cells=scale / stride, small=efpn and scale < efpn_threshold)


class RoILevelExplorer(Explorer):
    """Change an RoI's width and height and watch which level (P2-P5, or EFPN's P2') it is pooled from."""

    def __init__(self, width=112, height=112, *, k0=4, canonical_size=224, efpn=False, efpn_threshold=112,
                 image_size=800):
        style = {"description_width": "120px"}
        self.image_size = image_size
        self.controls = {
            "width": widgets.IntSlider(value=width, min=4, max=image_size, description="RoI width (px)", style=style),
            "height": widgets.IntSlider(value=height, min=4, max=image_size, description="RoI height (px)", style=style),
            "k0": widgets.IntSlider(value=k0, min=2, max=6, description="k0", style=style),
            "canonical_size": widgets.IntSlider(value=canonical_size, min=32, max=512, step=16, description="canonical size", style=style),
            "efpn": widgets.Checkbox(value=efpn, description="EFPN: extended level P2'"),
            "efpn_threshold": widgets.IntSlider(value=efpn_threshold, min=16, max=256, step=8, description="P2' below (px)", style=style),
        }
        self.message = widgets.HTML()
        self.view = FigureView(figsize=(9, 3.8))
        self._observe_controls()
        self.state: RoILevel | None = None
        self.update()
        values = list(self.controls.values())
        self.widget = widgets.VBox([widgets.HBox([widgets.VBox(values[:3]), widgets.VBox(values[3:] + [self.message])]),
                                    self.view.output])

    def _kwargs(self):
        c = {k: w.value for k, w in self.controls.items()}
        return dict(k0=c["k0"], canonical_size=c["canonical_size"], efpn=c["efpn"], efpn_threshold=c["efpn_threshold"])

    def update(self):
        c = {k: w.value for k, w in self.controls.items()}
        self.controls["efpn_threshold"].disabled = not c["efpn"]  # it does nothing without P2'
        self.state = roi_level(c["width"], c["height"], **self._kwargs())
        s = self.state
        size = math.sqrt(c["width"] * c["height"])
        if s.small:
            rule = f"&lt; {c['efpn_threshold']} px (EFPN's small-object rule)"
        else:
            rule = f"&rarr; k0 + log2(sqrt(wh)/{c['canonical_size']}) = {s.unclamped:.2f}"
        self.message.value = (f"sqrt(wh) = {size:.0f} px {rule} &rarr; <b>{s.name}</b> "
                              f"(stride {s.stride}; the RoI spans {s.pooled_cells:.1f} cells, pooled to 7x7)")
        self.draw()

    def draw(self):
        fig = self.view.figure
        fig.clear()
        ax_roi, ax_curve = fig.subplots(1, 2, width_ratios=[1, 1.6])
        w, h = self.controls["width"].value, self.controls["height"].value
        n = self.image_size
        ax_roi.add_patch(Rectangle((0, 0), n, n, fc="whitesmoke", ec="black"))
        ax_roi.add_patch(Rectangle(((n - w) / 2, (n - h) / 2), w, h, fc="tab:orange", alpha=0.6))
        ax_roi.set_xlim(0, n), ax_roi.set_ylim(n, 0), ax_roi.set_aspect("equal")
        ax_roi.set_title(f"a {w}x{h} RoI in a {n}x{n} image")
        mapper = level_mapper(**self._kwargs())
        sizes = np.geomspace(4, n, 400)
        levels = mapper.level(_boxes(sizes, sizes)).numpy()  # all sizes in one call, the detector's rule
        ax_curve.step(sizes, levels, where="post", color="tab:blue")
        ax_curve.plot([math.sqrt(w * h)], [self.state.level], "o", color="tab:orange", ms=10)
        ax_curve.set_xscale("log", base=2)
        ax_curve.set_yticks(mapper.levels, [level_name(k) for k in mapper.levels])  # only the levels there are
        ax_curve.set_xlabel("sqrt(w*h) of the RoI (px)")
        ax_curve.set_title("level chosen for each RoI size")
        ax_curve.grid(alpha=0.3)
        self.view.show()
