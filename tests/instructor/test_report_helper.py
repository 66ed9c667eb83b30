"""course_lib.report: silent outside the runner, atomic files under $COURSE_RESULTS_DIR; the data selection."""
import json

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pytest

from course_lib import report
from course_lib.data import data_selection, dataset_dir


def test_report_writes_nothing_without_the_runner(tmp_path, monkeypatch):
    monkeypatch.delenv("COURSE_RESULTS_DIR", raising=False)
    monkeypatch.chdir(tmp_path)
    rows = [{"a": 1, "b": 0.5}]
    assert report.table(rows, name="t") is rows
    assert report.checkpoint("run") is None and report.checkpoint("run", default="x.pt") == "x.pt"
    assert list(tmp_path.iterdir()) == []


def test_report_records_tables_figures_and_checkpoints(tmp_path, monkeypatch):
    monkeypatch.setenv("COURSE_RESULTS_DIR", str(tmp_path))
    report.table([{"metric": "AP", "ours": 0.12345, "paper": None}], name="beside")
    assert (tmp_path / "tables" / "beside.md").read_text().splitlines() == [
        "| metric | ours | paper |", "|---|---|---|", "| AP | 0.1235 | -- |"]
    assert json.loads((tmp_path / "tables" / "beside.json").read_text())[0]["metric"] == "AP"
    report.table("**already markdown**", name="md")
    assert (tmp_path / "tables" / "md.md").read_text() == "**already markdown**"
    fig, ax = plt.subplots()
    ax.plot([0, 1])
    report.figure(fig, name="loss")
    plt.close(fig)
    assert (tmp_path / "figures" / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert report.checkpoint("fcn32s") == tmp_path / "checkpoints" / "fcn32s.pt"
    assert not list(tmp_path.rglob("*.tmp"))
    with pytest.raises(ValueError, match="'../x'"):
        report.table("x", name="../x")
    with pytest.raises(TypeError, match="list of dicts"):
        report.table(42, name="n")


def test_data_selection(tmp_path, monkeypatch):
    assert data_selection("") == {} and data_selection("synthetic") == {}
    assert data_selection("voc,tt100k") == {"segmentation": "voc_seg", "multiscale": "voc_det",
                                            "small_objects": "tt100k"}
    with pytest.raises(ValueError, match="'voc_det' and 'coco' both replace 'multiscale'"):
        data_selection("voc,coco")
    with pytest.raises(ValueError, match="unknown choice 'imagenet'"):
        data_selection("imagenet")
    monkeypatch.setenv("COURSE_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("COURSE_DATA", "coco")
    with pytest.raises(FileNotFoundError, match="prepare_coco.py"):
        dataset_dir("multiscale")
    coco = tmp_path / "real" / "coco"
    (coco / "annotations").mkdir(parents=True)
    (coco / "DONE.json").write_text("{}")
    (coco / "annotations" / "instances_val.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="lacks annotations/instances_train.json.*--splits train val"):
        dataset_dir("multiscale")
    (coco / "annotations" / "instances_train.json").write_text("{}")
    assert dataset_dir("multiscale") == coco
