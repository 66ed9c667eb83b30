"""Check your own notebook: ``python -m course_lib.exercises notebooks/03b_detection_toolkit.ipynb [more.ipynb]``.

Runs the notebook top to bottom (as you saved it, in the profile of ``COURSE_PROFILE``, default ``ci`` here so that it
is quick) and prints, for every cell tagged ``exercise``, whether its checker passed. Reference solutions are never
substituted here (``COURSE_SOLUTIONS`` is cleared). A cell outside the exercises that fails (the set-up), a cell that
runs longer than ``--timeout`` and a kernel that dies are reported by cell, with what passed before them; the exit
status says which happened (see ``--help``).
"""
from __future__ import annotations

import argparse
import contextlib
import os
import sys
from dataclasses import dataclass
from pathlib import Path

# exit status -> what it means (the worst over the notebooks checked is returned)
PASSED, EXERCISE_FAILED, BAD_INPUT, SETUP_FAILED, TIMED_OUT, KERNEL_DIED = range(6)
EXIT_CODES = {
    PASSED: "every exercise passed",
    EXERCISE_FAILED: "an exercise failed, is not attempted yet, or ran no check",
    BAD_INPUT: "nothing was run: a file is missing or not a notebook, the profile is unusable, or the command line "
               "is wrong",
    SETUP_FAILED: "a cell outside the exercises failed (its error is shown): the exercises after it could not run",
    TIMED_OUT: "a cell ran longer than --timeout and was stopped (an endless loop?)",
    KERNEL_DIED: "the kernel died in a cell (out of memory, or a crash in native code)",
}
# seconds a cell may run: a ci cell takes seconds, so minutes mean a loop that does not end
DEFAULT_TIMEOUT = {"ci": 300}
OTHER_PROFILES_TIMEOUT = 1800


class Refused(Exception):
    """Nothing was run: the message says why and what to do."""


def _status(cell) -> tuple[str, str]:
    for out in cell.get("outputs", []):
        if out.get("output_type") == "error":
            kind = "not attempted" if out.get("ename") == "NotAttempted" else "FAIL"
            return kind, f"{out.get('ename')}: {out.get('evalue', '')}".strip()
    text = "".join(o.get("text", "") for o in cell.get("outputs", []) if o.get("output_type") == "stream")
    passed = [line for line in text.splitlines() if line.startswith("\u2713")]
    return ("pass", "; ".join(passed)) if passed else ("no check ran", "")


def _first_line(source: str) -> str:
    return source.strip().splitlines()[0][:60] if source.strip() else ""


def _error(cell) -> str | None:
    """``"Name: message"`` of the error the cell raised, if any."""
    out = next((o for o in cell.get("outputs", []) if o.get("output_type") == "error"), None)
    return None if out is None else f"{out.get('ename')}: {out.get('evalue', '')}".strip()


def _read(path: Path):
    import nbformat

    if not path.is_file():
        raise Refused(f"{path}: no such notebook. Pass the path of your .ipynb file, e.g. notebooks/02_fcn.ipynb.")
    try:
        return nbformat.read(path, as_version=4)
    except Exception as e:  # not JSON, JSON that is no notebook, ... : nbformat raises many types
        raise Refused(f"{path} is not a Jupyter notebook ({type(e).__name__}: {str(e)[:200]}). Pass the .ipynb file "
                      "you saved from Jupyter.") from None


def _check_profile() -> str:
    """The profile's name, or :class:`Refused` when it cannot run here (unknown, or gpu without CUDA)."""
    from course_lib.profiles import get_profile

    try:
        return get_profile().name
    except (ValueError, RuntimeError) as e:
        raise Refused(f"COURSE_PROFILE={os.environ.get('COURSE_PROFILE')}: {e}") from None


def _execute(nb, path: Path, timeout: int) -> tuple[int, int | None]:
    """Run the code cells in order (errors are kept as the cells' outputs); ``(PASSED, None)``, or
    ``(TIMED_OUT | KERNEL_DIED, index of the cell)`` when a cell had to be stopped or the kernel died."""
    from nbclient import NotebookClient
    from nbclient.exceptions import CellTimeoutError, DeadKernelError
    from nbclient.util import run_sync

    client = NotebookClient(nb, timeout=timeout, allow_errors=True, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent.resolve())}})
    index = None
    try:
        with client.setup_kernel():
            for index, cell in enumerate(nb.cells):
                if cell.cell_type == "code":
                    try:
                        client.execute_cell(cell, index)
                    except CellTimeoutError:
                        run_sync(client.km.interrupt_kernel)()
                        with contextlib.suppress(Exception):  # its reply: it then shuts down quietly, not mid-loop
                            run_sync(client.kc.shell_channel.get_msg)(timeout=10)
                        return TIMED_OUT, index
    except DeadKernelError:
        return KERNEL_DIED, index
    return PASSED, None


STOPPED = {TIMED_OUT: "timed out", KERNEL_DIED: "kernel died"}


def _blocker(nb, stopped: tuple[int, int | None], timeout: int) -> tuple[int, str, int] | None:
    """``(cell index, what happened, exit status)`` of the first cell that kept the cells after it from running
    properly: a set-up cell (not an exercise) that raised, or the cell that was stopped; None if there is none."""
    outcome, stop = stopped
    setup = next((i for i, c in enumerate(nb.cells) if c.cell_type == "code" and _error(c)
                  and not {"exercise", "raises-exception"} & set(c.metadata.get("tags", []))), None)
    if setup is not None and (stop is None or setup < stop):
        return setup, f"failed: {_error(nb.cells[setup])}", SETUP_FAILED
    if outcome == TIMED_OUT:
        return stop, f"still running after {timeout} s, stopped (an endless loop? --timeout SECONDS allows more)", outcome
    if outcome == KERNEL_DIED:
        return stop, "the kernel died here (out of memory? a crash in native code?)", outcome
    return None


@dataclass
class ExerciseResult:
    """One exercise of a checked notebook: its number, its cell's source, and what became of it."""

    number: int
    source: str
    status: str  # pass | FAIL | not attempted | no check ran | timed out | kernel died | blocked
    detail: str


def results(nb, stopped: tuple[int, int | None], timeout: int) -> tuple[list[ExerciseResult], tuple | None, int]:
    """The exercises of an executed notebook, the blocking cell (see :func:`_blocker`) and the exit status."""
    blocker = _blocker(nb, stopped, timeout)
    exercises = [(i, c) for i, c in enumerate(nb.cells) if c.cell_type == "code" and "exercise" in c.metadata.get("tags", [])]
    found = []
    for n, (i, cell) in enumerate(exercises, 1):
        status, detail = _status(cell)
        if blocker is not None and i == blocker[0]:
            status, detail = STOPPED[blocker[2]], ""
        elif blocker is not None and i > blocker[0]:
            status, detail = "blocked", f"cell {blocker[0] + 1} above failed or stopped first: fix it, then check again"
        found.append(ExerciseResult(n, cell.source, status, detail))
    failed = any(r.status != "pass" for r in found)
    return found, blocker, blocker[2] if blocker is not None else EXERCISE_FAILED if failed else PASSED


def check_notebook(path: Path, timeout: int) -> tuple[list[ExerciseResult], tuple | None, int]:
    """Read ``path`` (:class:`Refused` if it is no notebook), run it in a fresh kernel, return :func:`results`."""
    nb = _read(path)
    return results(nb, _execute(nb, path, timeout), timeout)


def _report(nb, stopped: tuple[int, int | None], timeout: int) -> int:
    """Print the cell that failed, hung or died, and one line per exercise; return the exit status."""
    found, blocker, code = results(nb, stopped, timeout)
    if blocker is not None:
        print(f"  cell {blocker[0] + 1} ({_first_line(nb.cells[blocker[0]].source)}): {blocker[1]}")
    if not found:
        print("  (no cell tagged 'exercise')")
    for r in found:
        print(f"  exercise {r.number}: {r.status:<13} {_first_line(r.source)}")
        if r.detail and r.status != "pass":
            print(f"      {r.detail[:300]}")
    return code


def main(argv=None) -> int:
    codes = "\n".join(f"  {code}  {meaning}" for code, meaning in EXIT_CODES.items())
    parser = argparse.ArgumentParser(prog="python -m course_lib.exercises", description=__doc__.splitlines()[0],
                                     epilog="exit status:\n" + codes,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("notebooks", nargs="+", type=Path)
    parser.add_argument("--timeout", type=int, default=None,
                        help=f"seconds a cell may run (default {DEFAULT_TIMEOUT['ci']} in the ci profile, "
                             f"{OTHER_PROFILES_TIMEOUT} in the others)")
    args = parser.parse_args(argv)

    os.environ.pop("COURSE_SOLUTIONS", None)
    os.environ.setdefault("COURSE_PROFILE", "ci")
    try:  # everything is checked before the first kernel starts
        notebooks = [(path, _read(path)) for path in args.notebooks]
        profile = _check_profile()
    except Refused as e:
        print(e, file=sys.stderr)
        return BAD_INPUT
    timeout = args.timeout or DEFAULT_TIMEOUT.get(profile, OTHER_PROFILES_TIMEOUT)
    worst = PASSED
    for path, nb in notebooks:
        print(f"{path.name}: running (profile {profile}, at most {timeout} s a cell) ...", flush=True)
        worst = max(worst, _report(nb, _execute(nb, path, timeout), timeout))
    return worst


if __name__ == "__main__":
    sys.exit(main())
