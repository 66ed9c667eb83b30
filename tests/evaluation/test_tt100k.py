"""The TT100K protocol (tt100k_metrics) against a line-by-line Python 3 transcription of the official
``anno_func.eval_annos`` (Tsinghua-Tencent 100K code, asyncbridge/tsinghua-tencent-100k), on random and hand-made cases."""
import math

import pytest
import torch

from course_lib.evaluation import TT100K_SIZE_RANGES, iou_greedy_match, tt100k_metrics


def _iou(a, b):
    cross = [max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])]
    cross[2], cross[3] = max(cross[2], cross[0]), max(cross[3], cross[1])
    area = lambda r: max(0.0, (r[2] - r[0]) * (r[3] - r[1]))  # noqa: E731
    ac = area(cross)
    return ac / (area(a) + area(b) - ac)


def official_eval(gts, dets, iou, minscore, minboxsize, maxboxsize, types=None):
    """eval_annos with match_same=True, check_type=True; gts/dets: per image lists of (box, label[, score])."""
    ac_n = ac_c = rc_n = 0
    for objs_g, objs_r in zip(gts, dets):
        match_g, match_r = [-1] * len(objs_g), [-1] * len(objs_r)
        if types is not None:
            match_g = [-2 if g[1] not in types else m for g, m in zip(objs_g, match_g)]
            match_r = [-2 if r[1] not in types else m for r, m in zip(objs_r, match_r)]
        match_r = [-2 if r[2] < minscore else m for r, m in zip(objs_r, match_r)]
        matches = []
        for i, g in enumerate(objs_g):
            for j, r in enumerate(objs_r):
                if match_g[i] == -2 or match_r[j] == -2 or g[1] != r[1]:
                    continue
                t = _iou(g[0], r[0])
                if t > iou:
                    matches.append((t, i, j))
        for t, i, j in sorted(matches, key=lambda x: -x[0]):
            if match_g[i] == -1 and match_r[j] == -1:
                match_g[i], match_r[j] = j, i
        long = lambda b: max(b[2] - b[0], b[3] - b[1])  # noqa: E731
        for i, g in enumerate(objs_g):
            if not (minboxsize <= long(g[0]) < maxboxsize):
                if match_g[i] >= 0:
                    match_r[match_g[i]] = -2
                match_g[i] = -2
        for j, r in enumerate(objs_r):
            if match_r[j] == -1 and not (minboxsize <= long(r[0]) < maxboxsize):
                match_r[j] = -2
        tt = sum(1 for m in match_r if m >= 0)
        rc_n += len(objs_g) - match_g.count(-2)
        ac_n += len(objs_r) - match_r.count(-2)
        ac_c += tt
    return (ac_c / ac_n if ac_n else math.nan), (ac_c / rc_n if rc_n else math.nan)


def _random_case(seed, num_images=6):
    g = torch.Generator().manual_seed(seed)
    gts, dets, targets, detections = [], [], [], []
    for image_id in range(num_images):
        n = int(torch.randint(0, 6, (1,), generator=g))
        xy = torch.rand(n, 2, generator=g) * 300
        wh = torch.rand(n, 2, generator=g) * 140 + 4
        boxes = torch.cat([xy, xy + wh], 1).round()
        labels = torch.randint(1, 4, (n,), generator=g)
        # detections: jittered copies (some relabelled), duplicates and random boxes
        k = int(torch.randint(0, 4, (1,), generator=g))
        jitter = boxes + torch.randn(n, 4, generator=g) * 6
        dup = boxes[:k] + torch.randn(min(k, n), 4, generator=g) * 3
        xy2 = torch.rand(3, 2, generator=g) * 300
        rnd = torch.cat([xy2, xy2 + torch.rand(3, 2, generator=g) * 100 + 2], 1)
        dboxes = torch.cat([jitter, dup, rnd]).round()  # rounding makes exact IoU ties happen
        dboxes[:, 2:] = torch.maximum(dboxes[:, 2:], dboxes[:, :2] + 1)
        dlabels = torch.cat([labels, labels[:k], torch.randint(1, 4, (3,), generator=g)])
        flip = torch.rand(len(dlabels), generator=g) < 0.15
        dlabels[flip] = torch.randint(1, 4, (int(flip.sum()),), generator=g)
        scores = (torch.rand(len(dboxes), generator=g) * 100).round() / 100
        targets.append({"image_id": image_id, "boxes": boxes, "labels": labels})
        detections.append({"image_id": image_id, "boxes": dboxes, "labels": dlabels, "scores": scores})
        gts.append([(b.tolist(), int(c)) for b, c in zip(boxes, labels)])
        dets.append([(b.tolist(), int(c), float(s)) for b, c, s in zip(dboxes, dlabels, scores)])
    return gts, dets, targets, detections


@pytest.mark.parametrize("seed", range(6))
def test_equals_the_official_script(seed):
    gts, dets, targets, detections = _random_case(seed)
    for iou, minscore, types in ((0.5, 0.4, None), (0.3, 0.0, None), (0.5, 0.2, {1, 3})):
        ours = tt100k_metrics(targets, detections, iou_threshold=iou, score_threshold=minscore, types=types)
        for name, (low, high) in TT100K_SIZE_RANGES.items():
            acc, rec = official_eval(gts, dets, iou, minscore, low, high, types)
            for got, want in ((ours[name]["accuracy"], acc), (ours[name]["recall"], rec)):
                assert (math.isnan(got) and math.isnan(want)) or got == pytest.approx(want, abs=1e-12), (name, iou)


def test_hand_made_long_side_and_strict_iou():
    # one 40 x 10 object: area 400 < 32^2 (small by area) but long side 40 -> "medium" in TT100K's buckets
    targets = [{"image_id": 0, "boxes": torch.tensor([[0.0, 0, 40, 10]]), "labels": torch.tensor([1])}]
    exact = [{"image_id": 0, "boxes": torch.tensor([[0.0, 0, 40, 10]]), "labels": torch.tensor([1]),
              "scores": torch.tensor([0.9])}]
    out = tt100k_metrics(targets, exact)
    assert out["medium"]["tp"] == 1 and out["small"]["num_gt"] == 0 and out["all"]["f1"] == 1.0
    # IoU exactly 0.5 does not match (the script's `tiou > iou`): the detection is a false positive, the object a miss
    half = [{"image_id": 0, "boxes": torch.tensor([[0.0, 0, 20, 10]]), "labels": torch.tensor([1]),
             "scores": torch.tensor([0.9])}]
    out = tt100k_metrics(targets, half)
    assert out["all"]["tp"] == 0 and out["all"]["num_det"] == 1 and out["small"]["num_det"] == 1  # its own long side 20
    # below the score threshold: dropped, nothing counted
    out = tt100k_metrics(targets, exact, score_threshold=0.95)
    assert out["all"]["num_det"] == 0 and math.isnan(out["all"]["accuracy"]) and out["all"]["recall"] == 0.0


def test_iou_greedy_match_takes_best_iou_first_not_best_score():
    # gt 0 overlaps det 0 (0.6) and det 1 (0.9); gt 1 only det 0 (0.7): greedy by IoU gives 0-1, 1-0
    iou = torch.tensor([[0.6, 0.9], [0.7, 0.0]], dtype=torch.float64)
    assert iou_greedy_match(iou, iou > 0.5).tolist() == [1, 0]
    assert iou_greedy_match(torch.zeros(0, 3), torch.zeros(0, 3, dtype=torch.bool)).tolist() == []
    tie = torch.full((2, 2), 0.8, dtype=torch.float64)  # exact ties: gt-major enumeration order, as the script
    assert iou_greedy_match(tie, tie > 0.5).tolist() == [0, 1]
