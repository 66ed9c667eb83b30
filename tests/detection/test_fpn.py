"""The FPN neck against torchvision.ops.FeaturePyramidNetwork, and the paper's ablation switches."""
from collections import OrderedDict

import pytest
import torch
from torch import nn
from torchvision.ops import FeaturePyramidNetwork as TVFeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool as TVLastLevelMaxPool
from torchvision.ops.feature_pyramid_network import LastLevelP6P7 as TVLastLevelP6P7

from course_lib.detection.fpn import (FPN_LEVELS, BackboneWithFPN, ExtraFPNBlock, FeaturePyramidNetwork,
                                      LastLevelMaxPool, level_name)

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


def test_extra_blocks_follow_torchvisions_contract():
    """An extra block gets (results, x, names) and returns (results, names): torchvision's own blocks (RetinaNet's
    P6/P7 from C5) work in our neck, and a block can read the FPN's inputs (e.g. C2)."""
    torch.manual_seed(4)
    ref = TVFeaturePyramidNetwork(IN_CHANNELS, 32, extra_blocks=TVLastLevelP6P7(IN_CHANNELS[-1], 32))
    ours = FeaturePyramidNetwork(IN_CHANNELS, 32, extra_blocks=TVLastLevelP6P7(IN_CHANNELS[-1], 32))
    ours.load_state_dict(ref.state_dict(), strict=True)
    x = bottom_up(seed=4)
    out, expected = ours(x), ref(OrderedDict(x))
    assert list(out) == ["0", "1", "2", "3", "p6", "p7"] == list(expected)
    for name in expected:
        torch.testing.assert_close(out[name], expected[name], rtol=0, atol=0, msg=name)

    class FinestInput(ExtraFPNBlock):  # reads an input map: what EFPN's extension does with C2'
        def forward(self, results, x, names):
            return results + [x[0][:, :1]], names + ["c2_channel0"]

    names = ["0", "1", "2", "3"]
    got = FeaturePyramidNetwork(IN_CHANNELS, 32, FinestInput())(x)
    assert list(got) == names + ["c2_channel0"] and torch.equal(got["c2_channel0"], x["0"][:, :1])
    assert list(x) == names  # the block extended copies, not the caller's lists
    with pytest.raises(NotImplementedError, match="forward"):
        FeaturePyramidNetwork(IN_CHANNELS, 32, ExtraFPNBlock())(x)


def test_level_table():
    assert FPN_LEVELS == {"0": 2, "1": 3, "2": 4, "3": 5, "pool": 6}
    assert [level_name(k) for k in (1, 2, 5, 6)] == ["P2'", "P2", "P5", "P6"]
    ours, _ = paired_necks()
    x = bottom_up(height=128, width=128)
    for name, p in ours(x).items():  # stride 2^level of a 128-px image
        assert p.shape[-1] == 128 // 2 ** FPN_LEVELS[name]


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


# --- the ablations in the whole detector: Faster R-CNN with (d), (e), (f) -------------------------------------

@pytest.fixture(scope="module")
def tiny_detectors():
    """The full FPN detector and its three ablations, sharing every parameter they have in common."""
    from course_lib.detection.faster_rcnn_fpn import fasterrcnn_resnet50_fpn

    kwargs = dict(num_classes=5, min_size=128, max_size=160, rpn_post_nms_top_n_test=50)  # few RoIs: time
    torch.manual_seed(0)
    full = fasterrcnn_resnet50_fpn(**kwargs).eval()
    variants = {"(d) bottom-up": dict(fpn_top_down=False), "(e) no lateral": dict(fpn_lateral=False),
                "(f) P2 only": dict(rois_from_p2_only=True)}
    ablated = {}
    for name, switch in variants.items():
        model = fasterrcnn_resnet50_fpn(**kwargs, **switch).eval()
        own = model.state_dict()
        model.load_state_dict({k: v for k, v in full.state_dict().items() if k in own}, strict=True)
        ablated[name] = model
    return full, ablated


def test_ablated_detectors_keep_shapes_and_change_outputs(tiny_detectors):
    full, ablated = tiny_detectors
    g = torch.Generator().manual_seed(0)
    images = [torch.rand(3, 120, 150, generator=g)]
    xy = torch.rand(40, 2, generator=g) * 60
    proposals = [torch.cat([xy, xy + 20 + torch.rand(40, 2, generator=g) * 100], 1)]  # 20-120 px: P2 and P3

    with torch.no_grad():
        batch, _, _ = full.prepare(images)
        feats_full = full.features(batch)
        logits_full, _ = full.roi_heads.predict(feats_full, proposals, batch.image_sizes)
        for name, model in ablated.items():
            feats = model.features(batch)
            assert [(k, v.shape) for k, v in feats.items()] == [(k, v.shape) for k, v in feats_full.items()], name
            if name == "(f) P2 only":  # same pyramid, different pooling
                for k in feats:
                    torch.testing.assert_close(feats[k], feats_full[k], rtol=0, atol=0)
            else:  # a different pyramid below P5 (P5 = 3x3(1x1(C5)) in all three)
                torch.testing.assert_close(feats["3"], feats_full["3"], rtol=0, atol=0)
                assert not torch.allclose(feats["0"], feats_full["0"]), name
            logits, _ = model.roi_heads.predict(feats, proposals, batch.image_sizes)
            assert logits.shape == logits_full.shape == (40, 5)
            assert not torch.allclose(logits, logits_full), f"{name}: the ablation did not change the class scores"
            det = model(images)[0]  # and the whole detector runs end to end
            assert det["boxes"].shape[1:] == (4,) and len(det["boxes"]) == len(det["scores"]) == len(det["labels"])


def test_p2_only_pools_every_roi_from_p2(tiny_detectors):
    """(f): RoIAlign at scale 1/4 on P2 for all RoIs, large ones too; the FPN pools a 241-px RoI from P4 (eq. 1)."""
    from course_lib.ops import roi_align

    full, ablated = tiny_detectors
    p2_only = ablated["(f) P2 only"]
    assert p2_only.roi_heads.box_roi_pool.featmap_names == ["0"]
    g = torch.Generator().manual_seed(1)
    feats = OrderedDict((k, torch.randn(1, 256, 64 // 2 ** i, 64 // 2 ** i, generator=g)) for i, k in enumerate("0123"))
    feats["pool"] = feats["3"][..., ::2, ::2]
    boxes = torch.tensor([[4.0, 4.0, 36.0, 36.0], [10.0, 8.0, 250.0, 250.0]])  # 32 px -> P2, 241 px -> P4
    pooled = p2_only.roi_heads.box_roi_pool(feats, [boxes], [(256, 256)])
    expected = roi_align(feats["0"], [boxes], output_size=7, spatial_scale=0.25, sampling_ratio=2)
    torch.testing.assert_close(pooled, expected)
    pooled_fpn = full.roi_heads.box_roi_pool(feats, [boxes], [(256, 256)])
    torch.testing.assert_close(pooled_fpn[0], expected[0])  # the small RoI: P2 either way
    expected_p4 = roi_align(feats["2"], [boxes[1:]], output_size=7, spatial_scale=1 / 16, sampling_ratio=2)
    torch.testing.assert_close(pooled_fpn[1:], expected_p4)


def test_constructor_refuses_contradictory_pooling():
    from course_lib.detection.faster_rcnn_fpn import fasterrcnn_resnet50_fpn
    from course_lib.ops import MultiScaleRoIAlign

    with pytest.raises(ValueError, match="rois_from_p2_only"):
        fasterrcnn_resnet50_fpn(rois_from_p2_only=True, box_roi_pool=MultiScaleRoIAlign(["0"], 7, 2))


def test_backbone_in_channels_come_from_the_body():
    """returned_layers=[2, 3, 4] (C3..C5, as RetinaNet): the FPN's inputs follow from the body; state-dict keys and
    shapes equal torchvision's _resnet_fpn_extractor with the same stages (so its checkpoints load)."""
    from torchvision.models import resnet50 as tv_resnet50
    from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
    from torchvision.ops.misc import FrozenBatchNorm2d as TVFrozenBatchNorm2d

    from course_lib.detection.faster_rcnn_fpn import resnet_fpn_backbone

    with torch.device("meta"):  # names and shapes only
        ours = resnet_fpn_backbone(50, returned_layers=[2, 3, 4])
        ref = _resnet_fpn_extractor(tv_resnet50(norm_layer=TVFrozenBatchNorm2d), 3, returned_layers=[2, 3, 4])
    assert [b[0].in_channels for b in ours.fpn.inner_blocks] == ours.body.out_channels_list == [512, 1024, 2048]
    ours_sd, ref_sd = ours.state_dict(), ref.state_dict()
    assert list(ours_sd) == list(ref_sd) and all(ours_sd[k].shape == ref_sd[k].shape for k in ref_sd)
