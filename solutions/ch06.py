"""Reference solutions of chapter 6's exercises (notebooks/06_rfcn.ipynb)."""
import math

import torch


def _round_half_away(x: float) -> int:
    return int(math.copysign(math.floor(abs(x) + 0.5), x))


def psroi_vote(score_maps, roi, k, spatial_scale):
    channels, height, width = score_maps.shape
    x1, y1, x2, y2 = (_round_half_away(float(v) * spatial_scale) for v in roi)
    roi_w, roi_h = max(x2 - x1, 1), max(y2 - y1, 1)
    parts = score_maps.reshape(channels // (k * k), k, k, height, width)  # [C + 1, bin row, bin column, H, W]
    total = score_maps.new_zeros(channels // (k * k))
    for i in range(k):
        top = min(max(math.floor(i * roi_h / k) + y1, 0), height - 1)
        bottom = min(max(math.ceil((i + 1) * roi_h / k) + y1, 0), height - 1)
        for j in range(k):
            left = min(max(math.floor(j * roi_w / k) + x1, 0), width - 1)
            right = min(max(math.ceil((j + 1) * roi_w / k) + x1, 0), width - 1)
            if bottom > top and right > left:  # an empty bin adds 0
                total += parts[:, i, j, top:bottom, left:right].mean(dim=(1, 2))
    return total / (k * k)


def ohem_keep(losses, batch_size):
    order = torch.sort(losses, descending=True, stable=True).indices
    return order[:batch_size].sort().values
