"""PSRoIExplorer: its numbers are the library's (ps_roi_pool, the detector's vote) and torchvision's; each control
redraws the figure exactly once, as a PNG; k switches between the maps given."""
import pytest
import torch
import torchvision

from course_lib.detection.rfcn import rfcn_resnet50
from course_lib.widgets import PSRoIExplorer, psroi_bins
from course_lib.widgets.psroi import score_maps_of


def test_psroi_bins_equal_torchvision():
    g = torch.Generator().manual_seed(0)
    maps = torch.randn(9 * 4, 20, 30, generator=g)
    state = psroi_bins(maps, (33.0, 20.0, 250.0, 180.0), 3)
    expected = torchvision.ops.ps_roi_pool(maps[None], torch.tensor([[0, 33.0, 20, 250, 180]]), 3, 1 / 16)[0]
    torch.testing.assert_close(state.bins, expected)
    torch.testing.assert_close(state.votes, expected.mean((1, 2)))
    torch.testing.assert_close(state.probabilities.sum(), torch.tensor(1.0))
    with pytest.raises(ValueError, match=r"\[k\^2 \(C \+ 1\), H, W\] with k = 7"):
        psroi_bins(maps, (0, 0, 10, 10), 7)


def test_explorer_redraws_once_per_input_and_switches_k():
    g = torch.Generator().manual_seed(1)
    image = torch.rand(3, 160, 240, generator=g)
    maps = {1: torch.randn(3, 10, 15, generator=g), 3: torch.randn(27, 10, 15, generator=g)}
    explorer = PSRoIExplorer(image, maps, class_names=["background", "square", "disc"])
    assert explorer.view.renders == 1 and explorer.view.output.value[:8] == b"\x89PNG\r\n\x1a\n"
    assert explorer.controls["k"].value == 3 and explorer.state.bins.shape == (3, 3, 3)
    before, picture = explorer.state.votes.clone(), explorer.view.output.value
    explorer.controls["x"].value += 40
    assert explorer.view.renders == 2 and not torch.equal(before, explorer.state.votes) and explorer.view.output.value != picture
    explorer.controls["k"].value = 1
    assert explorer.view.renders == 3 and explorer.state.bins.shape == (3, 1, 1)
    explorer.controls["class_index"].value = 2
    assert explorer.view.renders == 4 and "disc" in explorer.message.value
    with pytest.raises(ValueError, match="Pass class_names"):
        PSRoIExplorer(image, maps[3])


def test_explorer_reads_a_models_score_maps():
    torch.manual_seed(0)
    model = rfcn_resnet50(num_classes=3, k=3, min_size=96, max_size=128)
    image = torch.rand(3, 90, 120)
    resized, maps = score_maps_of(model, image)
    assert resized.shape == (3, 96, 128) and maps.shape == (27, 6, 8)
    assert model.training  # left as it was
    explorer = PSRoIExplorer(resized, {3: maps}, class_names=["background", "a", "b"])
    # the explorer's vote is the detector's own prediction for the same RoI
    model.eval()
    with torch.no_grad():
        image_list, _, _ = model.prepare([image])
        logits, _ = model.roi_heads.predict(model.features(image_list), [torch.tensor([explorer.roi()])],
                                            image_list.image_sizes)
    torch.testing.assert_close(explorer.state.votes, logits[0])
