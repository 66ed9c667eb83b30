"""Check your own notebook: ``python -m course_lib.exercises notebooks/03b_detection_toolkit.ipynb [more.ipynb]``.

Runs the notebook top to bottom (as you saved it, in the profile of ``COURSE_PROFILE``, default ``ci`` here so that it
is quick) and prints, for every cell tagged ``exercise``, whether its checker passed. Reference solutions are never
substituted here (``COURSE_SOLUTIONS`` is cleared). Exit status 1 when an exercise fails or is not attempted.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def _status(cell) -> tuple[str, str]:
    for out in cell.get("outputs", []):
        if out.get("output_type") == "error":
            kind = "not attempted" if out.get("ename") == "NotAttempted" else "FAIL"
            return kind, f"{out.get('ename')}: {out.get('evalue', '')}".strip()
    text = "".join(o.get("text", "") for o in cell.get("outputs", []) if o.get("output_type") == "stream")
    passed = [line for line in text.splitlines() if line.startswith("\u2713")]
    return ("pass", "; ".join(passed)) if passed else ("no check ran", "")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m course_lib.exercises", description=__doc__.splitlines()[0])
    parser.add_argument("notebooks", nargs="+", type=Path)
    parser.add_argument("--timeout", type=int, default=1800, help="seconds per cell (default 1800)")
    args = parser.parse_args(argv)

    import nbformat
    from nbclient import NotebookClient

    os.environ.pop("COURSE_SOLUTIONS", None)
    os.environ.setdefault("COURSE_PROFILE", "ci")
    failed = False
    for path in args.notebooks:
        if not path.is_file():
            print(f"{path}: no such notebook", file=sys.stderr)
            return 2
        nb = nbformat.read(path, as_version=4)
        print(f"{path.name}: running (profile {os.environ['COURSE_PROFILE']}) ...", flush=True)
        NotebookClient(nb, timeout=args.timeout, allow_errors=True, kernel_name="python3",
                       resources={"metadata": {"path": str(path.parent.resolve())}}).execute()
        exercises = [c for c in nb.cells if c.cell_type == "code" and "exercise" in c.metadata.get("tags", [])]
        if not exercises:
            print("  (no cell tagged 'exercise')")
        for i, cell in enumerate(exercises, 1):
            status, detail = _status(cell)
            failed |= status != "pass"
            first = cell.source.strip().splitlines()[0] if cell.source.strip() else ""
            print(f"  exercise {i}: {status:<13} {first[:60]}")
            if detail and status != "pass":
                print(f"      {detail[:300]}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
