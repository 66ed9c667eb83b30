"""Reference solutions of chapter 00 (see solutions/README.md)."""
import numpy as np
import torch
from torchvision.ops import box_iou


def ap50(gt_boxes, det_boxes, det_scores):
    """AP at IoU 0.5 of one image and one class, as COCOeval computes it."""
    order = torch.sort(det_scores, descending=True, stable=True).indices[:100]  # COCO's maxDets = 100
    det_boxes = det_boxes[order]
    iou = box_iou(det_boxes, gt_boxes) if len(det_boxes) and len(gt_boxes) else torch.zeros(len(det_boxes), len(gt_boxes))
    taken = torch.zeros(len(gt_boxes), dtype=torch.bool)
    tp = torch.zeros(len(det_boxes), dtype=torch.float64)
    for d in range(len(det_boxes)):  # greedy, in score order: the free object it overlaps most, if IoU >= 0.5
        free = iou[d].masked_fill(taken, -1.0)
        if len(free) and free.max() >= 0.5:
            taken[free.argmax()] = True
            tp[d] = 1.0
    if len(tp) == 0:
        return torch.tensor(0.0, dtype=torch.float64)
    tps = tp.cumsum(0)
    recall = tps / len(gt_boxes)
    precision = tps / torch.arange(1, len(tp) + 1, dtype=torch.float64)
    precision = precision.flip(0).cummax(0).values.flip(0)  # the best precision at this recall or higher
    thresholds = torch.from_numpy(np.linspace(0.0, 1.0, 101))
    index = torch.searchsorted(recall, thresholds, side="left")
    reached = index < len(recall)
    q = torch.zeros(101, dtype=torch.float64)
    q[reached] = precision[index[reached]]
    return q.mean()


def class_iou(prediction, target, num_classes, ignore_index=255):
    """Per-class IoU n_ii / (t_i + p_i - n_ii) over the labelled pixels (NaN for a class never seen nor predicted)."""
    valid = target != ignore_index
    t, p = target[valid].long(), prediction[valid].long()
    n = torch.bincount(t * num_classes + p, minlength=num_classes ** 2).view(num_classes, num_classes).double()
    n_ii = n.diag()
    return n_ii / (n.sum(1) + n.sum(0) - n_ii)
