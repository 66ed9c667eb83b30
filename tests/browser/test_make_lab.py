"""``make lab``, the README's first command, starts the course as root and as a normal user.

It runs the real target (``make -o .venv/.installed lab``: the project's venv must exist, and ``-o`` keeps make from
reinstalling it when pyproject.toml is newer than its stamp) with ``LAB_ARGS`` for a free port, a known token and no
browser; waits until the server answers; checks what the terminal says (``--allow-root`` as root, the URL to open);
and stops it. The normal-user case runs as ``nobody`` when the tests run as root, and is skipped (with the reason)
where ``nobody`` cannot run the venv's Python (e.g. a venv built from a Python under /root).
"""
from __future__ import annotations

import os
import re
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
VENV_PYTHON = ROOT / ".venv" / "bin" / "python"


def _as_nobody() -> list[str]:
    """The prefix that runs a command as user nobody, or a pytest.skip saying why that is impossible here."""
    runuser = shutil.which("runuser") or shutil.which("setpriv")
    if not runuser:
        pytest.skip("neither runuser nor setpriv is installed: cannot run make lab as a normal user")
    prefix = ([runuser, "-u", "nobody", "--"] if runuser.endswith("runuser")
              else [runuser, "--reuid=nobody", "--regid=nogroup", "--init-groups"])
    check = subprocess.run(prefix + [str(VENV_PYTHON), "-c", f"import os; os.listdir({str(ROOT)!r})"],
                           capture_output=True, text=True)
    if check.returncode != 0:
        pytest.skip(f"user nobody cannot run {VENV_PYTHON} or read {ROOT} here "
                    f"({(check.stderr.strip().splitlines() or ['?'])[-1]}); the normal-user case needs a venv and "
                    "checkout that other users can read")
    return prefix


@pytest.mark.parametrize("user", ["root", "normal user"])
def test_make_lab_starts_the_course(user, serve, request):
    if not VENV_PYTHON.exists():
        pytest.skip(f"make lab needs the project's venv ({VENV_PYTHON}; `make venv` builds it)")
    if not shutil.which("make"):
        pytest.skip("make is not installed")
    is_root = os.geteuid() == 0
    if user == "root" and not is_root:
        pytest.skip("the tests do not run as root here; the root case (--allow-root) runs where they do")
    prefix = _as_nobody() if user == "normal user" and is_root else []

    # nobody's HOME, where JupyterLab writes its runtime and settings files: outside pytest's tmp_path, whose
    # parent (/tmp/pytest-of-root) only root may enter
    home = Path(tempfile.mkdtemp(prefix="make-lab-home-", dir="/tmp" if Path("/tmp").is_dir() else None))
    request.addfinalizer(lambda: shutil.rmtree(home, ignore_errors=True))
    home.chmod(0o777)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    token = secrets.token_hex(16)
    lab_args = (f"--no-browser --ServerApp.ip=127.0.0.1 --ServerApp.port={port} --ServerApp.port_retries=0 "
                f"--IdentityProvider.token={token}")
    env = dict(os.environ, HOME=str(home), COURSE_PROFILE="ci", JUPYTER_RUNTIME_DIR=str(home / "runtime"),
               JUPYTER_CONFIG_DIR=str(home / "config"), JUPYTERLAB_SETTINGS_DIR=str(home / "settings"),
               JUPYTERLAB_WORKSPACES_DIR=str(home / "workspaces"))
    command = prefix + ["make", "-C", str(ROOT), "-o", ".venv/.installed", "lab", f"LAB_ARGS={lab_args}"]
    process, log = serve(command, f"http://127.0.0.1:{port}/api/status?token={token}", env=env)

    url, deadline = None, time.monotonic() + 20
    while url is None and process.poll() is None and time.monotonic() < deadline:
        # the launcher prints the URL once it has found the running server (within a second)
        match = re.search(r"Open the course in your browser:\s+(\S+)", log.read_text())
        url = match.group(1) if match else time.sleep(0.25)
    output = log.read_text()
    assert url is not None, f"make lab did not print the URL to open:\n{output[-2000:]}"
    assert f":{port}/lab/tree/00_course_map.ipynb?token={token}" in url
    assert ("--allow-root" in output) == (user == "root"), output[-2000:]
    assert "Running as root is not recommended" not in output
