"""AnchorExplorer: the anchors at one feature-map location and how the RPN labels them.

Faster R-CNN (Ren et al., 2015), sec. 3.1.1-3.1.2: at every location of a stride-s feature map sit
k = |sizes| x |ratios| anchors centred at (x*s, y*s). An anchor is positive if its IoU with a
ground-truth box is > 0.7 (or it is that box's best anchor: the low-quality match), negative if its
IoU is < 0.3 for every box, and ignored otherwise.
"""
from __future__ import annotations

from dataclasses import dataclass

import ipywidgets as widgets
import numpy as np
import torch
from matplotlib.patches import Rectangle

from course_lib.ops import AnchorGenerator, Matcher, box_iou

from ._figure import Explorer, FigureView

__all__ = ["AnchorState", "anchors_at_location", "label_anchors", "AnchorExplorer"]

POSITIVE, NEGATIVE, IGNORED = 1, 0, -1
_COLOURS = {POSITIVE: "tab:green", NEGATIVE: "tab:red", IGNORED: "tab:gray"}
_NAMES = {POSITIVE: "positive", NEGATIVE: "negative", IGNORED: "ignored"}


def anchors_at_location(x: int, y: int, stride: int, sizes, aspect_ratios) -> torch.Tensor:
    """The k anchors (x1, y1, x2, y2) at feature-map cell (x, y), exactly as ``AnchorGenerator`` places them.

    ``AnchorGenerator.generate_anchors`` gives zero-centred, rounded anchors (torchvision's convention);
    shifting them by (x*stride, y*stride) is what its ``grid_anchors`` does for every cell at once.
    """
    if stride <= 0:
        raise ValueError(f"stride must be positive, got {stride}")
    base = AnchorGenerator().generate_anchors(list(sizes), list(aspect_ratios))
    shift = torch.tensor([x * stride, y * stride, x * stride, y * stride], dtype=base.dtype)
    return base + shift


def label_anchors(anchors: torch.Tensor, gt_boxes: torch.Tensor, fg_iou: float = 0.7, bg_iou: float = 0.3,
                  low_quality: bool = True):
    """IoU of every anchor with its best ground truth, and the RPN label: 1 positive, 0 negative, -1 ignored.

    Uses ``course_lib.ops.Matcher(fg_iou, bg_iou, allow_low_quality_matches=low_quality)``, the RPN's own
    rule. With ``low_quality`` each ground truth's best anchor *among those given* is positive too; in the
    RPN that is the best among all anchors of the image.
    """
    if not 0.0 <= bg_iou <= fg_iou <= 1.0:
        raise ValueError(f"need 0 <= bg_iou <= fg_iou <= 1, got bg_iou={bg_iou}, fg_iou={fg_iou}")
    iou = box_iou(gt_boxes, anchors)  # [G, A]
    matches = Matcher(fg_iou, bg_iou, allow_low_quality_matches=low_quality)(iou)
    labels = torch.full_like(matches, IGNORED)
    labels[matches >= 0] = POSITIVE
    labels[matches == Matcher.BELOW_LOW_THRESHOLD] = NEGATIVE
    return iou.max(dim=0).values, labels


@dataclass
class AnchorState:
    anchors: torch.Tensor  # [k, 4]
    ious: torch.Tensor  # [k]
    labels: torch.Tensor  # [k]: 1 positive, 0 negative, -1 ignored

    def counts(self) -> dict[str, int]:
        return {name: int((self.labels == value).sum()) for value, name in _NAMES.items()}


class AnchorExplorer(Explorer):
    """Anchors at one location and level, their IoU with a ground-truth box, and the RPN's labels.

    Controls: the location (cell x, y), the stride (the pyramid level: 4, 8, 16, 32, 64), the anchor
    sizes and aspect ratios, and the two RPN thresholds (0.7 / 0.3). Changing the stride keeps the
    location's position in the image (cell x, y are rescaled), so the anchors stay where they were.
    """

    def __init__(self, image=None, gt_box=(150, 170, 330, 290), *, sizes=(128, 256, 512),
                 aspect_ratios=(0.5, 1.0, 2.0), stride=16, location=None, fg_iou=0.7, bg_iou=0.3):
        if image is None:
            image = np.full((480, 640, 3), 235, dtype=np.uint8)
        image = np.asarray(image)
        if image.ndim != 3 or image.shape[-1] not in (1, 3, 4):
            raise ValueError(f"image must be an H x W x 3 array, got shape {image.shape}")
        self.image = image
        height, width = image.shape[:2]
        self.gt_box = torch.tensor(gt_box, dtype=torch.float32).reshape(1, 4)
        if location is None:  # the cell nearest the box centre
            cx, cy = (self.gt_box[0, 0] + self.gt_box[0, 2]) / 2, (self.gt_box[0, 1] + self.gt_box[0, 3]) / 2
            location = (int(round(float(cx) / stride)), int(round(float(cy) / stride)))
        style = {"description_width": "110px"}
        self.controls = {
            "stride": widgets.Dropdown(options=[4, 8, 16, 32, 64], value=stride, description="stride", style=style),
            "x": widgets.IntSlider(value=0, min=0, max=max((width - 1) // stride, 0), description="cell x", style=style),
            "y": widgets.IntSlider(value=0, min=0, max=max((height - 1) // stride, 0), description="cell y", style=style),
            "sizes": widgets.Text(value=", ".join(str(s) for s in sizes), description="sizes (px)", style=style),
            "aspect_ratios": widgets.Text(value=", ".join(str(r) for r in aspect_ratios), description="ratios h/w", style=style),
            "fg_iou": widgets.FloatSlider(value=fg_iou, min=0.0, max=1.0, step=0.05, description="positive IoU >", style=style),
            "bg_iou": widgets.FloatSlider(value=bg_iou, min=0.0, max=1.0, step=0.05, description="negative IoU <", style=style),
            "low_quality": widgets.Checkbox(value=True, description="best anchor is positive (low-quality match)",
                                            indent=False, layout=widgets.Layout(width="auto")),
        }
        self.controls["x"].value = min(location[0], self.controls["x"].max)
        self.controls["y"].value = min(location[1], self.controls["y"].max)
        self._centre = (self.controls["x"].value * stride, self.controls["y"].value * stride)  # pixels, kept across strides
        self.message = widgets.HTML()
        self.view = FigureView(figsize=(9, 4.2))
        self._observe_controls()
        self.state: AnchorState | None = None
        self._build_figure()
        self.update()
        self.widget = widgets.VBox([widgets.HBox([widgets.VBox(list(self.controls.values())[:4]),
                                                  widgets.VBox(list(self.controls.values())[4:] + [self.message])]),
                                    self.view.output])

    def _react(self, name: str):
        stride = self.controls["stride"].value
        if name == "stride":
            self._fit_sliders()
        elif name in ("x", "y"):
            self._centre = (self.controls["x"].value * stride, self.controls["y"].value * stride)
        self.update(relayout=name in ("sizes", "aspect_ratios"))

    def _fit_sliders(self):
        """New stride: the cell nearest the chosen position in the new grid, and sliders that span the image."""
        stride = self.controls["stride"].value
        height, width = self.image.shape[:2]
        x, y = self.controls["x"], self.controls["y"]
        for slider, limit, centre in ((x, width, self._centre[0]), (y, height, self._centre[1])):
            last = max((limit - 1) // stride, 0)
            slider.max = max(slider.max, last)  # widen first, so the value is never clamped on the way
            slider.value = min(int(round(centre / stride)), last)
            slider.max = last

    @staticmethod
    def _parse(text: str, name: str) -> list[float]:
        try:
            values = [float(v) for v in text.replace(";", ",").split(",") if v.strip()]
        except ValueError:
            raise ValueError(f"{name}: write numbers separated by commas, e.g. '128, 256, 512' (got {text!r})")
        if not values or any(v <= 0 for v in values):
            raise ValueError(f"{name}: need at least one positive number (got {text!r})")
        return values

    def compute(self) -> AnchorState:
        c = {k: w.value for k, w in self.controls.items()}
        sizes = [int(s) for s in self._parse(c["sizes"], "sizes")]
        ratios = self._parse(c["aspect_ratios"], "ratios")
        anchors = anchors_at_location(c["x"], c["y"], c["stride"], sizes, ratios)
        ious, labels = label_anchors(anchors, self.gt_box, c["fg_iou"], min(c["bg_iou"], c["fg_iou"]), c["low_quality"])
        return AnchorState(anchors, ious, labels)

    def update(self, relayout: bool = False):
        try:
            self.state = self.compute()
        except ValueError as error:
            self.message.value = f"<span style='color:#b00'>{error}</span>"
            return
        counts = self.state.counts()
        self.message.value = (f"{len(self.state.anchors)} anchors: <b style='color:green'>{counts['positive']} positive</b>, "
                              f"<b style='color:#b00'>{counts['negative']} negative</b>, {counts['ignored']} ignored")
        self.draw(relayout=relayout)

    def _build_figure(self):
        """The parts that never change: the axes, the image, the ground truth and the threshold lines."""
        self.ax_img, self.ax_bar = self.view.figure.subplots(1, 2, width_ratios=[1.6, 1])
        self.ax_img.imshow(self.image)
        g = self.gt_box[0].tolist()
        self.ax_img.add_patch(Rectangle((g[0], g[1]), g[2] - g[0], g[3] - g[1], fill=False, lw=3, ec="gold"))
        self._fg_line = self.ax_bar.axvline(0, color="tab:green", ls=":")
        self._bg_line = self.ax_bar.axvline(0, color="tab:red", ls=":")
        self.ax_bar.set_xlim(-0.02, 1.18)  # a bar of IoU ~0 clear of the axis line; room for the IoU after each bar
        self.ax_bar.set_xticks(np.linspace(0, 1, 6))
        self.ax_bar.set_xlabel("IoU with the ground truth")
        self._artists = []  # what the last draw added: removed by the next one

    def draw(self, relayout: bool = False):
        for artist in self._artists:
            artist.remove()
        self._artists = []
        ax_img, ax_bar = self.ax_img, self.ax_bar
        stride = self.controls["stride"].value
        cx, cy = self.controls["x"].value * stride, self.controls["y"].value * stride
        anchors, labels = self.state.anchors.tolist(), self.state.labels.tolist()
        for box, label in zip(anchors, labels):
            self._artists.append(ax_img.add_patch(Rectangle((box[0], box[1]), box[2] - box[0], box[3] - box[1],
                                                            fill=False, lw=1.5, ec=_COLOURS[label],
                                                            ls="-" if label == POSITIVE else "--")))
        self._artists += ax_img.plot([cx], [cy], "o", color="black", ms=5)
        height, width = self.image.shape[:2]
        ax_img.set_xlim(min(0, float(self.state.anchors[:, 0].min())) - 10, max(width, float(self.state.anchors[:, 2].max())) + 10)
        ax_img.set_ylim(max(height, float(self.state.anchors[:, 3].max())) + 10, min(0, float(self.state.anchors[:, 1].min())) - 10)
        ax_img.set_title(f"anchors at cell ({self.controls['x'].value}, {self.controls['y'].value}), stride {stride}",
                         fontsize=10)
        ious = self.state.ious.numpy()
        colours = [_COLOURS[int(l)] for l in labels]
        rows = np.arange(len(ious))
        # the edge keeps a bar of IoU ~0 visible (a low-quality positive can have a tiny IoU)
        bars = ax_bar.barh(rows, ious, color=colours, edgecolor=colours, linewidth=3)
        self._artists.append(bars)
        fg = self.controls["fg_iou"].value
        for row, (iou, label) in enumerate(zip(ious.tolist(), labels)):
            note = " best" if label == POSITIVE and iou <= fg else ""  # positive only by the low-quality rule
            value = f"{iou:.2f}" if iou >= 0.01 or iou == 0 else f"{iou:.3f}"
            self._artists.append(ax_bar.text(iou + 0.02, row, f"{value}{note}", va="center", fontsize=8,
                                             color=_COLOURS[label] if note else "black"))
        best = " or best" if self.controls["low_quality"].value else ""
        ax_bar.set_title(f"IoU  green: > {fg:.2f}{best}   red: < {self.controls['bg_iou'].value:.2f}", fontsize=10)
        self._fg_line.set_xdata([fg, fg])
        self._bg_line.set_xdata([self.controls["bg_iou"].value] * 2)
        ax_bar.set_yticks(rows, [f"{int(b[2]-b[0])}x{int(b[3]-b[1])}" for b in anchors])
        ax_bar.set_ylim(len(ious) - 0.5, -0.5)  # first anchor on top
        self.view.show(relayout=relayout)
