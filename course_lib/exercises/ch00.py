"""Chapter 00's exercises: AP50 by hand, equal to pycocotools' ``COCOeval``; per-class IoU from the pixels.

Each checker runs the student's function on hidden, seeded cases and compares it with the official evaluator the
course uses (``course_lib.evaluation``), so "by hand" has to mean "exactly as COCO computes it".
"""
from __future__ import annotations

import torch

from course_lib.evaluation import ConfusionMatrix, coco_evaluate
from course_lib.evaluation.detection import _coco_from_boxes

from .core import Case, Hint, check_function

__all__ = ["check_ap50", "check_class_iou", "coco_ap50", "confusion_class_iou"]

CHAPTER = "ch00"


def coco_ap50(gt_boxes: torch.Tensor, det_boxes: torch.Tensor, det_scores: torch.Tensor) -> torch.Tensor:
    """The reference: AP at IoU 0.5 of one image and one class, from pycocotools' ``COCOeval`` (a 0-d float64)."""
    coco = _coco_from_boxes([gt_boxes])
    detections = [{"image_id": 0, "boxes": det_boxes, "scores": det_scores,
                   "labels": torch.ones(len(det_boxes), dtype=torch.int64)}]
    return torch.tensor(coco_evaluate(coco, detections)["AP50"], dtype=torch.float64)


def _random_boxes(n: int, g: torch.Generator, size: float = 200.0) -> torch.Tensor:
    xy = torch.rand(n, 2, generator=g, dtype=torch.float64) * size
    wh = 8 + torch.rand(n, 2, generator=g, dtype=torch.float64) * size / 4
    return torch.cat([xy, xy + wh], dim=1)


def _jitter(boxes: torch.Tensor, g: torch.Generator, scale: float) -> torch.Tensor:
    wh = (boxes[:, 2:] - boxes[:, :2]).repeat(1, 2)
    return boxes + scale * wh * torch.randn(boxes.shape, generator=g, dtype=torch.float64)


def _ap_cases() -> list[Case]:
    g = torch.Generator().manual_seed(1200)
    cases = []
    gt = _random_boxes(7, g)
    det = torch.cat([_jitter(gt, g, 0.08), _random_boxes(5, g)])
    cases.append(Case("7 objects, 12 detections", (gt, det, torch.rand(12, generator=g, dtype=torch.float64))))
    cases.append(Case("no detections", (gt[:3], torch.zeros(0, 4, dtype=torch.float64), torch.zeros(0, dtype=torch.float64))))
    one = torch.tensor([[0.0, 0.0, 10.0, 10.0]], dtype=torch.float64)
    cases.append(Case("IoU exactly 0.5", (one, torch.tensor([[0.0, 0.0, 10.0, 5.0]], dtype=torch.float64),
                                          torch.tensor([0.9], dtype=torch.float64))))
    dup = torch.cat([one, one, torch.tensor([[50.0, 50.0, 60.0, 60.0]], dtype=torch.float64)])
    cases.append(Case("a duplicate detection of one object", (torch.cat([one, one + 50]), dup,
                                                            torch.tensor([0.9, 0.8, 0.7], dtype=torch.float64))))
    gt = _random_boxes(5, g)
    det = torch.cat([_jitter(gt, g, 0.05), _random_boxes(3, g)])
    cases.append(Case("exact score ties", (gt, det, torch.tensor([0.5] * 4 + [0.9, 0.5, 0.5, 0.2], dtype=torch.float64))))
    gt = _random_boxes(37, g, size=600)
    det = torch.cat([_jitter(gt, g, 0.1), _jitter(gt, g, 0.3), _random_boxes(60, g, size=600)])
    cases.append(Case("large: 37 objects, 134 detections (only the best 100 count)",
                      (gt, det, torch.rand(len(det), generator=g, dtype=torch.float64))))
    return cases


def check_ap50(ap50):
    """Check ``ap50(gt_boxes, det_boxes, det_scores) -> AP at IoU 0.5`` against ``COCOeval`` on hidden cases."""
    hints = [
        Hint("A detection is a true positive at IoU >= 0.5, not > 0.5.",
             when=lambda out, exp, case: case.label == "IoU exactly 0.5"),
        Hint("Each object can be matched once: the second detection of a matched object is a false positive.",
             when=lambda out, exp, case: case.label.startswith("a duplicate")),
        Hint("Sort by score with a stable sort (torch.sort(..., descending=True, stable=True)): among equal scores "
             "COCO keeps the input order.", when=lambda out, exp, case: case.label == "exact score ties"),
        Hint("COCO keeps at most 100 detections per image, the highest-scoring ones.",
             when=lambda out, exp, case: case.label.startswith("large")),
        Hint("COCO's AP is not the area under the raw curve: make precision monotone (the maximum precision at any "
             "recall >= r), then average it at the 101 recalls np.linspace(0, 1, 101), taking 0 beyond the highest "
             "recall reached.", when=lambda out, exp, case: case.label.startswith("7 objects")),
    ]
    return check_function("ap50", ap50, reference=coco_ap50, cases=_ap_cases(), chapter=CHAPTER, hints=hints,
                          atol=1e-6, rtol=0.0)


def confusion_class_iou(prediction: torch.Tensor, target: torch.Tensor, num_classes: int,
                        ignore_index: int = 255) -> torch.Tensor:
    """The reference: per-class IoU from ``course_lib.evaluation.ConfusionMatrix`` (float64, NaN where undefined)."""
    matrix = ConfusionMatrix(num_classes, ignore_index=ignore_index)
    matrix.update(prediction, target)
    return torch.tensor(matrix.compute()["iou"], dtype=torch.float64)


def _iou_cases() -> list[Case]:
    g = torch.Generator().manual_seed(1201)
    cases = [Case("the notebook's 3 x 4 example", (torch.tensor([[0, 0, 1, 0], [0, 1, 1, 1], [2, 0, 1, 2]]),
                                                    torch.tensor([[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 255, 255]]), 3))]
    target = torch.randint(0, 5, (2, 64, 48), generator=g)
    target[torch.rand(target.shape, generator=g) < 0.1] = 255
    prediction = torch.where(torch.rand(target.shape, generator=g) < 0.7, target.clamp(max=4),
                             torch.randint(0, 5, target.shape, generator=g))
    cases.append(Case("two 64 x 48 maps, 5 classes, 10 % ignored", (prediction, target, 5)))
    cases.append(Case("a class that is neither labelled nor predicted", (prediction.clamp(max=3), target.clamp(max=3)
                                                                        .masked_fill(target == 255, 255), 6)))
    cases.append(Case("every pixel ignored", (prediction, torch.full_like(target, 255), 5)))
    cases.append(Case("other ignore_index", (prediction, target.masked_fill(target == 255, 7), 5),
                      {"ignore_index": 7}))
    return cases


def check_class_iou(class_iou):
    """Check ``class_iou(prediction, target, num_classes, ignore_index=255) -> [num_classes] IoU`` on hidden cases."""
    hints = [
        Hint("Pixels whose label is ignore_index count for nothing, wherever the prediction puts them.",
             when=lambda out, exp, case: "ignore" in case.label or "example" in case.label),
        Hint("A class that appears neither in the labels nor in the prediction has IoU 0 / 0 = NaN, not 0 (the mean "
             "IoU skips it).", when=lambda out, exp, case: "neither" in case.label or "every pixel" in case.label),
    ]
    return check_function("class_iou", class_iou, reference=confusion_class_iou, cases=_iou_cases(), chapter=CHAPTER,
                          hints=hints, atol=1e-9, rtol=0.0)
