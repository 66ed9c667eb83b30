"""The bootstrap standard error of COCO AP over images: known answers, and pycocotools on every resample."""
import math

import numpy as np
import pytest
import torch
from pycocotools.coco import COCO

from course_lib.evaluation import bootstrap_ap, coco_evaluate
from course_lib.evaluation.bootstrap import bootstrap_ap_samples, resample_counts


def toy_coco(boxes_per_image: list[np.ndarray]) -> COCO:
    """A COCO ground truth in memory: image i holds the rows (x1, y1, x2, y2, category) of boxes_per_image[i]."""
    rows = [(i, box) for i, boxes in enumerate(boxes_per_image) for box in boxes]
    anns = [{"id": j + 1, "image_id": i, "category_id": int(c), "bbox": [x1, y1, x2 - x1, y2 - y1],
             "area": float((x2 - x1) * (y2 - y1)), "iscrowd": 0} for j, (i, (x1, y1, x2, y2, c)) in enumerate(rows)]
    coco = COCO()
    coco.dataset = {"images": [{"id": i} for i in range(len(boxes_per_image))], "annotations": anns,
                    "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]}
    coco.createIndex()
    return coco


def as_detections(boxes_per_image, scores_per_image) -> list[dict]:
    return [{"image_id": i, "boxes": torch.as_tensor(b[:, :4], dtype=torch.float32).reshape(-1, 4),
             "scores": torch.as_tensor(s, dtype=torch.float32), "labels": torch.as_tensor(b[:, 4]).long().reshape(-1)}
            for i, (b, s) in enumerate(zip(boxes_per_image, scores_per_image))]


def one_box_per_image(n: int, found: int):
    """n images with one large object each; the first `found` are detected exactly, the rest missed."""
    gt = [np.array([[10, 10, 110, 110, 1]], dtype=float) for _ in range(n)]
    dets = [g if i < found else g[:0] for i, g in enumerate(gt)]
    return toy_coco(gt), as_detections(dets, [np.linspace(0.9, 0.1, n)[i:i + len(d)] for i, d in enumerate(dets)])


def test_perfect_detections_give_ap_one_and_se_zero():
    coco, dets = one_box_per_image(20, found=20)
    out = bootstrap_ap(coco, dets, resamples=50)
    assert out["AP"] == out["AP50"] == 1.0 and out["AP_se"] == out["AP50_se"] == 0.0
    assert math.isnan(out["APs"]) and math.isnan(out["APs_se"])  # no small objects: COCO gives -1, we NaN


def test_half_found_half_missed_matches_the_binomial_se():
    """Recall = k / n with k ~ Binomial(n, 1/2) images found in a resample, precision 1: AP ~ (k + 1) / 101 on
    COCO's 101 recall thresholds, so its SE is sqrt(n / 4) / 101 (0.0495 for n = 100)."""
    n = 100
    coco, dets = one_box_per_image(n, found=n // 2)
    counts = resample_counts(n, 400, seed=0)
    ap = bootstrap_ap_samples(coco, dets, counts)["AP50"]
    found = counts[:, : n // 2].sum(1)
    assert np.abs(ap - (found + 1) / 101).max() <= 1 / 101 + 1e-9  # the threshold at k / n itself may round away
    se = bootstrap_ap(coco, dets, resamples=400)["AP50_se"]
    assert se == pytest.approx(math.sqrt(n / 4) / 101, rel=0.15)


def random_set(rng, n_images=8):
    """Two categories, small and large objects; detections shifted, missed and false, all scores distinct."""
    gt, dets = [], []
    for _ in range(n_images):
        k = rng.integers(1, 4)
        xy = rng.uniform(0, 200, (k, 2))
        side = rng.choice([12.0, 20.0, 60.0, 120.0], k)  # areas below and above 32^2
        boxes = np.column_stack([xy, xy + side[:, None], rng.integers(1, 3, k)])
        found = boxes[rng.random(k) < 0.7].copy()
        found[:, :4] += rng.normal(0, 3, (len(found), 4))
        false = np.column_stack([rng.uniform(0, 200, (1, 2)), rng.uniform(210, 300, (1, 2)), [[1]]])
        gt.append(boxes)
        dets.append(np.vstack([found, false]))
    scores = np.split(rng.permutation(sum(map(len, dets))) / 100 + 0.01, np.cumsum(list(map(len, dets)))[:-1])
    return gt, dets, scores


def test_equals_pycocotools_run_on_every_resampled_set():
    rng = np.random.default_rng(7)
    gt, dets, scores = random_set(rng)
    counts = np.vstack([np.ones(len(gt), dtype=int), resample_counts(len(gt), 6, seed=3)])
    ours = bootstrap_ap_samples(toy_coco(gt), as_detections(dets, scores), counts)
    for b, row in enumerate(counts):
        drawn = np.repeat(np.arange(len(gt)), row)  # the resample as a new set of images, copies renumbered
        brute = coco_evaluate(toy_coco([gt[i] for i in drawn]),
                              as_detections([dets[i] for i in drawn], [scores[i] for i in drawn]))
        for name in ("AP", "AP50", "APs"):
            assert ours[name][b] == pytest.approx(brute[name], abs=1e-12, nan_ok=True), (b, name)
    assert len(set(np.round(ours["AP"], 9))) > 3  # the resamples really differ


def test_seeded_and_the_point_estimate_is_coco_evaluate():
    gt, dets, scores = random_set(np.random.default_rng(1), n_images=12)
    coco, detections = toy_coco(gt), as_detections(dets, scores)
    a, b = bootstrap_ap(coco, detections, seed=5, resamples=30), bootstrap_ap(coco, detections, seed=5, resamples=30)
    assert a == b and a != bootstrap_ap(coco, detections, seed=6, resamples=30)
    assert a["AP"] == pytest.approx(coco_evaluate(coco, detections)["AP"], abs=1e-12) and a["AP_se"] > 0
    some = bootstrap_ap(coco, detections, img_ids=[3, 1, 5, 1], resamples=30)  # as evaluate_detector passes them
    assert some["AP50"] == pytest.approx(coco_evaluate(coco, detections, img_ids=[1, 3, 5])["AP50"], abs=1e-12)


def test_no_detections_give_zero_and_bad_arguments_say_what_to_pass():
    coco, dets = one_box_per_image(4, found=0)
    assert bootstrap_ap(coco, dets) == {"AP": 0.0, "AP_se": 0.0, "AP50": 0.0, "AP50_se": 0.0, "APs": 0.0, "APs_se": 0.0}
    with pytest.raises(ValueError, match="resamples=1"):
        resample_counts(10, 1)
    coco, dets = one_box_per_image(4, found=2)
    with pytest.raises(ValueError, match=r"shape \(3, 5\).*\[resamples, 4\]"):
        bootstrap_ap_samples(coco, dets, np.ones((3, 5), dtype=int))
