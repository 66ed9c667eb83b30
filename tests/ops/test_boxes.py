"""course_lib.ops box geometry == torchvision.ops, on random boxes over many seeds."""
import pytest
import torch
import torchvision.ops as tv

from course_lib import ops

SEEDS = range(20)
DTYPES = [torch.float32, torch.float64]
FORMATS = ["xyxy", "xywh", "cxcywh"]


def same(actual, expected):
    """Bit-for-bit equal (NaN == NaN), same dtype and shape."""
    torch.testing.assert_close(actual, expected, rtol=0, atol=0, equal_nan=True)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_convert_area_iou_giou_equal_torchvision(seed, dtype, random_boxes):
    a = random_boxes(37, seed, dtype)
    b = random_boxes(23, seed + 1000, dtype)
    for in_fmt in FORMATS:
        for out_fmt in FORMATS:
            same(ops.box_convert(a, in_fmt, out_fmt), tv.box_convert(a, in_fmt, out_fmt))
    for fmt in FORMATS:
        a_f, b_f = tv.box_convert(a, "xyxy", fmt), tv.box_convert(b, "xyxy", fmt)
        same(ops.box_area(a_f, fmt=fmt), tv.box_area(a_f, fmt=fmt))
        same(ops.box_iou(a_f, b_f, fmt=fmt), tv.box_iou(a_f, b_f, fmt=fmt))
    same(ops.box_iou(a, b), tv.box_iou(a, b))
    same(ops.generalized_box_iou(a, b), tv.generalized_box_iou(a, b))
    iou = ops.box_iou(a, b)
    assert iou.dtype == dtype and iou.shape == (37, 23)


@pytest.mark.parametrize("seed", range(5))
def test_iou_batched_and_broadcast(seed, random_boxes):
    a = random_boxes(2 * 3 * 7, seed).reshape(2, 3, 7, 4)
    b = random_boxes(3 * 5, seed + 1).reshape(3, 5, 4)  # broadcasts over the leading 2
    same(ops.box_iou(a, b), tv.box_iou(a, b))
    same(ops.generalized_box_iou(a, b), tv.generalized_box_iou(a, b))
    assert ops.box_iou(a, b).shape == (2, 3, 7, 5)


def test_iou_known_values():
    a = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    b = torch.tensor([[0.0, 0.0, 10.0, 10.0], [5.0, 0.0, 15.0, 10.0], [20.0, 0.0, 30.0, 10.0]])
    # identical: 1; half-shifted: 50 / 150; disjoint: 0
    same(ops.box_iou(a, b), torch.tensor([[1.0, 1 / 3, 0.0]]))
    # GIoU of the disjoint pair: enclosing box 30x10 = 300, union 200 -> 0 - 100/300
    assert ops.generalized_box_iou(a, b)[0, 2].item() == pytest.approx(-1 / 3)


def test_integer_and_half_boxes_upcast_like_torchvision():
    a = torch.tensor([[0, 0, 10, 10], [2, 3, 50, 60]], dtype=torch.int16)
    same(ops.box_area(a), tv.box_area(a))
    same(ops.box_iou(a, a), tv.box_iou(a, a))
    h = a.half()
    same(ops.box_area(h), tv.box_area(h))
    same(ops.box_iou(h, h), tv.box_iou(h, h))


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_clip_and_remove_small_equal_torchvision(seed, dtype, random_boxes):
    boxes = random_boxes(50, seed, dtype, size=120.0) - 10  # some stick out of a 100 x 80 image
    same(ops.clip_boxes_to_image(boxes, (80, 100)), tv.clip_boxes_to_image(boxes, (80, 100)))
    batched = boxes.reshape(5, 10, 4)
    same(ops.clip_boxes_to_image(batched, (80, 100)), tv.clip_boxes_to_image(batched, (80, 100)))
    for min_size in (0.0, 1e-3, 5.0):
        same(ops.remove_small_boxes(boxes, min_size), tv.remove_small_boxes(boxes, min_size))


def test_degenerate_boxes_accepted_by_the_plumbing():
    # what a detector's decode step can produce: zero-area, inverted after clipping never, NaN
    boxes = torch.tensor([[5.0, 5.0, 5.0, 9.0], [1.0, 1.0, 3.0, 3.0], [float("nan"), 0.0, 1.0, 1.0], [0.0, 0, 0, 0]])
    assert ops.remove_small_boxes(boxes, 1e-3).tolist() == [1]
    same(ops.clip_boxes_to_image(boxes, (4, 4)), tv.clip_boxes_to_image(boxes, (4, 4)))
    same(ops.box_area(boxes), tv.box_area(boxes))
    iou = ops.box_iou(boxes[[0, 1, 3]], boxes[[0, 1, 3]])  # zero-area boxes are valid input
    same(iou, tv.box_iou(boxes[[0, 1, 3]], boxes[[0, 1, 3]]))


def test_empty_inputs():
    e = torch.zeros(0, 4)
    b = torch.tensor([[0.0, 0.0, 1.0, 1.0]] * 3)
    assert ops.box_iou(e, b).shape == (0, 3)
    assert ops.box_iou(b, e).shape == (3, 0)
    assert ops.generalized_box_iou(e, e).shape == (0, 0)
    assert ops.box_area(e).shape == (0,)
    assert ops.box_convert(e, "xyxy", "cxcywh").shape == (0, 4)
    assert ops.clip_boxes_to_image(e, (10, 10)).shape == (0, 4)
    assert ops.remove_small_boxes(e, 1.0).shape == (0,)


def test_bad_input_raises_clear_errors():
    good = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    with pytest.raises(ValueError, match=r"box_iou: boxes1 must have shape \[\.\.\., N, 4\].*got \[10, 5\]"):
        ops.box_iou(torch.zeros(10, 5), good)
    with pytest.raises(ValueError, match=r"generalized_box_iou: boxes2 must have shape \[\.\.\., M, 4\].*got \[4\]"):
        ops.generalized_box_iou(good, torch.zeros(4))
    inverted = torch.tensor([[0.0, 0.0, 10.0, 10.0], [10.0, 0.0, 5.0, 10.0]])
    with pytest.raises(ValueError, match=r"box_iou: boxes2 .*x2 >= x1.*box 1 .*\[10\.0, 0\.0, 5\.0, 10\.0\]"):
        ops.box_iou(good, inverted)
    with pytest.raises(ValueError, match=r"generalized_box_iou: boxes1 .*NaN"):
        ops.generalized_box_iou(torch.tensor([[0.0, float("nan"), 1.0, 1.0]]), good)
    with pytest.raises(ValueError, match=r"box_iou: boxes1 .*w >= 0"):
        ops.box_iou(torch.tensor([[0.0, 0.0, -1.0, 1.0]]), good, fmt="xywh")
    with pytest.raises(ValueError, match=r"box_iou: boxes1 .*NaN"):
        ops.box_iou(torch.tensor([[float("nan"), 0.0, 1.0, 1.0]]), good, fmt="cxcywh")
    with pytest.raises(ValueError, match=r"box_convert: unsupported box format in_fmt='xxyy'"):
        ops.box_convert(good, "xxyy", "xyxy")
    with pytest.raises(ValueError, match=r"box_area: unsupported box format fmt='cxcywhr'"):
        ops.box_area(good, fmt="cxcywhr")
    with pytest.raises(ValueError, match=r"box_iou: the batch dimensions"):
        ops.box_iou(torch.zeros(2, 3, 4), torch.zeros(3, 3, 4))
    with pytest.raises(TypeError, match=r"box_area: boxes must be a torch.Tensor"):
        ops.box_area([[0, 0, 1, 1]])
    with pytest.raises(ValueError, match=r"clip_boxes_to_image: size must be \(height, width\)"):
        ops.clip_boxes_to_image(good, (10, 10, 3))
    with pytest.raises(ValueError, match=r"remove_small_boxes: boxes must have shape"):
        ops.remove_small_boxes(torch.zeros(3, 2), 1.0)
