"""python -m course_lib.exercises.grade on a class of four, each handing in chapter 1's two exercises: alice pasted
the reference solutions, bob a plausible wrong answer and an untouched stub, carol an endless loop, dave a crash.
The gradebook holds exactly their rows; carol's loop and dave's dead kernel cost them, not the run. Tiny notebooks
written here; the loop costs --timeout (25 s), the other notebooks run beside it (--jobs 2)."""
import csv
import inspect
import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from course_lib.exercises import grade, load_solution

REPO = Path(grade.__file__).resolve().parents[2]
SETUP = "from course_lib.exercises import ch01 as ex"
STUB_WINDOWS = ('def extract_windows(images, window, stride):\n    # YOUR CODE HERE\n'
                '    raise NotImplementedError("Exercise 1: write extract_windows")\n')
STUB_CONV = ('def linear_to_conv(linear, in_channels, kernel_size):\n    # YOUR CODE HERE\n'
             '    raise NotImplementedError("Exercise 2: write linear_to_conv")\n')
CHECK_WINDOWS = "\nextract_windows = ex.check_extract_windows(extract_windows)"
CHECK_CONV = "\nlinear_to_conv = ex.check_linear_to_conv(linear_to_conv)"
OFF_BY_ONE = '''def extract_windows(images, window, stride):  # range(0, H - window, stride) misses the last window
    n, c, h, w = images.shape
    tops, lefts = range(0, h - window, stride), range(0, w - window, stride)
    crops = [images[:, :, t:t + window, l:l + window] for t in tops for l in lefts]
    out = torch.stack(crops, 1).reshape(-1, c, window, window) if crops else images.new_zeros(0, c, window, window)
    return out, (len(tops), len(lefts))
'''
HANGS = "def extract_windows(images, window, stride):\n    while True:\n        pass\n"
CRASHES = "def extract_windows(images, window, stride):  # a crash in native code\n    import os, signal\n" \
          "    os.kill(os.getpid(), signal.SIGKILL)\n"


def write(path, windows, conv):
    """The chapter's exercise section as a student saves it: a set-up cell, then two cells tagged ``exercise``."""
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell("## Exercises"), nbformat.v4.new_code_cell(SETUP + "\nimport torch")]
    nb.cells += [nbformat.v4.new_code_cell(src, metadata={"tags": ["exercise"]})
                 for src in (windows + CHECK_WINDOWS, conv + CHECK_CONV)]
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)


def solution(name):
    return "import torch\nfrom torch import nn\n" + inspect.getsource(load_solution("ch01", name))


def run(*args):
    env = {**os.environ, "PYTHONPATH": str(REPO), "COURSE_SOLUTIONS": "1"}  # must be ignored: stubs stay stubs
    return subprocess.run([sys.executable, "-m", "course_lib.exercises.grade", *map(str, args)], env=env,
                          capture_output=True, text=True, timeout=300)


def test_a_class_is_graded_into_one_row_per_student_and_exercise(tmp_path):
    class_ = tmp_path / "submissions"
    write(class_ / "alice" / "01_sliding_windows.ipynb", solution("extract_windows"), solution("linear_to_conv"))
    write(class_ / "bob.ipynb", OFF_BY_ONE, STUB_CONV)
    write(class_ / "carol" / "01_sliding_windows.ipynb", HANGS, STUB_CONV)
    (class_ / "carol" / ".ipynb_checkpoints").mkdir()  # what JupyterLab leaves: skipped
    write(class_ / "dave.ipynb", CRASHES, solution("linear_to_conv"))

    out = tmp_path / "grades" / "gradebook.csv"
    done = run(class_, "--out", out, "--timeout", "25", "--jobs", "2")
    assert done.returncode == 0, done.stdout + done.stderr
    rows = list(csv.reader(out.open()))
    assert rows[0] == ["student", "notebook", "exercise", "status", "message"]
    found = [row[:4] for row in rows[1:]]
    assert found == [
        ["alice", "01_sliding_windows.ipynb", "extract_windows", "passed"],
        ["alice", "01_sliding_windows.ipynb", "linear_to_conv", "passed"],
        ["bob", "bob.ipynb", "extract_windows", "failed"],
        ["bob", "bob.ipynb", "linear_to_conv", "not attempted"],
        ["carol", "01_sliding_windows.ipynb", "extract_windows", "timed out"],
        ["carol", "01_sliding_windows.ipynb", "linear_to_conv", "blocked"],
        ["dave", "dave.ipynb", "extract_windows", "kernel died"],
        ["dave", "dave.ipynb", "linear_to_conv", "blocked"],
    ]
    messages = [row[4] for row in rows[1:]]
    assert messages[:2] == ["", ""]
    assert messages[2].startswith("ExerciseFailed: ") and "(n - k) // s + 1" in messages[2], "the checker's hint"
    assert messages[3].startswith("NotAttempted: ")
    assert messages[4] == messages[5] == "cell 3: still running after 25 s, stopped (an endless loop? " \
                                         "--timeout SECONDS allows more)"
    assert messages[6] == messages[7] == "cell 3: the kernel died here (out of memory? a crash in native code?)"
    assert "alice: 2 of 2 passed\nbob: 0 of 2 passed\ncarol: 0 of 2 passed\ndave: 0 of 2 passed" in done.stdout
    assert "grading: 100%" in done.stderr, "the progress bar over submissions"
    assert sorted(p.name for p in out.parent.iterdir()) == ["gradebook.csv"], "no temporary left beside it"


@pytest.mark.parametrize("extra, named", [("notes.txt", "notes.txt"), ("dave", "dave"), ("erin/old", "old")],
                         ids=["stray-file", "empty-folder", "nested-folder"])
def test_an_unrecognised_layout_is_refused_by_name_before_anything_runs(tmp_path, extra, named, capsys):
    class_ = tmp_path / "submissions"
    write(class_ / "alice.ipynb", STUB_WINDOWS, STUB_CONV)
    if extra.endswith(".txt"):
        (class_ / extra).write_text("hello")
    else:
        (class_ / extra).mkdir(parents=True)
        if "/" in extra:
            write(class_ / "erin" / "01.ipynb", STUB_WINDOWS, STUB_CONV)
    out = tmp_path / "gradebook.csv"
    assert grade.main([str(class_), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "Not a layout of submissions:" in err and named in err and "NAME.ipynb or a folder NAME/" in err
    assert not out.exists()


def test_a_file_that_is_no_notebook_is_graded_unreadable(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COURSE_PROFILE", "ci")  # grade() sets it for the kernels: keep it out of the other tests
    class_ = tmp_path / "submissions"
    (class_ / "frank").mkdir(parents=True)
    (class_ / "frank" / "01.ipynb").write_text("print('a script')")
    out = tmp_path / "gradebook.csv"
    assert grade.main([str(class_), "--out", str(out)]) == 0  # --jobs 1: checked here, one after the other
    [row] = list(csv.DictReader(out.open()))
    assert row["student"] == "frank" and row["status"] == "unreadable"
    assert "01.ipynb is not a Jupyter notebook" in row["message"]
    assert "frank: 0 of 1 passed" in capsys.readouterr().out


def test_an_out_that_is_a_folder_is_refused_before_grading(tmp_path, capsys):
    write(tmp_path / "submissions" / "alice.ipynb", STUB_WINDOWS, STUB_CONV)
    assert grade.main([str(tmp_path / "submissions"), "--out", str(tmp_path)]) == 2
    assert f"--out {tmp_path} is a folder: pass a file path" in capsys.readouterr().err


@pytest.mark.parametrize("outcome, status, said", [
    (([], None, 1), "no exercises", "no cell tagged 'exercise'"),
    (RuntimeError("Kernel didn't respond in 60 seconds"), "not checked", "RuntimeError: Kernel didn't respond"),
], ids=["no-exercises", "kernel-never-started"])
def test_a_notebook_without_exercises_or_a_grader_failure_still_gets_its_row(tmp_path, monkeypatch, outcome, status,
                                                                            said):
    def check_notebook(path, timeout):  # stands in for the kernel run
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    monkeypatch.setattr(grade, "check_notebook", check_notebook)
    [row] = grade.grade_notebook("gina", tmp_path / "01.ipynb", 5)
    assert (row["student"], row["notebook"], row["exercise"], row["status"]) == ("gina", "01.ipynb", "", status)
    assert said in row["message"]
