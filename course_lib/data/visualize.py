"""Looking at samples: masks in colour, boxes on images (matplotlib only, imported when called)."""
from __future__ import annotations

import numpy as np
import torch

__all__ = ["to_numpy_image", "colorize_mask", "show_segmentation", "draw_detections", "label_colors"]

IGNORE_COLOR = (224, 224, 192)  # PASCAL VOC's "void"


def to_numpy_image(image) -> np.ndarray:
    """``[3, H, W]`` tensor or ``[H, W, 3]`` array (uint8, or float in 0..1) -> ``uint8 [H, W, 3]``."""
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu()
        if image.ndim == 3 and image.shape[0] in (1, 3):
            image = image.permute(1, 2, 0)
        image = image.numpy()
    image = np.asarray(image)
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] not in (1, 3):
        raise ValueError(f"expected an image [3, H, W] or [H, W, 3], got shape {image.shape}")
    if image.shape[2] == 1:
        image = np.repeat(image, 3, axis=2)
    if image.dtype != np.uint8:
        image = np.clip(np.rint(image.astype(np.float64) * 255), 0, 255).astype(np.uint8)
    return image


def label_colors(num: int) -> np.ndarray:
    """``num`` distinct colours, ``uint8 [num, 3]`` (matplotlib's tab20, cycled)."""
    import matplotlib

    table = matplotlib.colormaps["tab20"](np.arange(num) % 20)[:, :3]
    return (table * 255).round().astype(np.uint8)


def colorize_mask(mask, colors, ignore_index: int = 255, ignore_color=IGNORE_COLOR) -> np.ndarray:
    """Class-id mask ``[H, W]`` -> ``uint8 [H, W, 3]`` by a lookup table: ``colors[id]``, and
    ``ignore_color`` at ``ignore_index``. An id without a colour is an error."""
    mask = mask.detach().cpu().numpy() if isinstance(mask, torch.Tensor) else np.asarray(mask)
    colors = np.asarray(colors, dtype=np.uint8).reshape(-1, 3)
    lut = np.zeros((max(256, int(mask.max(initial=0)) + 1), 3), np.uint8)
    lut[: len(colors)] = colors
    lut[ignore_index] = ignore_color
    bad = (mask < 0) | ((mask >= len(colors)) & (mask != ignore_index))
    if bad.any():
        raise ValueError(f"mask values {np.unique(mask[bad])[:10].tolist()} have no colour ({len(colors)} colours given)")
    return lut[mask]


def show_segmentation(image=None, mask=None, class_names=None, colors=None, ax=None, alpha: float = 0.55,
                      ignore_index: int = 255, legend: bool = True, title: str | None = None):
    """Show ``mask`` in colour, blended over ``image`` when given. Returns the axes."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    if mask is None:
        raise ValueError("show_segmentation needs a mask")
    num = len(class_names) if class_names is not None else int(np.asarray(mask)[np.asarray(mask) != ignore_index].max(initial=0)) + 1
    colors = label_colors(num) if colors is None else np.asarray(colors, np.uint8)
    overlay = colorize_mask(mask, colors, ignore_index).astype(np.float32)
    if image is not None:
        base = to_numpy_image(image).astype(np.float32)
        shown = (1 - alpha) * base + alpha * overlay
        background = np.asarray(mask.cpu() if isinstance(mask, torch.Tensor) else mask) == 0
        shown[background] = base[background]  # keep the background's own pixels
        overlay = shown
    ax = ax or plt.gca()
    ax.imshow(overlay.astype(np.uint8))
    ax.set_axis_off()
    if title:
        ax.set_title(title)
    if legend and class_names is not None:
        present = set(np.unique(np.asarray(mask.cpu() if isinstance(mask, torch.Tensor) else mask)).tolist())
        handles = [Patch(color=np.asarray(colors[i]) / 255, label=name) for i, name in enumerate(class_names) if i in present]
        if ignore_index in present:
            handles.append(Patch(color=np.asarray(IGNORE_COLOR) / 255, label="ignore"))
        ax.legend(handles=handles, loc="upper right", fontsize="x-small", framealpha=0.7)
    return ax


def draw_detections(image, boxes, labels=None, scores=None, class_names=None, ax=None,
                    score_threshold: float = 0.0, linewidth: float = 1.5, title: str | None = None):
    """Draw XYXY ``boxes`` (with class names and scores when given) on ``image``. Returns the axes."""
    import matplotlib.pyplot as plt
    from matplotlib.collections import PatchCollection
    from matplotlib.patches import Rectangle

    ax = ax or plt.gca()
    ax.imshow(to_numpy_image(image))
    ax.set_axis_off()
    if title:
        ax.set_title(title)
    boxes = torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4).cpu().numpy()
    n = len(boxes)
    labels = np.zeros(n, np.int64) if labels is None else torch.as_tensor(labels).reshape(-1).cpu().numpy()
    keep = np.ones(n, bool)
    if scores is not None:
        scores = torch.as_tensor(scores, dtype=torch.float32).reshape(-1).cpu().numpy()
        keep = scores >= score_threshold
    num_colors = max(len(class_names) if class_names is not None else 0, int(labels.max(initial=0)) + 1)
    colors = label_colors(num_colors) / 255
    rects = [Rectangle((x0, y0), x1 - x0, y1 - y0) for x0, y0, x1, y1 in boxes[keep]]
    ax.add_collection(PatchCollection(rects, facecolor="none", edgecolor=colors[labels[keep]], linewidth=linewidth))
    for i in np.flatnonzero(keep):  # text needs one artist per box
        text = class_names[labels[i]] if class_names is not None else (str(labels[i]) if labels.any() else "")
        if scores is not None:
            text = f"{text} {scores[i]:.2f}".strip()
        if text:
            ax.text(boxes[i, 0], boxes[i, 1], text, fontsize=6, color="white", va="bottom",
                    bbox=dict(facecolor=colors[labels[i]], alpha=0.8, pad=0.5, edgecolor="none"))
    return ax
