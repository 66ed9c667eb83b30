"""U-Net's elastic deformation (Sec. 3.1): a coarse 3 x 3 grid of Gaussian displacements, bicubic in between."""
import pytest
import torch

from course_lib.data import elastic_deform, elastic_displacements


def _image(h=40, w=50, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (3, h, w), generator=g, dtype=torch.uint8), torch.randint(0, 4, (h, w), generator=g)


def test_zero_displacement_is_the_identity():
    image, labels = _image()
    weights = torch.rand(labels.shape, dtype=torch.float64)
    out, out_labels, out_weights = elastic_deform(image, labels, weights, displacements=torch.zeros(2, 40, 50))
    assert torch.equal(out, image) and torch.equal(out_labels, labels)
    assert torch.allclose(out_weights, weights) and out_weights.dtype == torch.float64


def test_a_constant_displacement_is_a_translation_and_moves_image_and_labels_together():
    image, labels = _image()
    dy, dx = 3, -2
    field = torch.stack([torch.full((40, 50), float(dy)), torch.full((40, 50), float(dx))])
    out, out_labels = elastic_deform(image, labels, displacements=field)
    # out[y, x] = in[y + 3, x - 2] away from the mirrored border
    assert torch.equal(out[:, :-dy, -dx:], image[:, dy:, : 50 + dx])
    assert torch.equal(out_labels[:-dy, -dx:], labels[dy:, : 50 + dx])
    # the labels follow the image: deforming the label map as an image (nearest) equals deforming it as a map
    g = torch.Generator().manual_seed(1)
    field = elastic_displacements(40, 50, generator=g)
    as_image = elastic_deform(labels[None].to(torch.uint8), displacements=field)[0]
    assert as_image.shape == (1, 40, 50)
    assert set(elastic_deform(image, labels, displacements=field)[1].unique().tolist()) <= set(labels.unique().tolist())


def test_the_field_is_the_papers():
    g = torch.Generator().manual_seed(2)
    fields = torch.stack([elastic_displacements(33, 33, generator=g) for _ in range(400)])
    corners = fields[..., ::16, ::16]  # the 3 x 3 grid points: the field passes through the sampled displacements
    assert corners.shape[-2:] == (3, 3)
    assert abs(float(corners.std()) - 10.0) < 0.5 and abs(float(corners.mean())) < 0.5
    # smooth: neighbouring pixels move by far less than the displacements themselves
    assert float((fields[..., 1:, :] - fields[..., :-1, :]).abs().max()) < 0.5 * float(fields.abs().max())
    # seeded: the same generator state gives the same field
    a = elastic_displacements(20, 30, generator=torch.Generator().manual_seed(5))
    b = elastic_displacements(20, 30, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b) and a.shape == (2, 20, 30)


def test_bad_input_is_named():
    image, labels = _image()
    with pytest.raises(ValueError, match=r"map 0 has shape \(39, 50\)"):
        elastic_deform(image, labels[:-1])
    with pytest.raises(ValueError, match="one C x H x W image"):
        elastic_deform(image[None])
    with pytest.raises(ValueError, match="grid must be at least 2"):
        elastic_displacements(10, 10, grid=1)
