"""Chapter 1: the sliding-window CNN, and how convolutionalizing it gives a fully convolutional net.

A :class:`PatchClassifier` labels the centre pixel of a ``window x window`` patch (convolutions,
then fully connected layers). Slid over every position it produces a dense label map
(:func:`sliding_window_scores`), and slid with several window sizes over an image it is a detector
(:func:`sliding_window_detect`) -- at the price of running the network once per window, although
neighbouring windows share almost all their pixels.

:meth:`PatchClassifier.convolutionalize` rewrites the fully connected layers as convolutions
(Long et al., CVPR 2015, Sec. 3.1): the result, a :class:`DensePatchClassifier`, takes a whole
image in one pass and computes every window's scores at the network's stride (4 here) with no
repeated work, and :func:`shift_and_stitch` (Sec. 3.2) fills in the stride-1 map.
"""
from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..backbones.vgg import linear_to_conv
from ..ops import Matcher, box_iou, nms, roi_align
from .common import Normalize, check_images, to_float_images

__all__ = [
    "PatchClassifier",
    "DensePatchClassifier",
    "extract_windows",
    "sliding_window_scores",
    "shift_and_stitch",
    "center_pad",
    "random_center_patches",
    "window_boxes",
    "label_windows",
    "crop_windows",
    "sliding_window_detect",
    "count_macs",
]


class PatchClassifier(nn.Module):
    """conv 5x5 -> ReLU -> max-pool 2 -> conv 5x5 -> ReLU -> max-pool 2 -> fc -> ReLU -> fc.

    The convolutions are unpadded, so the scores of a window depend on its pixels only -- the
    property that makes the convolutionalized network equal to the windows one by one.

    Args:
        num_classes: classes of the centre pixel (segmentation) or of the window (detection,
            class 0 = background).
        in_channels: image channels.
        window: side of the input patch; a multiple of 4 (two valid 5x5 convs and two pools).
        channels: output channels of the two convolutions.
        hidden: width of the first fully connected layer.
    Input ``N x C x window x window`` (uint8 or float in [0, 1]); output ``N x num_classes`` logits.
    """

    stride = 4  # the two max-pools

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 3,
        window: int = 32,
        channels: Sequence[int] = (16, 32),
        hidden: int = 128,
    ):
        super().__init__()
        if window % 4 != 0 or window < 16:
            raise ValueError(f"window must be a multiple of 4 and at least 16 (e.g. 32), got {window}")
        self.num_classes, self.in_channels, self.window = num_classes, in_channels, window
        c1, c2 = channels
        self.transform = Normalize(mean=(0.5,) * in_channels, std=(0.25,) * in_channels)
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, c1, 5), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(c1, c2, 5), nn.ReLU(inplace=True), nn.MaxPool2d(2),
        )
        self.feature_size = ((window - 4) // 2 - 4) // 2  # side of the map the fc layers read
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(c2 * self.feature_size**2, hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, patches: Tensor) -> Tensor:
        check_images(patches, self.in_channels, "PatchClassifier")
        if patches.shape[-2:] != (self.window, self.window):
            raise ValueError(
                f"PatchClassifier takes {self.window}x{self.window} patches, got {tuple(patches.shape[-2:])}; "
                "cut windows with extract_windows / crop_windows, or convolutionalize() it for whole images"
            )
        return self.classifier(self.features(self.transform(patches)))

    def convolutionalize(self) -> "DensePatchClassifier":
        """The same function as a fully convolutional network (weight surgery, FCN Sec. 3.1).

        fc1 reads a ``c2 x f x f`` map: it becomes an ``f x f`` convolution; fc2 a 1x1 convolution.
        The weights are copied, so later training of one does not change the other.
        """
        fc1, fc2 = self.classifier[1], self.classifier[3]
        c2 = self.features[3].out_channels
        return DensePatchClassifier(
            transform=copy.deepcopy(self.transform),
            features=copy.deepcopy(self.features),
            head=nn.Sequential(
                linear_to_conv(fc1, c2, self.feature_size), nn.ReLU(inplace=True), linear_to_conv(fc2, fc2.in_features, 1)
            ),
            window=self.window,
            stride=self.stride,
            in_channels=self.in_channels,
        )


class DensePatchClassifier(nn.Module):
    """A convolutionalized :class:`PatchClassifier`: one pass over an ``H x W`` image gives the scores
    of every window at the stride of the network, ``out[:, :, i, j]`` = the classifier on
    ``image[:, :, stride*i : stride*i + window, stride*j : stride*j + window]``.

    Output ``N x K x ((H - window) // stride + 1) x ((W - window) // stride + 1)``.
    """

    def __init__(self, transform: nn.Module, features: nn.Module, head: nn.Module, window: int, stride: int, in_channels: int):
        super().__init__()
        self.transform, self.features, self.head = transform, features, head
        self.window, self.stride, self.in_channels = window, stride, in_channels

    def forward(self, images: Tensor) -> Tensor:
        check_images(images, self.in_channels, "DensePatchClassifier")
        if min(images.shape[-2:]) < self.window:
            raise ValueError(
                f"the image ({tuple(images.shape[-2:])}) is smaller than one {self.window}x{self.window} window: "
                "pad it (center_pad) first"
            )
        return self.head(self.features(self.transform(images)))


def extract_windows(images: Tensor, window: int, stride: int) -> tuple[Tensor, tuple[int, int]]:
    """All ``window x window`` windows of ``N x C x H x W`` images at ``stride``, as one batch.

    Returns ``(windows, (rows, cols))`` with ``windows`` of shape ``N * rows * cols x C x window x window``
    ordered image, row, column (a view as long as possible; reshaping copies).
    """
    n, c = images.shape[:2]
    w = images.unfold(2, window, stride).unfold(3, window, stride)  # N, C, rows, cols, win, win
    rows, cols = w.shape[2:4]
    return w.permute(0, 2, 3, 1, 4, 5).reshape(n * rows * cols, c, window, window), (rows, cols)


@torch.no_grad()
def sliding_window_scores(
    classifier: PatchClassifier, images: Tensor, stride: int = 1, batch_size: int = 2048, progress: bool = False
) -> Tensor:
    """The classifier run on every window at ``stride``, each window its own forward pass (batched):
    ``N x K x rows x cols`` scores, ``rows = (H - window) // stride + 1``.

    Windows are processed ``batch_size`` at a time (the only loop); the point of the chapter is that
    this repeats almost all of the work for neighbouring windows.
    """
    n = images.shape[0]
    windows, (rows, cols) = extract_windows(images, classifier.window, stride)
    batches = range(0, len(windows), batch_size)
    if progress:
        from tqdm.auto import tqdm

        batches = tqdm(batches, desc=f"{len(windows)} windows", unit="batch")
    scores = torch.cat([classifier(windows[i : i + batch_size]) for i in batches])
    return scores.view(n, rows, cols, -1).permute(0, 3, 1, 2)


@torch.no_grad()
def shift_and_stitch(dense: DensePatchClassifier, images: Tensor) -> Tensor:
    """Stride-1 scores from a stride-s network: run it on the s x s shifted copies of the input and
    interleave the outputs (FCN Sec. 3.2, "shift-and-stitch"). Equals every window at stride 1.

    Output ``N x K x (H - window + 1) x (W - window + 1)``.
    """
    s, win = dense.stride, dense.window
    n, _, h, w = images.shape
    out_h, out_w = h - win + 1, w - win + 1
    out = None
    for dy in range(s):
        for dx in range(s):
            if dy >= out_h or dx >= out_w:
                continue
            scores = dense(images[..., dy:, dx:])
            if out is None:
                out = scores.new_zeros(n, scores.shape[1], out_h, out_w)
            out[..., dy::s, dx::s] = scores
    return out


def center_pad(images: Tensor, window: int, mode: str = "reflect") -> Tensor:
    """Pad so that a window centred on every pixel fits: windows at stride 1 over the padded image
    then correspond one to one to the pixels of the original (the window's centre is at
    ``window // 2``)."""
    before, after = window // 2, window - 1 - window // 2
    return F.pad(images, (before, after, before, after), mode=mode)


def random_center_patches(
    images: Tensor, masks: Tensor, window: int, num: int, generator: torch.Generator | None = None, ignore_index: int = 255
) -> tuple[Tensor, Tensor]:
    """``num`` random ``window x window`` patches and the label of their centre pixel (skipping
    ``ignore_index``), gathered in one indexing operation: training data for the patch classifier."""
    n, c, h, w = images.shape
    padded = center_pad(images.float(), window)
    labelled = (masks != ignore_index).view(-1).nonzero().squeeze(1)
    if len(labelled) == 0:
        raise ValueError("every pixel of the masks is ignore_index: no patch can be labelled")
    pick = labelled[torch.randint(len(labelled), (num,), generator=generator)]
    b, y, x = pick // (h * w), pick % (h * w) // w, pick % w
    r = torch.arange(window)
    rows = (y[:, None] + r)[:, :, None]  # (num, window, 1)
    cols = (x[:, None] + r)[:, None, :]  # (num, 1, window)
    patches = padded.permute(0, 2, 3, 1)[b[:, None, None], rows, cols]  # num, window, window, C
    patches = patches.permute(0, 3, 1, 2)
    if images.dtype == torch.uint8:
        patches = patches.round().to(torch.uint8)
    return patches.contiguous(), masks.view(-1)[pick]


def window_boxes(
    image_size: tuple[int, int], window_sizes: Sequence[int], stride: int, aspect_ratios: Sequence[float] = (1.0,)
) -> Tensor:
    """Every window of each size and aspect ratio (height / width) at ``stride`` that fits in the image,
    ``K x 4`` (x1, y1, x2, y2), ordered by size, ratio, row, column. A window of size s and ratio r is
    ``s / sqrt(r)`` wide and ``s * sqrt(r)`` high (its area is s^2, as for Faster R-CNN's anchors)."""
    h, w = image_size
    boxes = []
    for size in window_sizes:
        for ratio in aspect_ratios:
            bh, bw = round(size * ratio**0.5), round(size / ratio**0.5)
            if bh > h or bw > w:
                continue
            ys = torch.arange(0, h - bh + 1, stride, dtype=torch.float32)
            xs = torch.arange(0, w - bw + 1, stride, dtype=torch.float32)
            y, x = torch.meshgrid(ys, xs, indexing="ij")
            y, x = y.reshape(-1), x.reshape(-1)
            boxes.append(torch.stack([x, y, x + bw, y + bh], dim=1))
    return torch.cat(boxes) if boxes else torch.zeros(0, 4)


def label_windows(
    windows: Tensor, gt_boxes: Tensor, gt_labels: Tensor, fg_iou: float = 0.5, bg_iou: float = 0.3
) -> Tensor:
    """Training label of each window: the class of the ground truth it overlaps with IoU >= ``fg_iou``,
    0 (background) below ``bg_iou`` with every object, -1 (ignored) in between."""
    if len(gt_boxes) == 0:
        return torch.zeros(len(windows), dtype=torch.int64)
    matched = Matcher(fg_iou, bg_iou)(box_iou(gt_boxes, windows))
    labels = gt_labels[matched.clamp(min=0)].to(torch.int64)
    labels[matched == Matcher.BELOW_LOW_THRESHOLD] = 0
    labels[matched == Matcher.BETWEEN_THRESHOLDS] = -1
    return labels


def crop_windows(image: Tensor, boxes: Tensor, window: int) -> Tensor:
    """The pixels of each box resampled to ``window x window`` (bilinear, RoI Align), ``K x C x win x win``.

    A box of exactly ``window`` pixels comes out as the plain crop. uint8 images give floats in [0, 1].
    """
    image = to_float_images(image)
    return roi_align(image[None], [boxes.to(image.dtype)], output_size=window, sampling_ratio=1, aligned=True)


@torch.no_grad()
def sliding_window_detect(
    classifier: PatchClassifier,
    image: Tensor,
    window_sizes: Sequence[int],
    stride: int,
    aspect_ratios: Sequence[float] = (1.0,),
    score_thresh: float = 0.5,
    nms_thresh: float = 0.3,
    batch_size: int = 1024,
) -> dict[str, Tensor]:
    """Detection by classification: every window (of each size and ratio, at ``stride``) is resized to the
    classifier's input and scored; windows scoring ``1 - p(background) >= score_thresh`` are kept and
    non-maximum suppression removes the overlapping duplicates.

    Returns ``boxes`` (K x 4), ``scores``, ``labels`` (the best non-background class), and
    ``num_windows`` (how many forward passes the image cost).
    """
    boxes = window_boxes(tuple(image.shape[-2:]), window_sizes, stride, aspect_ratios)
    probs = []
    for i in range(0, len(boxes), batch_size):
        patches = crop_windows(image, boxes[i : i + batch_size], classifier.window)
        probs.append(classifier(patches).softmax(dim=1))
    probs = torch.cat(probs) if probs else torch.zeros(0, classifier.num_classes)
    scores = 1 - probs[:, 0]
    labels = probs[:, 1:].argmax(dim=1) + 1
    keep = (scores >= score_thresh).nonzero().squeeze(1)
    boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
    keep = nms(boxes, scores, nms_thresh)
    return {
        "boxes": boxes[keep], "scores": scores[keep], "labels": labels[keep],
        "num_windows": torch.tensor(len(probs)), "num_before_nms": torch.tensor(len(boxes)),
    }


@torch.no_grad()
def count_macs(model: nn.Module, inputs: Tensor) -> int:
    """Multiply-accumulates of the convolutions and fully connected layers of one forward pass."""
    total = 0

    def hook(module, args, output):
        nonlocal total
        if isinstance(module, nn.Conv2d):
            k = module.in_channels // module.groups * module.kernel_size[0] * module.kernel_size[1]
            total += output.numel() * k
        elif isinstance(module, nn.Linear):
            total += output.numel() * module.in_features

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    try:
        model(inputs)
    finally:
        for h in handles:
            h.remove()
    return total
