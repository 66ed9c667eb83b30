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


def test_batched_nms_all_classes_side_by_side_and_its_fallbacks(monkeypatch):
    """Above the switch, all classes' IoU matrices at once ([G, M, M]); a chain longer than MAX_ROUNDS
    or matrices over SIDE_BY_SIDE numbers go to the block algorithm. Same indices as torchvision's."""
    n = 1200  # two interleaved chains: box k overlaps only box k + 2 of its class (IoU 6/14)
    x = torch.arange(n, dtype=torch.float32) // 2 * 4
    boxes = torch.stack([x, torch.zeros(n), x + 10, torch.full((n,), 10.0)], dim=1)
    scores, idxs = torch.linspace(1, 0, n), torch.arange(n) % 2
    sides = []
    side_by_side = nms_module._greedy_nms_side_by_side
    monkeypatch.setattr(nms_module, "_greedy_nms_side_by_side", lambda *a: sides.append(side_by_side(*a)) or sides[-1])
    assert torch.equal(ops.batched_nms(boxes, scores, idxs, 0.4), tv.batched_nms(boxes, scores, idxs, 0.4))
    assert sides[-1] is None  # 600 links: more than MAX_ROUNDS rounds
    g = torch.Generator().manual_seed(3)
    boxes = torch.rand(n, 4, generator=g) * 100
    boxes[:, 2:] += boxes[:, :2]
    idxs, scores = torch.randint(0, 80, (n,), generator=g), torch.rand(n, generator=g)
    for limit in (nms_module.SIDE_BY_SIDE, 0):
        monkeypatch.setattr(nms_module, "SIDE_BY_SIDE", limit)
        assert torch.equal(ops.batched_nms(boxes, scores, idxs, 0.5), tv.batched_nms(boxes, scores, idxs, 0.5))
        assert (sides[-1] is None) == (limit == 0)


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


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def stable_order(keep, scores):
    """``keep`` by decreasing score, equal scores by index: what an index-order tie rule would give."""
    keep = keep.sort().values
    return keep[scores[keep].sort(descending=True, stable=True).indices]


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_batched_nms_equals_torchvision_index_for_index(seed, dtype, random_boxes):
    """Both of torchvision's strategies: the coordinate trick up to 1000 boxes on the CPU (4000 numbers),
    per class above; scores with only 11 distinct values on odd seeds, so most kept boxes tie."""
    g = torch.Generator().manual_seed(seed)
    for n, classes in ((1, 1), (40, 3), (300, 30), (1000, 5), (1001, 5), (1500, 30), (2500, 2)):
        boxes = random_boxes(n, seed * 13 + n, dtype, grid=1.0 if seed % 3 == 0 else None)
        scores = random_scores(n, seed, tied=seed % 2 == 1).to(dtype)
        idxs = torch.randint(0, classes, (n,), generator=g) * (7 if seed % 5 == 0 else 1)  # also sparse ids
        for threshold in (0.0, 0.6) if seed % 2 else (0.5, 0.7):
            keep = ops.batched_nms(boxes, scores, idxs, threshold)
            assert keep.dtype == torch.int64
            assert torch.equal(keep, tv.batched_nms(boxes, scores, idxs, threshold)), (n, classes, threshold)


@pytest.mark.parametrize("device", DEVICES)
def test_batched_nms_orders_exact_ties_like_torchvision_on_both_sides_of_its_switch(device):
    """Detector-like ties (a blank image: many boxes, a handful of score values). Not vacuous: above the
    switch torchvision's order among ties is *not* the index order, below it is."""
    limit = nms_module.VANILLA_ABOVE.get(device, nms_module.VANILLA_ABOVE_OTHER) // 4  # boxes
    for n in (limit - 1, limit, limit + 1, limit + 700):
        boxes, scores = clustered(n, seed=n)
        scores = (scores * 4).round() / 4  # 5 score values
        idxs = torch.randint(0, 3, (n,), generator=torch.Generator().manual_seed(n))
        boxes, scores, idxs = boxes.to(device), scores.to(device), idxs.to(device)
        keep = ops.batched_nms(boxes, scores, idxs, 0.5)
        assert torch.equal(keep, tv.batched_nms(boxes, scores, idxs, 0.5)), n
        assert len(keep) > 100 and scores[keep].unique().numel() <= 5  # many kept boxes, all in a few ties
        if n <= limit:
            assert torch.equal(keep, stable_order(keep, scores)), n
        elif device == "cpu":
            assert not torch.equal(keep, stable_order(keep, scores)), n


@pytest.mark.parametrize("n", [7, 1001, 1400])
def test_batched_nms_one_class_and_identical_boxes(n):
    g = torch.Generator().manual_seed(n)
    boxes, scores = clustered(n, seed=n)
    one_class = torch.zeros(n, dtype=torch.int64)
    tied = (scores * 3).round() / 3
    for s in (scores, tied):
        assert torch.equal(ops.batched_nms(boxes, s, one_class, 0.5), tv.batched_nms(boxes, s, one_class, 0.5))
        assert torch.equal(ops.batched_nms(boxes, s, one_class + 5, 0.5), tv.batched_nms(boxes, s, one_class + 5, 0.5))
    same = torch.tensor([[3.0, 4.0, 30.0, 40.0]]).expand(n, 4).contiguous()
    idxs = torch.randint(0, 4, (n,), generator=g)
    for s in (torch.ones(n), tied):
        for threshold in (0.5, 1.0):  # 1.0: IoU 1 is not > 1, nothing is suppressed
            keep = ops.batched_nms(same, s, idxs, threshold)
            assert torch.equal(keep, tv.batched_nms(same, s, idxs, threshold)), (threshold, s[:3])
    # all identical, one score: the lowest index of each class survives
    keep = ops.batched_nms(same, torch.ones(n), idxs, 0.5)
    assert sorted(keep.tolist()) == sorted(int(torch.where(idxs == c)[0][0]) for c in idxs.unique())


def test_batched_nms_of_empty_inputs():
    for boxes, scores, idxs in ((torch.empty((0,)), torch.empty((0,)), torch.empty((0,), dtype=torch.int64)),
                                (torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.int64))):
        keep, ref = ops.batched_nms(boxes, scores, idxs, 0.5), tv.batched_nms(boxes, scores, idxs, 0.5)
        assert keep.shape == ref.shape == (0,) and keep.dtype == ref.dtype == torch.int64
    with pytest.raises(ValueError, match=r"batched_nms: boxes are empty, so scores must be empty too, got \[3\]"):
        ops.batched_nms(torch.zeros(0, 4), torch.zeros(3), torch.zeros(0, dtype=torch.int64), 0.5)


def test_batched_nms_of_empty_boxes_and_none_like_torchvision():
    """torchvision's own test_batched_nms_implementations calls batched_nms(empty, None, None, None)."""
    for boxes in (torch.empty((0,)), torch.zeros(0, 4), torch.zeros(0, 4, dtype=torch.float64)):
        keep, ref = ops.batched_nms(boxes, None, None, None), tv.batched_nms(boxes, None, None, None)
        assert keep.shape == ref.shape == (0,) and keep.dtype == ref.dtype == torch.int64
        assert keep.device == ref.device == boxes.device


def test_batched_nms_rounds_shifted_coordinates_like_torchvision():
    """Up to 1000 boxes torchvision shifts class 300's boxes by 300 * 56.2 px; in float32 that rounds the
    coordinates and turns this IoU of 0.50002 into one <= 0.5: torchvision keeps both boxes, exact NMS one."""
    boxes = torch.tensor([[32.08372497558594, 22.209665298461914, 51.252891540527344, 55.203697204589844],
                          [27.64337921142578, 25.929927825927734, 46.94606399536133, 50.945457458496094]])
    scores, idxs = torch.tensor([0.9, 0.8]), torch.tensor([300, 300])
    assert ops.nms(boxes, scores, 0.5).tolist() == [0]  # the exact answer
    assert ops.batched_nms(boxes, scores, idxs, 0.5).tolist() == tv.batched_nms(boxes, scores, idxs, 0.5).tolist() == [0, 1]


@pytest.mark.parametrize("seed", range(4))
def test_batched_nms_per_class_strategy_is_exact_nms_within_each_class(seed):
    """Above the switch the kept set is exactly per-class NMS (no shifted, rounded coordinates)."""
    n = 1200
    boxes, scores = clustered(n, seed)
    idxs = torch.randint(0, 80, (n,), generator=torch.Generator().manual_seed(seed))
    keep = ops.batched_nms(boxes, scores, idxs, 0.5)
    reference = per_class_reference(boxes, scores, idxs, 0.5)
    assert torch.equal(keep.sort().values, reference.sort().values)
    assert torch.equal(scores[keep], scores[reference])


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


def test_batched_nms_signed_zero_scores_tie_like_torchvision():
    """Above the switch, distinct scores are ordered without a second sort; 0.0 and -0.0 compare equal, so a
    pair of them is a tie and must come out in the order of torchvision's (unstable) sort, not by index."""
    n = 1200
    boxes, scores = clustered(n, seed=5)
    scores[::2] = 0.0
    scores[1::2] = -0.0  # all 1200 scores tie; the same value with two signs
    idxs = torch.randint(0, 80, (n,), generator=torch.Generator().manual_seed(5))
    keep = ops.batched_nms(boxes, scores, idxs, 0.5)
    assert torch.equal(keep, tv.batched_nms(boxes, scores, idxs, 0.5))
    scores = torch.randperm(n, generator=torch.Generator().manual_seed(6)).float() - n / 2  # distinct, one is 0
    scores[scores == 0] = -0.0
    assert torch.equal(ops.batched_nms(boxes, scores, idxs, 0.5), tv.batched_nms(boxes, scores, idxs, 0.5))
