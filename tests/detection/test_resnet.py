"""The ResNet backbone against torchvision.models.resnet50/101: names, initialisation, features,
frozen batch norm (eps handling), stage freezing and loading weights from a file."""
import pytest
import torch
from torch import nn
from torchvision.models import resnet50 as tv_resnet50, resnet101 as tv_resnet101
from torchvision.models._utils import IntermediateLayerGetter as TVIntermediateLayerGetter
from torchvision.models.detection._utils import overwrite_eps as tv_overwrite_eps
from torchvision.ops.misc import FrozenBatchNorm2d as TVFrozenBatchNorm2d

from course_lib.backbones.resnet import (
    FrozenBatchNorm2d,
    IntermediateLayerGetter,
    freeze_layers,
    load_torchvision_resnet,
    overwrite_eps,
    resnet50,
    resnet101,
    resnet_body,
)

C2_C5 = {"layer1": "0", "layer2": "1", "layer3": "2", "layer4": "3"}


def randomise_bn_statistics(model, seed=0, var_range=(0.5, 1.5)):
    """Trained-looking batch norm: random affine parameters and running statistics (not 1/0)."""
    g = torch.Generator().manual_seed(seed)
    low, high = var_range
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.BatchNorm2d, TVFrozenBatchNorm2d, FrozenBatchNorm2d)):
                n = m.weight.numel()
                m.weight.copy_(torch.rand(n, generator=g) * 0.4 + 0.2)
                m.bias.copy_(torch.randn(n, generator=g) * 0.1)
                m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(n, generator=g) * (high - low) + low)


@pytest.fixture(scope="module")
def tv_reference():
    torch.manual_seed(0)
    model = tv_resnet50()
    randomise_bn_statistics(model)
    return model.eval()


def test_state_dict_names_and_shapes_equal_torchvision():
    with torch.device("meta"):  # shapes only: no memory, no initialisation cost
        pairs = [(resnet50(), tv_resnet50()), (resnet101(), tv_resnet101())]
    for ours, ref in pairs:
        ours_sd, ref_sd = ours.state_dict(), ref.state_dict()
        assert list(ours_sd) == list(ref_sd)
        assert all(ours_sd[k].shape == ref_sd[k].shape for k in ref_sd)
    assert "layer1.0.conv1.weight" in ours_sd and "layer3.22.bn3.running_var" in ours_sd


def test_same_seed_same_initial_weights_as_torchvision():
    torch.manual_seed(7)
    ref = tv_resnet50()
    torch.manual_seed(7)
    ours = resnet50()
    for (name, a), b in zip(ours.state_dict().items(), ref.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)


def test_stride_sits_in_the_3x3_conv_v1_5():
    block = resnet50().layer2[0]
    assert block.conv1.stride == (1, 1) and block.conv2.stride == (2, 2)
    assert block.downsample[0].stride == (2, 2)


def test_frozen_body_features_equal_torchvision(tv_reference):
    """C2..C5 of our frozen-BN body = torchvision's eval-mode BatchNorm2d ResNet-50 (same weights)."""
    ours = resnet50(norm_layer=FrozenBatchNorm2d)
    ours.load_state_dict(
        {k: v for k, v in tv_reference.state_dict().items() if not k.endswith("num_batches_tracked")})
    body = IntermediateLayerGetter(ours, C2_C5)
    ref_body = TVIntermediateLayerGetter(tv_reference, C2_C5)
    x = torch.randn(2, 3, 97, 130)  # odd sizes: ceil rounding at every stride
    with torch.no_grad():
        feats, ref = body(x), ref_body(x)
    assert list(feats) == ["0", "1", "2", "3"]
    shapes = [tuple(f.shape) for f in feats.values()]
    assert shapes == [(2, 256, 25, 33), (2, 512, 13, 17), (2, 1024, 7, 9), (2, 2048, 4, 5)]
    for name in ref:
        torch.testing.assert_close(feats[name], ref[name], rtol=1e-4, atol=1e-4)
    assert "avgpool" not in body and "fc" not in body


def test_frozen_batchnorm_equals_torchvision_and_eps_matters():
    torch.manual_seed(0)
    ours, ref = FrozenBatchNorm2d(8), TVFrozenBatchNorm2d(8)
    randomise_bn_statistics(ref, var_range=(1e-4, 1e-2))  # small variances: eps shows
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(3, 8, 5, 4)
    torch.testing.assert_close(ours(x), ref(x), rtol=0, atol=0)
    # the published detection weights need eps = 0: with running_var ~ 1e-3 the default 1e-5 shows
    before = ours(x)
    tv_model, our_model = nn.Sequential(ref), nn.Sequential(ours)
    tv_overwrite_eps(tv_model, 0.0)
    overwrite_eps(our_model, 0.0)
    assert ours.eps == 0.0
    torch.testing.assert_close(ours(x), ref(x), rtol=0, atol=0)
    assert not torch.allclose(before, ours(x), rtol=1e-4, atol=1e-4)
    # and it equals an eval-mode BatchNorm2d with the same statistics and eps
    bn = nn.BatchNorm2d(8, eps=1e-5).eval()
    bn.load_state_dict(ref.state_dict(), strict=False)
    overwrite_eps(our_model, 1e-5)
    torch.testing.assert_close(ours(x), bn(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_frozen_batchnorm_in_place_shift_is_torchvisions_to_the_bit(layout):
    """forward adds the shift in place into x * scale's fresh map: the same two roundings in the same order as
    torchvision's x * scale + shift, so the same numbers, layout and dtype, and the same gradient"""
    torch.manual_seed(0)
    ours, ref = FrozenBatchNorm2d(16), TVFrozenBatchNorm2d(16)
    randomise_bn_statistics(ref, var_range=(1e-3, 4.0))
    ours.load_state_dict(ref.state_dict())
    x = (torch.randn(2, 16, 9, 7) * 5).contiguous(memory_format=layout).requires_grad_()
    x_ref = x.detach().clone().requires_grad_()
    y, y_ref = ours(x), ref(x_ref)
    assert torch.equal(y, y_ref) and y.stride() == y_ref.stride() and y.dtype == y_ref.dtype
    g = torch.randn_like(y)
    y.backward(g)
    y_ref.backward(g)
    assert torch.equal(x.grad, x_ref.grad)
    assert x.grad_fn is None and not torch.equal(y, x)  # the input is not overwritten
    for dtype in (torch.bfloat16, torch.float64):  # a map of another dtype than the buffers: torchvision's promotion
        xd = x.detach().to(dtype)
        assert torch.equal(ours(xd), ref(xd)) and ours(xd).dtype == ref(xd).dtype


def test_frozen_batchnorm_has_no_parameters_and_drops_batch_counter():
    bn = nn.BatchNorm2d(4)
    frozen = FrozenBatchNorm2d(4)
    assert list(frozen.parameters()) == []
    frozen.load_state_dict(bn.state_dict())  # has num_batches_tracked: silently dropped
    assert "num_batches_tracked" not in frozen.state_dict()


@pytest.mark.parametrize("trainable", [0, 3, 5])
def test_freezing_matches_torchvision(trainable):
    with torch.device("meta"):
        model = resnet50()
    freeze_layers(model, trainable)
    trainable_names = {n for n, p in model.named_parameters() if p.requires_grad}
    # torchvision's rule (backbone_utils._resnet_fpn_extractor)
    layers = ["layer4", "layer3", "layer2", "layer1", "conv1"][:trainable] + (["bn1"] if trainable == 5 else [])
    expected = {n for n, _ in model.named_parameters() if any(n.startswith(layer) for layer in layers)}
    assert trainable_names == expected
    if trainable == 3:
        assert not any(n.startswith(("conv1", "layer1")) for n in trainable_names)
        assert any(n.startswith("layer2") for n in trainable_names)
    with pytest.raises(ValueError, match="trainable_layers"):
        freeze_layers(model, 6)


def test_load_torchvision_resnet_from_file(tmp_path, tv_reference):
    path = tmp_path / "resnet50.pth"
    torch.save(tv_reference.state_dict(), path)
    body = resnet_body(50, weights=path)  # frozen BN, trainable_layers=3, C2..C5
    x = torch.randn(1, 3, 64, 80)
    with torch.no_grad():
        feats = body(x)
        ref = TVIntermediateLayerGetter(tv_reference, C2_C5)(x)
    for name in ref:
        torch.testing.assert_close(feats[name], ref[name], rtol=1e-4, atol=1e-4)
    assert isinstance(body.bn1, FrozenBatchNorm2d)
    # a C4-only body skips layer4 and fc of the file
    c4 = IntermediateLayerGetter(resnet50(norm_layer=FrozenBatchNorm2d), {"layer3": "0"})
    load_torchvision_resnet(c4, path)
    torch.testing.assert_close(c4.layer3[0].conv1.weight, tv_reference.layer3[0].conv1.weight)


def test_load_errors_are_clear(tmp_path, tv_reference):
    model = resnet50()
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        load_torchvision_resnet(model, tmp_path / "nope.pth")
    state_dict = tv_reference.state_dict()
    torch.save({**state_dict, "fc.weight": torch.zeros(10, 2048)}, tmp_path / "r50_10.pth")
    with pytest.raises(ValueError, match=r"'fc.weight' has shape \[10, 2048\] in the file but \[1000, 2048\]"):
        load_torchvision_resnet(model, tmp_path / "r50_10.pth")
    torch.save({k: v for k, v in state_dict.items() if not k.startswith("layer4.2.")}, tmp_path / "cut.pth")
    with pytest.raises(ValueError, match="missing keys 'layer4.2.conv1.weight', 'layer4.2.bn1.weight'"):
        load_torchvision_resnet(model, tmp_path / "cut.pth")
    (tmp_path / "junk.pth").write_text("not a checkpoint")
    with pytest.raises(ValueError, match="junk.pth"):
        load_torchvision_resnet(model, tmp_path / "junk.pth")


@pytest.mark.parametrize("builders", [(resnet50, tv_resnet50), (resnet101, tv_resnet101)], ids=["50", "101"])
def test_dilated_conv5_equals_torchvision(builders):
    """replace_stride_with_dilation=[False, False, True] (R-FCN's conv5_x a trous): torchvision's state dict loads
    and gives the same C4, C5 and logits; C5 stays at stride 16."""
    ours_builder, tv_builder = builders
    dilate = [False, False, True]
    torch.manual_seed(3)
    ref = tv_builder(replace_stride_with_dilation=dilate)
    randomise_bn_statistics(ref, seed=3)
    ref.eval()
    ours = ours_builder(replace_stride_with_dilation=dilate)
    ours.load_state_dict(ref.state_dict())  # strict: same names and shapes
    ours.eval()
    conv = ours.layer4[1].conv2
    assert (conv.dilation, conv.padding, conv.stride) == ((2, 2), (2, 2), (1, 1))
    assert ours.layer4[0].conv2.stride == (1, 1) and ours.layer4[0].conv2.dilation == (1, 1)  # torchvision's layout
    layers = {"layer3": "c4", "layer4": "c5"}
    x = torch.randn(1, 3, 67, 83)  # small and odd: ceil rounding at every stride
    with torch.no_grad():
        got = IntermediateLayerGetter(ours, layers)(x)
        want = TVIntermediateLayerGetter(ref, layers)(x)
        assert got["c5"].shape == got["c4"].shape[:1] + (2048,) + got["c4"].shape[2:] == (1, 2048, 5, 6)
        for name in layers.values():
            torch.testing.assert_close(got[name], want[name], rtol=0, atol=1e-5)
        torch.testing.assert_close(ours(x), ref(x), rtol=0, atol=1e-5)
    undilated = resnet50()
    assert undilated.layer4[1].conv2.dilation == (1, 1)


def test_dilation_argument_is_checked():
    with pytest.raises(ValueError, match=r"three booleans .*\[False, True\]"):
        resnet50(replace_stride_with_dilation=[False, True])


@pytest.fixture(scope="module")
def tv_weights_file(tmp_path_factory, tv_reference):
    path = tmp_path_factory.mktemp("weights") / "resnet50.pth"
    torch.save(tv_reference.state_dict(), path)
    return path


def test_body_returned_layers_like_torchvision(tv_weights_file, tv_reference):
    """returned_layers as torchvision's _resnet_fpn_extractor: the same maps under the same names "0", "1", ...,
    and out_channels_list = the in_channels_list torchvision gives its FPN."""
    from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor

    body = resnet_body(50, returned_layers=[2, 3, 4], weights=tv_weights_file)
    ref = _resnet_fpn_extractor(tv_reference, 3, returned_layers=[2, 3, 4])
    assert body.out_channels_list == [block[0].in_channels for block in ref.fpn.inner_blocks] == [512, 1024, 2048]
    assert body.strides == [8, 16, 32]
    assert resnet_body(50).out_channels_list == [256, 512, 1024, 2048] and resnet_body(50).strides == [4, 8, 16, 32]
    x = torch.randn(1, 3, 64, 48)
    with torch.no_grad():
        got, want = body(x), ref.body(x)
    assert list(got) == list(want) == ["0", "1", "2"]
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-4, atol=1e-4)
    dilated = resnet_body(101, return_layers={"layer3": "c4", "layer4": "c5"},
                          replace_stride_with_dilation=[False, False, True])
    assert dilated.strides == [16, 16] and dilated.out_channels_list == [1024, 2048]
    for bad in ([0, 1], [3, 2], []):
        with pytest.raises(ValueError, match=r"increasing stage numbers in 1..4"):
            resnet_body(50, returned_layers=bad)
    with pytest.raises(ValueError, match="not both"):
        resnet_body(50, returned_layers=[1], return_layers={"layer1": "0"})


def test_stem_gives_efpn_c2_prime(tv_weights_file, tv_reference):
    """C2' = conv2_x on the stem output without the max-pool (EFPN Table I): layer1 with C2's own weights, twice
    C2's resolution, equal to torchvision's conv1-bn1-relu-layer1 applied by hand."""
    body = resnet_body(50, weights=tv_weights_file)
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        c2 = body(x)["0"]
        c2_prime = body.layer1(body.stem(x))
        by_hand = tv_reference.layer1(tv_reference.relu(tv_reference.bn1(tv_reference.conv1(x))))
    assert c2.shape == (1, 256, 16, 24) and c2_prime.shape == (1, 256, 32, 48)
    torch.testing.assert_close(c2_prime, by_hand, rtol=1e-4, atol=1e-4)
    with torch.device("meta"):  # Table I at full size, shapes only: 800x800 -> C2 200x200, C2' 400x400
        big = resnet_body(50)
        image = torch.empty(1, 3, 800, 800)
        assert big(image)["0"].shape[-2:] == (200, 200)
        assert big.layer1(big.stem(image)).shape[-2:] == (400, 400)
