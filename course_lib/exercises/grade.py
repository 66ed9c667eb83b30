"""Grade a class: ``python -m course_lib.exercises.grade SUBMISSIONS_DIR --out gradebook.csv [--jobs 2]``.

SUBMISSIONS_DIR holds, per student, either ``NAME.ipynb`` or a folder ``NAME/`` with that student's ``*.ipynb``
(``.ipynb_checkpoints`` and hidden files are skipped). Anything else -- another file, an empty folder, a folder in a
student's folder -- is refused, by name, before any notebook runs. Every notebook is checked as
``python -m course_lib.exercises`` checks it: top to bottom in a fresh kernel, in the ci profile, with
``COURSE_SOLUTIONS`` cleared (a stub counts as not attempted, never as the reference solution), each cell stopped
after ``--timeout`` seconds. A loop that does not end or a kernel that dies costs that student that exercise (the
ones after it are blocked); grading goes on with the next notebook.

The gradebook is a CSV, one row per student x exercise: ``student, notebook, exercise, status, message``; status
is one of passed, failed, not attempted, no check ran, timed out, kernel died, blocked; a notebook gets a single row
when it is unreadable (no notebook), has no exercises (no cell tagged ``exercise``) or could not be checked (the
grader's own trouble, e.g. a kernel that never started). A summary per student (passed of total) is printed at the end.

Why not nbgrader (0.9.6, the version for JupyterLab 4): it grades notebooks generated from a master copy by
``nbgrader generate_assignment``, with a grade id, points and a checksum in every graded cell's metadata, in its
course directory layout (source/, release/, submitted/<student>/<assignment>/, autograded/) and an SQLite
gradebook, and its own install (alembic, SQLAlchemy, notebook 7, a server extension). The course's notebooks carry
none of that metadata, and their hidden cases already live outside the notebooks, in ``course_lib/exercises``,
with hints in the checkers' messages -- nbgrader's hidden-tests cells would only call those checkers again, and
its export gives points per assignment, not the checker's message per exercise. The course's own checker already
runs a notebook in a fresh kernel and classifies every exercise; this module is the loop over students and the CSV.
"""
from __future__ import annotations

import argparse
import csv
import io
import os
import re
import sys
from concurrent.futures import ProcessPoolExecutor
from contextlib import nullcontext
from functools import partial
from pathlib import Path

from course_lib.data.atomic import atomic_write_bytes, check_writable

from .__main__ import DEFAULT_TIMEOUT, Refused, check_notebook

COLUMNS = ["student", "notebook", "exercise", "status", "message"]
STATUS = {"pass": "passed", "FAIL": "failed"}  # the checker's words for the others are the gradebook's


def submissions(folder: Path) -> list[tuple[str, Path]]:
    """``(student, notebook)`` pairs in ``folder``'s layout (see the module docstring); :class:`Refused` otherwise."""
    if not folder.is_dir():
        raise Refused(f"{folder}: no such folder. Pass the folder that holds one NAME.ipynb or NAME/ per student.")
    found, wrong = [], []
    for entry in sorted(p for p in folder.iterdir() if not p.name.startswith(".")):
        if entry.is_file() and entry.suffix == ".ipynb":
            found.append((entry.stem, entry))
        elif entry.is_dir():
            inside = [p for p in sorted(entry.iterdir()) if not p.name.startswith(".")]
            notebooks = [p for p in inside if p.is_file() and p.suffix == ".ipynb"]
            wrong += [p for p in inside if p.is_dir()] + ([] if notebooks else [entry])
            found += [(entry.name, p) for p in notebooks]
        else:
            wrong.append(entry)
    if wrong or not found:
        names = ", ".join(str(p) for p in wrong) or f"{folder} (empty)"
        raise Refused(f"Not a layout of submissions: {names}. {folder} must hold, per student, NAME.ipynb or a "
                      "folder NAME/ with that student's .ipynb files (no folders inside it). Move or remove these, "
                      "then grade again.")
    return found


def _exercise_name(source: str, number: int) -> str:
    """The function an exercise cell defines (``def box_iou``) or the quiz answer it sets; else "exercise N"."""
    match = re.search(r"^def (\w+)", source, re.M) or re.search(r"^(\w+)\s*=", source, re.M)
    return match.group(1) if match else f"exercise {number}"


def grade_notebook(student: str, path: Path, timeout: int) -> list[dict]:
    """The gradebook's rows of one notebook: checked in a fresh kernel, never raising for what the student wrote."""
    row = dict(student=student, notebook=path.name, exercise="")
    try:
        found, blocker, _ = check_notebook(path, timeout)
    except Refused as e:
        return [{**row, "status": "unreadable", "message": str(e)}]
    except Exception as e:  # noqa: BLE001 -- the grader's own trouble (a kernel that never started): the rest goes on
        return [{**row, "status": "not checked", "message": f"{type(e).__name__}: {e} -- grade this notebook again"}]
    if not found:
        return [{**row, "status": "no exercises", "message": "no cell tagged 'exercise': is this the chapter's notebook?"}]
    rows = []
    for r in found:
        message = r.detail if r.status != "pass" else ""
        if blocker is not None and r.status in ("timed out", "kernel died", "blocked"):
            message = f"cell {blocker[0] + 1}: {blocker[1]}"
        rows.append(dict(student=student, notebook=path.name, exercise=_exercise_name(r.source, r.number),
                         status=STATUS.get(r.status, r.status), message=message))
    return rows


def grade(folder: Path, timeout: int, jobs: int = 1) -> list[dict]:
    """Every submission's rows, in the order of :func:`submissions`, with a progress bar over notebooks."""
    from tqdm.auto import tqdm

    work = submissions(folder)
    os.environ.pop("COURSE_SOLUTIONS", None)  # the kernels inherit this environment
    os.environ["COURSE_PROFILE"] = "ci"
    run = partial(grade_notebook, timeout=timeout)
    students, paths = zip(*work)
    with ProcessPoolExecutor(jobs) if jobs > 1 else nullcontext() as pool:
        done = pool.map(run, students, paths) if pool else map(run, students, paths)
        return [row for rows in tqdm(done, total=len(work), desc="grading", unit="notebook", file=sys.stderr)
                for row in rows]


def write_csv(rows: list[dict], out: Path) -> None:
    text = io.StringIO()
    writer = csv.DictWriter(text, COLUMNS)
    writer.writeheader()
    writer.writerows(rows)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out, text.getvalue().encode())


def summary(rows: list[dict]) -> list[str]:
    """One line per student: ``alice: 2 of 2 passed``."""
    students = dict.fromkeys(r["student"] for r in rows)
    return [f"{s}: {sum(r['status'] == 'passed' for r in rows if r['student'] == s)} of "
            f"{sum(r['student'] == s for r in rows)} passed" for s in students]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m course_lib.exercises.grade", description=__doc__.splitlines()[0],
                                     epilog="exit status: 0 graded (whatever the students' results), 2 nothing ran "
                                            "(the folder's layout or --out is refused)")
    parser.add_argument("submissions", type=Path, help="one NAME.ipynb or NAME/*.ipynb per student")
    parser.add_argument("--out", type=Path, default=Path("gradebook.csv"), help="the CSV (default gradebook.csv)")
    parser.add_argument("--timeout", type=int, default=DEFAULT_TIMEOUT["ci"],
                        help=f"seconds a cell may run (default {DEFAULT_TIMEOUT['ci']})")
    parser.add_argument("--jobs", type=int, default=1, help="notebooks checked at once (default 1)")
    args = parser.parse_args(argv)
    try:
        check_writable(args.out, "the gradebook", "--out", example="gradebook.csv")
        rows = grade(args.submissions, args.timeout, max(1, args.jobs))
    except (Refused, OSError) as e:
        print(e, file=sys.stderr)
        return 2
    write_csv(rows, args.out)
    print("\n".join(summary(rows)))
    print(f"gradebook: {args.out} ({len(rows)} rows)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
