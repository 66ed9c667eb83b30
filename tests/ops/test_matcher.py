"""course_lib.ops.Matcher / BalancedPositiveNegativeSampler == torchvision's, plus the paper's rules."""
import pytest
import torch
from torchvision.models.detection._utils import BalancedPositiveNegativeSampler as TVSampler
from torchvision.models.detection._utils import Matcher as TVMatcher

from course_lib.ops import BalancedPositiveNegativeSampler, Matcher, box_iou

SETTINGS = [(0.7, 0.3, True), (0.7, 0.3, False), (0.5, 0.5, False), (0.5, 0.4, True)]


@pytest.mark.parametrize("seed", range(20))
@pytest.mark.parametrize("high,low,allow", SETTINGS)
def test_equal_torchvision_on_random_iou(seed, high, low, allow, random_boxes):
    g = torch.Generator().manual_seed(seed)
    m, n = int(torch.randint(1, 8, (1,), generator=g)), int(torch.randint(1, 300, (1,), generator=g))
    # real IoUs of random boxes (many zeros, duplicate boxes -> exact ties) ...
    iou = box_iou(random_boxes(m, seed, degenerate=0.0), random_boxes(n, seed + 50, degenerate=0.0))
    # ... and a quantised random matrix: ties everywhere, values exactly on the thresholds
    quantised = (torch.rand(m, n, generator=g) * 10).round() / 10
    for q in (iou, quantised, iou.double()):
        ours = Matcher(high, low, allow)(q)
        expected = TVMatcher(high, low, allow)(q)
        assert ours.dtype == torch.int64
        assert torch.equal(ours, expected)


def test_low_quality_match_when_no_anchor_reaches_the_threshold():
    # gt 0 overlaps anchors 0 and 1 at most 0.5 -> without the rule it gets no positive anchor
    iou = torch.tensor(
        [
            [0.5, 0.5, 0.1, 0.0, 0.0],  # gt 0: best 0.5, tied on anchors 0 and 1
            [0.0, 0.6, 0.8, 0.2, 0.0],  # gt 1: anchor 2 is a regular match (>= 0.7)
        ]
    )
    plain = Matcher(0.7, 0.3, allow_low_quality_matches=False)(iou)
    assert plain.tolist() == [-2, -2, 1, -1, -1]
    with_rule = Matcher(0.7, 0.3, allow_low_quality_matches=True)(iou)
    # anchor 0 -> gt 0; anchor 1 is claimed by gt 0 but matched to ITS best gt (1, IoU 0.6)
    assert with_rule.tolist() == [0, 1, 1, -1, -1]
    assert torch.equal(with_rule, TVMatcher(0.7, 0.3, True)(iou))
    assert Matcher.BELOW_LOW_THRESHOLD == -1 and Matcher.BETWEEN_THRESHOLDS == -2


def test_threshold_boundaries():
    iou = torch.tensor([[0.3, 0.7, 0.29999, 0.69999]])
    assert Matcher(0.7, 0.3)(iou).tolist() == [-2, 0, -1, -2]  # >= high matches, < low is background


def test_empty():
    assert Matcher(0.7, 0.3, True)(torch.zeros(0, 5)).tolist() == [-1] * 5  # no ground truth: all background
    assert Matcher(0.7, 0.3, True)(torch.zeros(3, 0)).shape == (0,)


def test_matcher_bad_input():
    with pytest.raises(ValueError, match=r"Matcher: low_threshold \(0.7\) must be <= high_threshold \(0.3\)"):
        Matcher(0.3, 0.7)
    with pytest.raises(ValueError, match=r"match_quality_matrix must be a \[M ground truths, N predictions\].*\[5\]"):
        Matcher(0.7, 0.3)(torch.zeros(5))


def random_labels(seed, sizes):
    g = torch.Generator().manual_seed(seed)
    # -1 ignored, 0 negative, >= 1 positive (class labels), few positives like real anchors
    probs = torch.tensor([0.2, 0.7, 0.05, 0.05])
    return [torch.multinomial(probs, max(n, 1), replacement=True, generator=g)[:n] - 1 for n in sizes]


@pytest.mark.parametrize("seed", range(20))
@pytest.mark.parametrize("batch,fraction", [(256, 0.5), (512, 0.25), (16, 1.0), (0, 0.5)])
def test_sampler_consumes_the_rng_like_torchvision(seed, batch, fraction):
    labels = random_labels(seed, [1000, 37, 0, 600])
    torch.manual_seed(seed)
    pos, neg = BalancedPositiveNegativeSampler(batch, fraction)(labels)
    after_ours = torch.rand(1)
    torch.manual_seed(seed)
    tv_pos, tv_neg = TVSampler(batch, fraction)(labels)
    after_theirs = torch.rand(1)
    for a, b in zip(pos + neg, tv_pos + tv_neg, strict=True):
        assert a.dtype == torch.uint8 and torch.equal(a, b)
    assert torch.equal(after_ours, after_theirs)  # the generator is left in the same state


def test_sampler_statistics():
    labels = torch.tensor([1] * 30 + [0] * 970 + [-1] * 100)
    sampler = BalancedPositiveNegativeSampler(256, 0.5)
    torch.manual_seed(0)
    counts = torch.zeros(len(labels))
    for _ in range(200):
        (pos,), (neg,) = sampler([labels])
        assert pos.sum() == 30  # fewer positives than 128: all of them ...
        assert neg.sum() == 256 - 30  # ... and negatives fill the batch
        assert not (pos.bool() & (labels != 1)).any() and not (neg.bool() & (labels != 0)).any()
        counts += neg
    # every negative equally likely: expected 200 * 226 / 970 = 46.6 draws each
    neg_counts = counts[30:1000]
    assert abs(neg_counts.mean().item() - 200 * 226 / 970) < 1e-3
    assert neg_counts.std().item() < 12  # binomial std ~ 6.1; a biased sampler would spread wider
    assert counts[1000:].sum() == 0  # ignored elements are never sampled

    many_pos = torch.tensor([2] * 500 + [0] * 500)
    (pos,), (neg,) = BalancedPositiveNegativeSampler(512, 0.25)([many_pos])
    assert pos.sum() == 128 and neg.sum() == 384


def test_sampler_bad_input():
    with pytest.raises(ValueError, match=r"positive_fraction must be in \[0, 1\], got 1.5"):
        BalancedPositiveNegativeSampler(256, 1.5)
    with pytest.raises(TypeError, match=r"matched_idxs must be a list"):
        BalancedPositiveNegativeSampler(256, 0.5)(torch.zeros(5))
