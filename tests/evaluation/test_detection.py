"""COCO AP/AR through pycocotools, proposal recall, greedy matching and the EFPN metrics."""
import json
import math

import pytest
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from course_lib.evaluation import ap50_by_size, coco_evaluate, efpn_metrics, evaluate_detector, greedy_match, proposal_recall
from course_lib.ops import box_iou

# Category ids 3 and 7 (not contiguous): the model's labels 0 and 1 map to them.
LABEL_TO_CAT = {0: 3, 1: 7}
GT = {  # image_id: [(x1, y1, x2, y2, label)], small (< 32^2), medium and large boxes
    1: [(10, 10, 30, 28, 0), (50, 40, 110, 90, 1), (120, 20, 300, 200, 0)],
    2: [(5, 5, 25, 25, 1), (200, 200, 260, 250, 1)],
    3: [(0, 0, 150, 120, 1), (160, 130, 180, 150, 0)],
}


@pytest.fixture
def coco_file(tmp_path):
    anns = []
    for image_id, objs in GT.items():
        for x1, y1, x2, y2, label in objs:
            anns.append({"id": len(anns) + 1, "image_id": image_id, "category_id": LABEL_TO_CAT[label],
                         "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1), "iscrowd": 0})
    data = {"images": [{"id": i, "width": 320, "height": 320, "file_name": f"{i}.png"} for i in GT],
            "annotations": anns, "categories": [{"id": 3, "name": "sign"}, {"id": 7, "name": "car"}]}
    path = tmp_path / "instances_val.json"
    path.write_text(json.dumps(data))
    return path


def gt_as_detections(shift=0.0, drop=()):
    dets = []
    for image_id, objs in GT.items():
        keep = [o for k, o in enumerate(objs) if (image_id, k) not in drop]
        boxes = torch.tensor([o[:4] for o in keep], dtype=torch.float32).reshape(-1, 4) + shift
        dets.append({"image_id": image_id, "boxes": boxes, "scores": torch.linspace(0.9, 0.5, len(keep)),
                     "labels": torch.tensor([o[4] for o in keep], dtype=torch.int64)})
    return dets


def test_ground_truth_as_detections_scores_one(coco_file, capsys):
    m = coco_evaluate(str(coco_file), gt_as_detections(), label_to_cat_id=LABEL_TO_CAT)
    assert capsys.readouterr().out == "", "pycocotools printed although verbose=False"
    for key in ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR100", "ARs", "ARm", "ARl"):
        assert m[key] == pytest.approx(1.0), key
    assert m["AR1"] < 1.0  # image 1 holds two objects of class 0: one detection per image cannot get both


def test_shifted_then_dropped_boxes_score_less(coco_file):
    coco = COCO(str(coco_file))
    perfect = coco_evaluate(coco, gt_as_detections(), label_to_cat_id=LABEL_TO_CAT)["AP"]
    shifted = coco_evaluate(coco, gt_as_detections(shift=3.0), label_to_cat_id=LABEL_TO_CAT)
    dropped = coco_evaluate(coco, gt_as_detections(shift=3.0, drop={(1, 0), (2, 1)}), label_to_cat_id=LABEL_TO_CAT)
    assert perfect == 1.0 > shifted["AP"] > dropped["AP"] > 0
    assert shifted["AP50"] == pytest.approx(1.0)  # a 3-pixel shift still overlaps > 0.5
    assert dropped["AR100"] < shifted["AR100"]


def test_ap50_by_size_is_cocos_ap50_over_each_size_range(coco_file):
    """The small objects are (1, 0), (2, 0), (3, 1); the medium ones (1, 1), (2, 1); the large ones (1, 2), (3, 0)."""
    coco = COCO(str(coco_file))
    small, medium = {(1, 0), (2, 0), (3, 1)}, {(1, 1), (2, 1)}
    for drop, expected in ((small, (0.0, 1.0, 1.0)), (medium, (1.0, 0.0, 1.0)), ((), (1.0, 1.0, 1.0))):
        dets = gt_as_detections(drop=drop)
        m = ap50_by_size(coco, dets, label_to_cat_id=LABEL_TO_CAT)
        assert (m["AP50s"], m["AP50m"], m["AP50l"]) == pytest.approx(expected), drop
        assert m["AP50"] == coco_evaluate(coco, dets, label_to_cat_id=LABEL_TO_CAT)["AP50"]
    # 7 px off: the 20-px boxes drop below IoU 0.5, the others stay above it (AP, not AP50, would fall for all)
    loose = ap50_by_size(coco, gt_as_detections(shift=7.0), label_to_cat_id=LABEL_TO_CAT)
    assert loose["AP50s"] == 0.0 and (loose["AP50m"], loose["AP50l"]) == pytest.approx((1.0, 1.0))
    only_2 = ap50_by_size(coco, gt_as_detections(), label_to_cat_id=LABEL_TO_CAT, img_ids=[2])
    assert math.isnan(only_2["AP50l"]) and only_2["AP50s"] == pytest.approx(1.0)  # image 2 has no large object
    assert ap50_by_size(coco, []) == {"AP50": 0.0, "AP50s": 0.0, "AP50m": 0.0, "AP50l": 0.0}


def test_zero_detections_give_zeros(coco_file):
    none = coco_evaluate(coco_file, [])
    empty = coco_evaluate(coco_file, [{"image_id": 1, "boxes": torch.zeros(0, 4), "scores": torch.zeros(0),
                                       "labels": torch.zeros(0, dtype=torch.int64)}])
    assert none == empty
    assert set(none) == {"AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl"}
    assert all(v == 0.0 for v in none.values())


def test_bad_input_is_named(coco_file, tmp_path):
    with pytest.raises(ValueError, match=r"category ids \[0, 1\].*label_to_cat_id"):
        coco_evaluate(coco_file, gt_as_detections())
    bad = gt_as_detections()
    bad[0]["image_id"] = 42
    with pytest.raises(ValueError, match="image ids \\[42\\]"):
        coco_evaluate(coco_file, bad, label_to_cat_id=LABEL_TO_CAT)
    with pytest.raises(FileNotFoundError, match="missing.json.*make_synthetic"):
        coco_evaluate(tmp_path / "missing.json", [])


def test_proposal_recall():
    gt = [torch.tensor([[0.0, 0, 100, 100], [200, 200, 240, 260]]), torch.tensor([[10.0, 10, 60, 40]])]
    assert proposal_recall(gt, [g.clone() for g in gt])["AR@1000"] == pytest.approx(1.0)
    # Shifting a 100x100 box by 16 px gives IoU 84/116 = 0.724: recalled at thresholds
    # 0.50 ... 0.70 (5 of 10), missed above; the other two boxes are exact.
    props = [gt[0] + torch.tensor([[16.0, 0, 16, 0], [0, 0, 0, 0]]), gt[1].clone()]
    r = proposal_recall(gt, props)
    assert r["recall"] == pytest.approx([1.0] * 5 + [2 / 3] * 5)
    assert r["AR@1000"] == pytest.approx((5 * 1.0 + 5 * 2 / 3) / 10)
    assert r["ARl@1000"] == pytest.approx(0.5)  # the 100x100 box: 5 thresholds of 10
    # AR@k counts only the first k proposals (in objectness order).
    junk_first = [torch.cat([torch.tensor([[500.0, 500, 510, 510]]), gt[0]]), gt[1]]
    # Image 0 gets [junk, box 0, box 1], image 1 its exact box.
    assert proposal_recall(gt, junk_first, k=1)["AR@1"] == pytest.approx(1 / 3)
    assert proposal_recall(gt, junk_first, k=2)["AR@2"] == pytest.approx(2 / 3)
    assert proposal_recall(gt, junk_first, k=3)["AR@3"] == pytest.approx(1.0)
    assert proposal_recall(gt, [torch.zeros(0, 4), torch.zeros(0, 4)])["AR@1000"] == 0.0


def random_scene(g, num_gt=8, num_det=30, num_classes=2):
    xy = torch.rand(num_gt, 2, generator=g) * 200
    gt = torch.cat([xy, xy + 10 + torch.rand(num_gt, 2, generator=g) * 80], 1)
    # Many jittered copies per object: several detections compete for the same ground truth.
    src = torch.randint(0, num_gt, (num_det,), generator=g)
    wh = (gt[src, 2:] - gt[src, :2]).repeat(1, 2)
    det = gt[src] + torch.randn(num_det, 4, generator=g) * 0.15 * wh
    det = torch.cat([det[:, :2], torch.maximum(det[:, 2:], det[:, :2] + 1)], 1)
    return (gt, torch.randint(0, num_classes, (num_gt,), generator=g),
            det, torch.rand(num_det, generator=g), torch.randint(0, num_classes, (num_det,), generator=g))


def test_greedy_match_equals_cocoeval_matching():
    g = torch.Generator().manual_seed(0)
    images, anns, results = [], [], []
    for image_id in range(1, 13):
        gt, _, det, scores, _ = random_scene(g)
        images.append({"id": image_id})
        for b in gt.tolist():
            anns.append({"id": len(anns) + 1, "image_id": image_id, "category_id": 1, "iscrowd": 0,
                         "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]], "area": (b[2] - b[0]) * (b[3] - b[1])})
        results.append((image_id, gt, det, scores))
    coco = COCO()
    coco.dataset = {"images": images, "annotations": anns, "categories": [{"id": 1}]}
    coco.createIndex()
    res = [{"image_id": i, "category_id": 1, "score": float(s), "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]]}
           for i, _, det, scores in results for b, s in zip(det.tolist(), scores)]
    ev = COCOeval(coco, coco.loadRes(res), "bbox")
    ev.params.iouThrs, ev.params.maxDets, ev.params.areaRng, ev.params.areaRngLbl = [0.5], [1000], [[0, 1e10]], ["all"]
    ev.evaluate()
    expected = {(e["image_id"], d, int(m)) for e in ev.evalImgs if e for d, m in zip(e["dtIds"], e["dtMatches"][0])}

    got, first_det_id, first_gt_id, contested = set(), 1, 1, 0
    for image_id, gt, det, scores in results:
        order = torch.sort(scores, descending=True, stable=True).indices
        iou = box_iou(det[order].double(), gt.double())
        match = greedy_match(iou, 0.5)
        contested += int((iou >= 0.5).any(1).sum() - (match >= 0).sum())
        for d, m in zip(order.tolist(), match.tolist()):
            got.add((image_id, first_det_id + d, first_gt_id + m if m >= 0 else 0))
        first_det_id, first_gt_id = first_det_id + len(det), first_gt_id + len(gt)
    assert contested > 10, "the random scenes should make detections compete for ground truth"
    assert got == expected


def test_efpn_metrics_tp_count_equals_cocoeval_with_classes():
    g = torch.Generator().manual_seed(1)
    targets, dets = [], []
    for image_id in range(6):
        gt, gl, det, scores, dl = random_scene(g)
        targets.append({"image_id": image_id, "boxes": gt, "labels": gl})
        dets.append({"image_id": image_id, "boxes": det, "scores": scores, "labels": dl})
    m = efpn_metrics(targets, dets, score_threshold=0.0)["all"]
    # Reference: count COCO matches per class with pycocotools' own loops.
    coco = COCO()
    coco.dataset = {"images": [{"id": t["image_id"]} for t in targets], "categories": [{"id": 0}, {"id": 1}],
                    "annotations": [{"id": 1000 * t["image_id"] + k + 1, "image_id": t["image_id"], "iscrowd": 0,
                                     "category_id": int(l), "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]],
                                     "area": (b[2] - b[0]) * (b[3] - b[1])}
                                    for t in targets for k, (b, l) in enumerate(zip(t["boxes"].tolist(), t["labels"]))]}
    coco.createIndex()
    res = [{"image_id": d["image_id"], "category_id": int(l), "score": float(s),
            "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]]}
           for d in dets for b, s, l in zip(d["boxes"].tolist(), d["scores"], d["labels"])]
    ev = COCOeval(coco, coco.loadRes(res), "bbox")
    ev.params.iouThrs, ev.params.maxDets, ev.params.areaRng, ev.params.areaRngLbl = [0.5], [1000], [[0, 1e10]], ["all"]
    ev.evaluate()
    tp = sum(int((e["dtMatches"][0] > 0).sum()) for e in ev.evalImgs if e)
    assert m["tp"] == tp and m["matched_gt"] == tp
    assert m["num_det"] == sum(len(d["boxes"]) for d in dets) and m["num_gt"] == 6 * 8


def hand_case():
    """One image, worked out by hand (sizes by area: small < 1024 <= medium < 9216 <= large).

    ground truth          area   label   outcome
      A (0,0,20,20)        400     0     matched by d1
      B (50,50,70,70)      400     0     missed (d3 has the wrong class)      -> FN small
      C (100,100,150,150) 2500     1     missed (d4 is below the threshold)   -> FN medium
      D (200,0,320,100)  12000     0     matched by d5
    detections (score)
      d1 = A, 0.9, label 0 -> TP small
      d2 = A + 1 px, 0.8, label 0 -> FP small (A is already taken: a duplicate)
      d3 = B, 0.9, label 1 -> FP small (wrong class)
      d4 = C, 0.3, label 1 -> not counted (score < 0.5)
      d5 = D, 0.7, label 0 -> TP large
      d6 (400,400,440,440), 0.6, label 0, area 1600 -> FP medium (nothing there)
    """
    gt = [{"image_id": 7, "boxes": torch.tensor([[0.0, 0, 20, 20], [50, 50, 70, 70], [100, 100, 150, 150],
                                                   [200, 0, 320, 100]]), "labels": torch.tensor([0, 0, 1, 0])}]
    det = [{"image_id": 7, "boxes": torch.tensor([[0.0, 0, 20, 20], [1, 1, 21, 21], [50, 50, 70, 70],
                                                    [100, 100, 150, 150], [200, 0, 320, 100], [400, 400, 440, 440]]),
            "scores": torch.tensor([0.9, 0.8, 0.9, 0.3, 0.7, 0.6]), "labels": torch.tensor([0, 0, 1, 1, 0, 0])}]
    return gt, det


def test_efpn_metrics_hand_made_case():
    m = efpn_metrics(*hand_case(), iou_threshold=0.5, score_threshold=0.5)
    s, md, lg, al = m["small"], m["medium"], m["large"], m["all"]
    assert (s["num_det"], s["tp"], s["fp"], s["num_gt"], s["matched_gt"], s["fn"]) == (3, 1, 2, 2, 1, 1)
    assert s["accuracy"] == pytest.approx(1 / 3) and s["recall"] == pytest.approx(1 / 2)
    assert s["f1"] == pytest.approx(2 * (1 / 3) * (1 / 2) / (1 / 3 + 1 / 2))  # = 0.4
    assert (md["num_det"], md["tp"], md["num_gt"], md["fn"]) == (1, 0, 1, 1)
    assert md["accuracy"] == 0 and md["recall"] == 0 and md["f1"] == 0
    assert (lg["accuracy"], lg["recall"], lg["f1"]) == (1.0, 1.0, 1.0)
    assert (al["num_det"], al["tp"], al["num_gt"], al["matched_gt"]) == (5, 2, 4, 2)
    assert al["f1"] == pytest.approx(2 * 0.4 * 0.5 / 0.9)


def test_efpn_metrics_threshold_class_agnostic_and_empty():
    gt, det = hand_case()
    low = efpn_metrics(gt, det, score_threshold=0.2)  # d4 now counts and finds C
    assert (low["medium"]["tp"], low["medium"]["num_det"], low["medium"]["recall"]) == (1, 2, 1.0)
    agnostic = efpn_metrics(gt, det, class_agnostic=True)  # d3 now finds B
    assert (agnostic["small"]["tp"], agnostic["small"]["recall"]) == (2, 1.0)
    none = efpn_metrics(gt, [])
    # no detection: accuracy has nothing to count (NaN), but every object is missed: recall 0 and F1 0, not NaN
    # (the harmonic mean with a zero); NaN only where there is neither a detection nor an object
    assert math.isnan(none["small"]["accuracy"]) and none["small"]["recall"] == 0 and none["small"]["f1"] == 0
    assert math.isnan(efpn_metrics([{"image_id": 1, "boxes": torch.zeros(0, 4), "labels": torch.zeros(0)}],
                                   [])["small"]["f1"])


def test_efpn_metrics_ignores_crowd_objects_and_detections_on_them():
    gt, det = hand_case()
    crowd_box = torch.tensor([[300.0, 300, 330, 330]])
    gt[0] = {"image_id": 7, "boxes": torch.cat([gt[0]["boxes"], crowd_box]),
             "labels": torch.cat([gt[0]["labels"], torch.tensor([0])]), "iscrowd": torch.tensor([0, 0, 0, 0, 1])}
    det[0] = {"image_id": 7, "boxes": torch.cat([det[0]["boxes"], crowd_box + 1]),
              "scores": torch.cat([det[0]["scores"], torch.tensor([0.95])]),
              "labels": torch.cat([det[0]["labels"], torch.tensor([0])])}
    assert efpn_metrics(gt, det) == efpn_metrics(*hand_case())  # neither a miss nor a false positive


def test_efpn_metrics_from_coco_file(coco_file):
    m = efpn_metrics(coco_file, gt_as_detections(shift=1.0), label_to_cat_id=LABEL_TO_CAT)
    sizes = {"small": 3, "medium": 2, "large": 2}  # areas 360, 400, 400 | 3000, 3000 | 32400, 18000
    for name, n in sizes.items():
        assert (m[name]["num_gt"], m[name]["tp"], m[name]["f1"]) == (n, n, 1.0), name


class Oracle(torch.nn.Module):
    """A 'detector' that returns the ground truth of the images it is shown, in order."""

    def __init__(self, outputs):
        super().__init__()
        self.outputs, self.calls = list(outputs), []

    def forward(self, images):
        assert not self.training, "evaluate_detector must call the model in eval mode"
        self.calls.append([(im.dtype, float(im.max())) for im in images])
        return [self.outputs.pop(0) for _ in images]


class FakeCoco(torch.utils.data.Dataset):
    def __init__(self, coco_file):
        self.coco, self.label_to_cat_id = COCO(str(coco_file)), LABEL_TO_CAT
        self.ids = sorted(GT)

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return torch.full((3, 32, 32), 255, dtype=torch.uint8), {"image_id": self.ids[i]}


def test_evaluate_detector(coco_file):
    model = Oracle([{k: v for k, v in d.items() if k != "image_id"} for d in gt_as_detections()]).train()
    metrics, dets = evaluate_detector(model, FakeCoco(coco_file), device="cpu", batch_size=2, progress=False)
    assert model.training, "the model's mode must be restored"
    assert [len(c) for c in model.calls] == [2, 1]
    assert all(dtype == torch.float32 and mx == 1.0 for c in model.calls for dtype, mx in c)
    assert metrics["AP"] == pytest.approx(1.0)
    assert [d["image_id"] for d in dets] == [1, 2, 3]
    # Only the images that were run are evaluated: a subset is not penalised for the rest.
    model = Oracle([{k: v for k, v in gt_as_detections()[0].items() if k != "image_id"}])
    sub, _ = evaluate_detector(model, torch.utils.data.Subset(FakeCoco(coco_file), [0]), device="cpu",
                               progress=False)
    assert sub["AP50"] == pytest.approx(1.0)
    # predict= for models that need more than the images (R-CNN's proposals).
    seen = []

    def predict(model, images, targets):
        seen.extend(t["image_id"] for t in targets)
        return model(images)

    model = Oracle([{k: v for k, v in d.items() if k != "image_id"} for d in gt_as_detections()])
    metrics, _ = evaluate_detector(model, FakeCoco(coco_file), device="cpu", predict=predict, progress=False)
    assert seen == [1, 2, 3] and metrics["AP"] == pytest.approx(1.0)


def test_all_objects_findable():
    from course_lib.evaluation import all_objects_findable

    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [2.0, 0.0, 12.0, 10.0], [50.0, 50.0, 60.0, 60.0]])  # IoU(0, 1) = 2/3
    same = {"boxes": boxes, "labels": torch.tensor([1, 1, 2])}
    other = {"boxes": boxes, "labels": torch.tensor([1, 2, 2])}
    assert not all_objects_findable(same, nms_thresh=0.5)  # NMS at 0.5 keeps one of the two class-1 boxes
    assert all_objects_findable(same, nms_thresh=0.7)
    assert all_objects_findable(other, nms_thresh=0.3)  # class-wise NMS: different classes do not suppress
    proposals = torch.tensor([[0.0, 0.0, 10.0, 10.0], [2.0, 0.0, 12.0, 10.0], [52.0, 52.0, 70.0, 70.0]])
    assert not all_objects_findable(other, nms_thresh=0.3, proposals=proposals)  # the third: IoU 0.18 < 0.5
    assert all_objects_findable(other, nms_thresh=0.3, proposals=proposals, proposal_iou=0.15)
    assert not all_objects_findable(other, nms_thresh=0.3, proposals=torch.zeros(0, 4))
    assert not all_objects_findable({"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)},
                                    nms_thresh=0.5)
