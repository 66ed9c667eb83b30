#!/usr/bin/env python
"""Every notebook run as a student's copy runs: `make test-notebooks` (part of `make test`).

1. a wheel built from this checkout (``build/wheel/``);
2. a venv of its own (``build/installed-venv``) that sees the course venv's third-party packages through a ``.pth``
   line (whose folder's own ``.pth`` files -- the editable course_lib -- Python does not process): ``import course_lib``
   must fail there before the wheel is installed into it (``pip --target``, no dependencies);
3. a Jupyter kernel for it, registered under ``build/installed-kernel`` (not the user's);
4. each notebook copied alone into an empty folder under a temporary directory outside the checkout, run top to bottom
   by nbval with that kernel, ``PYTHONPATH`` and ``COURSE_DATA_DIR`` unset: the set-up cell builds the data in the
   default folder (``XDG_CACHE_HOME=build/installed-cache``, kept between runs);
5. the executed notebooks, outputs included, saved to ``build/executed/<profile>/`` (save_executed.py).

    python tests/installed/run_notebooks.py [PYTEST ARGS...]     # COURSE_PROFILE=ci COURSE_SOLUTIONS=1 (make sets them)
"""
from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BUILD = ROOT / "build"
VENV = BUILD / "installed-venv"
KERNEL = "course-installed"


def run(cmd, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], check=True, **kwargs)


def build_wheel() -> Path:
    out = BUILD / "wheel"
    # setuptools stages files in build/lib: a file deleted from course_lib would linger there and ship in the wheel
    for stale in [out, BUILD / "lib", *BUILD.glob("bdist.*")]:
        shutil.rmtree(stale, ignore_errors=True)
    run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "--no-index", "-w", out, ROOT],
        cwd=ROOT)
    (wheel,) = out.glob("course_lib-*.whl")
    return wheel


def make_venv(wheel: Path) -> Path:
    shutil.rmtree(VENV, ignore_errors=True)
    run([sys.executable, "-m", "venv", "--without-pip", VENV])
    python = VENV / "bin" / "python"
    target = Path(run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                      capture_output=True, text=True).stdout.strip())
    course_site = [p for p in site.getsitepackages() if Path(p).is_dir()] or [sysconfig.get_paths()["purelib"]]
    (target / "course-venv-packages.pth").write_text("".join(f"{p}\n" for p in course_site))
    probe = subprocess.run([python, "-c", "import course_lib"], capture_output=True, text=True, cwd=BUILD,
                           env=_env())
    if probe.returncode == 0:
        sys.exit(f"{VENV}: `import course_lib` works before the wheel is installed, so the checkout would leak into the "
                 f"installed run (the course venv's editable course_lib through {course_site}?).")
    run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--target", target, wheel])
    run([python, "-m", "ipykernel", "install", "--prefix", BUILD / "installed-kernel", "--name", KERNEL,
         "--display-name", "course_lib (installed wheel)"], capture_output=True)
    return python


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "COURSE_DATA_DIR")}
    env.update(XDG_CACHE_HOME=str(BUILD / "installed-cache"), JUPYTER_PATH=str(BUILD / "installed-kernel/share/jupyter"),
               COURSE_EXECUTED_DIR=str(BUILD / "executed" / (os.environ.get("COURSE_PROFILE") or "default")))
    return env


def main(pytest_args: list[str]) -> int:
    t0 = time.perf_counter()
    python = make_venv(build_wheel())
    where = run([python, "-c", "import course_lib, course_lib.data.paths as p; print(course_lib.__file__, "
                 "p.checkout_root(), p.data_root())"], capture_output=True, text=True, cwd=BUILD, env=_env()).stdout
    print(f"installed course_lib, its checkout (None: installed) and data folder: {where.strip()} "
          f"({time.perf_counter() - t0:.0f} s to build and install)", flush=True)
    if not where.startswith(str(VENV)) or " None " not in where:
        sys.exit(f"the installed venv imports course_lib from outside {VENV}: {where}")
    with tempfile.TemporaryDirectory(prefix="course-installed-") as tmp:
        run_dir = Path(tmp)
        (run_dir / "pytest.ini").write_text("[pytest]\n")
        shutil.copy(Path(__file__).with_name("save_executed.py"), run_dir / "conftest.py")
        names = []
        for notebook in sorted((ROOT / "notebooks").glob("*.ipynb")):
            (run_dir / notebook.stem).mkdir()
            shutil.copy(notebook, run_dir / notebook.stem / notebook.name)
            names.append(f"{notebook.stem}/{notebook.name}")
        cmd = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--rootdir", run_dir, "--nbval-lax",
               "--nbval-kernel-name", KERNEL, *names, *pytest_args]
        return subprocess.run([str(c) for c in cmd], cwd=run_dir, env=_env()).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
