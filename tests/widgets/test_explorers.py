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


def test_nms_steps_with_every_box_under_the_score_threshold():
    boxes, scores = make_box_cluster(seed=3)
    state = nms_steps(boxes, scores, 0.5, score_threshold=1.0)
    assert len(state.keep) == 0 and state.below_threshold.all()
    assert (state.step == -1).all() and (state.suppressed_by == -1).all()


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
    from course_lib.detection.efpn import EFPNLevelMapper, efpn_level_mapper

    efpn_pool = MultiScaleRoIAlign(["p2_prime"] + FPN_ROI_LEVELS, 7, 2, levels=table, level_mapper=EFPNLevelMapper(112))
    _, fpn_levels = fpn_pool(x, boxes, [(size, size)], return_levels=True)
    _, efpn_levels = efpn_pool(x, boxes, [(size, size)], return_levels=True)
    assert set(efpn_levels.tolist()) >= {1, 3, 4, 5} and set(fpn_levels.tolist()) == {2, 3, 4, 5}
    for (w, h), k, k_efpn in zip(wh.tolist(), fpn_levels.tolist(), efpn_levels.tolist()):
        assert roi_level(w, h).level == k
        assert roi_level(w, h, efpn=True).level == k_efpn
    # chapter 8's detector builds its pooler from this mapper
    assert torch.equal(efpn_level_mapper(112).level(boxes), efpn_levels)
    assert efpn_pool.map_levels.threshold == 112 and efpn_pool.map_levels.small_level == 1 and fpn_pool.missing_level == "nearest"


def test_roi_level_explorer_shows_only_the_levels_there_are():
    explorer = RoILevelExplorer()
    ticks = lambda: [t.get_text() for t in explorer.view.figure.axes[1].get_yticklabels()]  # noqa: E731
    assert ticks() == ["P2", "P3", "P4", "P5"]
    explorer.controls["efpn"].value = True
    assert ticks() == ["P2'", "P2", "P3", "P4", "P5"]
    explorer.controls["width"].value = explorer.controls["height"].value = 100
    assert explorer.state.small and "small-object rule" in explorer.message.value


# ------------------------------------------------------------------ what a student sees (issue 13)
def _explorers():
    boxes, scores = make_box_cluster(seed=1)
    return [AnchorExplorer(), NMSExplorer(boxes, scores), RoILevelExplorer()]


def _nudge(control):
    """A new valid value for a control, as one student input would give (one slider step, another option...)."""
    if hasattr(control, "options"):
        options = list(control.options)
        return options[(options.index(control.value) + 1) % len(options)]
    if isinstance(control.value, bool):
        return not control.value
    if isinstance(control.value, str):
        return None
    step = control.step
    return control.value - step if control.value + step > control.max else control.value + step


@pytest.mark.parametrize("index", range(3), ids=["anchors", "nms", "roi_levels"])
def test_one_redraw_per_input(index):
    explorer = _explorers()[index]
    for name, control in explorer.controls.items():
        value = _nudge(control)
        if value is None:
            continue
        before = explorer.view.renders
        control.value = value
        assert explorer.view.renders - before == 1, f"{type(explorer).__name__}: changing {name} redrew " \
                                                    f"{explorer.view.renders - before} times"


def test_explorer_png_is_rendered_on_a_fresh_kernel(tmp_path):
    """Displayed on a kernel where pyplot never ran, every explorer's picture is a PNG (not a Figure's text)."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(
        "import sys\n"
        "from course_lib.widgets import AnchorExplorer, NMSExplorer, RoILevelExplorer\n"
        "explorers = [AnchorExplorer(), NMSExplorer(), RoILevelExplorer()]\n"
        "assert 'matplotlib.pyplot' not in sys.modules  # nothing set up an inline backend\n"
        "for explorer in explorers:\n"
        "    display(explorer)\n")]
    client = NotebookClient(nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}})
    client.execute()
    outputs = nb.cells[0].outputs
    assert not [o for o in outputs if "<Figure" in str(o.get("data", {}).get("text/plain", ""))]
    assert len([o for o in outputs if "application/vnd.jupyter.widget-view+json" in o.get("data", {})]) == 3
    state = nb.metadata["widgets"]["application/vnd.jupyter.widget-state+json"]["state"]
    images = [m for m in state.values() if m["model_name"] == "ImageModel"]
    assert len(images) == 3 and all(m["state"]["format"] == "png" for m in images)
    import base64

    for model in images:
        (buffer,) = model["buffers"]
        assert base64.b64decode(buffer["data"])[:8] == b"\x89PNG\r\n\x1a\n"


def _text_boxes(explorer):
    fig = explorer.view.figure
    renderer = explorer.view.canvas.get_renderer()
    titles = [ax.title for ax in fig.axes if ax.title.get_text()]
    return fig.bbox, [(t.get_text(), t.get_window_extent(renderer)) for t in titles]


@pytest.mark.parametrize("index", range(2), ids=["anchors", "nms"])
def test_titles_fit_and_do_not_overlap(index):
    explorer = _explorers()[index]
    for value in (0.3, 0.95):  # short and long numbers in the titles
        name = "iou_threshold" if "iou_threshold" in explorer.controls else "fg_iou"
        explorer.controls[name].value = value
        figure_box, boxes = _text_boxes(explorer)
        for k, (text, box) in enumerate(boxes):
            assert box.x0 >= figure_box.x0 and box.x1 <= figure_box.x1, f"title {text!r} leaves the figure"
            for other, other_box in boxes[k + 1:]:
                assert not box.overlaps(other_box), f"titles {text!r} and {other!r} overlap"


def test_nms_show_step_follows_a_new_threshold_to_the_finished_run():
    explorer = NMSExplorer()
    step = explorer.controls["step"]
    assert step.value == step.max == len(explorer.state.keep)  # opens on the finished run
    step.value = 1
    explorer.controls["iou_threshold"].value = 0.9  # more boxes kept: more steps
    assert step.value == step.max == len(explorer.state.keep)
    explorer.controls["iou_threshold"].value = 0.2  # fewer steps: the slider shrinks, the run is still finished
    assert step.value == step.max == len(explorer.state.keep)


def test_nms_step_axis_has_integer_ticks():
    explorer = NMSExplorer()
    explorer.view.canvas.draw()
    for axis in (explorer.ax_steps.xaxis, explorer.ax_steps.yaxis):
        ticks = axis.get_ticklocs()
        assert len(ticks) and np.allclose(ticks, np.round(ticks)), f"fractional ticks {ticks}"


def test_nms_score_slider_spans_the_scores_given():
    """Proposals of an untrained RPN all score about 0.52: the slider must still separate them."""
    boxes, _ = make_box_cluster(seed=2)
    scores = 0.515 + 0.015 * torch.rand(len(boxes), generator=torch.Generator().manual_seed(0))
    explorer = NMSExplorer(boxes, scores, score_threshold=0.05)
    slider = explorer.controls["score_threshold"]
    assert slider.min < float(scores.min()) and slider.max >= float(scores.max())
    assert (slider.max - slider.min) / slider.step >= 10
    assert not explorer.state.below_threshold.any()  # a threshold below the range keeps every box
    below = set()
    for value in np.arange(slider.min, slider.max + slider.step / 2, slider.step):
        slider.value = float(value)
        below.add(int(explorer.state.below_threshold.sum()))
    assert len(below) >= 5 and max(below) == len(boxes), f"the slider separates the boxes poorly: {sorted(below)}"


def test_anchor_stride_change_keeps_the_location_in_the_image():
    explorer = AnchorExplorer(stride=16)
    x, y = explorer.controls["x"].value, explorer.controls["y"].value
    for stride in (32, 4, 64, 8):
        explorer.controls["stride"].value = stride
        cx, cy = explorer.controls["x"].value * stride, explorer.controls["y"].value * stride
        assert abs(cx - x * 16) <= stride / 2 and abs(cy - y * 16) <= stride / 2
        assert explorer.controls["x"].max == (explorer.image.shape[1] - 1) // stride
    explorer.controls["stride"].value = 16
    assert (explorer.controls["x"].value, explorer.controls["y"].value) == (x, y)  # back where it was


def test_low_quality_positive_bar_is_visible():
    """A 6 x 6 ground truth: its best anchor is positive (low-quality match) with IoU 0.002; its bar must show."""
    explorer = AnchorExplorer(gt_box=(264, 190, 270, 196), stride=32, location=(7, 6))
    ious, labels = explorer.state.ious, explorer.state.labels
    (best,) = torch.nonzero(labels == 1).flatten().tolist()
    assert float(ious[best]) < 0.005  # a bar of IoU 0.002: half a pixel wide
    pixels = explorer.view.pixels()
    bar = explorer.ax_bar.patches[best].get_window_extent(explorer.view.canvas.get_renderer())
    height = pixels.shape[0]
    region = pixels[int(height - bar.y1):int(height - bar.y0) + 1, int(bar.x0) - 1:int(bar.x0) + 6, :3].astype(int)
    green = (abs(region - np.array([44, 160, 44])).sum(axis=-1) < 60).sum()
    assert green >= 2 * (bar.y1 - bar.y0), "the low-quality positive's bar is not visible (under 2 px wide)"
    assert [t.get_text() for t in explorer.ax_bar.texts][best].endswith("best")


def test_anchor_checkbox_label_is_not_cut_off():
    box = AnchorExplorer().controls["low_quality"]
    assert box.indent is False and box.layout.width == "auto"


def test_nms_score_labels_stay_inside_the_picture():
    """Boxes that reach past the image's top or left edge put their score inside the picture, below the title
    (a label at the raw corner covered the title, or hung beside the image)."""
    image = np.zeros((120, 160, 3))
    boxes = torch.tensor([[-30.0, -40, 60, 50], [100, -10, 190, 100], [20, 30, 80, 90]])
    explorer = NMSExplorer(boxes, torch.tensor([0.9, 0.8, 0.7]), image=image, iou_threshold=0.5)
    fig = explorer.view.figure
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    axes_box = explorer.ax.get_window_extent(renderer)
    title_box = explorer.ax.title.get_window_extent(renderer)
    shown = [label for label in explorer._labels if label.get_visible()]
    assert len(shown) == 3
    for label in shown:
        box = label.get_window_extent(renderer)
        assert axes_box.x0 - 1 <= box.x0 and box.y1 <= axes_box.y1 + 1, label.get_text()
        assert not box.overlaps(title_box), label.get_text()
