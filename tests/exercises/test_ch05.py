"""Chapter 5's checkers reject plausible wrong answers (solutions and stubs: test_solutions_and_stubs.py)."""
import pytest
import torch

from course_lib.exercises import ExerciseFailed, ch05, load_solution
from course_lib.ops import BoxCoder, nms

sol = lambda name: load_solution("ch05", name)  # noqa: E731


@pytest.mark.parametrize("mistake,message", [({"low_quality": False}, "best anchor is positive"),
                                             ({"strict_fg": True}, "IoU >= 0.7"),
                                             ({"ties": False}, "not\\s+argmax")])
def test_label_anchors_rejects_usual_mistakes(mistake, message):
    def wrong(anchors, gt, fg=0.7, bg=0.3, **kw):
        return ch05._label_variant(anchors, gt, kw.get("fg_iou_thresh", fg), kw.get("bg_iou_thresh", bg), **mistake)
    with pytest.raises(ExerciseFailed, match=message):
        ch05.check_label_anchors(wrong)


def test_filter_proposals_rejects_post_nms_top_n_first_and_no_clipping():
    def post_first(anchors, objectness, deltas, image_size, pre=6000, post=300, t=0.7):
        # the notebook's old order: the post-NMS number of best boxes first, then NMS
        return sol("filter_proposals")(anchors, objectness, deltas, image_size, post, post, t)
    with pytest.raises(ExerciseFailed, match="before\\* NMS"):
        ch05.check_filter_proposals(post_first)

    def unclipped(anchors, objectness, deltas, image_size, pre=6000, post=300, t=0.7):
        boxes = BoxCoder((1.0, 1.0, 1.0, 1.0)).decode_single(deltas, anchors)
        top = objectness.topk(min(pre, len(objectness))).indices
        boxes, scores = boxes[top], torch.sigmoid(objectness[top])
        keep = nms(boxes, scores, t)[:post]
        return boxes[keep], scores[keep]
    with pytest.raises(ExerciseFailed, match="Clip the decoded boxes"):
        ch05.check_filter_proposals(unclipped)

    def logits(anchors, objectness, deltas, image_size, pre=6000, post=300, t=0.7):
        boxes, scores = sol("filter_proposals")(anchors, objectness, deltas, image_size, pre, post, t)
        return boxes, torch.logit(scores)
    with pytest.raises(ExerciseFailed, match="probabilities"):
        ch05.check_filter_proposals(logits)
