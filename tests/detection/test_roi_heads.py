"""RoIHeads against torchvision's (eval detections, train losses and random draws), the Fast R-CNN
loss by hand, and the degenerate cases (no objects, no proposals, bad labels); the ``predict``
contract, class-agnostic regression (loss by hand, post-processing against torchvision) and OHEM
on hand-made cases."""
import math
from collections import OrderedDict

import pytest
import torch
import torch.nn.functional as F
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor as TVPredictor, TwoMLPHead as TVTwoMLPHead
from torchvision.models.detection.roi_heads import RoIHeads as TVRoIHeads
from torchvision.ops import MultiScaleRoIAlign as TVMultiScaleRoIAlign

from course_lib.detection.roi_heads import (
    FastRCNNPredictor,
    RoIHeads,
    TwoMLPHead,
    fastrcnn_loss,
    fastrcnn_loss_per_roi,
    init_like_fast_rcnn,
    ohem_select,
)
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


# --------------------------------------------------------------------------- the head contract
def test_predict_is_the_one_method_a_head_overrides():
    """A head that overrides only ``predict`` gets sampling, loss and post-processing unchanged:
    here it returns exactly what the default would, so both the losses (same seed) and the
    detections equal the default head's."""
    ours, _ = make_pair()
    calls = []

    class Recorded(RoIHeads):
        def predict(self, features, proposals, image_shapes):
            calls.append([len(p) for p in proposals])
            return self.box_predictor(self.box_head(self.box_roi_pool(features, proposals, image_shapes)))

    recorded = Recorded(ours.box_roi_pool, ours.box_head, ours.box_predictor, 0.5, 0.5, 32, 0.25, None, 0.05, 0.5, 100)
    features, proposals, targets = make_inputs()
    for mode in ("train", "eval"):
        getattr(ours, mode)(), getattr(recorded, mode)()
        torch.manual_seed(1)
        a = ours(features, proposals, IMAGE_SHAPES, targets if mode == "train" else None)
        torch.manual_seed(1)
        b = recorded(features, proposals, IMAGE_SHAPES, targets if mode == "train" else None)
        for x, y in zip(a[1].values(), b[1].values()):
            assert torch.equal(x, y)
        for x, y in zip(a[0], b[0]):
            assert all(torch.equal(x[k], y[k]) for k in x)
    assert calls == [[32, 32], [len(p) for p in proposals]]  # sampled RoIs in training, all in eval


def test_chapter_4_does_not_import_chapter_5():
    import ast
    import inspect

    from course_lib.detection import fast_rcnn, faster_rcnn_c4, rcnn, roi_heads

    for module in (fast_rcnn, rcnn, roi_heads):
        imported = {node.module for node in ast.walk(ast.parse(inspect.getsource(module)))
                    if isinstance(node, ast.ImportFrom)}
        assert not any(m and m.endswith(("faster_rcnn_c4", "faster_rcnn_fpn", "generalized_rcnn")) for m in imported), \
            (module.__name__, imported)
    assert fast_rcnn.init_like_fast_rcnn is roi_heads.init_like_fast_rcnn is faster_rcnn_c4.init_like_fast_rcnn
    predictor = init_like_fast_rcnn(FastRCNNPredictor(256, 5))
    assert 0.005 < predictor.cls_score.weight.std() < 0.02 and predictor.bbox_pred.weight.std() < 0.002
    assert predictor.cls_score.bias.abs().sum() == 0 and predictor.bbox_pred.bias.abs().sum() == 0


# --------------------------------------------------------------------- class-agnostic regression
def test_class_agnostic_loss_by_hand():
    """The loss of test_fastrcnn_loss_by_hand with the [R, 4] layout and a second foreground RoI.
    RoI 0 (class 2): shared deltas (0.05, 0, 0.3, -1), targets 0 -> smooth L1 sum 1.200139.
    RoI 1 (class 1): deltas (0.1, 0.2, 0, 0), targets (0.1, 0, 0, 0) -> 0 + (0.2 - 1/18) = 0.144444.
    RoI 2 (background): no box term. Box loss = (1.200139 + 0.144444) / 3 RoIs = 0.448194.
    Classification: logits (0, 1, 2) -> 2, (0, 3, 0) -> 1, (1, 0, 0) -> 0."""
    logits = torch.tensor([[0.0, 1.0, 2.0], [0.0, 3.0, 0.0], [1.0, 0.0, 0.0]])
    deltas = torch.tensor([[0.05, 0.0, 0.3, -1.0], [0.1, 0.2, 0.0, 0.0], [5.0, 5.0, 5.0, 5.0]])
    targets = torch.tensor([[0.0, 0.0, 0.0, 0.0], [0.1, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    cls_loss, box_loss = fastrcnn_loss(logits, deltas, [torch.tensor([2, 1, 0])], [targets])
    ce = [math.log(1 + math.e + math.e ** 2) - 2, math.log(2 + math.e ** 3) - 3, math.log(math.e + 2) - 1]
    assert cls_loss.item() == pytest.approx(sum(ce) / 3, abs=1e-6)
    first = 0.5 * 0.05 ** 2 * 9 + 0.3 - 1 / 18 + 1 - 1 / 18
    assert box_loss.item() == pytest.approx((first + 0.2 - 1 / 18) / 3, abs=1e-6)
    assert box_loss.item() == pytest.approx(0.448194, abs=1e-6)
    # the same deltas copied into every class's column block: the class-specific loss is the same
    tiled = deltas.repeat(1, 3)
    for a, b in zip(fastrcnn_loss(logits, tiled, [torch.tensor([2, 1, 0])], [targets]), (cls_loss, box_loss)):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match=r"box_regression must be \[R, 4\] \(class-agnostic\) or \[R, 4 \(K \+ 1\)\]"):
        fastrcnn_loss(logits, deltas[:, :3], [torch.tensor([2, 1, 0])], [targets])


def test_class_agnostic_postprocess_equals_torchvision_with_tiled_deltas():
    """[R, 4] deltas shared by all classes give the detections torchvision gives for the same
    deltas copied into each class's slot of the class-specific layout."""
    ours, ref = make_pair()
    _, proposals, _ = make_inputs()
    g = torch.Generator().manual_seed(5)
    num_rois = sum(len(p) for p in proposals)
    logits = torch.randn(num_rois, NUM_CLASSES, generator=g) * 3
    deltas = torch.randn(num_rois, 4, generator=g) * 0.3
    got = ours.postprocess_detections(logits, deltas, proposals, IMAGE_SHAPES)
    expected = ref.postprocess_detections(logits, deltas.repeat(1, NUM_CLASSES), proposals, IMAGE_SHAPES)
    for a, b in zip(got, expected):
        for x, y in zip(a, b):
            assert x.shape[0] > 5
            torch.testing.assert_close(x, y, rtol=0, atol=0)
    with pytest.raises(ValueError, match="box_regression must be"):
        ours.postprocess_detections(logits, deltas[:, :2], proposals, IMAGE_SHAPES)


# ------------------------------------------------------------------- online hard example mining
def test_ohem_select_by_hand():
    losses = torch.tensor([0.1, 0.9, 0.5, 0.9, 0.2,   # image 0: 0.9 twice (a tie), B = 3
                           0.7, 0.3])                 # image 1: fewer RoIs than B: both kept
    keep = ohem_select(losses, [5, 2], 3)
    assert keep.tolist() == [1, 2, 3, 5, 6]
    assert ohem_select(losses, [5, 2], 1).tolist() == [1, 5]  # the tie goes to the earlier RoI
    assert ohem_select(losses[:0], [0, 0], 2).tolist() == []
    with pytest.raises(ValueError, match="ohem_batch_size_per_image must be >= 1"):
        ohem_select(losses, [5, 2], 0)
    with pytest.raises(ValueError, match=r"one value per RoI \(6\)"):
        ohem_select(losses, [5, 1], 2)


def test_fastrcnn_loss_per_roi_by_hand():
    logits = torch.tensor([[0.0, 1.0, 2.0], [1.0, 0.0, 0.0]])
    deltas = torch.tensor([[0.05, 0.0, 0.3, -1.0], [5.0, 5.0, 5.0, 5.0]])
    per_roi = fastrcnn_loss_per_roi(logits, deltas, torch.tensor([2, 0]), torch.zeros(2, 4))
    expected = [math.log(1 + math.e + math.e ** 2) - 2 + 0.5 * 0.05 ** 2 * 9 + 0.3 - 1 / 18 + 1 - 1 / 18,
                math.log(math.e + 2) - 1]  # the background RoI: no box term however wrong its deltas
    torch.testing.assert_close(per_roi, torch.tensor(expected), rtol=0, atol=1e-6)


class _FixedHead(RoIHeads):
    """A head whose predictions are leaf tensors, one row per sampled RoI, to see where the gradient goes."""

    def __init__(self, logits, deltas, **kwargs):
        super().__init__(None, None, None, 0.5, 0.5, None, 0.25, None, 0.05, 0.5, 100, **kwargs)
        self.logits, self.deltas = logits, deltas

    def predict(self, features, proposals, image_shapes):
        assert sum(len(p) for p in proposals) == self.logits.shape[0]
        return self.logits, self.deltas


def test_ohem_backpropagates_the_hardest_rois_only():
    """Image 0: gt box A (class 1) and 3 proposals -> RoIs [p0 (IoU 1 with A), p1 (IoU 0), p2 (IoU 0), gt A];
    image 1: no objects, 2 proposals -> 2 background RoIs. No sampling (batch_size_per_image=None),
    B = 2 per image. Logits are chosen so the per-RoI losses are known (CE + box term for fg):
    image 0: p0 fg, confident and right (0.002 + 0.144); p1 bg predicted fg (6.0); p2 bg, right (0.002);
    gt A fg predicted bg (2.13 + 0.144) -> keep p1 and gt A. Image 1: both kept (2 <= B)."""
    gt = torch.tensor([[10.0, 10.0, 50.0, 50.0]])
    proposals = [torch.tensor([[10.0, 10.0, 50.0, 50.0], [60.0, 60.0, 90.0, 90.0], [0.0, 60.0, 30.0, 90.0]]),
                 torch.tensor([[0.0, 0.0, 20.0, 20.0], [30.0, 30.0, 60.0, 60.0]])]
    targets = [{"boxes": gt, "labels": torch.tensor([1])},
               {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}]
    logits = torch.tensor([[-3.0, 3.0], [-3.0, 3.0], [3.0, -3.0], [1.0, -1.0],
                           [0.0, 0.0], [0.5, 0.0]], requires_grad=True)
    deltas = torch.tensor([[0.2, 0.0, 0.0, 0.0]] * 6, requires_grad=True)
    heads = _FixedHead(logits, deltas, ohem_batch_size_per_image=2).train()
    _, losses = heads({}, proposals, [(100, 100)] * 2, targets)

    kept_logits = logits.detach()[[1, 3, 4, 5]]
    kept_labels = torch.tensor([0, 1, 0, 0])
    assert losses["loss_classifier"].item() == pytest.approx(F.cross_entropy(kept_logits, kept_labels).item(), abs=1e-6)
    # box term: only gt A (fg, target 0, delta 0.2 -> 0.2 - 1/18), over the 4 kept RoIs
    assert losses["loss_box_reg"].item() == pytest.approx((0.2 - 1 / 18) / 4, abs=1e-6)
    sum(losses.values()).backward()
    rows_with_grad = torch.where(logits.grad.abs().sum(1) > 0)[0].tolist()
    assert rows_with_grad == [1, 3, 4, 5]  # p0 and p2 (easy) get no gradient
    assert torch.where(deltas.grad.abs().sum(1) > 0)[0].tolist() == [3]

    # without OHEM every RoI counts
    logits.grad = None
    heads = _FixedHead(logits, deltas).train()
    _, losses = heads({}, proposals, [(100, 100)] * 2, targets)
    sum(losses.values()).backward()
    assert (logits.grad.abs().sum(1) > 0).all()
    with pytest.raises(ValueError, match="ohem_batch_size_per_image must be None"):
        _FixedHead(logits, deltas, ohem_batch_size_per_image=0)


def test_ohem_in_the_full_head_equals_the_loss_of_the_top_b():
    """With the real head (pooling, MLP, predictor) and the sampler: OHEM's losses are
    fastrcnn_loss on the B highest-loss sampled RoIs of each image, found here by a plain sort."""
    ours, _ = make_pair(batch_size_per_image=32)
    features, proposals, targets = make_inputs()
    ours.train()
    torch.manual_seed(7)
    sampled, _, labels, regression_targets = ours.select_training_samples([p.clone() for p in proposals], targets)
    logits, deltas = ours.predict(features, sampled, IMAGE_SHAPES)
    expected_keep = []
    for i, (lab, reg) in enumerate(zip(labels, regression_targets)):
        rows = slice(32 * i, 32 * (i + 1))
        loss = fastrcnn_loss_per_roi(logits[rows], deltas[rows], lab, reg)
        expected_keep.append(sorted(loss.argsort(descending=True)[:8].tolist()))
    cls_expected, box_expected = fastrcnn_loss(
        torch.cat([logits[32 * i:][k] for i, k in enumerate(expected_keep)]),
        torch.cat([deltas[32 * i:][k] for i, k in enumerate(expected_keep)]),
        [lab[k] for lab, k in zip(labels, expected_keep)], [reg[k] for reg, k in zip(regression_targets, expected_keep)])

    ours.ohem_batch_size_per_image = 8
    torch.manual_seed(7)
    _, losses = ours(features, [p.clone() for p in proposals], IMAGE_SHAPES, targets)
    torch.testing.assert_close(losses["loss_classifier"], cls_expected, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(losses["loss_box_reg"], box_expected, rtol=1e-6, atol=1e-7)
    ours.ohem_batch_size_per_image = None
    torch.manual_seed(7)
    _, plain = ours(features, [p.clone() for p in proposals], IMAGE_SHAPES, targets)
    assert losses["loss_classifier"] > plain["loss_classifier"]  # the hard ones cost more than the average
