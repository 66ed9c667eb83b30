"""What killed runs leave (hidden temporary folders and files) is removed by the next run, never a live run's."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest

from course_lib.data.atomic import AtomicDirectory, atomic_write_bytes, remove_stale_temporaries
from course_lib.data.synthetic import build_dataset
from course_lib.profiles import get_profile

from .conftest import REPO, dead_pid


def test_stale_temporaries_of_dead_processes_go_live_ones_stay(tmp_path, capsys, live_pid):
    dead, me = dead_pid(), os.getpid()
    for name in (f".multiscale.tmp-{dead}", f".extracted-voc.tmp-{dead}", f".voc_seg.tmp-{dead}",
                 f".segmentation.old-{dead}", f".extract-x.tar-{dead}", f".coco.tmp-{dead}", "coco",
                 f".multiscale.tmp-{me}", f".small_objects.tmp-{live_pid}", ".hidden"):
        (tmp_path / name).mkdir()
    (tmp_path / f".multiscale.tmp-{dead}" / "0.jpg").write_bytes(b"x" * 1000)
    # VOC's layout: the build hard-links the extracted images; the space goes only with both links
    (tmp_path / f".extracted-voc.tmp-{dead}" / "a.jpg").write_bytes(b"x" * 5000)
    os.link(tmp_path / f".extracted-voc.tmp-{dead}" / "a.jpg", tmp_path / f".voc_seg.tmp-{dead}" / "a.jpg")
    # ... and a link into a dataset that stays frees nothing
    (tmp_path / "coco" / "b.jpg").write_bytes(b"x" * 7000)
    os.link(tmp_path / "coco" / "b.jpg", tmp_path / f".coco.tmp-{dead}" / "b.jpg")
    (tmp_path / f".ann.json.{dead}.0123abcd.tmp").write_bytes(b"x" * 10)
    (tmp_path / f".ann.json.{live_pid}.0123abcd.tmp").write_bytes(b"x")
    (tmp_path / "notes.tmp").write_bytes(b"mine")

    removed = remove_stale_temporaries(tmp_path)

    stale = sorted([f".ann.json.{dead}.0123abcd.tmp", f".coco.tmp-{dead}", f".extract-x.tar-{dead}",
                    f".extracted-voc.tmp-{dead}", f".multiscale.tmp-{dead}", f".segmentation.old-{dead}",
                    f".voc_seg.tmp-{dead}"])
    assert [p.name for p in removed] == stale
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([
        "coco", f".multiscale.tmp-{me}", f".small_objects.tmp-{live_pid}", ".hidden",
        f".ann.json.{live_pid}.0123abcd.tmp", "notes.tmp"])
    assert (tmp_path / "coco" / "b.jpg").read_bytes() == b"x" * 7000
    assert capsys.readouterr().out == (
        f"Removed what interrupted runs left in {tmp_path}: {', '.join(stale)} (6.0 KB freed)\n")  # 1000 + 5000 + 10
    assert remove_stale_temporaries(tmp_path) == [] and capsys.readouterr().out == ""


def test_a_killed_build_is_cleaned_up_by_the_next_one(tmp_path, capsys):
    """Before: the killed build's hidden .<name>.tmp-<pid> folder stayed for good."""
    script = textwrap.dedent(f"""
        import os, signal
        from course_lib.data.atomic import AtomicDirectory
        with AtomicDirectory({str(tmp_path / "ds")!r}, {{}}) as tmp:
            (tmp / "big.bin").write_bytes(bytes(3000))
            os.kill(os.getpid(), signal.SIGKILL)
    """)
    child = subprocess.run([sys.executable, "-c", script], env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert child.returncode == -signal.SIGKILL
    (leftover,) = tmp_path.iterdir()
    assert leftover.name.startswith(".ds.tmp-")

    with AtomicDirectory(tmp_path / "ds", {"n": 1}) as tmp:
        (tmp / "a.txt").write_text("a")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]
    assert capsys.readouterr().out == f"Removed what interrupted runs left in {tmp_path}: {leftover.name} (3.0 KB freed)\n"


def test_a_complete_synthetic_dataset_that_is_kept_still_gets_its_folder_cleaned(ci_data, capsys):
    stale = ci_data / f".multiscale.tmp-{dead_pid()}"
    (stale / "images").mkdir(parents=True)
    assert build_dataset("multiscale", ci_data, get_profile("ci"), seed=0, skip_existing=True) == (
        ci_data / "multiscale", False)
    assert not stale.exists() and stale.name in capsys.readouterr().out


def test_atomic_write_bytes_removes_its_own_stale_files_once_per_folder(tmp_path, capsys):
    stale = tmp_path / f".ann.json.{dead_pid()}.89abcdef.tmp"
    stale.write_bytes(b"half")
    atomic_write_bytes(tmp_path / "ann.json", b"{}")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ann.json"]
    assert stale.name in capsys.readouterr().out
    own = tmp_path / f".other.json.{os.getpid()}.89abcdef.tmp"  # a write of this (live) process
    own.write_bytes(b"")
    atomic_write_bytes(tmp_path / "b.json", b"{}")
    assert own.exists()


@pytest.mark.skipif(os.name == "nt", reason="POSIX process ids")
def test_a_pid_that_cannot_exist_is_not_running(tmp_path, capsys):
    (tmp_path / ".x.tmp-99999999999999999999").mkdir()
    assert [p.name for p in remove_stale_temporaries(tmp_path)] == [".x.tmp-99999999999999999999"]
