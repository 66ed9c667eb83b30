"""FCN-32s/16s/8s: output size = input size, pixel alignment of the crops, bilinear upsampling,
staged initialisation, full-scale size, loading VGG16 weights, and the errors for bad input."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from course_lib.segmentation import FCN8s, FCN16s, FCN32s, bilinear_kernel, bilinear_upsampling, load_checkpoint

VARIANTS = [FCN32s, FCN16s, FCN8s]


@pytest.fixture(scope="module")
def fcn8s_full():
    torch.manual_seed(0)
    return FCN8s(21).eval()


@pytest.mark.parametrize("cls", VARIANTS, ids=lambda c: c.__name__)
def test_output_has_the_input_size_for_any_size(cls):
    torch.manual_seed(0)
    model = cls(5, width=1 / 32).eval()
    for h, w in [(1, 1), (7, 13), (33, 97), (101, 64)]:
        with torch.no_grad():
            out = model(torch.rand(1, 3, h, w))
        assert out.shape == (1, 5, h, w), (h, w)


def _impulse_network(cls, keep):
    """Every convolution passes channel 0 through at its centre tap (fc6: tap (3, 3)), biases 0, so
    an impulse travels through max-pools and ReLUs unchanged; score layers named in ``keep`` copy it,
    the others are zero. The upsampling layers keep their bilinear kernels."""
    model = cls(1, width=1 / 64, image_mean=(0, 0, 0), image_std=(1, 1, 1)).eval()
    with torch.no_grad():
        for name, m in model.named_modules():
            if isinstance(m, nn.Conv2d):
                m.weight.zero_()
                m.bias.zero_()
                if not name.startswith("score") or name in keep:
                    k = m.kernel_size[0]
                    m.weight[0, 0, k // 2, k // 2] = 1.0
    return model


@pytest.mark.parametrize(
    "cls,keep,max_error",
    [
        (FCN32s, ["score_fr"], 16),  # one stride-32 path: error within half a stride
        (FCN16s, ["score_pool4"], 8),  # the pool4 path alone, stride 16
        (FCN16s, ["score_fr", "score_pool4"], 16),
        (FCN8s, ["score_pool3"], 4),  # the pool3 path alone, stride 8
        (FCN8s, ["score_fr", "score_pool4", "score_pool3"], 16),
    ],
)
def test_crop_offsets_align_output_pixels_with_input_pixels(cls, keep, max_error):
    """An impulse at pixel (r, r) must come out centred on (r, r): its position error only comes from
    the stride's quantisation, at most half a stride, and averages to zero over a period of 32 pixels.
    A wrong crop offset shifts every response and makes the mean error that offset."""
    model = _impulse_network(cls, keep)
    size, positions = 128, torch.arange(48, 80)  # 32 consecutive positions, far from the borders
    images = torch.zeros(len(positions), 3, size, size)
    images[torch.arange(len(positions)), 0, positions, positions] = 1.0
    with torch.no_grad():
        out = model(images)[:, 0]
    assert (out >= 0).all() and (out.sum(dim=(1, 2)) > 0).all()
    coords = torch.arange(size, dtype=torch.float32)
    row_center = (out.sum(2) * coords).sum(1) / out.sum((1, 2))
    col_center = (out.sum(1) * coords).sum(1) / out.sum((1, 2))
    for center in (row_center, col_center):
        error = center - positions
        assert error.abs().max() <= max_error + 1e-3, error
        assert error.mean().abs() < 1e-3, f"responses are shifted by {error.mean():.2f} px: wrong crop offset"


def test_bilinear_kernel_is_the_reference_upsample_filt():
    torch.testing.assert_close(bilinear_kernel(4), torch.outer(*[torch.tensor([0.25, 0.75, 0.75, 0.25])] * 2))
    torch.testing.assert_close(bilinear_kernel(3), torch.outer(*[torch.tensor([0.5, 1.0, 0.5])] * 2))
    k = bilinear_kernel(64)
    assert k.shape == (64, 64) and torch.allclose(k.sum(), torch.tensor(32.0**2))


@pytest.mark.parametrize("factor", [2, 8, 16, 32])
def test_bilinear_upsampling_equals_bilinear_interpolation(factor):
    """Transposed convolution (kernel 2f, stride f) with the bilinear kernel, cropped by f/2, equals
    F.interpolate(mode="bilinear", align_corners=False) wherever the latter does not clamp at the border."""
    torch.manual_seed(0)
    x = torch.randn(2, 3, 5, 6)
    up = bilinear_upsampling(3, factor)
    assert up.weight.shape == (3, 3, 2 * factor, 2 * factor) and up.bias is None
    out = up(x)[..., factor // 2 : factor // 2 + 5 * factor, factor // 2 : factor // 2 + 6 * factor]
    ref = F.interpolate(x, scale_factor=factor, mode="bilinear", align_corners=False)
    inner = slice(factor // 2, -(factor // 2))
    torch.testing.assert_close(out[..., inner, inner], ref[..., inner, inner], atol=1e-5, rtol=1e-5)


def test_upsampling_is_frozen_or_learnable():
    fixed, learned = FCN8s(3, width=1 / 32), FCN8s(3, width=1 / 32, learnable_upsampling=True)
    for model, learnable in ((fixed, False), (learned, True)):
        assert model.upscore2.weight.requires_grad is learnable
        assert model.upscore_pool4.weight.requires_grad is learnable
        assert model.upscore8.weight.requires_grad is False  # the paper fixes the last one
    assert FCN32s(3, width=1 / 32).upscore.weight.requires_grad is False


def test_score_layers_start_at_zero():
    model = FCN8s(4, width=1 / 32)
    for layer in (model.score_fr, model.score_pool4, model.score_pool3):
        assert layer.weight.abs().sum() == 0 and layer.bias.abs().sum() == 0


def test_staged_initialisation_copies_the_previous_stage():
    torch.manual_seed(0)
    fcn32 = FCN32s(4, width=1 / 32, learnable_upsampling=True)
    with torch.no_grad():
        fcn32.score_fr.weight.normal_()
    fcn16 = FCN16s.from_fcn32s(fcn32)
    assert fcn16.config == fcn32.config
    for k, v in fcn32.backbone.state_dict().items():
        assert torch.equal(fcn16.backbone.state_dict()[k], v), k
    assert torch.equal(fcn16.score_fr.weight, fcn32.score_fr.weight)
    assert fcn16.score_pool4.weight.abs().sum() == 0
    with torch.no_grad():
        fcn16.score_pool4.weight.normal_()
        fcn16.upscore2.weight.add_(0.1)  # as if learned
    fcn8 = FCN8s.from_fcn16s(fcn16)
    assert torch.equal(fcn8.score_pool4.weight, fcn16.score_pool4.weight)
    assert torch.equal(fcn8.upscore2.weight, fcn16.upscore2.weight)
    assert torch.equal(fcn8.score_fr.weight, fcn32.score_fr.weight)
    assert fcn8.score_pool3.weight.abs().sum() == 0
    # with score_pool3 still zero, FCN-8s's fused stride-16 scores are FCN-16s's
    fcn8.eval(), fcn16.eval()
    x = torch.rand(1, 3, 40, 40)
    with torch.no_grad():
        f = fcn16.backbone(fcn16.transform(x))
        up2 = fcn16.upscore2(fcn16.score_fr(f["fc7"]))
        fused16 = up2 + fcn16.score_pool4(f["pool4"])[..., 5 : 5 + up2.shape[-2], 5 : 5 + up2.shape[-1]]
        ref = fcn16.upscore16(fused16)[..., 27:67, 27:67]
    torch.testing.assert_close(fcn16(x), ref)


def test_training_reduces_the_loss():
    torch.manual_seed(0)
    model = FCN8s(3, width=1 / 32, learnable_upsampling=True, dropout=0.0)
    image = torch.rand(1, 3, 24, 24)
    target = torch.zeros(1, 24, 24, dtype=torch.int64)
    target[:, 5:15, 6:20] = 1
    target[:, 17:, :10] = 2
    target[0, 0, 0] = 255  # ignored
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    losses = []
    for _ in range(5):
        loss = F.cross_entropy(model(image), target, ignore_index=255)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(b < a for a, b in zip(losses, losses[1:])), losses
    # zero-initialised score layers block the backbone's gradient only at the first step
    silent = [k for k, p in model.named_parameters() if p.requires_grad and not p.grad.abs().sum() > 0]
    assert not silent, f"no gradient reaches {silent}"


def _paper_parameter_count(num_classes):
    vgg_convs = [(3, 64), (64, 64), (64, 128), (128, 128), (128, 256), (256, 256), (256, 256),
                 (256, 512), (512, 512), (512, 512), (512, 512), (512, 512), (512, 512)]
    n = sum(i * o * 9 + o for i, o in vgg_convs)
    n += 512 * 7 * 7 * 4096 + 4096 + 4096 * 4096 + 4096  # fc6, fc7
    n += sum(c * num_classes + num_classes for c in (4096, 512, 256))  # score_fr, score_pool4, score_pool3
    n += num_classes * num_classes * (4 * 4 + 4 * 4 + 16 * 16)  # upscore2, upscore_pool4, upscore8
    return n


def test_full_scale_fcn8s(fcn8s_full):
    n = sum(p.numel() for p in fcn8s_full.parameters())
    assert n == _paper_parameter_count(21)
    assert 134e6 < n < 135e6
    assert fcn8s_full.backbone.features[0].padding == (100, 100)
    assert all(m.ceil_mode for m in fcn8s_full.backbone.features if isinstance(m, nn.MaxPool2d))
    with torch.no_grad():
        out = fcn8s_full(torch.rand(1, 3, 19, 27))
    assert out.shape == (1, 21, 19, 27)


def test_fcn_loads_torchvision_vgg16_weights(fcn8s_full, torchvision_vgg16_file):
    tv, path = torchvision_vgg16_file
    dropped = fcn8s_full.load_imagenet_vgg16(path)
    assert dropped == ["classifier.6.weight", "classifier.6.bias"]  # fc8: the 1000 ImageNet classes
    assert torch.equal(fcn8s_full.backbone.features[28].weight, tv.features[28].weight)
    assert torch.equal(fcn8s_full.backbone.fc6.weight.flatten(1), tv.classifier[0].weight)
    assert torch.equal(fcn8s_full.backbone.fc7.weight.flatten(1), tv.classifier[3].weight)


def test_checkpoint_with_other_number_of_classes_is_refused(tmp_path):
    torch.save({"model": FCN16s(21, width=1 / 32).state_dict()}, tmp_path / "voc.pth")
    model = FCN16s(5, width=1 / 32)
    with pytest.raises(ValueError, match=r"predicts 21 classes.*num_classes=5.*num_classes=21"):
        load_checkpoint(model, tmp_path / "voc.pth")
    load_checkpoint(FCN16s(21, width=1 / 32), tmp_path / "voc.pth")  # the right one loads
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        load_checkpoint(model, tmp_path / "missing.pth")


def test_bad_images_give_clear_errors():
    model = FCN32s(2, width=1 / 32)
    with pytest.raises(ValueError, match="expects 3-channel.*got 1 channels.*expand"):
        model(torch.rand(1, 1, 32, 32))
    with pytest.raises(ValueError, match="channels-last"):
        model(torch.rand(1, 32, 32, 3))
    with pytest.raises(ValueError, match="unsqueeze"):
        model(torch.rand(3, 32, 32))
    with pytest.raises(ValueError, match="num_classes"):
        FCN8s(0)
