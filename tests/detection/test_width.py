"""The width multiplier: the laptop profile trains a narrower copy of the same detectors (PROFILE.detector.width).

Width 1.0 must be the paper's network exactly (the torchvision-identity tests elsewhere cover that); a smaller
width must keep every layer, stride and block and only narrow the channels, consistently through the heads.
"""
import pytest
import torch

from course_lib.backbones.resnet import ResNet, load_torchvision_resnet, resnet50, resnet_body
from course_lib.detection import fasterrcnn_resnet50_c4, fasterrcnn_resnet50_fpn
from course_lib.detection.efpn import efpn_resnet50_fpn
from course_lib.detection.rfcn import rfcn_resnet50


def _convs(model):
    return [(n, m.kernel_size, m.stride, m.dilation) for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)]


def test_width_narrows_channels_and_keeps_every_layer():
    full, narrow = resnet50(), resnet50(width=0.25)
    assert _convs(full) == _convs(narrow)  # same layers, kernels, strides, dilations
    assert [m.out_channels for m in (narrow.conv1, narrow.layer1[-1].conv3, narrow.layer2[-1].conv3,
                                     narrow.layer3[-1].conv3, narrow.layer4[-1].conv3)] == [16, 64, 128, 256, 512]
    assert narrow.fc.in_features == 512
    body = resnet_body(50, width=0.25)
    assert body.out_channels_list == [64, 128, 256, 512] and body.strides == [4, 8, 16, 32]
    out = body(torch.rand(1, 3, 64, 64))
    assert [tuple(v.shape[1:]) for v in out.values()] == [(64, 16, 16), (128, 8, 8), (256, 4, 4), (512, 2, 2)]


def test_width_one_is_the_paper_network():
    torch.manual_seed(0)
    a = resnet50()
    torch.manual_seed(0)
    b = resnet50(width=1.0)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


@pytest.mark.parametrize("width", [0, -0.5])
def test_bad_width_is_named(width):
    with pytest.raises(ValueError, match="width multiplier must be > 0"):
        ResNet((3, 4, 6, 3), width=width)


def test_imagenet_weights_need_full_width(tmp_path):
    path = tmp_path / "resnet50.pth"
    torch.save(resnet50().state_dict(), path)
    with pytest.raises(ValueError, match=r"(?s)\[64, 3, 7, 7\] in the file but \[32, 3, 7, 7\] in the model.*width \(0\.5\)"):
        load_torchvision_resnet(resnet50(width=0.5), path)
    with pytest.raises(ValueError, match=r"width \(0\.5\)"):  # a file may hold a narrow ResNet: checked key by key
        fasterrcnn_resnet50_fpn(num_classes=3, weights_backbone=path, width=0.5)


@pytest.mark.parametrize("build", ["c4", "fpn", "rfcn", "efpn"])
def test_narrow_detectors_train_and_detect(build):
    make = {"c4": fasterrcnn_resnet50_c4, "fpn": fasterrcnn_resnet50_fpn, "rfcn": rfcn_resnet50,
            "efpn": efpn_resnet50_fpn}[build]
    torch.manual_seed(0)
    model = make(num_classes=3, min_size=96, max_size=96, width=0.125)
    full = sum(p.numel() for p in make(num_classes=3, min_size=96, max_size=96).parameters())
    assert sum(p.numel() for p in model.parameters()) < full / 20  # ~ width^2 of the parameters
    images = [torch.rand(3, 96, 96), torch.rand(3, 80, 96)]
    targets = [{"boxes": torch.tensor([[10.0, 12.0, 60.0, 70.0]]), "labels": torch.tensor([1])},
               {"boxes": torch.tensor([[5.0, 5.0, 40.0, 30.0], [30.0, 30.0, 90.0, 75.0]]), "labels": torch.tensor([2, 1])}]
    model.train()
    losses = model(images, targets)
    sum(losses.values()).backward()
    assert all(torch.isfinite(v) for v in losses.values())
    model.eval()
    with torch.no_grad():
        out = model(images)
    assert len(out) == 2 and all(o["boxes"].shape[1:] == (4,) for o in out)


def test_c4_anchor_sizes_keyword():
    from course_lib.ops import AnchorGenerator

    with torch.device("meta"):
        model = fasterrcnn_resnet50_c4(num_classes=3, rpn_anchor_sizes=(32, 64, 128))
        assert model.rpn.anchor_generator.sizes == ((32, 64, 128),)
        assert fasterrcnn_resnet50_c4(num_classes=3).rpn.anchor_generator.sizes == ((128, 256, 512),)  # the paper's
        with pytest.raises(ValueError, match="rpn_anchor_sizes or rpn_anchor_generator"):
            fasterrcnn_resnet50_c4(num_classes=3, rpn_anchor_sizes=(32, 64, 128),
                                   rpn_anchor_generator=AnchorGenerator(((16,),), ((1.0,),)))
