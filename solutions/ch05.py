"""Reference solutions of chapter 5's exercises (notebooks/05_faster_rcnn.ipynb)."""
import torch

from course_lib.ops import BoxCoder, box_iou, clip_boxes_to_image, nms, remove_small_boxes


def label_anchors(anchors, gt_boxes, fg_iou_thresh=0.7, bg_iou_thresh=0.3):
    labels = torch.full((len(anchors),), -1, dtype=torch.int64)
    if len(gt_boxes) == 0:
        return labels.fill_(0)
    iou = box_iou(gt_boxes, anchors)  # [G, A]
    best = iou.max(0).values
    labels[best < bg_iou_thresh] = 0
    labels[best >= fg_iou_thresh] = 1
    labels[(iou == iou.max(1, keepdim=True).values).any(0)] = 1  # every object's best anchor(s)
    return labels


def filter_proposals(anchors, objectness, deltas, image_size, pre_nms_top_n=6000, post_nms_top_n=300, nms_thresh=0.7):
    boxes = BoxCoder((1.0, 1.0, 1.0, 1.0)).decode_single(deltas, anchors)
    top = objectness.topk(min(pre_nms_top_n, len(objectness))).indices
    boxes, scores = clip_boxes_to_image(boxes[top], image_size), torch.sigmoid(objectness[top])
    keep = remove_small_boxes(boxes, 1e-3)
    boxes, scores = boxes[keep], scores[keep]
    keep = nms(boxes, scores, nms_thresh)[:post_nms_top_n]
    return boxes[keep], scores[keep]
