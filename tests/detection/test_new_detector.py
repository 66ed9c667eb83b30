"""The proof that the seams are where a reader expects: a new two-stage detector in one file, with no change to
the library. Iterative box regression (Gidaris & Komodakis, ICCV 2015, sec. 5; the test-time half of Cascade
R-CNN): the box head runs twice, the second time on the boxes the first one predicted. Only ``predict`` is new;
sampling, the loss, OHEM and the per-class NMS are the one second stage's, and the builder takes it as
``roi_heads=``."""
import pytest
import torch

from course_lib.detection import FasterRCNN, FastRCNNPredictor, RoIHeads, TwoMLPHead, fasterrcnn_resnet50_fpn
from course_lib.detection.roi_heads import box_deltas_of_labels
from course_lib.ops import MultiScaleRoIAlign


class IterativeRoIHeads(RoIHeads):
    def predict(self, features, proposals, image_shapes):
        logits, deltas = super().predict(features, proposals, image_shapes)
        rois = torch.cat(proposals)
        best = logits[:, 1:].argmax(1) + 1  # each RoI moves to the box of its most likely object class
        refined = self.box_coder.decode_single(box_deltas_of_labels(deltas, best).detach(), rois).reshape(-1, 4)
        logits, deltas = super().predict(features, list(refined.split([len(p) for p in proposals])), image_shapes)
        # the second deltas are relative to the refined boxes; the loss and the post-processing read them
        # relative to the proposals: decode, then encode again
        classes = deltas.shape[1] // 4
        boxes = self.box_coder.decode_single(deltas, refined).reshape(-1, 4)
        return logits, self.box_coder.encode_single(boxes, rois.repeat_interleave(classes, 0)).reshape(len(rois), -1)


def test_a_new_detector_is_one_predict_passed_as_roi_heads():
    torch.manual_seed(0)
    channels = 32  # the FPN's d = 256 at width 1/8
    heads = IterativeRoIHeads(MultiScaleRoIAlign(["0", "1", "2", "3"], 7, 2), TwoMLPHead(channels * 49, 64),
                              FastRCNNPredictor(64, 3), batch_size_per_image=64)
    model = fasterrcnn_resnet50_fpn(num_classes=3, width=1 / 8, min_size=64, max_size=96, roi_heads=heads,
                                    rpn_pre_nms_top_n_train=50, rpn_post_nms_top_n_train=50,
                                    rpn_pre_nms_top_n_test=50, rpn_post_nms_top_n_test=50)
    assert model.roi_heads is heads and model.backbone.out_channels == channels
    images = [torch.rand(3, 64, 80), torch.rand(3, 72, 64)]
    targets = [{"boxes": torch.tensor([[5.0, 5.0, 40.0, 50.0]]), "labels": torch.tensor([1])},
               {"boxes": torch.tensor([[10.0, 20.0, 60.0, 70.0], [0.0, 0.0, 20.0, 20.0]]), "labels": torch.tensor([2, 1])}]
    losses = model.train()(images, targets)
    assert set(losses) == {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"}
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert heads.box_predictor.bbox_pred.weight.grad.abs().sum() > 0  # through decode -> encode
    with torch.no_grad():
        detections = model.eval()(images)
    assert len(detections) == 2 and all(d["boxes"].shape[1:] == (4,) and torch.isfinite(d["boxes"]).all()
                                        for d in detections)
    with pytest.raises(ValueError, match=r"roi_heads= or its pieces \['box_head'\]"):
        FasterRCNN(model.backbone, roi_heads=heads, box_head=heads.box_head)
