"""One spelling of each knob on every builder of the course (issue 21): the anchors, the stages given whole."""
import pytest
import torch

from course_lib.detection import fasterrcnn_resnet50_c4, fasterrcnn_resnet50_fpn, rfcn_resnet50


@pytest.mark.parametrize("builder, sizes, per_map", [
    (fasterrcnn_resnet50_fpn, (16, 32, 64, 128, 256), ((16,), (32,), (64,), (128,), (256,))),  # one per level
    (fasterrcnn_resnet50_c4, (64, 128, 256), ((64, 128, 256),)),  # all on C4
    (rfcn_resnet50, (64, 128, 256), ((64, 128, 256),)),
])
def test_every_builder_takes_rpn_anchor_sizes_and_rpn_aspect_ratios(builder, sizes, per_map):
    with torch.device("meta"):
        model = builder(num_classes=3, rpn_anchor_sizes=sizes, rpn_aspect_ratios=(1.0,))
    anchors = model.rpn.anchor_generator
    assert anchors.sizes == per_map and anchors.aspect_ratios == ((1.0,),) * len(per_map)
    with pytest.raises((ValueError, TypeError)):
        with torch.device("meta"):
            builder(num_classes=3, rpn_anchor_sizes=sizes, rpn_anchor_generator=anchors)


@pytest.mark.parametrize("builder", [fasterrcnn_resnet50_fpn, fasterrcnn_resnet50_c4, rfcn_resnet50])
def test_every_builder_takes_the_stages_whole(builder):
    with torch.device("meta"):
        reference = builder(num_classes=3)
        model = builder(num_classes=3, rpn=reference.rpn, roi_heads=reference.roi_heads)
    assert model.rpn is reference.rpn and model.roi_heads is reference.roi_heads
