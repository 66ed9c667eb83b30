"""Training labels for anchors and proposals: who matches which ground truth, and sampling.

Faster R-CNN (Ren et al. 2015, sec. 3.1.2) labels each anchor for the RPN:

* positive if its IoU with some ground-truth box is >= 0.7, or if it is the anchor
  with the highest IoU for some ground-truth box (so that every object gets at
  least one anchor even when no anchor reaches 0.7);
* negative if its IoU is < 0.3 with every ground-truth box;
* ignored otherwise: such anchors do not contribute to the loss.

Fast R-CNN (sec. 2.3) uses the same idea for RoIs (foreground IoU >= 0.5,
background below 0.5). The ``Matcher`` implements the rule for any two thresholds;
the ``BalancedPositiveNegativeSampler`` then draws a mini-batch per image with a
fixed fraction of positives (RPN: 256 anchors, up to 1:1; Fast R-CNN: 512 RoIs, 25%
foreground), because negatives outnumber positives by orders of magnitude.
"""
from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["Matcher", "BalancedPositiveNegativeSampler"]


class Matcher:
    """Assign each prediction (anchor, proposal) to the ground truth it overlaps most, or to none.

    Given the ``[M, N]`` matrix of match qualities (IoUs) between M ground-truth boxes
    and N predictions, returns for each prediction the index ``m`` in ``[0, M - 1]``
    of its ground truth, or a negative value:

    * ``BELOW_LOW_THRESHOLD`` (-1): best quality ``< low_threshold`` -> background;
    * ``BETWEEN_THRESHOLDS`` (-2): ``low_threshold <= quality < high_threshold`` -> ignored.

    With ``allow_low_quality_matches=True`` (the RPN's setting), each ground truth
    additionally claims the prediction(s) with which it has its highest quality,
    ties included, even below ``high_threshold``: Faster R-CNN's condition (i).
    Such a prediction is matched to *its own* best ground truth (which is the
    claiming one unless another ground truth overlaps it even more). Note that a
    ground truth overlapping no prediction at all (best quality 0) claims every
    prediction whose quality with it is 0, i.e. all predictions that do not overlap
    any ground truth; those get index 0 (torchvision and Detectron behave the same).

    Args:
        high_threshold (float): qualities >= this are matches (RPN 0.7, Fast R-CNN 0.5).
        low_threshold (float): qualities < this are background (RPN 0.3, Fast R-CNN 0.5).
        allow_low_quality_matches (bool): add the highest-quality prediction of each ground truth.
    """

    BELOW_LOW_THRESHOLD = -1
    BETWEEN_THRESHOLDS = -2

    def __init__(self, high_threshold: float, low_threshold: float, allow_low_quality_matches: bool = False) -> None:
        if low_threshold > high_threshold:
            raise ValueError(
                f"Matcher: low_threshold ({low_threshold}) must be <= high_threshold ({high_threshold})"
            )
        self.high_threshold = high_threshold
        self.low_threshold = low_threshold
        self.allow_low_quality_matches = allow_low_quality_matches

    def __repr__(self) -> str:
        return (
            f"Matcher(high_threshold={self.high_threshold}, low_threshold={self.low_threshold}, "
            f"allow_low_quality_matches={self.allow_low_quality_matches})"
        )

    def __call__(self, match_quality_matrix: Tensor) -> Tensor:
        """
        Args:
            match_quality_matrix (Tensor[M, N]): quality (IoU) of ground truth m with prediction n.

        Returns:
            Tensor[N] (int64): the matched ground-truth index per prediction, or -1 / -2.
            With no ground truth (M = 0) every prediction is background (-1); torchvision
            raises there instead, and its detectors never call it in that case.
        """
        if not isinstance(match_quality_matrix, Tensor) or match_quality_matrix.dim() != 2:
            got = list(match_quality_matrix.shape) if isinstance(match_quality_matrix, Tensor) else type(match_quality_matrix).__name__
            raise ValueError(
                f"Matcher: match_quality_matrix must be a [M ground truths, N predictions] tensor, got {got}"
            )
        num_gt, num_pred = match_quality_matrix.shape
        if num_gt == 0 or num_pred == 0:
            return torch.full((num_pred,), self.BELOW_LOW_THRESHOLD, dtype=torch.int64, device=match_quality_matrix.device)

        # the best ground truth for every prediction (the first one on ties)
        best_quality, best_gt = match_quality_matrix.max(dim=0)
        matches = best_gt.clone()
        matches[best_quality < self.low_threshold] = self.BELOW_LOW_THRESHOLD
        matches[(best_quality >= self.low_threshold) & (best_quality < self.high_threshold)] = self.BETWEEN_THRESHOLDS

        if self.allow_low_quality_matches:
            # each ground truth's best predictions (all of them on ties) keep their best match
            best_for_each_gt = match_quality_matrix.max(dim=1, keepdim=True).values  # [M, 1]
            claimed = (match_quality_matrix == best_for_each_gt).any(dim=0)  # [N]
            matches = torch.where(claimed, best_gt, matches)
        return matches


class BalancedPositiveNegativeSampler:
    """Draw, per image, a mini-batch with at most ``positive_fraction`` positives.

    Faster R-CNN (sec. 3.1.3) samples 256 anchors per image with up to half positives
    and pads with negatives when there are fewer positives; Fast R-CNN (sec. 2.3)
    samples 128 RoIs per image with 25 % foreground (torchvision: 512).

    The draw uses ``torch.randperm`` on the device of the labels, first over the
    positives then over the negatives of each image in turn, exactly like torchvision,
    so the same torch seed gives the same samples.

    Args:
        batch_size_per_image (int): number of elements sampled per image.
        positive_fraction (float): largest fraction of positives in that sample.
    """

    def __init__(self, batch_size_per_image: int, positive_fraction: float) -> None:
        if batch_size_per_image < 0:
            raise ValueError(f"BalancedPositiveNegativeSampler: batch_size_per_image must be >= 0, got {batch_size_per_image}")
        if not 0.0 <= positive_fraction <= 1.0:
            raise ValueError(
                f"BalancedPositiveNegativeSampler: positive_fraction must be in [0, 1], got {positive_fraction}"
            )
        self.batch_size_per_image = batch_size_per_image
        self.positive_fraction = positive_fraction

    def __repr__(self) -> str:
        return (
            f"BalancedPositiveNegativeSampler(batch_size_per_image={self.batch_size_per_image}, "
            f"positive_fraction={self.positive_fraction})"
        )

    def __call__(self, matched_idxs: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        """
        Args:
            matched_idxs (list[Tensor]): per image, a label per element: ``>= 1`` positive,
                ``0`` negative, ``-1`` ignored (the RPN's and RoI heads' labels).

        Returns:
            (pos_masks, neg_masks): per image, uint8 masks of the sampled positives and negatives.
        """
        if not isinstance(matched_idxs, (list, tuple)):
            raise TypeError(
                "BalancedPositiveNegativeSampler: matched_idxs must be a list with one label tensor per image, "
                f"got {type(matched_idxs).__name__}"
            )
        pos_masks, neg_masks = [], []
        for labels in matched_idxs:  # one iteration per image
            positive = torch.where(labels >= 1)[0]
            negative = torch.where(labels == 0)[0]

            num_pos = min(positive.numel(), int(self.batch_size_per_image * self.positive_fraction))
            num_neg = min(negative.numel(), self.batch_size_per_image - num_pos)

            # a uniformly random subset: the first num_pos of a random permutation
            pos_chosen = positive[torch.randperm(positive.numel(), device=positive.device)[:num_pos]]
            neg_chosen = negative[torch.randperm(negative.numel(), device=negative.device)[:num_neg]]

            pos_mask = torch.zeros_like(labels, dtype=torch.uint8)
            neg_mask = torch.zeros_like(labels, dtype=torch.uint8)
            pos_mask[pos_chosen] = 1
            neg_mask[neg_chosen] = 1
            pos_masks.append(pos_mask)
            neg_masks.append(neg_mask)
        return pos_masks, neg_masks
