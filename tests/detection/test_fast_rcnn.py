"""Fast R-CNN (Girshick, ICCV 2015): the RoI sampler of section 2.3, the multi-task loss of
eq. 1-3 by hand and against torchvision's ``fastrcnn_loss``, the test-time post-processing
against torchvision's ``RoIHeads``, the paper's VGG16 shapes, training, and bad input."""
import math

import pytest
import torch
import torch.nn.functional as F
from torchvision.models.detection import _utils as tv_utils
from torchvision.models.detection.roi_heads import RoIHeads, fastrcnn_loss

from course_lib.detection.fast_rcnn import (
    fast_rcnn_loss,
    fast_rcnn_vgg16,
    smooth_l1,
)
from course_lib.detection.rcnn import sample_rois
from course_lib.ops import box_iou


def _image_with_objects(seed):
    g = torch.Generator().manual_seed(seed)
    gt = torch.tensor([[40.0, 40.0, 140.0, 120.0], [200.0, 60.0, 260.0, 200.0], [100.0, 180.0, 180.0, 240.0]])
    jittered = (gt[:, None] + torch.randn(3, 100, 4, generator=g) * 10).reshape(-1, 4)
    xy = torch.rand(1500, 2, generator=g) * 250
    random = torch.cat([xy, xy + 10 + torch.rand(1500, 2, generator=g) * 80], 1)
    return torch.cat([jittered, random]), gt, torch.tensor([1, 2, 3])


def test_sampler_128_rois_from_2_images_25_percent_foreground():
    torch.manual_seed(0)
    for seed in (0, 1):  # "R = 128 ... N = 2 images ... 64 RoIs from each image"
        proposals, gt, labels = _image_with_objects(seed)
        rois, roi_labels, matched = sample_rois(proposals, gt, labels, num_samples=64, positive_fraction=0.25,
                                                fg_iou_thresh=0.5, bg_iou_thresh=(0.1, 0.5))
        assert len(rois) == 64
        fg = roi_labels > 0
        assert int(fg.sum()) == 16  # 25% foreground
        iou = box_iou(rois, gt)
        max_iou, index = iou.max(1)
        assert (max_iou[fg] >= 0.5).all()
        assert ((max_iou[~fg] >= 0.1) & (max_iou[~fg] < 0.5)).all()  # background in [0.1, 0.5)
        torch.testing.assert_close(roi_labels[fg], labels[index[fg]])  # the class of the best box
        torch.testing.assert_close(matched[fg], gt[index[fg]])
    # too few foreground: all of them, the rest background
    rois, roi_labels, _ = sample_rois(proposals[300:], gt[:1], labels[:1], 64, 0.25, 0.5, (0.1, 0.5), add_gt_boxes=False)
    assert int((roi_labels > 0).sum()) == int((box_iou(proposals[300:], gt[:1]).max(1).values >= 0.5).sum())
    assert len(rois) == 64


def test_sampler_without_objects_or_proposals():
    proposals, _, _ = _image_with_objects(0)
    rois, labels, matched = sample_rois(proposals, torch.zeros(0, 4), torch.zeros(0, dtype=torch.int64), 64)
    assert len(rois) == 64 and (labels == 0).all()
    torch.testing.assert_close(matched, rois)  # regression target 0: nothing to regress to
    rois, labels, _ = sample_rois(torch.zeros(0, 4), torch.tensor([[0.0, 0.0, 10.0, 10.0]]), torch.tensor([2]), 64)
    torch.testing.assert_close(labels, torch.tensor([2]))  # only the ground-truth box itself
    rois, labels, _ = sample_rois(torch.zeros(0, 4), torch.zeros(0, 4), torch.zeros(0, dtype=torch.int64), 64)
    assert rois.shape == (0, 4) and labels.shape == (0,)


def test_smooth_l1_is_eq_3():
    x = torch.linspace(-3, 3, 61)
    torch.testing.assert_close(smooth_l1(x), torch.where(x.abs() < 1, 0.5 * x ** 2, x.abs() - 0.5))
    torch.testing.assert_close(smooth_l1(x, beta=1 / 9), F.smooth_l1_loss(x, torch.zeros_like(x), beta=1 / 9, reduction="none"))


def test_multitask_loss_by_hand():
    """Two RoIs, K = 2 classes (+ background). RoI 0 is class 2, RoI 1 background.

    L_cls = mean(-log softmax): RoI 0 has logits (0, 0, log 2) -> p_2 = 2/4 = 0.5, -log 0.5 = log 2;
    RoI 1 has logits (0, 0, 0) -> p_0 = 1/3, -log(1/3) = log 3. L_cls = (log 2 + log 3) / 2.
    L_loc: RoI 0's class-2 offsets (0.5, -2, 0, 0) against targets (0, 0, 0, 0):
    smooth_L1(0.5) + smooth_L1(-2) = 0.125 + 1.5 = 1.625; the class-1 offsets and RoI 1 (background)
    do not count; divided by the 2 RoIs: 0.8125.
    """
    logits = torch.tensor([[0.0, 0.0, math.log(2)], [0.0, 0.0, 0.0]])
    regression = torch.zeros(2, 12)
    regression[0, 8:12] = torch.tensor([0.5, -2.0, 0.0, 0.0])  # class 2 of RoI 0
    regression[0, 4:8] = 100.0  # class 1 of RoI 0: not its class
    regression[1] = 100.0  # background RoI: no box loss
    labels = torch.tensor([2, 0])
    targets = torch.zeros(2, 4)
    loss_cls, loss_box = fast_rcnn_loss(logits, regression, labels, targets)
    assert loss_cls.item() == pytest.approx((math.log(2) + math.log(3)) / 2)
    assert loss_box.item() == pytest.approx(0.8125)
    _, weighted = fast_rcnn_loss(logits, regression, labels, targets, box_loss_weight=2.0)
    assert weighted.item() == pytest.approx(1.625)


def test_loss_equals_torchvision_fastrcnn_loss():
    """torchvision's ``fastrcnn_loss`` is eq. 1 with beta = 1/9 (Detectron's choice)."""
    torch.manual_seed(0)
    logits, regression = torch.randn(50, 6), torch.randn(50, 24)
    labels, targets = torch.randint(0, 6, (50,)), torch.randn(50, 4)
    ours = fast_rcnn_loss(logits, regression, labels, targets, beta=1 / 9)
    theirs = fastrcnn_loss(logits, regression, [labels[:20], labels[20:]], [targets[:20], targets[20:]])
    torch.testing.assert_close(ours, theirs)
    empty = fast_rcnn_loss(logits[:0].requires_grad_(), regression[:0], labels[:0], targets[:0])
    assert all(v.item() == 0.0 for v in empty) and empty[0].requires_grad


def test_postprocess_equals_torchvision_roi_heads():
    torch.manual_seed(0)
    model = fast_rcnn_vgg16(num_classes=5, width=1 / 64)
    heads = model.roi_heads
    reference = RoIHeads(None, None, None, 0.5, 0.5, 512, 0.25, (10.0, 10.0, 5.0, 5.0),
                         score_thresh=heads.score_thresh, nms_thresh=heads.nms_thresh,
                         detections_per_img=heads.detections_per_img)
    xy = torch.rand(300, 2) * 200
    proposals = [torch.cat([xy[:200], xy[:200] + 5 + torch.rand(200, 2) * 100], 1),
                 torch.cat([xy[200:], xy[200:] + 5 + torch.rand(100, 2) * 100], 1)]
    logits, regression = torch.randn(300, 5) * 3, torch.randn(300, 20)
    sizes = [(240, 260), (200, 220)]
    ours = heads.postprocess_detections(logits, regression, proposals, sizes)
    theirs = reference.postprocess_detections(logits, regression, proposals, sizes)
    for o, t in zip(ours, theirs):  # boxes, scores, labels
        for a, b in zip(o, t):
            assert len(b) > 10
            torch.testing.assert_close(a, b)


def test_paper_shapes_of_vgg16_fast_rcnn():
    with torch.device("meta"):  # the full-scale model "L" of the paper, no memory needed
        model = fast_rcnn_vgg16(num_classes=21)
    head = model.roi_heads
    assert head.box_head.fc6.weight.shape == (4096, 512, 7, 7)  # fc6 reads the 7 x 7 RoI-pooled conv5_3
    assert head.box_head.fc7.weight.shape == (4096, 4096, 1, 1)
    assert head.box_predictor.cls_score.weight.shape == (21, 4096)  # K + 1
    assert head.box_predictor.bbox_pred.weight.shape == (84, 4096)  # 4 (K + 1)
    assert head.box_roi_pool.output_size == 7 and head.box_roi_pool.spatial_scale == 1 / 16
    sampler = head.fg_bg_sampler
    assert sampler.batch_size_per_image == 64 and sampler.positive_fraction == 0.25 and head.bg_iou_thresh == (0.1, 0.5)
    assert head.box_coder.weights == (10.0, 10.0, 5.0, 5.0)
    assert model.transform.min_size == (600,) and model.transform.max_size == 1000
    small = fast_rcnn_vgg16(num_classes=3, width=1 / 16)
    assert small.backbone(torch.zeros(1, 3, 64, 96)).shape == (1, 32, 4, 6)  # stride 16, no pool5
    predictor = small.roi_heads.box_predictor  # initialised as section 2.2
    assert abs(predictor.cls_score.weight.std() - 0.01) < 0.002 and abs(predictor.bbox_pred.weight.std() - 0.001) < 2e-4
    assert (predictor.cls_score.bias == 0).all() and (predictor.bbox_pred.bias == 0).all()


def _tiny_model():
    torch.manual_seed(0)
    return fast_rcnn_vgg16(num_classes=4, width=1 / 16, min_size=128, max_size=160, rois_per_image=32)


def _scene(seed):
    """Coloured rectangles (colour = class) on noise: something a tiny network can learn."""
    g = torch.Generator().manual_seed(seed)
    image = torch.rand(3, 128, 160, generator=g) * 0.3
    boxes = torch.tensor([[10.0, 10.0, 60.0, 70.0], [80.0, 40.0, 150.0, 100.0]])
    labels = torch.tensor([1, 3])
    for (x1, y1, x2, y2), lab in zip(boxes.int().tolist(), labels.tolist()):
        image[lab - 1, y1:y2, x1:x2] = 1.0
    xy = torch.rand(150, 2, generator=g) * torch.tensor([140.0, 110.0])
    proposals = torch.cat([xy, xy + 8 + torch.rand(150, 2, generator=g) * 60], 1)
    proposals = torch.cat([proposals, (boxes[:, None] + torch.randn(2, 20, 4, generator=g) * 4).reshape(-1, 4)])
    return image, proposals, {"boxes": boxes, "labels": labels}


def test_training_steps_reduce_the_loss():
    model = _tiny_model().train()
    batch = [_scene(0), _scene(1)]  # N = 2 images per mini-batch
    images, proposals, targets = (list(x) for x in zip(*batch))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    losses = []
    for _ in range(8):
        torch.manual_seed(0)  # the same RoIs and dropout masks every step: a fixed mini-batch
        loss = sum(model(images, proposals, targets).values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < 0.6 * losses[0], losses


def test_proposals_follow_the_resize_and_detections_come_back():
    """With zero box offsets and a confident class, the detections are the proposals themselves,
    in the original image's coordinates, whatever the transform's scale."""
    model = _tiny_model().eval()
    predictor = model.roi_heads.box_predictor
    with torch.no_grad():
        predictor.cls_score.weight.zero_()
        predictor.bbox_pred.weight.zero_()
        predictor.bbox_pred.bias.zero_()
        predictor.cls_score.bias.copy_(torch.tensor([0.0, 0.0, 10.0, 0.0]))
    image = torch.rand(3, 64, 80)  # resized x2 to 128 x 160 inside the model
    proposals = torch.tensor([[5.0, 5.0, 30.0, 25.0], [40.0, 30.0, 75.0, 60.0]])
    detections = model([image], [proposals])[0]
    torch.testing.assert_close(detections["boxes"], proposals, atol=1e-3, rtol=0)
    assert (detections["labels"] == 2).all() and (detections["scores"] > 0.99).all()


def test_bad_inputs_train_and_detect_without_nan():
    model = _tiny_model()
    image, proposals, target = _scene(0)
    cases = [  # (image, proposals, target)
        (image, proposals, {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}),  # no objects
        (image.mean(0, keepdim=True), proposals, target),  # grayscale
        (image, torch.zeros(0, 4), target),  # no proposals
        (image, torch.cat([proposals, torch.tensor([[50.0, 50.0, 50.0, 80.0]])]), target),  # a zero-width proposal
        ((image * 255).to(torch.uint8), proposals, target),  # uint8
    ]
    model.train()
    zero_width = {"boxes": torch.tensor([[30.0, 30.0, 30.0, 60.0], [80.0, 40.0, 150.0, 100.0]]),
                  "labels": torch.tensor([1, 2])}
    with pytest.raises(ValueError, match="box 0 .* image 0"):  # the one rule of every detector: an error
        model([image], [proposals], [zero_width])
    for img, props, tgt in cases:
        losses = model([img], [props], [tgt])
        assert all(torch.isfinite(v) for v in losses.values())
        sum(losses.values()).backward()
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}
    losses = model([image], [torch.zeros(0, 4)], [empty])  # nothing at all to learn from
    assert all(v.item() == 0.0 for v in losses.values())
    model.eval()
    detections = model([img for img, _, _ in cases], [p for _, p, _ in cases])
    assert len(detections) == len(cases) and len(detections[2]["boxes"]) == 0
    assert all(torch.isfinite(d["boxes"]).all() and torch.isfinite(d["scores"]).all() for d in detections)
    with pytest.raises(ValueError, match="targets"):
        model.train()([image], [proposals])
    with pytest.raises(ValueError, match="proposal sets"):
        model([image, image], [proposals])
    with pytest.raises(ValueError, match="N x 4"):
        model.eval()([image], [torch.zeros(5, 3)])


@pytest.mark.parametrize("channels_last", [False, True])
def test_the_box_head_is_fc6_and_fc7_as_convolutions(channels_last):
    """VGG16BoxHead runs fc6 / fc7 as matrix products on the stored weights (no layout copy in channels-last): the
    same outputs and gradients as the 7 x 7 and 1 x 1 convolutions they are stored as, in either layout."""
    from course_lib.backbones.vgg import VGG16
    from course_lib.detection.fast_rcnn import VGG16BoxHead

    torch.manual_seed(0)
    head = VGG16BoxHead(VGG16(width=0.125, fully_connected=True, dropout=0.0))
    if channels_last:
        head.to(memory_format=torch.channels_last)
    x = torch.randn(5, head.fc6.in_channels, 7, 7, requires_grad=True)
    out = head(x)
    reference = F.relu(head.fc7(F.relu(head.fc6(x)))).flatten(1)
    torch.testing.assert_close(out, reference)
    grads = torch.autograd.grad(out.square().sum(), [x, head.fc6.weight])
    expected = torch.autograd.grad(reference.square().sum(), [x, head.fc6.weight])
    for g, e in zip(grads, expected):  # sums of products in another order: close to the scale of the gradient
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-5 * float(e.abs().max()))
