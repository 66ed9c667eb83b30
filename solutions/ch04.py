"""Reference solutions of chapter 4's exercises (notebooks/04_rcnn_fast_rcnn.ipynb)."""
import torch
import torch.nn.functional as F

from course_lib.ops import box_iou


def _round_half_away(x):
    return torch.sign(x) * torch.floor(x.abs() + 0.5)


def roi_max_pool(features, rois, output_size, spatial_scale):
    n, c, h, w = features.shape
    k = output_size
    if len(rois) == 0:
        return features.new_zeros(0, c, k, k)
    start = _round_half_away(rois[:, 1:3] * spatial_scale)  # (x1, y1) in cells
    end = _round_half_away(rois[:, 3:5] * spatial_scale)
    size = (end - start + 1).clamp(min=1)  # (width, height) in cells
    i = torch.arange(k, dtype=features.dtype)
    lo = torch.floor(i[None, :, None] * size[:, None, :] / k) + start[:, None, :]  # [R, k, 2]: bins' first cell
    hi = torch.ceil((i[None, :, None] + 1) * size[:, None, :] / k) + start[:, None, :]
    lo = lo.clamp(0, None).minimum(torch.tensor([w, h], dtype=lo.dtype))
    hi = hi.clamp(0, None).minimum(torch.tensor([w, h], dtype=hi.dtype))
    xs, ys = torch.arange(w, dtype=lo.dtype), torch.arange(h, dtype=lo.dtype)
    in_x = (xs >= lo[:, :, None, 0]) & (xs < hi[:, :, None, 0])  # [R, k, W]
    in_y = (ys >= lo[:, :, None, 1]) & (ys < hi[:, :, None, 1])  # [R, k, H]
    x = features[rois[:, 0].long()]  # [R, C, H, W]
    # the max over a rectangle is the max over its rows of the max over its columns
    cols = x[:, :, :, None, :].masked_fill(~in_x[:, None, None, :, :], float("-inf")).amax(-1)  # [R, C, H, k]
    out = cols[:, :, None, :, :].masked_fill(~in_y[:, None, :, :, None], float("-inf")).amax(3)  # [R, C, k, k]
    return out.masked_fill(torch.isinf(out), 0.0)


def sample_rois(proposals, gt_boxes, gt_labels, num_samples=64, positive_fraction=0.25, fg_iou_thresh=0.5,
                bg_iou_thresh=(0.1, 0.5)):
    rois = torch.cat([proposals.reshape(-1, 4), gt_boxes.reshape(-1, 4)])
    if len(gt_boxes):
        iou, best = box_iou(rois, gt_boxes).max(1)
        labels = gt_labels[best].long()
        lo = bg_iou_thresh[0]
    else:
        iou, labels, lo = rois.new_zeros(len(rois)), torch.zeros(len(rois), dtype=torch.long), 0.0
    fg = torch.where(iou >= fg_iou_thresh)[0]
    bg = torch.where((iou >= lo) & (iou < bg_iou_thresh[1]))[0]
    fg = fg[torch.randperm(len(fg))[: min(int(round(positive_fraction * num_samples)), len(fg))]]
    bg = bg[torch.randperm(len(bg))[: min(num_samples - len(fg), len(bg))]]
    keep = torch.cat([fg, bg])
    out_labels = labels[keep].clone()
    out_labels[len(fg):] = 0
    return rois[keep], out_labels


def multitask_loss(class_logits, box_regression, labels, regression_targets, lam=1.0):
    if labels.numel() == 0:
        return class_logits.sum() * 0.0 + box_regression.sum() * 0.0
    loss_cls = F.cross_entropy(class_logits, labels)
    fg = torch.where(labels > 0)[0]
    t = box_regression.reshape(len(labels), -1, 4)[fg, labels[fg]] - regression_targets[fg]
    smooth = torch.where(t.abs() < 1, 0.5 * t ** 2, t.abs() - 0.5)
    return loss_cls + lam * smooth.sum() / labels.numel()
