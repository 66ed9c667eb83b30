"""VGG16 backbone: torchvision-compatible names, net surgery of fc6/fc7/fc8, width multiplier."""
import pytest
import torch
import torchvision
from torch import nn

from course_lib.backbones.vgg import (
    VGG16,
    convolutionalize_vgg16_state_dict,
    linear_to_conv,
    vgg16_layer_names,
)
from course_lib.backbones.width import scale_channels


def test_feature_indices_and_names_match_torchvision():
    tv = torchvision.models.vgg.make_layers(torchvision.models.vgg.cfgs["D"])
    ours = VGG16(fully_connected=False).features
    assert len(ours) == len(tv) == len(vgg16_layer_names())
    for i, (a, b) in enumerate(zip(ours, tv)):
        assert type(a) is type(b), i
        if isinstance(a, nn.Conv2d):
            assert a.weight.shape == b.weight.shape and a.padding == b.padding, i
    names = vgg16_layer_names()
    assert names[0] == "conv1_1" and names[28] == "conv5_3" and names[30] == "pool5"


def test_convolutionalized_vgg16_gives_the_classifier_logits(torchvision_vgg16_file):
    tv, path = torchvision_vgg16_file
    with torch.device("meta"):  # every weight comes from the file: skip initialising 138 M of them
        ours = VGG16(num_classes=1000)
    ours = ours.to_empty(device="cpu").eval()
    dropped = ours.load_torchvision_state_dict(path)
    assert dropped == []
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        expected = tv(x)
        out = ours(x)
    assert out["fc8"].shape == (1, 1000, 1, 1)
    torch.testing.assert_close(out["fc8"].flatten(1), expected, atol=1e-4, rtol=1e-4)
    assert out["pool5"].shape == (1, 512, 7, 7) and out["conv5_3"].shape == (1, 512, 14, 14)


def test_surgery_reshapes_fc_weights_without_changing_them():
    fc6 = torch.zeros(4096, 512 * 7 * 7)
    fc6[5, 17 * 49 + 2 * 7 + 3] = 1.0  # input channel 17, row 2, column 3 of the 7 x 7 pool5 map
    sd = {"features.0.weight": torch.zeros(64, 3, 3, 3), "classifier.0.weight": fc6, "classifier.0.bias": torch.zeros(4096),
          "classifier.3.weight": torch.zeros(4096, 4096), "classifier.6.weight": torch.zeros(1000, 4096)}
    conv = convolutionalize_vgg16_state_dict(sd)
    assert conv["fc6.weight"].shape == (4096, 512, 7, 7)
    assert conv["fc6.weight"][5, 17, 2, 3] == 1 and conv["fc6.weight"].sum() == 1
    assert conv["fc7.weight"].shape == (4096, 4096, 1, 1) and conv["fc8.weight"].shape == (1000, 4096, 1, 1)


@pytest.mark.parametrize("in_channels,k", [(3, 1), (8, 5), (4, (3, 2))])
def test_linear_to_conv_computes_the_linear_layer_at_every_position(in_channels, k):
    kh, kw = (k, k) if isinstance(k, int) else k
    linear = nn.Linear(in_channels * kh * kw, 6)
    conv = linear_to_conv(linear, in_channels, k)
    x = torch.randn(4, in_channels, kh + 3, kw + 2)
    out = conv(x)
    for i in range(4):
        for j in range(3):
            torch.testing.assert_close(out[:, :, i, j], linear(x[:, :, i : i + kh, j : j + kw].flatten(1)))
    with pytest.raises(ValueError, match="cannot read"):
        linear_to_conv(linear, in_channels + 1, k)


def test_width_scales_channels_but_keeps_the_architecture():
    with torch.device("meta"):  # architecture only: no memory, no initialisation time
        full, thin = VGG16(), VGG16(width=0.25)
    assert len(list(full.modules())) == len(list(thin.modules()))
    for a, b in zip(full.modules(), thin.modules()):
        if isinstance(a, nn.Conv2d):
            assert (a.kernel_size, a.stride, a.padding) == (b.kernel_size, b.stride, b.padding)
            assert b.out_channels == scale_channels(a.out_channels, 0.25)
    assert thin.out_channels["fc7"] == 1024 and thin.out_channels["pool3"] == 64
    with pytest.raises(ValueError, match="width"):
        VGG16(width=0)


def test_fcn_options_ceil_mode_and_padding():
    net = VGG16(conv1_padding=100, ceil_mode=True, width=1 / 16, fully_connected=False)
    out = net(torch.zeros(1, 3, 5, 5))  # 203 -> 102 -> 51 -> 26 -> 13 -> 7 (ceil)
    assert [out[f"pool{i}"].shape[-1] for i in range(1, 6)] == [102, 51, 26, 13, 7]


def test_bad_state_dicts_give_clear_errors(tmp_path, torchvision_vgg16_file):
    _, path = torchvision_vgg16_file
    with torch.device("meta"):
        thin, full = VGG16(width=0.5), VGG16()
    with pytest.raises(ValueError, match="width=1.0"):
        thin.load_torchvision_state_dict(path)
    with pytest.raises(FileNotFoundError, match="torch.save"):
        full.load_torchvision_state_dict(tmp_path / "missing.pth")
    with pytest.raises(ValueError, match="not a torchvision vgg16"):
        convolutionalize_vgg16_state_dict({"conv1.weight": torch.zeros(1)})
