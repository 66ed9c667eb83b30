"""Chapter 08's checkers accept the solution and reject the stub and plausible wrong answers."""
import pytest
import torch

from course_lib.exercises import ExerciseFailed, NotAttempted, ch08
from course_lib.exercises import load_solution as solution


def test_checkers_accept_the_solutions():
    ch08.check_pixel_shuffle(solution("ch08", "pixel_shuffle"))
    ch08.check_fbb_loss(solution("ch08", "fbb_loss"))


def test_checkers_reject_the_stubs(stub):
    with pytest.raises(NotAttempted):
        ch08.check_pixel_shuffle(stub)
    with pytest.raises(NotAttempted):
        ch08.check_fbb_loss(stub)


def _transposed(f, r):  # x and y exchanged in the channel index
    n, ch, h, w = f.shape
    c = ch // (r * r)
    return f.reshape(n, r, r, c, h, w).permute(0, 3, 4, 1, 5, 2).reshape(n, c, h * r, w * r)


@pytest.mark.parametrize("wrong, hint", [
    (torch.pixel_shuffle, "torch.pixel_shuffle's channel order"),
    (_transposed, "exchanged"),
])
def test_pixel_shuffle_rejects_plausible_mistakes(wrong, hint):
    with pytest.raises(ExerciseFailed, match=hint):
        ch08.check_pixel_shuffle(wrong)


def _fbb(student, target, mask, lam=1.0, *, by_all_pixels=False, nan_on_empty=False, no_lam=False, sum_channels=False):
    diff = (student - target).abs()
    per_pixel = diff.sum(1) if sum_channels else diff.mean(1)
    m = mask.to(diff.dtype)
    n = m.numel() if by_all_pixels else m.sum() if nan_on_empty else m.sum().clamp(min=1)
    return diff.mean() + (1.0 if no_lam else lam) * (per_pixel * m).sum() / n


@pytest.mark.parametrize("mistake, hint", [
    ({"by_all_pixels": True}, "not by all H x W"),
    ({"nan_on_empty": True}, "N = 0"),
    ({"no_lam": True}, "lam"),
    ({"sum_channels": True}, "mean"),
])
def test_fbb_loss_rejects_plausible_mistakes(mistake, hint):
    with pytest.raises(ExerciseFailed, match=hint):
        ch08.check_fbb_loss(lambda s, t, m, lam=1.0: _fbb(s, t, m, lam, **mistake))


def test_fbb_loss_rejects_a_detached_answer():
    with pytest.raises(ExerciseFailed, match="gradient"):
        ch08.check_fbb_loss(lambda s, t, m, lam=1.0: _fbb(s, t, m, lam).detach())


def test_fbb_loss_rejects_a_per_image_positive_mean():
    """N counts the positive pixels of the whole batch (eq. 7, the library, the authors' code). Averaging L_pos per
    image and then over the images gives the same number only when every image has as many positive pixels."""
    def per_image(s, t, m, lam=1.0):
        diff = (s - t).abs()
        mask = m.to(diff.dtype)
        l_pos = ((diff.mean(1) * mask).sum((1, 2)) / mask.sum((1, 2)).clamp(min=1)).mean()
        return diff.mean() + lam * l_pos
    with pytest.raises(ExerciseFailed, match="whole batch"):
        ch08.check_fbb_loss(per_image)


def _fbb_clamped_per_image(s, t, m, lam=1.0):
    """Each image's N clamped to 1, then summed: right on every case where each image has a positive pixel (the
    checker's cases before a batch with one empty image was added), wrong when one has none (it adds 1 to N)."""
    diff = (s - t).abs()
    mask = m.to(diff.dtype)
    return diff.mean() + lam * (diff.mean(1) * mask).sum() / mask.sum((1, 2)).clamp(min=1).sum()


def _fbb_lam_on_glob(s, t, m, lam=1.0):
    diff = (s - t).abs()
    mask = m.to(diff.dtype)
    return lam * diff.mean() + (diff.mean(1) * mask).sum() / mask.sum().clamp(min=1)


def _fbb_where_nan(s, t, m, lam=1.0):
    """N = 0 guarded by torch.where: the value is right (L_glob) but the untaken branch's 0 / 0 makes the gradient NaN."""
    diff = (s - t).abs()
    mask = m.to(diff.dtype)
    n = mask.sum()
    return diff.mean() + lam * torch.where(n > 0, (diff.mean(1) * mask).sum() / n, torch.zeros(()))


@pytest.mark.parametrize("wrong, hint", [
    (_fbb_clamped_per_image, "adds 0 to N, not 1"),
    (_fbb_lam_on_glob, "not lam \\* L_glob"),
    (_fbb_where_nan, "N = 0"),
])
def test_fbb_loss_rejects_answers_that_are_right_on_most_batches(wrong, hint):
    with pytest.raises(ExerciseFailed, match=hint):
        ch08.check_fbb_loss(wrong)
