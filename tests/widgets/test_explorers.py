"""The explorers' logic against the library and hand-made cases; the widgets react to their controls."""
import numpy as np
import pytest
import torch
import torchvision
from torchvision.models.detection.image_list import ImageList

from course_lib.widgets import (AnchorExplorer, NMSExplorer, RoILevelExplorer, anchors_at_location, label_anchors,
                                make_box_cluster, nms_steps, roi_level)


@pytest.mark.parametrize("stride,x,y", [(16, 0, 0), (16, 7, 3), (8, 19, 11), (32, 4, 9)])
def test_anchors_at_location_are_the_generators_anchors(stride, x, y):
    sizes, ratios = (128, 256, 512), (0.5, 1.0, 2.0)
    height, width = 480, 640
    grid = torchvision.models.detection.anchor_utils.AnchorGenerator((sizes,), (ratios,))
    images = ImageList(torch.zeros(1, 3, height, width), [(height, width)])
    fmap = torch.zeros(1, 1, height // stride, width // stride)
    all_anchors = grid(images, [fmap])[0]
    a = len(sizes) * len(ratios)
    start = (y * fmap.shape[-1] + x) * a
    torch.testing.assert_close(anchors_at_location(x, y, stride, sizes, ratios), all_anchors[start:start + a])


def test_label_anchors_thresholds_and_low_quality_match():
    gt = torch.tensor([[100.0, 100.0, 200.0, 200.0]])
    anchors = torch.tensor([
        [100.0, 100.0, 200.0, 200.0],  # IoU 1 -> positive
        [400.0, 400.0, 500.0, 500.0],  # IoU 0 -> negative
        [100.0, 100.0, 200.0, 150.0],  # IoU 0.5 -> ignored
    ])
    ious, labels = label_anchors(anchors, gt)
    torch.testing.assert_close(ious, torch.tensor([1.0, 0.0, 0.5]))
    assert labels.tolist() == [1, 0, -1]
    # a ground truth no anchor reaches 0.7 with: its best anchor (IoU 0.5) becomes positive only with low-quality matches
    _, labels = label_anchors(anchors[1:], gt, low_quality=True)
    assert labels.tolist() == [0, 1]
    _, labels = label_anchors(anchors[1:], gt, low_quality=False)
    assert labels.tolist() == [0, -1]
    with pytest.raises(ValueError, match="bg_iou"):
        label_anchors(anchors, gt, fg_iou=0.3, bg_iou=0.7)


def _greedy_reference(boxes, scores, iou_threshold):
    """Greedy NMS written as the loop it is, recording who suppressed whom (test oracle only)."""
    order = sorted(range(len(boxes)), key=lambda i: -float(scores[i]))
    iou = torchvision.ops.box_iou(boxes, boxes)
    alive = set(order)
    keep, by, step = [], {}, {}
    for i in order:
        if i not in alive:
            continue
        step[i] = len(keep)
        keep.append(i)
        for j in order:
            if j in alive and j != i and j not in keep and iou[i, j] > iou_threshold:
                alive.discard(j)
                by[j], step[j] = i, len(keep) - 1
    return keep, by, step


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("iou_threshold", [0.3, 0.5, 0.7])
def test_nms_steps_match_greedy_loop(seed, iou_threshold):
    boxes, scores = make_box_cluster(num_objects=4, boxes_per_object=10, seed=seed)
    state = nms_steps(boxes, scores, iou_threshold)
    keep, by, step = _greedy_reference(boxes, scores, iou_threshold)
    assert state.keep.tolist() == keep
    assert state.keep.tolist() == torchvision.ops.nms(boxes, scores, iou_threshold).tolist()
    for i in range(len(boxes)):
        assert int(state.suppressed_by[i]) == by.get(i, -1)
        assert int(state.step[i]) == step[i]


def test_nms_steps_score_threshold_drops_boxes_first():
    boxes, scores = make_box_cluster(seed=3)
    state = nms_steps(boxes, scores, 0.5, score_threshold=0.5)
    assert (state.below_threshold == (scores <= 0.5)).all()
    assert not state.below_threshold[state.keep].any()
    assert (state.step[state.below_threshold] == -1).all()


@pytest.mark.parametrize("side,expected", [(224, "P4"), (448, "P5"), (112, "P3"), (111, "P2"), (2000, "P5"), (10, "P2"), (223, "P3")])
def test_roi_level_fpn_equation(side, expected):
    assert roi_level(side, side).name == expected


def test_roi_level_equals_torchvision_level_mapper():
    g = torch.Generator().manual_seed(0)
    wh = torch.rand(200, 2, generator=g) * 900 + 2
    tv = torchvision.ops.poolers.LevelMapper(2, 5)([torch.cat([torch.zeros_like(wh), wh], dim=1)]) + 2
    ours = [roi_level(float(w), float(h)).level for w, h in wh]
    assert ours == tv.tolist()


def test_roi_level_efpn_extended_level():
    assert roi_level(100, 100, efpn=True).name == "P2'"
    assert roi_level(100, 100, efpn=True).stride == 2
    assert roi_level(112, 112, efpn=True).name == "P3"
    assert roi_level(40, 40, efpn=True, efpn_threshold=56).name == "P2'"
    assert roi_level(60, 60, efpn=True, efpn_threshold=56).name == "P2"
    with pytest.raises(ValueError, match="positive width and height"):
        roi_level(0, 10)


def test_anchor_explorer_reacts_to_controls():
    explorer = AnchorExplorer()
    before_state, before_pixels = explorer.state.labels.clone(), explorer.view.pixels()
    explorer.controls["fg_iou"].value = 0.1
    explorer.controls["bg_iou"].value = 0.05
    assert not torch.equal(explorer.state.labels, before_state)
    assert explorer.state.counts()["positive"] > 1
    assert not np.array_equal(explorer.view.pixels(), before_pixels)
    explorer.controls["sizes"].value = "not, numbers"
    assert "numbers separated by commas" in explorer.message.value


def test_nms_explorer_reacts_to_controls():
    explorer = NMSExplorer()
    kept, pixels = len(explorer.state.keep), explorer.view.pixels()
    explorer.controls["iou_threshold"].value = 0.9
    assert len(explorer.state.keep) > kept
    assert not np.array_equal(explorer.view.pixels(), pixels)
    with pytest.raises(ValueError, match="scores must have shape"):
        NMSExplorer(boxes=torch.zeros(3, 4), scores=torch.zeros(2))


def test_roi_level_explorer_reacts_to_controls():
    explorer = RoILevelExplorer(width=224, height=224)
    assert explorer.state.name == "P4"
    pixels = explorer.view.pixels()
    explorer.controls["width"].value = 56
    explorer.controls["height"].value = 56
    assert explorer.state.name == "P2"
    explorer.controls["efpn"].value = True
    assert explorer.state.name == "P2'"
    assert not np.array_equal(explorer.view.pixels(), pixels)


def test_roi_level_agrees_with_the_detectors_pooler():
    """The explorer's level = the level the detector's MultiScaleRoIAlign pools each RoI from (return_levels), on
    random boxes: chapter 7's P2..P5 pooler and an EFPN pooler (P2' at stride 2, RoIs < 112 px to it)."""
    from collections import OrderedDict

    from course_lib.detection.fpn import FPN_LEVELS, FPN_ROI_LEVELS
    from course_lib.ops import MultiScaleRoIAlign

    g = torch.Generator().manual_seed(3)
    size, table = 256, {"p2_prime": 1, **FPN_LEVELS}
    x = OrderedDict((name, torch.zeros(1, 1, size // 2 ** table[name], size // 2 ** table[name]))
                    for name in ["p2_prime"] + FPN_ROI_LEVELS)
    xy = torch.rand(300, 2, generator=g) * 100
    wh = torch.exp(torch.empty(300, 2).uniform_(0.5, 7, generator=g))
    boxes = [torch.cat([xy, xy + wh], 1)]
    fpn_pool = MultiScaleRoIAlign(FPN_ROI_LEVELS, 7, 2)  # what fasterrcnn_resnet50_fpn's RoI heads use
    efpn_pool = MultiScaleRoIAlign(["p2_prime"] + FPN_ROI_LEVELS, 7, 2, levels=table, small_roi_size=112)
    _, fpn_levels = fpn_pool(x, boxes, [(size, size)], return_levels=True)
    _, efpn_levels = efpn_pool(x, boxes, [(size, size)], return_levels=True)
    assert set(efpn_levels.tolist()) >= {1, 3, 4, 5} and set(fpn_levels.tolist()) == {2, 3, 4, 5}
    for (w, h), k, k_efpn in zip(wh.tolist(), fpn_levels.tolist(), efpn_levels.tolist()):
        assert roi_level(w, h).level == k
        assert roi_level(w, h, efpn=True).level == k_efpn
    # chapter 8's detector builds its pooler from this mapper
    from course_lib.detection.efpn import efpn_level_mapper

    assert torch.equal(efpn_level_mapper(112).level(boxes), efpn_levels)
    assert efpn_pool.small_roi_size == 112 and efpn_pool.map_levels.small_roi_level == 1 and fpn_pool.missing_level == "nearest"


def test_roi_level_explorer_shows_only_the_levels_there_are():
    explorer = RoILevelExplorer()
    ticks = lambda: [t.get_text() for t in explorer.view.figure.axes[1].get_yticklabels()]  # noqa: E731
    assert ticks() == ["P2", "P3", "P4", "P5"]
    explorer.controls["efpn"].value = True
    assert ticks() == ["P2'", "P2", "P3", "P4", "P5"]
    explorer.controls["width"].value = explorer.controls["height"].value = 100
    assert explorer.state.small and "small-object rule" in explorer.message.value
