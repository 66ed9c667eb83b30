"""Chapter 3b's checkers reject plausible wrong answers (solutions and stubs: test_solutions_and_stubs.py)."""
import pytest
import torch

from course_lib.exercises import ExerciseFailed, ch03b, load_solution

sol = lambda name: load_solution("ch03b", name)  # noqa: E731


def test_box_iou_rejects_plus_one_widths_and_unclamped_intersections():
    def plus_one(b1, b2):
        return ch03b._iou_plus_one(b1, b2)
    with pytest.raises(ExerciseFailed, match="x2 - x1, not x2 - x1 \\+ 1"):
        ch03b.check_box_iou(plus_one)
    with pytest.raises(ExerciseFailed, match="clamp width and height"):
        ch03b.check_box_iou(ch03b._iou_unclamped)


def test_encode_boxes_rejects_corners_and_inverted_log():
    with pytest.raises(ExerciseFailed, match="use centres"):
        ch03b.check_encode_boxes(ch03b._encode_corners)
    inverted = lambda gt, p, weights=(10.0, 10.0, 5.0, 5.0): sol("encode_boxes")(gt, p, weights) * torch.tensor(  # noqa: E731
        [1.0, 1.0, -1.0, -1.0])
    with pytest.raises(ExerciseFailed, match="ground truth over proposal"):
        ch03b.check_encode_boxes(inverted)


def test_nms_rejects_greater_or_equal_and_unstable_ties():
    iou = sol("box_iou")

    def nms_ge(boxes, scores, t):
        order = scores.argsort(descending=True, stable=True)
        m = iou(boxes[order], boxes[order])
        removed, keep = torch.zeros(len(order), dtype=torch.bool), []
        for i in range(len(order)):
            if not removed[i]:
                keep.append(i)
                removed |= m[i] >= t
        return order[torch.tensor(keep, dtype=torch.int64)]
    with pytest.raises(ExerciseFailed, match="strictly above"):
        ch03b.check_nms(nms_ge)

    def nms_last_wins(boxes, scores, t):  # ties broken towards the later index
        flip = torch.arange(len(scores) - 1, -1, -1)
        return flip[sol("nms")(boxes[flip], scores[flip], t)]
    with pytest.raises(ExerciseFailed):
        ch03b.check_nms(nms_last_wins)


def test_anchor_grid_rejects_centred_cells_and_inverted_ratios():
    centred = lambda grid, stride, sizes, ratios: sol("anchor_grid")(grid, stride, sizes, ratios) + stride / 2  # noqa: E731
    with pytest.raises(ExerciseFailed, match="top-left pixel"):
        ch03b.check_anchor_grid(centred)
    inverted = lambda grid, stride, sizes, ratios: sol("anchor_grid")(grid, stride, sizes, [1 / r for r in ratios])  # noqa: E731
    with pytest.raises(ExerciseFailed, match="r = h / w"):
        ch03b.check_anchor_grid(inverted)
