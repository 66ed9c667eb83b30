"""course_lib.ops.BoxCoder == torchvision's detection BoxCoder; encode/decode round-trips."""
import math

import pytest
import torch
from torchvision.models.detection._utils import BoxCoder as TVBoxCoder

from course_lib.ops import BoxCoder

WEIGHTS = [(1.0, 1.0, 1.0, 1.0), (10.0, 10.0, 5.0, 5.0)]


def same(actual, expected):
    torch.testing.assert_close(actual, expected, rtol=0, atol=0, equal_nan=True)


def positive_boxes(n, seed, dtype, random_boxes):
    """Boxes with strictly positive width and height (encode divides by them)."""
    return random_boxes(n, seed, dtype, degenerate=0.0) + torch.tensor([0.0, 0.0, 0.5, 0.5], dtype=dtype)


@pytest.mark.parametrize("seed", range(20))
@pytest.mark.parametrize("weights", WEIGHTS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_equal_torchvision_and_round_trip(seed, weights, dtype, random_boxes):
    ours, theirs = BoxCoder(weights), TVBoxCoder(weights)
    anchors = [positive_boxes(n, seed + i, dtype, random_boxes) for i, n in enumerate((17, 0, 9))]  # 3 images
    gt = [positive_boxes(len(a), seed + 100 + i, dtype, random_boxes) for i, a in enumerate(anchors)]

    targets = ours.encode(gt, anchors)
    for t, e in zip(targets, theirs.encode(gt, anchors), strict=True):
        same(t, e)
    same(ours.encode_single(gt[0], anchors[0]), theirs.encode_single(gt[0], anchors[0]))

    codes = torch.cat(targets)
    decoded = ours.decode(codes, anchors)
    same(decoded, theirs.decode(codes, anchors))
    assert decoded.shape == (26, 1, 4)
    # decode(encode(G, P), P) == G
    torch.testing.assert_close(decoded[:, 0], torch.cat(gt), rtol=1e-5, atol=1e-4)

    # the box head: K = 5 class-specific boxes per proposal, random (also huge) codes
    g = torch.Generator().manual_seed(seed)
    codes = (torch.randn(26, 4 * 5, generator=g, dtype=torch.float64) * 4).to(dtype)
    same(ours.decode(codes, anchors), theirs.decode(codes, anchors))
    same(ours.decode_single(codes, torch.cat(anchors)), theirs.decode_single(codes, torch.cat(anchors)))


@pytest.mark.parametrize("weights", WEIGHTS)
def test_clamp_of_dw_dh(weights):
    anchor = torch.tensor([[0.0, 0.0, 16.0, 16.0]])
    huge = torch.tensor([[0.0, 0.0, 100.0 * weights[2], 100.0 * weights[3]]])  # would overflow exp()
    coder = BoxCoder(weights)
    box = coder.decode_single(huge, anchor)
    same(box, TVBoxCoder(weights).decode_single(huge, anchor))
    # clamped at log(1000/16): a 16-pixel anchor grows to at most 1000 pixels, centred on the anchor
    torch.testing.assert_close(box, torch.tensor([[8.0 - 500, 8.0 - 500, 8.0 + 500, 8.0 + 500]]))
    assert BoxCoder(weights, bbox_xform_clip=math.log(2.0)).decode_single(huge, anchor)[0, 2].item() == pytest.approx(24.0)


def test_targets_are_the_rcnn_parameterisation():
    # P: centre (10, 20), size 20 x 40;  G: centre (15, 10), size 40 x 10
    p = torch.tensor([[0.0, 0.0, 20.0, 40.0]])
    g = torch.tensor([[-5.0, 5.0, 35.0, 15.0]])
    t = BoxCoder((1.0, 1.0, 1.0, 1.0)).encode_single(g, p)
    expected = torch.tensor([[(15 - 10) / 20, (10 - 20) / 40, math.log(40 / 20), math.log(10 / 40)]])
    torch.testing.assert_close(t, expected)
    t = BoxCoder((10.0, 10.0, 5.0, 5.0)).encode_single(g, p)
    torch.testing.assert_close(t, expected * torch.tensor([10.0, 10.0, 5.0, 5.0]))


def test_empty_inputs():
    coder = BoxCoder((1.0, 1.0, 1.0, 1.0))
    e = torch.zeros(0, 4)
    assert [t.shape for t in coder.encode([e, e], [e, e])] == [(0, 4), (0, 4)]
    same(coder.decode(torch.zeros(0, 4), [e]), TVBoxCoder((1.0, 1.0, 1.0, 1.0)).decode(torch.zeros(0, 4), [e]))
    assert coder.decode_single(torch.zeros(0, 8), e).shape == (0, 8)


def test_bad_input_raises_clear_errors():
    coder = BoxCoder((1.0, 1.0, 1.0, 1.0))
    b4, b5 = torch.ones(3, 4), torch.ones(3, 5)
    with pytest.raises(ValueError, match=r"encode_single: proposals must be a tensor of shape \[N, 4\].*\[3, 5\]"):
        coder.encode_single(b4, b5)
    with pytest.raises(ValueError, match=r"encode_single: reference_boxes and proposals must pair up.*3 and 2"):
        coder.encode_single(b4, b4[:2])
    with pytest.raises(TypeError, match=r"encode: reference_boxes must be a list"):
        coder.encode(b4, [b4])
    with pytest.raises(ValueError, match=r"decode: boxes\[1\] must be a tensor of shape \[N, 4\]"):
        coder.decode(torch.ones(6, 4), [b4, b5])
    with pytest.raises(ValueError, match=r"decode: rel_codes \[3, 6\] does not hold 4 \* K"):
        coder.decode(torch.ones(3, 6), [b4])
    with pytest.raises(ValueError, match=r"decode_single: rel_codes must have shape \[N, 4 \* K\] with N = 3"):
        coder.decode_single(torch.ones(2, 4), b4)
    with pytest.raises(ValueError, match=r"BoxCoder: weights must be 4 numbers"):
        BoxCoder((1.0, 1.0, 1.0))
    with pytest.raises(ValueError, match=r"BoxCoder: weights must be positive"):
        BoxCoder((1.0, 0.0, 1.0, 1.0))
