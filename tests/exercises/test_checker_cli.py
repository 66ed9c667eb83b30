"""python -m course_lib.exercises on what a student may hand it: a file that is no notebook, a set-up cell that
fails, an endless loop, a dying kernel. Each gets the report of what ran, the cell to look at, and its own exit
status. Tiny notebooks written here; a kernel starts in a few seconds."""
import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from course_lib.exercises import __main__ as checker

REPO = Path(checker.__file__).resolve().parents[2]
PASSES = 'print("\u2713 box_area: all 3 hidden cases pass")'


def notebook(tmp_path, *cells, name="student.ipynb"):
    """A notebook of code cells; a cell given as ``("exercise", source)`` is tagged ``exercise``."""
    nb = nbformat.v4.new_notebook()
    for cell in cells:
        tagged = isinstance(cell, tuple)
        nb.cells.append(nbformat.v4.new_code_cell(cell[1] if tagged else cell,
                                                  metadata={"tags": ["exercise"]} if tagged else {}))
    path = tmp_path / name
    nbformat.write(nb, path)
    return path


def check(*args, profile="ci"):
    env = {**os.environ, "PYTHONPATH": str(REPO), "COURSE_PROFILE": profile}
    return subprocess.run([sys.executable, "-m", "course_lib.exercises", *map(str, args)], env=env,
                          capture_output=True, text=True, timeout=120)


def test_exercises_report_and_exit_1_when_one_fails(tmp_path):
    path = notebook(tmp_path, "x = 1", ("exercise", PASSES),
                    ("exercise", "class NotAttempted(Exception): pass\nraise NotAttempted('iou: not written yet')"),
                    ("exercise", "raise AssertionError('iou: wrong on the case empty')"))
    done = check(path)
    assert done.returncode == checker.EXERCISE_FAILED == 1, done.stdout + done.stderr
    assert "exercise 1: pass" in done.stdout and "exercise 2: not attempted" in done.stdout
    assert "exercise 3: FAIL" in done.stdout and "wrong on the case empty" in done.stdout
    assert "at most 300 s a cell" in done.stdout, "the ci profile's default per-cell timeout"


@pytest.mark.parametrize("content", [b"print('a script, not a notebook')\n", b'{"cells": 3}', b"\x89PNG\r\n"],
                         ids=["script", "json", "binary"])
def test_a_file_that_is_no_notebook_is_named_and_nothing_runs(tmp_path, content, capsys, monkeypatch):
    monkeypatch.setenv("COURSE_PROFILE", "ci")  # main() sets it when unset: keep it out of the other tests
    fine = notebook(tmp_path, ("exercise", PASSES))
    wrong = tmp_path / "exercise.ipynb"
    wrong.write_bytes(content)
    assert checker.main([str(fine), str(wrong)]) == checker.BAD_INPUT == 2
    out = capsys.readouterr()
    assert f"{wrong} is not a Jupyter notebook" in out.err and "Pass the .ipynb file" in out.err
    assert "running" not in out.out, "checked before the first notebook runs"
    assert checker.main([str(tmp_path / "missing.ipynb")]) == 2
    assert "missing.ipynb: no such notebook" in capsys.readouterr().err


def test_a_failing_set_up_cell_is_shown_not_hidden_as_not_attempted(tmp_path):
    path = notebook(tmp_path, ("exercise", PASSES),
                    "raise RuntimeError(\"The 'gpu' profile needs CUDA, but torch.cuda.is_available() is False.\")",
                    ("exercise", "class NotAttempted(Exception): pass\nraise NotAttempted('not written yet')"))
    done = check(path)
    assert done.returncode == checker.SETUP_FAILED == 3, done.stdout + done.stderr
    assert "cell 2 (raise RuntimeError(" in done.stdout and "failed: RuntimeError: The 'gpu' profile needs CUDA" in done.stdout
    assert "exercise 1: pass" in done.stdout and "exercise 2: blocked" in done.stdout
    assert "not attempted" not in done.stdout


def test_gpu_profile_without_cuda_is_refused_before_running(tmp_path, monkeypatch, capsys):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv("COURSE_PROFILE", "gpu")
    assert checker.main([str(notebook(tmp_path, ("exercise", PASSES)))]) == checker.BAD_INPUT
    assert "COURSE_PROFILE=gpu: The 'gpu' profile needs CUDA" in capsys.readouterr().err


def test_an_endless_loop_is_stopped_with_the_report_of_what_passed(tmp_path):
    path = notebook(tmp_path, ("exercise", PASSES), ("exercise", "while True:\n    pass"), ("exercise", PASSES))
    done = check(path, "--timeout", "3")
    assert done.returncode == checker.TIMED_OUT == 4, done.stdout + done.stderr
    assert "cell 2 (while True:): still running after 3 s, stopped" in done.stdout
    assert "exercise 1: pass" in done.stdout and "exercise 2: timed out" in done.stdout
    assert "exercise 3: blocked" in done.stdout and "Traceback" not in done.stderr


def test_a_dead_kernel_is_named_by_cell(tmp_path):
    path = notebook(tmp_path, ("exercise", PASSES), "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)",
                    ("exercise", PASSES))
    done = check(path)
    assert done.returncode == checker.KERNEL_DIED == 5, done.stdout + done.stderr
    assert "cell 2 (import os, signal): the kernel died here" in done.stdout
    assert "exercise 1: pass" in done.stdout and "exercise 2: blocked" in done.stdout
    assert "Traceback" not in done.stderr


def test_help_lists_the_exit_codes(capsys):
    with pytest.raises(SystemExit):
        checker.main(["--help"])
    shown = capsys.readouterr().out
    for code, meaning in checker.EXIT_CODES.items():
        assert f"  {code}  {meaning}"[:40] in shown
