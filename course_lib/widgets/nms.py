"""NMSExplorer: greedy non-maximum suppression, step by step.

Greedy NMS (used by R-CNN, Fast and Faster R-CNN): sort the boxes by score; take the best, suppress
every remaining box whose IoU with it exceeds the threshold; repeat with the best box left.
A suppressed box is removed by the *first* kept box (in score order) that overlaps it enough, so the
whole history can be read off one IoU matrix -- no replay of the loop needed.
"""
from __future__ import annotations

from dataclasses import dataclass

import ipywidgets as widgets
import numpy as np
import torch
from matplotlib.patches import Rectangle

from course_lib.ops import box_iou, nms

from ._figure import FigureView

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
    first = overlaps.int().argmax(dim=1)  # keep is in score order, so the first True is the first kept box
    suppressed_by = torch.where(has_suppressor, keep[first], torch.full_like(first, -1))
    below = scores <= score_threshold
    suppressed_by[below] = -1
    step = torch.where(has_suppressor, first, torch.full_like(first, -1))
    step[keep] = torch.arange(len(keep))
    step[below] = -1
    return NMSState(keep=keep, suppressed_by=suppressed_by, step=step, below_threshold=below)


class NMSExplorer:
    """A cluster of scored boxes; sliders for the IoU and score thresholds and for the greedy step shown."""

    def __init__(self, boxes=None, scores=None, image=None, *, iou_threshold=0.5, score_threshold=0.05, seed=0):
        if boxes is None:
            boxes, scores = make_box_cluster(seed=seed)
        boxes, scores = torch.as_tensor(boxes, dtype=torch.float32), torch.as_tensor(scores, dtype=torch.float32)
        if boxes.ndim != 2 or boxes.shape[1] != 4:
            raise ValueError(f"boxes must have shape [N, 4], got {list(boxes.shape)}")
        if scores.shape != (len(boxes),):
            raise ValueError(f"scores must have shape [{len(boxes)}] to match boxes, got {list(scores.shape)}")
        self.boxes, self.scores = boxes, scores
        self.image = image
        style = {"description_width": "110px"}
        self.controls = {
            "iou_threshold": widgets.FloatSlider(value=iou_threshold, min=0.05, max=0.95, step=0.05, description="IoU threshold", style=style),
            "score_threshold": widgets.FloatSlider(value=score_threshold, min=0.0, max=0.95, step=0.05, description="score threshold", style=style),
            "step": widgets.IntSlider(value=0, min=0, max=0, description="show step", style=style),
        }
        self.message = widgets.HTML()
        self.view = FigureView(figsize=(9, 4.5))
        for control in self.controls.values():
            control.observe(lambda change: self.update(), names="value")
        self.state: NMSState | None = None
        self.update()
        self.controls["step"].value = self.controls["step"].max  # start with the finished result
        self.widget = widgets.VBox([widgets.HBox(list(self.controls.values())), self.message, self.view.output])

    def _ipython_display_(self):
        from IPython.display import display

        display(self.widget)

    def update(self):
        self.state = nms_steps(self.boxes, self.scores, self.controls["iou_threshold"].value, self.controls["score_threshold"].value)
        self.controls["step"].max = max(len(self.state.keep), 1)
        n_below = int(self.state.below_threshold.sum())
        self.message.value = (f"{len(self.boxes)} boxes: {n_below} under the score threshold, "
                              f"<b>{len(self.state.keep)} kept</b>, "
                              f"{len(self.boxes) - n_below - len(self.state.keep)} suppressed")
        self.draw()

    def draw(self):
        fig = self.view.figure
        fig.clear()
        ax, ax_steps = fig.subplots(1, 2, width_ratios=[1.5, 1])
        if self.image is not None:
            ax.imshow(self.image)
        shown = self.controls["step"].value  # steps 0 .. shown-1 are done
        colours = [f"C{i % 10}" for i in range(len(self.state.keep))]
        kept_colour = {int(k): colours[i] for i, k in enumerate(self.state.keep)}
        for i, box in enumerate(self.boxes.tolist()):
            step = int(self.state.step[i])
            x1, y1, x2, y2 = box
            if self.state.below_threshold[i]:
                style = dict(ec="lightgray", ls=":", lw=1)
            elif int(i) in kept_colour and step < shown:
                style = dict(ec=kept_colour[i], lw=3)
            elif step < shown:  # already suppressed
                style = dict(ec=kept_colour[int(self.state.suppressed_by[i])], ls="--", lw=1, alpha=0.5)
            else:  # still waiting
                style = dict(ec="black", lw=1)
            ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, **style))
            if int(i) in kept_colour and step < shown:
                ax.text(x1, y1, f"{self.scores[i]:.2f}", color="white", fontsize=8, bbox=dict(fc=kept_colour[i], lw=0, pad=1))
        if self.image is None:
            ax.set_xlim(float(self.boxes[:, 0].min()) - 20, float(self.boxes[:, 2].max()) + 20)
            ax.set_ylim(float(self.boxes[:, 3].max()) + 20, float(self.boxes[:, 1].min()) - 20)
            ax.set_aspect("equal")
        ax.set_title(f"after {shown} greedy step(s): thick = kept, dashed = suppressed, black = waiting")
        counts = np.bincount(self.state.step[self.state.suppressed_by >= 0].numpy(), minlength=len(self.state.keep))
        ax_steps.bar(np.arange(len(counts)), counts, color=colours)
        ax_steps.set_xlabel("greedy step (kept box, by score)")
        ax_steps.set_ylabel("boxes it suppressed")
        ax_steps.set_title("the order in which suppression happened")
        self.view.show()
