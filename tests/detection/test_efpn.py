"""EFPN (course_lib/detection/efpn.py): C2', eq. 1-4, the routing rule, L_fbb (eq. 6-8), positive masks, the
stage-2 teacher, the bad inputs of issue 11 and the detector's contract -- on small inputs (seconds)."""
import copy
import warnings

import pytest
import torch

from course_lib.detection.efpn import (
    P2_PRIME,
    CrossResolutionDistillation,
    EFPNRoIHeads,
    FeatureTextureTransfer,
    efpn_from_fpn,
    efpn_resnet50_fpn,
    eq4_channel_order,
    fbb_loss,
    efpn_level_mapper,
    pixel_shuffle_eq4,
    positive_masks,
    set_stage,
)
from course_lib.detection.faster_rcnn_fpn import fasterrcnn_resnet50_fpn
from course_lib.engine import fit


@pytest.fixture(scope="module")
def efpn():
    torch.manual_seed(0)
    fpn = fasterrcnn_resnet50_fpn(num_classes=3, min_size=64, max_size=96, rpn_pre_nms_top_n_train=50,
                                  rpn_post_nms_top_n_train=50, rpn_pre_nms_top_n_test=30, rpn_post_nms_top_n_test=30,
                                  box_batch_size_per_image=16)
    return efpn_from_fpn(fpn, small_roi_size=24)


def _images(n=2, h=64, w=80, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(3, h, w, generator=g) for _ in range(n)]


# ----------------------------------------------------------------------------------- C2' (Table I)


def test_c2_prime_shares_c2_weights_at_twice_the_resolution(efpn):
    backbone = efpn.backbone
    x = torch.randn(1, 3, 64, 64)
    body = backbone.body
    with torch.no_grad():
        stem = body.relu(body.bn1(body.conv1(x.clone())))  # conv1-bn1-relu, stride 2
        c2 = body(x)["0"]
        c2_prime = backbone.c2_prime(x)
        by_hand = body.layer1(stem)  # conv2_x itself on the stem output, no max-pool
    assert c2.shape[-2:] == (16, 16) and c2_prime.shape[-2:] == (32, 32) and c2_prime.shape[1] == c2.shape[1] == 256
    torch.testing.assert_close(c2_prime, by_hand, rtol=0, atol=0)
    # no second copy of conv2_x: the only parameters beyond the FPN detector's are the extension's and the P2' head's
    fpn_params = {id(p) for m in (body, backbone.fpn) for p in m.parameters()}
    extra = [n for n, p in efpn.named_parameters() if id(p) not in fpn_params and not n.startswith("backbone.extension")
             and not n.startswith("roi_heads.small_box") and not n.startswith(("rpn.", "roi_heads.box_"))]
    assert extra == []


def test_table_one_shapes_at_800_px(efpn):
    backbone = copy.deepcopy(efpn.backbone).to("meta")  # shapes only: nothing is computed
    with torch.no_grad():
        features, p3_prime = backbone.extended(torch.empty(1, 3, 800, 800, device="meta"))
        c2_prime = backbone.c2_prime(torch.empty(1, 3, 800, 800, device="meta"))
    assert tuple(c2_prime.shape) == (1, 256, 400, 400)  # Table I: C2' 400 x 400 (C2 200 x 200)
    assert [tuple(v.shape[-2:]) for v in features.values()] == [(400, 400), (200, 200), (100, 100), (50, 50),
                                                                 (25, 25), (13, 13)]
    assert list(features) == [P2_PRIME, "0", "1", "2", "3", "pool"] and tuple(p3_prime.shape[-2:]) == (200, 200)


# ----------------------------------------------------------------------------------- eq. 3-4


def test_pixel_shuffle_eq4_by_hand_and_torch_up_to_channel_order():
    g = torch.Generator().manual_seed(0)
    for c, r, h, w in ((1, 2, 2, 3), (3, 2, 3, 2), (2, 3, 2, 2)):
        f = torch.randn(2, c * r * r, h, w, generator=g)
        ps = pixel_shuffle_eq4(f, r)
        assert ps.shape == (2, c, r * h, r * w)
        for x in range(r * h):  # eq. 4 element by element (x: row, y: column)
            for y in range(r * w):
                for ch in range(c):
                    assert ps[:, ch, x, y].equal(f[:, c * r * (y % r) + c * (x % r) + ch, x // r, y // r])
        assert torch.equal(ps, torch.pixel_shuffle(f[:, eq4_channel_order(c * r * r, r)], r))
        if c * r > 1:
            assert not torch.equal(ps, torch.pixel_shuffle(f, r))  # the channel orders really differ
    with pytest.raises(ValueError, match="divisible"):
        pixel_shuffle_eq4(torch.zeros(1, 6, 2, 2), 2)


@pytest.mark.parametrize("variant", ["paper", "code", "nearest"])
def test_ftt_equals_eq3_by_hand(variant):
    torch.manual_seed(0)
    ftt = FeatureTextureTransfer(8, variant=variant).eval()
    p3, p2 = torch.randn(2, 8, 5, 6), torch.randn(2, 8, 10, 12)
    with torch.no_grad():
        out = ftt(p3, p2)
        up = torch.nn.functional.interpolate(p3, scale_factor=2, mode="nearest")
        if variant == "nearest":
            expected = up
        else:
            content = ftt.sub_pixel(ftt.content_extractor(p3))  # E_c(P3) upscaled by sub-pixel convolution
            wrap = torch.cat([p2, content] if variant == "paper" else [content, p2], 1)
            expected = ftt.texture_extractor(wrap) + content  # eq. 3
            if variant == "code":
                expected = ftt.tail(expected) + up
    assert out.shape == p2.shape
    torch.testing.assert_close(out, expected)
    if variant == "paper":  # two residual blocks in each extractor (sec. IV-A3), a 4x-channel conv before the shuffle
        assert len(ftt.content_extractor) == 2 and sum(1 for m in ftt.texture_extractor if hasattr(m, "conv1")) == 2
        assert ftt.sub_pixel[0].out_channels == 4 * 8 and isinstance(ftt.sub_pixel[1], torch.nn.PixelShuffle)


def test_ftt_odd_sizes_crop_to_p2_and_bad_channels():
    ftt = FeatureTextureTransfer(4)
    assert ftt(torch.randn(1, 4, 7, 7), torch.randn(1, 4, 13, 14)).shape == (1, 4, 13, 14)  # 97-px-like maps
    with pytest.raises(ValueError, match="4-channel"):
        ftt(torch.randn(1, 5, 7, 7), torch.randn(1, 4, 14, 14))
    with pytest.raises(ValueError, match="variant"):
        FeatureTextureTransfer(4, variant="espcn")


# ----------------------------------------------------------------------------------- eq. 6-8 and masks


def test_fbb_loss_by_hand():
    student = torch.zeros(1, 2, 2, 2, requires_grad=True)
    target = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]], [[-1.0, 0.0], [0.0, 2.0]]]])  # |diff| sums to 13 over 8 cells
    mask = torch.tensor([[[False, True], [False, True]]])  # N = 2 positive pixels: (0, 1) and (1, 1)
    l_glob = 13 / 8
    l_pos_sum = ((2 + 0) + (4 + 2)) / 2  # eq. 7 literally: per-pixel L1 over channels, / N
    assert fbb_loss(student, target, mask).item() == pytest.approx(l_glob + l_pos_sum / 2)  # default: / C too
    assert fbb_loss(student, target, mask, lam=0.5).item() == pytest.approx(l_glob + 0.5 * l_pos_sum / 2)
    assert fbb_loss(student, target, mask, channel_mean=False).item() == pytest.approx(l_glob + l_pos_sum)
    empty = fbb_loss(student, target, torch.zeros(1, 2, 2, dtype=torch.bool))  # no object: L_pos = 0, no 0 / 0
    assert empty.item() == pytest.approx(l_glob)
    empty.backward()
    assert torch.isfinite(student.grad).all() and student.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="positive_mask"):
        fbb_loss(student, target, mask[0])


def test_positive_masks_snap_outward_and_handle_empty_images():
    boxes = [torch.tensor([[0.0, 0.0, 3.0, 3.0], [5.0, 5.0, 6.0, 9.0], [30.0, 30.0, 40.0, 40.0]]), torch.zeros(0, 4)]
    m = positive_masks(boxes, (6, 5), stride=2)
    expected = torch.zeros(2, 6, 5, dtype=torch.bool)
    expected[0, 0:2, 0:2] = True  # x, y in [0, 3) -> cells floor(0/2) .. ceil(3/2) = 0..1
    expected[0, 2:5, 2:3] = True  # x [5, 6) -> cell 2; y [5, 9) -> cells 2..4
    assert torch.equal(m, expected)  # the third box lies outside the map: clipped away
    assert positive_masks([], (3, 3), 4).shape == (0, 3, 3)


# ----------------------------------------------------------------------------------- eq. 2: routing


class _Tag(torch.nn.Module):
    """A box predictor that answers a constant: which head scored a RoI."""

    def __init__(self, value, num_classes=3):
        super().__init__()
        self.value, self.num_classes = value, num_classes

    def forward(self, x):
        n = x.shape[0]
        return torch.full((n, self.num_classes), float(self.value)), torch.full((n, 4 * self.num_classes), 0.0)


def _tagged_heads(efpn):
    heads = copy.copy(efpn.roi_heads)
    heads._modules = dict(heads._modules)
    heads.box_predictor, heads.small_box_predictor = _Tag(-1.0), _Tag(+1.0)
    return heads


@pytest.mark.parametrize("case", ["mixed", "all small", "all large"])
def test_routing_sends_small_rois_to_the_p2_prime_head(efpn, case):
    heads = _tagged_heads(efpn)
    g = torch.Generator().manual_seed(1)
    sides = {"mixed": torch.tensor([4.0, 23.9, 24.0, 40.0, 10.0]), "all small": torch.tensor([3.0, 8.0, 20.0]),
             "all large": torch.tensor([24.0, 50.0])}[case]
    xy = torch.rand(len(sides), 2, generator=g) * 10
    boxes = torch.cat([xy, xy + sides[:, None]], 1)
    features = {P2_PRIME: torch.randn(2, 256, 40, 40), "0": torch.randn(2, 256, 20, 20), "1": torch.randn(2, 256, 10, 10),
                "2": torch.randn(2, 256, 5, 5), "3": torch.randn(2, 256, 3, 3)}
    logits, deltas = heads.predict(features, [boxes[:2], boxes[2:]], [(80, 80), (80, 80)])
    small = sides < 24  # sqrt(wh) < small_roi_size = 24
    assert torch.equal(efpn_level_mapper(24.0).level([boxes]) == 1, small)
    assert torch.equal(heads.box_roi_pool.map_levels.level([boxes]), efpn_level_mapper(24.0).level([boxes]))
    assert torch.equal(logits[:, 0], torch.where(small, 1.0, -1.0)) and deltas.shape == (len(sides), 12)
    with pytest.raises(ValueError, match="p2_prime"):
        heads.predict({k: v for k, v in features.items() if k != P2_PRIME}, [boxes], [(80, 80)])


# ----------------------------------------------------------------------------------- the detector


def test_eval_returns_torchvisions_contract(efpn):
    efpn.eval()
    with torch.no_grad():
        out = efpn(_images(2, 70, 90) + [torch.zeros(3, 64, 64)])  # a blank image too
    assert len(out) == 3
    for det in out:
        assert set(det) == {"boxes", "labels", "scores"}
        assert det["boxes"].dtype == torch.float32 and det["boxes"].shape[1] == 4
        assert det["labels"].dtype == torch.int64 and det["scores"].shape == det["labels"].shape
        assert (det["scores"][:-1] >= det["scores"][1:]).all()


def _batch(empty=False):
    images = _images(2, 61, 77, seed=3)  # odd sizes on purpose
    boxes = [torch.zeros(0, 4), torch.zeros(0, 4)] if empty else \
        [torch.tensor([[5.0, 6.0, 15.0, 14.0], [30.0, 20.0, 60.0, 50.0]]), torch.tensor([[40.0, 10.0, 48.0, 19.0]])]
    targets = [{"boxes": b, "labels": torch.ones(len(b), dtype=torch.int64)} for b in boxes]
    return images, targets


def test_stage_two_teacher_gets_no_gradient_and_does_not_change(efpn):
    model = copy.deepcopy(efpn)
    trainable = set_stage(model, 2)
    assert {id(p) for p in trainable} == {id(p) for p in model.backbone.extension.parameters()}
    teacher_state = {k: v.clone() for k, v in model.state_dict().items() if k.startswith(("backbone.body",
                                                                                           "backbone.fpn"))}
    loss_fn = CrossResolutionDistillation()
    model.train()
    losses = loss_fn(model, _batch())
    assert set(losses) == {"loss_fbb_p3", "loss_fbb_p2"} and all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert all(p.grad is None for m in (model.backbone.body, model.backbone.fpn) for p in m.parameters())
    assert all(p.grad is not None for p in model.backbone.extension.ftt.parameters())
    # one fit() call: the extension moves, the teacher (body + FPN, batch norm statistics included) does not
    dataset = [tuple(zip(*_batch()))[0], tuple(zip(*_batch()))[1]]
    keys = set(model.state_dict())
    extension = [p.detach().clone() for p in model.backbone.extension.parameters()]
    fit(model, dataset, loss_fn, torch.optim.SGD(trainable, lr=0.01), steps=1, batch_size=2,
        collate_fn=lambda b: tuple(zip(*b)), progress=False)
    after = model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in teacher_state.items())
    assert any(not torch.equal(a, b) for a, b in zip(extension, model.backbone.extension.parameters()))
    assert set(after) == keys  # the teacher is no extra module: nothing more in the model's checkpoints


def test_stage_two_refuses_a_trainable_shared_teacher(efpn):
    model = copy.deepcopy(efpn)
    set_stage(model, 1)
    with pytest.raises(RuntimeError, match="set_stage"):
        CrossResolutionDistillation()(model.train(), _batch())


def test_distillation_losses_finite_without_objects_and_maps_aligned(efpn):
    model = copy.deepcopy(efpn)
    set_stage(model, 2)
    loss_fn = CrossResolutionDistillation()
    student, targets, teacher = loss_fn.prepare(model, *_batch(empty=True))
    assert teacher.tensors.shape[-1] == 2 * student.tensors.shape[-1]  # P2^2x and P2' align cell for cell
    losses = loss_fn(model.train(), _batch(empty=True))
    assert all(torch.isfinite(v) and v > 0 for v in losses.values())


def test_stage_three_trains_only_the_p2_prime_head(efpn):
    model = copy.deepcopy(efpn)
    trainable = set_stage(model, 3)
    heads = model.roi_heads
    assert {id(p) for p in trainable} == {id(p) for m in (heads.small_box_head, heads.small_box_predictor)
                                          for p in m.parameters()}
    with pytest.raises(ValueError, match="stage"):
        set_stage(model, 4)


def test_plain_fpn_weights_load_with_a_clear_warning(tmp_path):
    fpn = fasterrcnn_resnet50_fpn(num_classes=3)
    path = tmp_path / "fpn.pt"
    torch.save(fpn.state_dict(), path)
    with pytest.warns(UserWarning, match="extension .* untrained"):
        model = efpn_resnet50_fpn(weights=path, frozen_bn_eps=1e-5)
    assert torch.equal(model.backbone.fpn.layer_blocks[0][0].weight, fpn.backbone.fpn.layer_blocks[0][0].weight)
    assert model.roi_heads.small_roi_size == 112.0
    efpn_path = tmp_path / "efpn.pt"
    torch.save(model.state_dict(), efpn_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = efpn_resnet50_fpn(weights=efpn_path)  # an EFPN file: everything loads, no warning
    mine, theirs = model.state_dict(), again.state_dict()
    assert set(mine) == set(theirs) and all(torch.equal(mine[k], theirs[k]) for k in mine)
    with pytest.raises(ValueError, match="small_roi_size"):
        efpn_resnet50_fpn(num_classes=3, small_roi_size=0)


def test_full_forward_routes_through_both_heads(efpn):
    seen = {"small": 0, "other": 0}
    hooks = [efpn.roi_heads.small_box_head.register_forward_hook(lambda m, i, o: seen.__setitem__("small", len(o))),
             efpn.roi_heads.box_head.register_forward_hook(lambda m, i, o: seen.__setitem__("other", len(o)))]
    try:
        efpn.eval()
        with torch.no_grad():
            image_list, _, _ = efpn.prepare(_images(1, 64, 80))
            features = efpn.features(image_list)
            proposals, _ = efpn.proposals(image_list, features)
            efpn.detect(features, proposals, image_list)
    finally:
        for h in hooks:
            h.remove()
    small = int((efpn_level_mapper(efpn.roi_heads.small_roi_size).level(proposals) == 1).sum())
    assert seen == {"small": small, "other": len(proposals[0]) - small}
    assert list(features)[0] == P2_PRIME and efpn.rpn.featmap_names == ["0", "1", "2", "3", "pool"]


def test_p2_prime_route_off_gives_exactly_its_fpns_detections():
    """The control of issue 19: EFPN with the P2' route switched off (a threshold no RoI falls under) detects exactly
    as the FPN it was built from -- boxes, scores and labels equal bit for bit; with the route on, the small RoIs go to
    the (untrained) P2' level and the detections differ, so the test can fail. The threshold is restored after."""
    torch.manual_seed(0)
    fpn = fasterrcnn_resnet50_fpn(num_classes=3, min_size=64, max_size=96, width=0.25, rpn_pre_nms_top_n_test=30,
                                  rpn_post_nms_top_n_test=30).eval()
    efpn = efpn_from_fpn(fpn, small_roi_size=24).eval()
    images = _images(2, 64, 80, seed=5)
    with torch.no_grad():
        expected = fpn(images)
        with efpn.p2_prime_route_off() as model:
            assert model is efpn and efpn.roi_heads.small_roi_size == 0.0
            off = efpn(images)
        on = efpn(images)
    assert efpn.roi_heads.small_roi_size == 24.0
    assert all(len(det["boxes"]) > 0 for det in expected)
    for mine, theirs in zip(off, expected):
        assert set(mine) == set(theirs) == {"boxes", "scores", "labels"}
        assert all(torch.equal(mine[k], theirs[k]) for k in theirs)
    assert any(not torch.equal(mine["scores"], theirs["scores"]) for mine, theirs in zip(on, expected))
    with pytest.raises(RuntimeError, match="inside"), efpn.p2_prime_route_off():
        raise RuntimeError("inside")
    assert efpn.roi_heads.small_roi_size == 24.0


def test_two_images_overfit_the_p2_prime_head(efpn):
    """Stage 3 on two images: the P2' head alone learns their small objects (the backbone is frozen, so its
    features are computed once). Proposals are the boxes jittered, so the check does not depend on the RPN."""
    torch.manual_seed(0)
    model = copy.deepcopy(efpn)
    images, targets = _batch()
    targets[0]["labels"] = torch.tensor([1, 2])
    targets[1]["labels"] = torch.tensor([2])
    with torch.no_grad():  # an untrained backbone: batch statistics keep its features in a sane range
        image_list, resized, _ = model.train().prepare(images, targets)
        features = model.features(image_list)
    params = set_stage(model, 3)
    heads = model.roi_heads
    heads.small_roi_size = 1000.0  # every RoI to P2': the loss is the P2' head's alone
    g = torch.Generator().manual_seed(0)
    proposals = [torch.cat([t["boxes"] + torch.randn(len(t["boxes"]), 4, generator=g) * 1.5 for _ in range(4)])
                 for t in resized]
    optimizer = torch.optim.Adam(params, lr=2e-4, foreach=True)
    heads.train()
    first = None
    for _ in range(40):
        _, losses = heads(features, proposals, image_list.image_sizes, resized)
        loss = sum(losses.values())
        first = first if first is not None else loss.item()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.3 * first
    heads.eval()
    with torch.no_grad():
        detections, _ = heads(features, [t["boxes"] for t in resized], image_list.image_sizes)
    from course_lib.ops import box_iou

    for det, t in zip(detections, resized):
        for box, label in zip(t["boxes"], t["labels"]):
            same = det["labels"] == label
            assert same.any() and box_iou(box[None], det["boxes"][same]).max() > 0.5


def test_the_routing_rule_lives_in_efpn_and_the_pooler_takes_it():
    """EFPN's rule is EFPNLevelMapper (efpn.py), handed to ops' MultiScaleRoIAlign as its level rule; a rule for other
    levels than the maps' is refused on the first call."""
    from collections import OrderedDict

    from course_lib.detection.efpn import EFPN_LEVELS, EFPNLevelMapper
    from course_lib.detection.fpn import FPN_ROI_LEVELS
    from course_lib.ops import LevelMapper, MultiScaleRoIAlign

    rule = EFPNLevelMapper(24.0)
    boxes = [torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 30.0, 30.0], [0.0, 0.0, 400.0, 400.0]])]
    assert rule.levels == [1, 2, 3, 4, 5] and rule.level(boxes).tolist() == [1, 2, 4]
    assert rule(boxes).tolist() == [0, 1, 3]  # indices into levels
    torch.testing.assert_close(rule.level(boxes)[1:], LevelMapper(2, 5).level(boxes)[1:])  # eq. 1 above 24 px
    features = OrderedDict((name, torch.rand(1, 2, 64 // 2 ** k, 64 // 2 ** k)) for name, k in EFPN_LEVELS.items())
    pooled, levels = MultiScaleRoIAlign(list(EFPN_LEVELS)[:-1], 2, 2, levels=EFPN_LEVELS, level_mapper=rule)(
        features, boxes, [(64, 64)], return_levels=True)
    assert pooled.shape == (3, 2, 2, 2) and levels.tolist() == [1, 2, 4]
    with pytest.raises(ValueError, match="is for the levels"):
        MultiScaleRoIAlign(FPN_ROI_LEVELS, 2, 2, level_mapper=rule)(features, boxes, [(64, 64)])
    with pytest.raises(ValueError, match="small_roi_size must be a positive"):
        EFPNLevelMapper(0)


def _squares(sides):
    s = torch.as_tensor(sides, dtype=torch.float32)
    return torch.stack([torch.zeros_like(s), torch.zeros_like(s), s, s], dim=1)


def test_small_object_rule_by_hand():
    """EFPN sec. IV-A3: sqrt(wh) < 112 -> P2' (level 1); the rest by eq. 1 over P2..P5 (so at k0 = 4, P2 gets
    none: every RoI of 112 px or more maps to P3 or coarser). (Moved from tests/ops: the rule is chapter 8's.)"""
    from course_lib.detection.efpn import EFPNLevelMapper
    from course_lib.ops import LevelMapper

    mapper = EFPNLevelMapper(112)
    assert mapper.small_level == 1
    assert mapper.level([_squares([10, 55, 111.9, 112, 223, 224, 1000])]).tolist() == [1, 1, 1, 3, 3, 4, 5]
    # TT100K's 56 px is what eq. 1 gives by itself once P2' is level 1: floor(4 + log2(s / 224)) <= 1 <=> s < 56
    g = torch.Generator().manual_seed(0)
    boxes = [_squares(torch.exp(torch.rand(500, generator=g) * 7)), _squares([55.99, 56.0, 56.01])]
    assert torch.equal(EFPNLevelMapper(56).level(boxes), LevelMapper(levels=[1, 2, 3, 4, 5]).level(boxes))
    with pytest.raises(ValueError, match="small_roi_size must be a positive"):
        EFPNLevelMapper(0)


def test_pooler_with_the_small_object_rule_pools_each_roi_from_its_level():
    """ops' MultiScaleRoIAlign over P2', P2..P5 handed EFPNLevelMapper(112): every RoI under 112 px is pooled from
    P2', the rest by eq. 1 over P2..P5, each with spatial_scale 1 / 2^level. (Moved from tests/ops.)"""
    from collections import OrderedDict

    from torchvision.ops import roi_align

    from course_lib.detection.efpn import EFPNLevelMapper
    from course_lib.ops import MultiScaleRoIAlign

    g = torch.Generator().manual_seed(2)
    table = {"s2": 1, "s4": 2, "s8": 3, "s16": 4, "s32": 5}
    x = OrderedDict((name, torch.randn(1, 3, 256 // 2**k, 256 // 2**k, generator=g)) for name, k in table.items())
    xy = torch.rand(40, 2, generator=g) * 100
    boxes = torch.cat([xy, xy + torch.exp(torch.empty(40, 2).uniform_(1.5, 5.5, generator=g))], 1)
    efpn = MultiScaleRoIAlign(list(table), 5, 2, levels=table, level_mapper=EFPNLevelMapper(112))
    out, levels = efpn(x, [boxes], [(256, 256)], return_levels=True)
    small = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).sqrt() < 112
    assert small.any() and (~small).any()
    assert (levels[small] == 1).all() and (levels[~small] >= 3).all()
    rois = torch.cat([torch.zeros(len(boxes), 1), boxes], 1)
    by_hand = torch.cat([roi_align(x[f"s{2 ** int(k)}"], rois[i : i + 1], 5, 1 / 2 ** int(k), 2)
                         for i, k in enumerate(levels)])
    torch.testing.assert_close(out, by_hand, rtol=0, atol=1e-5)


@pytest.mark.parametrize("side", [128, 120])  # 120: P3 and P2 sides not exactly 2:1 (the fallback)
@pytest.mark.parametrize("ftt", ["paper", "code", "nearest"])
def test_the_extended_pyramid_is_the_papers_formula_to_the_bit(side, ftt):
    """EFPNBackbone.extended's shortcuts (one stem for C2..C5 and C2', P3' added over 2 x 2 blocks without the
    upsampled map, residual blocks in place) give exactly the maps of the formulas they replace."""
    import torch.nn.functional as F

    from course_lib.detection.efpn import ResidualBlock, _match_size

    torch.manual_seed(0)
    backbone = efpn_resnet50_fpn(num_classes=3, width=0.125, min_size=side, max_size=side, ftt=ftt).backbone.eval()
    x = torch.randn(1, 3, side, side)
    with torch.no_grad():
        maps, p3_prime = backbone.extended(x)
        p = backbone.pyramid(x)
        ext = backbone.extension
        p3 = ext.ftt(p["1"], p["0"])
        lateral = ext.lateral(backbone.c2_prime(x))
        p2_prime = ext.output(lateral + _match_size(F.interpolate(p3, scale_factor=2.0, mode="nearest"), lateral))
    assert torch.equal(p3_prime, p3) and torch.equal(maps[P2_PRIME], p2_prime)
    assert all(torch.equal(maps[k], v) for k, v in p.items())
    block, h = ResidualBlock(4), torch.randn(1, 4, 6, 6)
    with torch.no_grad():
        assert torch.equal(block(h), F.relu(h + block.conv2(F.relu(block.conv1(h)))))
