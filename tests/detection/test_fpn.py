"""The FPN neck against torchvision.ops.FeaturePyramidNetwork, and the paper's ablation switches."""
from collections import OrderedDict

import pytest
import torch
from torch import nn
from torchvision.ops import FeaturePyramidNetwork as TVFeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool as TVLastLevelMaxPool

from course_lib.detection.fpn import BackboneWithFPN, FeaturePyramidNetwork, LastLevelMaxPool

IN_CHANNELS = [16, 24, 40, 64]  # small stand-ins for ResNet-50's [256, 512, 1024, 2048]


def bottom_up(batch=2, height=67, width=45, channels=IN_CHANNELS, seed=0):
    """Random C2..C5 of a (height x width) image: strides 4..32 with ResNet's ceil rounding (odd sizes)."""
    g = torch.Generator().manual_seed(seed)
    feats, h, w = OrderedDict(), height, width
    h, w = (h + 1) // 2, (w + 1) // 2  # conv1, stride 2
    for i, c in enumerate(channels):
        h, w = (h + 1) // 2, (w + 1) // 2  # maxpool (C2), then layer2..4 stride 2
        feats[str(i)] = torch.randn(batch, c, h, w, generator=g)
    return feats


def paired_necks(in_channels=IN_CHANNELS, out_channels=32, seed=0):
    torch.manual_seed(seed)
    ref = TVFeaturePyramidNetwork(in_channels, out_channels, extra_blocks=TVLastLevelMaxPool())
    ours = FeaturePyramidNetwork(in_channels, out_channels, extra_blocks=LastLevelMaxPool())
    ours.load_state_dict(ref.state_dict(), strict=True)
    return ours, ref


def test_parameter_names_are_torchvisions():
    ours, ref = paired_necks()
    assert list(ours.state_dict()) == list(ref.state_dict())
    assert "inner_blocks.0.0.weight" in ours.state_dict() and "layer_blocks.3.0.bias" in ours.state_dict()


def test_same_initialisation_as_torchvision_for_the_same_seed():
    torch.manual_seed(3)
    ref = TVFeaturePyramidNetwork(IN_CHANNELS, 32)
    torch.manual_seed(3)
    ours = FeaturePyramidNetwork(IN_CHANNELS, 32)
    for (name, a), b in zip(ours.state_dict().items(), ref.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)


@pytest.mark.parametrize("size", [(67, 45), (64, 64), (33, 129), (1, 1)])
def test_outputs_equal_torchvision(size):
    ours, ref = paired_necks(seed=sum(size))
    x = bottom_up(height=size[0], width=size[1], seed=sum(size))
    out, expected = ours(x), ref(OrderedDict(x))
    assert list(out) == ["0", "1", "2", "3", "pool"] == list(expected)
    for name in expected:
        assert out[name].shape == expected[name].shape, name
        torch.testing.assert_close(out[name], expected[name], rtol=0, atol=0, msg=f"level {name}")
    # every level has d channels and keeps its input's resolution; P6 halves P5 (ceil)
    for name, c in x.items():
        assert out[name].shape == (c.shape[0], 32, *c.shape[-2:])
    h5, w5 = out["3"].shape[-2:]
    assert out["pool"].shape[-2:] == ((h5 + 1) // 2, (w5 + 1) // 2)


def test_gradients_equal_torchvision():
    ours, ref = paired_necks()
    x = bottom_up()
    loss_ours = sum((v * torch.linspace(-1, 1, v.numel()).view_as(v)).sum() for v in ours(x).values())
    loss_ref = sum((v * torch.linspace(-1, 1, v.numel()).view_as(v)).sum() for v in ref(OrderedDict(x)).values())
    loss_ours.backward()
    loss_ref.backward()
    for (name, a), b in zip(ours.named_parameters(), ref.parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-5, msg=name)


def test_top_down_equations_by_hand():
    """M5 = L5(C5), M_k = L_k(C_k) + up2(M_{k+1}), P_k = O_k(M_k), P6 = P5[::2, ::2] (sec. 3, 4.1)."""
    neck, _ = paired_necks()
    c = bottom_up(batch=1)
    lat = [neck.inner_blocks[i][0] for i in range(4)]
    smooth = [neck.layer_blocks[i][0] for i in range(4)]
    m = lat[3](c["3"])
    expected = {"3": smooth[3](m)}
    for k in (2, 1, 0):
        lateral = lat[k](c[str(k)])
        up = m.repeat_interleave(2, dim=-2).repeat_interleave(2, dim=-1)[..., : lateral.shape[-2], : lateral.shape[-1]]
        m = lateral + up
        expected[str(k)] = smooth[k](m)
    expected["pool"] = expected["3"][..., ::2, ::2]
    out = neck(c)
    for name, value in expected.items():
        torch.testing.assert_close(out[name], value, msg=f"level {name}")


def test_old_key_names_load_like_torchvision():
    """Checkpoints written before torchvision 0.11 name the convolutions ``inner_blocks.0.weight``."""
    ours, ref = paired_necks()
    old = OrderedDict((k.replace(".0.weight", ".weight").replace(".0.bias", ".bias"), v) for k, v in ref.state_dict().items())
    assert "inner_blocks.0.weight" in old
    fresh_ours = FeaturePyramidNetwork(IN_CHANNELS, 32, LastLevelMaxPool())
    fresh_ref = TVFeaturePyramidNetwork(IN_CHANNELS, 32, extra_blocks=TVLastLevelMaxPool())
    fresh_ours.load_state_dict(OrderedDict(old), strict=True)  # no _metadata: version None -> remapped
    fresh_ref.load_state_dict(OrderedDict(old), strict=True)
    for name, value in ref.state_dict().items():
        torch.testing.assert_close(fresh_ours.state_dict()[name], value, rtol=0, atol=0)
        torch.testing.assert_close(fresh_ref.state_dict()[name], value, rtol=0, atol=0)


def test_backbone_with_fpn_composes_body_and_neck():
    class Body(nn.Module):  # stride-4..32 maps out of a 3-channel image
        def __init__(self):
            super().__init__()
            self.stages = nn.ModuleList(nn.Conv2d(a, b, 3, stride=s, padding=1)
                                        for a, b, s in zip([3] + IN_CHANNELS[:-1], IN_CHANNELS, [4, 2, 2, 2]))

        def forward(self, x):
            out = OrderedDict()
            for i, stage in enumerate(self.stages):
                x = stage(x)
                out[str(i)] = x
            return out

    body, (neck, _) = Body(), paired_necks()
    model = BackboneWithFPN(body, neck, out_channels=32)
    image = torch.randn(1, 3, 96, 80)
    out = model(image)
    assert model.out_channels == 32
    assert [tuple(v.shape[-2:]) for v in out.values()] == [(24, 20), (12, 10), (6, 5), (3, 3), (2, 2)]
    assert all(v.shape[1] == 32 for v in out.values())
    assert any(k.startswith("body.") for k in model.state_dict()) and "fpn.inner_blocks.0.0.weight" in model.state_dict()


# --- ablations (Table 1/2 of the FPN paper, rows (d) and (e)) ---------------------------------------------------

def test_bottom_up_pyramid_has_no_top_down_pathway():
    """(d): P_k = O_k(L_k(C_k)); changing C5 must not change P2..P4."""
    full, _ = paired_necks()
    ablated = FeaturePyramidNetwork(IN_CHANNELS, 32, LastLevelMaxPool(), top_down=False)
    ablated.load_state_dict(full.state_dict(), strict=True)  # same parameters: the ablation removes a path only
    x = bottom_up()
    out = ablated(x)
    assert [v.shape for v in out.values()] == [v.shape for v in full(x).values()]
    for k in range(4):
        expected = ablated.layer_blocks[k](ablated.inner_blocks[k](x[str(k)]))
        torch.testing.assert_close(out[str(k)], expected)
    x2 = OrderedDict(x)
    x2["3"] = torch.randn_like(x["3"])
    out2 = ablated(x2)
    for k in "012":
        torch.testing.assert_close(out2[k], out[k], rtol=0, atol=0)
    assert not torch.allclose(out2["3"], out["3"])
    # ... whereas the full FPN carries C5's semantics down to P2, so the ablation changes the output
    assert not torch.allclose(full(x)["0"], out["0"])
    assert not torch.allclose(full(x2)["0"], full(x)["0"])


def test_top_down_pyramid_without_lateral_connections():
    """(e): only C5 enters (1x1 conv), M_k = up(M_{k+1}); C2..C4 do not matter, nor do their 1x1 convs exist."""
    ablated = FeaturePyramidNetwork(IN_CHANNELS, 32, LastLevelMaxPool(), lateral=False)
    names = set(ablated.state_dict())
    assert "inner_blocks.3.0.weight" in names
    assert not any(n.startswith(("inner_blocks.0", "inner_blocks.1", "inner_blocks.2")) for n in names)
    x = bottom_up()
    out = ablated(x)
    full, _ = paired_necks()
    assert [v.shape for v in out.values()] == [v.shape for v in full(x).values()]
    x2 = OrderedDict((k, torch.randn_like(v) if k != "3" else v) for k, v in x.items())
    for k, v in ablated(x2).items():
        torch.testing.assert_close(v, out[k], rtol=0, atol=0)
    m = ablated.inner_blocks[3](x["3"])
    for k in (2, 1, 0):
        m = torch.nn.functional.interpolate(m, size=x[str(k)].shape[-2:], mode="nearest")
        torch.testing.assert_close(out[str(k)], ablated.layer_blocks[k](m))
    # the full FPN's P2 depends on C2
    assert not torch.allclose(full(x2)["0"], full(x)["0"])


def test_bad_configuration_is_refused_with_a_clear_message():
    with pytest.raises(ValueError, match="at most one"):
        FeaturePyramidNetwork(IN_CHANNELS, 32, top_down=False, lateral=False)
    with pytest.raises(ValueError, match="in_channels_list"):
        FeaturePyramidNetwork([], 32)
    neck = FeaturePyramidNetwork(IN_CHANNELS, 32)
    with pytest.raises(ValueError, match="4 levels, got 3"):
        neck(OrderedDict(list(bottom_up().items())[:3]))
