"""Chapter 1: window by window equals the convolutionalized pass; windows, labels, crops, detection."""
import pytest
import torch
from torch import nn

from course_lib.ops import box_iou
from course_lib.segmentation import (
    PatchClassifier,
    center_pad,
    count_macs,
    crop_windows,
    extract_windows,
    label_windows,
    random_center_patches,
    shift_and_stitch,
    sliding_window_detect,
    sliding_window_scores,
    window_boxes,
)


@pytest.fixture
def classifier():
    torch.manual_seed(0)
    return PatchClassifier(num_classes=4, window=32, channels=(8, 16), hidden=32).eval()


def test_windows_one_by_one_with_a_python_loop(classifier):
    """The oracle: a literal loop over windows, one forward pass each."""
    image = torch.rand(1, 3, 44, 41)
    scores = sliding_window_scores(classifier, image, stride=3, batch_size=7)
    assert scores.shape == (1, 4, 5, 4)
    with torch.no_grad():
        for i in range(5):
            for j in range(4):
                window = image[:, :, 3 * i : 3 * i + 32, 3 * j : 3 * j + 32]
                torch.testing.assert_close(scores[0, :, i, j], classifier(window)[0])


def test_convolutionalized_pass_equals_every_window(classifier):
    dense = classifier.convolutionalize().eval()
    images = torch.rand(2, 3, 77, 64)
    with torch.no_grad():
        one_pass = dense(images)
    windows = sliding_window_scores(classifier, images, stride=classifier.stride)
    assert one_pass.shape == windows.shape == (2, 4, (77 - 32) // 4 + 1, (64 - 32) // 4 + 1)
    torch.testing.assert_close(one_pass, windows, atol=1e-5, rtol=1e-5)


def test_shift_and_stitch_equals_every_window_at_stride_1(classifier):
    dense = classifier.convolutionalize().eval()
    images = torch.rand(1, 3, 45, 50)
    stitched = shift_and_stitch(dense, images)
    windows = sliding_window_scores(classifier, images, stride=1)
    assert stitched.shape == windows.shape == (1, 4, 14, 19)
    torch.testing.assert_close(stitched, windows, atol=1e-5, rtol=1e-5)


def test_convolutionalize_copies_weights(classifier):
    dense = classifier.convolutionalize()
    with torch.no_grad():
        classifier.classifier[1].weight.zero_()
    assert dense.head[0].weight.abs().sum() > 0


def test_center_pad_gives_one_window_per_pixel(classifier):
    image = torch.rand(1, 3, 20, 23)
    padded = center_pad(image, 32)
    scores = sliding_window_scores(classifier, padded, stride=1)
    assert scores.shape[-2:] == (20, 23)
    windows, _ = extract_windows(padded, 32, 1)
    # the window of pixel (y, x) has that pixel at its centre (32 // 2)
    torch.testing.assert_close(windows.view(20, 23, 3, 32, 32)[7, 11, :, 16, 16], image[0, :, 7, 11])


def test_random_center_patches_are_labelled_by_their_centre():
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 5, (2, 3, 30, 40), generator=g, dtype=torch.uint8)
    masks = images[:, 0].long()  # the label is the value of channel 0
    masks[0, :, :5] = 255
    patches, labels = random_center_patches(images, masks, window=16, num=200, generator=g)
    assert patches.shape == (200, 3, 16, 16) and patches.dtype == torch.uint8
    assert torch.equal(patches[:, 0, 8, 8].long(), labels)
    assert (labels != 255).all()


def test_window_boxes_and_labels():
    boxes = window_boxes((40, 50), window_sizes=[16, 32, 64], stride=8)
    n16 = len(range(0, 25, 8)) * len(range(0, 35, 8))
    n32 = len(range(0, 9, 8)) * len(range(0, 19, 8))
    assert len(boxes) == n16 + n32  # 64 does not fit
    assert torch.equal(boxes[0], torch.tensor([0.0, 0, 16, 16])) and torch.equal(boxes[n16], torch.tensor([0.0, 0, 32, 32]))
    gt = torch.tensor([[0.0, 0, 16, 16], [20, 8, 52, 40]])
    tall = window_boxes((40, 50), window_sizes=[16], stride=8, aspect_ratios=[4.0])  # 8 wide, 32 high
    assert torch.equal(tall[:2], torch.tensor([[0.0, 0, 8, 32], [8, 0, 16, 32]])) and len(tall) == 2 * 6
    labels = label_windows(boxes, gt, torch.tensor([1, 2]))
    iou = box_iou(gt, boxes).max(0).values
    assert (labels[iou >= 0.5] > 0).all() and (labels[iou < 0.3] == 0).all() and (labels[(iou >= 0.3) & (iou < 0.5)] == -1).all()
    assert labels[0] == 1


def test_crop_windows_of_the_window_size_are_plain_crops():
    image = torch.randint(0, 256, (3, 40, 50), dtype=torch.uint8)
    boxes = torch.tensor([[0.0, 0, 16, 16], [10, 7, 26, 23]])
    crops = crop_windows(image, boxes, 16)
    torch.testing.assert_close(crops[1], image[:, 7:23, 10:26].float() / 255)
    assert crop_windows(image, torch.tensor([[0.0, 0, 32, 32]]), 16).shape == (1, 3, 16, 16)


class _TemplateMatcher(nn.Module):
    """A 'classifier' scoring a window by how close it looks (resampled) to a template: a known answer."""

    window, num_classes = 16, 2

    def __init__(self, template):
        super().__init__()
        self.template = template

    def forward(self, patches):
        distance = (patches - self.template).pow(2).mean(dim=(1, 2, 3))
        return torch.stack([torch.zeros_like(distance), 5 - 100 * distance], dim=1)


def test_sliding_window_detect_finds_the_object():
    image = torch.zeros(3, 64, 64)
    image[:, 20:44, 8:32] = torch.linspace(0.2, 1.0, 24)  # a 24 x 24 object: a horizontal ramp
    obj = torch.tensor([[8.0, 20, 32, 44]])
    matcher = _TemplateMatcher(crop_windows(image, obj, 16)[0])
    out = sliding_window_detect(matcher, image, window_sizes=[16, 24, 32], stride=4, score_thresh=0.5, nms_thresh=0.3)
    assert out["num_windows"] == len(window_boxes((64, 64), [16, 24, 32], 4))
    assert out["num_before_nms"] > len(out["boxes"]) >= 1  # overlapping windows fire, NMS keeps one per object
    assert torch.equal(out["boxes"][0], obj[0]) and out["labels"][0] == 1
    assert (box_iou(out["boxes"], out["boxes"]).triu(1) <= 0.3).all()
    # with stride 16 no window lands on the object: the best IoU of any window drops
    coarse = window_boxes((64, 64), [16, 24, 32], 16)
    assert box_iou(obj, coarse).max() < 0.7


def test_count_macs(classifier):
    one = count_macs(classifier, torch.rand(1, 3, 32, 32))
    expected = 28 * 28 * 8 * (3 * 25) + 10 * 10 * 16 * (8 * 25) + 16 * 5 * 5 * 32 + 32 * 4
    assert one == expected
    dense = classifier.convolutionalize()
    assert count_macs(dense, torch.rand(1, 3, 32, 32)) == expected  # one window: the same network


def test_bad_inputs(classifier):
    with pytest.raises(ValueError, match="32x32 patches"):
        classifier(torch.rand(2, 3, 30, 30))
    with pytest.raises(ValueError, match="smaller than one"):
        classifier.convolutionalize()(torch.rand(1, 3, 20, 40))
    with pytest.raises(ValueError, match="multiple of 4"):
        PatchClassifier(2, window=30)
