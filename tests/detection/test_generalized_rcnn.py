"""GeneralizedRCNN's stages: forward is prepare -> features -> proposals -> detect -> postprocess, and each
stage can be called on its own (EFPN's distillation reads the features and the resized targets)."""
import pytest
import torch

from course_lib.detection import detection_loss, fasterrcnn_resnet50_fpn
from course_lib.engine import fit


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    model = fasterrcnn_resnet50_fpn(num_classes=3, min_size=64, max_size=96, rpn_pre_nms_top_n_test=50,
                                    rpn_post_nms_top_n_test=20, rpn_pre_nms_top_n_train=50,
                                    rpn_post_nms_top_n_train=20, box_batch_size_per_image=16)
    g = torch.Generator().manual_seed(0)
    images = [torch.rand(3, 80, 100, generator=g), torch.rand(3, 70, 60, generator=g)]
    targets = [{"boxes": torch.tensor([[10.0, 10.0, 50.0, 40.0]]), "labels": torch.tensor([1])},
               {"boxes": torch.tensor([[5.0, 20.0, 30.0, 60.0], [20.0, 5.0, 55.0, 30.0]]), "labels": torch.tensor([2, 1])}]
    return model, images, targets


def test_stages_compose_to_forward_in_inference(tiny):
    model, images, _ = tiny
    model.eval()
    with torch.no_grad():
        expected = model(images)
        image_list, targets, original_sizes = model.prepare(images)
        assert targets is None and original_sizes == [(80, 100), (70, 60)]
        assert [tuple(s) for s in image_list.image_sizes] == [(64, 80), (74, 64)]  # shorter side 64, longer <= 96
        features = model.features(image_list)
        assert list(features) == ["0", "1", "2", "3", "pool"]
        proposals, losses = model.proposals(image_list, features)
        assert losses == {} and [p.shape[1] for p in proposals] == [4, 4]
        detections, losses = model.detect(features, proposals, image_list)
        detections = model.postprocess(detections, image_list, original_sizes)
    assert losses == {}
    for a, b in zip(detections, expected):
        assert a.keys() == b.keys()
        for k in a:
            torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)
    # propose(): the same proposals, in each input image's own pixels
    for p, q, resized, original in zip(model.propose(images), proposals, image_list.image_sizes, original_sizes):
        scale = torch.tensor([original[1] / resized[1], original[0] / resized[0]] * 2)
        torch.testing.assert_close(p, q * scale)


def test_detect_from_the_rpns_own_proposals_is_forward_and_takes_any_others(tiny):
    model, images, _ = tiny
    model.eval()
    with torch.no_grad():
        expected = model(images)
    for a, b in zip(model.detect_from(images, model.propose(images)), expected):  # a round trip through own pixels
        torch.testing.assert_close(a["boxes"], b["boxes"], rtol=0, atol=1e-3)
        torch.testing.assert_close(a["scores"], b["scores"], rtol=0, atol=1e-5)
        assert torch.equal(a["labels"], b["labels"])
    one_box = [torch.tensor([[10.0, 10.0, 50.0, 40.0]]), torch.zeros(0, 4)]  # e.g. selective search's, or none
    detections = model.detect_from(images, one_box)
    assert len(detections[1]["boxes"]) == 0 and len(detections[0]["boxes"]) <= 2  # one box, 2 classes: at most 2
    with pytest.raises(ValueError, match="2 images but 1 proposal tensors"):
        model.detect_from(images, one_box[:1])
    with pytest.raises(RuntimeError, match="call model.eval"):
        model.train().detect_from(images, one_box)
    model.eval()

def test_prepare_resizes_targets_and_checks_them(tiny):
    model, images, targets = tiny
    model.train()
    image_list, resized, _ = model.prepare(images, targets)
    torch.testing.assert_close(resized[0]["boxes"], targets[0]["boxes"] * 0.8)  # 80 x 100 -> 64 x 80
    assert targets[0]["boxes"][0, 2] == 50.0  # the caller's targets are left as they were
    with pytest.raises(ValueError, match="needs targets"):
        model.prepare(images)
    with pytest.raises(ValueError, match="box 0 .* image 1"):
        model.prepare(images, [targets[0], {"boxes": torch.tensor([[5.0, 5.0, 5.0, 9.0]]), "labels": torch.tensor([1])}])


def test_stages_compose_to_forward_in_training(tiny):
    model, images, targets = tiny
    model.train()
    torch.manual_seed(1)
    expected = model(images, targets)
    torch.manual_seed(1)
    image_list, resized, _ = model.prepare(images, targets)
    features = model.features(image_list)
    proposals, rpn_losses = model.proposals(image_list, features, resized)
    detections, head_losses = model.detect(features, proposals, image_list, resized)
    assert detections == [] and set(rpn_losses) == {"loss_objectness", "loss_rpn_box_reg"}
    losses = {**head_losses, **rpn_losses}
    assert losses.keys() == expected.keys() == {"loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg"}
    for k in losses:
        torch.testing.assert_close(losses[k], expected[k], rtol=0, atol=0)


def test_detection_loss_is_fits_loss_function(tiny):
    model, images, targets = tiny
    model.eval()
    with pytest.raises(RuntimeError, match="training mode"):
        detection_loss(model, (images, targets))
    history = fit(model, list(zip(images, targets)), detection_loss, torch.optim.SGD(model.parameters(), lr=1e-4),
                  steps=1, batch_size=2, collate_fn=lambda b: tuple(list(c) for c in zip(*b)), progress=False)
    assert {"loss_objectness", "loss_classifier"} <= set(history.last) and torch.isfinite(torch.tensor(history.last["loss"]))


def test_builders_have_torchvisions_keyword_only_signature():
    """(*, weights=None, num_classes=None, weights_backbone=None, trainable_backbone_layers=None, **kwargs);
    torchvision's `progress` (a download bar) has no counterpart, and weights_backbone defaults to None (torchvision:
    ImageNet weights): nothing is downloaded here."""
    import inspect

    from torchvision.models.detection import fasterrcnn_resnet50_fpn as tv_builder

    from course_lib.detection import fasterrcnn_resnet50_c4, fasterrcnn_resnet101_c4, fasterrcnn_resnet101_fpn

    tv_params = {p.name: p for p in inspect.signature(tv_builder).parameters.values()}
    for builder in (fasterrcnn_resnet50_fpn, fasterrcnn_resnet101_fpn, fasterrcnn_resnet50_c4, fasterrcnn_resnet101_c4):
        params = inspect.signature(builder).parameters
        assert list(params)[:4] == ["weights", "num_classes", "weights_backbone", "trainable_backbone_layers"], builder
        for name in list(params)[:4]:
            assert params[name].kind is inspect.Parameter.KEYWORD_ONLY, (builder.__name__, name)
            assert params[name].default is None  # torchvision's weights_backbone defaults to ImageNet (a download)
            assert tv_params[name].kind is inspect.Parameter.KEYWORD_ONLY
        assert list(params.values())[-1].kind is inspect.Parameter.VAR_KEYWORD
