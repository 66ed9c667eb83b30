"""Detection metrics: COCO AP/AR (pycocotools), proposal recall, and the EFPN paper's
accuracy / recall / F1 per object size.

Detections everywhere are a list with one dict per image, as torchvision detectors return
them plus the image id: ``{"image_id": int, "boxes": Tensor[N, 4] (x1, y1, x2, y2) in
original image pixels, "scores": Tensor[N], "labels": Tensor[N]}``. Labels are the model's
contiguous class indices; ``label_to_cat_id`` (a dict or a sequence indexed by label) maps
them to the annotation file's category ids.
"""
from __future__ import annotations

import contextlib
import io
import math
import os
from pathlib import Path

import numpy as np
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from course_lib.data.coco import load_coco
from course_lib.ops import box_convert, box_iou

__all__ = ["coco_evaluate", "ap50_by_size", "proposal_recall", "efpn_metrics", "tt100k_metrics", "greedy_match", "iou_greedy_match",
           "evaluate_detector", "SIZE_RANGES", "TT100K_SIZE_RANGES"]

# COCO's (and the EFPN paper's text, Sec. IV-A2) object sizes by area in pixels: [low, high).
SIZE_RANGES = {"small": (0.0, 32.0**2), "medium": (32.0**2, 96.0**2), "large": (96.0**2, math.inf)}
# The official Tsinghua-Tencent 100K script (anno_func.eval_annos): by the long side max(w, h), [low, high);
# "all" is its [0, 400). The EFPN paper's Fig. 7 labels these buckets (0,32], (32,96], (96,400].
TT100K_SIZE_RANGES = {"small": (0.0, 32.0), "medium": (32.0, 96.0), "large": (96.0, 400.0), "all": (0.0, 400.0)}


def _quiet(verbose: bool):
    return contextlib.nullcontext() if verbose else contextlib.redirect_stdout(io.StringIO())


def _as_coco(gt) -> COCO:
    """A ``pycocotools.coco.COCO`` from itself or from the path of a COCO JSON file."""
    if isinstance(gt, COCO):
        return gt
    if isinstance(gt, (str, os.PathLike)):
        if not Path(gt).is_file():
            raise FileNotFoundError(f"No COCO annotation file at {gt}. Build the data with "
                                    "`python -m course_lib.data.make_synthetic` (or `make lab`).")
        return load_coco(gt)  # not COCO(gt): it keeps only the last of repeated ids, without a word
    raise TypeError(f"Expected a pycocotools COCO object or the path of a COCO JSON file, got {type(gt).__name__}.")


def _coco_from_boxes(gt_boxes) -> COCO:
    """An in-memory COCO ground truth (one category, image ``i`` = ``gt_boxes[i]``)."""
    anns, next_id = [], 1
    for image_id, boxes in enumerate(gt_boxes):
        xywh = box_convert(torch.as_tensor(boxes, dtype=torch.float64).reshape(-1, 4), "xyxy", "xywh")
        for x, y, w, h in xywh.tolist():
            anns.append({"id": next_id, "image_id": image_id, "category_id": 1, "bbox": [x, y, w, h],
                         "area": w * h, "iscrowd": 0})
            next_id += 1
    coco = COCO()
    coco.dataset = {"images": [{"id": i} for i in range(len(gt_boxes))], "annotations": anns,
                    "categories": [{"id": 1, "name": "object"}]}
    with _quiet(False):
        coco.createIndex()
    return coco


def _map_labels(labels: torch.Tensor, label_to_cat_id) -> torch.Tensor:
    if label_to_cat_id is None:
        return labels.long()
    table = dict(label_to_cat_id) if isinstance(label_to_cat_id, dict) else dict(enumerate(label_to_cat_id))
    unknown = set(labels.unique().tolist()) - set(table)
    if unknown:
        raise ValueError(f"Labels {sorted(unknown)} have no entry in label_to_cat_id ({table}).")
    lut = torch.full((max(table) + 1,), -1, dtype=torch.long)
    lut[list(table)] = torch.tensor(list(table.values()), dtype=torch.long)
    return lut[labels.long()]


def _results_array(coco: COCO, detections, label_to_cat_id=None) -> np.ndarray:
    """Detections as pycocotools' [N, 7] result array (image_id, x, y, w, h, score, category_id)."""
    rows = []
    for det in detections:
        boxes = torch.as_tensor(det["boxes"]).detach().cpu().double().reshape(-1, 4)
        n = len(boxes)
        if "scores" in det:
            scores = torch.as_tensor(det["scores"]).detach().cpu().double()
        else:  # proposals come sorted by objectness: keep that order
            scores = 1.0 - torch.arange(n, dtype=torch.float64) / max(n, 1)
        labels = _map_labels(torch.as_tensor(det["labels"]).cpu().reshape(-1), label_to_cat_id)
        image_id = torch.full((n, 1), float(int(det["image_id"])), dtype=torch.float64)
        rows.append(torch.cat([image_id, box_convert(boxes, "xyxy", "xywh"), scores[:, None],
                               labels[:, None].double()], dim=1))
    results = torch.cat(rows).numpy() if rows else np.zeros((0, 7))
    unknown_images = set(results[:, 0].astype(int).tolist()) - set(coco.getImgIds())
    if unknown_images:
        raise ValueError(f"Detections for image ids {sorted(unknown_images)[:10]} that are not in the annotations: "
                         "evaluate against the annotation file of the same split.")
    unknown_cats = set(results[:, 6].astype(int).tolist()) - set(coco.getCatIds())
    if unknown_cats:
        raise ValueError(f"Detections with category ids {sorted(unknown_cats)} that are not in the annotations "
                         f"(ids: {coco.getCatIds()}): pass label_to_cat_id=dataset.label_to_cat_id.")
    return results


def coco_evaluate(coco_gt, detections, iou_type: str = "bbox", max_dets=(1, 10, 100), *, label_to_cat_id=None,
                  img_ids=None, verbose: bool = False) -> dict[str, float]:
    """COCO AP and AR with pycocotools' ``COCOeval`` (the official protocol).

    Returns AP (IoU 0.50:0.95), AP50, AP75, APs/APm/APl, AR1, AR10, AR100 (named after
    ``max_dets``) and ARs/ARm/ARl. A size with no ground truth gets NaN (COCO prints -1).
    ``img_ids`` restricts evaluation to those images (default: every annotated image).
    """
    if iou_type != "bbox":
        raise ValueError(f"iou_type={iou_type!r}: only 'bbox' is supported (the course's detectors predict boxes).")
    if len(max_dets) != 3:
        raise ValueError(f"max_dets={max_dets}: COCOeval's summary needs exactly three values, e.g. (1, 10, 100).")
    coco = _as_coco(coco_gt)
    keys = ["AP", "AP50", "AP75", "APs", "APm", "APl", *(f"AR{m}" for m in max_dets), "ARs", "ARm", "ARl"]
    results = _results_array(coco, detections, label_to_cat_id)
    if len(results) == 0:
        return dict.fromkeys(keys, 0.0)
    with _quiet(verbose):
        evaluator = _accumulated(coco, results, max_dets, img_ids)
        evaluator.summarize()
    return {k: (float(v) if v > -1 else math.nan) for k, v in zip(keys, evaluator.stats)}


def _accumulated(coco: COCO, results: np.ndarray, max_dets, img_ids) -> COCOeval:
    evaluator = COCOeval(coco, coco.loadRes(results), "bbox")
    evaluator.params.maxDets = list(max_dets)
    if img_ids is not None:
        evaluator.params.imgIds = sorted(int(i) for i in img_ids)
    evaluator.evaluate()
    evaluator.accumulate()
    return evaluator


def ap50_by_size(coco_gt, detections, *, label_to_cat_id=None, img_ids=None) -> dict[str, float]:
    """COCO's AP at IoU 0.5 (100 detections per image) over all objects and by size: ``{"AP50", "AP50s", "AP50m",
    "AP50l"}`` -- what ``coco_evaluate`` reports as APs / APm / APl, but at IoU 0.5 alone, so that a detector whose
    boxes are right but loose (AP50, not AP) can be told from one that misses small objects. ``AP50`` equals
    ``coco_evaluate``'s. A size with no ground truth gets NaN; no detections at all give 0."""
    coco = _as_coco(coco_gt)
    keys = ["AP50", "AP50s", "AP50m", "AP50l"]  # COCOeval's areaRng order: all, small, medium, large
    results = _results_array(coco, detections, label_to_cat_id)
    if len(results) == 0:
        return dict.fromkeys(keys, 0.0)
    with _quiet(False):
        evaluator = _accumulated(coco, results, (1, 10, 100), img_ids)
    precision = evaluator.eval["precision"][0, :, :, :, -1]  # [recall, class, area] at IoU 0.5, 100 detections
    out = {}
    for key, area in zip(keys, range(4)):
        p = precision[:, :, area]
        out[key] = float(p[p > -1].mean()) if (p > -1).any() else math.nan
    return out


def all_objects_findable(target: dict, *, nms_thresh: float, proposals: torch.Tensor | None = None,
                         proposal_iou: float = 0.5) -> bool:
    """Whether a detector *can* find every object of ``target`` (``boxes`` [G, 4], ``labels`` [G]) at AP50 = 1.

    False when two objects of one class overlap by more than the test-time NMS threshold ``nms_thresh`` (class-wise
    NMS keeps one of the pair however well the detector learnt both: R-FCN's and Fast R-CNN's 0.3 do this to two
    shapes at IoU 0.45), or, with ``proposals`` [P, 4], when an object has no proposal at IoU >= ``proposal_iou``
    (a detector that re-scores proposals cannot find it). The overfit checks pick their two images with it.
    """
    boxes, labels = target["boxes"], target["labels"]
    if len(boxes) == 0:
        return False  # nothing to find: AP50 is undefined
    iou = box_iou(boxes, boxes).fill_diagonal_(0)
    if bool(((iou > nms_thresh) & (labels[:, None] == labels[None, :])).any()):
        return False
    if proposals is not None:
        if len(proposals) == 0:
            return False
        return bool((box_iou(boxes, proposals).max(1).values >= proposal_iou).all())
    return True


def proposal_recall(gt, proposals, iou_thresholds=None, k: int = 1000, *, verbose: bool = False) -> dict:
    """Average recall of class-agnostic proposals with at most ``k`` per image (AR@k, as
    in the FPN paper's RPN ablation, Table 1), through ``COCOeval`` with ``useCats=0``.

    ``gt`` is a COCO object / JSON path (then ``proposals`` are dicts with ``image_id`` and
    ``boxes``), or a list of ground-truth box tensors (then ``proposals`` is a list of box
    tensors in the same order). Proposals without ``scores`` count in the given order.
    Returns ``AR@k``, ``ARs@k``, ``ARm@k``, ``ARl@k`` and ``recall`` (one value per IoU threshold).
    """
    if isinstance(gt, (COCO, str, os.PathLike)):
        coco = _as_coco(gt)
    else:
        coco = _coco_from_boxes(gt)
        proposals = [p if isinstance(p, dict) else {"image_id": i, "boxes": p} for i, p in enumerate(proposals)]
    # Class-agnostic: every proposal gets the first category (useCats=0 ignores it anyway).
    proposals = [{**p, "labels": torch.zeros(len(torch.as_tensor(p["boxes"]).reshape(-1, 4)), dtype=torch.long)}
                 for p in proposals]
    thresholds = np.linspace(0.5, 0.95, 10) if iou_thresholds is None else np.asarray(iou_thresholds, dtype=float)
    keys = [f"AR@{k}", f"ARs@{k}", f"ARm@{k}", f"ARl@{k}"]
    results = _results_array(coco, proposals, label_to_cat_id={0: coco.getCatIds()[0]})
    if len(results) == 0:
        return {**dict.fromkeys(keys, 0.0), "recall": [0.0] * len(thresholds)}
    with _quiet(verbose):
        evaluator = COCOeval(coco, coco.loadRes(results), "bbox")
        evaluator.params.useCats = 0
        evaluator.params.maxDets = [k]
        evaluator.params.iouThrs = thresholds
        evaluator.evaluate()
        evaluator.accumulate()
    recall = evaluator.eval["recall"][:, 0, :, 0]  # [IoU thresholds, area ranges all/s/m/l]

    def mean(r):
        r = r[r > -1]
        return float(r.mean()) if r.size else math.nan

    return {**{key: mean(recall[:, a]) for a, key in enumerate(keys)}, "recall": recall[:, 0].tolist()}


# ---------------------------------------------------------------------- EFPN / TT100K metrics


def greedy_match(iou: torch.Tensor, threshold: float) -> torch.Tensor:
    """COCO's greedy matching. ``iou`` is [D, G] with detections sorted by decreasing score
    (entries < 0 never match). In score order, each detection takes the unmatched ground
    truth it overlaps most, if that IoU >= ``threshold``. Returns [D] ground-truth index or -1.

    Vectorised in rounds: all undecided detections propose their best free ground truth at
    once; the proposals of the leading run without a duplicate are exactly what the
    sequential loop would pick, so they are fixed, and the rest propose again. After NMS
    conflicts are rare, so this takes a handful of rounds.
    """
    num_det, num_gt = iou.shape
    match = torch.full((num_det,), -1, dtype=torch.long)
    pending = torch.arange(num_det)
    taken = torch.zeros(num_gt, dtype=torch.bool)
    while len(pending) and num_gt:
        q = iou[pending].masked_fill(taken, -1.0)
        best_iou, best = q.max(dim=1)  # first index among ties
        has = best_iou >= max(threshold, 0.0)
        pos = torch.arange(len(pending))
        first = torch.full((num_gt,), len(pending)).scatter_reduce(0, best[has], pos[has], "amin")
        conflict = has & (first[best] < pos)
        stop = int(conflict.nonzero()[0]) if conflict.any() else len(pending)
        fixed = has[:stop]
        match[pending[:stop][fixed]] = best[:stop][fixed]
        taken[best[:stop][fixed]] = True
        pending = pending[stop:]
    return match


def _per_image_gt(gt, label_to_cat_id):
    """{image_id: (boxes xyxy, labels, crowd)} from a COCO object / path or a list of targets."""
    if isinstance(gt, (COCO, str, os.PathLike)):
        coco = _as_coco(gt)
        out = {}
        for image_id in coco.getImgIds():
            anns = coco.imgToAnns[image_id]
            xywh = torch.tensor([a["bbox"] for a in anns], dtype=torch.float64).reshape(-1, 4)
            out[image_id] = (box_convert(xywh, "xywh", "xyxy"), torch.tensor([a["category_id"] for a in anns]),
                             torch.tensor([bool(a.get("iscrowd", 0)) for a in anns], dtype=torch.bool))
        return out, label_to_cat_id
    out = {}
    for t in gt:
        boxes = torch.as_tensor(t["boxes"]).detach().cpu().double().reshape(-1, 4)
        crowd = torch.as_tensor(t["iscrowd"]).bool() if "iscrowd" in t else torch.zeros(len(boxes), dtype=torch.bool)
        out[int(t["image_id"])] = (boxes, torch.as_tensor(t["labels"]).cpu(), crowd)
    return out, None  # contiguous labels on both sides


def efpn_metrics(gt, detections, iou_threshold: float = 0.5, score_threshold: float = 0.5, *,
                 label_to_cat_id=None, class_agnostic: bool = False) -> dict[str, dict[str, float]]:
    """Accuracy, recall and F1 per object size, the EFPN paper's Tsinghua-Tencent 100K
    protocol (Sec. IV-A2, eq. 9; Tables II-IV): detections scoring >= ``score_threshold`` are
    matched greedily by score to ground truth of their class at IoU >= ``iou_threshold``.

    For each size (``SIZE_RANGES``, by box area w*h; plus ``"all"``):
      accuracy = true-positive detections of that size / detections of that size (a precision),
      recall   = matched ground-truth objects of that size / ground-truth objects of that size,
      F1       = 2 accuracy recall / (accuracy + recall)   (eq. 9).
    A detection's size is its own box's, an object's its ground-truth box's. Counts come
    along (``num_det``, ``tp``, ``fp``, ``num_gt``, ``matched_gt``, ``fn``); a ratio with
    nothing to count is NaN. ``gt`` is a COCO object / JSON path (detection labels mapped by
    ``label_to_cat_id``) or a list of target dicts with ``image_id``, ``boxes``, ``labels``
    (and optionally ``iscrowd``). Crowd objects (VOC's "difficult") are neither counted nor
    missed, and an unmatched detection on one is ignored, as in PASCAL VOC.
    """
    gt_by_image, mapping = _per_image_gt(gt, label_to_cat_id)
    det_by_image = {int(d["image_id"]): d for d in detections}
    unknown = set(det_by_image) - set(gt_by_image)
    if unknown:
        raise ValueError(f"Detections for image ids {sorted(unknown)[:10]} that have no ground truth entry.")
    det_area, det_tp, gt_area, gt_hit = [], [], [], []
    for image_id, (gt_boxes, gt_labels, crowd) in gt_by_image.items():
        det = det_by_image.get(image_id)
        if det is None:
            boxes, labels = torch.zeros(0, 4, dtype=torch.float64), torch.zeros(0, dtype=torch.long)
        else:
            scores = torch.as_tensor(det["scores"]).detach().cpu()
            order = torch.sort(scores, descending=True, stable=True).indices[: int((scores >= score_threshold).sum())]
            boxes = torch.as_tensor(det["boxes"]).detach().cpu().double().reshape(-1, 4)[order]
            labels = _map_labels(torch.as_tensor(det["labels"]).cpu()[order], mapping)
        iou = box_iou(boxes, gt_boxes)
        if not class_agnostic:
            iou = iou.masked_fill(labels[:, None] != gt_labels[None, :].to(labels), -1.0)
        match = greedy_match(iou[:, ~crowd], iou_threshold)  # indices into the non-crowd objects
        on_crowd = (match < 0) & (iou[:, crowd] >= iou_threshold).any(dim=1)
        hit = torch.zeros(int((~crowd).sum()), dtype=torch.bool)
        hit[match[match >= 0]] = True
        det_area.append(((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))[~on_crowd])
        det_tp.append((match >= 0)[~on_crowd])
        kept = gt_boxes[~crowd]
        gt_area.append((kept[:, 2] - kept[:, 0]) * (kept[:, 3] - kept[:, 1]))
        gt_hit.append(hit)
    det_area, det_tp = torch.cat(det_area), torch.cat(det_tp)
    gt_area, gt_hit = torch.cat(gt_area), torch.cat(gt_hit)

    out = {}
    for name, (low, high) in {**SIZE_RANGES, "all": (0.0, math.inf)}.items():
        in_det = (det_area >= low) & (det_area < high)
        in_gt = (gt_area >= low) & (gt_area < high)
        out[name] = _accuracy_recall_f1(int((det_tp & in_det).sum()), int(in_det.sum()),
                                        int((gt_hit & in_gt).sum()), int(in_gt.sum()))
    return out


def _accuracy_recall_f1(tp: int, num_det: int, matched: int, num_gt: int) -> dict[str, float]:
    """accuracy = tp / detections, recall = matched / objects, F1 (eq. 9); NaN where there is nothing to count.

    F1, the harmonic mean of the two, is 0 when either is 0 even if the other has nothing to count: a size with
    objects but no detection above the threshold has recall 0 and F1 0 (every object missed), not NaN -- the NaN
    that filled chapter 8's ablation table when briefly trained models scored nothing above the threshold."""
    acc = tp / num_det if num_det else math.nan
    rec = matched / num_gt if num_gt else math.nan
    if acc == 0 or rec == 0:
        f1 = 0.0
    elif math.isnan(acc) or math.isnan(rec):
        f1 = math.nan
    else:
        f1 = 2 * acc * rec / (acc + rec)
    return {"accuracy": acc, "recall": rec, "f1": f1, "num_det": num_det, "tp": tp, "fp": num_det - tp,
            "num_gt": num_gt, "matched_gt": matched, "fn": num_gt - matched}


def iou_greedy_match(iou: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """The official TT100K matching: all (ground truth i, detection j) pairs with ``valid[i, j]``, sorted by
    decreasing IoU (ties: i, then j, as Python's stable sort of the enumerated pairs), are taken in turn when both
    are still free. Returns [G] the detection index of each ground truth, or -1.

    Vectorised in rounds: a pair that comes first in its row and in its column among the pairs still possible is
    exactly one the sequential loop takes; those are fixed, their rows and columns removed, and the rest repeats.
    """
    num_gt, num_det = iou.shape
    match = torch.full((num_gt,), -1, dtype=torch.long)
    if num_gt == 0 or num_det == 0 or not valid.any():
        return match
    order = torch.sort(-iou.double().flatten(), stable=True).indices
    big = num_gt * num_det
    rank = torch.empty(big, dtype=torch.long)
    rank[order] = torch.arange(big)
    rank = rank.view(num_gt, num_det).masked_fill(~valid, big)
    while True:
        row_min = rank.min(dim=1, keepdim=True).values
        col_min = rank.min(dim=0, keepdim=True).values
        take = (rank == row_min) & (rank == col_min) & (rank < big)
        if not take.any():
            return match
        gi, dj = torch.nonzero(take, as_tuple=True)
        match[gi] = dj
        rank[gi, :] = big
        rank[:, dj] = big


def tt100k_metrics(gt, detections, iou_threshold: float = 0.5, score_threshold: float = 0.5, *,
                   sizes: dict | None = None, types=None, label_to_cat_id=None) -> dict[str, dict[str, float]]:
    """Accuracy / recall / F1 by the official Tsinghua-Tencent 100K script (``anno_func.eval_annos``; Zhu et al.
    2016), which the EFPN paper's accuracy/recall tables follow ("the protocol in [37]", Sec. IV-A2):

    * detections scoring below ``score_threshold`` are dropped (the script's ``minscore``, 40 there on its results'
      score scale; call it with ``iou=0.5`` -- its default is 0.75);
    * pairs of the same class with IoU > ``iou_threshold`` (strictly) are matched greedily by decreasing IoU
      (:func:`iou_greedy_match`), not by score;
    * sizes by the long side max(w, h) in half-open buckets (``TT100K_SIZE_RANGES``: [0,32), [32,96), [96,400) and
      all = [0,400)): a ground truth outside the bucket is ignored, and so is the detection matched to it; an
      unmatched detection counts where its own long side falls; a matched one where its ground truth falls;
    * ``types``: the evaluated classes (the paper's 45; labels, or category ids with a COCO ``gt``); ground truth and
      detections of other classes are ignored. None = every class.

    accuracy = correct / counted detections, recall = correct / counted ground truth, F1 = eq. 9. Where nothing is
    counted the ratio is NaN (the script prints 1). ``gt`` and ``detections`` as for :func:`efpn_metrics`.
    """
    sizes = TT100K_SIZE_RANGES if sizes is None else sizes
    gt_by_image, mapping = _per_image_gt(gt, label_to_cat_id)
    det_by_image = {int(d["image_id"]): d for d in detections}
    unknown = set(det_by_image) - set(gt_by_image)
    if unknown:
        raise ValueError(f"Detections for image ids {sorted(unknown)[:10]} that have no ground truth entry.")
    type_set = None if types is None else torch.as_tensor(list(types)).long()
    g_long, g_hit, g_ok, d_long, d_matched_long, d_ok = [], [], [], [], [], []
    for image_id, (gt_boxes, gt_labels, _crowd) in gt_by_image.items():
        det = det_by_image.get(image_id)
        if det is None:
            boxes, labels = torch.zeros(0, 4, dtype=torch.float64), torch.zeros(0, dtype=torch.long)
        else:
            scores = torch.as_tensor(det["scores"]).detach().cpu()
            keep = scores >= score_threshold
            boxes = torch.as_tensor(det["boxes"]).detach().cpu().double().reshape(-1, 4)[keep]
            labels = _map_labels(torch.as_tensor(det["labels"]).cpu().reshape(-1)[keep], mapping)
        gt_labels = gt_labels.long()
        gt_in_types = torch.ones(len(gt_boxes), dtype=torch.bool) if type_set is None else torch.isin(gt_labels, type_set)
        det_in_types = torch.ones(len(boxes), dtype=torch.bool) if type_set is None else torch.isin(labels, type_set)
        iou = box_iou(gt_boxes, boxes)
        valid = (iou > iou_threshold) & (gt_labels[:, None] == labels[None, :]) & gt_in_types[:, None] & det_in_types
        match = iou_greedy_match(iou, valid)  # [G] -> detection or -1
        gl = (gt_boxes[:, 2:] - gt_boxes[:, :2]).max(dim=1).values
        dl = (boxes[:, 2:] - boxes[:, :2]).max(dim=1).values
        matched_long = torch.full((len(boxes),), math.nan, dtype=torch.float64)  # the long side of its ground truth
        matched_long[match[match >= 0]] = gl[match >= 0]
        g_long.append(gl), g_hit.append(match >= 0), g_ok.append(gt_in_types)
        d_long.append(dl), d_matched_long.append(matched_long), d_ok.append(det_in_types)
    g_long, g_hit, g_ok = torch.cat(g_long), torch.cat(g_hit), torch.cat(g_ok)
    d_long, d_matched_long, d_ok = torch.cat(d_long), torch.cat(d_matched_long), torch.cat(d_ok)
    d_hit = ~torch.isnan(d_matched_long)

    out = {}
    for name, (low, high) in sizes.items():
        in_gt = g_ok & (g_long >= low) & (g_long < high)
        in_det = d_ok & torch.where(d_hit, (d_matched_long >= low) & (d_matched_long < high),
                                    (d_long >= low) & (d_long < high))
        tp = int((g_hit & in_gt).sum())
        out[name] = _accuracy_recall_f1(tp, int(in_det.sum()), tp, int(in_gt.sum()))
    return out


# ---------------------------------------------------------------------- running a detector


def _list_collate(batch):
    return tuple(zip(*batch))


def _find(dataset, attr):
    """``dataset.attr``, looking through ``torch.utils.data.Subset`` wrappers."""
    while not hasattr(dataset, attr) and hasattr(dataset, "dataset"):
        dataset = dataset.dataset
    return getattr(dataset, attr, None)


@torch.inference_mode()
def evaluate_detector(model, dataset, *, device=None, batch_size: int = 2, num_workers: int = 0,
                      label_to_cat_id=None, max_dets=(1, 10, 100), predict=None, progress: bool = True,
                      verbose: bool = False):
    """Run ``model`` (torchvision's contract: in eval mode, ``model(list of float CxHxW images
    in [0, 1])`` -> list of dicts ``boxes``/``labels``/``scores`` in input-image pixels) over
    a ``CocoDetection``-like dataset (``(image, target)`` samples with ``target["image_id"]``,
    and ``.coco`` / ``.label_to_cat_id`` attributes) and score it with ``coco_evaluate`` on
    the images it saw. The dataset must not resize: the model's transform does.
    ``predict(model, images, targets)`` replaces ``model(images)`` for models that need more
    (R-CNN and Fast R-CNN take proposals).

    Returns ``(metrics, detections)``; the detections (on the CPU) can go to ``efpn_metrics``.
    """
    coco = _find(dataset, "coco")
    if coco is None:
        raise TypeError(f"{type(dataset).__name__} has no .coco ground truth: use course_lib.data.CocoDetection.")
    label_to_cat_id = label_to_cat_id if label_to_cat_id is not None else _find(dataset, "label_to_cat_id")
    device = torch.device(device if device is not None else "cuda" if torch.cuda.is_available() else "cpu")
    was_training = model.training
    model.eval().to(device)
    detections = []
    loader = DataLoader(dataset, batch_size=batch_size, collate_fn=_list_collate, num_workers=num_workers)
    try:
        for images, targets in tqdm(loader, desc="evaluating", disable=not progress):
            images = [(im.float() / 255 if im.dtype == torch.uint8 else im.float()).to(device) for im in images]
            outputs = model(images) if predict is None else predict(model, images, targets)
            for target, out in zip(targets, outputs):
                detections.append({"image_id": int(target["image_id"]),
                                   **{k: out[k].detach().cpu() for k in ("boxes", "scores", "labels")}})
    finally:
        model.train(was_training)
    metrics = coco_evaluate(coco, detections, max_dets=max_dets, label_to_cat_id=label_to_cat_id,
                            img_ids=[d["image_id"] for d in detections], verbose=verbose)
    return metrics, detections
