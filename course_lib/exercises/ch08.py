"""Chapter 08's exercises: the pixel shuffle of eq. 4, written from the formula, and the foreground-background-balanced
loss of eq. 6-8. Each checker compares the student's function with the library's (``course_lib.detection.efpn``)
on hidden, seeded cases: several upscaling factors and channel counts; an image without objects, a full mask, images
with unequal numbers of positive pixels, a batch in which one image has none, lambda.
"""
from __future__ import annotations

import torch

from course_lib.detection.efpn import fbb_loss, pixel_shuffle_eq4

from .core import Case, Hint, check_function

__all__ = ["check_pixel_shuffle", "check_fbb_loss"]

CHAPTER = "ch08"


def _shuffle_cases() -> list[Case]:
    g = torch.Generator().manual_seed(800)
    shapes = [("one channel, r = 2", 1, 2, 3, 4), ("three channels, r = 2", 3, 2, 4, 4), ("two channels, r = 3", 2, 3, 2, 5),
              ("a batch of two, 8 channels, r = 2", 8, 2, 5, 3), ("256 channels as in FTT, r = 2", 256, 2, 6, 7)]
    cases = []
    for label, c, r, h, w in shapes:
        n = 2 if "batch" in label else 1
        cases.append(Case(label, (torch.randn(n, c * r * r, h, w, generator=g), r)))
    return cases


def _is_torch_order(out, expected, case):
    f, r = case.args
    return isinstance(out, torch.Tensor) and out.shape == expected.shape and torch.equal(out, torch.pixel_shuffle(f, r))


def _is_transposed(out, expected, case):
    f, r = case.args
    if not isinstance(out, torch.Tensor) or out.shape != expected.shape:
        return False
    swapped = pixel_shuffle_eq4(f.transpose(-1, -2), r).transpose(-1, -2)  # x and y exchanged in the channel index
    return torch.equal(out, swapped)


def check_pixel_shuffle(pixel_shuffle):
    """Check ``pixel_shuffle(F, r)``: [N, C r^2, H, W] -> [N, C, rH, rW] with eq. 4's channel order."""
    hints = [
        Hint("That is torch.pixel_shuffle's channel order (c r^2 + r (x mod r) + (y mod r)). Eq. 4 reads channel "
             "C r (y mod r) + C (x mod r) + c: the sub-pixel offsets are the slow part of the index, c the fast one.",
             when=_is_torch_order),
        Hint("The roles of x and y are exchanged: in eq. 4 x is the row (height) and y the column (width); the "
             "column offset y mod r is multiplied by C r.", when=_is_transposed),
        Hint("The output has C = (input channels) / r^2 channels and r times the height and width.",
             when=lambda out, exp, case: isinstance(out, torch.Tensor) and out.shape != exp.shape),
    ]
    return check_function("pixel_shuffle", pixel_shuffle, reference=pixel_shuffle_eq4, cases=_shuffle_cases(),
                          chapter=CHAPTER, hints=hints, atol=0.0, rtol=0.0)


def _fbb_cases() -> list[Case]:
    g = torch.Generator().manual_seed(801)

    def maps(n, c, h, w):
        return torch.randn(n, c, h, w, generator=g), torch.randn(n, c, h, w, generator=g)

    cases = []
    s, t = maps(2, 4, 6, 5)
    mask = torch.zeros(2, 6, 5, dtype=torch.bool)
    mask[0, 1:3, 2:4] = True
    mask[1, 4:, :2] = True
    cases.append(Case("two images, a few positive pixels", (s, t, mask)))
    cases.append(Case("lambda = 0.5", (s, t, mask), {"lam": 0.5}))
    uneven = mask.clone()
    uneven[1] = False
    uneven[1, 5, 0] = True  # one positive pixel in the second image, four in the first
    cases.append(Case("two images with unequal numbers of positive pixels (4 and 1)", (s, t, uneven)))
    one_empty = mask.clone()
    one_empty[1] = False  # positives in the first image only: N is the first image's count, the empty one adds 0
    cases.append(Case("two images, the second without objects", (s, t, one_empty)))
    cases.append(Case("an image without objects (no positive pixel)", (s[:1], t[:1], torch.zeros(1, 6, 5, dtype=torch.bool))))
    cases.append(Case("every pixel positive", (s, t, torch.ones(2, 6, 5, dtype=torch.bool))))
    s, t = maps(1, 256, 12, 10)
    cases.append(Case("256 channels, one small object", (s, t, torch.zeros(1, 12, 10, dtype=torch.bool).index_fill_(
        1, torch.tensor([3, 4]), True) & (torch.arange(10) < 2))))
    return cases


def _fbb_variant(case, *, by_all_pixels=False, no_lam=False, sum_channels=False, per_image=False,
                 clamp_per_image=False, lam_on_glob=False):
    """What a plausible mistake computes on ``case`` (to aim the hint at it)."""
    student, target, mask = case.args
    lam = 1.0 if no_lam else case.kwargs.get("lam", 1.0)
    diff = (student - target).abs()
    per_pixel = diff.sum(1) if sum_channels else diff.mean(1)
    m = mask.to(diff.dtype)
    if per_image:
        return diff.mean() + lam * ((per_pixel * m).sum((1, 2)) / m.sum((1, 2)).clamp(min=1)).mean()
    if clamp_per_image:  # each image's N clamped to 1, then summed: an image without objects adds 1 to N
        n = m.sum((1, 2)).clamp(min=1).sum()
    else:
        n = torch.tensor(float(m.numel())) if by_all_pixels else m.sum().clamp(min=1)
    if lam_on_glob:
        return lam * diff.mean() + (per_pixel * m).sum() / n
    return diff.mean() + lam * (per_pixel * m).sum() / n


def _matches(out, value) -> bool:
    return isinstance(out, torch.Tensor) and out.numel() == 1 and bool(torch.isclose(out.detach().double(),
                                                                                      value.double(), rtol=1e-5))


def check_fbb_loss(fbb):
    """Check ``fbb(student, target, positive_mask, lam=1.0) -> L_glob + lam * L_pos`` (eq. 6-8) on hidden cases."""
    hints = [
        Hint("With no positive pixel, N = 0: L_pos must be 0 (not 0 / 0 = NaN); the loss is then L_glob alone.",
             when=lambda out, exp, case: not case.args[2].any()),
        Hint("L_pos divides by N, the number of positive pixels, not by all H x W pixels (that is what makes the loss "
             "balanced: small objects weigh as much as the background).",
             when=lambda out, exp, case: _matches(out, _fbb_variant(case, by_all_pixels=True))),
        Hint("N counts the positive pixels of the whole batch: L_pos is one sum over every image's positive pixels "
             "divided by that N, not a mean of per-image means (they differ when the images have unequal numbers "
             "of positives).", when=lambda out, exp, case: _matches(out, _fbb_variant(case, per_image=True))),
        Hint("N counts the positive pixels of the whole batch: an image without objects adds 0 to N, not 1 (clamp "
             "N to at least 1 once, for the batch, only to avoid 0 / 0).",
             when=lambda out, exp, case: _matches(out, _fbb_variant(case, clamp_per_image=True))),
        Hint("lam weighs L_pos, the positive-pixel term: L_glob + lam * L_pos, not lam * L_glob + L_pos.",
             when=lambda out, exp, case: _matches(out, _fbb_variant(case, lam_on_glob=True))),
        Hint("Did you use lam? The loss is L_glob + lam * L_pos.",
             when=lambda out, exp, case: _matches(out, _fbb_variant(case, no_lam=True))),
        Hint("As the library (and the authors' code): L_glob is the mean |F^t - F| over every element, and L_pos the "
             "mean |F^t - F| over the C channels of the N positive pixels -- both per element, not summed over channels.",
             when=lambda out, exp, case: _matches(out, _fbb_variant(case, sum_channels=True))),
    ]
    return check_function("fbb_loss", fbb, reference=fbb_loss, cases=_fbb_cases(), chapter=CHAPTER, hints=hints,
                          atol=1e-6, rtol=1e-5, check_grad=True)
