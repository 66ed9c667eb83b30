"""Copied as conftest.py next to the notebooks that run_notebooks.py runs: when the session ends, each notebook is
written with the outputs nbval collected (``item.test_outputs``) to ``$COURSE_EXECUTED_DIR/<name>.ipynb`` (atomic), and
the seconds each notebook took (kernel start included) are printed."""
import os
import tempfile
from collections import defaultdict
from pathlib import Path

import nbformat

SECONDS = defaultdict(float)


def pytest_runtest_logreport(report):
    SECONDS[report.nodeid.split("::")[0]] += report.duration


def pytest_sessionfinish(session):
    out = Path(os.environ["COURSE_EXECUTED_DIR"])
    out.mkdir(parents=True, exist_ok=True)
    notebooks, counts = {}, defaultdict(int)
    for item in session.items:
        name = Path(str(item.fspath)).name
        notebooks[name] = item.parent.nb
        if getattr(item, "test_outputs", None) is not None:
            counts[name] += 1
            item.cell.outputs, item.cell.execution_count = item.test_outputs, counts[name]
    for name, nb in notebooks.items():
        fd, tmp = tempfile.mkstemp(dir=out, prefix=f".{name}.", suffix=".tmp")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            nbformat.write(nb, f)
        os.replace(tmp, out / name)


def pytest_terminal_summary(terminalreporter):
    terminalreporter.write_sep("-", "seconds per notebook (installed wheel, kernel start included)")
    for name, seconds in sorted(SECONDS.items()):
        terminalreporter.write_line(f"{seconds:7.1f}  {name}")
    terminalreporter.write_line(f"{sum(SECONDS.values()):7.1f}  all notebooks")
