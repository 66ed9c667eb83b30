"""python -m course_lib.run refuses at start what would fail or lie later (GPUs that are not there, a results folder
it cannot write), writes no terminal colour codes into its files, and --force keeps the old results until the new
run has finished. The notebooks' execution is faked: these are about the runner, not the chapters."""
import json
import os

import nbformat
import pytest
import torch

from course_lib import run as runner

ANSI_ERROR = "\x1b[0;31mValueError\x1b[0m: step 3: loss term \x1b[1m'loss_box_reg'\x1b[0m is nan"


def fake(calls, *, fail_with=None, interrupt=False):
    """An ``execute_notebook`` that records a figure in the chapter's results and writes the executed notebook."""
    def execute(path, out, env, **kw):
        calls.append(env["COURSE_RESULTS_DIR"])
        figures = os.path.join(env["COURSE_RESULTS_DIR"], "figures")
        os.makedirs(figures, exist_ok=True)
        with open(os.path.join(figures, f"loss-{len(calls)}.png"), "wb") as f:
            f.write(b"\x89PNG")
        nb = nbformat.read(path, as_version=4)
        nb.metadata["run"] = len(calls)
        out.parent.mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, out)
        if interrupt:
            raise KeyboardInterrupt  # Ctrl-C, half-way through the chapter
        return {"status": "failed", "error": fail_with, "wall_s": 2.0} if fail_with else {"status": "done", "wall_s": 1.0}
    return execute


def test_more_gpus_than_the_machine_has_is_refused_at_start(tmp_path, monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(runner, "execute_notebook", fake(calls))
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    with pytest.raises(ValueError, match=r"--gpus 2: this machine has 0 CUDA GPU\(s\) .*Run with no --gpus "
                                         r"\(one process\), or on a machine with 2 GPUs"):
        runner.run("ci", ["00"], gpus=2, results=tmp_path, progress=False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(SystemExit) as stopped:
        runner.main(["--profile", "ci", "--chapters", "00", "--gpus", "4", "--results", str(tmp_path)])
    assert stopped.value.code == 2 and "--gpus 4: this machine has 2 CUDA GPU(s)" in capsys.readouterr().err
    assert calls == [] and not list(tmp_path.iterdir())


def test_a_results_folder_that_cannot_be_written_is_refused_at_start(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(runner, "execute_notebook", fake(calls))
    (tmp_path / "results").write_text("a file where the results folder should be")
    with pytest.raises(ValueError, match=rf"{tmp_path / 'results'} is a file, not a folder. Pass another --results"):
        runner.run("ci", ["00"], results=tmp_path / "results", progress=False)
    folder = tmp_path / "ro"
    folder.mkdir()  # read-only for this user (as root, chmod would not stop the runner: os.access says so)
    monkeypatch.setattr(os, "access", lambda p, mode: not (mode & os.W_OK and str(p) == str(folder)))
    with pytest.raises(ValueError, match=rf"the folder {folder} is read-only for this user"):
        runner.run("ci", ["00"], results=folder, progress=False)
    assert calls == [] and not list(folder.iterdir())


def test_no_colour_codes_in_run_json_and_the_report(tmp_path, monkeypatch):
    monkeypatch.setattr(runner, "execute_notebook", fake([], fail_with=ANSI_ERROR))
    report = runner.run("ci", ["00"], results=tmp_path, progress=False)
    status = json.loads((tmp_path / "ci" / "00" / "run.json").read_text())
    assert status["error"] == "ValueError: step 3: loss term 'loss_box_reg' is nan"
    text = report.read_text()
    assert "\x1b" not in text and "`ValueError: step 3: loss term 'loss_box_reg' is nan`" in text


def test_an_interrupted_force_run_keeps_the_old_results(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(runner, "execute_notebook", fake(calls))
    report = runner.run("ci", ["00"], results=tmp_path, force=True, progress=False)  # nothing to keep yet
    root, before = tmp_path / "ci", report.read_text()
    old = {p.relative_to(root): p.read_bytes() for p in root.rglob("*") if p.is_file()}
    assert "](00/figures/loss-1.png)" in before

    monkeypatch.setattr(runner, "execute_notebook", fake(calls, interrupt=True))
    with pytest.raises(KeyboardInterrupt):
        runner.run("ci", ["00"], results=tmp_path, force=True, progress=False)
    assert calls[-1] == str(root / "00"), "the notebook still writes into results/<profile>/<chapter>"
    now = {p.relative_to(root): p.read_bytes() for p in root.rglob("*") if p.is_file()}
    assert now == old, "the old results (folder, executed notebook, report) are back, the partial new ones gone"

    monkeypatch.setattr(runner, "execute_notebook", fake(calls))
    runner.run("ci", ["00"], results=tmp_path, force=True, progress=False)  # finished: the new results replace them
    assert sorted(p.name for p in (root / "00" / "figures").iterdir()) == [f"loss-{len(calls)}.png"]
    assert nbformat.read(root / runner.chapters()["00"].name, as_version=4).metadata["run"] == len(calls)
    assert not list(root.glob(".*")), "nothing set aside is left behind"


def test_results_set_aside_by_a_killed_force_run_come_back_first(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(runner, "execute_notebook", fake(calls))
    runner.run("ci", ["00"], results=tmp_path, progress=False)
    root = tmp_path / "ci"
    executed = root / runner.chapters()["00"].name
    aside = root / ".00.previous"
    aside.mkdir()  # where a --force run killed outright (kill -9, a lost machine) left them
    (root / "00").rename(aside / "00")
    executed.rename(aside / executed.name)
    (root / "00" / "figures").mkdir(parents=True)
    (root / "00" / "figures" / "half.png").write_bytes(b"")
    runner.run("ci", ["00"], results=tmp_path, progress=False)
    assert len(calls) == 1, "the finished chapter, put back, is skipped"
    assert sorted(p.name for p in (root / "00" / "figures").iterdir()) == ["loss-1.png"]
    assert executed.is_file() and not aside.exists()


def test_data_papers_gives_every_chapter_a_dataset_the_loader_knows():
    """--data papers: chapters 4-6 on VOC 2007 test as their papers (07 / 07+12 training), each name a COURSE_DATA."""
    from course_lib.data.paths import DATA_CHOICES
    from course_lib.run import PAPERS_DATA

    assert set(PAPERS_DATA.values()) <= set(DATA_CHOICES)
    assert (PAPERS_DATA["04"], PAPERS_DATA["05"], PAPERS_DATA["06"]) == ("voc07", "voc0712", "voc0712")
