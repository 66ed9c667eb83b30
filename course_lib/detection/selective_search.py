"""Selective search: class-agnostic region proposals by hierarchical grouping.

Uijlings, van de Sande, Gevers and Smeulders, "Selective Search for Object Recognition",
IJCV 2013. The proposals R-CNN and Fast R-CNN classify.

1. *Initial regions* (section 3.1): Felzenszwalb and Huttenlocher's graph-based
   segmentation (``skimage.segmentation.felzenszwalb``) over-segments the image.
2. *Hierarchical grouping* (Algorithm 1): repeatedly merge the two most similar
   neighbouring regions until one region is left. Every region ever formed -- the
   initial ones and every merge -- is a proposal (its bounding box).
3. *Diversification* (section 3.2): repeat 1-2 with several colour spaces, thresholds
   ``k`` and similarity measures, and pool the boxes, ranked by the pseudo-random
   hierarchy ordering of section 3.3 and deduplicated.

The similarity of regions r_i, r_j (section 3.2, eq. 1-5; all in [0, 1]):

* ``s_colour = sum_k min(c_i^k, c_j^k)`` -- histogram intersection of 25-bin colour
  histograms per channel, L1-normalised (eq. 1);
* ``s_texture = sum_k min(t_i^k, t_j^k)`` -- the same on SIFT-like texture histograms:
  gaussian derivatives (sigma = 1) in 8 orientations per channel, 10 bins each (eq. 3);
* ``s_size = 1 - (size(r_i) + size(r_j)) / size(im)`` -- merge small regions first (eq. 4);
* ``s_fill = 1 - (size(BB_ij) - size(r_i) - size(r_j)) / size(im)`` -- merge regions
  that fill each other's gaps (eq. 5);

and the histograms of a merged region are the size-weighted averages of its parts
(eq. 2). Region statistics live in numpy arrays: histograms are computed with one
``np.bincount`` per channel and each merge updates the similarities to all
neighbours in one vectorised step. Only the merge loop itself is sequential.
"""
from __future__ import annotations

import heapq
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from functools import partial

import numpy as np
import torch
from scipy import ndimage
from skimage import color as skcolor
from skimage.segmentation import felzenszwalb
from tqdm.auto import tqdm

__all__ = [
    "Strategy",
    "STRATEGIES",
    "convert_colour_space",
    "initial_regions",
    "region_features",
    "hierarchical_grouping",
    "selective_search",
    "selective_search_many",
]

COLOUR_BINS = 25  # per channel (section 3.2, "colour similarity")
TEXTURE_ORIENTATIONS = 8  # gaussian derivative orientations (section 3.2, "texture similarity")
TEXTURE_BINS = 10  # per orientation and channel
COLOUR_SPACES = ("rgb", "hsv", "lab", "rgi", "i", "h")
MEASURES = "CTSF"  # colour, texture, size, fill


@dataclass(frozen=True)
class Strategy:
    """One diversification strategy (section 3.2): a colour space, the Felzenszwalb
    threshold ``k`` (also its minimum segment size, as in the authors' code) and the
    similarity measures summed, e.g. ``"CTSF"`` for s_colour + s_texture + s_size + s_fill."""

    colour_space: str = "hsv"
    k: int = 100
    similarity: str = "CTSF"

    def __post_init__(self):
        if self.colour_space not in COLOUR_SPACES:
            raise ValueError(
                f"Unknown colour space {self.colour_space!r}; choose one of {COLOUR_SPACES}."
            )
        if not self.similarity or set(self.similarity) - set(MEASURES):
            raise ValueError(
                f"similarity={self.similarity!r} must be a non-empty combination of the letters "
                f"{MEASURES!r} (colour, texture, size, fill), e.g. 'CTSF' or 'TSF'."
            )
        if self.k <= 0:
            raise ValueError(f"The Felzenszwalb threshold k must be positive, got {self.k}.")


def _strategies(spaces, ks, sims):
    return tuple(Strategy(c, k, s) for c in spaces for k in ks for s in sims)


#: The paper's settings (section 5.2): a single strategy, the "fast" mode used by R-CNN
#: (8 strategies) and the "quality" mode (80 strategies).
STRATEGIES: dict[str, tuple[Strategy, ...]] = {
    "single": _strategies(["hsv"], [100], ["CTSF"]),
    "fast": _strategies(["hsv", "lab"], [50, 100], ["CTSF", "TSF"]),
    "quality": _strategies(["hsv", "lab", "rgi", "h", "i"], [50, 100, 150, 300], ["CTSF", "TSF", "F", "S"]),
}


# ----------------------------------------------------------------------------------
# Input and colour spaces
# ----------------------------------------------------------------------------------
def _as_rgb_float(image) -> np.ndarray:
    """An HxWx3 float64 array in [0, 1] from a CxHxW tensor / HxW(xC) array, uint8 or float."""
    if isinstance(image, torch.Tensor):
        array = image.detach().cpu()
        if array.ndim == 3 and array.shape[0] in (1, 3, 4):
            array = array.permute(1, 2, 0)
        array = array.numpy()
    else:
        array = np.asarray(image)
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3 or array.shape[-1] not in (1, 3, 4):
        raise ValueError(
            f"selective_search expects an RGB or grayscale image (CxHxW tensor or HxWxC array), "
            f"got shape {tuple(np.shape(image))}."
        )
    if array.shape[0] < 2 or array.shape[1] < 2:
        raise ValueError(f"The image is too small for selective search: {array.shape[:2]} pixels.")
    if array.shape[-1] == 1:  # grayscale: the same value in R, G and B
        array = np.repeat(array, 3, axis=-1)
    array = array[..., :3]
    if array.dtype == np.uint8:
        return array.astype(np.float64) / 255.0
    array = array.astype(np.float64)
    if array.max(initial=0.0) > 1.0 + 1e-6 or array.min(initial=0.0) < -1e-6:
        raise ValueError(
            "A floating-point image must be in [0, 1]; pass uint8 for 0..255 images "
            f"(got values in [{array.min():.3g}, {array.max():.3g}])."
        )
    return array


def convert_colour_space(rgb: np.ndarray, space: str) -> np.ndarray:
    """An HxWxC image in ``space`` with every channel scaled to [0, 1] (section 3.2, Table 1)."""
    if space == "rgb":
        return rgb
    if space == "hsv":
        return skcolor.rgb2hsv(rgb)
    if space == "lab":
        lab = skcolor.rgb2lab(rgb)
        return np.stack([lab[..., 0] / 100.0, (lab[..., 1] + 128.0) / 255.0, (lab[..., 2] + 128.0) / 255.0], -1).clip(0, 1)
    intensity = rgb.mean(-1)
    if space == "rgi":  # normalised r, g and intensity
        total = rgb.sum(-1).clip(min=1e-8)
        return np.stack([rgb[..., 0] / total, rgb[..., 1] / total, intensity], -1)
    if space == "i":
        return intensity[..., None]
    if space == "h":
        return skcolor.rgb2hsv(rgb)[..., :1]
    raise ValueError(f"Unknown colour space {space!r}; choose one of {COLOUR_SPACES}.")


# ----------------------------------------------------------------------------------
# Initial regions and their statistics
# ----------------------------------------------------------------------------------
def initial_regions(image_cs: np.ndarray, k: int, sigma: float = 0.8) -> np.ndarray:
    """Felzenszwalb-Huttenlocher segmentation (section 3.1): an HxW int64 label map 0..n-1."""
    labels = felzenszwalb(image_cs, scale=k, sigma=sigma, min_size=k, channel_axis=-1).astype(np.int64)
    used = np.bincount(labels.ravel()) > 0
    if not used.all():  # make the labels consecutive, 0..n-1
        labels = (np.cumsum(used) - 1)[labels]
    return labels


def _histograms(labels: np.ndarray, bins: np.ndarray, num_regions: int, num_bins: int) -> np.ndarray:
    """Per-region histograms: ``bins`` is (F, H, W) bin indices of F features; result (n, F*num_bins)."""
    num_features = bins.shape[0]
    hist = np.zeros((num_regions, num_features * num_bins))
    for f in range(num_features):  # a handful of features, each one vectorised bincount
        index = labels.ravel() * num_bins + bins[f].ravel()
        hist[:, f * num_bins:(f + 1) * num_bins] = np.bincount(index, minlength=num_regions * num_bins).reshape(num_regions, num_bins)
    return hist / hist.sum(1, keepdims=True).clip(min=1e-12)  # L1 normalisation


def colour_bins(image_cs: np.ndarray) -> np.ndarray:
    """25 bins per channel over [0, 1]: a (C, H, W) array of bin indices."""
    return np.clip((image_cs * COLOUR_BINS).astype(np.int64), 0, COLOUR_BINS - 1).transpose(2, 0, 1)


def texture_bins(image_cs: np.ndarray) -> np.ndarray:
    """SIFT-like texture (section 3.2): gaussian derivatives with sigma = 1 in 8
    orientations per channel (steered from the x and y derivatives, half-wave rectified
    so that opposite orientations differ), each response binned into 10 bins over
    [0, its maximum]. A (C*8, H, W) array of bin indices."""
    angles = np.arange(TEXTURE_ORIENTATIONS) * (2 * np.pi / TEXTURE_ORIENTATIONS)
    out = []
    for c in range(image_cs.shape[-1]):
        channel = image_cs[..., c]
        dy = ndimage.gaussian_filter(channel, sigma=1.0, order=(1, 0))
        dx = ndimage.gaussian_filter(channel, sigma=1.0, order=(0, 1))
        response = np.maximum(np.cos(angles)[:, None, None] * dx + np.sin(angles)[:, None, None] * dy, 0.0)
        top = response.reshape(TEXTURE_ORIENTATIONS, -1).max(1).clip(min=1e-12)[:, None, None]
        out.append(np.clip((response / top * TEXTURE_BINS).astype(np.int64), 0, TEXTURE_BINS - 1))
    return np.concatenate(out, 0)


def region_features(image_cs: np.ndarray, labels: np.ndarray, bins: tuple[np.ndarray, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """Sizes, bounding boxes (x1, y1, x2, y2; x2, y2 exclusive), colour and texture
    histograms of the regions of ``labels``, and the pairs of 4-connected neighbours.
    ``bins``: the (colour_bins, texture_bins) of ``image_cs`` if already computed."""
    colour, texture = bins if bins is not None else (colour_bins(image_cs), texture_bins(image_cs))
    n = int(labels.max()) + 1
    size = np.bincount(labels.ravel(), minlength=n).astype(np.float64)
    rows, cols = np.indices(labels.shape)
    index = np.arange(n)
    box = np.stack([ndimage.minimum(cols, labels, index), ndimage.minimum(rows, labels, index),
                    ndimage.maximum(cols, labels, index) + 1, ndimage.maximum(rows, labels, index) + 1], 1).astype(np.float64)
    pairs = np.concatenate([
        np.stack([labels[:, :-1].ravel(), labels[:, 1:].ravel()], 1),
        np.stack([labels[:-1, :].ravel(), labels[1:, :].ravel()], 1),
    ])
    pairs = pairs[pairs[:, 0] != pairs[:, 1]]
    code = np.unique(pairs.min(1) * n + pairs.max(1))  # each unordered pair once
    pairs = np.stack([code // n, code % n], 1)
    return {
        "size": size,
        "box": box,
        "colour": _histograms(labels, colour, n, COLOUR_BINS),
        "texture": _histograms(labels, texture, n, TEXTURE_BINS),
        "neighbours": pairs,
    }


# ----------------------------------------------------------------------------------
# Hierarchical grouping (Algorithm 1)
# ----------------------------------------------------------------------------------
def _similarity(measures: str, f: dict, i, j, image_size: float) -> np.ndarray:
    """s(r_i, r_j) = sum of the chosen measures (eq. 1, 3, 4, 5) for index arrays i, j."""
    s = np.zeros(np.broadcast(i, j).shape)
    if "C" in measures:
        s += np.minimum(f["colour"][i], f["colour"][j]).sum(-1)
    if "T" in measures:
        s += np.minimum(f["texture"][i], f["texture"][j]).sum(-1)
    if "S" in measures:
        s += 1.0 - (f["size"][i] + f["size"][j]) / image_size
    if "F" in measures:
        bi, bj = f["box"][i], f["box"][j]
        bb = (np.maximum(bi[..., 2], bj[..., 2]) - np.minimum(bi[..., 0], bj[..., 0])) * (
            np.maximum(bi[..., 3], bj[..., 3]) - np.minimum(bi[..., 1], bj[..., 1]))
        s += 1.0 - (bb - f["size"][i] - f["size"][j]) / image_size
    return s


def hierarchical_grouping(image_cs: np.ndarray, labels: np.ndarray, similarity: str = "CTSF",
                          bins=None) -> tuple[np.ndarray, np.ndarray]:
    """Algorithm 1 of the paper on one segmentation ``labels`` (n regions).

    Returns ``(boxes, merges)``: the boxes (m, 4) (xyxy, float64) of all m <= 2n-1 regions of
    the hierarchy in the order they were formed -- the n initial regions first, the top of
    the hierarchy last -- and ``merges`` (m - n, 2): region ``n + r`` is the union of the
    two regions ``merges[r]``."""
    f = region_features(image_cs, labels, bins)
    n = len(f["size"])
    total = 2 * n - 1  # a binary hierarchy over n leaves has at most 2n-1 nodes
    for key in ("size", "box", "colour", "texture"):  # room for the merged regions
        grown = np.zeros((total,) + f[key].shape[1:])
        grown[:n] = f[key]
        f[key] = grown
    image_size = float(labels.size)

    neighbours = [set() for _ in range(total)]
    a, b = f["neighbours"].T
    for i, j in zip(a.tolist(), b.tolist()):
        neighbours[i].add(j)
        neighbours[j].add(i)
    sims = _similarity(similarity, f, a, b, image_size)
    heap = list(zip((-sims).tolist(), a.tolist(), b.tolist()))  # max-heap of similarities
    heapq.heapify(heap)

    alive = np.zeros(total, dtype=bool)
    alive[:n] = True
    merges = []
    t = n
    while heap:
        _, i, j = heapq.heappop(heap)
        if not (alive[i] and alive[j]):  # a stale entry: r_i or r_j was merged already
            continue
        # r_t = r_i U r_j: sizes add, boxes join, histograms average by size (eq. 2)
        si, sj = f["size"][i], f["size"][j]
        f["size"][t] = si + sj
        f["box"][t] = np.concatenate([np.minimum(f["box"][i][:2], f["box"][j][:2]),
                                      np.maximum(f["box"][i][2:], f["box"][j][2:])])
        f["colour"][t] = (si * f["colour"][i] + sj * f["colour"][j]) / (si + sj)
        f["texture"][t] = (si * f["texture"][i] + sj * f["texture"][j]) / (si + sj)
        alive[i] = alive[j] = False
        alive[t] = True
        merges.append((i, j))
        around = (neighbours[i] | neighbours[j]) - {i, j}
        for k in around:
            neighbours[k] -= {i, j}
            neighbours[k].add(t)
        neighbours[t] = around
        if around:
            others = np.fromiter(around, dtype=np.int64, count=len(around))
            new = _similarity(similarity, f, t, others, image_size)  # all neighbours at once
            for s, k in zip((-new).tolist(), others.tolist()):
                heapq.heappush(heap, (s, k, t))
        t += 1
    return f["box"][:t], np.array(merges, dtype=np.int64).reshape(-1, 2)


# ----------------------------------------------------------------------------------
# Diversification and ranking
# ----------------------------------------------------------------------------------
def selective_search(
    image,
    mode: str | tuple[Strategy, ...] = "fast",
    max_proposals: int | None = 2000,
    min_size: int = 0,
    sigma: float = 0.8,
    seed: int = 0,
) -> torch.Tensor:
    """Selective search proposals for one image, best-ranked first.

    Args:
        image: CxHxW tensor (as the course's datasets return) or HxWxC array, uint8
            0..255 or float in [0, 1]; RGB or grayscale.
        mode: ``"single"``, ``"fast"`` (R-CNN's setting), ``"quality"``, or a tuple of
            :class:`Strategy`.
        max_proposals: keep the best-ranked ones (R-CNN used about 2000); ``None``: all.
        min_size: drop boxes narrower or shorter than this many pixels.
        seed: for the pseudo-random ranking (section 3.3).

    Returns:
        (N, 4) float32 boxes ``(x1, y1, x2, y2)`` in pixels, ``x2``/``y2`` exclusive.

    Ranking (section 3.3): within a hierarchy a region's position ``i`` counts from the
    top (the whole image has i = 1); it gets the value ``v_i = RND x i`` with RND
    uniform in [0, 1]. The boxes of all strategies are sorted by ``v``, so large regions
    of every strategy come first in random order, and duplicates keep their best rank.
    """
    strategies = STRATEGIES.get(mode) if isinstance(mode, str) else tuple(mode)
    if not strategies:
        raise ValueError(f"Unknown selective search mode {mode!r}: use one of {list(STRATEGIES)} or a tuple of Strategy.")
    rgb = _as_rgb_float(image)
    rng = np.random.default_rng(seed)
    boxes, values = [], []
    converted = {}  # colour space -> (image, its colour and texture bins), shared by strategies
    for strategy in strategies:
        if strategy.colour_space not in converted:
            image_cs = convert_colour_space(rgb, strategy.colour_space)
            converted[strategy.colour_space] = (image_cs, (colour_bins(image_cs), texture_bins(image_cs)))
        image_cs, bins = converted[strategy.colour_space]
        labels = initial_regions(image_cs, strategy.k, sigma)
        hierarchy, _ = hierarchical_grouping(image_cs, labels, strategy.similarity, bins)
        position = np.arange(len(hierarchy), 0, -1, dtype=np.float64)  # top of the hierarchy: 1
        boxes.append(hierarchy)
        values.append(rng.random(len(hierarchy)) * position)
    boxes = np.concatenate(boxes)
    values = np.concatenate(values)
    order = np.argsort(values, kind="stable")
    boxes = boxes[order]
    _, first = np.unique(boxes, axis=0, return_index=True)  # duplicates keep their best rank
    boxes = boxes[np.sort(first)]
    if min_size > 0:
        keep = ((boxes[:, 2] - boxes[:, 0]) >= min_size) & ((boxes[:, 3] - boxes[:, 1]) >= min_size)
        boxes = boxes[keep]
    if max_proposals is not None:
        boxes = boxes[:max_proposals]
    return torch.as_tensor(boxes, dtype=torch.float32)


def selective_search_many(images, num_workers: int = 0, progress: bool = True, **kwargs) -> list[torch.Tensor]:
    """:func:`selective_search` of every image of ``images`` (keyword arguments passed on), in
    ``num_workers`` processes (0: in this one). Each image is independent and the algorithm
    runs on the CPU in one thread, so a dataset's proposals scale with the cores."""
    images = [image.as_subclass(torch.Tensor) if isinstance(image, torch.Tensor) else image for image in images]
    search = partial(selective_search, **kwargs)
    if num_workers <= 0:
        return [search(image) for image in tqdm(images, desc="selective search", disable=not progress)]
    with ProcessPoolExecutor(num_workers) as pool:
        return list(tqdm(pool.map(search, images), total=len(images), desc="selective search", disable=not progress))
