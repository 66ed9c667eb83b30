"""A detector's proposal budget (chapter 7's fair FPN vs C4): the boxes that enter the RPN's NMS per image, the
pre-NMS limit of every map summed, and the most that leave it -- checked against what the RPN really does."""
import torch

import course_lib.detection.rpn as rpn_module
from course_lib.detection.faster_rcnn_c4 import fasterrcnn_resnet50_c4
from course_lib.detection.faster_rcnn_fpn import fasterrcnn_resnet50_fpn

TINY = dict(num_classes=3, width=0.125, min_size=128, max_size=128)
COUNTS = dict(rpn_post_nms_top_n_train=80, rpn_post_nms_top_n_test=40)


def test_fpn_sends_its_per_level_limit_of_every_level_into_nms_c4_its_one_limit():
    torch.manual_seed(0)
    fpn = fasterrcnn_resnet50_fpn(rpn_pre_nms_top_n_train=100, rpn_pre_nms_top_n_test=50, **COUNTS, **TINY)
    # a 256-px image is resized to 128: P2..P6 have 32, 16, 8, 4, 2 cells a side, 3 anchors a cell (3072 ... 12)
    assert fpn.proposal_budget((256, 256)) == {"into NMS, training": 3 * 100 + 48 + 12, "out of NMS, training": 80,
                                               "into NMS, testing": 3 * 50 + 48 + 12, "out of NMS, testing": 40}
    c4 = fasterrcnn_resnet50_c4(rpn_anchor_sizes=(32, 64, 128), rpn_pre_nms_top_n_train=360,
                                rpn_pre_nms_top_n_test=1000, **COUNTS, **TINY)
    assert c4.proposal_budget((256, 256)) == {"into NMS, training": 360, "out of NMS, training": 80,
                                              "into NMS, testing": 8 * 8 * 9, "out of NMS, testing": 40}
    assert fpn.training and not c4.eval().training  # the mode is kept
    c4.proposal_budget((256, 256))
    assert not c4.training


def test_the_budget_is_what_the_rpn_sends_into_nms(monkeypatch):
    torch.manual_seed(0)
    model = fasterrcnn_resnet50_fpn(rpn_pre_nms_top_n_train=100, rpn_pre_nms_top_n_test=50, **COUNTS, **TINY).eval()
    model.rpn.min_size = 0.0  # nothing is dropped before NMS: every box of the top-n of each level enters it
    entered, nms = [], rpn_module.batched_nms
    monkeypatch.setattr(rpn_module, "batched_nms", lambda boxes, *args: entered.append(len(boxes)) or nms(boxes, *args))
    with torch.no_grad():
        model([torch.rand(3, 256, 256)])
    assert entered == [model.proposal_budget((256, 256))["into NMS, testing"]] == [210]
