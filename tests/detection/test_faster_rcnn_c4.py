"""The whole two-stage detector: GeneralizedRCNN / FasterRCNN against torchvision's, the
evaluation contract, bad inputs, and the Faster R-CNN C4 model (construction, weights files,
a short overfitting run)."""
from collections import OrderedDict

import pytest
import torch
from torch import nn
from torchvision.models.detection.anchor_utils import AnchorGenerator as TVAnchorGenerator
from torchvision.models.detection.faster_rcnn import FasterRCNN as TVFasterRCNN
from torchvision.ops import MultiScaleRoIAlign as TVMultiScaleRoIAlign

from course_lib.detection.generalized_rcnn import FasterRCNN
from course_lib.ops import AnchorGenerator, MultiScaleRoIAlign

NUM_CLASSES = 3


class TinyPyramid(nn.Module):
    """Five 8-channel maps at strides 4..64, named like an FPN's ("0".."3", "pool")."""

    out_channels = 8

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 4, stride=4)
        self.downs = nn.ModuleList([nn.Conv2d(8, 8, 3, stride=2, padding=1) for _ in range(4)])

    def forward(self, x):
        x = torch.relu(self.stem(x))
        out = OrderedDict([("0", x)])
        for name, down in zip(["1", "2", "3", "pool"], self.downs):
            x = down(x)
            out[name] = x
        return out


def scene(seed=0, sizes=((90, 120), (75, 61))):
    """Images with bright rectangles on noise, and their boxes; the second one has no objects."""
    g = torch.Generator().manual_seed(seed)
    images, targets = [], []
    for k, (h, w) in enumerate(sizes):
        img = torch.rand(3, h, w, generator=g) * 0.3
        boxes = []
        if k == 0:
            for x1, y1, x2, y2 in [(10, 12, 50, 60), (60, 20, 110, 45)]:
                img[:, y1:y2, x1:x2] += 0.6
                boxes.append([x1, y1, x2, y2])
        images.append(img.clamp(0, 1))
        targets.append({"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                        "labels": torch.tensor([1, 2][: len(boxes)], dtype=torch.int64)})
    return images, targets


def tiny_pair(**kwargs):
    """Our FasterRCNN and torchvision's, both with their defaults (the R50-FPN configuration)
    around the same tiny backbone, built from the same seed."""
    torch.manual_seed(0)
    backbone = TinyPyramid()
    kwargs = {"min_size": 96, "max_size": 160, **kwargs}
    torch.manual_seed(1)
    ref = TVFasterRCNN(backbone, NUM_CLASSES, **kwargs)
    torch.manual_seed(1)
    ours = FasterRCNN(backbone, NUM_CLASSES, **kwargs)
    return ours, ref


def test_same_names_and_initial_weights_as_torchvision():
    ours, ref = tiny_pair()
    assert list(ours.state_dict()) == list(ref.state_dict())
    for (name, a), b in zip(ours.state_dict().items(), ref.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
    for key in ["rpn.head.conv.0.0.weight", "roi_heads.box_head.fc6.weight", "roi_heads.box_predictor.cls_score.weight"]:
        assert key in ours.state_dict()


def test_eval_detections_equal_torchvision():
    ours, ref = tiny_pair(box_score_thresh=0.0)
    images, _ = scene()
    with torch.no_grad():
        with_sharper_predictor(ref)
        ours.load_state_dict(ref.state_dict())
        det = ours.eval()(images)
        det_ref = ref.eval()(images)
    for a, b in zip(det, det_ref):
        assert a["boxes"].shape[0] > 5
        torch.testing.assert_close(a["boxes"], b["boxes"], rtol=0, atol=1e-3)
        torch.testing.assert_close(a["scores"], b["scores"], rtol=0, atol=1e-5)
        assert torch.equal(a["labels"], b["labels"])


def with_sharper_predictor(model):
    """Random weights give near-uniform class scores; sharpen them so that NMS and the top-100 matter."""
    model.roi_heads.box_predictor.cls_score.weight.mul_(50)
    model.roi_heads.box_predictor.bbox_pred.weight.mul_(10)


def test_train_losses_equal_torchvision_with_the_same_seed():
    ours, ref = tiny_pair(min_size=(80, 96, 112))  # multi-scale training draws random numbers too
    images, targets = scene()
    ours.train(), ref.train()
    torch.manual_seed(5)
    losses = ours(images, targets)
    after_ours = torch.rand(1)
    torch.manual_seed(5)
    losses_ref = ref(images, targets)
    after_ref = torch.rand(1)
    assert after_ours == after_ref
    assert list(losses) == ["loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"]
    for k in losses_ref:
        torch.testing.assert_close(losses[k], losses_ref[k], rtol=1e-5, atol=1e-6)
    grads = torch.autograd.grad(sum(losses.values()), [ours.backbone.stem.weight, ours.rpn.head.conv[0][0].weight])
    grads_ref = torch.autograd.grad(sum(losses_ref.values()), [ref.backbone.stem.weight, ref.rpn.head.conv[0][0].weight])
    for a, b in zip(grads, grads_ref):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_evaluation_contract():
    ours, _ = tiny_pair(box_score_thresh=0.0)
    images, _ = scene(sizes=((90, 120), (75, 61), (33, 47)))
    with torch.no_grad():
        with_sharper_predictor(ours)
        det = ours.eval()(images)
    assert len(det) == 3
    for d, img in zip(det, images):
        assert set(d) == {"boxes", "labels", "scores"}
        n = d["boxes"].shape[0]
        assert 0 < n <= 100
        assert d["boxes"].dtype == torch.float32 and d["boxes"].shape == (n, 4)
        assert d["labels"].dtype == torch.int64 and d["labels"].shape == (n,)
        assert d["scores"].dtype == torch.float32 and d["scores"].shape == (n,)
        assert d["labels"].min() >= 1 and d["labels"].max() < NUM_CLASSES
        h, w = img.shape[-2:]  # in the ORIGINAL image's pixels
        assert d["boxes"][:, 0::2].max() <= w + 1e-3 and d["boxes"][:, 1::2].max() <= h + 1e-3
        assert d["boxes"].min() >= 0 and torch.all(d["boxes"][:, 2:] > d["boxes"][:, :2])
        assert torch.all(d["scores"][:-1] >= d["scores"][1:])


def assert_finite(losses):
    assert set(losses) == {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"}
    for k, v in losses.items():
        assert torch.isfinite(v), f"{k} = {v}"


def test_bad_and_degenerate_inputs():
    ours, _ = tiny_pair()
    images, targets = scene()
    ours.train()
    # 1. images without objects (boxes [0, 4], or an empty [0] tensor)
    empty = [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)},
             {"boxes": torch.tensor([]), "labels": torch.tensor([], dtype=torch.int64)}]
    assert_finite(ours(images, empty))
    # 2. a box of zero width: a clear error naming image and box
    bad = [dict(t) for t in targets]
    bad[0]["boxes"] = torch.tensor([[10.0, 12.0, 50.0, 60.0], [60.0, 20.0, 60.0, 45.0]])
    with pytest.raises(ValueError, match=r"box 1 = \[60.0, 20.0, 60.0, 45.0\] in the target of image 0"):
        ours(images, bad)
    bad[0]["boxes"] = torch.tensor([[10.0, 12.0, 50.0, float("nan")], [60.0, 20.0, 61.0, 45.0]])
    with pytest.raises(ValueError, match="Target 0: box 0 .* not finite"):
        ours(images, bad)
    bad[0]["boxes"] = torch.tensor([[10, 12, 50, 60], [60, 20, 61, 45]])
    with pytest.raises(TypeError, match="boxes must be float"):
        ours(images, bad)
    bad[0]["boxes"] = torch.tensor([10.0, 12.0, 50.0, 60.0])
    with pytest.raises(ValueError, match=r"boxes must have shape \[N, 4\], got \(4,\)"):
        ours(images, bad)
    with pytest.raises(ValueError, match="needs targets"):
        ours(images)
    # 3. an image smaller than the anchor stride (and the RoI pooling grid): 10x12 pixels, no upscaling
    small = FasterRCNN(TinyPyramid(), NUM_CLASSES, min_size=10, max_size=12)
    tiny_image = [torch.rand(3, 10, 12)]
    tiny_target = [{"boxes": torch.tensor([[2.0, 2.0, 9.0, 8.0]]), "labels": torch.tensor([1])}]
    assert_finite(small.train()(tiny_image, tiny_target))
    det = small.eval()(tiny_image)
    assert all(torch.isfinite(d["boxes"]).all() for d in det)
    # 4. grayscale: repeated to 3 channels (documented), same as the RGB image of the same gray
    gray = images[0].mean(0, keepdim=True)
    ours.eval()
    with torch.no_grad():
        torch.testing.assert_close(ours([gray])[0]["scores"], ours([gray.expand(3, -1, -1)])[0]["scores"])
    # 5. an empty proposal set (no anchor passes the RPN score threshold)
    no_proposals, _ = tiny_pair(rpn_score_thresh=1.1)
    assert_finite(no_proposals.train()(images, targets))
    assert_finite(no_proposals(images, empty))  # ... and no gt boxes to add either
    det = no_proposals.eval()(images)
    assert [d["boxes"].shape for d in det] == [(0, 4), (0, 4)]


def test_constructor_errors():
    with pytest.raises(ValueError, match="out_channels"):
        FasterRCNN(nn.Identity(), NUM_CLASSES)
    with pytest.raises(ValueError, match="exactly one of num_classes"):
        FasterRCNN(TinyPyramid())
    with pytest.raises(ValueError, match="num_classes counts the background"):
        FasterRCNN(TinyPyramid(), 1)
