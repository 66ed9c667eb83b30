"""U-Net's weight map (eq. 2) against a brute-force oracle and the values the paper implies."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from course_lib.segmentation import class_balance_weights, touching_borders, unet_weight_map, weighted_cross_entropy


def _two_cells(gap):
    """Two 20 x 20 squares side by side, ``gap`` background pixels apart, in a 40 x 80 image."""
    inst = np.zeros((40, 80), dtype=np.int64)
    inst[10:30, 10:30] = 1
    inst[10:30, 30 + gap : 50 + gap] = 2
    return inst


def _oracle(instances, w0, sigma, wc):
    """Eq. 2 pixel by pixel, distances by brute force over the pixels of each cell."""
    h, w = instances.shape
    ids = [i for i in np.unique(instances) if i > 0]
    yy, xx = np.mgrid[:h, :w]
    out = np.zeros((h, w))
    for y in range(h):
        for x in range(w):
            out[y, x] = wc[int(instances[y, x] > 0)]
            if instances[y, x] == 0 and len(ids) >= 2:
                d = sorted(np.sqrt((yy[instances == i] - y) ** 2 + (xx[instances == i] - x) ** 2).min() for i in ids)
                out[y, x] += w0 * math.exp(-((d[0] + d[1]) ** 2) / (2 * sigma**2))
    return out


def test_weight_map_matches_brute_force():
    inst = np.zeros((14, 17), dtype=np.int64)
    inst[2:6, 2:7] = 1
    inst[8:12, 3:6] = 2
    inst[3:10, 10:14] = 3
    wc = [0.7, 1.9]
    got = unet_weight_map(inst, w0=10, sigma=5, class_weights=torch.tensor(wc))
    np.testing.assert_allclose(got.numpy(), _oracle(inst, 10, 5, wc), rtol=1e-5, atol=1e-5)


def test_weight_map_values_between_and_far_from_cells():
    inst = _two_cells(gap=1)
    wc = class_balance_weights(inst > 0).tolist()
    w = unet_weight_map(inst).numpy()
    # a 1-pixel gap: its pixels are 1 px from both cells, w = w_c + 10 exp(-(1 + 1)^2 / (2 * 5^2))
    assert w[20, 30] == pytest.approx(wc[0] + 10 * math.exp(-4 / 50), rel=1e-5)
    assert w[20, 30] > wc[0] + 9
    # far from both cells (corner): the border term vanishes
    assert w[0, 79] == pytest.approx(wc[0], abs=1e-3)
    # inside a cell: the class weight only
    assert w[20, 20] == pytest.approx(wc[1])
    # the border term decays with the gap
    assert float(unet_weight_map(_two_cells(gap=8))[20, 33]) < w[20, 30]


def test_class_balance_weights():
    labels = np.array([[0, 0, 0, 1], [0, 0, 255, 1]])
    wc = class_balance_weights(labels, num_classes=3)
    # 5 background, 2 foreground pixels, 2 classes present: 7/(2*5), 7/(2*2); class 2 absent: 0
    torch.testing.assert_close(wc, torch.tensor([0.7, 1.75, 0.0]))
    w = unet_weight_map(np.zeros_like(labels), labels, class_weights=wc)
    assert w[1, 2] == 0  # ignored pixel
    assert float(w[labels != 255].mean()) == pytest.approx(1.0)


def test_one_cell_has_no_border_term():
    inst = np.zeros((20, 20), dtype=np.int64)
    inst[5:10, 5:10] = 3
    w = unet_weight_map(inst, class_weights=torch.tensor([1.0, 2.0]))
    assert set(w.unique().tolist()) == {1.0, 2.0}


def test_touching_borders():
    inst = np.zeros((6, 8), dtype=np.int64)
    inst[1:5, 1:4] = 1
    inst[1:5, 4:7] = 2  # touches cell 1 along columns 3|4
    border = touching_borders(inst)
    expected = torch.zeros(6, 8, dtype=torch.bool)
    expected[1:5, 3:5] = True
    assert torch.equal(border, expected)


def test_weighted_cross_entropy():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 5, 6)
    target = torch.randint(0, 3, (2, 5, 6))
    target[0, 0, :2] = 255
    ones = torch.ones(2, 5, 6)
    torch.testing.assert_close(weighted_cross_entropy(logits, target, ones), F.cross_entropy(logits, target, ignore_index=255))
    w = torch.rand(2, 5, 6)
    valid = target != 255
    ce = -logits.log_softmax(1).gather(1, target.clamp(max=2)[:, None])[:, 0]
    torch.testing.assert_close(weighted_cross_entropy(logits, target, w), (w * ce)[valid].sum() / valid.sum())
    with pytest.raises(ValueError, match="crop the target"):
        weighted_cross_entropy(logits, target[..., :4], w[..., :4])
