"""ImageNet in miniature (course_lib/pretraining.py): the crops are deterministic and balanced over the stated
classes; pretrain writes a backbone file that a detector loads with weights_backbone=<path>; an interrupted
pretraining resumes from its checkpoint to the same weights -- ci-sized (seconds)."""
import pytest
import torch

from course_lib.data.synthetic import multiscale, traffic_signs
from course_lib.detection.faster_rcnn_fpn import fasterrcnn_resnet50_fpn
from course_lib.pretraining import CLASSES, PRETRAINED, ObjectCrops, backbone_path, backbone_weights, build_backbone, pretrain
from course_lib.profiles import PROFILES
from course_lib.state_dict import read_state_dict

TINY = dict(width=0.125, steps=2, batch_size=4, size=32, progress=False)


def test_crops_are_deterministic_from_their_seed_and_balanced_over_the_classes():
    assert CLASSES == tuple(f"sign:{c[0]}" for c in traffic_signs.SIGN_CLASSES) + \
        tuple(f"shape:{c[0]}" for c in multiscale.SHAPE_CLASSES)
    assert len(CLASSES) == 20 == len(set(CLASSES))
    a, b = ObjectCrops(45, size=32, seed=3), ObjectCrops(45, size=32, seed=3)
    for i in (0, 7, 44):
        (xa, ya), (xb, yb) = a[i], b[i]
        assert torch.equal(xa, xb) and int(ya) == int(yb) == i % 20
        assert xa.shape == (3, 32, 32) and xa.dtype == torch.float32 and 0 <= xa.min() and xa.max() <= 1
    assert sorted(int(a[i][1]) for i in range(40)) == sorted(list(range(20)) * 2)
    assert not torch.equal(a[5][0], ObjectCrops(45, size=32, seed=4)[5][0])
    assert not torch.equal(a[5][0], ObjectCrops(45, size=32, seed=3, split="val")[5][0])
    for bad, match in ((dict(length=0), "length"), (dict(length=4, size=8), "size"),
                       (dict(length=4, split="test"), "split")):
        with pytest.raises(ValueError, match=match):
            ObjectCrops(**bad)
    with pytest.raises(IndexError):
        a[45]


def test_pretrained_backbone_loads_into_the_detector(tmp_path):
    out = tmp_path / "resnet50.pth"
    summary = pretrain(out, **TINY, val_crops=8)
    assert summary["classes"] == 20 and 0 <= summary["val_accuracy"] <= 1
    assert not (tmp_path / "resnet50.pth.ckpt").exists()  # the checkpoint goes once the file is written
    saved = read_state_dict(out)
    assert saved and not any(k.startswith("fc.") for k in saved)
    torch.manual_seed(0)
    detector = fasterrcnn_resnet50_fpn(num_classes=3, width=0.125, weights_backbone=out)
    body = detector.backbone.body.state_dict()
    loaded = [k for k in body if k in saved]
    assert {k.split(".")[0] for k in loaded} == {"conv1", "bn1", "layer1", "layer2", "layer3", "layer4"}
    assert all(torch.equal(body[k], saved[k]) for k in loaded)
    # as with ImageNet weights: batch norm frozen, conv1 and conv2_x frozen
    frozen = [p for n, p in detector.backbone.body.named_parameters() if n.startswith(("conv1", "layer1"))]
    assert frozen and not any(p.requires_grad for p in frozen)
    with pytest.raises(ValueError, match=r"'conv1.weight' has shape \[8, 3, 7, 7\] in the file(.|\n)*width \(0.25\)"):
        fasterrcnn_resnet50_fpn(num_classes=3, width=0.25, weights_backbone=out)


def test_interrupted_pretraining_resumes_to_the_same_weights(tmp_path):
    pretrain(tmp_path / "whole.pth", **TINY)

    def stop(step, record):
        if step == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        pretrain(tmp_path / "resumed.pth", **TINY, checkpoint_every=1, callback=stop)
    assert (tmp_path / "resumed.pth.ckpt").exists() and not (tmp_path / "resumed.pth").exists()
    pretrain(tmp_path / "resumed.pth", **TINY, checkpoint_every=1)
    whole, resumed = read_state_dict(tmp_path / "whole.pth"), read_state_dict(tmp_path / "resumed.pth")
    assert whole.keys() == resumed.keys() and all(torch.equal(whole[k], resumed[k]) for k in whole)


def test_a_profile_names_its_backbone_and_builds_it_once_where_missing(tmp_path, monkeypatch):
    """cpu and ci detectors start from the course's file (backbone_weights finds it, or says how to build it); gpu
    from torchvision's ImageNet weights by name, passed through; build_backbone pretrains only what is missing."""
    monkeypatch.setenv("COURSE_DATA_DIR", str(tmp_path))
    assert backbone_weights(PROFILES["gpu"]) == "IMAGENET1K_V1" and build_backbone(PROFILES["gpu"]) is None
    ci = PROFILES["ci"]
    assert ci.detector.weights_backbone == PROFILES["cpu"].detector.weights_backbone == PRETRAINED
    expected = tmp_path / "ci" / "pretrained" / f"resnet50_w{ci.detector.width:g}.pth"
    assert backbone_path(tmp_path / "ci", ci.detector.width) == expected
    with pytest.raises(FileNotFoundError, match=r"(?s)resnet50_w0.125.pth does not exist.*pretrain_backbones.py "
                                                r"--profile ci"):
        backbone_weights(ci)
    assert build_backbone(ci, progress=False) == expected and backbone_weights(ci) == expected
    first = expected.stat().st_mtime_ns
    assert build_backbone(ci, progress=False) == expected and expected.stat().st_mtime_ns == first  # kept
    fasterrcnn_resnet50_fpn(num_classes=3, width=ci.detector.width, weights_backbone=backbone_weights(ci))


def test_pretrained_vgg16_loads_its_convolutions_into_rcnn(tmp_path):
    """Chapter 4's VGG16: the file holds the thirteen convolutions under torchvision's names (the classifier, which
    read pool5 averaged, is not saved); R-CNN loads them at the same width and keeps its own fc6 / fc7, which the
    64-px crops could not pretrain (fc6 reads a 7 x 7 pool5)."""
    from course_lib.detection import rcnn_vgg16

    out = tmp_path / "vgg16.pth"
    summary = pretrain(out, network="vgg16", **TINY, val_crops=8)
    assert summary["network"] == "vgg16" and 0 <= summary["val_accuracy"] <= 1
    saved = read_state_dict(out)
    assert sorted(saved) == sorted(f"features.{i}.{kind}" for i in (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)
                                   for kind in ("weight", "bias"))
    torch.manual_seed(0)
    fresh = rcnn_vgg16(3, width=0.125)
    torch.manual_seed(0)
    loaded = rcnn_vgg16(3, width=0.125, weights_backbone=out)
    vgg, before = loaded.features.vgg.state_dict(), fresh.features.vgg.state_dict()
    assert all(torch.equal(vgg[k], saved[k]) for k in saved)
    assert not torch.equal(vgg["features.0.weight"], before["features.0.weight"])
    assert all(torch.equal(vgg[k], before[k]) for k in vgg if k.startswith(("fc6.", "fc7.")))
    with pytest.raises(ValueError, match=r"features.0.weight: the file has shape \(8, 3, 3, 3\), this network "
                                         r"\(width 0.25\) \(16, 3, 3, 3\)"):
        rcnn_vgg16(3, width=0.25, weights_backbone=out)
    without_one = {k: v for k, v in saved.items() if k != "features.28.bias"}
    with pytest.raises(ValueError, match=r"lacks \['features.28.bias'\]"):
        loaded.features.vgg.load_torchvision_state_dict(without_one)
    with pytest.raises(ValueError, match=r"network='vgg19'.*'resnet50', 'vgg16'"):
        pretrain(tmp_path / "vgg19.pth", network="vgg19", **TINY)
    assert not (tmp_path / "vgg19.pth").exists() and not (tmp_path / "vgg19.pth.ckpt").exists()


def test_chapter_4s_vgg16_is_named_and_built_per_profile_like_the_resnet(tmp_path, monkeypatch):
    monkeypatch.setenv("COURSE_DATA_DIR", str(tmp_path))
    gpu, ci = PROFILES["gpu"], PROFILES["ci"]
    assert backbone_weights(gpu, "vgg16") == "IMAGENET1K_V1" and build_backbone(gpu, "vgg16") is None
    assert ci.rcnn.weights_backbone == PROFILES["cpu"].rcnn.weights_backbone == PRETRAINED
    expected = tmp_path / "ci" / "pretrained" / f"vgg16_w{ci.rcnn.width:g}.pth"
    assert backbone_path(tmp_path / "ci", ci.rcnn.width, "vgg16") == expected
    with pytest.raises(FileNotFoundError, match=r"(?s)pretrained VGG16 at width 0.125.*vgg16_w0.125.pth does not "
                                                r"exist.*pretrain_backbones.py --profile ci"):
        backbone_weights(ci, "vgg16")
    assert build_backbone(ci, "vgg16", progress=False) == expected and backbone_weights(ci, "vgg16") == expected
    assert not (tmp_path / "ci" / "pretrained" / f"resnet50_w{ci.detector.width:g}.pth").exists()  # only the one asked
    with pytest.raises(ValueError, match="network='alexnet'"):
        backbone_weights(ci, "alexnet")
