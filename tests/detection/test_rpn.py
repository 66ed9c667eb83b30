"""RegionProposalNetwork against torchvision's, anchor labelling by hand, and the loss by hand."""
import math
from collections import OrderedDict

import pytest
import torch
from torchvision.models.detection.anchor_utils import AnchorGenerator as TVAnchorGenerator
from torchvision.models.detection.image_list import ImageList as TVImageList
from torchvision.models.detection.rpn import RegionProposalNetwork as TVRPN, RPNHead as TVRPNHead

from course_lib.detection.rpn import RegionProposalNetwork, RPNHead
from course_lib.ops import AnchorGenerator, ImageList

SIZES, RATIOS = ((16, 32), (64, 128)), ((0.5, 1.0, 2.0),) * 2
CHANNELS = 8


def make_pair(pre=(300, 200), post=(100, 50), score_thresh=0.0, batch_size_per_image=64):
    torch.manual_seed(0)
    ref_head = TVRPNHead(CHANNELS, 6)
    with torch.no_grad():  # larger weights than the N(0, 0.01) init: varied scores and boxes
        for p in ref_head.parameters():
            p.normal_(0, 0.3)
    ours_head = RPNHead(CHANNELS, 6)
    ours_head.load_state_dict(ref_head.state_dict())
    kwargs = dict(fg_iou_thresh=0.7, bg_iou_thresh=0.3, batch_size_per_image=batch_size_per_image,
                  positive_fraction=0.5, pre_nms_top_n=dict(training=pre[0], testing=pre[1]),
                  post_nms_top_n=dict(training=post[0], testing=post[1]), nms_thresh=0.7,
                  score_thresh=score_thresh)
    ref = TVRPN(TVAnchorGenerator(SIZES, RATIOS), ref_head, **kwargs)
    ours = RegionProposalNetwork(AnchorGenerator(SIZES, RATIOS), ours_head, **kwargs)
    return ours, ref


def make_inputs(seed=0):
    """Two images (120x150 and 96x160) padded to 128x160; levels at stride 8 and 16."""
    g = torch.Generator().manual_seed(seed)
    image_sizes = [(120, 150), (96, 160)]
    tensors = torch.zeros(2, 3, 128, 160)
    features = OrderedDict([("0", torch.randn(2, CHANNELS, 16, 20, generator=g)),
                            ("1", torch.randn(2, CHANNELS, 8, 10, generator=g))])
    targets = []
    for h, w in image_sizes:
        xy = torch.rand(4, 2, generator=g) * torch.tensor([w * 0.6, h * 0.6])
        wh = torch.rand(4, 2, generator=g) * torch.tensor([w * 0.4, h * 0.4]) + 8
        targets.append({"boxes": torch.cat([xy, xy + wh], 1), "labels": torch.ones(4, dtype=torch.int64)})
    targets[1]["boxes"] = torch.zeros(0, 4)  # an image without objects
    targets[1]["labels"] = torch.zeros(0, dtype=torch.int64)
    return (ImageList(tensors, image_sizes), TVImageList(tensors, image_sizes)), features, targets


def assert_same_proposals(ours, ref):
    assert len(ours) == len(ref)
    for a, b in zip(ours, ref):
        assert a.shape == b.shape and a.shape[0] > 0
        torch.testing.assert_close(a, b, rtol=0, atol=1e-4)


def test_head_names_init_and_old_checkpoints():
    torch.manual_seed(1)
    ref = TVRPNHead(CHANNELS, 9)
    torch.manual_seed(1)
    ours = RPNHead(CHANNELS, 9)
    assert list(ours.state_dict()) == list(ref.state_dict()) == [
        "conv.0.0.weight", "conv.0.0.bias", "cls_logits.weight", "cls_logits.bias", "bbox_pred.weight",
        "bbox_pred.bias"]
    for (name, a), b in zip(ours.state_dict().items(), ref.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
    assert ours.cls_logits.bias.abs().sum() == 0 and 0.005 < ours.bbox_pred.weight.std() < 0.015
    # a state dict from torchvision < 0.13 names the 3x3 conv "conv.weight"
    old = OrderedDict((k.replace("conv.0.0.", "conv."), v) for k, v in ref.state_dict().items())
    fresh = RPNHead(CHANNELS, 9)
    fresh.load_state_dict(old)  # no version metadata -> renamed
    torch.testing.assert_close(fresh.conv[0][0].weight, ref.conv[0][0].weight)


def test_eval_proposals_equal_torchvision():
    ours, ref = make_pair()
    (il, tv_il), features, _ = make_inputs()
    ours.eval(), ref.eval()
    with torch.no_grad():
        p_ours, losses = ours(il, features)
        p_ref, _ = ref(tv_il, features)
    assert losses == {}
    assert_same_proposals(p_ours, p_ref)
    assert all(p.shape[0] <= 50 for p in p_ours)  # post_nms_top_n testing
    for p, (h, w) in zip(p_ours, il.image_sizes):  # clipped to the image (not the padding)
        assert p[:, 0::2].max() <= w and p[:, 1::2].max() <= h and p.min() >= 0


def test_train_losses_and_random_draws_equal_torchvision():
    ours, ref = make_pair()
    (il, tv_il), features, targets = make_inputs()
    features = OrderedDict((k, v.requires_grad_()) for k, v in features.items())
    torch.manual_seed(11)
    p_ours, l_ours = ours(il, features, targets)
    after_ours = torch.rand(1)
    torch.manual_seed(11)
    p_ref, l_ref = ref(tv_il, features, targets)
    after_ref = torch.rand(1)
    assert after_ours == after_ref
    assert_same_proposals(p_ours, p_ref)
    assert set(l_ours) == {"loss_objectness", "loss_rpn_box_reg"}
    for k in l_ref:
        torch.testing.assert_close(l_ours[k], l_ref[k], rtol=1e-6, atol=1e-7)
        assert l_ours[k] > 0
    grads = torch.autograd.grad(sum(l_ours.values()), list(ours.head.parameters()))
    ref_grads = torch.autograd.grad(sum(l_ref.values()), list(ref.head.parameters()))
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def test_anchor_labels_by_hand():
    """IoU >= 0.7 -> 1, < 0.3 with all -> 0, in between -> -1 (ignored), and a ground-truth box
    whose best anchor reaches only 0.5 still gets that anchor as a positive (low-quality match)."""
    rpn, _ = make_pair()
    anchors = torch.tensor([
        [0.0, 0.0, 10.0, 10.0],    # = gt A: IoU 1 -> positive
        [0.0, 0.0, 10.0, 13.0],    # IoU(A) = 100/130 = 0.77 -> positive
        [0.0, 0.0, 10.0, 20.0],    # IoU(A) = 0.5 -> ignored
        [50.0, 50.0, 60.0, 60.0],  # far from everything -> negative
        [100.0, 0.0, 120.0, 10.0],  # IoU(B) = 100/200 = 0.5: B's best anchor -> positive (low quality)
        [100.0, 0.0, 105.0, 5.0],   # IoU(B) = 25/100 = 0.25 -> negative
    ])
    gt = torch.tensor([[0.0, 0.0, 10.0, 10.0],     # A
                       [100.0, 0.0, 110.0, 10.0]])  # B
    labels, matched = rpn.assign_targets_to_anchors([anchors], [{"boxes": gt}])
    assert labels[0].tolist() == [1.0, 1.0, -1.0, 0.0, 1.0, 0.0]
    assert torch.equal(matched[0][[0, 1, 4]], gt[[0, 0, 1]])
    # without objects every anchor is background
    labels, matched = rpn.assign_targets_to_anchors([anchors], [{"boxes": torch.zeros(0, 4)}])
    assert labels[0].tolist() == [0.0] * 6 and matched[0].shape == (6, 4)


def test_loss_by_hand():
    """Two anchors, one positive with logit 2, one negative with logit -1; sampled: both.
    BCE: (log(1 + e^-2) + log(1 + e^-1)) / 2 = (0.126928 + 0.313262) / 2 = 0.220095.
    Smooth L1 (beta = 1/9: 0.5 x^2 / beta if |x| < beta else |x| - beta / 2) on the positive's
    deltas (0.1, -0.05, 0.2, 0) vs targets (0, 0, 0, 0.5):
    0.045 + 0.01125 + (0.2 - 1/18) + (0.5 - 1/18) = 0.645139, divided by 2 sampled = 0.322569."""
    rpn, _ = make_pair()
    objectness = torch.tensor([[2.0], [-1.0]])
    deltas = torch.tensor([[0.1, -0.05, 0.2, 0.0], [9.0, 9.0, 9.0, 9.0]])  # the negative's deltas don't count
    targets = torch.tensor([[0.0, 0.0, 0.0, 0.5], [0.0, 0.0, 0.0, 0.0]])
    loss_objectness, loss_box = rpn.compute_loss(objectness, deltas, [torch.tensor([1.0, 0.0])], [targets])
    expected_bce = (math.log1p(math.exp(-2)) + math.log1p(math.exp(-1))) / 2
    assert loss_objectness.item() == pytest.approx(expected_bce, abs=1e-6)
    assert loss_objectness.item() == pytest.approx(0.220095, abs=1e-6)
    assert loss_box.item() == pytest.approx((0.045 + 0.01125 + 0.2 - 1 / 18 + 0.5 - 1 / 18) / 2, abs=1e-6)
    assert loss_box.item() == pytest.approx(0.322569, abs=1e-6)


def test_sampler_keeps_at_most_half_positives():
    rpn, _ = make_pair(batch_size_per_image=8)
    labels = [torch.tensor([1.0] * 10 + [0.0] * 10 + [-1.0] * 5)]
    torch.manual_seed(0)
    pos, neg = rpn.fg_bg_sampler(labels)
    assert int(pos[0].sum()) == 4 and int(neg[0].sum()) == 4
    assert pos[0][10:].sum() == 0 and neg[0][:10].sum() == 0 and neg[0][20:].sum() == 0


def test_no_proposals_survive_is_not_an_error():
    """A score threshold no anchor passes leaves empty proposal sets; losses stay finite."""
    ours, _ = make_pair(score_thresh=1.1)
    (il, _), features, targets = make_inputs()
    ours.train()
    proposals, losses = ours(il, features, targets)
    assert [p.shape for p in proposals] == [(0, 4), (0, 4)]
    assert all(torch.isfinite(v) for v in losses.values())
    ours.eval()
    proposals, _ = ours(il, features)
    assert [p.shape for p in proposals] == [(0, 4), (0, 4)]


def test_needs_targets_in_training_and_valid_top_n():
    ours, _ = make_pair()
    (il, _), features, _ = make_inputs()
    with pytest.raises(ValueError, match="targets"):
        ours.train()(il, features)
    with pytest.raises(ValueError, match="pre_nms_top_n"):
        RegionProposalNetwork(AnchorGenerator(SIZES, RATIOS), RPNHead(CHANNELS, 6), 0.7, 0.3, 256, 0.5,
                              pre_nms_top_n=1000, post_nms_top_n=dict(training=1, testing=1), nms_thresh=0.7)


def test_featmap_names_runs_on_the_named_maps_only():
    """featmap_names=["c4"] (R-FCN: RPN on C4, score maps on the dilated C5) = torchvision's RPN given C4 alone:
    same proposals, anchors of that map only, same losses and random draws; None keeps every map."""
    torch.manual_seed(0)
    ref_head = TVRPNHead(CHANNELS, 3)
    with torch.no_grad():
        for p in ref_head.parameters():
            p.normal_(0, 0.3)
    kwargs = dict(fg_iou_thresh=0.7, bg_iou_thresh=0.3, batch_size_per_image=64, positive_fraction=0.5,
                  pre_nms_top_n=dict(training=300, testing=200), post_nms_top_n=dict(training=100, testing=50),
                  nms_thresh=0.7)
    sizes, ratios = ((64,),), ((0.5, 1.0, 2.0),)
    ref = TVRPN(TVAnchorGenerator(sizes, ratios), ref_head, **kwargs)
    ours_head = RPNHead(CHANNELS, 3)
    ours_head.load_state_dict(ref_head.state_dict())
    ours = RegionProposalNetwork(AnchorGenerator(sizes, ratios), ours_head, featmap_names=["c4"], **kwargs)
    (il, tv_il), features, targets = make_inputs()
    c4, c5 = features["1"], torch.randn(2, CHANNELS, 8, 10)  # C5 a trous: stride 16 too, but not for the RPN
    both = OrderedDict([("c4", c4), ("c5", c5)])
    assert len(ours.anchor_generator(il, ours.select_features(both))[0]) == 3 * 8 * 10
    ours.eval(), ref.eval()
    with torch.no_grad():
        assert_same_proposals(ours(il, both)[0], ref(tv_il, {"c4": c4})[0])
    ours.train(), ref.train()
    torch.manual_seed(5)
    _, l_ours = ours(il, both, targets)
    torch.manual_seed(5)
    _, l_ref = ref(tv_il, {"c4": c4}, targets)
    for k in l_ref:
        torch.testing.assert_close(l_ours[k], l_ref[k], rtol=1e-6, atol=1e-7)
    # c5 really is ignored: changing it changes nothing
    ours.eval()
    with torch.no_grad():
        assert_same_proposals(ours(il, OrderedDict([("c4", c4), ("c5", c5 * 3)]))[0], ours(il, both)[0])
    with pytest.raises(ValueError, match=r"featmap_names \['c3'\] are not among the feature maps \['c4', 'c5'\]"):
        RegionProposalNetwork(AnchorGenerator(sizes, ratios), ours_head, featmap_names=["c3"], **kwargs)(il, both)
    with pytest.raises(ValueError, match="non-empty list"):
        RegionProposalNetwork(AnchorGenerator(sizes, ratios), ours_head, featmap_names="c4", **kwargs)
    assert RegionProposalNetwork(AnchorGenerator(sizes, ratios), ours_head, **kwargs).featmap_names is None


def test_proposal_counts_changes_them_inside_the_block_only():
    """``proposal_counts`` equals a torchvision RPN built with those counts inside the block; the configured counts
    come back after it, also when the block raises."""
    ours, _ = make_pair(pre=(300, 200), post=(100, 20))
    _, ref_2000 = make_pair(pre=(300, 200), post=(100, 80))
    (il, tv_il), features, _ = make_inputs()
    ours.eval(), ref_2000.eval()
    assert (ours.pre_nms_top_n("testing"), ours.post_nms_top_n("testing"), ours.post_nms_top_n("training")) == (200, 20, 100)
    with torch.no_grad():
        with ours.proposal_counts(post_nms_top_n=80):
            assert ours.post_nms_top_n() == 80 and ours.pre_nms_top_n() == 200 and ours.post_nms_top_n("training") == 100
            inside, _ = ours(il, features)
        after, _ = ours(il, features)
        reference, _ = ref_2000(tv_il, features)
    assert_same_proposals(inside, reference)
    assert max(len(p) for p in inside) > 20 and all(len(p) <= 20 for p in after)
    with pytest.raises(RuntimeError):
        with ours.proposal_counts(pre_nms_top_n=10, post_nms_top_n=5):
            raise RuntimeError("interrupted")
    assert (ours.pre_nms_top_n("testing"), ours.post_nms_top_n("testing")) == (200, 20)
    with pytest.raises(ValueError, match="post_nms_top_n=0"):
        with ours.proposal_counts(post_nms_top_n=0):
            pass
    with pytest.raises(ValueError, match="mode='test'"):
        ours.post_nms_top_n("test")
