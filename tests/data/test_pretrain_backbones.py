"""data_scripts/pretrain_backbones.py: builds the profile's backbone files (the detectors' ResNet-50, chapter 4's
VGG16) where they are missing, keeps them otherwise, builds only the networks named with --network, and pretrains
nothing at the papers' width (seconds, ci profile)."""
from .conftest import load_script


def test_pretrain_backbones_builds_what_is_missing_and_keeps_the_rest(tmp_path, capsys):
    script = load_script("pretrain_backbones")
    args = ["--profile", "ci", "--out", str(tmp_path), "--quiet", "--val-crops", "4"]
    assert script.main([*args, "--network", "vgg16"]) == 0
    vgg = tmp_path / "pretrained" / "vgg16_w0.125.pth"  # ci: rcnn.width 0.125
    assert vgg.is_file() and capsys.readouterr().out.count("Done:") == 1
    assert sorted(p.name for p in (tmp_path / "pretrained").iterdir()) == ["vgg16_w0.125.pth"]
    stamp = vgg.stat().st_mtime_ns
    assert script.main(args) == 0  # every network: the ResNet is built, the VGG16 kept
    resnet = tmp_path / "pretrained" / "resnet50_w0.125.pth"  # ci: detector.width 0.125
    out = capsys.readouterr().out
    assert resnet.is_file() and out.count("Done:") == 1 and f"{vgg}: exists, kept" in out
    assert vgg.stat().st_mtime_ns == stamp
    stamps = {p: p.stat().st_mtime_ns for p in (vgg, resnet)}
    assert script.main(args) == 0
    assert capsys.readouterr().out.count("exists, kept") == 2
    assert all(p.stat().st_mtime_ns == s for p, s in stamps.items())
    assert script.main(["--profile", "gpu", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "pretrains no resnet50" in out and "pretrains no vgg16" in out and "IMAGENET1K_V1" in out
    assert sorted(p.name for p in (tmp_path / "pretrained").iterdir()) == ["resnet50_w0.125.pth", "vgg16_w0.125.pth"]
