"""R-FCN (chapter 6): the score-map shapes for k in {1, 3, 7} and both box layouts, the dilated
conv5_x against torchvision's, the head against a hand-written PSRoI pooling + voting loop and
against torchvision.ops.ps_roi_pool, the train/eval contract, a short overfit, and bad inputs."""
import math

import pytest
import torch
import torchvision
from torchvision.models._utils import IntermediateLayerGetter as TVIntermediateLayerGetter

from course_lib.detection.rfcn import (
    PAPER_RFCN_CONFIG,
    PSScoreMaps,
    RFCNRoIHeads,
    position_sensitive_vote,
    rfcn_resnet50,
    rfcn_resnet101,
)

SMALL = dict(min_size=128, max_size=160, rpn_pre_nms_top_n_train=300, rpn_post_nms_top_n_train=50,
             rpn_pre_nms_top_n_test=300, rpn_post_nms_top_n_test=50)


def scene(seed=0):
    """Two images with bright rectangles on noise (the second without objects), and their targets."""
    g = torch.Generator().manual_seed(seed)
    images, targets = [], []
    for i, (h, w) in enumerate([(120, 150), (100, 160)]):
        img = torch.rand(3, h, w, generator=g) * 0.3
        boxes = [(12, 10, 70, 80), (80, 30, 140, 100)] if i == 0 else []
        for x1, y1, x2, y2 in boxes:
            img[:, y1:y2, x1:x2] += 0.6
        images.append(img.clamp(0, 1))
        targets.append({"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                        "labels": torch.tensor([1, 2][:len(boxes)], dtype=torch.int64)})
    return images, targets


@pytest.fixture(scope="module")
def small_model():
    torch.manual_seed(0)
    return rfcn_resnet50(num_classes=3, **SMALL)


# ------------------------------------------------------------------------------------- shapes
@pytest.mark.parametrize("k", [1, 3, 7])
def test_score_map_channels_for_k(k):
    heads = PSScoreMaps(2048, 21, k=k)  # VOC: 20 classes + background
    assert heads.conv_new_1.in_channels == 2048 and heads.conv_new_1.out_channels == 1024
    assert heads.rfcn_cls.out_channels == k * k * 21 and heads.rfcn_bbox.out_channels == 4 * k * k
    assert PSScoreMaps(2048, 21, k=k, box_maps=8).rfcn_bbox.out_channels == 8 * k * k
    c5 = torch.randn(1, 2048, 5, 6)
    cls_maps, box_maps = heads(c5)
    assert cls_maps.shape == (1, k * k * 21, 5, 6) and box_maps.shape == (1, 4 * k * k, 5, 6)
    if k == 7:  # the paper's numbers: 1029 score maps, 196 box maps (the official code: 392)
        assert heads.rfcn_cls.out_channels == 1029 and heads.rfcn_bbox.out_channels == 196
        assert PSScoreMaps(2048, 21, box_maps=8).rfcn_bbox.out_channels == 392


def test_resnet101_at_full_scale_keeps_stride_16():
    model = rfcn_resnet101(num_classes=21)
    assert model.transform.min_size == (600,) and model.transform.max_size == 1000
    assert sum(len(layer) for layer in [model.backbone.body.layer3]) == 23  # conv4_x of ResNet-101
    assert all(block.conv2.dilation == (2, 2) for block in model.backbone.body.layer4)  # all of conv5_x a trous
    assert model.backbone.body.layer4[0].conv2.stride == (1, 1)
    assert model.rpn.head.conv[0][0].in_channels == 1024 and model.rpn.head.conv[0][0].out_channels == 512
    assert model.rpn.head.cls_logits.out_channels == 9 and model.rpn.featmap_names == ["c4"]
    model.eval()
    with torch.no_grad():
        features = model.backbone(torch.zeros(1, 3, 64, 96))
    assert features["c4"].shape == (1, 1024, 4, 6) and features["c5"].shape == (1, 2048, 4, 6)


def test_paper_configuration(small_model):
    heads, rpn = small_model.roi_heads, small_model.rpn
    assert heads.fg_bg_sampler is None and heads.ohem_batch_size_per_image == 128  # all RoIs scored, 128 kept
    assert heads.proposal_matcher.high_threshold == 0.5 and heads.nms_thresh == 0.3
    assert heads.box_roi_pool.spatial_scale == 1 / 16 and heads.box_roi_pool.output_size == 7
    assert heads.box_head is None and heads.box_predictor is None  # nothing learnable per RoI
    assert PAPER_RFCN_CONFIG.rpn_post_nms_top_n_train == 300 == PAPER_RFCN_CONFIG.rpn_post_nms_top_n_test
    assert rpn.anchor_generator.sizes == ((128, 256, 512),)
    per_roi = [n for n, p in heads.named_parameters()]
    assert all(n.startswith("score_maps.") for n in per_roi)  # the only parameters: the per-image 1x1 convs


# -------------------------------------------------------------------- backbone vs torchvision
@pytest.mark.parametrize("dilate_first_block", [False, True])
def test_dilated_conv5_equals_torchvision_from_the_same_state_dict(dilate_first_block, tmp_path):
    torch.manual_seed(0)
    ref = torchvision.models.resnet50(replace_stride_with_dilation=[False, False, True])
    path = tmp_path / "r50.pth"
    torch.save(ref.state_dict(), path)
    if dilate_first_block:  # the official prototxts dilate res5a_branch2b as well
        ref.layer4[0].conv2.dilation, ref.layer4[0].conv2.padding = (2, 2), (2, 2)
    ours = rfcn_resnet50(num_classes=3, weights_backbone=path, dilate_first_block=dilate_first_block).backbone
    ref_body = TVIntermediateLayerGetter(ref, {"layer3": "c4", "layer4": "c5"})
    ours.eval(), ref_body.eval()
    x = torch.randn(2, 3, 80, 64)
    with torch.no_grad():
        got, expected = ours(x), ref_body(x)
    assert got["c5"].shape == (2, 2048, 5, 4)  # stride 16, not 32
    for name in ("c4", "c5"):
        torch.testing.assert_close(got[name], expected[name], rtol=1e-4, atol=1e-5)
    if dilate_first_block:  # and it is not the torchvision layout
        plain = TVIntermediateLayerGetter(torchvision.models.resnet50(replace_stride_with_dilation=[False, False, True]),
                                          {"layer4": "c5"})
        plain.load_state_dict(torch.load(path), strict=False)
        with torch.no_grad():
            assert not torch.allclose(plain.eval()(x)["c5"], got["c5"], atol=1e-3)


# -------------------------------------------------------------- the head against loops and torchvision
def _round_half_away(x: float) -> int:
    return int(math.floor(abs(x) + 0.5)) * (1 if x >= 0 else -1)


def hand_psroi_vote(maps: torch.Tensor, rois: torch.Tensor, k: int, scale: float) -> torch.Tensor:
    """PSRoI pooling + voting written out: for every RoI and output channel c, bin (i, j) averages the
    pixels of its sub-window in channel (c * k + i) * k + j (eq. 1, Caffe/torchvision layout, their
    rounding and clipping to [0, H-1]); the vote averages the k^2 bins (eq. 2 as the official code)."""
    _, channels, height, width = maps.shape
    c_out = channels // (k * k)
    out = torch.zeros(len(rois), c_out, dtype=torch.float64)
    for r, (b, x1, y1, x2, y2) in enumerate(rois.tolist()):
        sx, sy = _round_half_away(x1 * scale), _round_half_away(y1 * scale)
        ex, ey = _round_half_away(x2 * scale), _round_half_away(y2 * scale)
        roi_w, roi_h = max(ex - sx, 1), max(ey - sy, 1)
        bin_w, bin_h = roi_w / k, roi_h / k
        for c in range(c_out):
            total = 0.0
            for i in range(k):
                hs = min(max(math.floor(i * bin_h) + sy, 0), height - 1)
                he = min(max(math.ceil((i + 1) * bin_h) + sy, 0), height - 1)
                for j in range(k):
                    ws = min(max(math.floor(j * bin_w) + sx, 0), width - 1)
                    we = min(max(math.ceil((j + 1) * bin_w) + sx, 0), width - 1)
                    if he <= hs or we <= ws:
                        continue  # an empty bin pools to 0
                    window = maps[int(b), (c * k + i) * k + j, hs:he, ws:we].double()
                    total += float(window.mean())
            out[r, c] = total / (k * k)
    return out


def _random_rois(g, n, height, width, stride=16):
    """RoIs in image pixels, some reaching outside the feature map."""
    xy = torch.rand(n, 2, generator=g) * torch.tensor([width * stride, height * stride])
    wh = torch.rand(n, 2, generator=g) * 120 + 4
    return torch.cat([xy - 20, xy + wh], 1)


@pytest.mark.parametrize("k,box_maps", [(3, 4), (3, 8), (1, 4)])
def test_head_equals_a_hand_written_psroi_pooling_and_vote(k, box_maps):
    torch.manual_seed(0)
    score_maps = PSScoreMaps(16, 3, k=k, reduced_channels=8, box_maps=box_maps)
    with torch.no_grad():  # larger weights: varied maps
        for conv in (score_maps.conv_new_1, score_maps.rfcn_cls, score_maps.rfcn_bbox):
            conv.weight.normal_(std=0.5)
            conv.bias.normal_()
    heads = RFCNRoIHeads(score_maps, 0.5, 0.5, None, 0.25, None, 0.05, 0.3, 100)
    g = torch.Generator().manual_seed(1)
    c5 = torch.randn(2, 16, 9, 11, generator=g)
    proposals = [_random_rois(g, 6, 9, 11), _random_rois(g, 4, 9, 11)]
    logits, deltas = heads.predict({"c5": c5}, proposals, [(144, 176)] * 2)
    cls_maps, box_maps_ = score_maps(c5)
    rois = torch.cat([torch.cat([torch.full((len(p), 1), float(i)), p], 1) for i, p in enumerate(proposals)])
    expected_logits = hand_psroi_vote(cls_maps.detach(), rois, k, 1 / 16)
    expected_deltas = hand_psroi_vote(box_maps_.detach(), rois, k, 1 / 16)
    if box_maps == 8:
        expected_deltas = expected_deltas[:, 4:]  # the foreground 4 of the official layout
    assert logits.shape == (10, 3) and deltas.shape == (10, 4)
    torch.testing.assert_close(logits.double(), expected_logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(deltas.double(), expected_deltas, rtol=1e-5, atol=1e-5)
    # the pooling itself is torchvision's
    tv = torchvision.ops.ps_roi_pool(cls_maps, rois, k, 1 / 16)
    ours = heads.box_roi_pool(cls_maps, proposals)
    torch.testing.assert_close(ours, tv, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(position_sensitive_vote(tv), logits, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------ the detector contract
def test_train_mode_returns_named_losses_also_without_objects(small_model):
    images, targets = scene()
    small_model.train()
    torch.manual_seed(0)
    losses = small_model(images, targets)
    assert set(losses) == {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"}
    assert all(torch.isfinite(v) and v > 0 for v in losses.values())
    sum(losses.values()).backward()
    assert small_model.roi_heads.score_maps.rfcn_cls.weight.grad.abs().sum() > 0
    assert small_model.backbone.body.layer4[2].conv3.weight.grad.abs().sum() > 0
    small_model.zero_grad()
    losses = small_model(images[1:], targets[1:])  # only the image without objects
    assert losses["loss_box_reg"] == 0 and losses["loss_classifier"] > 0


def test_eval_returns_detections_in_original_coordinates(small_model):
    images, _ = scene()
    small_model.eval()
    with torch.no_grad():
        detections = small_model(images)
        image_list, _, sizes = small_model.prepare(images)
        features = small_model.features(image_list)
        proposals, _ = small_model.proposals(image_list, features)
        resized, _ = small_model.detect(features, proposals, image_list)
    for det, res, img, new in zip(detections, resized, images, image_list.image_sizes):
        assert set(det) == {"boxes", "labels", "scores"} and det["labels"].dtype == torch.int64
        assert det["boxes"].shape[0] > 0
        assert (det["labels"] >= 1).all() and (det["labels"] <= 2).all()
        assert torch.all(det["scores"][:-1] >= det["scores"][1:])
        ratio = torch.tensor([img.shape[2] / new[1], img.shape[1] / new[0]] * 2)
        torch.testing.assert_close(det["boxes"], res["boxes"] * ratio)
        assert (det["boxes"][:, 2] <= img.shape[2] + 1e-3).all() and (det["boxes"][:, 3] <= img.shape[1] + 1e-3).all()


def test_a_few_steps_overfit_two_images():
    """Heads-only fine-tuning on fixed features of a random backbone (the backbone's cost is not what is
    tested): after 120 steps the loss has more than halved, the two best detections of image 0 are its two
    objects with their classes, and the image without objects scores below them."""
    torch.manual_seed(0)
    model = rfcn_resnet50(num_classes=3, **SMALL)
    images, targets = scene()
    model.eval()
    with torch.no_grad():
        image_list, resized_targets, _ = model.prepare(images, targets)
        features = model.features(image_list)
    optimizer = torch.optim.SGD(list(model.rpn.parameters()) + list(model.roi_heads.parameters()), lr=0.02,
                                momentum=0.9)
    model.rpn.train(), model.roi_heads.train()
    losses = []
    for _ in range(120):  # 60 is enough on one thread but not on two: keep a margin
        proposals, rpn_losses = model.proposals(image_list, features, resized_targets)
        _, head_losses = model.detect(features, proposals, image_list, resized_targets)
        loss = sum({**rpn_losses, **head_losses}.values())
        losses.append(float(loss.detach()))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert losses[-1] < 0.5 * losses[0]
    model.eval()
    with torch.no_grad():
        detections = model(images)
    top2 = {key: value[:2] for key, value in detections[0].items()}
    iou = torchvision.ops.box_iou(targets[0]["boxes"], top2["boxes"])  # [2 objects, 2 detections]
    matched = iou.argmax(1)
    assert sorted(matched.tolist()) == [0, 1] and (iou.max(1).values > 0.5).all()
    assert torch.equal(top2["labels"][matched], targets[0]["labels"])
    assert detections[1]["scores"].numel() == 0 or detections[1]["scores"].max() < top2["scores"].min()


# -------------------------------------------------------------------------------- bad inputs
def test_bad_inputs_are_named(tmp_path):
    with pytest.raises(ValueError, match="num_classes .* must be an int >= 2"):
        rfcn_resnet50(num_classes=1, **SMALL)
    assert rfcn_resnet50(**SMALL).roi_heads.score_maps.num_classes == 91  # torchvision's default (COCO ids)
    with pytest.raises(ValueError, match="box_maps must be 4 .* or 8"):
        PSScoreMaps(2048, 21, box_maps=6)
    with pytest.raises(ValueError, match="k .* must be an int >= 1"):
        PSScoreMaps(2048, 21, k=0)
    with pytest.raises(TypeError, match=r"unexpected keyword arguments \['box_head'\]"):
        rfcn_resnet50(num_classes=3, box_head=None)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        rfcn_resnet50(num_classes=3, weights=tmp_path / "missing.pth")

    torch.manual_seed(0)
    model = rfcn_resnet50(num_classes=3, k=3, **SMALL)
    path = tmp_path / "rfcn.pth"
    torch.save(model.state_dict(), path)
    with pytest.raises(ValueError, match=r"num_classes=5 disagrees with .* trained with num_classes=3 \(k=3\)"):
        rfcn_resnet50(num_classes=5, k=3, weights=path, **SMALL)
    with pytest.raises(ValueError, match=r"k=7 does not fit .* 27 output channels, not a multiple of k\^2 = 49"):
        rfcn_resnet50(weights=path, **SMALL)  # k defaults to 7; the file has 3^2 * 3 = 27 maps
    loaded = rfcn_resnet50(weights=path, k=3, **SMALL)  # num_classes read from the file
    assert loaded.roi_heads.score_maps.num_classes == 3
    reference = model.state_dict()  # (the loaded model has frozen batch norm: no batch counters)
    for name, value in loaded.state_dict().items():
        assert torch.equal(value, reference[name]), name
    heads = model.roi_heads
    with pytest.raises(ValueError, match=r"reads the feature map 'c5', but got \['0'\]"):
        heads.predict({"0": torch.zeros(1, 2048, 2, 2)}, [torch.zeros(0, 4)], [(32, 32)])


def test_image_smaller_than_one_stride_and_rois_outside_the_map():
    torch.manual_seed(0)
    model = rfcn_resnet50(num_classes=3, k=3, min_size=8, max_size=8)
    tiny = [torch.rand(3, 5, 7)]  # resized to 6 x 8 pixels: C5 is a single cell
    model.eval()
    with torch.no_grad():
        det = model(tiny)
    assert det[0]["boxes"].shape[1] == 4 and torch.isfinite(det[0]["boxes"]).all()
    model.train()
    losses = model(tiny, [{"boxes": torch.tensor([[1.0, 1.0, 4.0, 4.0]]), "labels": torch.tensor([2])}])
    assert all(torch.isfinite(v) for v in losses.values())
    # RoIs reaching far outside a 2 x 3 map: torchvision's clipping, finite values
    heads = model.roi_heads
    maps = torch.randn(1, 27, 2, 3)
    rois = torch.tensor([[0.0, -50.0, -40.0, 30.0, 20.0], [0.0, 20.0, 10.0, 300.0, 200.0]])
    torch.testing.assert_close(heads.box_roi_pool(maps, [rois[:, 1:]]),
                               torchvision.ops.ps_roi_pool(maps, rois, 3, 1 / 16), rtol=1e-5, atol=1e-6)
