"""python -m course_lib.run: two short chapters end to end through the real command, on a prepared (fabricated)
PASCAL VOC; finished chapters skipped, interrupted ones run again; the report assembled for every chapter."""
from __future__ import annotations

import base64
import importlib.util
import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import nbformat
import numpy as np
import pytest
from PIL import Image

from course_lib import run as runner
from course_lib.data import data_root

REPO = Path(runner.__file__).resolve().parents[1]
PNG_1PX = base64.b64encode(b"\x89PNG\r\n\x1a\n" + b"\0" * 16).decode()  # enough to be saved and linked


def _voc_script():
    spec = importlib.util.spec_from_file_location("prepare_voc_for_run", REPO / "data_scripts" / "prepare_voc.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def fabricate_voc(tmp_path: Path, n: int = 6, size=(120, 160)) -> Path:
    """A VOC 2012 archive in the real layout: ``n`` scenes (a person or a cat each), 2/3 train, 1/3 val."""
    voc = _voc_script()
    palette = voc.voc_colormap().ravel().tolist()
    h, w = size
    members, stems = {}, [f"2008_{i:06d}" for i in range(n)]

    def add(name, data):
        members["VOCdevkit/VOC2012/" + name] = data

    for i, stem in enumerate(stems):
        cls, name = (15, "person") if i % 2 else (8, "cat")
        rng = np.random.default_rng(i)
        image = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
        mask = np.zeros((h, w), np.uint8)
        y0, x0 = 10 + 5 * i, 20 + 7 * i
        mask[y0 - 1:y0 + 51, x0 - 1:x0 + 61] = 255
        mask[y0:y0 + 50, x0:x0 + 60] = cls
        image[mask == cls] = (200, 40 * (i % 2), 90)
        for key, array, mode in (("JPEGImages", image, "RGB"), ("SegmentationClass", mask, "P"),
                                 ("SegmentationObject", np.where(mask == cls, 1, mask).astype(np.uint8), "P")):
            buf = io.BytesIO()
            im = Image.fromarray(array) if mode == "RGB" else Image.frombytes("P", (w, h), array.tobytes())
            if mode == "P":
                im.putpalette(palette)
            im.save(buf, format="JPEG" if mode == "RGB" else "PNG")
            add(f"{key}/{stem}.{'jpg' if mode == 'RGB' else 'png'}", buf.getvalue())
        add(f"Annotations/{stem}.xml", (
            f"<annotation><filename>{stem}.jpg</filename><size><width>{w}</width><height>{h}</height><depth>3</depth>"
            f"</size><object><name>{name}</name><truncated>0</truncated><difficult>0</difficult><bndbox>"
            f"<xmin>{x0 + 1}</xmin><ymin>{y0 + 1}</ymin><xmax>{x0 + 60}</xmax><ymax>{y0 + 50}</ymax></bndbox></object>"
            "</annotation>").encode())
    train, val = stems[: 2 * n // 3], stems[2 * n // 3:]
    for kind in ("Segmentation", "Main"):
        add(f"ImageSets/{kind}/train.txt", "".join(s + "\n" for s in train).encode())
        add(f"ImageSets/{kind}/val.txt", "".join(s + "\n" for s in val).encode())
    archive = tmp_path / "VOCtrainval_11-May-2012.tar"
    with tarfile.open(archive, "w") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return archive


def test_two_chapters_end_to_end_on_prepared_voc(tmp_path):
    """The real command, as `make instructor PROFILE=ci CHAPTERS="00 02" DATA=voc` runs it: the course map and
    FCN (which trains and evaluates) on a prepared VOC. (Skipping finished chapters: the next test.)"""
    data = tmp_path / "data"
    (data / "ci").parent.mkdir(parents=True)
    (data / "ci").symlink_to(data_root() / "ci")  # the synthetic ci sets that make test built (small_objects)
    assert _voc_script().main(["--archive", str(fabricate_voc(tmp_path)), "--out", str(data / "real"),
                               "--skip-checksum"]) == 0
    env = {k: v for k, v in os.environ.items() if k != "COURSE_SOLUTIONS"}  # the runner sets it for the exercises
    env.update(COURSE_DATA_DIR=str(data), PYTHONPATH=str(REPO))
    cmd = [sys.executable, "-m", "course_lib.run", "--profile", "ci", "--chapters", "02", "00", "--data", "voc",
           "--results", str(tmp_path / "results"), "--no-progress"]
    first = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    root = tmp_path / "results" / "ci"
    for chapter, name in (("00", "00_course_map"), ("02", "02_fcn")):
        status = json.loads((root / chapter / "run.json").read_text())
        assert status["status"] == "done" and status["data"] == "voc" and status["wall_s"] > 0
        assert status["peak_rss_mib"] > 100
        executed = nbformat.read(root / f"{name}.ipynb", as_version=4)
        assert any(c.get("outputs") for c in executed.cells), "the executed notebook keeps its outputs"
        committed = nbformat.read(REPO / "notebooks" / f"{name}.ipynb", as_version=4)
        assert not any(c.get("outputs") for c in committed.cells if c.cell_type == "code")
    # the notebooks read VOC: its 21 classes, not the synthetic scenes' 6
    fcn = "\n".join(o.get("text", "") for c in nbformat.read(root / "02_fcn.ipynb", as_version=4).cells
                    for o in c.get("outputs", []))
    assert "person" in fcn or "21" in fcn
    report = (root / "report.md").read_text()
    assert report.index("## 00 ·") < report.index("## 02 ·"), "chapters in the course's order"
    assert "torch " in report and "course commit" in report and "| [02](#chapter-02) 02_fcn | done | voc |" in report
    assert "fcn.table2.fcn8s.mean_iu" in report, "chapter 2 lists the papers' numbers it quotes"
    assert "![" in report.split("## 02 ·")[1], "chapter 2 shows its plots"


def test_an_interrupted_chapter_runs_again_and_finished_ones_are_skipped(tmp_path, monkeypatch, capsys):
    calls = []

    def fake_execute(path, out, env, **kw):
        calls.append(path.name.split("_")[0])
        assert env["COURSE_SOLUTIONS"] == "1" and env["COURSE_PROFILE"] == "ci" and env["COURSE_DATA"] == "synthetic"
        assert env["COURSE_RESULTS_DIR"] == str(tmp_path / "ci" / calls[-1])
        if path.name.startswith("03_") and calls.count("03") == 1:
            raise KeyboardInterrupt  # Ctrl-C in chapter 3: nothing marks it done
        out.parent.mkdir(parents=True, exist_ok=True)
        nbformat.write(nbformat.read(path, as_version=4), out)
        return {"status": "done", "wall_s": 1.5, "peak_rss_mib": 300.0}

    monkeypatch.setattr(runner, "execute_notebook", fake_execute)
    monkeypatch.delenv("COURSE_SOLUTIONS", raising=False)
    with pytest.raises(KeyboardInterrupt):
        runner.run("ci", ["02", "03", "04"], results=tmp_path, progress=False)
    assert calls == ["02", "03"] and not (tmp_path / "ci" / "03" / "run.json").exists()
    runner.run("ci", ["02", "03", "04"], results=tmp_path, progress=True)
    assert calls == ["02", "03", "03", "04"], "02 was finished: skipped; 03 runs again"
    shown = capsys.readouterr()
    assert "02: done before" in shown.out + shown.err and "skipped; --force runs it again" in shown.out + shown.err
    runner.run("ci", ["02"], results=tmp_path, force=True, progress=False)
    assert calls[-1] == "02"
    with pytest.raises(ValueError, match="Unknown chapter.*99"):
        runner.run("ci", ["99"], results=tmp_path, progress=False)
    with pytest.raises(ValueError, match="inside"):
        runner.run("ci", ["02"], results=REPO / "notebooks", progress=False)


def test_the_report_has_every_chapters_table_plot_time_and_papers_numbers(tmp_path):
    """The report assembled from executed notebooks of every chapter (the committed notebooks with outputs added
    where the chapter shows its results: a recorded table for some, what the cells display for the others)."""
    from course_lib import papers

    root = tmp_path / "ci"
    chapters = runner.chapters()
    for i, (chapter, path) in enumerate(chapters.items()):
        nb = nbformat.read(path, as_version=4)
        code = [c for c in nb.cells if c.cell_type == "code"]
        table = "| | ours | paper |\n|---|---|---|\n| mean IU | 0.5 | 62.2 |"
        code[-1].outputs = [nbformat.v4.new_output("display_data", data={"image/png": PNG_1PX, "text/plain": "fig"})]
        if i % 2:  # the notebook called report.table(...)
            (root / chapter / "tables").mkdir(parents=True)
            (root / chapter / "tables" / "beside_the_paper.md").write_text(table)
        else:  # what its "Beside the paper" section shows
            nb.cells.append(nbformat.v4.new_markdown_cell("## Beside the paper"))
            cell = nbformat.v4.new_code_cell("table")
            cell.outputs = [nbformat.v4.new_output("execute_result", data={"text/markdown": table,
                                                                             "text/plain": "table"})]
            nb.cells.append(cell)
        root.mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, root / path.name)
        runner._write_json(root / chapter / "run.json", {"status": "done", "wall_s": 61.0 + i, "peak_rss_mib": 900.0,
                                                         "peak_gpu_mib": 2048.0, "data": "synthetic", "gpus": 1})
    report = runner.build_report(root).read_text()
    sections = report.split('<a id="chapter-')[1:]
    assert [s.split('"')[0] for s in sections] == list(chapters)
    for (chapter, path), section in zip(chapters.items(), sections):
        assert "| mean IU | 0.5 | 62.2 |" in section, f"chapter {chapter}: table missing"
        image = section.split("### Plots")[1].split("](")[1].split(")")[0]
        assert (root / image).is_file(), f"chapter {chapter}: plot {image} not written"
        assert f"done in {61.0 + list(chapters).index(chapter):.1f} s" in section, chapter
        assert "peak GPU memory 2,048 MiB" in section, chapter
        wanted = runner.CHAPTER_PAPERS.get(chapter, [])
        if any(n.paper in wanted for n in papers.NUMBERS.values()):
            assert "course_lib/papers.py" in section, f"chapter {chapter}: the papers' numbers are missing"
    assert "python " in report and "torch " in report and "gpu " in report
