"""Shared random-box generator for the tests of course_lib.ops (box / NMS / anchor / matcher half)."""
import pytest
import torch


def _random_boxes(n, seed, dtype=torch.float32, size=100.0, max_side=0.3, degenerate=0.1, duplicates=0.05, grid=None):
    """``n`` random "xyxy" boxes in a ``size`` x ``size`` image, reproducible from ``seed``.

    Mixed in on purpose: zero-width / zero-height boxes (``degenerate`` fraction),
    exact copies of other boxes (``duplicates``), and with ``grid`` coordinates rounded
    to multiples of ``grid`` so that many IoUs tie exactly.
    """
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g, dtype=torch.float64) * size
    wh = torch.rand(n, 2, generator=g, dtype=torch.float64) * size * max_side
    if grid is not None:
        xy = (xy / grid).round() * grid
        wh = (wh / grid).round() * grid
    flat = torch.rand(n, 2, generator=g) < degenerate / 2
    wh = torch.where(flat, torch.zeros_like(wh), wh)
    boxes = torch.cat((xy, xy + wh), dim=1)
    if n > 1:
        copy = torch.rand(n, generator=g) < duplicates
        src = torch.randint(0, n, (n,), generator=g)
        boxes = torch.where(copy[:, None], boxes[src], boxes)
    return boxes.to(dtype)


@pytest.fixture
def random_boxes():
    return _random_boxes
