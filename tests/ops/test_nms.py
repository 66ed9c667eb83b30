"""course_lib.ops.nms / batched_nms == torchvision's, index for index, on random and adversarial inputs."""
import importlib

import pytest
import torch
import torchvision.ops as tv

from course_lib import ops

nms_module = importlib.import_module("course_lib.ops.nms")  # the module (ops.nms is the function)

THRESHOLDS = (0.0, 0.3, 0.5, 0.7, 1.0)


def textbook_nms(boxes, scores, iou_threshold):
    """The lecture's greedy loop, box by box: the specification both implementations follow."""
    order = sorted(range(len(scores)), key=lambda i: -float(scores[i]))  # Python's sort is stable
    iou = tv.box_iou(boxes, boxes).double()  # compared with the threshold in double, like torchvision
    keep = []
    for i in order:
        if all(not bool(iou[k, i] > iou_threshold) for k in keep):
            keep.append(i)
    return torch.tensor(keep, dtype=torch.int64)


def per_class_reference(boxes, scores, idxs, iou_threshold):
    """batched_nms by definition: torchvision's nms class by class, then by decreasing score
    (ties: lower index first, like torchvision's nms)."""
    kept = [torch.where(idxs == c)[0][tv.nms(boxes[idxs == c], scores[idxs == c], iou_threshold)] for c in idxs.unique()]
    kept = torch.cat(kept) if kept else torch.zeros(0, dtype=torch.int64)
    kept = kept.sort().values
    return kept[scores[kept].sort(descending=True, stable=True).indices]


def random_scores(n, seed, tied):
    g = torch.Generator().manual_seed(seed + 7)
    scores = torch.rand(n, generator=g)
    return (scores * 10).round() / 10 if tied else scores  # tied: only 11 distinct values


@pytest.mark.parametrize("seed", range(20))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_nms_equals_torchvision(seed, dtype, random_boxes):
    for n in (0, 1, 2, 37, 300):  # 300 spans several blocks
        grid = 1.0 if seed % 4 == 0 else None  # integer coordinates: many exactly equal IoUs
        boxes = random_boxes(n, seed * 31 + n, dtype, grid=grid)
        scores = random_scores(n, seed, tied=seed % 2 == 0).to(dtype)
        for threshold in THRESHOLDS:
            keep = ops.nms(boxes, scores, threshold)
            assert keep.dtype == torch.int64
            assert torch.equal(keep, tv.nms(boxes, scores, threshold)), (n, threshold)


@pytest.mark.parametrize("seed", range(3))
def test_nms_equals_the_textbook_loop(seed, random_boxes):
    boxes = random_boxes(120, seed, grid=2.0)
    scores = random_scores(120, seed, tied=True)
    for threshold in (0.2, 0.5):
        assert torch.equal(ops.nms(boxes, scores, threshold), textbook_nms(boxes, scores, threshold))


def clustered(n, seed, dtype=torch.float32):
    """Detector-like output: many jittered boxes around a few objects (long suppression lists)."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.rand(20, 2, generator=g) * 600
    sizes = torch.rand(20, 2, generator=g) * 150 + 20
    k = torch.randint(0, 20, (n,), generator=g)
    ctr = centres[k] + torch.randn(n, 2, generator=g) * sizes[k] * 0.1
    wh = sizes[k] * (1 + 0.1 * torch.randn(n, 2, generator=g)).clamp(min=0.2)
    return torch.cat([ctr - wh / 2, ctr + wh / 2], 1).to(dtype), torch.rand(n, generator=g).to(dtype)


@pytest.mark.parametrize("seed", range(4))
def test_nms_many_boxes_equals_torchvision(seed):
    # 3000 boxes: many blocks, and the kept boxes are compared with later ones in several chunks
    boxes, scores = clustered(3000, seed, torch.float64 if seed % 2 else torch.float32)
    for threshold in (0.5, 0.7):
        assert torch.equal(ops.nms(boxes, scores, threshold), tv.nms(boxes, scores, threshold))


def test_long_suppression_chain_falls_back_to_the_loop(monkeypatch):
    # box k overlaps only box k + 1 (IoU 6/14); scores decrease -> keep every other box
    n = 700
    x = torch.arange(n, dtype=torch.float32) * 4
    boxes = torch.stack([x, torch.zeros(n), x + 10, torch.full((n,), 10.0)], dim=1)
    scores = torch.linspace(1, 0, n)
    calls = []
    loop = nms_module._greedy_loop
    monkeypatch.setattr(nms_module, "_greedy_loop", lambda over: calls.append(1) or loop(over))
    keep = ops.nms(boxes, scores, 0.4)
    assert calls, "a chain through a whole block needs more than MAX_ROUNDS rounds: the loop takes over"
    assert torch.equal(keep, tv.nms(boxes, scores, 0.4))
    assert torch.equal(keep, torch.arange(0, n, 2))


def test_threshold_is_compared_like_torchvision_in_double():
    # an IoU that is exactly a float32 value v; threshold slightly below v in double precision.
    # torchvision: v > threshold -> suppressed. A float32 comparison would round the threshold up
    # to v and keep the box.
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 7.3]])
    iou = float(tv.box_iou(boxes[:1], boxes[1:]))  # float32 0.73 -> as a double
    scores = torch.tensor([1.0, 0.5])
    for threshold in (iou, iou - 1e-12, iou + 1e-12):
        expected = tv.nms(boxes, scores, threshold)
        assert torch.equal(ops.nms(boxes, scores, threshold), expected), threshold
    assert tv.nms(boxes, scores, iou - 1e-12).tolist() == [0]
    for t in (0.3, 0.5, 0.7, 0.1, 1 / 3):
        t32 = nms_module._threshold(t, torch.float32, torch.device("cpu"))
        assert float(t32) <= t < float(torch.nextafter(t32, torch.tensor(1.0)))


def test_degenerate_and_special_inputs():
    empty = torch.zeros(0, 4)
    assert ops.nms(empty, torch.zeros(0), 0.5).shape == (0,)
    assert ops.nms(empty, torch.zeros(0), 0.5).dtype == torch.int64
    assert ops.batched_nms(empty, torch.zeros(0), torch.zeros(0, dtype=torch.int64), 0.5).shape == (0,)
    # zero-area boxes are valid and never suppress (IoU 0 or 0/0)
    flat = torch.tensor([[1.0, 1.0, 1.0, 5.0], [1.0, 1.0, 1.0, 5.0], [0.0, 0.0, 4.0, 4.0], [2.0, 2.0, 2.0, 2.0]])
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6])
    for threshold in THRESHOLDS:
        assert torch.equal(ops.nms(flat, scores, threshold), tv.nms(flat, scores, threshold))
    # identical boxes with identical scores: the lowest index survives
    same = torch.tensor([[0.0, 0.0, 10.0, 10.0]] * 5)
    assert ops.nms(same, torch.ones(5), 0.5).tolist() == [0]
    # threshold 1: nothing is suppressed (IoU is never > 1); half-precision boxes work too
    boxes, s = clustered(50, 0)
    assert ops.nms(boxes, s, 1.0).sort().values.tolist() == list(range(50))
    assert torch.equal(ops.nms(boxes.half(), s.half(), 0.5), ops.nms(boxes.half().float(), s.half().float(), 0.5))


@pytest.mark.parametrize("seed", range(20))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_batched_nms_equals_per_class_nms(seed, dtype, random_boxes):
    g = torch.Generator().manual_seed(seed)
    for n, classes in ((0, 3), (1, 1), (40, 3), (300, 30), (700, 2)):
        boxes = random_boxes(n, seed * 13 + n, dtype, grid=1.0 if seed % 3 == 0 else None)
        scores = random_scores(n, seed, tied=seed % 2 == 1).to(dtype)
        idxs = torch.randint(0, classes, (n,), generator=g) * (7 if seed % 5 == 0 else 1)  # also sparse ids
        for threshold in (0.0, 0.6) if seed % 2 else (0.5, 0.7):
            keep = ops.batched_nms(boxes, scores, idxs, threshold)
            assert torch.equal(keep, per_class_reference(boxes, scores, idxs, threshold)), (n, classes, threshold)


@pytest.mark.parametrize("seed", range(10))
def test_batched_nms_equals_torchvision_when_its_offsets_are_exact(seed):
    # coordinates on a 1/8-pixel grid: torchvision's class offsets are then exact in float32,
    # so its coordinate trick (<= 1000 boxes on the CPU) decides exactly like per-class NMS
    boxes, scores = clustered(800, seed)
    boxes = (boxes * 8).round() / 8
    scores = (scores * 20).round() / 20  # ties across and within classes
    idxs = torch.randint(0, 80, (800,), generator=torch.Generator().manual_seed(seed))
    for threshold in (0.5, 0.7):
        assert torch.equal(ops.batched_nms(boxes, scores, idxs, threshold), tv.batched_nms(boxes, scores, idxs, threshold))
    # several images per batch as categories (torchvision's RPN uses levels the same way)
    image = torch.arange(800) % 2
    assert torch.equal(ops.batched_nms(boxes, scores, image, 0.7), tv.batched_nms(boxes, scores, image, 0.7))


def test_bad_input_raises_clear_errors():
    boxes, scores = torch.rand(10, 4), torch.rand(10)
    boxes[:, 2:] += boxes[:, :2]
    with pytest.raises(ValueError, match=r"nms: boxes must have shape \[N, 4\] \(x1, y1, x2, y2\), got \[10, 5\]"):
        ops.nms(torch.rand(10, 5), scores, 0.5)
    with pytest.raises(ValueError, match=r"nms: scores must have shape \[N\] = \[10\] \(one per box\), got \[9\]"):
        ops.nms(boxes, scores[:9], 0.5)
    with pytest.raises(ValueError, match=r"nms: scores must have shape \[N\] = \[10\].*got \[10, 1\]"):
        ops.nms(boxes, scores[:, None], 0.5)
    inverted = boxes.clone()
    inverted[3] = torch.tensor([5.0, 5.0, 1.0, 9.0])
    with pytest.raises(ValueError, match=r"nms: boxes must be finite .* x2 >= x1 .*box 3 is \[5.0, 5.0, 1.0, 9.0\]"):
        ops.nms(inverted, scores, 0.5)
    nan = boxes.clone()
    nan[7, 1] = float("nan")
    with pytest.raises(ValueError, match=r"batched_nms: boxes must be finite.*box 7"):
        ops.batched_nms(nan, scores, torch.zeros(10, dtype=torch.int64), 0.5)
    inf = boxes.clone()
    inf[2, 2] = float("inf")
    with pytest.raises(ValueError, match=r"box 2"):
        ops.nms(inf, scores, 0.5)
    with pytest.raises(ValueError, match=r"nms: scores contain NaN \(box 4\)"):
        ops.nms(boxes, scores.index_fill(0, torch.tensor([4]), float("nan")), 0.5)
    with pytest.raises(ValueError, match=r"nms: boxes must be floating point, got torch.int64"):
        ops.nms(boxes.long(), scores, 0.5)
    with pytest.raises(ValueError, match=r"nms: iou_threshold must be >= 0.*got -0.1"):
        ops.nms(boxes, scores, -0.1)
    with pytest.raises(ValueError, match=r"batched_nms: idxs must have shape \[N\] = \[10\] \(one category per box\), got \[3\]"):
        ops.batched_nms(boxes, scores, torch.zeros(3, dtype=torch.int64), 0.5)
    with pytest.raises(ValueError, match=r"batched_nms: idxs must hold integer category ids, got torch.float32"):
        ops.batched_nms(boxes, scores, torch.zeros(10), 0.5)
