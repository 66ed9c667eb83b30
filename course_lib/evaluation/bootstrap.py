"""How much a COCO AP would move on another validation set of the same size: its bootstrap standard error.

An AP measured on a few dozen images is itself a noisy number. The bootstrap estimates that noise from the images
we have: draw as many images as the set holds, with replacement, recompute the AP, repeat ``resamples`` times; the
standard deviation of those APs is the standard error (SE) of the AP over images. A difference between two detectors
smaller than about twice it could be the luck of which images were drawn.

How it is computed (cheaply): pycocotools matches detections to ground truth image by image (``COCOeval.evaluate``,
the expensive part) and only then pools the images into precision/recall curves (``accumulate``). A resample changes
only the pooling -- an image drawn k times counts k times -- so the matching runs once and each resample re-pools
the per-image results ``evalImgs`` with per-image weights, all resamples at once as [resamples, detections] arrays.
This gives the same numbers as calling pycocotools on every resampled set (``tests/evaluation/test_bootstrap.py``
checks it against that brute force), as long as no two detections of one image share a score (COCO itself orders
such ties arbitrarily). The other way, remapping image ids and re-running pycocotools per resample, repeats the
matching ``resamples`` times and costs ~100x more.
"""
from __future__ import annotations

import math
import warnings

import numpy as np
from pycocotools.cocoeval import COCOeval

from .detection import _as_coco, _quiet, _results_array

__all__ = ["BOOTSTRAP_METRICS", "resample_counts", "bootstrap_ap_samples", "bootstrap_ap", "bootstrap_ap_difference",
           "bootstrap_ratio", "bootstrap_miou"]

# metric -> (index of COCO's area range: 0 all, 1 small; IoU thresholds used: all ten or 0.5 only)
BOOTSTRAP_METRICS = {"AP": (0, slice(None)), "AP50": (0, slice(0, 1)), "APs": (1, slice(None))}


def resample_counts(num_images: int, resamples: int = 200, seed: int = 0) -> np.ndarray:
    """[resamples, num_images] ints: how often each image is drawn in each resample (each row sums to num_images)."""
    if num_images < 1 or resamples < 2:
        raise ValueError(f"resample_counts(num_images={num_images}, resamples={resamples}): need at least one image "
                         "and two resamples (a standard deviation needs two values); 200 is the usual choice.")
    draws = np.random.default_rng(seed).integers(0, num_images, size=(resamples, num_images))
    counts = np.zeros((resamples, num_images), dtype=np.int64)
    np.add.at(counts, (np.arange(resamples)[:, None], draws), 1)
    return counts


def _matched_per_image(coco_gt, detections, label_to_cat_id=None, img_ids=None) -> COCOeval:
    """``COCOeval`` after ``evaluate()``: the per-image matching, done once, as ``coco_evaluate`` sets it up."""
    coco = _as_coco(coco_gt)
    with _quiet(False):
        evaluator = COCOeval(coco, coco.loadRes(_results_array(coco, detections, label_to_cat_id)), "bbox")
        if img_ids is not None:
            evaluator.params.imgIds = sorted(int(i) for i in img_ids)
        evaluator.evaluate()
    return evaluator


def _pooled_precision(entries, image_index, counts, iou_rows, rec_thrs) -> np.ndarray:
    """COCO's interpolated precision [resamples, IoUs, recall thresholds] of one category and area range, the
    images weighted by ``counts``; NaN where a resample holds no (non-ignored) ground truth."""
    scores = np.concatenate([e["dtScores"] for e in entries])
    order = np.argsort(-scores, kind="mergesort")  # pycocotools' order
    weights = counts[:, np.repeat(image_index, [len(e["dtScores"]) for e in entries])[order]]  # [B, D]
    matched = np.concatenate([e["dtMatches"] for e in entries], axis=1)[:, order] > 0  # [T, D]
    ignored = np.concatenate([e["dtIgnore"] for e in entries], axis=1)[:, order] > 0
    num_gt = counts[:, image_index] @ np.array([np.count_nonzero(e["gtIgnore"] == 0) for e in entries])  # [B]
    precision = np.stack([_interpolated(weights, matched[t], ignored[t], num_gt, rec_thrs) for t in iou_rows], 1)
    precision[num_gt == 0] = np.nan
    return precision


def _interpolated(weights, matched, ignored, num_gt, rec_thrs) -> np.ndarray:
    """pycocotools' accumulate for one IoU threshold, every resample (row of ``weights``) at once: [B, R]."""
    B, D = weights.shape
    if D == 0:
        return np.zeros((B, len(rec_thrs)))
    tp = np.cumsum(weights * (matched & ~ignored), axis=1).astype(float)
    fp = np.cumsum(weights * (~matched & ~ignored), axis=1).astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = np.nan_to_num(tp / num_gt[:, None])
    pr = tp / (fp + tp + np.spacing(1))
    pr = np.maximum.accumulate(pr[:, ::-1], axis=1)[:, ::-1]  # the precision envelope
    # np.searchsorted(recall[b], rec_thrs, side="left") for every row b at once: the first point whose recall reaches
    # a threshold = how many points stay below it. A point with `below` thresholds <= its recall stays below every
    # threshold from index `below` on, so a cumulative histogram of `below` counts them (exact: no float offsets).
    R = len(rec_thrs)
    below = np.searchsorted(rec_thrs, recall, side="right")  # [B, D] in 0..R
    hist = np.bincount((below + np.arange(B)[:, None] * (R + 1)).ravel(), minlength=B * (R + 1)).reshape(B, R + 1)
    first = np.cumsum(hist, axis=1)[:, :R]
    return np.where(first < D, np.take_along_axis(pr, np.minimum(first, D - 1), axis=1), 0.0)


def bootstrap_ap_samples(coco_gt, detections, counts: np.ndarray, *, label_to_cat_id=None,
                         img_ids=None) -> dict[str, np.ndarray]:
    """AP, AP50 and APs (COCO's, at 100 detections per image) of each resample: ``counts`` [B, I] weights the
    evaluated images in the order of their sorted ids (``img_ids``, default every annotated image). A row of ones
    gives ``coco_evaluate``'s numbers. NaN where a resample has no ground truth of that size."""
    evaluator = _matched_per_image(coco_gt, detections, label_to_cat_id, img_ids)
    p = evaluator.params
    K, A, I = len(p.catIds), len(p.areaRng), len(p.imgIds)
    counts = np.asarray(counts)
    if counts.ndim != 2 or counts.shape[1] != I:
        raise ValueError(f"counts has shape {counts.shape}; expected [resamples, {I}]: one column per evaluated image "
                         "(resample_counts(num_images) makes it).")
    per_image = np.array(evaluator.evalImgs, dtype=object).reshape(K, A, I)
    out = {}
    for name, (area, ious) in BOOTSTRAP_METRICS.items():
        iou_rows = np.arange(len(p.iouThrs))[ious]
        precision = np.full((len(counts), len(iou_rows), len(p.recThrs), K), np.nan)  # pycocotools' [T, R, K] layout
        for k in range(K):
            present = np.flatnonzero(per_image[k, area] != None)  # noqa: E711 (elementwise on an object array)
            if len(present):
                precision[..., k] = _pooled_precision(per_image[k, area, present], present, counts, iou_rows,
                                                      p.recThrs)
        valid = ~np.isnan(precision)
        with np.errstate(invalid="ignore"):
            out[name] = np.nansum(precision, axis=(1, 2, 3)) / valid.sum(axis=(1, 2, 3))
    return out


def bootstrap_ap(coco_gt, detections, *, resamples: int = 200, seed: int = 0, label_to_cat_id=None,
                 img_ids=None) -> dict[str, float]:
    """COCO AP, AP50, APs and their bootstrap standard errors over images, as ``{"AP": .., "AP_se": .., ...}``.

    ``detections`` and ``label_to_cat_id`` as for ``coco_evaluate``; ``img_ids`` the evaluated images (default every
    annotated image; ``evaluate_detector`` evaluates the images it saw). The SE is the standard deviation over
    ``resamples`` seeded resamples of the images (NaN for APs when the set has no small objects).
    """
    if sum(len(d["boxes"]) for d in detections) == 0:  # COCO gives 0 without detections; so does every resample
        return {key: v for name in BOOTSTRAP_METRICS for key, v in ((name, 0.0), (f"{name}_se", 0.0))}
    return _summary(_resampled(coco_gt, detections, resamples, seed, label_to_cat_id, img_ids))


def _summary(samples: dict[str, np.ndarray]) -> dict[str, float]:
    """Row 0 (the images themselves) as the value, the spread of the resampled rows as its SE (NaN with the value)."""
    out = {}
    for name, values in samples.items():
        point = float(values[0])
        out[name] = point
        out[f"{name}_se"] = math.nan if math.isnan(point) else _spread(values[1:])
    return out


def _resampled(coco_gt, detections, resamples, seed, label_to_cat_id, img_ids) -> dict[str, np.ndarray]:
    """``bootstrap_ap_samples`` on the images themselves (row 0) and ``resamples`` seeded resamples of them; a
    detector without detections scores 0 on every row, as ``coco_evaluate`` scores it."""
    ids = img_ids if img_ids is not None else _as_coco(coco_gt).getImgIds()
    num_images = len(set(int(i) for i in ids))
    counts = np.vstack([np.ones(num_images, dtype=np.int64), resample_counts(num_images, resamples, seed)])
    if sum(len(d["boxes"]) for d in detections) == 0:  # nothing to match: 0 on every row
        return {name: np.zeros(len(counts)) for name in BOOTSTRAP_METRICS}
    return bootstrap_ap_samples(coco_gt, detections, counts, label_to_cat_id=label_to_cat_id, img_ids=img_ids)


def bootstrap_ap_difference(coco_gt, a, b, *, resamples: int = 200, seed: int = 0, label_to_cat_id=None,
                            img_ids=None) -> dict[str, float]:
    """Two detectors' detections ``a`` and ``b`` on the same images: the difference of their COCO AP, AP50 and APs
    (``a - b``) and its *paired* bootstrap standard error, as ``{"AP": .., "AP_se": .., ...}``.

    Both are scored on the same resamples of the images and each resample's difference is kept, so what the two
    detectors share -- an image both find hard, an object both miss -- cancels: the SE of the difference is usually
    well under ``sqrt(SE_a^2 + SE_b^2)``, the SE it would have if the two were scored on independent images.
    ``img_ids`` as for ``bootstrap_ap`` (default every annotated image); a detector without a detection counts as AP 0
    on every resample, as ``coco_evaluate`` scores it.
    """
    sa, sb = (_resampled(coco_gt, d, resamples, seed, label_to_cat_id, img_ids) for d in (a, b))
    return _summary({name: sa[name] - sb[name] for name in BOOTSTRAP_METRICS})


def bootstrap_ratio(numerators, denominators, *, resamples: int = 200, seed: int = 0) -> tuple[float, float]:
    """A share pooled over images -- ``sum(numerators) / sum(denominators)``, e.g. touching cells separated / touching
    cells, one pair of counts per validation image -- and its bootstrap standard error over images: the same images
    drawn with replacement as for an AP (``resample_counts``), the share recomputed on each resample. A resample with
    nothing to count (its denominators sum to 0) is left out; with nothing to count at all both are NaN, and the SE
    is NaN where fewer than two images count anything."""
    num, den = (np.asarray(v, dtype=np.float64).reshape(-1) for v in (numerators, denominators))
    if len(num) != len(den) or len(num) == 0:
        raise ValueError(f"bootstrap_ratio: {len(num)} numerators and {len(den)} denominators; give one of each per "
                         "image, for one image or more.")
    if not (np.all(np.isfinite(num)) and np.all(np.isfinite(den)) and np.all((0 <= num) & (num <= den))):
        raise ValueError(f"bootstrap_ratio: counts must be finite, with 0 <= numerator <= denominator per image (a share "
                         f"of what the image counts); got numerators {num} and denominators {den}.")
    if den.sum() == 0:
        return math.nan, math.nan
    if np.count_nonzero(den) < 2:  # one image counts anything: no spread over images can be estimated
        return float(num.sum() / den.sum()), math.nan
    counts = resample_counts(len(num), resamples, seed)
    totals = counts @ den
    return float(num.sum() / den.sum()), _spread((counts @ num)[totals > 0] / totals[totals > 0])


def bootstrap_miou(confusions, *, resamples: int = 200, seed: int = 0) -> tuple[float, float]:
    """Mean IoU pooled over images -- ``confusions`` [images, C, C], one confusion matrix of pixel counts per image
    (row: true class, column: predicted) -- and its bootstrap standard error over images: the images drawn with
    replacement (``resample_counts``), their matrices summed, the mean IoU recomputed as ``ConfusionMatrix.compute``
    does (a class neither present nor predicted is left out). NaN SE for a single image."""
    mats = np.asarray(confusions, dtype=np.float64)
    if mats.ndim != 3 or mats.shape[1] != mats.shape[2] or len(mats) == 0:
        raise ValueError(f"bootstrap_miou: confusions has shape {mats.shape}; give [images, C, C] pixel counts, one "
                         "confusion matrix per image, for one image or more.")
    if len(mats) == 1:
        return float(_miou(mats)[0]), math.nan
    counts = np.vstack([np.ones(len(mats), dtype=np.int64), resample_counts(len(mats), resamples, seed)])
    values = _miou(np.einsum("bi,ijk->bjk", counts, mats))
    return float(values[0]), _spread(values[1:])


def _spread(resampled: np.ndarray) -> float:
    """The bootstrap standard error: the standard deviation of the resampled values that are defined (NaN: a
    resample without what the metric counts), NaN where fewer than two are."""
    defined = np.asarray(resampled, dtype=np.float64)
    defined = defined[~np.isnan(defined)]
    return float(np.std(defined, ddof=1)) if len(defined) > 1 else math.nan


def _miou(mats: np.ndarray) -> np.ndarray:
    """Mean IoU of each matrix of [B, C, C] (the NaN-mean over classes of ``ConfusionMatrix.compute``)."""
    n_ii = np.diagonal(mats, axis1=1, axis2=2)
    with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a matrix without a pixel: NaN, as compute gives
        return np.nanmean(n_ii / (mats.sum(2) + mats.sum(1) - n_ii), axis=1)
