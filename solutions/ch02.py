"""Reference solutions of chapter 02 (see solutions/README.md)."""
import torch


def bilinear_kernel(size):
    """k[i, j] = (1 - |i - c| / f) (1 - |j - c| / f), f = (size + 1) // 2, c = f - 0.5 (even) or f - 1 (odd)."""
    f = (size + 1) // 2
    c = f - 1 if size % 2 == 1 else f - 0.5
    r = 1 - (torch.arange(size, dtype=torch.float64) - c).abs() / f
    return (r[:, None] * r[None, :]).float()


def upsampling_weight(channels, factor):
    """ConvTranspose2d(channels, channels, 2f, stride f) weight: the bilinear kernel on the diagonal, zero elsewhere."""
    weight = torch.zeros(channels, channels, 2 * factor, 2 * factor)
    index = torch.arange(channels)
    weight[index, index] = bilinear_kernel(2 * factor)
    return weight


def fuse_pool4(upscore2, score_pool4):
    """FCN-16s: crop score_pool4 at offset 5 (pool4 pixel q at 16 q - 91.5, upscore2 pixel v at 16 v - 11.5) and add."""
    h, w = upscore2.shape[-2:]
    return upscore2 + score_pool4[..., 5:5 + h, 5:5 + w]
