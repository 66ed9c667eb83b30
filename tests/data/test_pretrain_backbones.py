"""data_scripts/pretrain_backbones.py: builds the profile's backbone file where it is missing, keeps it otherwise,
and pretrains nothing at the papers' width (seconds, ci profile)."""
from .conftest import load_script


def test_pretrain_backbones_builds_what_is_missing_and_keeps_the_rest(tmp_path, capsys):
    script = load_script("pretrain_backbones")
    args = ["--profile", "ci", "--out", str(tmp_path), "--quiet", "--val-crops", "4"]
    assert script.main(args) == 0
    path = tmp_path / "pretrained" / "resnet50_w0.125.pth"  # ci: detector.width 0.125
    assert path.is_file() and "Done:" in capsys.readouterr().out
    stamp = path.stat().st_mtime_ns
    assert script.main(args) == 0
    assert "exists, kept" in capsys.readouterr().out and path.stat().st_mtime_ns == stamp
    assert script.main(["--profile", "gpu", "--out", str(tmp_path)]) == 0
    assert "pretrains nothing" in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "pretrained").iterdir()) == ["resnet50_w0.125.pth"]
