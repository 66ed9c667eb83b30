"""RoILevelExplorer: which pyramid level an RoI is pooled from.

FPN (Lin et al., CVPR 2017), eq. 1: an RoI of width w and height h (in input-image pixels) is assigned
to level  k = floor(k0 + log2(sqrt(w*h) / 224)),  clamped to the levels that exist (P2-P5); 224 is the
canonical ImageNet pre-training size and k0 = 4 the level an RoI of 224 x 224 maps to.

EFPN (Deng et al., 2021), eq. 2 keeps that rule and adds an extended level P2' (stride 2, built from
C2' and the Feature Texture Transfer module) for small RoIs: "RoIs with size smaller than 112 are
assigned to the pyramid level P2'" (COCO, 800 px; 56 px on Tsinghua-Tencent 100K at 1400 px).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import ipywidgets as widgets
import numpy as np
import torch
from matplotlib.patches import Rectangle

from course_lib.ops import LevelMapper

from ._figure import FigureView

__all__ = ["RoILevel", "roi_level", "RoILevelExplorer"]

STRIDES = {"P2'": 2, "P2": 4, "P3": 8, "P4": 16, "P5": 32}


@dataclass
class RoILevel:
    unclamped: float  # k0 + log2(sqrt(wh)/224) before the floor
    level: int  # FPN level after floor and clamp (2..5)
    name: str  # "P2".."P5", or "P2'" when EFPN takes the RoI
    stride: int
    pooled_cells: float  # how many feature-map cells the RoI spans on its level (sqrt(wh) / stride)


def roi_level(width: float, height: float, *, k0: int = 4, canonical_size: float = 224.0, k_min: int = 2,
              k_max: int = 5, efpn: bool = False, efpn_threshold: float = 112.0) -> RoILevel:
    """The level an RoI of ``width`` x ``height`` pixels is pooled from (FPN eq. 1; EFPN eq. 2 with P2').

    The FPN part is ``course_lib.ops.LevelMapper`` itself, so this is the rule the detectors use.
    """
    if width <= 0 or height <= 0:
        raise ValueError(f"an RoI needs positive width and height, got {width} x {height}")
    box = torch.tensor([[0.0, 0.0, float(width), float(height)]], dtype=torch.float64)
    mapper = LevelMapper(k_min, k_max, canonical_scale=canonical_size, canonical_level=k0)
    level = int(mapper([box])[0]) + k_min
    scale = math.sqrt(width * height)
    name = "P2'" if efpn and scale < efpn_threshold else f"P{level}"
    stride = STRIDES.get(name, 2 ** level)
    return RoILevel(unclamped=k0 + math.log2(scale / canonical_size), level=level, name=name, stride=stride,
                    pooled_cells=scale / stride)


class RoILevelExplorer:
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
        for control in self.controls.values():
            control.observe(lambda change: self.update(), names="value")
        self.state: RoILevel | None = None
        self.update()
        values = list(self.controls.values())
        self.widget = widgets.VBox([widgets.HBox([widgets.VBox(values[:3]), widgets.VBox(values[3:] + [self.message])]),
                                    self.view.output])

    def _ipython_display_(self):
        from IPython.display import display

        display(self.widget)

    def _kwargs(self):
        c = {k: w.value for k, w in self.controls.items()}
        return dict(k0=c["k0"], canonical_size=c["canonical_size"], efpn=c["efpn"], efpn_threshold=c["efpn_threshold"])

    def update(self):
        c = {k: w.value for k, w in self.controls.items()}
        self.state = roi_level(c["width"], c["height"], **self._kwargs())
        s = self.state
        self.message.value = (f"sqrt(wh) = {math.sqrt(c['width'] * c['height']):.0f} px &rarr; "
                              f"k0 + log2(sqrt(wh)/{c['canonical_size']}) = {s.unclamped:.2f} &rarr; <b>{s.name}</b> "
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
        sizes = np.geomspace(4, n, 400)
        names = [roi_level(s, s, **self._kwargs()).name for s in sizes]
        order = ["P2'", "P2", "P3", "P4", "P5"]
        ax_curve.step(sizes, [order.index(name) for name in names], where="post", color="tab:blue")
        current = order.index(self.state.name)
        ax_curve.plot([math.sqrt(w * h)], [current], "o", color="tab:orange", ms=10)
        ax_curve.set_xscale("log", base=2)
        ax_curve.set_yticks(range(len(order)), order)
        ax_curve.set_xlabel("sqrt(w*h) of the RoI (px)")
        ax_curve.set_title("level chosen for each RoI size")
        ax_curve.grid(alpha=0.3)
        self.view.show()
