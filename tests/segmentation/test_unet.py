"""U-Net: the paper's sizes (572 -> 388, 31 M parameters), valid sizes and their errors, the padded
variant, mirror padding, and overlap-tile inference equal to whole-image inference."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from course_lib.segmentation import (
    TiledUNet,
    UNet,
    load_checkpoint,
    mirror_pad,
    nearest_valid_sizes,
    unet_output_size,
    unet_tiled_inference,
)


def _paper_parameter_count(in_channels, num_classes):
    c = [64, 128, 256, 512, 1024]
    double = lambda i, o: i * o * 9 + o + o * o * 9 + o  # noqa: E731
    n = double(in_channels, c[0]) + sum(double(a, b) for a, b in zip(c, c[1:]))  # contracting path + bottom
    n += sum(a * b * 4 + b + double(2 * b, b) for a, b in zip(c[:0:-1], c[-2::-1]))  # up-conv + two convs
    return n + c[0] * num_classes + num_classes


def test_full_scale_unet_has_the_papers_size():
    torch.manual_seed(0)
    model = UNet(1, 2).eval()
    n = sum(p.numel() for p in model.parameters())
    assert n == _paper_parameter_count(1, 2)
    assert 30.9e6 < n < 31.1e6
    with torch.no_grad():
        assert model(torch.rand(1, 1, 188, 188)).shape == (1, 2, 4, 4)  # the smallest valid input


def test_572_gives_388():
    assert unet_output_size(572) == 388
    model = UNet(3, 4, width=1 / 16).eval()
    with torch.no_grad():
        assert model(torch.rand(1, 3, 572, 572)).shape == (1, 4, 388, 388)


@pytest.mark.parametrize("h,w", [(188, 188), (204, 252), (220, 188)])
def test_output_size_formula_matches_the_network(h, w):
    model = UNet(2, 3, width=1 / 32).eval()
    with torch.no_grad():
        out = model(torch.rand(1, 2, h, w))
    assert out.shape[-2:] == (unet_output_size(h), unet_output_size(w)) == (h - 184, w - 184)


def test_invalid_sizes_name_the_nearest_valid_ones():
    assert nearest_valid_sizes(500) == (492, 508)
    assert nearest_valid_sizes(572) == (572,)
    assert nearest_valid_sizes(100) == (188,)
    model = UNet(1, 2, width=1 / 32)
    with pytest.raises(ValueError, match=r"500 pixels.*492 \(output 308\) and 508 \(output 324\)"):
        model(torch.rand(1, 1, 500, 572))
    with pytest.raises(ValueError, match=r"Nearest valid sizes: 188"):
        model(torch.rand(1, 1, 64, 64))
    with pytest.raises(ValueError, match="expects 1-channel images, got 3"):
        model(torch.rand(1, 3, 572, 572))


@pytest.mark.parametrize("h,w", [(1, 1), (37, 41), (64, 64), (100, 131)])
def test_same_padding_keeps_any_size(h, w):
    model = UNet(3, 5, padding="same", width=1 / 32).eval()
    with torch.no_grad():
        assert model(torch.rand(2, 3, h, w)).shape == (2, 5, h, w)


def test_mirror_pad_is_reflect_padding_for_any_amount():
    x = torch.randn(2, 3, 9, 7)
    torch.testing.assert_close(mirror_pad(x, 3, 5, 2, 6), F.pad(x, (2, 6, 3, 5), mode="reflect"), rtol=0, atol=0)
    big = mirror_pad(x, 20, 31, 17, 9)  # larger than the image: numpy mirrors repeatedly too
    ref = np.pad(x.numpy(), ((0, 0), (0, 0), (20, 31), (17, 9)), mode="reflect")
    np.testing.assert_array_equal(big.numpy(), ref)


@pytest.mark.parametrize("size,tile", [((70, 90), 220), ((61, 100), 236)])
def test_tiled_inference_equals_whole_image_inference(size, tile):
    """Overlap-tile inference (tiles on the 16-pixel pooling grid, mirrored borders) is the network run
    once over the whole mirror-padded image; in float64 the two agree to rounding."""
    torch.manual_seed(0)
    model = UNet(3, 4, width=1 / 32).double()
    image = torch.rand(3, *size, dtype=torch.float64)
    whole = unet_tiled_inference(model, image, tile=None)
    tiled = unet_tiled_inference(model, image, tile=tile, batch_size=3)
    assert whole.shape == tiled.shape == (4, *size)
    torch.testing.assert_close(tiled, whole, rtol=1e-10, atol=1e-10)
    assert model.training  # the mode is restored
    torch.testing.assert_close(TiledUNet(model, tile=tile)(image[None])[0], whole, rtol=1e-10, atol=1e-10)


def test_tiled_inference_rejects_bad_arguments():
    with pytest.raises(ValueError, match="valid"):
        unet_tiled_inference(UNet(1, 2, padding="same", width=1 / 32), torch.rand(1, 64, 64))
    with pytest.raises(ValueError, match="Nearest valid sizes"):
        unet_tiled_inference(UNet(1, 2, width=1 / 32), torch.rand(1, 64, 64), tile=500)


def test_checkpoint_with_other_number_of_classes_is_refused(tmp_path):
    torch.save(UNet(1, 2, width=1 / 32).state_dict(), tmp_path / "cells.pth")
    with pytest.raises(ValueError, match=r"predicts 2 classes.*num_classes=3.*classifier"):
        load_checkpoint(UNet(1, 3, width=1 / 32), tmp_path / "cells.pth")
