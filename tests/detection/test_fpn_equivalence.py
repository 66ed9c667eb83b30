"""Proof that course_lib's Faster R-CNN R50-FPN *is* torchvision's ``fasterrcnn_resnet50_fpn``.

torchvision's model is built and seeded, its state dict is loaded into the course model (strict), and both
run on the same batches. Compared: the transform's batch, backbone + FPN features, anchors, RPN proposals,
detections (boxes within 1e-3 px, labels equal, scores within 1e-4) and, in training mode with the same seed
and targets, the four losses and the gradients.

Weights are random. No rescaling is done: the random ResNet's features are large (fc7 activations ~4), so
the class logits already have a standard deviation of ~5 and the scores spread over (0, 1) -- many
detections above the 0.05 threshold, no two alike (checked below, so the comparison is not vacuous).
Rescaling the predictor up would saturate the softmax at 1.0 and create the ties that make orderings
ambiguous.

Exact ties. A blank image (all zeros) or one with large uniform areas (a tiny image scaled up 10x, the zero
padding of a batch) gives many anchors *exactly* the same objectness (identical features), and RoIs exactly the
same class scores; there the order of equal scores is decided by torchvision's ``batched_nms`` (an unstable
``sort`` above 1000 boxes on the CPU), and ``course_lib.ops.batched_nms`` makes the same calls. So proposals
and detections are compared position by position: same boxes, same labels, same scores, in the same order --
also on the blank image, where the 100-detection cut falls among ties (``assert_same_in_order``).

Sizes: min_size 320 / max_size 512 for most cases (time), plus ONE full-scale case at the default 800 px.
"""
from __future__ import annotations

import copy
from collections import OrderedDict

import pytest
import torch
import torchvision
from torch import nn
from torchvision.models.detection import FasterRCNN as TVFasterRCNN
from torchvision.models.detection import fasterrcnn_resnet50_fpn as tv_fasterrcnn_resnet50_fpn
from torchvision.models.detection._utils import overwrite_eps as tv_overwrite_eps
from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor, resnet_fpn_backbone
from torchvision.ops.misc import FrozenBatchNorm2d as TVFrozenBatchNorm2d

from course_lib.backbones.resnet import FrozenBatchNorm2d
from course_lib.detection.faster_rcnn_fpn import fasterrcnn_resnet101_fpn, fasterrcnn_resnet50_fpn

BOX_ATOL, SCORE_ATOL = 1e-3, 1e-4
SMALL = dict(min_size=320, max_size=512)


def scene(height: int, width: int, seed: int, num_objects: int = 4) -> torch.Tensor:
    """A [3, H, W] image in [0, 1]: a colour gradient with a few uniformly coloured rectangles, plus noise."""
    g = torch.Generator().manual_seed(seed)
    ys = torch.linspace(0, 1, height).view(1, -1, 1)
    xs = torch.linspace(0, 1, width).view(1, 1, -1)
    image = (0.3 + 0.4 * torch.rand(3, 1, 1, generator=g)) * (ys + xs) / 2 + 0.1
    for _ in range(num_objects):
        h, w = (int(torch.randint(8, max(9, s // 2), (1,), generator=g)) for s in (height, width))
        y, x = int(torch.randint(0, height - h, (1,), generator=g)), int(torch.randint(0, width - w, (1,), generator=g))
        image[:, y:y + h, x:x + w] = torch.rand(3, 1, 1, generator=g)
    return (image + 0.05 * torch.rand(3, height, width, generator=g)).clamp(0, 1)


def paired_models(seed=0, **kwargs):
    torch.manual_seed(seed)
    ref = tv_fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None, **kwargs)
    ours = fasterrcnn_resnet50_fpn(**kwargs)
    ours.load_state_dict(ref.state_dict(), strict=True)
    return ours, ref


class Recorder:
    """Forward hooks that keep what the transform, backbone, anchor generator, RPN and RoI heads returned,
    and the RPN's ``filter_proposals`` (proposals *with* their objectness, which the RPN's output drops)."""

    def __init__(self, model):
        self.outputs, self.handles, self.rpn = {}, [], model.rpn
        for name in ("transform", "backbone", "rpn", "rpn.anchor_generator", "roi_heads"):
            module = model.get_submodule(name)
            self.handles.append(module.register_forward_hook(self._keep(name)))
        filter_proposals = model.rpn.filter_proposals

        def recording_filter_proposals(*args, **kwargs):
            self.outputs["proposals"] = filter_proposals(*args, **kwargs)
            return self.outputs["proposals"]
        model.rpn.filter_proposals = recording_filter_proposals  # an instance attribute shadows the method

    def _keep(self, name):
        def hook(module, inputs, output):
            self.outputs[name] = output
        return hook

    def remove(self):
        for h in self.handles:
            h.remove()
        del self.rpn.filter_proposals


def run_both(ours, ref, images, targets=None, seed=0):
    rec_ours, rec_ref = Recorder(ours), Recorder(ref)
    try:
        with torch.set_grad_enabled(targets is not None):
            torch.manual_seed(seed)
            out_ours = ours(images, copy.deepcopy(targets))
            torch.manual_seed(seed)
            out_ref = ref(images, copy.deepcopy(targets))
    finally:
        rec_ours.remove()
        rec_ref.remove()
    return out_ours, out_ref, rec_ours.outputs, rec_ref.outputs


def assert_same_in_order(boxes, scores, labels, ref_boxes, ref_scores, ref_labels, what):
    """Same number of boxes; position by position the same box (within BOX_ATOL px), label and score."""
    assert boxes.shape == ref_boxes.shape, f"{what}: {len(boxes)} vs {len(ref_boxes)} boxes"
    torch.testing.assert_close(scores, ref_scores, rtol=0, atol=SCORE_ATOL, msg=f"{what}: scores")
    assert torch.equal(labels, ref_labels), f"{what}: labels differ at {torch.where(labels != ref_labels)[0][:5].tolist()}"
    moved = torch.where((boxes - ref_boxes).abs().amax(1) > BOX_ATOL)[0]
    assert len(moved) == 0, (
        f"{what}: {len(moved)} boxes differ, e.g. position {int(moved[0])}: {boxes[moved[0]].tolist()} (score "
        f"{float(scores[moved[0]]):.6f}) vs {ref_boxes[moved[0]].tolist()} (score {float(ref_scores[moved[0]]):.6f})")


def assert_detections_equal(ours, ref, what="detections"):
    assert len(ours) == len(ref)
    for i, (a, b) in enumerate(zip(ours, ref)):
        assert_same_in_order(a["boxes"], a["scores"], a["labels"], b["boxes"], b["scores"], b["labels"],
                               f"{what}, image {i}")


def assert_intermediates_equal(rec_ours, rec_ref):
    (batch_ours, _), (batch_ref, _) = rec_ours["transform"], rec_ref["transform"]
    assert batch_ours.image_sizes == batch_ref.image_sizes
    torch.testing.assert_close(batch_ours.tensors, batch_ref.tensors, rtol=0, atol=0, msg="transformed batch")

    feats_ours, feats_ref = rec_ours["backbone"], rec_ref["backbone"]
    assert list(feats_ours) == list(feats_ref) == ["0", "1", "2", "3", "pool"]
    for name in feats_ref:
        torch.testing.assert_close(feats_ours[name], feats_ref[name], rtol=1e-5, atol=1e-4, msg=f"FPN level {name}")

    for i, (a, b) in enumerate(zip(rec_ours["rpn.anchor_generator"], rec_ref["rpn.anchor_generator"])):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=f"anchors of image {i}")

    (boxes_ours, scores_ours), (boxes_ref, scores_ref) = rec_ours["proposals"], rec_ref["proposals"]
    for i, (a, sa, b, sb) in enumerate(zip(boxes_ours, scores_ours, boxes_ref, scores_ref)):
        no_labels = torch.zeros(len(a), dtype=torch.int64)
        assert_same_in_order(a, sa, no_labels, b, sb, torch.zeros(len(b), dtype=torch.int64), f"RPN proposals of image {i}")
        torch.testing.assert_close(rec_ours["rpn"][0][i], a, rtol=0, atol=0)  # what the RPN returned


@pytest.fixture(scope="module")
def small_pair():
    ours, ref = paired_models(**SMALL)
    return ours.eval(), ref.eval()


def test_module_tree_and_defaults_are_torchvisions(small_pair):
    ours, ref = small_pair
    assert list(ours.state_dict()) == list(ref.state_dict())
    for name, value in ref.state_dict().items():
        assert ours.state_dict()[name].shape == value.shape, name
    full_ours, full_ref = fasterrcnn_resnet50_fpn(), tv_fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None)
    t, r = full_ours.transform, full_ref.transform
    assert (t.min_size, t.max_size, t.image_mean, t.image_std) == (r.min_size, r.max_size, r.image_mean, r.image_std)
    a, b = full_ours.rpn, full_ref.rpn
    assert (a._pre_nms_top_n, a._post_nms_top_n, a.nms_thresh) == (b._pre_nms_top_n, b._post_nms_top_n, b.nms_thresh)
    assert a.anchor_generator.sizes == b.anchor_generator.sizes == ((32,), (64,), (128,), (256,), (512,))
    assert a.anchor_generator.aspect_ratios == b.anchor_generator.aspect_ratios
    assert a.anchor_generator.num_anchors_per_location() == [3] * 5  # 15 anchors over the 5 levels
    a, b = full_ours.roi_heads, full_ref.roi_heads
    assert (a.score_thresh, a.nms_thresh, a.detections_per_img) == (b.score_thresh, b.nms_thresh, b.detections_per_img)
    assert a.box_roi_pool.featmap_names == b.box_roi_pool.featmap_names == ["0", "1", "2", "3"]
    assert tuple(a.box_roi_pool.output_size) == tuple(b.box_roi_pool.output_size) == (7, 7)
    assert a.box_roi_pool.sampling_ratio == b.box_roi_pool.sampling_ratio == 2
    # without weights everything trains (torchvision: trainable_backbone_layers falls back to 5)
    assert [p.requires_grad for p in full_ours.parameters()] == [p.requires_grad for p in full_ref.parameters()]
    assert all(p.requires_grad for p in full_ours.parameters())


def test_inference_equals_torchvision_on_a_batch_of_odd_sizes_with_a_blank_image(small_pair):
    ours, ref = small_pair
    images = [scene(241, 317, seed=1), scene(263, 301, seed=2, num_objects=6), torch.zeros(3, 199, 261)]
    out_ours, out_ref, rec_ours, rec_ref = run_both(ours, ref, images)
    assert_intermediates_equal(rec_ours, rec_ref)
    assert_detections_equal(rec_ours["roi_heads"][0], rec_ref["roi_heads"][0], "RoI-head detections (resized image)")
    assert_detections_equal(out_ours, out_ref)
    # the comparison is not vacuous: many detections, scores spread out (no ties), on the images with content
    for det in out_ref[:2]:
        assert len(det["scores"]) > 20 and det["scores"].unique().numel() == len(det["scores"])
        assert det["scores"].max() - det["scores"].min() > 0.3
    # boxes lie in the original images
    for det, image in zip(out_ours, images):
        h, w = image.shape[-2:]
        assert (det["boxes"][:, 0::2] <= w).all() and (det["boxes"][:, 1::2] <= h).all() and (det["boxes"] >= 0).all()


def test_inference_equals_torchvision_on_another_batch(small_pair):
    """A very wide image (the max_size cap decides its scale) with a tiny one (scaled up ~10x)."""
    ours, ref = small_pair
    out_ours, out_ref, rec_ours, rec_ref = run_both(ours, ref, [scene(120, 700, seed=3), scene(33, 47, seed=5, num_objects=1)])
    assert [tuple(s) for s in rec_ref["transform"][0].image_sizes] == [(87, 512), (320, 455)]
    assert_intermediates_equal(rec_ours, rec_ref)
    assert_detections_equal(out_ours, out_ref)


def test_training_losses_and_gradients_equal_torchvision(small_pair):
    ours, ref = small_pair
    # 320 x 448 needs neither resizing nor padding at min_size 320 / size_divisible 32. Padding would give
    # anchors in the zero border exactly equal objectness: torchvision orders such ties by an unstable sort,
    # so the training proposals would come in another order, the samplers (same random draws) would pick other
    # RoIs, and the gradients would differ by ~3% although the losses agree (random heads score every RoI alike).
    images = [scene(320, 448, seed=6), scene(320, 448, seed=7)]
    targets = [
        {"boxes": torch.tensor([[10.0, 20.0, 120.0, 150.0], [150.0, 30.0, 300.0, 90.0], [5.0, 5.0, 40.0, 30.0]]),
         "labels": torch.tensor([3, 17, 90])},
        {"boxes": torch.tensor([[30.0, 40.0, 200.0, 220.0]]), "labels": torch.tensor([1])},
    ]
    ours.train(), ref.train()
    try:
        losses_ours, losses_ref, rec_ours, rec_ref = run_both(ours, ref, images, targets, seed=123)
        assert set(losses_ours) == set(losses_ref) == {"loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg"}
        for name in losses_ref:
            torch.testing.assert_close(losses_ours[name], losses_ref[name], rtol=1e-4, atol=1e-5, msg=name)
            assert losses_ref[name] > 0, name
        # the training-mode proposals (up to 2000 per image, before sampling) too
        for i, (a, sa, b, sb) in enumerate(zip(*rec_ours["proposals"], *rec_ref["proposals"])):
            zeros = torch.zeros(len(a), dtype=torch.int64)
            assert_same_in_order(a, sa, zeros, b, sb, zeros[: len(b)], f"training proposals of image {i}")
        sum(losses_ours.values()).backward()
        sum(losses_ref.values()).backward()
        params_ref = dict(ref.named_parameters())
        compared = 0
        for name, p in ours.named_parameters():
            if params_ref[name].grad is None:
                assert p.grad is None, f"{name} gets a gradient in ours but not in torchvision's"
                continue
            # every parameter, backbone included: float32 sums in another order differ by ~1e-6 (relative norm)
            difference = (p.grad - params_ref[name].grad).norm() / params_ref[name].grad.norm().clamp_min(1e-12)
            assert difference < 1e-4, f"gradient of {name} differs by {difference:.2e} (relative norm)"
            if any(name.startswith(s) for s in ("backbone.fpn", "rpn.head", "roi_heads", "backbone.body.layer4.2")):
                torch.testing.assert_close(p.grad, params_ref[name].grad, rtol=1e-3, atol=1e-5, msg=f"gradient of {name}")
            compared += 1
        assert compared > 100, f"only {compared} parameters had gradients to compare"
    finally:  # batch norm statistics moved the same way in both; the fixture stays an eval-mode pair
        ours.eval(), ref.eval()
        ours.zero_grad(set_to_none=True), ref.zero_grad(set_to_none=True)


@pytest.mark.slow
def test_inference_equals_torchvision_at_full_scale_800px_with_a_blank_image():
    """800 px, torchvision's defaults; the second image is all zeros. On it, away from the borders, the features
    are exactly constant: hundreds of anchors tie in objectness, RoIs in class scores, and the 100-detection cut
    falls among ties. Same detections in the same order shows the tie order is torchvision's (batched_nms's
    strategies and RoIAlign's bits)."""
    ours, ref = paired_models(seed=2)  # default transform: shorter side 800, longer side <= 1333
    ours.eval(), ref.eval()
    images = [scene(480, 720, seed=8, num_objects=8), torch.zeros(3, 480, 720)]
    out_ours, out_ref, rec_ours, rec_ref = run_both(ours, ref, images)
    assert rec_ref["transform"][0].tensors.shape[-2:] == (800, 1216)  # 800 x 1200, padded to multiples of 32
    assert [tuple(f.shape[-2:]) for f in rec_ref["backbone"].values()] == [(200, 304), (100, 152), (50, 76), (25, 38), (13, 19)]
    assert rec_ref["rpn"][0][0].shape == (1000, 4)  # rpn_post_nms_top_n_test
    assert_intermediates_equal(rec_ours, rec_ref)
    assert_detections_equal(rec_ours["roi_heads"][0], rec_ref["roi_heads"][0], "RoI-head detections (resized image)")
    assert_detections_equal(out_ours, out_ref)
    assert [len(d["boxes"]) for d in out_ref] == [100, 100]  # box_detections_per_img
    # not vacuous: the blank image's proposals and detections are full of exact ties
    objectness = rec_ref["proposals"][1][1]
    assert len(objectness) - objectness.unique().numel() > 50
    blank = out_ref[1]["scores"]
    assert blank.unique().numel() < len(blank) and bool((blank[99] == blank[:99]).any()), "the cut should fall in a tie"


def _old_key_names(state_dict):
    """Rename to the keys of torchvision < 0.11 (FPN) / < 0.13 (RPN head), which torchvision still accepts."""
    old = OrderedDict()
    for key, value in state_dict.items():
        for new, before in ((".0.weight", ".weight"), (".0.bias", ".bias")):
            if key.startswith(("backbone.fpn.inner_blocks", "backbone.fpn.layer_blocks")) and key.endswith(new):
                key = key[: -len(new)] + before
        key = key.replace("rpn.head.conv.0.0.", "rpn.head.conv.")
        old[key] = value
    return old


def test_old_key_names_load_as_in_torchvision(small_pair):
    ours, ref = small_pair
    # other values than the models hold (so the test sees that they arrive), under the old names
    changed = OrderedDict((k, v + 1 if v.is_floating_point() else v) for k, v in ref.state_dict().items())
    old = _old_key_names(changed)
    assert "backbone.fpn.inner_blocks.0.weight" in old and "rpn.head.conv.weight" in old
    assert "backbone.fpn.inner_blocks.0.0.weight" not in old and len(old) == len(changed)
    ours, tv = copy.deepcopy(ours), copy.deepcopy(ref)
    ours.load_state_dict(old, strict=True)  # a plain dict has no version metadata: renamed on load
    tv.load_state_dict(_old_key_names(changed), strict=True)  # torchvision accepts the same file
    for name, value in changed.items():
        torch.testing.assert_close(ours.state_dict()[name], value, rtol=0, atol=0, msg=name)
        torch.testing.assert_close(tv.state_dict()[name], value, rtol=0, atol=0, msg=name)


def _torchvision_coco_like(state_dict, **kwargs):
    """What torchvision's builder does with weights=COCO_V1: frozen batch norm, 3 trainable stages, eps = 0."""
    backbone = _resnet_fpn_extractor(torchvision.models.resnet50(norm_layer=TVFrozenBatchNorm2d), 3)
    model = TVFasterRCNN(backbone, num_classes=91, **kwargs)
    model.load_state_dict(state_dict)
    tv_overwrite_eps(model, 0.0)
    return model


def test_weights_file_loads_with_frozen_batch_norm_and_eps_zero(tmp_path, small_pair):
    _, ref = small_pair
    state_dict = copy.deepcopy(ref.state_dict())
    g = torch.Generator().manual_seed(0)
    for key in state_dict:  # trained-looking statistics, some variances tiny so that eps matters
        if key.endswith("running_var"):
            state_dict[key] = torch.rand(state_dict[key].shape, generator=g) * 2 + 1e-4
        elif key.endswith("running_mean"):
            state_dict[key] = torch.randn(state_dict[key].shape, generator=g) * 0.1
    path = tmp_path / "fasterrcnn_resnet50_fpn_coco.pth"
    torch.save(state_dict, path)

    ours = fasterrcnn_resnet50_fpn(weights=path, **SMALL).eval()  # num_classes read from the file: 91
    tv = _torchvision_coco_like(state_dict, **SMALL).eval()
    frozen = [m for m in ours.modules() if isinstance(m, FrozenBatchNorm2d)]
    assert len(frozen) == 53 and all(m.eps == 0.0 for m in frozen)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in ours.modules())
    assert [(n, p.requires_grad) for n, p in ours.named_parameters()] == [(n, p.requires_grad) for n, p in tv.named_parameters()]
    images = [scene(200, 260, seed=9)]
    with torch.no_grad():
        assert_detections_equal(ours(images), tv(images), "eps-0 weights")
    # a checkpoint trained with the usual eps: override
    assert all(m.eps == 1e-5 for m in fasterrcnn_resnet50_fpn(weights=path, frozen_bn_eps=1e-5).modules()
               if isinstance(m, FrozenBatchNorm2d))


def test_weights_errors_name_the_file(tmp_path):
    missing = tmp_path / "nope.pth"
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        fasterrcnn_resnet50_fpn(weights=missing)
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        fasterrcnn_resnet50_fpn(weights_backbone=missing)
    wrong = tmp_path / "two_classes.pth"
    torch.save(fasterrcnn_resnet50_fpn(num_classes=2).state_dict(), wrong)
    with pytest.raises(ValueError, match="two_classes.pth.*num_classes=5"):
        fasterrcnn_resnet50_fpn(weights=wrong, num_classes=5)
    assert fasterrcnn_resnet50_fpn(weights=wrong).roi_heads.box_predictor.cls_score.out_features == 2
    with pytest.raises(TypeError, match="path of a local state dict"):
        fasterrcnn_resnet50_fpn(weights=torchvision.models.detection.FasterRCNN_ResNet50_FPN_Weights.COCO_V1)


def test_resnet101_fpn_has_torchvisions_keys():
    torch.manual_seed(0)
    backbone = resnet_fpn_backbone(backbone_name="resnet101", weights=None, norm_layer=nn.BatchNorm2d, trainable_layers=5)
    ref = TVFasterRCNN(backbone, num_classes=91)
    ours = fasterrcnn_resnet101_fpn()
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in ref.state_dict().items()}
    ours.load_state_dict(ref.state_dict(), strict=True)
