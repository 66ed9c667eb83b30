"""A real JupyterLab (from this Python environment) and a headless Chromium driven by Playwright.

* JupyterLab serves a scratch copy of the notebooks on 127.0.0.1, a free port, with a random token, its own settings
  (every cell attached to the page, no news fetched) and ``COURSE_PROFILE=ci``; the kernel imports this checkout's
  ``course_lib``.
* Chromium is Debian's ``chromium`` (``.ci/run`` installs it with apt-get when missing), launched by Playwright from
  PyPI with a fresh profile directory; ``playwright install`` (a download) is never needed. Every request that does
  not go to the local server is refused.

Without chromium or playwright the tests skip with a message saying what to install; under ``CI=true`` they fail
instead, because CI must run them.
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LATENCIES = pytest.StashKey[list]()  # rows of the latency table, printed at the end of the run
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
LAB_SETTINGS = {  # JupyterLab user settings for the test server
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {"fetchNews": "false", "checkForUpdates": False},
}


def require_browser() -> None:
    """Skip (or, under CI=true, fail) with what to install when chromium or playwright is missing."""
    missing = []
    if not os.access(CHROMIUM, os.X_OK):
        missing.append("Debian's chromium (`apt-get install -y chromium`)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        missing.append("Playwright from PyPI (`pip install playwright`; no `playwright install` needed)")
    if missing:
        message = f"browser tests need {' and '.join(missing)}"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{message}; under CI=true they must run (.ci/run installs chromium)", pytrace=False)
        pytest.skip(message)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_http(url: str, process: subprocess.Popen, log: Path, timeout: float = 90.0) -> None:
    """Poll ``url`` until it answers 200; fail with the server's log if it dies or never answers."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with status {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"no answer from {url} after {timeout:.0f} s:\n{log.read_text()[-3000:]}")


def stop(process: subprocess.Popen) -> None:
    """Stop a server started with ``start_new_session=True`` and everything it started (kernels)."""
    if process.poll() is None:
        os.killpg(process.pid, 15)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, 9)
            process.wait()


@pytest.fixture
def serve(tmp_path):
    """``serve(command, url, **popen_kwargs)``: start a server in its own session, wait until ``url`` answers 200.

    Returns ``(process, log)``: its output goes to ``log``. Every server started is stopped at teardown.
    """
    started = []

    def start(command, url, **kwargs):
        log = tmp_path / f"server-{len(started)}.log"
        with open(log, "w") as out:
            process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, **kwargs)
        started.append(process)
        wait_for_http(url, process, log)
        return process, log

    yield start
    for process in started:
        stop(process)


@dataclass
class Lab:
    url: str  # http://127.0.0.1:PORT
    token: str
    notebooks: Path  # the scratch copy the server serves
    log: Path
    latencies: list = field(default_factory=list)  # one dict per input (see test_explorers_in_browser.py)


@pytest.fixture(scope="session")
def lab(tmp_path_factory, request):
    require_browser()
    scratch = tmp_path_factory.mktemp("jupyterlab")
    notebooks = scratch / "notebooks"
    shutil.copytree(ROOT / "notebooks", notebooks, ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
    settings = scratch / "settings"
    for name, values in LAB_SETTINGS.items():
        path = settings / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values))
    port, token = free_port(), secrets.token_hex(16)
    command = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ServerApp.ip=127.0.0.1",
               f"--ServerApp.port={port}", "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}",
               f"--ServerApp.root_dir={notebooks}", f"--LabApp.user_settings_dir={settings}",
               f"--LabApp.workspaces_dir={scratch / 'workspaces'}", "--LabApp.expose_app_in_browser=True"]
    if os.geteuid() == 0:
        command.append("--allow-root")
    env = dict(os.environ, COURSE_PROFILE="ci", COURSE_SOLUTIONS="1", JUPYTER_CONFIG_DIR=str(scratch / "config"),
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    log = scratch / "jupyterlab.log"
    with open(log, "w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=scratch,
                                   start_new_session=True)
    try:
        wait_for_http(f"http://127.0.0.1:{port}/api/status?token={token}", process, log)
        lab = Lab(f"http://127.0.0.1:{port}", token, notebooks, log)
        request.config.stash[LATENCIES] = lab.latencies
        yield lab
    finally:
        stop(process)


def launch_chromium(playwright, profile_dir: Path, allowed: str):
    """Debian's chromium with a fresh profile; nothing leaves the machine: only URLs starting with ``allowed``
    (the local server) and the page's own data: / blob: URLs are fetched."""
    context = playwright.chromium.launch_persistent_context(
        str(profile_dir), executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS,
        viewport={"width": 1400, "height": 1000})
    context.route("**/*", lambda route: route.continue_()
                  if route.request.url.startswith((allowed, "data:", "blob:")) else route.abort())
    return context


@pytest.fixture(scope="session")
def playwright_driver():
    """Playwright's driver, one per session (its sync API cannot be started twice at once)."""
    require_browser()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        yield p


@pytest.fixture(scope="session")
def browser_context(lab, playwright_driver, tmp_path_factory):
    context = launch_chromium(playwright_driver, tmp_path_factory.mktemp("chromium-profile"), allowed=lab.url)
    try:
        yield context
    finally:
        context.close()


@pytest.fixture(scope="module")
def chromium(playwright_driver, tmp_path_factory):
    """A headless Chromium context for pages served on 127.0.0.1 (the static site): every other request is refused."""
    context = launch_chromium(playwright_driver, tmp_path_factory.mktemp("chromium-profile"),
                              allowed="http://127.0.0.1:")
    try:
        yield context
    finally:
        context.close()


def pytest_terminal_summary(terminalreporter, config):
    """The latency table of the browser test: each input, and the time until its new picture was painted."""
    rows = config.stash.get(LATENCIES, None)
    if not rows:
        return
    import statistics

    write = terminalreporter.write_line
    terminalreporter.write_sep("-", "explorers in Chromium: input -> new picture painted (ms)")
    write(f"{'notebook':<24}{'explorer':<18}{'control':<18}{'input':<10}{'ms':>6}  redraws  changed")
    for r in rows:
        write(f"{r['notebook']:<24}{r['explorer']:<18}{r['control']:<18}{r['input']:<10}{r['ms']:>6.0f}"
              f"  {r['redraws']:>7}  {'yes' if r['changed'] else 'no'}")
    for kind in ("keyboard", "mouse"):
        ms = [r["ms"] for r in rows if r["input"] == kind]
        if ms:
            write(f"median {kind}-to-paint: {statistics.median(ms):.0f} ms over {len(ms)} inputs "
                  f"(max {max(ms):.0f} ms)")
