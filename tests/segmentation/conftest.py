"""Fixtures shared by the tests of chapters 1-3."""
import pytest
import torch
import torchvision


@pytest.fixture(scope="session")
def torchvision_vgg16_file(tmp_path_factory):
    """A torchvision vgg16 (random weights: there are no downloads here) and the file of its state dict."""
    torch.manual_seed(0)
    tv = torchvision.models.vgg16(weights=None, init_weights=False).eval()
    path = tmp_path_factory.mktemp("weights") / "vgg16.pth"
    torch.save(tv.state_dict(), path)
    return tv, path
