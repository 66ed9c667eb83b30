"""Reference solutions of chapter 8's exercises (notebooks/08_efpn.ipynb)."""
import torch


def pixel_shuffle(features, r):
    """Eq. 4: PS(F)[x, y, c] = F[x // r, y // r, C r (y mod r) + C (x mod r) + c], x the row, y the column."""
    n, channels, h, w = features.shape
    c = channels // (r * r)
    # the channel index (y mod r) * C r + (x mod r) * C + c: view the channels as [y mod r, x mod r, c]
    f = features.reshape(n, r, r, c, h, w)  # [N, j, i, c, H, W] with i = x mod r, j = y mod r
    return f.permute(0, 3, 4, 2, 5, 1).reshape(n, c, h * r, w * r)  # [N, c, H, i, W, j] -> rows x = H r + i


def fbb_loss(student, target, positive_mask, lam=1.0):
    """Eq. 6-8: the mean |F^t - F| over everything, plus lam times its mean over the channels of the N positive pixels."""
    diff = (student - target).abs()
    l_glob = diff.mean()
    mask = positive_mask.to(diff.dtype)
    n = mask.sum()
    l_pos = (diff.mean(dim=1) * mask).sum() / n.clamp(min=1)  # no positive pixel: 0, not 0 / 0
    return l_glob + lam * l_pos
