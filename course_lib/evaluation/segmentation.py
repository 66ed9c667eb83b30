"""Semantic segmentation metrics: the FCN paper's four (Long et al., CVPR 2015, Sec. 5).

With n_ij the number of pixels of class i predicted as class j, t_i = sum_j n_ij the
pixels of class i, and n_cl the number of classes:

* pixel accuracy          sum_i n_ii / sum_i t_i
* mean accuracy           (1/n_cl) sum_i n_ii / t_i
* mean IU                 (1/n_cl) sum_i n_ii / (t_i + sum_j n_ji - n_ii)
* frequency weighted IU   (sum_k t_k)^-1 sum_i t_i n_ii / (t_i + sum_j n_ji - n_ii)

Convention (as in the FCN authors' ``score.py``, ``np.nanmean``): a class that appears
neither in the targets nor in the predictions has an undefined IU (NaN) and is left out of
the mean; a class absent from the targets is left out of the mean accuracy.
"""
from __future__ import annotations

import itertools
import math

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from course_lib.segmentation.weight_map import unet_weight_map

from .bootstrap import bootstrap_miou

__all__ = ["ConfusionMatrix", "boundary_mask", "small_region_mask", "evaluate_segmentation", "membrane_mask",
           "separation_counts"]


class ConfusionMatrix:
    """Accumulates ``mat[i, j]`` = pixels of true class i predicted as j (``torch.bincount``)."""

    def __init__(self, num_classes: int, ignore_index: int = 255):
        self.num_classes, self.ignore_index = num_classes, ignore_index
        self.mat = torch.zeros(num_classes, num_classes, dtype=torch.int64)

    def reset(self) -> None:
        self.mat.zero_()

    @torch.no_grad()
    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """``pred``: logits [N, C, H, W] (or [C, H, W]) or labels [N, H, W] (or [H, W]);
        ``target``: labels of the same shape, ``ignore_index`` where there is no label."""
        c = self.num_classes
        if pred.dim() == target.dim() + 1:
            if pred.shape[-3] != c:
                raise ValueError(f"Logits have {pred.shape[-3]} channels but the matrix has num_classes={c}.")
            pred = pred.argmax(dim=-3)
        if pred.shape != target.shape:
            raise ValueError(f"Prediction shape {list(pred.shape)} does not match target shape {list(target.shape)}: "
                             "upsample the logits to the label size first.")
        pred, target = pred.long().flatten(), target.long().flatten().to(pred.device)
        valid = target != self.ignore_index
        pred, target = pred[valid], target[valid]
        for name, x in (("target", target), ("prediction", pred)):
            bad = (x < 0) | (x >= c)
            if bad.any():
                raise ValueError(f"{name} contains label {int(x[bad][0])}, outside 0..{c - 1} "
                                 f"(and not ignore_index={self.ignore_index}); check num_classes.")
        self.mat += torch.bincount(target * c + pred, minlength=c * c).view(c, c).cpu()

    def compute(self) -> dict:
        """The four FCN metrics plus per-class ``iou`` and ``accuracy`` (lists; NaN where undefined)."""
        n = self.mat.double()
        n_ii, t_i, p_i = n.diag(), n.sum(1), n.sum(0)
        iou = n_ii / (t_i + p_i - n_ii)  # 0/0 = NaN for classes never seen nor predicted
        acc = n_ii / t_i  # NaN for classes not in the targets
        total = t_i.sum()
        present = t_i > 0
        return {
            "pixel_accuracy": float(n_ii.sum() / total) if total else math.nan,
            "mean_accuracy": float(acc.nanmean()),
            "miou": float(iou.nanmean()),
            "frequency_weighted_iou": float((t_i[present] * iou[present]).sum() / total) if total else math.nan,
            "iou": iou.tolist(),
            "accuracy": acc.tolist(),
        }

    def plot(self, class_names=None, normalize: bool = True, ax=None):
        """Heat map of the matrix (rows: true class, normalised to 1 by default); returns the figure."""
        import matplotlib.pyplot as plt

        c = self.num_classes
        names = list(class_names) if class_names is not None else [str(i) for i in range(c)]
        m = self.mat.double()
        if normalize:
            m = m / m.sum(1, keepdim=True).clamp(min=1)
        fig, ax = plt.subplots(figsize=(1 + 0.5 * c, 1 + 0.5 * c)) if ax is None else (ax.figure, ax)
        im = ax.imshow(m.numpy(), cmap="Blues", vmin=0, vmax=1 if normalize else None)
        ax.set(xticks=range(c), yticks=range(c), xlabel="predicted", ylabel="true", title="confusion matrix")
        ax.set_xticklabels(names, rotation=45, ha="right")
        ax.set_yticklabels(names)
        if c <= 12:
            for i, j in itertools.product(range(c), range(c)):  # c^2 <= 144 labels, not pixels
                v = float(m[i, j])
                ax.text(j, i, f"{v:.2f}" if normalize else f"{int(v)}", ha="center", va="center",
                        fontsize=7, color="white" if v > 0.5 * float(m.max()) else "black")
        fig.colorbar(im, ax=ax, fraction=0.046)
        return fig


def boundary_mask(target: torch.Tensor, width: int) -> torch.Tensor:
    """True for pixels within ``width`` pixels (Chebyshev distance) of a label change.

    A max-pool and a min-pool over (2 width + 1)^2 windows disagree exactly where the window
    holds two labels. ``ignore_index`` counts as a label (in PASCAL VOC it is the outline
    of every object, so this is the band around object boundaries); the image border is not
    a boundary (pooling pads with -inf). ``target``: [H, W] or [N, H, W] labels.
    """
    if width < 0:
        raise ValueError(f"width={width}: must be >= 0 pixels.")
    x = target.float().reshape(-1, 1, *target.shape[-2:])
    k = 2 * width + 1
    highest = F.max_pool2d(x, k, stride=1, padding=width)
    lowest = -F.max_pool2d(-x, k, stride=1, padding=width)
    return (highest != lowest).reshape(target.shape)


def small_region_mask(instances: torch.Tensor, max_area: int, background: int = 0) -> torch.Tensor:
    """True for pixels of instances smaller than ``max_area`` pixels. ``instances``: [H, W]
    or [N, H, W] instance ids (``background`` = no instance), counted per image with one
    ``bincount``."""
    ids = instances.long().reshape(-1, *instances.shape[-2:])
    n = ids.shape[0]
    span = int(ids.max()) + 1 if ids.numel() else 1
    flat = ids + span * torch.arange(n, device=ids.device).view(n, 1, 1)  # distinct ids per image
    area = torch.bincount(flat.flatten(), minlength=n * span)
    return ((area[flat] < max_area) & (ids != background)).reshape(instances.shape)


def _confusion_per_image(pred: torch.Tensor, target: torch.Tensor, num_classes: int,
                         ignore_index: int) -> torch.Tensor:
    """[N, C, C] pixel counts, one ``ConfusionMatrix.mat`` per image of a batch of labels [N, H, W] (one bincount)."""
    c, n = num_classes, pred.shape[0]
    image = torch.arange(n, device=pred.device).view(n, 1, 1).expand_as(pred)
    valid = target != ignore_index
    index = (image[valid] * c + target[valid].long()) * c + pred[valid].long()
    return torch.bincount(index, minlength=n * c * c).view(n, c, c).cpu()


def _logits(output):
    return output["out"] if isinstance(output, dict) else output  # torchvision models return {"out": ...}


@torch.inference_mode()
def evaluate_segmentation(model, dataset, num_classes: int, *, device=None, batch_size: int = 1,
                          ignore_index: int = 255, boundary_width: int | None = 5,
                          small_region_area: int | None = 32 * 32, num_workers: int = 0,
                          progress: bool = True) -> dict:
    """Run ``model`` (float images [N, 3, H, W] in [0, 1] -> logits [N, C, H, W], or a dict
    with ``"out"``) over a dataset of ``(image, mask)`` or ``(image, mask, instances)`` samples.

    Returns ``ConfusionMatrix.compute()``'s metrics plus the matrix itself
    (``"confusion_matrix"``), and, to show where segmentation fails, the same metrics
    restricted to a band of ``boundary_width`` pixels around label changes
    (``"boundary_accuracy"``, ``"boundary_miou"``) and, when instances are given, to
    instances smaller than ``small_region_area`` pixels (``"small_region_accuracy"``,
    ``"small_region_miou"``). ``"miou_se"``: the mean IoU's bootstrap standard error over the images
    (``bootstrap_miou``; NaN for a single image).
    """
    device = torch.device(device if device is not None else "cuda" if torch.cuda.is_available() else "cpu")
    was_training = model.training
    model.eval().to(device)
    overall, boundary, small = (ConfusionMatrix(num_classes, ignore_index) for _ in range(3))
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers)
    seen_instances, per_image = False, []
    try:
        for sample in tqdm(loader, desc="evaluating", disable=not progress):
            images, target = sample[0], sample[1].to(device)
            images = (images.float() / 255 if images.dtype == torch.uint8 else images.float()).to(device)
            pred = _logits(model(images)).argmax(dim=1)
            overall.update(pred, target)
            per_image.append(_confusion_per_image(pred, target, num_classes, ignore_index))
            if boundary_width is not None:
                boundary.update(pred, target.masked_fill(~boundary_mask(target, boundary_width), ignore_index))
            if small_region_area is not None and len(sample) > 2:
                seen_instances = True
                inside = small_region_mask(sample[2].to(device).reshape(target.shape), small_region_area)
                small.update(pred, target.masked_fill(~inside, ignore_index))
    finally:
        model.train(was_training)
    metrics = {**overall.compute(), "confusion_matrix": overall}
    if per_image:  # the mean IoU's standard error over images: how much another validation set would move it
        metrics["miou_se"] = bootstrap_miou(torch.cat(per_image))[1]
    if boundary_width is not None:
        b = boundary.compute()
        metrics.update(boundary_accuracy=b["pixel_accuracy"], boundary_miou=b["miou"])
    if seen_instances:
        s = small.compute()
        metrics.update(small_region_accuracy=s["pixel_accuracy"], small_region_miou=s["miou"])
    return metrics


def membrane_mask(labels: torch.Tensor, instances: torch.Tensor, *, w0: float = 10.0, sigma: float = 5.0) -> torch.Tensor:
    """The membrane pixels of one image (H x W, bool): background pixels (label 0) where eq. 2's border term,
    ``w0 exp(-(d1 + d2)^2 / 2 sigma^2)`` (``unet_weight_map`` without w_c), exceeds w0 / 2 -- the narrow gaps
    between objects."""
    labels, instances = labels.cpu().long(), instances.cpu().long()
    labelled = labels[labels != 255]
    num_classes = int(labelled.max()) + 1 if labelled.numel() else 1
    border = unet_weight_map(instances, labels, w0=w0, sigma=sigma, class_weights=torch.zeros(num_classes))
    return (labels == 0) & (border > w0 / 2)


def separation_counts(pred: torch.Tensor, labels: torch.Tensor, instances: torch.Tensor, *, cell_class: int,
                      w0: float = 10.0, sigma: float = 5.0) -> tuple[int, int, int, int]:
    """How well one image's predicted labels separate touching instances of ``cell_class`` (U-Net, chapter 3):
    ``(membrane pixels predicted background, membrane pixels, instances separated, instances)``.

    Membrane pixels: ``membrane_mask``, the narrow gaps between objects. An instance is
    separated if the predicted connected component of ``cell_class`` (4-connected) that covers most of its pixels
    covers no other instance; one wrong pixel across a gap joins two. ``pred``, ``labels``, ``instances``: H x W.
    Both ratios are pooled over images, with a bootstrap SE, by ``bootstrap_ratio``."""
    if not pred.shape == labels.shape == instances.shape or pred.dim() != 2:
        raise ValueError(f"separation_counts: pred {tuple(pred.shape)}, labels {tuple(labels.shape)} and instances "
                         f"{tuple(instances.shape)} must be one H x W image each.")
    pred, labels, instances = pred.cpu().long(), labels.cpu().long(), instances.cpu().long()
    membrane = membrane_mask(labels, instances, w0=w0, sigma=sigma)
    components, n = ndimage.label((pred == cell_class).numpy())
    is_cell = labels == cell_class
    cell_ids, component = instances[is_cell], torch.from_numpy(components.astype(np.int64))[is_cell]
    span = int(instances.max()) + 1 if instances.numel() else 1
    overlap = torch.bincount(cell_ids * (n + 1) + component, minlength=span * (n + 1))
    overlap = overlap.view(-1, n + 1)[cell_ids.unique()]  # instances x components (column 0: not predicted a cell)
    majority = overlap.argmax(1)
    instances_per_component = (overlap[:, 1:] > 0).sum(0)
    separated = (majority > 0) & (instances_per_component[(majority - 1).clamp(min=0)] == 1)
    return int((pred[membrane] == 0).sum()), int(membrane.sum()), int(separated.sum()), len(overlap)
