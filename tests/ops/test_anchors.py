"""course_lib.ops.AnchorGenerator / ImageList == torchvision's for the FPN and C4 configurations."""
import math

import pytest
import torch
from torchvision.models.detection.anchor_utils import AnchorGenerator as TVAnchorGenerator

from course_lib.ops import AnchorGenerator, ImageList

FPN = (((32,), (64,), (128,), (256,), (512,)), ((0.5, 1.0, 2.0),) * 5)  # fasterrcnn_resnet50_fpn
C4 = (((32, 64, 128, 256, 512),), ((0.5, 1.0, 2.0),))
DEFAULT = (((128, 256, 512),), ((0.5, 1.0, 2.0),))  # Faster R-CNN's 9 anchors


def conv_out(n, stride):
    """Side of a ResNet feature map of the given stride (each stride-2 step rounds up)."""
    for _ in range(int(math.log2(stride))):
        n = (n + 1) // 2
    return n


def feature_maps(height, width, strides, batch=2, dtype=torch.float32):
    return [torch.zeros(batch, 8, conv_out(height, s), conv_out(width, s), dtype=dtype) for s in strides]


def same(actual, expected):
    torch.testing.assert_close(actual, expected, rtol=0, atol=0)


# padded batch sizes: divisible by 32 (torchvision's transform), odd, tiny, landscape/portrait
SIZES = [(800, 1216), (608, 800), (801, 1203), (333, 517), (64, 64), (97, 33)]


@pytest.mark.parametrize("height,width", SIZES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fpn_configuration_equals_torchvision(height, width, dtype):
    ours, theirs = AnchorGenerator(*FPN), TVAnchorGenerator(*FPN)
    # a batch of 2 images of different sizes, padded to (height, width)
    images = ImageList(torch.zeros(2, 3, height, width), [(height, width), (height - 20, width // 2)])
    maps = feature_maps(height, width, (4, 8, 16, 32, 64), dtype=dtype)
    a, b = ours(images, maps), theirs(images, maps)
    assert len(a) == len(b) == 2
    for x, y in zip(a, b, strict=True):
        same(x, y)
        assert x.dtype == dtype
    expected_count = sum(3 * m.shape[-2] * m.shape[-1] for m in maps)
    assert a[0].shape == (expected_count, 4)
    assert ours.num_anchors_per_location() == theirs.num_anchors_per_location() == [3] * 5


@pytest.mark.parametrize("config", [C4, DEFAULT], ids=["C4", "default"])
@pytest.mark.parametrize("height,width", SIZES)
def test_single_level_configuration_equals_torchvision(config, height, width):
    ours, theirs = AnchorGenerator(*config), TVAnchorGenerator(*config)
    images = ImageList(torch.zeros(1, 3, height, width), [(height, width)])
    maps = feature_maps(height, width, (16,), batch=1)
    same(ours(images, maps)[0], theirs(images, maps)[0])
    assert ours.num_anchors_per_location() == [len(config[0][0]) * 3]


def test_flat_arguments_and_default_equal_torchvision():
    for args in [(), ((16, 32), (0.5, 1.0, 2.0)), ((16, 32), (0.5, 1.0, 2.0, 3.0)), ((8,), (1.0,))]:
        ours, theirs = AnchorGenerator(*args), TVAnchorGenerator(*args)
        assert ours.sizes == theirs.sizes and ours.aspect_ratios == theirs.aspect_ratios
        for x, y in zip(ours.cell_anchors, theirs.cell_anchors, strict=True):
            same(x, y)
    same(
        AnchorGenerator().generate_anchors([50, 100], [0.25, 3.0], dtype=torch.float64),
        TVAnchorGenerator().generate_anchors([50, 100], [0.25, 3.0], dtype=torch.float64),
    )


def test_anchor_shapes_and_layout_follow_the_paper():
    gen = AnchorGenerator(((128,),), ((0.5, 1.0, 2.0),))
    cell = gen.cell_anchors[0]
    w, h = cell[:, 2] - cell[:, 0], cell[:, 3] - cell[:, 1]
    # ratio = h / w, area ~ 128^2 (up to the rounding of the corners to whole pixels)
    torch.testing.assert_close(h / w, torch.tensor([0.5, 1.0, 2.0]), rtol=0.02, atol=0)
    torch.testing.assert_close(w * h, torch.full((3,), 128.0**2), rtol=0.01, atol=0)
    images = ImageList(torch.zeros(1, 3, 64, 96), [(64, 96)])
    anchors = gen(images, [torch.zeros(1, 1, 4, 6)])[0]  # stride 16
    assert anchors.shape == (4 * 6 * 3, 4)
    # row-major positions, then the 3 anchors of each position: cell (row 2, col 5)
    same(anchors[(2 * 6 + 5) * 3 : (2 * 6 + 5) * 3 + 3], cell + torch.tensor([5 * 16.0, 2 * 16, 5 * 16, 2 * 16]))


def test_image_list():
    batch = torch.zeros(2, 3, 40, 50)
    images = ImageList(batch, [(40, 50), (30, 20)])
    moved = images.to(torch.float64)
    assert moved.tensors.dtype == torch.float64 and moved.image_sizes == images.image_sizes
    assert images.to("cpu").tensors.device.type == "cpu" and len(images) == 2
    with pytest.raises(ValueError, match=r"ImageList: image_sizes must give one \(height, width\) per image.*1 sizes for a batch of 2"):
        ImageList(batch, [(40, 50)])
    with pytest.raises(ValueError, match=r"ImageList: tensors must be a padded batch \[B, C, H, W\], got \[3, 40, 50\]"):
        ImageList(batch[0], [(40, 50)])


def test_bad_input_raises_clear_errors():
    with pytest.raises(ValueError, match=r"AnchorGenerator: sizes and aspect_ratios must give one tuple per feature map"):
        AnchorGenerator(((32,), (64,)), ((0.5,), (1.0,), (2.0,)))
    with pytest.raises(ValueError, match=r"got 2 sizes \(\(16,\), \(32,\)\) and 1 aspect_ratios"):
        AnchorGenerator((16, 32))  # flat sizes = 2 maps, default ratios = 1 map (torchvision drops a map)
    with pytest.raises(ValueError, match=r"must be positive"):
        AnchorGenerator(((0, 32),))
    gen = AnchorGenerator(*FPN)
    images = ImageList(torch.zeros(1, 3, 64, 64), [(64, 64)])
    with pytest.raises(ValueError, match=r"AnchorGenerator: got 2 feature maps but sizes/aspect_ratios for 5"):
        gen(images, feature_maps(64, 64, (4, 8), batch=1))
    with pytest.raises(ValueError, match=r"feature map sizes \[\(0, 16\)\]"):
        AnchorGenerator()(images, [torch.zeros(1, 1, 0, 16)])
    with pytest.raises(TypeError, match=r"image_list must be an ImageList, got Tensor"):
        AnchorGenerator()(torch.zeros(1, 3, 64, 64), [torch.zeros(1, 1, 4, 4)])


@pytest.mark.parametrize("size", [(800, 1216), (800, 800), (600, 1000), (37, 91)])
def test_feature_map_sizes_are_the_networks(size):
    """feature_map_sizes (the one count notebooks 03b and 07 use) = the maps torchvision's R50-FPN computes."""
    from torchvision.models.detection.backbone_utils import resnet_fpn_backbone

    from course_lib.ops import feature_map_sizes
    with torch.device("meta"):
        backbone = resnet_fpn_backbone(backbone_name="resnet50", weights=None, trainable_layers=5)
        maps = backbone(torch.zeros(1, 3, *size))
    assert feature_map_sizes(size) == [tuple(m.shape[-2:]) for m in maps.values()]
    assert feature_map_sizes(size, (16,)) == [(math.ceil(size[0] / 16), math.ceil(size[1] / 16))]
    with pytest.raises(ValueError, match="powers of 2"):
        feature_map_sizes(size, (12,))
