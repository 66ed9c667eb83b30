"""Copied as conftest.py next to the notebooks that run_notebooks.py runs: when the session ends, each notebook is
written with the outputs nbval collected (``item.test_outputs``) to ``$COURSE_EXECUTED_DIR/<name>.ipynb`` (atomic), and
the seconds each notebook took (kernel start included) are printed.

The widgets' state goes with it (``metadata.widgets``, as nbclient writes it): nbval reads the kernel's comm messages
and drops them, so each one is also recorded here, by nbclient's own rules -- the website shows an explorer from that
state (its first picture)."""
import os
from collections import defaultdict
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbval.plugin import IPyNbFile

from course_lib.data.atomic import atomic_write_bytes  # the course venv's (the checkout's) course_lib

SECONDS = defaultdict(float)
WIDGETS: dict = {}  # IPyNbFile -> the NotebookClient that keeps its widgets' state (never started)


def _recording(get_kernel_message):
    def get(self, *args, **kwargs):
        msg = get_kernel_message(self, *args, **kwargs)
        data = msg["content"].get("data", {}) if msg["msg_type"] in ("comm_open", "comm_msg") else {}
        if "state" in data:  # nbclient's NotebookClient.handle_comm_msg: custom messages carry no state
            client = WIDGETS.setdefault(self, NotebookClient(self.nb))
            comm_id = msg["content"]["comm_id"]
            client.widget_state.setdefault(comm_id, {}).update(data["state"])
            if data.get("buffer_paths"):
                client.widget_buffers.setdefault(comm_id, {}).update(
                    {tuple(b["path"]): b for b in client._get_buffer_data(msg)})
        return msg
    return get


IPyNbFile.get_kernel_message = _recording(IPyNbFile.get_kernel_message)


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
    for client in WIDGETS.values():
        client.set_widgets_metadata()  # into client.nb, the very notebook nbval ran
    for name, nb in notebooks.items():
        atomic_write_bytes(out / name, nbformat.writes(nb).encode())


def pytest_terminal_summary(terminalreporter):
    terminalreporter.write_sep("-", "seconds per notebook (installed wheel, kernel start included)")
    for name, seconds in sorted(SECONDS.items()):
        terminalreporter.write_line(f"{seconds:7.1f}  {name}")
    terminalreporter.write_line(f"{sum(SECONDS.values()):7.1f}  all notebooks")
