"""R-CNN (Girshick, Donahue, Darrell and Malik, "Rich feature hierarchies for accurate object
detection and semantic segmentation", CVPR 2014): regions with CNN features.

    image -> ~2000 class-agnostic proposals (selective search)
          -> each proposal dilated by 16 px of context and warped to 224 x 224 (appendix A)
          -> a CNN, once per proposal -> a feature vector (fc7, 4096-d)
          -> one linear classifier per class (SVMs, section 2.3) and a class-specific
             ridge regressor of the box offsets (appendix C)
          -> per-class non-maximum suppression

The CNN runs once per *proposal*: that is what makes R-CNN slow (the lecture quotes ~47 s
per image) and what Fast R-CNN removes. Training has three stages (section 2.3):

1. fine-tune the CNN as a (K+1)-way classifier of warped proposals: mini-batches of 128
   windows, 32 foreground (IoU >= 0.5 with a ground-truth box) and 96 background
   (``RCNN.forward`` in training mode returns this loss, for ``course_lib.engine.fit``);
2. train one linear classifier per class on the frozen features: positives are the
   ground-truth boxes, negatives the proposals with IoU < 0.3 with every box of the class;
3. fit the class-specific box regressors by ridge regression (lambda = 1000) on the
   proposals with IoU > 0.6 with a ground-truth box.

(2) and (3) are :meth:`RCNN.fit_detectors`. This module also holds what every later detector
reuses from R-CNN: the per-class NMS post-processing (:func:`postprocess_detections`, called by
the one second stage, ``roi_heads.RoIHeads``).
"""
from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from ..backbones.vgg import VGG16
from ..backbones.weights import WeightsEnum
from ..ops import BoxCoder, batched_nms, box_iou, clip_boxes_to_image, remove_small_boxes, roi_align
from .transform import IMAGENET_MEAN, IMAGENET_STD, as_float_rgb, check_targets

__all__ = [
    "clean_proposals",
    "context_boxes",
    "warp_regions",
    "sample_rois",
    "postprocess_detections",
    "svm_labels",
    "train_linear_classifiers",
    "ridge_regression",
    "VGG16Features",
    "RCNN",
    "rcnn_vgg16",
]

# ----------------------------------------------------------------------------------
# Inputs: proposals, cleaned (images and targets: transform.as_float_rgb and check_targets)
# ----------------------------------------------------------------------------------
def clean_proposals(proposals: Tensor, image_size: tuple[int, int]) -> Tensor:
    """Proposals (N x 4) clipped to the image, without the ones of zero width or height."""
    proposals = torch.as_tensor(proposals).as_subclass(Tensor).float()
    if proposals.numel() == 0:
        return proposals.reshape(0, 4)
    if proposals.dim() != 2 or proposals.shape[1] != 4:
        raise ValueError(f"Proposals must be an N x 4 tensor (x1, y1, x2, y2), got shape {tuple(proposals.shape)}.")
    proposals = clip_boxes_to_image(proposals, image_size)
    return proposals[remove_small_boxes(proposals, 1e-3)]


# ----------------------------------------------------------------------------------
# Appendix A: warping a region with context
# ----------------------------------------------------------------------------------
def context_boxes(boxes: Tensor, size: int = 224, context: int = 16) -> Tensor:
    """Dilate ``boxes`` so that once the dilated box is warped to ``size x size`` the original
    box covers the central ``size - 2 * context`` pixels: exactly ``context`` pixels of
    image context on every side (R-CNN appendix A, "warp with context padding", p = 16)."""
    inner = size - 2 * context
    if inner <= 0:
        raise ValueError(f"context={context} leaves no room for the box in a {size} x {size} warp.")
    w = boxes[:, 2] - boxes[:, 0]
    h = boxes[:, 3] - boxes[:, 1]
    pad = torch.stack([w, h, w, h], 1) * (context / inner)
    return boxes + pad * torch.tensor([-1.0, -1.0, 1.0, 1.0], device=boxes.device)


def warp_regions(image: Tensor, boxes: Tensor, size: int = 224, context: int = 16) -> Tensor:
    """Crop every box with ``context`` pixels of context and warp it anisotropically to
    ``size x size`` (R-CNN section 2.1 and appendix A). ``image``: a normalised CxHxW
    float image; returns (N, C, size, size).

    The warp is bilinear sampling at the centre of each output pixel (``roi_align`` with one
    sample per bin and pixel-centre alignment), i.e. a crop-and-resize. Beyond the image
    border the samples are 0, which in a mean-subtracted image is the image mean, as in
    the paper ("the missing data is replaced with the image mean").
    """
    if len(boxes) == 0:
        return image.new_zeros((0, image.shape[0], size, size))
    return roi_align(image[None], [context_boxes(boxes.to(image.dtype), size, context)],
                     output_size=size, spatial_scale=1.0, sampling_ratio=1, aligned=True)


# ----------------------------------------------------------------------------------
# Section 2.3: sampling foreground and background regions
# ----------------------------------------------------------------------------------
def sample_rois(
    proposals: Tensor,
    gt_boxes: Tensor,
    gt_labels: Tensor,
    num_samples: int = 128,
    positive_fraction: float = 0.25,
    fg_iou_thresh: float = 0.5,
    bg_iou_thresh: tuple[float, float] = (0.0, 0.5),
    add_gt_boxes: bool = True,
) -> tuple[Tensor, Tensor, Tensor]:
    """Sample the regions of one image for a training mini-batch.

    Foreground: max IoU with a ground-truth box >= ``fg_iou_thresh``, labelled with that
    box's class; at most ``round(positive_fraction * num_samples)`` of them. Background:
    max IoU in ``[bg_iou_thresh[0], bg_iou_thresh[1])``, label 0, filling the rest. Both
    are drawn uniformly without replacement (``torch.randperm``; seed with
    ``torch.manual_seed``). When there are too few, fewer regions are returned.

    R-CNN fine-tuning: 128 windows, 32 foreground, background below 0.5. Fast R-CNN
    (section 2.3): 64 RoIs per image, 25% foreground, background in [0.1, 0.5) ("a
    heuristic for hard example mining"). The ground-truth boxes join the proposals, as in
    the authors' code. An image without objects has only background, and then all its
    proposals qualify (there is no object for the lower threshold to be measured against).

    Returns ``(rois (S, 4), labels (S,), matched_gt_boxes (S, 4))``, foreground first;
    the matched box of a background RoI is its closest ground truth, or the RoI itself.
    """
    proposals = proposals.reshape(-1, 4).float()
    gt_boxes = gt_boxes.reshape(-1, 4).to(proposals)
    if add_gt_boxes:
        proposals = torch.cat([proposals, gt_boxes])
    if len(gt_boxes) == 0:
        max_iou = proposals.new_zeros(len(proposals))
        matched = proposals
        labels = torch.zeros(len(proposals), dtype=torch.int64, device=proposals.device)
        bg_lo = 0.0
    else:
        max_iou, index = box_iou(proposals, gt_boxes).max(1)
        matched = gt_boxes[index]
        labels = gt_labels.to(proposals.device, torch.int64)[index]
        bg_lo = bg_iou_thresh[0]
    fg = torch.where(max_iou >= fg_iou_thresh)[0]
    bg = torch.where((max_iou < bg_iou_thresh[1]) & (max_iou >= bg_lo))[0]
    num_fg = min(int(round(positive_fraction * num_samples)), len(fg))
    fg = fg[torch.randperm(len(fg), device=fg.device)[:num_fg]]
    num_bg = min(num_samples - num_fg, len(bg))
    bg = bg[torch.randperm(len(bg), device=bg.device)[:num_bg]]
    keep = torch.cat([fg, bg])
    labels = labels[keep].clone()
    labels[num_fg:] = 0
    return proposals[keep], labels, matched[keep]


# ----------------------------------------------------------------------------------
# Test time: class-specific boxes, score threshold, per-class NMS
# ----------------------------------------------------------------------------------
def postprocess_detections(
    scores: Tensor,
    boxes: Tensor,
    image_size: tuple[int, int],
    score_thresh: float = 0.05,
    nms_thresh: float = 0.3,
    detections_per_img: int = 100,
) -> dict[str, Tensor]:
    """Detections of one image from ``scores`` (N, K) and class-specific ``boxes`` (N, K, 4)
    of the K object classes (background excluded; class k has label k + 1).

    Every (region, class) pair is a candidate: boxes are clipped to the image, pairs scoring
    at most ``score_thresh`` and empty boxes dropped, then NMS runs per class (R-CNN section
    2.2: "greedy non-maximum suppression (for each class independently)"; the authors'
    code for both papers uses IoU 0.3) and the ``detections_per_img`` best are kept. The
    same steps, in the same order, as ``torchvision``'s ``RoIHeads.postprocess_detections``.
    """
    num_classes = scores.shape[1]
    boxes = clip_boxes_to_image(boxes.reshape(-1, 4), image_size)
    labels = torch.arange(1, num_classes + 1, device=scores.device).repeat(scores.shape[0])
    scores = scores.reshape(-1)
    keep = torch.where(scores > score_thresh)[0]
    boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
    keep = remove_small_boxes(boxes, min_size=1e-2)
    boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
    keep = batched_nms(boxes, scores, labels, nms_thresh)[:detections_per_img]
    return {"boxes": boxes[keep], "scores": scores[keep], "labels": labels[keep]}


# ----------------------------------------------------------------------------------
# Section 2.3 and appendix C: the linear classifiers and box regressors
# ----------------------------------------------------------------------------------
def svm_labels(proposals: Tensor, gt_boxes: Tensor, gt_labels: Tensor, num_object_classes: int,
               neg_iou_thresh: float = 0.3) -> Tensor:
    """Per-class training labels of the regions ``cat([gt_boxes, proposals])`` (R-CNN section
    2.3): (G + N, K) with +1 for the ground-truth boxes of class k, -1 for regions whose IoU
    with every box of class k is below ``neg_iou_thresh`` (0.3, chosen by grid search in the
    paper) and 0 (ignored) for the rest: proposals that overlap a box of the class too much
    to be negatives are not positives either."""
    boxes = torch.cat([gt_boxes, proposals]).float()
    if len(gt_boxes) == 0:
        return torch.full((len(boxes), num_object_classes), -1, dtype=torch.int64, device=boxes.device)
    onehot = F.one_hot(gt_labels.long() - 1, num_object_classes).to(boxes.dtype)  # (G, K)
    iou_per_class = (box_iou(boxes, gt_boxes.float())[:, :, None] * onehot[None]).amax(1)  # (G + N, K)
    y = torch.where(iou_per_class < neg_iou_thresh, -1, 0)
    y[torch.arange(len(gt_boxes)), gt_labels.long() - 1] = 1
    return y


def train_linear_classifiers(
    features: Tensor,
    labels: Tensor,
    loss: str = "hinge",
    C: float = 1e-3,
    positive_weight: float = 2.0,
    bias_mult: float = 10.0,
    max_epochs: int = 100,
    tol: float = 1e-2,
    seed: int = 0,
) -> tuple[Tensor, Tensor]:
    """One linear classifier per class (R-CNN section 2.3), all classes solved together:

        min_w  1/2 |w_k|^2 + C * sum_i c_i * loss(y_ik w_k . [x_i, bias_mult])

    over the labelled regions (``labels`` (N, K) in {-1, 0, +1}; 0 is ignored), with
    ``c_i = positive_weight`` for positives. The authors' liblinear settings: C = 0.001,
    positive weight 2, a bias feature of 10 (regularised like the weights, as liblinear does).

    ``loss="hinge"``, max(0, 1 - m), the paper's linear SVMs, solved like liblinear's
    ``-s 3`` (which the authors used): dual coordinate descent (Hsieh et al., ICML 2008) on
    ``max_a sum a - 1/2 |sum_i a_i y_i x_i|^2, 0 <= a_i <= C c_i``. Each step solves exactly
    for one region's ``a_i`` given all the others, so the loop over regions is sequential by
    nature; it is vectorised over the K classes and stops once the duality gap is below
    ``tol`` times the objective (1%: the objective is then within 1% of its minimum,
    tighter than liblinear's default stopping rule), typically after tens of epochs.
    ``loss="logistic"``, log(1 + exp(-m)): full-batch L-BFGS.
    Training on all regions at once is what the paper's hard-negative mining converges to
    when the negatives fit in memory. Returns ``(weight (K, D), bias (K,))``.
    """
    if loss not in ("hinge", "logistic"):
        raise ValueError(f"loss={loss!r}: choose 'hinge' (SVM) or 'logistic'.")
    num_classes = labels.shape[1]
    if len(features) == 0 or not (labels != 0).any():
        return features.new_zeros(num_classes, features.shape[1]), features.new_zeros(num_classes)
    x = torch.cat([features.detach().double().cpu(), torch.full((len(features), 1), float(bias_mult), dtype=torch.float64)], 1)
    y = labels.double().cpu()
    upper = C * torch.where(labels.cpu() > 0, positive_weight, 1.0).double() * (labels.cpu() != 0)  # C c_i; 0: ignored

    if loss == "hinge":
        xn, yn, un = x.numpy(), y.numpy(), upper.numpy()
        sq_norms = (xn ** 2).sum(1)
        alpha = np.zeros_like(yn)
        w = np.zeros((xn.shape[1], num_classes))
        rows = np.where(un.any(1))[0]
        rng = np.random.default_rng(seed)
        for _ in range(max_epochs):
            for i in rng.permutation(rows):
                gradient = yn[i] * (xn[i] @ w) - 1.0  # d(-dual)/d a_i, for every class at once
                new = np.clip(alpha[i] - gradient / sq_norms[i], 0.0, un[i])
                w += np.outer(xn[i], (new - alpha[i]) * yn[i])
                alpha[i] = new
            half_norm = 0.5 * (w ** 2).sum(0)
            primal_value = half_norm + (un * np.maximum(0.0, 1.0 - yn * (xn @ w))).sum(0)
            if np.all(primal_value - (alpha.sum(0) - half_norm) <= tol * primal_value):
                break
        w = torch.from_numpy(w)
    else:
        w = torch.zeros(x.shape[1], num_classes, dtype=x.dtype, requires_grad=True)
        optimizer = torch.optim.LBFGS([w], lr=1, max_iter=500, tolerance_grad=1e-7,
                                      tolerance_change=1e-12, history_size=20, line_search_fn="strong_wolfe")

        def closure():
            optimizer.zero_grad()
            objective = 0.5 * (w ** 2).sum() + (upper * F.softplus(-y * (x @ w))).sum()
            objective.backward()
            return objective

        with torch.enable_grad():
            optimizer.step(closure)
        w = w.detach()
    w = w.T.to(features.dtype).to(features.device)
    return w[:, :-1].contiguous(), w[:, -1] * bias_mult


def ridge_regression(features: Tensor, targets: Tensor, lam: float = 1000.0) -> tuple[Tensor, Tensor]:
    """Regularised least squares (R-CNN appendix C, eq. 5, lambda = 1000):

        w_* = argmin_w  sum_i (t_*^i - w^T phi(P^i))^2 + lambda |w|^2

    solved in closed form, ``w = (X^T X + lambda I)^-1 X^T t`` on centred data (the bias is
    not regularised). ``features`` (N, D), ``targets`` (N, T); returns ``(weight (T, D), bias (T,))``."""
    features, targets = features.double(), targets.double()
    if len(features) == 0:
        return features.new_zeros(targets.shape[1], features.shape[1]).float(), features.new_zeros(targets.shape[1]).float()
    mean_x, mean_t = features.mean(0), targets.mean(0)
    x, t = features - mean_x, targets - mean_t
    gram = x.T @ x + lam * torch.eye(x.shape[1], dtype=x.dtype, device=x.device)
    weight = torch.linalg.solve(gram, x.T @ t).T
    return weight.float(), (mean_t - weight @ mean_x).float()


# ----------------------------------------------------------------------------------
# The model
# ----------------------------------------------------------------------------------
class VGG16Features(nn.Module):
    """A warped region -> VGG16's fc7 vector (4096-d at full width): the CNN of R-CNN.

    ``vgg`` is a :class:`course_lib.backbones.vgg.VGG16` with its fully connected layers;
    sharing it with a Fast R-CNN makes the two detectors run the very same network. As in
    torchvision's ``vgg16``, an adaptive average pool brings pool5 to the 7 x 7 that fc6
    reads: the identity for the paper's 224 x 224 warps, and smaller warps still work."""

    def __init__(self, vgg: VGG16):
        super().__init__()
        if "fc7" not in vgg.out_channels:
            raise ValueError("R-CNN reads fc7: build the VGG16 with fully_connected=True.")
        self.vgg = vgg
        self.pool = nn.AdaptiveAvgPool2d(7)
        self.out_channels = vgg.out_channels["fc7"]

    def forward(self, x: Tensor) -> Tensor:
        x = self.pool(self.vgg.features(x))  # pool5
        x = self.vgg.drop6(self.vgg.relu6(self.vgg.fc6(x)))
        x = self.vgg.drop7(self.vgg.relu7(self.vgg.fc7(x)))
        return x.flatten(1)


class RCNN(nn.Module):
    """R-CNN: a CNN run on every warped proposal, linear classifiers and box regressors.

    Args:
        features: warped regions (N, 3, warp_size, warp_size) -> vectors (N, feature_dim).
        feature_dim: their length.
        num_classes: K + 1, the object classes and the background (torchvision's and
            ``CocoDetection.num_classes``'s convention; labels 1..K, 0 is background).
        warp_size, context: the warp of appendix A (224 and 16 here; the paper's AlexNet used 227).
        chunk_size: regions per CNN forward pass.
        score_thresh, nms_thresh, detections_per_img: post-processing (per-class NMS at 0.3).

    Modules: ``features``; ``finetune_head`` (fc8, K+1 scores, used in fine-tuning only);
    ``classifier`` (the K linear SVMs, on features scaled by ``feature_scale``) and
    ``bbox_regressor`` (4 offsets per class, BoxCoder weights (1, 1, 1, 1)).

    Deviation from the paper: the box regressors read the same fc7 features as the SVMs
    (the paper regresses from pool5), so that one vector per region is stored.
    """

    def __init__(
        self,
        features: nn.Module,
        feature_dim: int,
        num_classes: int,
        *,
        warp_size: int = 224,
        context: int = 16,
        image_mean: Sequence[float] = IMAGENET_MEAN,
        image_std: Sequence[float] = IMAGENET_STD,
        chunk_size: int = 64,
        finetune_batch_size: int = 128,
        finetune_positive_fraction: float = 0.25,
        score_thresh: float = 0.05,
        nms_thresh: float = 0.3,
        detections_per_img: int = 100,
    ):
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"num_classes counts the background too (K + 1): it must be >= 2, got {num_classes}.")
        self.features = features
        self.num_classes = num_classes
        k = num_classes - 1  # object classes: one SVM and one box regressor each
        self.finetune_head = nn.Linear(feature_dim, num_classes)
        self.classifier = nn.Linear(feature_dim, k)
        self.bbox_regressor = nn.Linear(feature_dim, 4 * k)
        for layer in (self.classifier, self.bbox_regressor):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)
        nn.init.normal_(self.finetune_head.weight, std=0.01)
        nn.init.zeros_(self.finetune_head.bias)
        self.register_buffer("feature_scale", torch.tensor(1.0))
        self.register_buffer("image_mean", torch.tensor(image_mean).view(-1, 1, 1))
        self.register_buffer("image_std", torch.tensor(image_std).view(-1, 1, 1))
        self.warp_size, self.context, self.chunk_size = warp_size, context, chunk_size
        self.finetune_batch_size = finetune_batch_size
        self.finetune_positive_fraction = finetune_positive_fraction
        self.score_thresh, self.nms_thresh, self.detections_per_img = score_thresh, nms_thresh, detections_per_img
        self.box_coder = BoxCoder(weights=(1.0, 1.0, 1.0, 1.0))

    def normalize(self, image: Tensor) -> Tensor:
        image = as_float_rgb(image).to(self.image_mean.device)
        return (image - self.image_mean) / self.image_std

    def region_features(self, image: Tensor, boxes: Tensor) -> Tensor:
        """The CNN features (N, feature_dim) of ``boxes`` in a raw image: one forward pass per
        region, in chunks of ``chunk_size`` warped regions."""
        image = self.normalize(image)
        boxes = boxes.to(image.device).float()
        out = [self.features(warp_regions(image, chunk, self.warp_size, self.context))
               for chunk in boxes.split(self.chunk_size)]
        return torch.cat(out) if out else image.new_zeros((0, self.finetune_head.in_features))

    # ------------------------------------------------------------------ stage 1: fine-tuning
    def finetune_loss(self, images: Sequence[Tensor], proposals: Sequence[Tensor], targets: Sequence[dict]) -> dict[str, Tensor]:
        """Cross-entropy of the (K+1)-way classifier on a mini-batch of warped regions drawn
        from ``images``: ``finetune_batch_size`` in all (128 in the paper), 25% foreground."""
        targets = check_targets(targets)
        per_image = max(1, self.finetune_batch_size // max(1, len(images)))
        crops, labels = [], []
        for image, props, target in zip(images, proposals, targets):
            image = self.normalize(image)
            props = clean_proposals(props, image.shape[-2:]).to(image.device)
            rois, lab, _ = sample_rois(props, target["boxes"].to(image.device), target["labels"], per_image,
                                       self.finetune_positive_fraction, 0.5, (0.0, 0.5))
            crops.append(warp_regions(image, rois, self.warp_size, self.context))
            labels.append(lab)
        logits = self.finetune_head(self.features(torch.cat(crops)))
        return {"loss_classifier": F.cross_entropy(logits, torch.cat(labels))}

    # ------------------------------------------------------------------ stages 2 and 3
    @torch.no_grad()
    def fit_detectors(
        self,
        images: Sequence[Tensor],
        proposals: Sequence[Tensor],
        targets: Sequence[dict],
        loss: str = "hinge",
        C: float = 1e-3,
        ridge_lambda: float = 1000.0,
        regression_iou: float = 0.6,
        progress: bool = True,
    ) -> dict[str, float]:
        """Train the linear classifiers (section 2.3) and the box regressors (appendix C) on
        the frozen CNN features of the proposals and ground-truth boxes of ``images``.

        Features are scaled so their mean L2 norm is 20 (the authors' code) before the
        classifiers and regressors see them, which makes C and lambda independent of the
        network's width. Regression pairs: a proposal (or ground-truth box) P and the
        ground truth G it overlaps most, when that IoU exceeds ``regression_iou`` (0.6).
        Returns counts and the training accuracy of the classifiers on labelled regions.
        """
        targets = check_targets(targets)
        was_training = self.training
        self.eval()
        feats, ys, reg_targets, reg_classes = [], [], [], []
        for image, props, target in tqdm(list(zip(images, proposals, targets)), desc="R-CNN features",
                                         disable=not progress, leave=False):
            props = clean_proposals(props, image.shape[-2:])
            gt_boxes, gt_labels = target["boxes"], target["labels"]
            boxes = torch.cat([gt_boxes, props])
            feats.append(self.region_features(image, boxes).cpu())
            ys.append(svm_labels(props, gt_boxes, gt_labels, self.num_classes - 1))
            cls = torch.zeros(len(boxes), dtype=torch.int64)
            t = torch.zeros(len(boxes), 4)
            if len(gt_boxes):
                iou, index = box_iou(boxes, gt_boxes).max(1)
                near = iou > regression_iou
                cls[near] = gt_labels[index[near]]
                t[near] = self.box_coder.encode_single(gt_boxes[index[near]], boxes[near])
            reg_targets.append(t)
            reg_classes.append(cls)
        feats, ys = torch.cat(feats), torch.cat(ys)
        reg_targets, reg_classes = torch.cat(reg_targets), torch.cat(reg_classes)

        device = self.classifier.weight.device
        norm = feats.norm(dim=1).mean() if len(feats) else torch.tensor(0.0)
        self.feature_scale.fill_(20.0 / float(norm) if norm > 0 else 1.0)
        scale = self.feature_scale.cpu()
        weight, bias = train_linear_classifiers(feats * scale, ys, loss=loss, C=C)
        # the feature scale is folded into the layers: w . (s x) + b = (s w) . x + b
        self.classifier.weight.copy_((weight * scale).to(device))
        self.classifier.bias.copy_(bias.to(device))
        for k in range(self.num_classes - 1):  # one ridge regression per object class
            rows = reg_classes == k + 1
            w, b = ridge_regression(feats[rows] * scale, reg_targets[rows], ridge_lambda)
            self.bbox_regressor.weight[4 * k:4 * k + 4] = (w * scale).to(device)
            self.bbox_regressor.bias[4 * k:4 * k + 4] = b.to(device)
        labelled = ys != 0
        scores = feats @ self.classifier.weight.cpu().T + self.classifier.bias.cpu()
        correct = ((scores > 0) == (ys > 0)) & labelled
        self.train(was_training)
        return {
            "regions": len(feats),
            "positives": int((ys > 0).sum()),
            "negatives": int((ys < 0).sum()),
            "regression_pairs": int((reg_classes > 0).sum()),
            "train_accuracy": float(correct.sum() / labelled.sum().clamp(min=1)),
        }

    # ------------------------------------------------------------------ detection
    def forward(self, images: Sequence[Tensor], proposals: Sequence[Tensor], targets: Sequence[dict] | None = None):
        """Training mode: the fine-tuning loss ``{"loss_classifier"}`` (needs ``targets``).
        Evaluation mode: one dict per image with ``boxes`` (x1, y1, x2, y2), ``scores``
        (sigmoid of the SVM margins) and ``labels``."""
        if len(images) != len(proposals):
            raise ValueError(f"Got {len(images)} images but {len(proposals)} proposal sets: one per image.")
        if self.training:
            if targets is None:
                raise ValueError("R-CNN in training mode needs targets; call model.eval() to detect.")
            return self.finetune_loss(images, proposals, targets)
        detections = []
        for image, props in zip(images, proposals):
            size = tuple(image.shape[-2:])
            props = clean_proposals(props, size).to(self.classifier.weight.device)
            feats = self.region_features(image, props)
            scores = torch.sigmoid(self.classifier(feats))
            offsets = self.bbox_regressor(feats)
            boxes = self.box_coder.decode_single(offsets, props).reshape(len(props), self.num_classes - 1, 4)
            detections.append(postprocess_detections(scores, boxes, size, self.score_thresh,
                                                     self.nms_thresh, self.detections_per_img))
        return detections


def rcnn_vgg16(num_classes: int, width: float = 1.0, vgg: nn.Module | None = None, *,
               weights_backbone: str | os.PathLike | WeightsEnum | None = None, **kwargs) -> RCNN:
    """R-CNN with VGG16 (the paper's "O-Net", Table 3) at channel width ``width`` (1.0 = the
    paper; smaller for CPU profiles). ``num_classes`` = K + 1 (background included). Pass
    ``vgg`` to share a network with a Fast R-CNN. ``weights_backbone``: the VGG16's ImageNet weights, as
    ``VGG16.load_torchvision_state_dict`` takes them (``"IMAGENET1K_V1"``: torchvision's, from its cache, verified;
    or a state dict file), the paper's start (width 1.0 only); None: random."""
    vgg = vgg if vgg is not None else VGG16(width=width, fully_connected=True)
    if weights_backbone is not None:
        vgg.load_torchvision_state_dict(weights_backbone)
    features = VGG16Features(vgg)
    return RCNN(features, features.out_channels, num_classes, **kwargs)
