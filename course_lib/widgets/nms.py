"""NMSExplorer: greedy non-maximum suppression, step by step.

Greedy NMS (used by R-CNN, Fast and Faster R-CNN): sort the boxes by score; take the best, suppress
every remaining box whose IoU with it exceeds the threshold; repeat with the best box left.
A suppressed box is removed by the *first* kept box (in score order) that overlaps it enough, so the
whole history can be read off one IoU matrix -- no replay of the loop needed.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import ipywidgets as widgets
import numpy as np
import torch
from matplotlib.patches import Rectangle
from matplotlib.ticker import MaxNLocator

from course_lib.ops import box_iou, nms

from ._figure import Explorer, FigureView

__all__ = ["NMSState", "make_box_cluster", "nms_steps", "NMSExplorer"]


def make_box_cluster(num_objects: int = 3, boxes_per_object: int = 8, image_size=(400, 600), seed: int = 0):
    """Scored, overlapping candidate boxes around a few 'objects', like a detector's raw output."""
    g = torch.Generator().manual_seed(seed)
    height, width = image_size
    wh = torch.empty(num_objects, 2).uniform_(60, 160, generator=g)
    centre = torch.rand(num_objects, 2, generator=g) * torch.tensor([width - 160.0, height - 160.0]) + 80
    objects = torch.cat([centre - wh / 2, centre + wh / 2], dim=1)
    jitter = torch.randn(num_objects, boxes_per_object, 4, generator=g) * (wh.repeat(1, 2)[:, None] * 0.12)
    boxes = (objects[:, None] + jitter).reshape(-1, 4)
    boxes = torch.cat([boxes[:, :2], torch.maximum(boxes[:, 2:], boxes[:, :2] + 4)], dim=1)
    scores = torch.rand(len(boxes), generator=g) * 0.9 + 0.05
    return boxes, scores


@dataclass
class NMSState:
    keep: torch.Tensor  # indices of kept boxes, by decreasing score (what ``nms`` returns)
    suppressed_by: torch.Tensor  # [N]: index of the kept box that removed box i; -1 if kept or below the score threshold
    step: torch.Tensor  # [N]: the greedy step (0, 1, ...) at which box i was kept or removed; -1 if below threshold
    below_threshold: torch.Tensor  # [N] bool: dropped before NMS by the score threshold


def nms_steps(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float, score_threshold: float = 0.0) -> NMSState:
    """Which boxes greedy NMS keeps, which kept box suppressed each other box, and at which step.

    ``keep`` is ``course_lib.ops.nms`` on the boxes above ``score_threshold``; the suppressor of box i is
    the highest-scoring kept box j ranked before i with IoU(i, j) > ``iou_threshold``.
    """
    n = len(boxes)
    candidates = torch.nonzero(scores > score_threshold).flatten()
    keep = candidates[nms(boxes[candidates], scores[candidates], iou_threshold)]
    # rank of every box in the score order NMS used (a stable sort, as the kernels use)
    order = torch.sort(scores, descending=True, stable=True).indices
    rank = torch.empty(n, dtype=torch.long)
    rank[order] = torch.arange(n)
    overlaps = (box_iou(boxes, boxes[keep]) > iou_threshold) & (rank[keep][None, :] < rank[:, None])  # [N, K]
    has_suppressor = overlaps.any(dim=1)
    # keep is in score order, so the first True is the first kept box (no kept box at all: nothing suppressed)
    first = overlaps.int().argmax(dim=1) if len(keep) else torch.zeros(n, dtype=torch.long)
    suppressor = keep[first] if len(keep) else torch.full_like(first, -1)
    suppressed_by = torch.where(has_suppressor, suppressor, torch.full_like(first, -1))
    below = scores <= score_threshold
    suppressed_by[below] = -1
    step = torch.where(has_suppressor, first, torch.full_like(first, -1))
    step[keep] = torch.arange(len(keep))
    step[below] = -1
    return NMSState(keep=keep, suppressed_by=suppressed_by, step=step, below_threshold=below)


def _score_slider_range(scores: torch.Tensor) -> tuple[float, float, float, int]:
    """(min, max, step, decimals) of a score-threshold slider that is useful for these scores.

    A detector's scores need not span [0, 1] (an untrained RPN's proposals all score about 0.52): the slider
    runs from just below the lowest score (everything kept) to the highest, in 10-100 steps.
    """
    if len(scores) == 0:
        return 0.0, 1.0, 0.05, 2
    lo, hi = float(scores.min()), float(scores.max())
    width = max(hi - lo, 1e-3)
    decimals = max(2, math.ceil(-math.log10(width / 10)))
    step = 10.0 ** -decimals
    lo = math.floor(lo / step) * step - step  # strictly below the lowest score: "score > threshold" keeps all
    hi = math.ceil(hi / step) * step
    return round(max(lo, 0.0), decimals), round(hi, decimals), step, decimals


class NMSExplorer(Explorer):
    """A cluster of scored boxes; sliders for the IoU and score thresholds and for the greedy step shown.

    The score slider spans the scores given (see ``_score_slider_range``). A new threshold shows the finished
    run (the last step); the "show step" slider then replays it.
    """

    def __init__(self, boxes=None, scores=None, image=None, *, iou_threshold=0.5, score_threshold=None, seed=0):
        if boxes is None:
            boxes, scores = make_box_cluster(seed=seed)
        boxes, scores = torch.as_tensor(boxes, dtype=torch.float32), torch.as_tensor(scores, dtype=torch.float32)
        if boxes.ndim != 2 or boxes.shape[1] != 4:
            raise ValueError(f"boxes must have shape [N, 4], got {list(boxes.shape)}")
        if scores.shape != (len(boxes),):
            raise ValueError(f"scores must have shape [{len(boxes)}] to match boxes, got {list(scores.shape)}")
        self.boxes, self.scores = boxes, scores
        self.image = image
        lo, hi, step, decimals = _score_slider_range(scores)
        self._decimals = decimals
        score_threshold = lo if score_threshold is None else min(max(float(score_threshold), lo), hi)
        style = {"description_width": "110px"}
        self.controls = {
            "iou_threshold": widgets.FloatSlider(value=iou_threshold, min=0.05, max=0.95, step=0.05, description="IoU threshold", style=style),
            "score_threshold": widgets.FloatSlider(value=score_threshold, min=lo, max=hi, step=step, readout_format=f".{decimals}f",
                                                   description="score threshold", style=style),
            "step": widgets.IntSlider(value=0, min=0, max=0, description="show step", style=style),
        }
        self.message = widgets.HTML()
        self.view = FigureView(figsize=(9, 4.5))
        self._observe_controls()
        self.state: NMSState | None = None
        self._build_figure()
        with self._guard:
            self.update()
        self.message.layout = widgets.Layout(max_width="480px", margin="0 0 0 16px")
        self.widget = widgets.VBox([widgets.HBox([widgets.VBox(list(self.controls.values())), self.message]),
                                    self.view.output])

    def _react(self, name: str):
        if name == "step":
            self.draw()
        else:
            self.update()

    def update(self):
        """New thresholds: run NMS again and show its finished result (``show step`` = the last step)."""
        self.state = nms_steps(self.boxes, self.scores, self.controls["iou_threshold"].value, self.controls["score_threshold"].value)
        step = self.controls["step"]
        step.max = max(step.max, len(self.state.keep))  # widen first: the value is never clamped on the way
        step.value = len(self.state.keep)
        step.max = len(self.state.keep)
        n_below = int(self.state.below_threshold.sum())
        self.message.value = (f"{len(self.boxes)} boxes: {n_below} under the score threshold (dotted grey), "
                              f"<b>{len(self.state.keep)} kept</b> (thick), "
                              f"{len(self.boxes) - n_below - len(self.state.keep)} suppressed (dashed, in the colour "
                              f"of the kept box that removed it); black: not reached yet at this step")
        self.draw(relayout=True)

    def _build_figure(self):
        """The parts that never change: the axes, the image and one rectangle per box (restyled by ``draw``)."""
        self.ax, self.ax_steps = self.view.figure.subplots(1, 2, width_ratios=[1.5, 1])
        ax = self.ax
        if self.image is not None:
            ax.imshow(self.image)
        else:
            ax.set_xlim(float(self.boxes[:, 0].min()) - 20, float(self.boxes[:, 2].max()) + 20)
            ax.set_ylim(float(self.boxes[:, 3].max()) + 20, float(self.boxes[:, 1].min()) - 20)
            ax.set_aspect("equal")
        self._rects = [ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False))
                       for x1, y1, x2, y2 in self.boxes.tolist()]
        # each kept box's score sits just inside its top-left corner, moved into the picture when the corner is
        # outside it, and clipped to the axes: a label never covers the title or hangs beside the image
        (left, right), (bottom, top) = ax.get_xlim(), ax.get_ylim()  # y grows downwards (top < bottom)
        self._labels = [ax.text(min(max(x1, left), right), min(max(y1, top), bottom), f"{float(s):.2f}",
                                color="white", fontsize=8, visible=False, ha="left", va="top", clip_on=True,
                                bbox=dict(fc="black", lw=0, pad=1))
                        for (x1, y1, _, _), s in zip(self.boxes.tolist(), self.scores)]
        self.ax_steps.set_xlabel("greedy step (kept box, by score)")
        self.ax_steps.set_ylabel("boxes it suppressed")
        self.ax_steps.xaxis.set_major_locator(MaxNLocator(integer=True))
        self.ax_steps.yaxis.set_major_locator(MaxNLocator(integer=True))
        self._bars = None

    def draw(self, relayout: bool = False):
        ax, ax_steps = self.ax, self.ax_steps
        shown = self.controls["step"].value  # steps 0 .. shown-1 are done
        keep = self.state.keep.tolist()
        colours = [f"C{i % 10}" for i in range(len(keep))]
        kept_colour = {k: colours[i] for i, k in enumerate(keep)}
        steps, below = self.state.step.tolist(), self.state.below_threshold.tolist()
        suppressed_by = self.state.suppressed_by.tolist()
        for i, (rect, label) in enumerate(zip(self._rects, self._labels)):
            done = steps[i] < shown and steps[i] >= 0
            if below[i]:
                style = dict(ec="lightgray", ls=":", lw=1, alpha=1.0)
            elif i in kept_colour and done:
                style = dict(ec=kept_colour[i], ls="-", lw=3, alpha=1.0)
            elif done:  # already suppressed
                style = dict(ec=kept_colour[suppressed_by[i]], ls="--", lw=1, alpha=0.5)
            else:  # still waiting
                style = dict(ec="black", ls="-", lw=1, alpha=1.0)
            rect.set(edgecolor=style["ec"], linestyle=style["ls"], linewidth=style["lw"], alpha=style["alpha"])
            label.set_visible(i in kept_colour and done)
            if i in kept_colour:
                label.get_bbox_patch().set_facecolor(kept_colour[i])
        c = self.controls
        ax.set_title(f"step {shown} of {len(keep)}   (IoU > {c['iou_threshold'].value:.2f} suppresses, "
                     f"score > {c['score_threshold'].value:.{self._decimals}f})", fontsize=10)
        if self._bars is not None:
            self._bars.remove()
        counts = np.bincount(self.state.step[self.state.suppressed_by >= 0].numpy(), minlength=len(keep))
        self._bars = ax_steps.bar(np.arange(len(counts)), counts, color=[c if i < shown else "lightgray"
                                                                       for i, c in enumerate(colours)])
        ax_steps.set_xlim(-0.6, max(len(counts), 1) - 0.4)
        ax_steps.set_ylim(0, max(int(counts.max()) if len(counts) else 0, 1) * 1.1)
        ax_steps.set_title("boxes each kept box suppressed", fontsize=10)
        self.view.show(relayout=relayout)
