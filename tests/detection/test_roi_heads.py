"""RoIHeads against torchvision's (eval detections, train losses and random draws), the Fast R-CNN
loss by hand, and the degenerate cases (no objects, no proposals, bad labels)."""
import math
from collections import OrderedDict

import pytest
import torch
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor as TVPredictor, TwoMLPHead as TVTwoMLPHead
from torchvision.models.detection.roi_heads import RoIHeads as TVRoIHeads
from torchvision.ops import MultiScaleRoIAlign as TVMultiScaleRoIAlign

from course_lib.detection.roi_heads import FastRCNNPredictor, RoIHeads, TwoMLPHead, fastrcnn_loss
from course_lib.ops import MultiScaleRoIAlign

CHANNELS, NUM_CLASSES = 8, 4
IMAGE_SHAPES = [(120, 150), (96, 160)]


def make_pair(batch_size_per_image=32, score_thresh=0.05, detections_per_img=100):
    torch.manual_seed(0)
    ref_head, ref_pred = TVTwoMLPHead(CHANNELS * 7 * 7, 32), TVPredictor(32, NUM_CLASSES)
    torch.manual_seed(0)
    head, pred = TwoMLPHead(CHANNELS * 7 * 7, 32), FastRCNNPredictor(32, NUM_CLASSES)
    for ours, ref in [(head, ref_head), (pred, ref_pred)]:
        assert list(ours.state_dict()) == list(ref.state_dict())
        for a, b in zip(ours.state_dict().values(), ref.state_dict().values()):
            assert torch.equal(a, b)  # same seed, same initial weights
    with torch.no_grad():  # sharper class scores than the default init: varied detections
        ref_pred.cls_score.weight.mul_(20)
        ref_pred.bbox_pred.weight.mul_(5)
    head.load_state_dict(ref_head.state_dict())
    pred.load_state_dict(ref_pred.state_dict())
    args = (0.5, 0.5, batch_size_per_image, 0.25, None, score_thresh, 0.5, detections_per_img)
    ours = RoIHeads(MultiScaleRoIAlign(["0", "1"], 7, 2), head, pred, *args)
    ref = TVRoIHeads(TVMultiScaleRoIAlign(["0", "1"], 7, 2), ref_head, ref_pred, *args)
    return ours, ref


def make_inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    features = OrderedDict([("0", torch.randn(2, CHANNELS, 32, 40, generator=g)),
                            ("1", torch.randn(2, CHANNELS, 16, 20, generator=g))])
    targets, proposals = [], []
    for h, w in IMAGE_SHAPES:
        xy = torch.rand(3, 2, generator=g) * torch.tensor([w * 0.5, h * 0.5])
        gt = torch.cat([xy, xy + torch.rand(3, 2, generator=g) * 40 + 10], 1)
        targets.append({"boxes": gt, "labels": torch.tensor([1, 2, 3])})
        jittered = gt.repeat(10, 1) + torch.randn(30, 4, generator=g) * 4  # some fg, some between
        xy = torch.rand(40, 2, generator=g) * torch.tensor([w * 0.7, h * 0.7])
        background = torch.cat([xy, xy + torch.rand(40, 2, generator=g) * 30 + 5], 1)
        proposals.append(torch.cat([jittered, background]).clamp(min=0))
    return features, proposals, targets


def test_eval_detections_equal_torchvision():
    ours, ref = make_pair()
    features, proposals, _ = make_inputs()
    ours.eval(), ref.eval()
    with torch.no_grad():
        det, losses = ours(features, proposals, IMAGE_SHAPES)
        det_ref, _ = ref(features, proposals, IMAGE_SHAPES)
    assert losses == {}
    for a, b in zip(det, det_ref):
        assert set(a) == {"boxes", "labels", "scores"}
        assert a["boxes"].shape[0] > 10
        torch.testing.assert_close(a["boxes"], b["boxes"], rtol=0, atol=1e-4)
        torch.testing.assert_close(a["scores"], b["scores"], rtol=0, atol=1e-6)
        assert torch.equal(a["labels"], b["labels"])
        assert a["labels"].min() >= 1 and a["scores"].min() > 0.05
        assert torch.all(a["scores"][:-1] >= a["scores"][1:])  # best first


def test_train_losses_and_random_draws_equal_torchvision():
    ours, ref = make_pair()
    features, proposals, targets = make_inputs()
    targets[1] = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}  # no objects
    ours.train(), ref.train()
    torch.manual_seed(3)
    _, l_ours = ours(features, [p.clone() for p in proposals], IMAGE_SHAPES, targets)
    after_ours = torch.rand(1)
    torch.manual_seed(3)
    _, l_ref = ref(features, [p.clone() for p in proposals], IMAGE_SHAPES, targets)
    after_ref = torch.rand(1)
    assert after_ours == after_ref
    assert set(l_ours) == {"loss_classifier", "loss_box_reg"}
    for k in l_ref:
        torch.testing.assert_close(l_ours[k], l_ref[k], rtol=1e-6, atol=1e-7)
        assert l_ours[k] > 0


def test_sampling_adds_gt_and_respects_fraction():
    ours, _ = make_pair(batch_size_per_image=16)
    _, proposals, targets = make_inputs()
    torch.manual_seed(0)
    sampled, matched_idxs, labels, regression_targets = ours.select_training_samples(
        [torch.zeros(0, 4), proposals[1]], targets)
    # image 0 had no proposals: its gt boxes are its RoIs (all foreground, zero regression targets)
    assert sampled[0].shape == (3, 4) and sorted(labels[0].tolist()) == [1, 2, 3]
    torch.testing.assert_close(regression_targets[0], torch.zeros(3, 4), rtol=0, atol=1e-5)
    assert len(labels[1]) == 16 and 0 < int((labels[1] > 0).sum()) <= 4  # 25% of 16
    assert int((labels[1] == -1).sum()) == 0


def test_fastrcnn_loss_by_hand():
    """Two RoIs, 3 classes (0 = background).
    RoI 0: logits (0, 1, 2), true class 2 -> CE = log(1 + e + e^2) - 2 = 0.407606
    RoI 1: logits (1, 0, 0), background   -> CE = log(e + 2) - 1 = 0.551445
    classification loss = mean = 0.479526.
    Box loss: only RoI 0, deltas of class 2 = (0.05, 0, 0.3, -1) vs targets (0, 0, 0, 0):
    smooth L1 (beta 1/9) = 0.5 * 0.05^2 * 9 + 0 + (0.3 - 1/18) + (1 - 1/18) = 1.200139,
    divided by 2 sampled RoIs = 0.600069 (class 1's deltas and RoI 1's do not count)."""
    logits = torch.tensor([[0.0, 1.0, 2.0], [1.0, 0.0, 0.0]])
    deltas = torch.tensor([[7.0, 7.0, 7.0, 7.0, 9.0, 9.0, 9.0, 9.0, 0.05, 0.0, 0.3, -1.0],
                           [5.0] * 12])
    cls_loss, box_loss = fastrcnn_loss(logits, deltas, [torch.tensor([2, 0])], [torch.zeros(2, 4)])
    expected_cls = ((math.log(1 + math.e + math.e ** 2) - 2) + (math.log(math.e + 2) - 1)) / 2
    assert cls_loss.item() == pytest.approx(expected_cls, abs=1e-6)
    assert cls_loss.item() == pytest.approx(0.479526, abs=1e-6)
    assert box_loss.item() == pytest.approx((0.5 * 0.05 ** 2 * 9 + 0.3 - 1 / 18 + 1 - 1 / 18) / 2, abs=1e-6)
    assert box_loss.item() == pytest.approx(0.600069, abs=1e-6)


def test_no_proposals_no_objects_no_nan():
    ours, _ = make_pair()
    features, _, _ = make_inputs()
    empty = [torch.zeros(0, 4), torch.zeros(0, 4)]
    ours.eval()
    det, _ = ours(features, empty, IMAGE_SHAPES)
    assert [d["boxes"].shape for d in det] == [(0, 4), (0, 4)]
    assert det[0]["labels"].dtype == torch.int64
    ours.train()
    no_objects = [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}] * 2
    _, losses = ours(features, empty, IMAGE_SHAPES, no_objects)  # not a single RoI to learn from
    assert all(torch.isfinite(v) and v == 0 for v in losses.values())
    sum(losses.values()).backward()  # still part of the graph


def test_bad_targets_are_named():
    ours, _ = make_pair()
    features, proposals, targets = make_inputs()
    ours.train()
    bad = [dict(t) for t in targets]
    bad[1]["labels"] = torch.tensor([1, 2, NUM_CLASSES])
    with pytest.raises(ValueError, match=r"Target 1 has label 4, but labels must be in 1..3"):
        ours(features, proposals, IMAGE_SHAPES, bad)
    bad[1]["labels"] = torch.tensor([1, 0, 2])
    with pytest.raises(ValueError, match="Target 1 has label 0"):
        ours(features, proposals, IMAGE_SHAPES, bad)
    bad[1]["labels"] = torch.tensor([1.0, 2.0, 3.0])
    with pytest.raises(TypeError, match="Target 1: labels must be int64"):
        ours(features, proposals, IMAGE_SHAPES, bad)
    bad[1]["labels"] = torch.tensor([1, 2])
    with pytest.raises(ValueError, match="Target 1: 3 boxes but labels of shape"):
        ours(features, proposals, IMAGE_SHAPES, bad)
    with pytest.raises(ValueError, match="targets in training"):
        ours(features, proposals, IMAGE_SHAPES)
