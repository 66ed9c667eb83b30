"""The bootstrap standard error of COCO AP over images: known answers, and pycocotools on every resample."""
import math

import numpy as np
import pytest
import torch
from pycocotools.coco import COCO

from course_lib.evaluation import bootstrap_ap, bootstrap_ap_difference, coco_evaluate
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


def test_paired_difference_is_the_spread_of_the_per_resample_differences():
    gt, dets, scores = random_set(np.random.default_rng(4), n_images=12)
    coco = toy_coco(gt)
    a = as_detections(dets, scores)
    b = as_detections([d[1:] for d in dets], [s[1:] for s in scores])  # b misses each image's first detection
    out = bootstrap_ap_difference(coco, a, b, resamples=40, seed=2)
    counts = np.vstack([np.ones(len(gt), dtype=int), resample_counts(len(gt), 40, seed=2)])
    sa, sb = bootstrap_ap_samples(coco, a, counts), bootstrap_ap_samples(coco, b, counts)
    alone_a, alone_b = bootstrap_ap(coco, a, resamples=40, seed=2), bootstrap_ap(coco, b, resamples=40, seed=2)
    for name in ("AP", "AP50", "APs"):
        assert out[name] == pytest.approx(alone_a[name] - alone_b[name], abs=1e-12)  # the point: COCO's difference
        d = sa[name][1:] - sb[name][1:]
        assert out[f"{name}_se"] == pytest.approx(np.std(d[~np.isnan(d)], ddof=1), abs=1e-12)
    assert out["AP"] > 0 and out["AP_se"] > 0
    # paired: what the two share cancels, so the difference is far surer than two independent SEs say
    assert out["AP50_se"] < 0.8 * math.hypot(alone_a["AP50_se"], alone_b["AP50_se"])


def test_paired_difference_edge_cases():
    gt, dets, scores = random_set(np.random.default_rng(5), n_images=10)
    coco, a = toy_coco(gt), as_detections(dets, scores)
    same = bootstrap_ap_difference(coco, a, a, resamples=30)
    assert all(same[k] == 0.0 for k in ("AP", "AP_se", "AP50", "AP50_se"))
    nothing = as_detections([d[:0] for d in dets], [s[:0] for s in scores])
    alone = bootstrap_ap(coco, a, resamples=30)
    vs_nothing = bootstrap_ap_difference(coco, a, nothing, resamples=30)  # a detector that finds nothing scores 0
    assert vs_nothing["AP50"] == alone["AP50"] and vs_nothing["AP50_se"] == pytest.approx(alone["AP50_se"], abs=1e-12)
    reverse = bootstrap_ap_difference(coco, nothing, a, resamples=30)
    assert reverse["AP"] == -alone["AP"] and reverse["AP_se"] == pytest.approx(alone["AP_se"], abs=1e-12)


def test_no_detections_give_zero_and_bad_arguments_say_what_to_pass():
    coco, dets = one_box_per_image(4, found=0)
    assert bootstrap_ap(coco, dets) == {"AP": 0.0, "AP_se": 0.0, "AP50": 0.0, "AP50_se": 0.0, "APs": 0.0, "APs_se": 0.0}
    with pytest.raises(ValueError, match="resamples=1"):
        resample_counts(10, 1)
    coco, dets = one_box_per_image(4, found=2)
    with pytest.raises(ValueError, match=r"shape \(3, 5\).*\[resamples, 4\]"):
        bootstrap_ap_samples(coco, dets, np.ones((3, 5), dtype=int))


def test_bootstrap_ratio_is_the_pooled_share_and_the_std_of_resampled_shares():
    from course_lib.evaluation import bootstrap_ratio

    separated, cells = np.array([3, 0, 5, 2, 7]), np.array([4, 2, 5, 6, 7])
    share, se = bootstrap_ratio(separated, cells, resamples=300, seed=1)
    assert share == 17 / 24
    counts = resample_counts(5, 300, seed=1)  # brute force: each resample's images, counted as often as drawn
    brute = [sum(k * s for k, s in zip(row, separated)) / sum(k * c for k, c in zip(row, cells)) for row in counts]
    assert se == pytest.approx(np.std(brute, ddof=1), rel=1e-12)
    assert se > 0.05  # five images of unequal shares: far from certain


def test_bootstrap_ratio_edge_cases():
    from course_lib.evaluation import bootstrap_ratio

    assert bootstrap_ratio([2, 4], [2, 4]) == (1.0, 0.0)  # every image all separated: no spread
    share, se = bootstrap_ratio([0, 0], [0, 0])  # nothing to count
    assert math.isnan(share) and math.isnan(se)
    share, se = bootstrap_ratio([1, 0], [1, 0], resamples=50)  # one image counts anything: no spread to estimate
    assert share == 1.0 and math.isnan(se)
    share, se = bootstrap_ratio([1, 0, 2], [1, 0, 2], resamples=50)  # resamples of image 1 alone: left out
    assert share == 1.0 and se == 0.0
    for numerators, denominators in (([1, 2], [3]), ([], []), ([1], [-1]), ([math.nan], [1]), ([3], [2]), ([-1], [2])):
        with pytest.raises(ValueError, match="bootstrap_ratio"):
            bootstrap_ratio(numerators, denominators)


def test_bootstrap_miou_pools_the_images_as_confusion_matrix_does():
    from course_lib.evaluation import ConfusionMatrix, bootstrap_miou

    g = torch.Generator().manual_seed(0)
    targets = torch.randint(0, 4, (6, 20, 20), generator=g)
    preds = torch.where(torch.rand(6, 20, 20, generator=g) < 0.7, targets, torch.randint(0, 4, (6, 20, 20), generator=g))
    targets[2] = 255  # an image without a label counts for nothing
    per_image = []
    for p, t in zip(preds, targets):
        m = ConfusionMatrix(4)
        m.update(p, t)
        per_image.append(m.mat.clone())
    whole = ConfusionMatrix(4)
    whole.update(preds, targets)
    miou, se = bootstrap_miou(torch.stack(per_image), resamples=100, seed=3)
    assert miou == pytest.approx(whole.compute()["miou"], abs=1e-12)
    brute = []  # each resample's images, counted as often as drawn, into one ConfusionMatrix
    for row in resample_counts(6, 100, seed=3):
        m = ConfusionMatrix(4)
        for k, p, t in zip(row, preds, targets):
            for _ in range(k):
                m.update(p, t)
        brute.append(m.compute()["miou"])
    assert se == pytest.approx(np.std(brute, ddof=1), abs=1e-12) and se > 0


def test_bootstrap_miou_edge_cases_and_errors():
    from course_lib.evaluation import bootstrap_miou

    one = np.array([[[5, 1], [0, 4]]])
    miou, se = bootstrap_miou(one)
    assert miou == pytest.approx((5 / 6 + 4 / 5) / 2) and math.isnan(se) and type(miou) is float
    same = np.repeat(one, 3, axis=0)  # identical images: every resample gives the same mean IoU
    assert bootstrap_miou(same)[1] == pytest.approx(0.0, abs=1e-15)
    absent = np.array([[[3, 0, 0], [0, 2, 0], [0, 0, 0]]] * 2)  # class 2 neither present nor predicted: left out
    assert bootstrap_miou(absent)[0] == 1.0
    for bad in (np.zeros((2, 3)), np.zeros((0, 2, 2)), np.zeros((1, 2, 3))):
        with pytest.raises(ValueError, match="bootstrap_miou"):
            bootstrap_miou(bad)


def test_evaluate_segmentation_reports_the_miou_standard_error():
    from course_lib.evaluation import bootstrap_miou, evaluate_segmentation

    g = torch.Generator().manual_seed(1)
    images = torch.rand(5, 3, 16, 16, generator=g)
    masks = torch.randint(0, 3, (5, 16, 16), generator=g)
    masks[:, :4] = 255  # unlabelled pixels count in no matrix
    model = torch.nn.Conv2d(3, 3, 1)
    metrics = evaluate_segmentation(model, list(zip(images, masks)), 3, device="cpu", batch_size=2, progress=False)
    with torch.no_grad():
        preds = model(images).argmax(1)
    per_image = torch.stack([torch.bincount(t[t != 255] * 3 + p[t != 255], minlength=9).view(3, 3)
                             for p, t in zip(preds, masks)])
    assert (metrics["miou"], metrics["miou_se"]) == pytest.approx(bootstrap_miou(per_image), abs=1e-12)
