"""Chapter 00's checkers accept the solution and reject the stub and plausible wrong answers."""
import numpy as np
import pytest
import torch
from torchvision.ops import box_iou

from course_lib.exercises import ExerciseFailed, NotAttempted, ch00

from course_lib.exercises import load_solution as solution


def _ap50(gt, det, scores, *, strict=False, envelope=True, area=False, max_dets=100):
    """The solution's algorithm with one switch flipped at a time (a plausible mistake)."""
    order = torch.sort(scores, descending=True, stable=True).indices[:max_dets]
    det = det[order]
    iou = box_iou(det, gt) if len(det) else torch.zeros(0, len(gt))
    taken = torch.zeros(len(gt), dtype=torch.bool)
    tp = torch.zeros(len(det), dtype=torch.float64)
    for d in range(len(det)):
        free = iou[d].masked_fill(taken, -1.0)
        best = free.max() if len(free) else torch.tensor(-1.0)
        if (best > 0.5) if strict else (best >= 0.5):
            taken[free.argmax()] = True
            tp[d] = 1
    if not len(tp):
        return torch.tensor(0.0, dtype=torch.float64)
    tps = tp.cumsum(0)
    recall, precision = tps / len(gt), tps / torch.arange(1, len(tp) + 1)
    if area:  # VOC-style area under the raw precision-recall curve
        return (precision * torch.diff(recall, prepend=torch.zeros(1))).sum()
    if envelope:
        precision = precision.flip(0).cummax(0).values.flip(0)
    index = torch.searchsorted(recall, torch.from_numpy(np.linspace(0, 1, 101)), side="left")
    ok = index < len(recall)
    q = torch.zeros(101, dtype=torch.float64)
    q[ok] = precision[index[ok]]
    return q.mean()


def test_ap50_accepts_the_solution_and_the_switchable_copy():
    ch00.check_ap50(solution("ch00", "ap50"))
    ch00.check_ap50(_ap50)


def test_ap50_rejects_the_stub(stub):
    with pytest.raises(NotAttempted):
        ch00.check_ap50(stub)


@pytest.mark.parametrize("mistake, hint", [
    ({"strict": True}, "IoU >= 0.5"),
    ({"envelope": False}, "monotone"),
    ({"area": True}, "monotone"),
    ({"max_dets": 1000}, "at most 100"),
])
def test_ap50_rejects_plausible_mistakes(mistake, hint):
    with pytest.raises(ExerciseFailed, match=hint):
        ch00.check_ap50(lambda gt, det, s: _ap50(gt, det, s, **mistake))


def test_class_iou_accepts_the_solution_rejects_stub_and_mistakes(stub):
    ch00.check_class_iou(solution("ch00", "class_iou"))
    with pytest.raises(NotAttempted):
        ch00.check_class_iou(stub)

    def counts_ignored(prediction, target, num_classes, ignore_index=255):  # ignored pixels clamped into a class
        t, p = target.clamp(max=num_classes - 1).flatten(), prediction.flatten()
        n = torch.bincount(t * num_classes + p, minlength=num_classes ** 2).view(num_classes, num_classes).double()
        return n.diag() / (n.sum(1) + n.sum(0) - n.diag())

    def zero_for_absent(prediction, target, num_classes, ignore_index=255):
        return torch.nan_to_num(solution("ch00", "class_iou")(prediction, target, num_classes, ignore_index), nan=0.0)

    with pytest.raises(ExerciseFailed, match="ignore_index count for nothing"):
        ch00.check_class_iou(counts_ignored)
    with pytest.raises(ExerciseFailed, match="NaN"):
        ch00.check_class_iou(zero_for_absent)
