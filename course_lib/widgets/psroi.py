"""PSRoIExplorer: move and resize an RoI over R-FCN's position-sensitive score maps, watch its k x k bin scores
and the vote change.

R-FCN (Dai et al., NeurIPS 2016), eq. 1-2: the RoI is cut into k x k bins; bin (i, j) averages, over its cells,
the score map of *part* (i, j) of each class; the class score is the mean of its k^2 bins (the vote), then a
softmax over the C + 1 classes. An RoI scores high for a class only when every part sits where its map fires:
shift the RoI by half an object and the bins read the wrong parts.

Nothing here re-implements the pooling: :func:`psroi_bins` calls ``course_lib.ops.ps_roi_pool`` (the detector's
``RFCNRoIHeads`` calls the same function) and the vote is the detector's ``position_sensitive_vote``.
"""
from __future__ import annotations

from dataclasses import dataclass

import ipywidgets as widgets
import numpy as np
import torch
from matplotlib.patches import Rectangle

from course_lib.detection.rfcn import position_sensitive_vote
from course_lib.ops import ps_roi_pool

from ._figure import Explorer, FigureView

__all__ = ["PSRoIState", "psroi_bins", "score_maps_of", "PSRoIExplorer"]


@dataclass
class PSRoIState:
    bins: torch.Tensor  # [C + 1, k, k]: bin (i, j) of each class
    votes: torch.Tensor  # [C + 1]: the mean of each class's bins
    probabilities: torch.Tensor  # [C + 1]: softmax of the votes


def psroi_bins(score_maps: torch.Tensor, roi, k: int, spatial_scale: float = 1 / 16) -> PSRoIState:
    """PSRoI pooling of one RoI ``(x1, y1, x2, y2)`` (image pixels) on one image's ``score_maps``
    ``[k^2 (C + 1), H, W]`` with the library's ``ps_roi_pool``, then the vote and the softmax."""
    if score_maps.dim() != 3 or score_maps.shape[0] % (k * k):
        raise ValueError(f"score_maps must be [k^2 (C + 1), H, W] with k = {k}; got shape {tuple(score_maps.shape)}")
    box = torch.as_tensor(roi, dtype=score_maps.dtype).reshape(1, 4)
    bins = ps_roi_pool(score_maps[None], [box], k, spatial_scale)[0]
    votes = position_sensitive_vote(bins[None])[0]
    return PSRoIState(bins=bins, votes=votes, probabilities=votes.softmax(0))


@torch.no_grad()
def score_maps_of(model, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """An R-FCN model's class score maps of one image: ``(resized image [3, H, W] in [0, 1], maps [k^2 (C+1), h, w])``,
    the RoI coordinates of the explorer being the resized image's pixels (those the detector pools in)."""
    was_training = model.training
    model.eval()
    try:
        image_list, _, _ = model.prepare([image])
        features = model.features(image_list)
        cls_maps, _ = model.roi_heads.score_maps(features[model.roi_heads.featmap_name])
    finally:
        model.train(was_training)
    h, w = image_list.image_sizes[0]
    resized = torch.nn.functional.interpolate(image[None].float(), size=(h, w), mode="bilinear", align_corners=False)[0]
    if image.dtype == torch.uint8:
        resized = resized / 255
    return resized.clamp(0, 1), cls_maps[0]


class PSRoIExplorer(Explorer):
    """Drag an RoI (sliders) over an image and see, for one class, the k x k bin scores PSRoI pooling reads and the
    vote of every class; switch k when maps of several k are given (the k ablation).

    Args:
        image: ``[3, H, W]`` (float in [0, 1] or uint8), the picture the RoI lives on.
        score_maps: ``[k^2 (C + 1), h, w]`` class maps of that image, or ``{k: maps}`` for several k.
        spatial_scale: maps' cells per image pixel (1/16 for R-FCN).
        class_names: C + 1 names, background first.
        roi: initial ``(x1, y1, x2, y2)``; class_index: initial class (1 = first object class).
    """

    def __init__(self, image: torch.Tensor, score_maps, *, spatial_scale: float = 1 / 16, class_names=None,
                 roi=None, class_index: int = 1):
        self.image = (image.float() / 255 if image.dtype == torch.uint8 else image.float()).clamp(0, 1)
        self.maps = dict(score_maps) if isinstance(score_maps, dict) else {None: score_maps}
        if None in self.maps:  # a single tensor: infer k from the channels and the class count
            maps = self.maps.pop(None)
            num = len(class_names) if class_names is not None else None
            k = int(round((maps.shape[0] / num) ** 0.5)) if num else None
            if k is None or k * k * num != maps.shape[0]:
                raise ValueError("Pass class_names (C + 1 of them) with a single score-map tensor, or {k: maps}; "
                                 f"got maps of {maps.shape[0]} channels.")
            self.maps = {k: maps}
        self.spatial_scale = spatial_scale
        first = next(iter(self.maps.values()))
        k0 = next(iter(self.maps))
        num_classes = first.shape[0] // (k0 * k0)
        self.class_names = list(class_names) if class_names is not None else ["background"] + [
            f"class {c}" for c in range(1, num_classes)]
        if len(self.class_names) != num_classes:
            raise ValueError(f"{len(self.class_names)} class names for maps of {num_classes} classes (C + 1)")
        _, height, width = self.image.shape
        x1, y1, x2, y2 = roi if roi is not None else (width // 4, height // 4, 3 * width // 4, 3 * height // 4)
        style = {"description_width": "90px"}
        self.controls = {
            "x": widgets.IntSlider(value=int((x1 + x2) / 2), min=0, max=width, description="centre x (px)", style=style),
            "y": widgets.IntSlider(value=int((y1 + y2) / 2), min=0, max=height, description="centre y (px)", style=style),
            "w": widgets.IntSlider(value=max(int(x2 - x1), 4), min=4, max=width, description="width (px)", style=style),
            "h": widgets.IntSlider(value=max(int(y2 - y1), 4), min=4, max=height, description="height (px)", style=style),
            "class_index": widgets.Dropdown(options=[(n, i) for i, n in enumerate(self.class_names)],
                                            value=min(class_index, num_classes - 1), description="class", style=style),
            "k": widgets.ToggleButtons(options=sorted(self.maps), value=k0 if len(self.maps) == 1 else sorted(self.maps)[-1],
                                       description="k", style=style),
        }
        self.message = widgets.HTML()
        self.view = FigureView(figsize=(11, 3.6))  # view.renders: one per input (the tests count them)
        self.state: PSRoIState | None = None
        self._observe_controls()
        self.update()
        values = list(self.controls.values())
        self.widget = widgets.VBox([widgets.HBox([widgets.VBox(values[:4]), widgets.VBox(values[4:] + [self.message])]),
                                    self.view.output])

    def roi(self) -> tuple[float, float, float, float]:
        c = {k: w.value for k, w in self.controls.items()}
        return (c["x"] - c["w"] / 2, c["y"] - c["h"] / 2, c["x"] + c["w"] / 2, c["y"] + c["h"] / 2)

    def update(self):
        k, c = self.controls["k"].value, self.controls["class_index"].value
        self.state = psroi_bins(self.maps[k], self.roi(), k, self.spatial_scale)
        p = self.state.probabilities
        best = int(p.argmax())
        self.message.value = (f"vote of <b>{self.class_names[c]}</b> = mean of its {k}x{k} bins = "
                              f"{float(self.state.votes[c]):.3f}; softmax p = {float(p[c]):.3f}<br>"
                              f"most likely: <b>{self.class_names[best]}</b> ({float(p[best]):.3f})")
        self.draw()

    def draw(self):
        """Render the figure as a PNG. The artists are built once per k (and the constrained layout solved
        then); an RoI or class input only moves and recolours them, and only they are drawn again, over the
        rest of the picture kept from the last full render (the image, ticks and labels: half of the text)."""
        k, c = self.controls["k"].value, self.controls["class_index"].value
        new_k = getattr(self, "_artists_k", None) != k
        if new_k:
            self._build(k)
        x1, y1, x2, y2 = self.roi()
        artists = self._artists
        artists["roi"].set_bounds(x1, y1, x2 - x1, y2 - y1)
        for t, (column, row) in enumerate(artists["grid"], start=1):  # the k x k grid on the RoI
            column.set_data([x1 + t * (x2 - x1) / k] * 2, [y1, y2])
            row.set_data([x1, x2], [y1 + t * (y2 - y1) / k] * 2)
        bins = self.state.bins[c].numpy()
        limit = float(np.abs(self.state.bins.numpy()).max()) or 1.0
        artists["bins"].set_data(bins)
        artists["bins"].set_clim(-limit, limit)
        for (i, j), text in artists["texts"].items():
            text.set_text(f"{bins[i, j]:.2f}")
        artists["bins_title"].set_text(f"bin scores of '{self.class_names[c]}'\n(bin (i, j) reads part (i, j)'s map)")
        for i, (bar, p) in enumerate(zip(artists["bars"], self.state.probabilities.tolist())):
            bar.set_width(p)
            bar.set_facecolor("tab:orange" if i == c else "tab:blue")
        self.view.show(relayout=new_k, changing=artists["changing"])  # new axes only are laid out again

    def _build(self, k: int):
        """The figure's axes and artists for k x k bins; the next draw lays them out (constrained layout) once."""
        fig = self.view.figure
        fig.clear()
        ax_image, ax_bins, ax_vote = fig.subplots(1, 3, width_ratios=[1.4, 1, 1.2])
        ax_image.imshow(self.image.permute(1, 2, 0).numpy())
        roi = ax_image.add_patch(Rectangle((0, 0), 1, 1, fill=False, ec="tab:orange", lw=2))
        grid = [(ax_image.plot([0, 0], [0, 0], color="tab:orange", lw=0.8)[0],
                 ax_image.plot([0, 0], [0, 0], color="tab:orange", lw=0.8)[0]) for _ in range(1, k)]
        ax_image.set_title(f"RoI and its {k}x{k} bins")
        ax_image.axis("off")
        bins = ax_bins.imshow(np.zeros((k, k)), cmap="RdBu_r", vmin=-1, vmax=1)
        texts = {(i, j): ax_bins.text(j, i, "", ha="center", va="center", fontsize=8 if k < 7 else 6)
                 for i in range(k) for j in range(k)} if k <= 7 else {}
        ax_bins.set_xticks(range(k)), ax_bins.set_yticks(range(k))
        ax_bins.set_xlabel("j (bin column)", fontsize=8), ax_bins.set_ylabel("i (bin row)", fontsize=8)
        bins_title = ax_bins.set_title("\n", fontsize=9)
        count = len(self.class_names)
        bars = ax_vote.barh(range(count), np.zeros(count), color="tab:blue")
        ax_vote.set_yticks(range(count), self.class_names, fontsize=8)
        ax_vote.invert_yaxis()
        ax_vote.set_xlim(0, 1)
        ax_vote.set_title("softmax of the votes")
        # what an input changes, drawn in this order over the kept background: the axes' frames go over the bin
        # image and the bars, as in a full render
        changing = [roi, *(line for pair in grid for line in pair), bins, *texts.values(), bins_title,
                    *ax_bins.spines.values(), *bars, *ax_vote.spines.values()]
        self._artists = {"roi": roi, "grid": grid, "bins": bins, "texts": texts, "bins_title": bins_title,
                         "bars": list(bars), "changing": changing}
        self._artists_k = k
