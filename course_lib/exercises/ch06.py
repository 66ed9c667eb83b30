"""Checkers for chapter 6 (R-FCN): PSRoI pooling + voting for one RoI, and OHEM's choice of RoIs.

Each ``check_<name>(fn)`` runs ``fn`` on hidden, seeded cases against torchvision or ``course_lib`` and returns
``fn``, or raises :class:`ExerciseFailed` with a hint aimed at the likely mistake.
"""
from __future__ import annotations

import torch
import torchvision

from course_lib.detection.roi_heads import ohem_select

from .core import Case, Hint, check_function

__all__ = ["check_psroi_vote", "check_ohem_keep"]

CHAPTER = "ch06"


# ------------------------------------------------------------------------------- PSRoI pooling + voting, one RoI
def _psroi_vote_reference(score_maps, roi, k, spatial_scale):
    rois = torch.cat([roi.new_zeros(1), roi]).reshape(1, 5)
    return torchvision.ops.ps_roi_pool(score_maps[None], rois, k, spatial_scale).mean(dim=(2, 3))[0]


def _part_maps(k, classes, first=1, cells=4):
    """[k^2 * classes, 12, 12] maps in which part (i, j) of class c is c + 1 on the cells of bin (i, j) of the RoI
    from cell ``first`` to ``first + k * cells`` and 0 elsewhere: a correct answer votes exactly c + 1, reading
    another part's map (or another class's) gives less."""
    maps = torch.zeros(classes, k, k, 12, 12)
    for i in range(k):
        for j in range(k):
            rows, cols = slice(first + i * cells, first + (i + 1) * cells), slice(first + j * cells, first + (j + 1) * cells)
            maps[:, i, j, rows, cols] = torch.arange(1.0, classes + 1)[:, None, None]
    return maps.reshape(classes * k * k, 12, 12)


def check_psroi_vote(fn):
    """``psroi_vote(score_maps [k^2 (C+1), H, W], roi [4] (x1, y1, x2, y2) in image pixels, k, spatial_scale)
    -> [C+1]``: bin (i, j) averages channel (c k + i) k + j over its cells, the vote averages the k^2 bins
    (R-FCN eq. 1-2 as the official code); equal to ``torchvision.ops.ps_roi_pool(...).mean((2, 3))``."""
    g = torch.Generator().manual_seed(6)
    maps3 = torch.randn(27, 20, 24, generator=g)  # k = 3, C + 1 = 3
    maps7 = torch.randn(49 * 4, 38, 50, generator=g)  # k = 7, C + 1 = 4
    cases = [
        Case("part maps lit on their own bin, k = 2, one RoI over 8 x 8 cells",
             (_part_maps(2, 2), torch.tensor([16.0, 16, 144, 144]), 2, 1 / 16)),
        Case("random maps, k = 3, scale 1/16", (maps3, torch.tensor([41.0, 30, 250, 203]), 3, 1 / 16)),
        Case("a RoI on half cells (x / 16 ends in .5)", (maps3, torch.tensor([8.0, 24, 104, 200]), 3, 1 / 16)),
        Case("a RoI from a negative half cell (x1 / 16 = -1.5)", (maps3, torch.tensor([-24.0, -40, 104, 200]), 3, 1 / 16)),
        Case("a RoI of 2 x 2 cells, k = 3: bins narrower than a cell", (maps3, torch.tensor([64.0, 72, 96, 104]), 3, 1 / 16)),
        Case("a RoI crossing the map's border", (maps3, torch.tensor([-60.0, 200, 500, 420]), 3, 1 / 16)),
        Case("a RoI smaller than one cell", (maps3, torch.tensor([100.0, 100, 104, 106]), 3, 1 / 16)),
        Case("a RoI smaller than one cell, rounding to zero cells", (maps3, torch.tensor([98.0, 98, 102, 101]), 3, 1 / 16)),
        Case("k = 7, 4 classes", (maps7, torch.tensor([50.0, 70, 600, 500]), 7, 1 / 16)),
        Case("k = 1: plain RoI average pooling", (maps3[:3], torch.tensor([0.0, 0, 320, 320]), 1, 1 / 16)),
    ]
    hints = [
        Hint("Bin (i, j) reads only its own part's map: channel (c * k + i) * k + j, i the bin's row (y) and j its "
             "column (x). In this case each part's map is lit only on its own bin: the right reading votes exactly "
             "c + 1 for class c.", when=lambda out, exp, case: case.label.startswith("part maps")),
        Hint("Round the scaled corners half away from zero, like torchvision (C's round: 2.5 -> 3, -1.5 -> -2); "
             "torch.round rounds half to even, and floor(x + 0.5) rounds -1.5 up to -1.",
             when=lambda out, exp, case: case.label.startswith(("a RoI on half", "a RoI from a negative half"))),
        Hint("Bin i spans cells floor(i h / k) .. ceil((i + 1) h / k) from the RoI's first cell (h its height in "
             "cells, not rounded): when the RoI is narrower than k cells the bins overlap and each still reads at "
             "least one cell -- not h // k cells each.",
             when=lambda out, exp, case: case.label.startswith("a RoI of 2 x 2")),
        Hint("Clip each bin's rows to [0, H - 1] and columns to [0, W - 1] (torchvision never reads the last row "
             "and column), and let an empty bin count as 0 in the vote.",
             when=lambda out, exp, case: case.label.startswith("a RoI crossing")),
        Hint("The RoI is at least 1 x 1 cell: width = max(x2 - x1, 1) after rounding (no + 1 here, unlike RoI max "
             "pooling).", when=lambda out, exp, case: case.label.startswith("a RoI smaller")),
        Hint("The vote is the mean of the k x k bins (the official code), not their sum.",
             when=lambda out, exp, case: isinstance(out, torch.Tensor) and out.shape == exp.shape
             and torch.allclose(out, exp * case.args[2] ** 2, atol=1e-4)),
    ]
    return check_function("psroi_vote", fn, reference=_psroi_vote_reference, cases=cases, chapter=CHAPTER,
                          hints=hints, atol=1e-5)


# ---------------------------------------------------------------------------------------------------- OHEM
def _ohem_keep_reference(losses, batch_size):
    return ohem_select(losses, [losses.numel()], batch_size)


def check_ohem_keep(fn):
    """``ohem_keep(losses [R], batch_size B) -> indices [min(R, B)]`` in ascending order: the B RoIs of one image
    with the highest loss (Shrivastava et al. 2016; R-FCN: B = 128 of 300), ties to the RoI that comes first."""
    g = torch.Generator().manual_seed(7)
    tied = torch.tensor([0.3, 0.9, 0.9, 0.1, 0.9, 0.5])
    cases = [
        Case("6 RoIs, B = 2", (torch.tensor([0.3, 2.0, 0.1, 0.7, 1.5, 0.2]), 2)),
        Case("three RoIs tie at the cut, B = 2", (tied, 2)),
        Case("fewer RoIs than B", (torch.rand(5, generator=g), 128)),
        Case("300 RoIs, B = 128 (the paper)", (torch.rand(300, generator=g) * 3, 128)),
        Case("300 RoIs, many equal losses, B = 128", ((torch.rand(300, generator=g) * 4).floor(), 128)),
        Case("all losses equal", (torch.ones(10), 4)),
        Case("no RoIs", (torch.zeros(0), 128)),
    ]
    hints = [
        Hint("Return the indices in ascending order (sort the chosen indices), not in order of loss.",
             when=lambda out, exp, case: isinstance(out, torch.Tensor) and out.shape == exp.shape
             and torch.equal(out.sort().values, exp)),
        Hint("Among equal losses the earlier RoI wins: a stable sort (torch.sort(..., stable=True)) is reproducible, "
             "torch.topk's and torch.argsort's choice among ties is not specified (it changes with the number of "
             "RoIs).", when=lambda out, exp, case: "tie" in case.label or "equal" in case.label),
        Hint("With fewer RoIs than B, keep all of them.", when=lambda out, exp, case: case.label.startswith("fewer")),
    ]
    return check_function("ohem_keep", fn, reference=_ohem_keep_reference, cases=cases, chapter=CHAPTER, hints=hints)
