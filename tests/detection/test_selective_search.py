"""Selective search (Uijlings et al., IJCV 2013): region statistics against direct per-region
computations, the grouping against Algorithm 1 by brute force, and recall on generated
multi-scale scenes above stated floors."""
import numpy as np
import pytest
import torch

from course_lib.data.synthetic.multiscale import generate_image
from course_lib.detection.selective_search import (
    STRATEGIES,
    Strategy,
    _similarity,
    colour_bins,
    convert_colour_space,
    hierarchical_grouping,
    initial_regions,
    region_features,
    selective_search,
    selective_search_many,
    texture_bins,
)
from course_lib.ops import box_iou


def _scene(index, size=256):
    image, anns = generate_image(0, 1000 + index, size, size)
    boxes = torch.tensor([[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]]
                          for a in anns], dtype=torch.float32)
    return image, boxes


@pytest.fixture(scope="module")
def random_regions():
    rng = np.random.default_rng(0)
    image = rng.random((40, 50, 3))
    labels = np.repeat(np.repeat(rng.integers(0, 6, (8, 10)), 5, 0), 5, 1)  # blocky regions
    _, labels = np.unique(labels, return_inverse=True)
    return image, labels.reshape(40, 50)


def test_histograms_match_per_region_numpy_histograms(random_regions):
    image, labels = random_regions
    f = region_features(image, labels)
    cbins, tbins = colour_bins(image), texture_bins(image)
    for r in range(labels.max() + 1):
        mask = labels == r
        colour = np.concatenate([np.histogram(cbins[c][mask], bins=25, range=(0, 25))[0] for c in range(3)])
        texture = np.concatenate([np.histogram(tbins[k][mask], bins=10, range=(0, 10))[0] for k in range(24)])
        np.testing.assert_allclose(f["colour"][r], colour / colour.sum())  # 3 x 25 bins, L1-normalised
        np.testing.assert_allclose(f["texture"][r], texture / texture.sum())  # 3 channels x 8 orientations x 10 bins
        ys, xs = np.nonzero(mask)
        np.testing.assert_array_equal(f["box"][r], [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
        assert f["size"][r] == mask.sum()
    assert f["colour"].shape[1] == 75 and f["texture"].shape[1] == 240
    # neighbours: exactly the pairs of labels that touch horizontally or vertically
    touching = {tuple(sorted(p)) for a, b in [(labels[:, :-1], labels[:, 1:]), (labels[:-1], labels[1:])]
                for p in zip(a.ravel(), b.ravel()) if p[0] != p[1]}
    assert {tuple(p) for p in f["neighbours"].tolist()} == touching


def test_size_and_fill_similarity_by_hand():
    # two regions: r0 = left 2x2 square, r1 = a 2x2 square at the far right; image 4 x 8 = 32 px
    labels = np.full((4, 8), 2)
    labels[:2, :2] = 0
    labels[:2, 6:] = 1
    f = region_features(np.zeros((4, 8, 3)), labels)
    s_size = _similarity("S", f, 0, 1, 32.0)
    s_fill = _similarity("F", f, 0, 1, 32.0)
    assert s_size == pytest.approx(1 - (4 + 4) / 32)  # eq. 4
    assert s_fill == pytest.approx(1 - (2 * 8 - 4 - 4) / 32)  # eq. 5: BB_01 is 2 x 8
    # identical colours and textures intersect fully: s_colour = s_texture = 1 (eq. 1, 3)
    assert _similarity("C", f, 0, 1, 32.0) == pytest.approx(1.0)
    assert _similarity("CTSF", f, 0, 1, 32.0) == pytest.approx(2 + s_size + s_fill)


def test_grouping_follows_algorithm_1(random_regions):
    image, labels = random_regions
    n = labels.max() + 1
    boxes, merges = hierarchical_grouping(image, labels, "CTSF")
    assert len(boxes) == 2 * n - 1 and len(merges) == n - 1  # connected: one region at the top
    np.testing.assert_array_equal(boxes[-1], [0, 0, 50, 40])
    for r, (i, j) in enumerate(merges):  # each merged box is the union of its parts
        np.testing.assert_array_equal(boxes[n + r], [*np.minimum(boxes[i][:2], boxes[j][:2]), *np.maximum(boxes[i][2:], boxes[j][2:])])
    # the first merge is the most similar pair of neighbours (brute force over all pairs)
    f = region_features(image, labels)
    sims = {tuple(p): _similarity("CTSF", f, p[0], p[1], labels.size) for p in f["neighbours"].tolist()}
    assert tuple(sorted(merges[0])) == max(sims, key=sims.get)
    # merged histograms are size-weighted averages (eq. 2): the union's own histogram
    union = np.where((labels == merges[0][0]) | (labels == merges[0][1]), 0, 1)
    whole = region_features(image, union)
    i, j = merges[0]
    expected = (f["size"][i] * f["colour"][i] + f["size"][j] * f["colour"][j]) / (f["size"][i] + f["size"][j])
    np.testing.assert_allclose(whole["colour"][0], expected)


def test_colour_spaces_are_in_unit_range():
    rng = np.random.default_rng(1)
    rgb = rng.random((16, 16, 3))
    for space, channels in [("rgb", 3), ("hsv", 3), ("lab", 3), ("rgi", 3), ("i", 1), ("h", 1)]:
        out = convert_colour_space(rgb, space)
        assert out.shape == (16, 16, channels) and out.min() >= 0 and out.max() <= 1, space
    labels = initial_regions(convert_colour_space(rgb, "lab"), k=50)
    assert labels.min() == 0 and np.array_equal(np.unique(labels), np.arange(labels.max() + 1))


def test_strategies_are_the_papers():
    assert len(STRATEGIES["single"]) == 1 and len(STRATEGIES["fast"]) == 8 and len(STRATEGIES["quality"]) == 80
    assert {s.colour_space for s in STRATEGIES["fast"]} == {"hsv", "lab"}
    assert {s.k for s in STRATEGIES["fast"]} == {50, 100}
    assert {s.similarity for s in STRATEGIES["fast"]} == {"CTSF", "TSF"}


def test_recall_floor_single_strategy():
    """Measured on these 6 generated 256 x 256 scenes (29 objects): recall 0.93 at IoU 0.5
    and 0.93 at IoU 0.7 with ~74 proposals per image. Floors: 0.85 and 0.8."""
    best = []
    for i in range(6):
        image, gt = _scene(i)
        proposals = selective_search(torch.from_numpy(image).permute(2, 0, 1), mode="single")
        assert proposals.shape[1] == 4 and len(proposals) > 20
        best.append(box_iou(gt, proposals).max(1).values)
    best = torch.cat(best)
    assert (best >= 0.5).float().mean() >= 0.85
    assert (best >= 0.7).float().mean() >= 0.8


def test_recall_floor_fast_mode_and_ranking():
    """R-CNN's "fast" mode (8 strategies) on 2 scenes (11 objects): measured recall 1.0 at IoU
    0.5 and 0.7 with ~450 proposals per image. Floors: 0.9 at both."""
    best = []
    for i in range(2):
        image, gt = _scene(i)
        proposals = selective_search(image, mode="fast", max_proposals=2000)
        assert len(torch.unique(proposals, dim=0)) == len(proposals)  # deduplicated
        assert (proposals[:, 2:] > proposals[:, :2]).all()
        assert proposals[:, 0].min() >= 0 and proposals[:, 2].max() <= 256
        best.append(box_iou(gt, proposals).max(1).values)
    best = torch.cat(best)
    assert (best >= 0.5).float().mean() >= 0.9
    assert (best >= 0.7).float().mean() >= 0.9


def test_inputs_grayscale_float_and_bad():
    image, _ = _scene(0, size=96)
    gray = torch.from_numpy(image.mean(-1).astype(np.uint8))[None]  # 1 x H x W
    assert selective_search(gray, "single").shape[1] == 4
    top = selective_search(image, "single", max_proposals=10)
    torch.testing.assert_close(top, selective_search(image, "single")[:10])  # deterministic ranking
    as_float = selective_search(image.astype(np.float32) / 255, "single")
    torch.testing.assert_close(as_float, selective_search(image, "single"))
    assert len(selective_search(image, "single", min_size=20)) < len(selective_search(image, "single"))
    with pytest.raises(ValueError, match="shape"):
        selective_search(np.zeros((4, 5, 6, 7)))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        selective_search(np.full((8, 8, 3), 7.0))
    with pytest.raises(ValueError, match="mode"):
        selective_search(image, mode="slow")
    with pytest.raises(ValueError, match="similarity"):
        Strategy("hsv", 100, "CX")
    with pytest.raises(ValueError, match="colour space"):
        Strategy("xyz", 100, "C")
    flat = selective_search(np.zeros((32, 32, 3), np.uint8), "single")  # one region: the image
    torch.testing.assert_close(flat, torch.tensor([[0.0, 0.0, 32.0, 32.0]]))


def test_many_images_in_worker_processes_equal_one_by_one():
    images = [_scene(i, size=64)[0] for i in range(3)]
    one_by_one = [selective_search(image, "single", max_proposals=20) for image in images]
    for workers in (0, 2):
        many = selective_search_many(images, num_workers=workers, progress=False, mode="single", max_proposals=20)
        assert len(many) == 3
        for a, b in zip(many, one_by_one):
            torch.testing.assert_close(a, b)
