"""course_lib.website without Sphinx or a kernel: the explorers' pictures, the reworded checker lines, the cache key,
the papers' page. (tests/browser/test_site.py builds and reads the whole site.)"""
from __future__ import annotations

import base64
import json

import pytest

import course_lib
from course_lib import papers
from course_lib.report import chapters
from course_lib.website import SOLUTIONS_MARK, cache_key, papers_page, publish, usable

PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n fake").decode()
VIEW = "application/vnd.jupyter.widget-view+json"
STATE = "application/vnd.jupyter.widget-state+json"


def _executed(with_picture: bool = True) -> dict:
    """An executed notebook: an explorer (a VBox holding a slider and an Image) and a checker's output."""
    image = {"model_name": "ImageModel", "state": {"format": "png", "_model_name": "ImageModel"}}
    if with_picture:
        image["buffers"] = [{"data": PNG, "encoding": "base64", "path": ["value"]}]
    state = {"box": {"model_name": "VBoxModel", "state": {"children": ["IPY_MODEL_slider", "IPY_MODEL_image"]}},
             "slider": {"model_name": "IntSliderModel", "state": {"value": 3}}, "image": image}
    return {"nbformat": 4, "nbformat_minor": 5, "metadata": {"widgets": {STATE: {"state": state}}}, "cells": [
        {"cell_type": "code", "source": "NMSExplorer()", "metadata": {}, "execution_count": 1, "outputs": [
            {"output_type": "display_data", "metadata": {},
             "data": {"text/plain": "VBox(...)", VIEW: {"model_id": "box", "version_major": 2}}}]},
        {"cell_type": "code", "source": "check_box_iou(box_iou)", "metadata": {}, "execution_count": 2, "outputs": [
            {"output_type": "stream", "name": "stdout",
             "text": f"{SOLUTIONS_MARK} box_iou is still the stub: checking the reference solution instead.\n"
                     "\u2713 box_iou: all 6 hidden cases pass\n"}]}]}


def test_an_explorer_becomes_its_picture_and_a_note(monkeypatch):
    monkeypatch.setattr(course_lib, "REPOSITORY", "https://github.com/someone/course")
    monkeypatch.setattr(course_lib, "BRANCH", "dev")
    nb = publish(_executed(), "03b_detection_toolkit.ipynb")
    outputs = nb["cells"][0]["outputs"]
    assert outputs[0]["data"] == {"image/png": PNG}
    note = outputs[1]["data"]["text/html"]
    assert "JupyterLab" in note
    colab = "https://colab.research.google.com/github/someone/course/blob/dev/notebooks/03b_detection_toolkit.ipynb"
    assert colab in note
    assert "widgets" not in nb["metadata"], "the widget state would make the page load the widgets' JavaScript"


def test_the_checkers_solution_lines_are_reworded_and_the_rest_kept():
    text = publish(_executed(), "x.ipynb")["cells"][1]["outputs"][0]["text"]
    assert SOLUTIONS_MARK not in text and "reference solution standing in for the stub" in text
    assert "\u2713 box_iou: all 6 hidden cases pass" in text


def test_a_progress_bar_becomes_its_last_text():
    nb = _executed()
    nb["metadata"]["widgets"][STATE]["state"] = {
        "box": {"model_name": "HBoxModel", "state": {"children": ["IPY_MODEL_a", "IPY_MODEL_b", "IPY_MODEL_c"]}},
        "a": {"model_name": "HTMLModel", "state": {"value": "training:\u2007100%"}},
        "b": {"model_name": "FloatProgressModel", "state": {"value": 150.0, "max": 150.0}},
        "c": {"model_name": "HTMLModel", "state": {"value": "150/150 [01:07&lt;00:00]"}}}
    outputs = publish(nb, "01_x.ipynb")["cells"][0]["outputs"]
    assert outputs == [{"output_type": "display_data", "metadata": {},
                        "data": {"text/plain": "training:\u2007100% " + "\u2588" * 10 + " 150/150 [01:07<00:00]"}}]


def test_a_widget_without_its_state_or_picture_is_an_error_that_names_the_notebook(tmp_path):
    with pytest.raises(ValueError, match="07_fpn.ipynb: an explorer's picture is missing"):
        publish(_executed(with_picture=False), "07_fpn.ipynb")
    stateless = _executed()
    del stateless["metadata"]["widgets"]
    with pytest.raises(ValueError, match="08_efpn.ipynb: a widget's output has no state"):
        publish(stateless, "08_efpn.ipynb")
    notebook, executed = tmp_path / "n.ipynb", tmp_path / "e.ipynb"
    source = _executed()
    for cell in source["cells"]:
        cell["outputs"] = []
    notebook.write_text(json.dumps(source))
    executed.write_text(json.dumps(_executed()))
    assert usable(executed, notebook)
    executed.write_text(json.dumps(stateless))
    assert not usable(executed, notebook), "an executed copy without the widgets' state cannot be published"
    source["cells"][1]["source"] = "check_box_iou(my_box_iou)"
    notebook.write_text(json.dumps(source))
    executed.write_text(json.dumps(_executed()))
    assert not usable(executed, notebook), "an executed copy of older code is stale"
    source = _executed()
    source["cells"].insert(0, {"cell_type": "markdown", "source": "## What you will learn (edited)", "metadata": {}})
    notebook.write_text(json.dumps(source))
    executed_nb = _executed()
    executed_nb["cells"].insert(0, {"cell_type": "markdown", "source": "## What you will learn", "metadata": {}})
    executed.write_text(json.dumps(executed_nb))
    assert not usable(executed, notebook), "an executed copy of older text would publish that text"


def test_the_cache_key_follows_the_notebook_and_the_profile(tmp_path):
    path = tmp_path / "00_x.ipynb"
    path.write_text("{}")
    key = cache_key(path, "ci")
    assert cache_key(path, "ci") == key
    assert cache_key(path, "cpu") != key
    path.write_text('{"cells": []}')
    assert cache_key(path, "ci") != key


def test_the_papers_page_holds_every_number_and_links_the_chapters_built():
    found = chapters()
    page = papers_page({c: found[c] for c in ("00", "07")})
    for entry in papers.NUMBERS.values():
        assert f"| {entry.formatted()} |" in page.replace("\\|", "|")
    assert f"[07]({found['07'].name})" in page
    assert f"({found['05'].name})" not in page, "a chapter not on the site must not be linked"


def test_a_chapter_runs_again_only_when_its_key_changed_and_a_failed_run_is_never_cached(tmp_path, monkeypatch):
    import course_lib.run
    from course_lib.website import executed_notebook

    runs = []

    def fake_execute(path, out, env, *, timeout=None):
        runs.append(env["COURSE_PROFILE"])
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text("{}")
        return {"status": "done" if len(runs) < 3 else "failed", "error": "ZeroDivisionError", "wall_s": 0.0}

    monkeypatch.setattr(course_lib.run, "execute_notebook", fake_execute)
    notebook, cache = tmp_path / "00_x.ipynb", tmp_path / "cache"
    notebook.write_text("{}")
    assert executed_notebook(notebook, "ci", cache=cache) == cache / notebook.name
    executed_notebook(notebook, "ci", cache=cache)
    assert runs == ["ci"], "an unchanged notebook in the same profile is not run again"
    executed_notebook(notebook, "cpu", cache=cache)
    assert runs == ["ci", "cpu"]
    notebook.write_text('{"cells": []}')
    with pytest.raises(RuntimeError, match="00_x.ipynb failed in the cpu profile: ZeroDivisionError"):
        executed_notebook(notebook, "cpu", cache=cache)
    assert not (cache / "00_x.key").exists(), "a failed run must not be taken from the cache next time"
