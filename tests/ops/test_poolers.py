"""course_lib.ops.LevelMapper / MultiScaleRoIAlign == torchvision's (FPN eq. 1 RoI-to-level mapping)."""
from collections import OrderedDict

import pytest
import torch
import torchvision.ops as tv
from torchvision.ops.poolers import LevelMapper as TVLevelMapper
from torchvision.ops.poolers import _infer_scale as tv_infer_scale

from course_lib.ops import LevelMapper, MultiScaleRoIAlign
from course_lib.ops.poolers import _infer_scale
from course_lib.ops.pooling import use_torchvision_kernels

LEVELS = ["0", "1", "2", "3"]  # P2..P5 of an FPN backbone, strides 4..32


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Small tensors: one thread avoids OpenMP overhead (large on a busy shared machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def square(sides):
    s = torch.as_tensor(sides, dtype=torch.float32)
    return torch.stack([torch.zeros_like(s), torch.zeros_like(s), s, s], dim=1)


def test_level_mapper_by_hand():
    """FPN eq. 1: k = floor(4 + log2(sqrt(wh) / 224)), clamped to P2..P5; returned as k - k_min."""
    levels = LevelMapper(2, 5)([square([224, 112, 448, 1000, 10, 223, 111, 56])])
    assert (levels + 2).tolist() == [4, 3, 5, 5, 2, 3, 2, 2]
    wide = torch.tensor([[0.0, 0.0, 448.0, 112.0], [10.0, 20.0, 10.0 + 896.0, 20.0 + 224.0]])  # sqrt(wh) = 224, 448
    assert (LevelMapper(2, 5)([wide]) + 2).tolist() == [4, 5]
    assert (LevelMapper(3, 6, canonical_scale=100, canonical_level=5)([square([100, 50, 400])]) + 3).tolist() == [5, 4, 6]


@pytest.mark.parametrize("seed", range(5))
def test_level_mapper_equals_torchvision(seed):
    g = torch.Generator().manual_seed(seed)
    boxes = [square(torch.exp(torch.rand(n, generator=g) * 8)) + torch.rand(n, 4, generator=g) for n in (50, 0, 30)]
    boxes.append(square([224.0, 112.0, 448.0]))  # exactly on the boundaries: eps decides
    for k_min, k_max, s0, k0 in [(2, 5, 224, 4), (2, 6, 224, 4), (3, 5, 160, 3)]:
        ours = LevelMapper(k_min, k_max, s0, k0)(boxes)
        assert ours.dtype == torch.int64
        assert torch.equal(ours, TVLevelMapper(k_min, k_max, s0, k0)(boxes))


def test_infer_scale_rounds_to_powers_of_two():
    image = (800, 1216)
    for stride, (h, w) in zip((4, 8, 16, 32, 64), [(200, 304), (100, 152), (50, 76), (25, 38), (13, 19)]):
        feature = torch.zeros(1, 1, h, w)
        assert _infer_scale(feature, image) == 1 / stride == tv_infer_scale(feature, list(image))


def boxes_in(g, n, height, width):
    """RoIs of sizes 4..800 pixels (so all four levels get some), partly outside the image."""
    xy = torch.rand(n, 2, generator=g) * torch.tensor([width, height]) - 20
    wh = torch.exp(torch.empty(n, 2).uniform_(1.4, 6.7, generator=g))
    return torch.cat([xy, xy + wh], dim=1)


def fpn_features(g, channels, batch=2, size=(800, 1216)):
    """P2..P5 of an ``size`` batch (strides 4..32) plus a "pool" level that is not pooled from."""
    h, w = size
    x = OrderedDict((name, torch.randn(batch, channels, h // 4 // 2**i, w // 4 // 2**i, generator=g))
                    for i, name in enumerate(LEVELS))
    x["pool"] = torch.randn(batch, channels, h // 64, w // 64, generator=g)
    return x


@pytest.mark.parametrize("seed", range(6))
def test_multiscale_roi_align_equals_torchvision(seed):
    g = torch.Generator().manual_seed(seed)
    x = fpn_features(g, channels=4)
    image_shapes = [(800, 1216), (600, 1000)]  # padded to the batch's 800 x 1216
    boxes = [boxes_in(g, 40, 800, 1216), boxes_in(g, 25, 600, 1000)]
    if seed % 3 == 0:
        boxes[1] = torch.zeros(0, 4)  # an image without RoIs
    # consecutive levels only: with a gap torchvision pools from the wrong map (test_gapped_levels_...)
    for names, output_size, sampling_ratio in [(LEVELS, 7, 2), (LEVELS, (14, 14), 0), (["1", "2"], 5, -1), (["2"], 3, 2)]:
        ours = MultiScaleRoIAlign(names, output_size, sampling_ratio)
        theirs = tv.MultiScaleRoIAlign(names, output_size, sampling_ratio)
        out = ours(x, boxes, image_shapes)
        torch.testing.assert_close(out, theirs(x, boxes, image_shapes), rtol=0, atol=1e-5)
        assert ours.scales == theirs.scales
        assert out.shape[0] == sum(len(b) for b in boxes)


def test_every_level_is_used_and_order_is_kept():
    """Each RoI's result is RoIAlign on its own level, in the order of the boxes."""
    g = torch.Generator().manual_seed(1)
    x = fpn_features(g, channels=3, batch=1)
    boxes = [square([20.0, 500.0, 60.0, 300.0, 130.0]) + 100]  # P2, P5, P2, P4, P3
    pooler = MultiScaleRoIAlign(LEVELS, 7, 2)
    out = pooler(x, boxes, [(800, 1216)])
    levels = pooler.map_levels(boxes)
    assert levels.tolist() == [0, 3, 0, 2, 1]  # every level used
    for i, level in enumerate(levels.tolist()):
        scale = 1 / 4 / 2**level
        expected = tv.roi_align(x[LEVELS[level]], [boxes[0][i : i + 1]], 7, scale, 2)
        torch.testing.assert_close(out[i : i + 1], expected, rtol=0, atol=1e-5)


def test_full_size_fpn():
    """Paper scale: 256-channel P2..P5 of two 800 x 1216 images, 7x7, sampling ratio 2."""
    g = torch.Generator().manual_seed(2)
    x = fpn_features(g, channels=256)
    image_shapes = [(800, 1216), (704, 1216)]
    boxes = [boxes_in(g, 100, 800, 1216), boxes_in(g, 60, 704, 1216)]
    out = MultiScaleRoIAlign(LEVELS, 7, 2)(x, boxes, image_shapes)
    assert out.shape == (160, 256, 7, 7)
    torch.testing.assert_close(out, tv.MultiScaleRoIAlign(LEVELS, 7, 2)(x, boxes, image_shapes), rtol=0, atol=1e-5)


def test_gradient_equals_torchvision():
    g = torch.Generator().manual_seed(3)
    x = OrderedDict((k, v.double()) for k, v in fpn_features(g, channels=2, batch=2, size=(256, 320)).items())
    boxes = [boxes_in(g, 12, 256, 320).double(), boxes_in(g, 7, 200, 320).double()]
    grads = []
    for pooler in (MultiScaleRoIAlign(LEVELS, 5, 2), tv.MultiScaleRoIAlign(LEVELS, 5, 2)):
        leaves = OrderedDict((k, v.clone().requires_grad_(True)) for k, v in x.items())
        out = pooler(leaves, boxes, [(256, 320), (200, 320)])
        (out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view(out.shape)).sum().backward()
        grads.append([leaves[k].grad for k in LEVELS])
        assert leaves["pool"].grad is None
    for ours, theirs in zip(*grads):
        torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-12)


def test_scales_are_inferred_once_like_torchvision():
    g = torch.Generator().manual_seed(4)
    pooler = MultiScaleRoIAlign(LEVELS, 7, 2)
    assert pooler.scales is None and pooler.map_levels is None
    pooler(fpn_features(g, 2), [boxes_in(g, 5, 800, 1216)] * 2, [(800, 1216)] * 2)
    assert pooler.scales == [1 / 4, 1 / 8, 1 / 16, 1 / 32]
    assert (pooler.map_levels.k_min, pooler.map_levels.k_max) == (2, 5)


def test_torchvision_switch():
    g = torch.Generator().manual_seed(5)
    x = fpn_features(g, channels=3)
    boxes, shapes = [boxes_in(g, 20, 800, 1216), boxes_in(g, 20, 800, 1216)], [(800, 1216)] * 2
    ours = MultiScaleRoIAlign(LEVELS, 7, 2)(x, boxes, shapes)
    with use_torchvision_kernels():
        fast = MultiScaleRoIAlign(LEVELS, 7, 2)(x, boxes, shapes)
    torch.testing.assert_close(fast, tv.MultiScaleRoIAlign(LEVELS, 7, 2)(x, boxes, shapes), rtol=0, atol=0)
    torch.testing.assert_close(fast, ours, rtol=0, atol=1e-5)


def test_bad_input_gives_clear_errors():
    g = torch.Generator().manual_seed(6)
    x = fpn_features(g, 2)
    boxes = [boxes_in(g, 3, 800, 1216)] * 2
    with pytest.raises(ValueError, match=r"none of featmap_names \['p2', 'p3'\] is among the feature maps \['0'"):
        MultiScaleRoIAlign(["p2", "p3"], 7, 2)(x, boxes, [(800, 1216)] * 2)
    with pytest.raises(ValueError, match="image_shapes is empty"):
        MultiScaleRoIAlign(LEVELS, 7, 2)(x, boxes, [])
    with pytest.raises(ValueError, match="featmap_names must be a list"):
        MultiScaleRoIAlign("0", 7, 2)
    with pytest.raises(ValueError, match="output_size must be a positive int"):
        MultiScaleRoIAlign(LEVELS, 0, 2)
    with pytest.raises(ValueError, match="k_min"):
        LevelMapper(5, 2)


# ------------------------------------------------------------------------- explicit levels (issue 9)


def maps_at(g, strides, size=256, channels=3, batch=1):
    """Random maps of the given strides for ``size x size`` images (no padding: sizes exact)."""
    return OrderedDict((f"s{s}", torch.randn(batch, channels, size // s, size // s, generator=g)) for s in strides)


def pooled_by_hand(x, boxes, levels, output_size=5, sampling_ratio=2):
    """Each RoI pooled from the map of stride 2^level with spatial_scale 1/2^level, one RoI at a time."""
    rois = torch.cat([torch.zeros(len(boxes), 1), boxes], 1)
    return torch.cat([tv.roi_align(x[f"s{2 ** int(k)}"], rois[i : i + 1], output_size, 1 / 2 ** int(k), sampling_ratio)
                      for i, k in enumerate(levels)])


def test_level_mapper_with_gaps_by_hand():
    """Levels 2 and 4 only: eq. 1 gives 2, 3, 3, 4, 5 (clamped to 4) for these sizes; a level-3 RoI goes to the
    level whose size range is nearer on eq. 1's log2 scale: k0 + log2(120/224) = 3.10 -> 2, 3.84 -> 4."""
    sides = [60, 120, 200, 300, 900]
    assert (LevelMapper(2, 5)([square(sides)]) + 2).tolist() == [2, 3, 3, 4, 5]
    mapper = LevelMapper(levels=[4, 2])
    assert mapper.levels == [2, 4]
    assert mapper.level([square(sides)]).tolist() == [2, 2, 4, 4, 4]
    assert mapper([square(sides)]).tolist() == [0, 0, 1, 1, 1]  # indices into the sorted levels
    # halfway (k0 + log2(s / 224) = 3.5, s = 224 / sqrt(2)): the finer level
    assert LevelMapper(levels=[2, 4], eps=0.0).level([square([224 / 2**0.5 - 1e-3, 224 / 2**0.5 + 1e-3])]).tolist() == [2, 4]
    with pytest.raises(ValueError, match=r"3 RoIs map to levels \[3, 4\] .* the levels are \[2, 5\]. Add the missing"):
        LevelMapper(levels=[2, 5], missing_level="error").level([square([60, 120, 200, 300, 900])])
    assert LevelMapper(levels=[2, 3, 4, 5], missing_level="error").level([square(sides)]).tolist() == [2, 3, 3, 4, 5]


def test_level_mapper_refuses_bad_levels():
    with pytest.raises(ValueError, match="distinct"):
        LevelMapper(levels=[2, 2])
    with pytest.raises(ValueError, match="either k_min and k_max or levels"):
        LevelMapper(2, 5, levels=[2, 3])


def test_gapped_levels_pool_from_the_right_map():
    """Maps of strides 4 and 16: torchvision infers levels 2..4, pools level-3 RoIs from the stride-16 map and
    level-4/5 RoIs from nothing (all zeros); ours pools every RoI from its own level or the nearest one."""
    g = torch.Generator().manual_seed(1)
    x = maps_at(g, (4, 16))
    boxes = square([60, 120, 200, 240, 250]) + torch.tensor([3.0, 5.0, 3.0, 5.0])
    ours = MultiScaleRoIAlign(["s4", "s16"], 5, 2)
    out, levels = ours(x, [boxes], [(256, 256)], return_levels=True)
    assert ours.feature_levels == [2, 4] and levels.tolist() == [2, 2, 4, 4, 4]
    torch.testing.assert_close(out, pooled_by_hand(x, boxes, levels), rtol=0, atol=1e-5)
    assert (out.flatten(1).abs().amax(1) > 0).all()  # no RoI left with zero features
    # the flaw this fixes: torchvision gives the 300- and 900-px RoIs nothing, the 120-px one the stride-16 map
    theirs = tv.MultiScaleRoIAlign(["s4", "s16"], 5, 2)(x, [boxes], [(256, 256)])
    assert (theirs[3:].abs().amax() == 0) and not torch.allclose(theirs[1], out[1])
    # the same with explicit levels, and refused when asked to
    named = MultiScaleRoIAlign(["s4", "s16"], 5, 2, levels={"s4": 2, "s16": 4, "s64": 6})
    torch.testing.assert_close(named(x, [boxes], [(256, 256)]), out, rtol=0, atol=0)
    strict = MultiScaleRoIAlign(["s4", "s16"], 5, 2, missing_level="error")
    with pytest.raises(ValueError, match=r"map to levels \[3\] .* the levels are \[2, 4\]"):
        strict(x, [boxes], [(256, 256)])


def test_stride_2_level():
    """EFPN's P2' (stride 2 = level 1) below P2..P5: consecutive levels from 1 equal torchvision's pooler (EFPN's
    small-RoI rule on top is chapter 8's: tests/detection/test_efpn.py)."""
    g = torch.Generator().manual_seed(2)
    x = maps_at(g, (2, 4, 8, 16, 32))
    names = list(x)
    table = {"s2": 1, "s4": 2, "s8": 3, "s16": 4, "s32": 5}
    xy = torch.rand(40, 2, generator=g) * 100
    boxes = torch.cat([xy, xy + torch.exp(torch.empty(40, 2).uniform_(1.5, 5.5, generator=g))], 1)
    plain = MultiScaleRoIAlign(names, 5, 2, levels=table)
    out, levels = plain(x, [boxes], [(256, 256)], return_levels=True)
    torch.testing.assert_close(out, tv.MultiScaleRoIAlign(names, 5, 2)(x, [boxes], [(256, 256)]), rtol=0, atol=1e-5)
    assert {1, 2, 3} <= set(levels.tolist())


def box_sizes(boxes):
    return ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).sqrt()


def test_return_levels_are_eq1_levels_and_tables_are_checked():
    g = torch.Generator().manual_seed(3)
    x = fpn_features(g, 2, batch=1, size=(256, 320))
    boxes = [boxes_in(g, 30, 256, 320)]
    out, levels = MultiScaleRoIAlign(LEVELS, 7, 2)(x, boxes, [(256, 320)], return_levels=True)
    assert torch.equal(levels, TVLevelMapper(2, 5)(boxes) + 2)
    _, single = MultiScaleRoIAlign(["1"], 7, 2)(x, boxes, [(256, 320)], return_levels=True)
    assert single.tolist() == [3] * 30
    with pytest.raises(ValueError, match=r"no level number for the maps \['3'\]"):
        MultiScaleRoIAlign(LEVELS, 7, 2, levels={"0": 2, "1": 3, "2": 4})
    with pytest.raises(ValueError, match=r"'0' \(level 3: stride 8, but the map is 64 rows for 256-pixel images: stride 4\)"):
        MultiScaleRoIAlign(LEVELS, 7, 2, levels={"0": 3, "1": 4, "2": 5, "3": 6})(x, boxes, [(256, 320)])
    dup = OrderedDict([("a", x["1"]), ("b", x["1"])])
    with pytest.raises(ValueError, match="two maps share a level"):
        MultiScaleRoIAlign(["a", "b"], 7, 2)(dup, boxes, [(256, 320)])
    with pytest.raises(ValueError, match="missing_level must be one of"):
        MultiScaleRoIAlign(LEVELS, 7, 2, missing_level="zeros")
