"""Fixtures of the data tests: the ci datasets built once per session, the data scripts as modules."""
from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from course_lib.data.synthetic import SYNTHETIC_DATASETS, build_dataset
from course_lib.profiles import get_profile

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def ci_data(tmp_path_factory) -> Path:
    """The three synthetic datasets of the ci profile, seed 0, in a fresh directory."""
    root = tmp_path_factory.mktemp("ci_seed0")
    for name in SYNTHETIC_DATASETS:
        build_dataset(name, root, get_profile("ci"), seed=0, progress=False)
    return root


def load_script(name: str):
    """``data_scripts/<name>.py`` imported as a module (the scripts are not a package)."""
    path = REPO / "data_scripts" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"data_scripts_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def dead_pid() -> int:
    """The id of a process that has ended (a child that ran and was waited for)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


@pytest.fixture
def live_pid():
    """The id of a process that runs for the test's duration (a sleeping child)."""
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    yield child.pid
    child.kill()
    child.wait()
