"""U-Net's pixel-wise loss weights (Ronneberger et al., MICCAI 2015, Sec. 3, eq. 1-2).

"To force the network to learn the small separation borders that we introduce between touching
cells", the cross-entropy of each pixel x is weighted by

    w(x) = w_c(x) + w0 * exp(-(d1(x) + d2(x))^2 / (2 sigma^2))                       (eq. 2)

where w_c balances the class frequencies, d1 is the distance to the border of the nearest cell and
d2 to the border of the second nearest; the paper uses w0 = 10 and sigma ~ 5 pixels. The border
term is added on background pixels (the gaps between cells, Fig. 3d).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from torch import Tensor

__all__ = ["class_balance_weights", "unet_weight_map", "touching_borders", "weighted_cross_entropy"]


def _as_numpy(mask) -> np.ndarray:
    if isinstance(mask, Tensor):
        mask = mask.detach().cpu().numpy()
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"expected one H x W mask, got shape {mask.shape}")
    if not np.issubdtype(mask.dtype, np.integer) and mask.dtype != bool:
        raise TypeError(f"expected an integer mask (labels or instance ids), got {mask.dtype}")
    return mask.astype(np.int64)


def class_balance_weights(labels, num_classes: int | None = None, ignore_index: int = 255) -> Tensor:
    """w_c per class: ``n_pixels / (n_present_classes * n_pixels_of_class)``, so that every class present
    weighs as much in total and the mean weight over the labelled pixels is 1; absent classes get 0."""
    labels = _as_numpy(labels)
    valid = labels[labels != ignore_index]
    num_classes = num_classes or (int(valid.max()) + 1 if valid.size else 1)
    counts = np.bincount(valid, minlength=num_classes).astype(np.float64)
    present = counts > 0
    weights = np.zeros(num_classes)
    weights[present] = valid.size / (present.sum() * counts[present])
    return torch.from_numpy(weights).float()


def unet_weight_map(
    instances,
    labels=None,
    *,
    w0: float = 10.0,
    sigma: float = 5.0,
    class_weights: Tensor | None = None,
    ignore_index: int = 255,
) -> Tensor:
    """The weight map w(x) of eq. 2 for one image, as an ``H x W`` float tensor.

    Args:
        instances: ``H x W`` instance ids, 0 = background (each cell its own id).
        labels: ``H x W`` class labels (0 = background, ``ignore_index`` = not labelled); default:
            foreground where ``instances > 0``.
        w0, sigma: the paper's 10 and 5 pixels.
        class_weights: w_c per class; default :func:`class_balance_weights` of ``labels``.

    d1, d2 come from one Euclidean distance transform per instance (``scipy.ndimage``), reduced with
    a partial sort over the instance axis; with fewer than two instances the border term is 0.
    """
    instances = _as_numpy(instances)
    labels = (instances > 0).astype(np.int64) if labels is None else _as_numpy(labels)
    if labels.shape != instances.shape:
        raise ValueError(f"labels {labels.shape} and instances {instances.shape} must have the same shape")
    if class_weights is None:
        class_weights = class_balance_weights(labels, ignore_index=ignore_index)
    class_weights = torch.as_tensor(class_weights, dtype=torch.float32)

    valid = labels != ignore_index
    classes = np.where(valid, labels, 0)
    if classes.max(initial=0) >= len(class_weights):
        raise ValueError(f"label {classes.max()} has no class weight (got {len(class_weights)} weights)")
    w = class_weights.numpy()[classes].astype(np.float64)

    ids = np.unique(instances)
    ids = ids[ids > 0]
    if len(ids) >= 2:
        # distance of every pixel to each instance (0 inside it), stacked: (n_instances, H, W)
        dist = np.stack([ndimage.distance_transform_edt(instances != i) for i in ids])
        d1, d2 = np.partition(dist, 1, axis=0)[:2]
        border = w0 * np.exp(-((d1 + d2) ** 2) / (2 * sigma**2))
        w += np.where(instances == 0, border, 0.0)
    w[~valid] = 0.0
    return torch.from_numpy(w).float()


def touching_borders(instances) -> Tensor:
    """Pixels of an instance that touch a *different* instance (4-neighbourhood), as a bool mask.

    Setting them to background gives the thin "separation borders" between touching cells that the
    paper's ground truth has (Fig. 3c), which eq. 2 then weights up.
    """
    inst = torch.as_tensor(_as_numpy(instances))
    border = torch.zeros_like(inst, dtype=torch.bool)
    for dim in (0, 1):  # neighbours below and to the right; the pair marks both pixels
        a, b = inst.narrow(dim, 0, inst.shape[dim] - 1), inst.narrow(dim, 1, inst.shape[dim] - 1)
        touch = (a > 0) & (b > 0) & (a != b)
        border.narrow(dim, 0, inst.shape[dim] - 1).logical_or_(touch)
        border.narrow(dim, 1, inst.shape[dim] - 1).logical_or_(touch)
    return border


def weighted_cross_entropy(logits: Tensor, target: Tensor, weight_map: Tensor, ignore_index: int = 255) -> Tensor:
    """Eq. 1: ``sum_x w(x) * -log p_{l(x)}(x)``, averaged over the labelled pixels.

    ``logits`` ``N x K x H x W``; ``target`` ``N x H x W`` (``ignore_index`` = not labelled);
    ``weight_map`` ``N x H x W``. For a *valid* U-Net, crop target and weights to the output first.
    """
    if target.shape != weight_map.shape or logits.shape[-2:] != target.shape[-2:]:
        raise ValueError(
            f"logits {tuple(logits.shape)}, target {tuple(target.shape)} and weight_map "
            f"{tuple(weight_map.shape)} must cover the same pixels (crop the target to the output)"
        )
    ce = F.cross_entropy(logits, target, ignore_index=ignore_index, reduction="none")
    labelled = (target != ignore_index).sum().clamp(min=1)
    return (weight_map * ce).sum() / labelled
