"""Start JupyterLab on the course's notebooks: what ``make lab`` runs after setting everything up.

    python -m course_lib.lab [JUPYTERLAB ARGUMENTS...] # make lab LAB_ARGS="--ip=0.0.0.0 --port=8890"

* As root (common in Docker containers), JupyterLab refuses to start without ``--allow-root``: it is added, and the
  terminal says so.
* Any argument is passed on to ``jupyter lab`` (``--ip=0.0.0.0 --port=8890`` for a container or a remote machine,
  ``--no-browser``...).
* Once the server answers, the URL to open (token included, on the course map) is printed in a box, so it is not
  lost among the server's log lines.

Ctrl-C goes to JupyterLab as usual (it asks before shutting down).
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FIRST_NOTEBOOK = "00_course_map.ipynb"


def lab_command(args: list[str]) -> list[str]:
    command = [sys.executable, "-m", "jupyterlab", str(ROOT / "notebooks"), *args]
    if hasattr(os, "geteuid") and os.geteuid() == 0 and "--allow-root" not in args:
        print("make lab: running as root (as in many containers): starting JupyterLab with --allow-root", flush=True)
        command.append("--allow-root")
    return command


def server_url(pid: int) -> str | None:
    """The URL of the running server started as process ``pid`` (from its runtime file), or None."""
    from jupyter_server.serverapp import list_running_servers

    for info in list_running_servers():
        if info.get("pid") == pid:
            token = f"?token={info['token']}" if info.get("token") else ""
            return f"{info['url'].rstrip('/')}/lab/tree/{FIRST_NOTEBOOK}{token}"
    return None


def main(argv: list[str]) -> int:
    server = subprocess.Popen(lab_command(argv))
    # the test (and a container's stop) end us with SIGTERM: pass it on
    signal.signal(signal.SIGTERM, lambda *_: server.send_signal(signal.SIGTERM))
    shown = False
    while True:
        try:
            if server.poll() is not None:
                return server.returncode
            if not shown:
                url = server_url(server.pid)
                if url:
                    line = f"  Open the course in your browser:  {url}  "
                    print("\n" + "=" * len(line) + f"\n{line}\n" + "=" * len(line) + "\n", flush=True)
                    shown = True
            time.sleep(0.5)
        except KeyboardInterrupt:  # the terminal sent Ctrl-C to JupyterLab too; it asks, we wait for it
            continue


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
