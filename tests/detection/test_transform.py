"""GeneralizedRCNNTransform against torchvision's: resize, normalise, pad-batch, targets, postprocess."""
import pytest
import torch
from torchvision.models.detection.transform import GeneralizedRCNNTransform as TVTransform

from course_lib.detection.transform import GeneralizedRCNNTransform

MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def random_batch(sizes, seed=0, num_boxes=3):
    g = torch.Generator().manual_seed(seed)
    images, targets = [], []
    for h, w in sizes:
        images.append(torch.rand(3, h, w, generator=g))
        xy = torch.rand(num_boxes, 2, generator=g) * torch.tensor([w / 2, h / 2])
        wh = torch.rand(num_boxes, 2, generator=g) * torch.tensor([w / 2, h / 2]) + 1
        targets.append({"boxes": torch.cat([xy, xy + wh], 1), "labels": torch.arange(1, num_boxes + 1)})
    return images, targets


@pytest.mark.parametrize("min_size,max_size", [(800, 1333), (128, 200), (96, 96)])
def test_equals_torchvision_in_eval(min_size, max_size):
    ours = GeneralizedRCNNTransform(min_size, max_size, MEAN, STD).eval()
    ref = TVTransform(min_size, max_size, MEAN, STD).eval()
    images, targets = random_batch([(37, 53), (61, 29), (50, 50)])
    ours_list, ours_t = ours(images, targets)
    ref_list, ref_t = ref(images, targets)
    assert ours_list.image_sizes == ref_list.image_sizes
    assert ours_list.tensors.shape == ref_list.tensors.shape
    assert ours_list.tensors.shape[-1] % 32 == 0 and ours_list.tensors.shape[-2] % 32 == 0
    torch.testing.assert_close(ours_list.tensors, ref_list.tensors, rtol=0, atol=0)
    for a, b in zip(ours_t, ref_t):
        torch.testing.assert_close(a["boxes"], b["boxes"], rtol=0, atol=0)
        assert torch.equal(a["labels"], b["labels"])
    # the caller's targets are not modified
    assert torch.equal(targets[0]["boxes"], random_batch([(37, 53), (61, 29), (50, 50)])[1][0]["boxes"])



@pytest.mark.parametrize("train", [False, True])
def test_an_image_at_the_size_equals_torchvisions_and_is_not_resampled(train):
    """At scale 1 the resize is skipped (the cpu profile's 384-px images at min_size 384): torchvision's bilinear
    resample of it gives the same numbers, and the boxes are copies, not the caller's tensor."""
    ours, ref = GeneralizedRCNNTransform(64, 96, MEAN, STD), TVTransform(64, 96, MEAN, STD)
    ours.train(train), ref.train(train)
    images, targets = random_batch([(64, 80), (64, 64)], seed=3)
    torch.manual_seed(0)
    ours_list, ours_t = ours(images, targets)
    torch.manual_seed(0)
    ref_list, ref_t = ref(images, targets)
    assert torch.equal(ours_list.tensors, ref_list.tensors) and ours_list.image_sizes == [(64, 80), (64, 64)]
    for o, r, t in zip(ours_t, ref_t, targets):
        assert torch.equal(o["boxes"], r["boxes"]) and o["boxes"] is not t["boxes"]

def test_resize_rule_shorter_side_then_cap():
    t = GeneralizedRCNNTransform(800, 1333).eval()
    image_list, _ = t([torch.rand(3, 300, 400), torch.rand(3, 100, 1000)])
    # 300x400 -> shorter side 800: 800x1066; 100x1000 -> 8000 too long: capped at 1333 -> 133x1333
    assert image_list.image_sizes == [(800, 1066), (133, 1333)]
    assert tuple(image_list.tensors.shape) == (2, 3, 800, 1344)
    assert torch.all(image_list.tensors[0, :, :, 1066:] == 0) and torch.all(image_list.tensors[1, :, 133:] == 0)


def test_training_multiscale_draws_like_torchvision():
    ours = GeneralizedRCNNTransform((64, 96, 128), 400, MEAN, STD).train()
    ref = TVTransform((64, 96, 128), 400, MEAN, STD).train()
    images, targets = random_batch([(37, 53), (61, 29), (50, 50), (40, 70)])
    torch.manual_seed(5)
    ours_list, ours_t = ours(images, targets)
    after_ours = torch.rand(1)
    torch.manual_seed(5)
    ref_list, ref_t = ref(images, targets)
    after_ref = torch.rand(1)
    assert ours_list.image_sizes == ref_list.image_sizes
    assert len({min(s) for s in ours_list.image_sizes}) > 1  # really multi-scale
    torch.testing.assert_close(ours_list.tensors, ref_list.tensors, rtol=0, atol=0)
    for a, b in zip(ours_t, ref_t):
        torch.testing.assert_close(a["boxes"], b["boxes"], rtol=0, atol=0)
    assert after_ours == after_ref  # the same random numbers were consumed


def test_postprocess_equals_torchvision():
    ours = GeneralizedRCNNTransform(128, 200, MEAN, STD).eval()
    ref = TVTransform(128, 200, MEAN, STD).eval()
    g = torch.Generator().manual_seed(1)
    resized, original = [(128, 181), (200, 93)], [(37, 53), (86, 40)]
    results = [{"boxes": torch.rand(5, 4, generator=g) * 100, "labels": torch.ones(5, dtype=torch.int64),
                "scores": torch.rand(5, generator=g)} for _ in range(2)]
    ref_out = ref.postprocess([dict(r) for r in results], resized, original)
    ours_out = ours.postprocess([dict(r) for r in results], resized, original)
    for a, b in zip(ours_out, ref_out):
        torch.testing.assert_close(a["boxes"], b["boxes"], rtol=0, atol=0)


def test_round_trip_maps_boxes_back():
    t = GeneralizedRCNNTransform(128, 1333).eval()
    images, targets = random_batch([(37, 53), (61, 29)])
    image_list, resized_targets = t(images, targets)
    back = t.postprocess([{"boxes": r["boxes"]} for r in resized_targets], image_list.image_sizes,
                         [tuple(img.shape[-2:]) for img in images])
    for b, target in zip(back, targets):
        torch.testing.assert_close(b["boxes"], target["boxes"], rtol=1e-5, atol=1e-4)


def test_grayscale_uint8_and_bad_images():
    t = GeneralizedRCNNTransform(64, 100).eval()
    ref = TVTransform(64, 100, MEAN, STD).eval()
    gray = torch.rand(1, 40, 50)
    # documented conversion: a gray image is the same gray in R, G and B (= torchvision's broadcasting)
    torch.testing.assert_close(t([gray])[0].tensors, t([gray.expand(3, -1, -1)])[0].tensors)
    torch.testing.assert_close(t([gray])[0].tensors, ref([gray])[0].tensors)
    as_uint8 = (torch.rand(3, 40, 50) * 255).round().to(torch.uint8)
    torch.testing.assert_close(t([as_uint8])[0].tensors, t([as_uint8.float() / 255])[0].tensors)
    with pytest.raises(ValueError, match="Image 1 has 4 channels"):
        t([gray, torch.rand(4, 40, 50)])
    with pytest.raises(ValueError, match=r"Image 0 must be a \[C, H, W\] tensor"):
        t([torch.rand(40, 50)])
    with pytest.raises(TypeError, match="int32"):
        t([torch.ones(3, 4, 4, dtype=torch.int32)])
    with pytest.raises(ValueError, match="2 images but 1 targets"):
        t([gray, gray], [{"boxes": torch.zeros(0, 4)}])
    with pytest.raises(ValueError, match="aspect ratio"):
        GeneralizedRCNNTransform(8, 16)([torch.rand(3, 1, 1000)])


def test_check_targets_is_the_one_rule_of_every_detector():
    """transform.check_targets: plain copies of valid targets; a degenerate box is an error naming image and box."""
    from course_lib.detection.transform import check_targets

    ok = {"boxes": torch.tensor([[1.0, 2.0, 3.0, 4.0]]), "labels": torch.tensor([1])}
    empty = {"boxes": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.int64)}  # an image without objects
    checked = check_targets([ok, empty])
    assert checked[1]["boxes"].shape == (0, 4) and checked[0] is not ok
    bad = {"boxes": torch.tensor([[1.0, 2.0, 3.0, 4.0], [5.0, 5.0, 5.0, 9.0]]), "labels": torch.tensor([1, 2])}
    with pytest.raises(ValueError, match=r"box 1 = \[5.0, 5.0, 5.0, 9.0\] in the target of image 1"):
        check_targets([ok, bad])
    with pytest.raises(TypeError, match="Target 0: boxes must be float"):
        check_targets([{"boxes": torch.tensor([[1, 2, 3, 4]]), "labels": torch.tensor([1])}])
    with pytest.raises(TypeError, match="Target 0: labels must be int64"):
        check_targets([{"boxes": ok["boxes"], "labels": torch.tensor([1], dtype=torch.int32)}])
    with pytest.raises(ValueError, match="Target 0: 1 boxes but labels of shape"):
        check_targets([{"boxes": ok["boxes"], "labels": torch.tensor([1, 2])}])
    with pytest.raises(ValueError, match="box 0 .* is not finite"):
        check_targets([{"boxes": torch.tensor([[0.0, 0.0, float("nan"), 1.0]]), "labels": torch.tensor([1])}])
