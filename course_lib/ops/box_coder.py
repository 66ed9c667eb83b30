"""The R-CNN box parameterisation: boxes as offsets relative to a reference box.

A detector does not predict box corners directly. It predicts how to move and
stretch a reference box ``P`` (an anchor in the RPN, a proposal in Fast R-CNN)
onto the ground truth ``G`` (R-CNN, Girshick et al. 2014, appendix C;
Faster R-CNN, Ren et al. 2015, eq. 2):

    t_x = (G_x - P_x) / P_w        t_y = (G_y - P_y) / P_h
    t_w = log(G_w / P_w)           t_h = log(G_h / P_h)

with ``(x, y)`` the box centre and ``(w, h)`` its size. The shifts are measured in
units of the reference box's size and the scalings in log space, so the same
target means the same relative correction for a small and a large box.

Two practical details, as in torchvision (and Detectron):

* weights ``(w_x, w_y, w_w, w_h)`` multiply the four targets (``t_x * w_x`` ...).
  They rescale the targets to roughly unit variance: the RPN uses (1, 1, 1, 1),
  the Fast R-CNN box head (10, 10, 5, 5), i.e. the 0.1 / 0.2 target standard
  deviations of the Fast R-CNN code.
* decoding clamps ``t_w, t_h`` at ``bbox_xform_clip = log(1000 / 16)`` before the
  ``exp``: an untrained network can predict any ``t_w``, and ``exp(100)`` would
  overflow; 1000/16 is the largest plausible stretch of a 16-pixel box.

Widths are ``x2 - x1`` (no ``+ 1``). Everything is vectorised over boxes.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["BoxCoder"]


def _check_boxes(boxes: Tensor, fn: str, name: str) -> None:
    if not isinstance(boxes, Tensor) or boxes.dim() != 2 or boxes.shape[1] != 4:
        got = list(boxes.shape) if isinstance(boxes, Tensor) else type(boxes).__name__
        raise ValueError(f"BoxCoder.{fn}: {name} must be a tensor of shape [N, 4] (x1, y1, x2, y2), got {got}")


def _check_list(boxes: Sequence[Tensor], fn: str, name: str) -> None:
    if not isinstance(boxes, (list, tuple)):
        raise TypeError(
            f"BoxCoder.{fn}: {name} must be a list with one [N_i, 4] tensor per image, got "
            f"{type(boxes).__name__} (use {fn}_single for a single tensor)"
        )
    for i, b in enumerate(boxes):
        _check_boxes(b, fn, f"{name}[{i}]")


class BoxCoder:
    """Encode boxes as R-CNN regression targets and decode predictions back into boxes.

    Args:
        weights (tuple of 4 floats): ``(w_x, w_y, w_w, w_h)`` multiplying the targets
            ``(t_x, t_y, t_w, t_h)``; (1, 1, 1, 1) for the RPN, (10, 10, 5, 5) for the
            Fast R-CNN box head.
        bbox_xform_clip (float): largest ``t_w`` / ``t_h`` used when decoding
            (default ``log(1000 / 16)``).

    ``encode`` / ``decode`` take lists with one tensor per image (the form the RPN and
    the RoI heads use); ``encode_single`` / ``decode_single`` work on one tensor.
    """

    def __init__(self, weights: tuple[float, float, float, float], bbox_xform_clip: float = math.log(1000.0 / 16)):
        if len(weights) != 4:
            raise ValueError(f"BoxCoder: weights must be 4 numbers (w_x, w_y, w_w, w_h), got {weights!r}")
        if not all(w > 0 for w in weights):
            raise ValueError(f"BoxCoder: weights must be positive, got {weights!r}")
        self.weights = weights
        self.bbox_xform_clip = bbox_xform_clip

    def __repr__(self) -> str:
        return f"BoxCoder(weights={self.weights}, bbox_xform_clip={self.bbox_xform_clip:.4f})"

    # ------------------------------------------------------------------ encode
    def encode(self, reference_boxes: list[Tensor], proposals: list[Tensor]) -> tuple[Tensor, ...]:
        """Targets for each image: ``reference_boxes[i]`` (the ground truth G matched to
        each proposal) relative to ``proposals[i]`` (P). Returns one ``[N_i, 4]`` per image."""
        _check_list(reference_boxes, "encode", "reference_boxes")
        _check_list(proposals, "encode", "proposals")
        boxes_per_image = [len(b) for b in reference_boxes]
        targets = self.encode_single(torch.cat(reference_boxes, dim=0), torch.cat(proposals, dim=0))
        return targets.split(boxes_per_image, 0)

    def encode_single(self, reference_boxes: Tensor, proposals: Tensor) -> Tensor:
        """Regression targets ``(t_x, t_y, t_w, t_h)`` (times the weights) of the ground-truth
        boxes ``reference_boxes`` (G, ``[N, 4]``) relative to ``proposals`` (P, ``[N, 4]``).

        Faster R-CNN eq. 2 (starred targets): ``t_x = (x* - x_a) / w_a``, ``t_w = log(w* / w_a)``.
        Computed in the dtype of ``reference_boxes``.
        """
        _check_boxes(reference_boxes, "encode_single", "reference_boxes")
        _check_boxes(proposals, "encode_single", "proposals")
        if len(reference_boxes) != len(proposals):
            raise ValueError(
                "BoxCoder.encode_single: reference_boxes and proposals must pair up one to one, got "
                f"{len(reference_boxes)} and {len(proposals)} boxes"
            )
        wx, wy, ww, wh = torch.as_tensor(self.weights, dtype=reference_boxes.dtype, device=reference_boxes.device)

        # P: the proposal (or anchor), as centre and size
        p_w = proposals[:, 2:3] - proposals[:, 0:1]
        p_h = proposals[:, 3:4] - proposals[:, 1:2]
        p_x = proposals[:, 0:1] + 0.5 * p_w
        p_y = proposals[:, 1:2] + 0.5 * p_h
        # G: the ground-truth box it should become
        g_w = reference_boxes[:, 2:3] - reference_boxes[:, 0:1]
        g_h = reference_boxes[:, 3:4] - reference_boxes[:, 1:2]
        g_x = reference_boxes[:, 0:1] + 0.5 * g_w
        g_y = reference_boxes[:, 1:2] + 0.5 * g_h

        t_x = wx * (g_x - p_x) / p_w
        t_y = wy * (g_y - p_y) / p_h
        t_w = ww * torch.log(g_w / p_w)
        t_h = wh * torch.log(g_h / p_h)
        return torch.cat((t_x, t_y, t_w, t_h), dim=1)

    # ------------------------------------------------------------------ decode
    def decode(self, rel_codes: Tensor, boxes: list[Tensor]) -> Tensor:
        """Apply predicted offsets to the reference boxes of all images at once.

        Args:
            rel_codes (Tensor): predictions for the concatenated boxes of all images,
                ``[sum N_i, 4 * K]`` or anything that reshapes to it (the RPN passes
                ``[sum N_i * A, 4]``; the box head ``K`` class-specific boxes per proposal).
            boxes (list[Tensor]): one ``[N_i, 4]`` tensor of reference boxes per image.

        Returns:
            Tensor[sum N_i, K, 4]: decoded boxes (``[0, 4 * K]`` unchanged when there are none).
        """
        _check_list(boxes, "decode", "boxes")
        if not isinstance(rel_codes, Tensor):
            raise TypeError(f"BoxCoder.decode: rel_codes must be a Tensor, got {type(rel_codes).__name__}")
        box_sum = sum(b.shape[0] for b in boxes)
        if box_sum > 0:
            if rel_codes.numel() % (4 * box_sum) != 0:
                raise ValueError(
                    f"BoxCoder.decode: rel_codes {list(rel_codes.shape)} does not hold 4 * K numbers for each "
                    f"of the {box_sum} reference boxes"
                )
            rel_codes = rel_codes.reshape(box_sum, -1)
        pred_boxes = self.decode_single(rel_codes, torch.cat(boxes, dim=0))
        if box_sum > 0:
            pred_boxes = pred_boxes.reshape(box_sum, -1, 4)
        return pred_boxes

    def decode_single(self, rel_codes: Tensor, boxes: Tensor) -> Tensor:
        """Invert the parameterisation (the lecture's inference formulas):

            G_x = P_w t_x + P_x      G_y = P_h t_y + P_y
            G_w = P_w exp(t_w)       G_h = P_h exp(t_h)

        after dividing the codes by the weights and clamping ``t_w, t_h`` at
        ``bbox_xform_clip``.

        Args:
            rel_codes (Tensor[N, 4 * K]): ``K`` sets of ``(t_x, t_y, t_w, t_h)`` per box.
            boxes (Tensor[N, 4]): the reference boxes P (cast to ``rel_codes.dtype``).

        Returns:
            Tensor[N, 4 * K]: decoded "xyxy" boxes (not clipped to the image).
        """
        _check_boxes(boxes, "decode_single", "boxes")
        if rel_codes.dim() != 2 or rel_codes.shape[1] % 4 != 0 or rel_codes.shape[0] != boxes.shape[0]:
            raise ValueError(
                f"BoxCoder.decode_single: rel_codes must have shape [N, 4 * K] with N = {boxes.shape[0]} "
                f"reference boxes, got {list(rel_codes.shape)}"
            )
        boxes = boxes.to(rel_codes.dtype)
        wx, wy, ww, wh = self.weights

        p_w = boxes[:, 2:3] - boxes[:, 0:1]
        p_h = boxes[:, 3:4] - boxes[:, 1:2]
        p_x = boxes[:, 0:1] + 0.5 * p_w
        p_y = boxes[:, 1:2] + 0.5 * p_h

        t_x = rel_codes[:, 0::4] / wx
        t_y = rel_codes[:, 1::4] / wy
        t_w = (rel_codes[:, 2::4] / ww).clamp(max=self.bbox_xform_clip)
        t_h = (rel_codes[:, 3::4] / wh).clamp(max=self.bbox_xform_clip)

        g_x = t_x * p_w + p_x
        g_y = t_y * p_h + p_y
        g_w = torch.exp(t_w) * p_w
        g_h = torch.exp(t_h) * p_h

        # corners: centre -/+ half the size; [N, K, 4] then flattened to [N, 4 * K]
        half_w, half_h = 0.5 * g_w, 0.5 * g_h
        return torch.stack((g_x - half_w, g_y - half_h, g_x + half_w, g_y + half_h), dim=2).flatten(1)
