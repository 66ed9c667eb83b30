"""The two-stage detector as a composition of small modules (torchvision's ``GeneralizedRCNN``):

    images, targets
      -> transform   normalise, resize, pad-batch                 (transform.py)
      -> backbone    feature maps (C4, or an FPN pyramid P2..P6)   (backbones/, fpn.py)
      -> rpn         proposals (+ RPN losses)                      (rpn.py)
      -> roi_heads   classes and refined boxes (+ Fast R-CNN losses) (roi_heads.py)
      -> transform.postprocess   boxes back to the original image sizes

:class:`FasterRCNN` fills in the standard pieces with torchvision's keyword names and defaults
(those of ``fasterrcnn_resnet50_fpn``: 5 anchor levels, 7x7 RoIAlign on 4 levels, a two-layer MLP
head); ``faster_rcnn_c4.py`` passes the original single-feature-map configuration instead.

The contract is torchvision's, so detections feed pycocotools directly:

* ``model.train(); losses = model(images, targets)`` -> ``{"loss_objectness", "loss_rpn_box_reg",
  "loss_classifier", "loss_box_reg"}``;
* ``model.eval(); detections = model(images)`` -> one ``{"boxes" [D, 4] float (x1, y1, x2, y2) in the
  original image's pixels, "labels" [D] int64, "scores" [D] float}`` per image, best first.

``images``: a list of [3, H, W] (or grayscale [1, H, W]) tensors, float in [0, 1] or uint8.
``targets``: a list of ``{"boxes": [N, 4] float (x1, y1, x2, y2), "labels": [N] int64 in 1..K}``.
An image without objects has ``boxes`` of shape [0, 4] (an empty [0] tensor is accepted too) and
trains as pure background. A box without positive width and height is an error (it has no area
to learn from): the message names the image and the box, so the dataset can be fixed -- the one
rule of every detector, ``transform.check_targets``.
"""
from __future__ import annotations

from collections import OrderedDict

import torch
from torch import Tensor, nn

from course_lib.ops import AnchorGenerator, ImageList, MultiScaleRoIAlign

from .fpn import FPN_ROI_LEVELS, fpn_anchor_generator
from .roi_heads import FastRCNNPredictor, RoIHeads, TwoMLPHead
from .rpn import RegionProposalNetwork, RPNHead
from .transform import GeneralizedRCNNTransform, check_targets, resize_boxes

__all__ = ["GeneralizedRCNN", "FasterRCNN", "detection_loss"]


class GeneralizedRCNN(nn.Module):
    """transform -> backbone -> rpn -> roi_heads -> postprocess (see the module docstring).

    ``forward`` is the five stages below, called in order; a training step that needs what happens
    in between (EFPN's distillation reads the student's features and the resized targets) calls them
    itself::

        image_list, targets, original_sizes = model.prepare(images, targets)
        features = model.features(image_list)                      # {"0": ..., ...}
        proposals, rpn_losses = model.proposals(image_list, features, targets)
        detections, head_losses = model.detect(features, proposals, image_list, targets)
        detections = model.postprocess(detections, image_list, original_sizes)   # inference only
    """

    def __init__(self, backbone: nn.Module, rpn: nn.Module, roi_heads: nn.Module, transform: nn.Module):
        super().__init__()
        self.transform = transform
        self.backbone = backbone
        self.rpn = rpn
        self.roi_heads = roi_heads

    def prepare(self, images: list[Tensor], targets: list[dict[str, Tensor]] | None = None
                ) -> tuple[ImageList, list[dict[str, Tensor]] | None, list[tuple[int, int]]]:
        """Check the inputs, then normalise, resize and pad-batch them (``self.transform``).

        Returns ``(image_list, targets, original_sizes)``: the batch as an :class:`ImageList` (padded
        tensor + each image's resized size), copies of the targets with boxes in the resized images'
        pixels (``None`` stays ``None``), and each input image's ``(H, W)`` for :meth:`postprocess`.
        """
        if self.training and targets is None:
            raise ValueError("In training mode the model needs targets (call model.eval() for inference).")
        if isinstance(images, Tensor) and images.dim() == 3:
            raise TypeError("images must be a list of [C, H, W] tensors; wrap a single image as [image].")
        if targets is not None:
            targets = check_targets(targets)
        original_sizes = [(int(img.shape[-2]), int(img.shape[-1])) for img in images]
        image_list, targets = self.transform(images, targets)
        return image_list, targets, original_sizes

    def features(self, image_list: ImageList) -> OrderedDict[str, Tensor]:
        """The backbone's feature maps of the batch, by name; a single map (e.g. C4) is named ``"0"``."""
        features = self.backbone(image_list.tensors)
        if isinstance(features, Tensor):
            features = OrderedDict([("0", features)])
        return features

    def proposals(self, image_list: ImageList, features: dict[str, Tensor],
                  targets: list[dict[str, Tensor]] | None = None) -> tuple[list[Tensor], dict[str, Tensor]]:
        """The RPN: one ``[P, 4]`` tensor of proposals per image (resized image's pixels), and in
        training its losses ``{"loss_objectness", "loss_rpn_box_reg"}`` (``{}`` in inference)."""
        return self.rpn(image_list, features, targets)

    def detect(self, features: dict[str, Tensor], proposals: list[Tensor], image_list: ImageList,
               targets: list[dict[str, Tensor]] | None = None) -> tuple[list[dict[str, Tensor]], dict[str, Tensor]]:
        """The RoI heads: in training ``([], {"loss_classifier", "loss_box_reg"})``; in inference
        ``([{"boxes", "labels", "scores"} per image], {})`` with boxes in the resized images' pixels."""
        return self.roi_heads(features, proposals, image_list.image_sizes, targets)

    def postprocess(self, detections: list[dict[str, Tensor]], image_list: ImageList,
                    original_sizes: list[tuple[int, int]]) -> list[dict[str, Tensor]]:
        """Detections' boxes mapped back to each input image's own pixels (a no-op in training)."""
        return self.transform.postprocess(detections, image_list.image_sizes, original_sizes)

    def forward(self, images: list[Tensor], targets: list[dict[str, Tensor]] | None = None
                ) -> dict[str, Tensor] | list[dict[str, Tensor]]:
        image_list, targets, original_sizes = self.prepare(images, targets)
        features = self.features(image_list)
        proposals, proposal_losses = self.proposals(image_list, features, targets)
        detections, detector_losses = self.detect(features, proposals, image_list, targets)
        detections = self.postprocess(detections, image_list, original_sizes)
        if self.training:
            return {**detector_losses, **proposal_losses}
        return detections

    @torch.no_grad()
    def propose(self, images: list[Tensor]) -> list[Tensor]:
        """Inference up to the RPN: each image's proposals, best first, in that image's own pixels
        (what :func:`course_lib.evaluation.proposal_recall` takes). Call it in eval mode."""
        if self.training:
            raise RuntimeError("propose() gives the inference proposals: call model.eval() first.")
        image_list, _, original_sizes = self.prepare(images)
        proposals, _ = self.proposals(image_list, self.features(image_list))
        return [resize_boxes(p, resized, original)
                for p, resized, original in zip(proposals, image_list.image_sizes, original_sizes)]

    @torch.no_grad()
    def detect_from(self, images: list[Tensor], proposals: list[Tensor]) -> list[dict[str, Tensor]]:
        """Inference with the given proposals in place of the RPN's: ``proposals`` one ``[P, 4]`` tensor per image, in
        that image's own pixels (as :meth:`propose` returns them, or selective search's), through the RoI heads.
        Chapter 5 runs the same trained head on two proposal sources with it. Call it in eval mode."""
        if self.training:
            raise RuntimeError("detect_from() runs inference on given proposals: call model.eval() first.")
        if len(proposals) != len(images):
            raise ValueError(f"{len(images)} images but {len(proposals)} proposal tensors: give one [P, 4] tensor "
                             "of boxes (x1, y1, x2, y2 in the image's own pixels) per image.")
        image_list, _, original_sizes = self.prepare(images)
        features = self.features(image_list)
        device = image_list.tensors.device
        resized = [resize_boxes(p.to(device=device, dtype=torch.float32).reshape(-1, 4), original, size)
                   for p, original, size in zip(proposals, original_sizes, image_list.image_sizes)]
        detections, _ = self.detect(features, resized, image_list)
        return self.postprocess(detections, image_list, original_sizes)

    def proposal_budget(self, image_size: tuple[int, int]) -> dict[str, int]:
        """The RPN's proposal counts per image of ``image_size`` (H, W before the transform resizes it): the boxes that
        enter NMS and the most that leave it, in training and at test time -- what a fair comparison of two detectors
        holds equal (``pre_nms_top_n`` is per map: see ``RegionProposalNetwork.boxes_into_nms``)."""
        was_training = self.training
        device = next(self.parameters()).device
        try:
            image_list, _, _ = self.eval().prepare([torch.zeros(3, *image_size, device=device)])
            maps = self.rpn.select_features(self.features(image_list))
        finally:
            self.train(was_training)
        anchors = [a * m.shape[-2] * m.shape[-1]
                   for a, m in zip(self.rpn.anchor_generator.num_anchors_per_location(), maps)]
        return {f"{when} NMS, {mode}": (self.rpn.boxes_into_nms(anchors, mode) if when == "into"
                                        else self.rpn.post_nms_top_n(mode))
                for mode in ("training", "testing") for when in ("into", "out of")}


def detection_loss(model: nn.Module, batch: tuple) -> dict[str, Tensor]:
    """The ``loss_fn`` of :func:`course_lib.engine.fit` for every detector of the course: the model's
    dict of losses on one batch (``fit`` sums them and logs each term).

    ``batch`` is the tuple of the model's inputs, as ``collate_fn`` makes it: ``(images, targets)``
    for Faster R-CNN (``detection_collate``), ``(images, proposals, targets)`` for R-CNN and Fast
    R-CNN, which take region proposals with each image.
    """
    if not model.training:
        raise RuntimeError("detection_loss needs the model in training mode (fit calls model.train()).")
    return model(*batch)


class FasterRCNN(GeneralizedRCNN):
    """Faster R-CNN (Ren et al., NeurIPS 2015) = RPN + Fast R-CNN sharing one backbone.

    Keyword names and defaults are torchvision's ``FasterRCNN`` (the defaults are those of its
    ResNet-50-FPN model): ``backbone`` must have an ``out_channels`` attribute and return a tensor
    or an ordered dict of feature maps; ``num_classes`` counts the background. Pass ``box_predictor``
    instead of ``num_classes`` for a custom predictor. Every piece can be replaced:
    ``rpn_anchor_generator``, ``rpn_head``, ``box_roi_pool``, ``box_head``, ``box_predictor``, and the two
    stages whole: ``rpn=`` (a :class:`RegionProposalNetwork` or anything with its call) and ``roi_heads=``
    (e.g. a :class:`RoIHeads` subclass overriding ``predict``: R-FCN, EFPN, a new head); the keywords of
    a stage given whole must then be left out (``num_classes`` is not needed with ``roi_heads``).

    RPN: ``rpn_pre_nms_top_n_{train,test}`` boxes kept per level before NMS, ``rpn_post_nms_top_n_*``
    per image after it; ``rpn_nms_thresh``; anchors labelled with ``rpn_fg_iou_thresh`` /
    ``rpn_bg_iou_thresh``; ``rpn_batch_size_per_image`` x ``rpn_positive_fraction`` sampled;
    ``rpn_featmap_names``: the maps it runs on (None: all; R-FCN: ``["c4"]``).
    RoI heads: ``box_fg_iou_thresh`` / ``box_bg_iou_thresh``, ``box_batch_size_per_image`` x
    ``box_positive_fraction``; inference keeps scores > ``box_score_thresh``, NMS at
    ``box_nms_thresh``, at most ``box_detections_per_img``.
    """

    def __init__(self, backbone: nn.Module, num_classes: int | None = None,
                 # transform
                 min_size: int | tuple[int, ...] = 800, max_size: int = 1333,
                 image_mean: list[float] | None = None, image_std: list[float] | None = None,
                 # RPN
                 rpn_anchor_generator: AnchorGenerator | None = None, rpn_head: nn.Module | None = None,
                 rpn_pre_nms_top_n_train: int = 2000, rpn_pre_nms_top_n_test: int = 1000,
                 rpn_post_nms_top_n_train: int = 2000, rpn_post_nms_top_n_test: int = 1000,
                 rpn_nms_thresh: float = 0.7, rpn_fg_iou_thresh: float = 0.7, rpn_bg_iou_thresh: float = 0.3,
                 rpn_batch_size_per_image: int = 256, rpn_positive_fraction: float = 0.5,
                 rpn_score_thresh: float = 0.0, rpn_featmap_names: list[str] | None = None,
                 # box (Fast R-CNN) head
                 box_roi_pool: nn.Module | None = None, box_head: nn.Module | None = None,
                 box_predictor: nn.Module | None = None, box_score_thresh: float = 0.05,
                 box_nms_thresh: float = 0.5, box_detections_per_img: int = 100,
                 box_fg_iou_thresh: float = 0.5, box_bg_iou_thresh: float = 0.5,
                 box_batch_size_per_image: int = 512, box_positive_fraction: float = 0.25,
                 bbox_reg_weights: tuple[float, float, float, float] | None = None,
                 size_divisible: int = 32,
                 # the two stages, whole
                 rpn: nn.Module | None = None, roi_heads: nn.Module | None = None):
        if not hasattr(backbone, "out_channels"):
            raise ValueError("The backbone needs an attribute out_channels (the channels of its feature maps, "
                             "the same for all levels), e.g. backbone.out_channels = 256.")
        for stage, given, pieces in (("rpn", rpn, dict(rpn_anchor_generator=rpn_anchor_generator, rpn_head=rpn_head)),
                                     ("roi_heads", roi_heads, dict(box_roi_pool=box_roi_pool, box_head=box_head,
                                                                   box_predictor=box_predictor))):
            extra = [name for name, piece in pieces.items() if piece is not None]
            if given is not None and extra:
                raise ValueError(f"Pass {stage}= or its pieces {extra}, not both.")
        if roi_heads is None and (num_classes is None) == (box_predictor is None):
            raise ValueError("Pass exactly one of num_classes (then a FastRCNNPredictor is built) and box_predictor; "
                             f"got num_classes={num_classes} and box_predictor={type(box_predictor).__name__}.")
        if num_classes is not None and num_classes < 2:
            raise ValueError(f"num_classes counts the background too, so it must be >= 2, got {num_classes}.")
        out_channels = backbone.out_channels

        if rpn is None:
            if rpn_anchor_generator is None:
                rpn_anchor_generator = fpn_anchor_generator()
            if rpn_head is None:
                rpn_head = RPNHead(out_channels, rpn_anchor_generator.num_anchors_per_location()[0])
            rpn = RegionProposalNetwork(
                rpn_anchor_generator, rpn_head, rpn_fg_iou_thresh, rpn_bg_iou_thresh,
                rpn_batch_size_per_image, rpn_positive_fraction,
                dict(training=rpn_pre_nms_top_n_train, testing=rpn_pre_nms_top_n_test),
                dict(training=rpn_post_nms_top_n_train, testing=rpn_post_nms_top_n_test),
                rpn_nms_thresh, score_thresh=rpn_score_thresh, featmap_names=rpn_featmap_names)

        if roi_heads is None:
            if box_roi_pool is None:
                box_roi_pool = MultiScaleRoIAlign(featmap_names=FPN_ROI_LEVELS, output_size=7, sampling_ratio=2)
            if box_head is None:
                resolution = box_roi_pool.output_size[0]
                box_head = TwoMLPHead(out_channels * resolution ** 2, 1024)
            if box_predictor is None:
                box_predictor = FastRCNNPredictor(1024, num_classes)
            roi_heads = RoIHeads(
                box_roi_pool, box_head, box_predictor, box_fg_iou_thresh, box_bg_iou_thresh,
                box_batch_size_per_image, box_positive_fraction, bbox_reg_weights,
                box_score_thresh, box_nms_thresh, box_detections_per_img)

        transform = GeneralizedRCNNTransform(min_size, max_size, image_mean, image_std, size_divisible=size_divisible)
        super().__init__(backbone, rpn, roi_heads, transform)
