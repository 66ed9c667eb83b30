"""R-CNN (Girshick et al., CVPR 2014): the warp with 16 px of context (appendix A), the
SVM labels and solvers (section 2.3), ridge box regression (appendix C) against independent
solutions, and the whole detector -- trained and run -- on clean and on bad input."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.optimize import minimize
from torch import nn

from course_lib.detection.rcnn import (
    RCNN,
    context_boxes,
    rcnn_vgg16,
    ridge_regression,
    sample_rois,
    svm_labels,
    train_linear_classifiers,
    warp_regions,
)
from course_lib.ops import box_iou


# ------------------------------------------------------------------ appendix A: warping
def test_context_box_dilation_by_hand():
    # a 192 x 96 box: in a 224 warp the box covers 192 px, so 16 warped px = 16 * w / 192 image px
    box = torch.tensor([[100.0, 50.0, 292.0, 146.0]])
    torch.testing.assert_close(context_boxes(box, 224, 16), torch.tensor([[84.0, 42.0, 308.0, 154.0]]))


def test_warped_box_has_exactly_16_px_of_context_on_each_side():
    image = torch.zeros(3, 200, 300)
    x1, y1, x2, y2 = 40, 60, 140, 110  # a 100 x 50 box, stretched differently along x and y
    image[:, y1:y2, x1:x2] = 1.0
    warped = warp_regions(image, torch.tensor([[x1, y1, x2, y2]], dtype=torch.float32), size=224, context=16)[0]
    assert warped.shape == (3, 224, 224)
    for profile in (warped[0, 112, :], warped[0, :, 112]):  # along the middle row, the middle column
        # the box edge lands on the edge between warped pixels 15 and 16 (and 207 and 208)
        inside = torch.where(profile > 0.5)[0]
        assert int(inside.min()) == 16 and int(inside.max()) == 223 - 16
        # bilinear upsampling (x 1.92 along x, x 3.84 along y) blurs the edge by a pixel or two
        assert profile[:14].max() < 1e-6 and profile[210:].max() < 1e-6  # pure context
        assert profile[18:206].min() > 1 - 1e-6  # pure object


def test_warp_is_crop_and_bilinear_resize():
    """Reference: crop the dilated box and resize it with F.interpolate (bilinear, half-pixel
    centres). A 192 x 192 box dilates to an integer 224 x 224 window, shrunk to 112."""
    torch.manual_seed(0)
    image = torch.randn(3, 300, 400)
    box = torch.tensor([[100.0, 50.0, 292.0, 242.0]])
    warped = warp_regions(image, box, size=112, context=8)  # 8 of 112 = 16 of 224
    crop = image[None, :, 34:258, 84:308]
    torch.testing.assert_close(warped, F.interpolate(crop, size=(112, 112), mode="bilinear", align_corners=False))
    # at scale 1 (context 16, size 224) the warp is the crop itself
    torch.testing.assert_close(warp_regions(image, box, 224, 16)[0], image[:, 34:258, 84:308])


def test_warp_outside_the_image_is_the_mean():
    image = torch.ones(3, 50, 50)  # normalised: 0 is the image mean
    warped = warp_regions(image, torch.tensor([[0.0, 0.0, 50.0, 50.0]]), 224, 16)[0]
    assert warped[:, :14, :].abs().max() < 1e-6 and warped[:, :, -14:].abs().max() < 1e-6
    assert warp_regions(image, torch.zeros(0, 4)).shape == (0, 3, 224, 224)


# ------------------------------------------------------------------ section 2.3: labels and SVMs
def test_svm_labels_by_hand():
    gt = torch.tensor([[0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 30.0, 30.0]])
    gt_labels = torch.tensor([1, 2])
    proposals = torch.tensor([
        [0.0, 0.0, 10.0, 9.0],    # IoU 0.9 with the class-1 box: ignored for class 1, negative for 2
        [0.0, 0.0, 10.0, 2.0],    # IoU 0.2 with class 1: negative for both
        [40.0, 40.0, 50.0, 50.0],  # nothing: negative for both
    ])
    y = svm_labels(proposals, gt, gt_labels, num_object_classes=3)
    expected = torch.tensor([
        [1, -1, -1],   # the GT box of class 1: positive for class 1 only
        [-1, 1, -1],   # the GT box of class 2
        [0, -1, -1],
        [-1, -1, -1],
        [-1, -1, -1],
    ])
    torch.testing.assert_close(y, expected)
    torch.testing.assert_close(svm_labels(proposals, torch.zeros(0, 4), torch.zeros(0, dtype=torch.long), 3),
                               torch.full((3, 3), -1))


def _objective(w, x, y, upper, loss, bias_mult=10.0):
    xb = np.concatenate([x, np.full((len(x), 1), bias_mult)], 1)
    m = y * (xb @ w)
    per = np.maximum(0, 1 - m) if loss == "hinge" else np.logaddexp(0, -m)
    return 0.5 * w @ w + (upper * per).sum()


@pytest.mark.parametrize("loss", ["hinge", "logistic"])
def test_linear_classifiers_minimise_the_papers_objective(loss):
    """Reference: scipy.optimize on class 0's objective (Powell for the non-smooth hinge)."""
    torch.manual_seed(0)
    x = torch.randn(200, 8)
    labels = torch.randint(-1, 2, (200, 2))
    x[:, :2] += 1.5 * labels.float()  # informative but overlapping classes
    C = 0.05
    weight, bias = train_linear_classifiers(x, labels, loss=loss, C=C, tol=1e-3)
    assert weight.shape == (2, 8) and bias.shape == (2,)
    xn, y0 = x.double().numpy(), labels[:, 0].double().numpy()
    upper = C * np.where(y0 > 0, 2.0, 1.0) * (y0 != 0)
    ours = np.concatenate([weight[0].double().numpy(), [bias[0].item() / 10.0]])
    method = "Powell" if loss == "hinge" else "L-BFGS-B"
    ref = minimize(_objective, np.zeros(9), args=(xn, y0, upper, loss), method=method,
                   options={"maxiter": 100000, "ftol": 1e-12} if loss == "hinge" else {"maxiter": 10000, "gtol": 1e-10})
    ours_value = _objective(ours, xn, y0, upper, loss)
    assert ours_value <= ref.fun * (1 + 1e-3)
    if loss == "logistic":  # strictly convex and smooth: the minimiser itself matches
        np.testing.assert_allclose(ours, ref.x, atol=1e-4)
    # ignored regions (label 0 for every class) do not matter, whatever their features
    ignored = labels[:, 0] == 0
    only = labels.clone()
    only[ignored] = 0
    x2 = x.clone()
    x2[ignored] = torch.randn(int(ignored.sum()), 8) * 100
    w1, b1 = train_linear_classifiers(x, only, loss=loss, C=C, tol=1e-3)
    w2, b2 = train_linear_classifiers(x2, only, loss=loss, C=C, tol=1e-3)
    torch.testing.assert_close((w2, b2), (w1, b1))


def test_ridge_regression_matches_lstsq():
    """Appendix C, eq. 5: reference = least squares on the system augmented with sqrt(lambda) I
    (bias unregularised: centred data)."""
    torch.manual_seed(0)
    x, t = torch.randn(200, 30) * 5, torch.randn(200, 4)
    weight, bias = ridge_regression(x, t, lam=1000.0)
    xc, tc = (x - x.mean(0)).double().numpy(), (t - t.mean(0)).double().numpy()
    a = np.concatenate([xc, math.sqrt(1000.0) * np.eye(30)])
    b = np.concatenate([tc, np.zeros((30, 4))])
    expected = np.linalg.lstsq(a, b, rcond=None)[0].T
    np.testing.assert_allclose(weight.numpy(), expected, atol=1e-5)
    np.testing.assert_allclose(bias.numpy(), (t.mean(0) - weight @ x.mean(0)).numpy(), atol=1e-5)
    w0, b0 = ridge_regression(torch.zeros(0, 30), torch.zeros(0, 4))
    assert w0.shape == (4, 30) and (w0 == 0).all() and (b0 == 0).all()


def test_finetuning_sampler_32_foreground_of_128():
    torch.manual_seed(0)
    gt = torch.tensor([[50.0, 50.0, 150.0, 150.0]])
    jitter = torch.randn(400, 4) * 8
    proposals = torch.cat([gt + jitter, torch.rand(400, 2).mul(300).repeat(1, 2) + torch.tensor([0, 0, 40, 40])])
    rois, labels, _ = sample_rois(proposals, gt, torch.tensor([3]), num_samples=128, positive_fraction=0.25)
    iou = box_iou(rois, gt)[:, 0]
    assert len(rois) == 128 and int((labels == 3).sum()) == 32
    assert (iou[labels == 3] >= 0.5).all() and (iou[labels == 0] < 0.5).all()


# ------------------------------------------------------------------ the detector
def _coloured_scene():
    """Red squares are class 1, blue squares class 2, on gray."""
    image = torch.full((3, 120, 160), 0.5)
    gt = torch.tensor([[10.0, 10.0, 50.0, 50.0], [90.0, 30.0, 140.0, 80.0], [30.0, 70.0, 70.0, 110.0]])
    labels = torch.tensor([1, 2, 1])
    colours = {1: (0.9, 0.1, 0.1), 2: (0.1, 0.1, 0.9)}
    for (x1, y1, x2, y2), lab in zip(gt.int().tolist(), labels.tolist()):
        image[:, y1:y2, x1:x2] = torch.tensor(colours[lab])[:, None, None]
    return image, {"boxes": gt, "labels": labels}


def _proposals(gt, n_jitter=30, n_random=60, seed=0):
    g = torch.Generator().manual_seed(seed)
    jittered = (gt[:, None] + torch.randn(len(gt), n_jitter, 4, generator=g) * 4).reshape(-1, 4)
    xy = torch.rand(n_random, 2, generator=g) * torch.tensor([120.0, 80.0])
    wh = 10 + torch.rand(n_random, 2, generator=g) * 40
    return torch.cat([jittered, torch.cat([xy, xy + wh], 1)])


def _small_rcnn(num_classes=3):
    """R-CNN around a fixed, parameter-free stand-in CNN (4 x 4 average colours: 48-d), warp 64."""
    torch.manual_seed(0)
    features = nn.Sequential(nn.AdaptiveAvgPool2d(4), nn.Flatten())
    return RCNN(features, 48, num_classes, warp_size=64, context=4, chunk_size=50)


def test_rcnn_fit_detects_and_regresses_boxes():
    image, target = _coloured_scene()
    proposals = _proposals(target["boxes"])
    model = _small_rcnn()
    # a small problem (90 regions of 48 numbers): weaker regularisation than the paper's
    stats = model.fit_detectors([image], [proposals], [target], loss="hinge", C=1.0, ridge_lambda=10.0, progress=False)
    assert stats["positives"] == 3 and stats["regions"] == 3 + len(proposals)
    assert stats["train_accuracy"] > 0.95
    model.eval()
    detections = model([image], [proposals])[0]
    assert set(detections) == {"boxes", "scores", "labels"}
    for box, label in zip(target["boxes"], target["labels"]):  # every object found, right class
        iou = box_iou(box[None], detections["boxes"])[0]
        best = detections["labels"][iou > 0.5]
        assert len(best) and (best == label).any()
    # the ridge regressors move the proposals towards their objects (appendix C)
    iou_before, index = box_iou(proposals, target["boxes"]).max(1)
    near = iou_before > 0.6
    feats = model.region_features(image, proposals[near])
    k = target["labels"][index[near]] - 1
    offsets = model.bbox_regressor(feats).reshape(-1, 2, 4)[torch.arange(int(near.sum())), k]
    moved = model.box_coder.decode_single(offsets, proposals[near])
    iou_after = box_iou(moved, target["boxes"])[torch.arange(int(near.sum())), index[near]]
    assert iou_after.mean() > iou_before[near].mean() + 0.02


def test_rcnn_finetuning_reduces_loss():
    image, target = _coloured_scene()
    proposals = _proposals(target["boxes"])
    torch.manual_seed(0)
    features = nn.Sequential(nn.Conv2d(3, 8, 5, stride=4), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten())
    model = RCNN(features, 32, 3, warp_size=64, context=4, finetune_batch_size=64)
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    losses = []
    for _ in range(15):
        torch.manual_seed(1)  # the same sampled windows every step
        loss = model([image], [proposals], [target])["loss_classifier"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]


def test_rcnn_bad_inputs_train_and_detect_without_nan():
    image, target = _coloured_scene()
    gray = image.mean(0, keepdim=True)  # 1 x H x W
    empty_target = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}
    zero_width = {"boxes": torch.tensor([[10.0, 10.0, 10.0, 50.0], [90.0, 30.0, 140.0, 80.0]]),
                  "labels": torch.tensor([1, 2])}
    proposals = _proposals(target["boxes"], 5, 10)
    with_degenerate = torch.cat([proposals, torch.tensor([[20.0, 20.0, 20.0, 40.0]])])
    images = [image, gray, image, image]
    props = [proposals, proposals, torch.zeros(0, 4), with_degenerate]
    targets = [empty_target, target, zero_width, target]
    model = _small_rcnn()
    model.train()
    # a box of zero width is an error naming the image and the box (transform.check_targets, every detector's rule)
    with pytest.raises(ValueError, match=r"box 0 = \[10.0, 10.0, 10.0, 50.0\] in the target of image 2"):
        model(images, props, targets)
    with pytest.raises(ValueError, match="image 2"):
        model.fit_detectors(images, props, targets, progress=False)
    targets[2] = {"boxes": zero_width["boxes"][1:], "labels": zero_width["labels"][1:]}  # the dataset fixed
    loss = model(images, props, targets)["loss_classifier"]
    assert torch.isfinite(loss)
    stats = model.fit_detectors(images, props, targets, progress=False)
    assert all(math.isfinite(v) for v in stats.values())
    assert all(torch.isfinite(p).all() for p in model.parameters())
    model.eval()
    detections = model(images, props)
    assert len(detections) == 4 and len(detections[2]["boxes"]) == 0
    assert all(torch.isfinite(d["boxes"]).all() and torch.isfinite(d["scores"]).all() for d in detections)
    # nothing to learn from at all: every image empty
    fresh = _small_rcnn()
    stats = fresh.fit_detectors([image], [proposals], [empty_target], progress=False)
    assert stats["positives"] == 0 and torch.isfinite(fresh.classifier.weight).all()
    with pytest.raises(ValueError, match="proposal sets"):
        model([image], [])
    with pytest.raises(ValueError, match="shape"):
        model([torch.zeros(4, 10, 10)], [proposals])


def test_rcnn_vgg16_reads_fc7_of_a_224_warp():
    with torch.device("meta"):  # the paper's full-scale network, built without memory
        full = rcnn_vgg16(num_classes=21)
    assert full.classifier.in_features == 4096 and full.classifier.out_features == 20 and full.features.vgg.fc6.weight.shape == (4096, 512, 7, 7)
    model = rcnn_vgg16(num_classes=3, width=1 / 32, chunk_size=4).eval()
    image = torch.rand(3, 100, 120)
    boxes = torch.tensor([[10.0, 10.0, 60.0, 50.0], [0.0, 0.0, 120.0, 100.0], [30.0, 20.0, 90.0, 95.0]])
    feats = model.region_features(image, boxes)
    assert feats.shape == (3, 128)  # fc7: 4096 / 32
    # one forward pass per region: the features of a region do not depend on its batch
    torch.testing.assert_close(model.region_features(image, boxes[1:2]), feats[1:2], atol=1e-5, rtol=1e-4)
    # at 224 x 224 the features are VGG16's own fc7 (pool5 is already 7 x 7)
    crops = torch.randn(2, 3, 224, 224)
    torch.testing.assert_close(model.features(crops), model.features.vgg(crops)["fc7"].flatten(1))
    small = rcnn_vgg16(num_classes=3, width=1 / 32, warp_size=112, context=8).eval()
    assert small.region_features(image, boxes).shape == (3, 128)
