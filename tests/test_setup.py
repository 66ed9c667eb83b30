"""The course installed and in Colab: each notebook's set-up cell, course_lib.setup, the wheel, the README's links.

The notebooks themselves run from an installed wheel in `make test-notebooks` (tests/installed/run_notebooks.py)."""
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import types
import zipfile
from pathlib import Path

import pytest

import course_lib
import course_lib.data.make_synthetic as make_synthetic
import course_lib.data.paths as paths
import course_lib.pretraining as pretraining
from course_lib import recipes, setup
from course_lib.profiles import PROFILES

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def first_code_cell(path: Path) -> str:
    return "".join(next(c for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code")["source"])


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_every_notebook_opens_with_the_set_up_cell_of_this_version(path):
    assert first_code_cell(path) == setup.cell_source(path.stem), (
        f"{path.name}: its first code cell is not the set-up cell of course_lib {course_lib.__version__} at "
        f"{course_lib.REPOSITORY}: run `python -m course_lib.setup` (it rewrites the cells and the README's links)")
    assert f'"{course_lib.__version__}"' in first_code_cell(path) and f"@v{course_lib.__version__}" in first_code_cell(path)


def test_readme_links_every_notebook_to_colab_from_the_one_setting():
    readme = (ROOT / "README.md").read_text()
    assert setup.colab_links([p.stem for p in NOTEBOOKS]) in readme, (
        "README's Colab table is not the one course_lib.REPOSITORY and notebooks/ give: run `python -m course_lib.setup`")
    owner_repo = course_lib.REPOSITORY.removeprefix("https://github.com/")
    links = re.findall(r"https://colab\.research\.google\.com/github/\S+?\.ipynb", readme)
    assert sorted(links) == [f"https://colab.research.google.com/github/{owner_repo}/blob/{course_lib.BRANCH}/notebooks/"
                             f"{p.name}" for p in NOTEBOOKS]


def test_colab_url_refuses_a_repository_that_is_not_on_github(monkeypatch):
    monkeypatch.setattr(course_lib, "REPOSITORY", "https://gitlab.com/a/b")
    with pytest.raises(ValueError, match="gitlab.com/a/b.*course_lib/__init__.py"):
        setup.colab_url("05_faster_rcnn")


def fake_pip(folder: Path, exit_code: int, message: str = "") -> Path:
    """A `pip` package that records its arguments to folder/pip-calls and exits with exit_code."""
    (folder / "pip").mkdir()
    (folder / "pip" / "__init__.py").write_text("")
    (folder / "pip" / "__main__.py").write_text(
        f"import sys\nopen({str(folder / 'pip-calls')!r}, 'a').write(' '.join(sys.argv[1:]) + '\\n')\n"
        f"sys.stderr.write({message!r})\nsys.exit({exit_code})\n")
    return folder / "pip-calls"


def run_cell(args, tmp_path, **env):
    clean = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "COURSE_DATA_DIR", "COURSE_PROFILE")}
    return subprocess.run([sys.executable, *args, "-c", setup.cell_source("05_faster_rcnn")], capture_output=True,
                          text=True, cwd=tmp_path, env={**clean, **env}, timeout=120)


def test_set_up_cell_changes_nothing_in_a_checkout(tmp_path):
    calls = fake_pip(tmp_path, 0)
    data = tmp_path / "data"
    data.mkdir()
    status = subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True).stdout
    proc = run_cell([], tmp_path, PYTHONPATH=f"{tmp_path}{os.pathsep}{ROOT}", COURSE_PROFILE="ci",
                    COURSE_DATA_DIR=str(data))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("profile ci: expect about") and proc.stdout.count("\n") == 1, proc.stdout
    assert not calls.exists(), "the set-up cell ran pip in a checkout"
    assert list(data.iterdir()) == [], "the set-up cell built data in a checkout (make lab / make test build it)"
    assert subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True).stdout == status


def test_set_up_cell_explains_when_it_cannot_install(tmp_path):
    calls = fake_pip(tmp_path, 1, "ERROR: Could not find a version (network is unreachable)\n")
    # -S: no site-packages, so course_lib is missing; the cell's own `python -m pip` finds the fake pip first
    proc = run_cell(["-S"], tmp_path, PYTHONPATH=str(tmp_path))
    assert proc.returncode != 0
    assert "RuntimeError: Could not install the course (course_lib @ git+" in proc.stderr
    assert "needs the internet once" in proc.stderr and "network is unreachable" in proc.stderr, proc.stderr
    assert calls.read_text() == f"install -q {setup.requirement()}\n"


@pytest.fixture
def installed(monkeypatch, tmp_path, capsys):
    """course_lib as if installed from a wheel (no checkout), in a fake Colab; returns the calls it made."""
    calls = types.SimpleNamespace(widget_manager=0, built=[], backbones=[])
    output = types.SimpleNamespace(enable_custom_widget_manager=lambda: setattr(calls, "widget_manager",
                                                                                  calls.widget_manager + 1))
    colab = types.ModuleType("google.colab")
    colab.output = output
    monkeypatch.setitem(sys.modules, "google", types.ModuleType("google"))
    monkeypatch.setitem(sys.modules, "google.colab", colab)
    monkeypatch.setattr(paths, "checkout_root", lambda: None)
    monkeypatch.setattr(make_synthetic, "build", lambda profile, **kw: calls.built.append((profile.name, kw)))
    monkeypatch.setattr(pretraining, "build_backbone",
                        lambda profile, network="resnet50", **kw: calls.backbones.append((profile.name, network)))
    monkeypatch.setattr(os, "environ", {k: v for k, v in os.environ.items() if k != "COURSE_PROFILE"})
    return calls


def test_in_colab_it_enables_the_widget_manager_picks_a_profile_and_builds_its_data(installed, monkeypatch, capsys):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i=0: "Tesla T4")
    setup.notebook("05_faster_rcnn", course_lib.__version__)
    out = capsys.readouterr().out
    assert installed.widget_manager == 1 and os.environ["COURSE_PROFILE"] == "colab"
    assert installed.built == [("colab", {"skip_existing": True, "progress": True})]
    assert "Colab with a GPU runtime (Tesla T4): COURSE_PROFILE=colab" in out and "profile colab" in out
    setup.notebook("05_faster_rcnn", course_lib.__version__)  # again: the same profile, the data skipped if complete
    assert os.environ["COURSE_PROFILE"] == "colab" and installed.built[1] == installed.built[0]


def test_in_colab_without_a_gpu_it_picks_cpu_and_keeps_a_profile_already_chosen(installed, monkeypatch, capsys):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    setup.notebook("00_course_map")
    assert os.environ["COURSE_PROFILE"] == "cpu" and installed.built[0][0] == "cpu"
    os.environ["COURSE_PROFILE"] = "ci"
    setup.notebook("00_course_map")
    assert installed.built[1][0] == "ci" and "no GPU (Runtime > Change runtime type)" in capsys.readouterr().out
    # the pretrained backbones: built by the notebooks that use them only (the ResNet-50: 00 measures it, 05-08
    # fine-tune from it; the VGG16: chapter 4)
    setup.notebook("03_unet")
    setup.notebook("07_fpn")
    setup.notebook("04_rcnn_fast_rcnn")
    assert installed.backbones == [("cpu", "resnet50"), ("ci", "resnet50"), ("ci", "resnet50"), ("ci", "vgg16")]
    assert setup.PRETRAINED_CHAPTERS == {"00": ("resnet50",), "04": ("vgg16",), "05": ("resnet50",),
                                         "06": ("resnet50",), "07": ("resnet50",), "08": ("resnet50",)}


def test_an_installed_course_of_another_version_says_how_to_install_the_notebooks(installed):
    with pytest.raises(RuntimeError, match=r'version 0\.0\.9 .* run `pip install "course_lib @ git\+\S+@v0\.0\.9"` and '
                                           r"restart the kernel"):
        setup.notebook("05_faster_rcnn", "0.0.9")
    assert installed.built == [] and installed.widget_manager == 0


def test_installed_data_goes_to_the_users_cache_not_site_packages(monkeypatch, tmp_path):
    monkeypatch.setattr(paths, "checkout_root", lambda: None)
    monkeypatch.delenv("COURSE_DATA_DIR", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    default = paths.data_root()
    assert default == Path.home() / ".cache" / "course_lib" / "data"
    for packages in {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}:
        assert not default.is_relative_to(packages)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert paths.data_root() == tmp_path / "course_lib" / "data"
    monkeypatch.setenv("COURSE_DATA_DIR", str(tmp_path / "mine"))
    assert paths.data_root() == tmp_path / "mine"


def test_a_checkout_keeps_its_data_folder(monkeypatch):
    monkeypatch.delenv("COURSE_DATA_DIR", raising=False)
    assert paths.checkout_root() == ROOT and paths.data_root() == ROOT / "data"


def test_the_colab_profile_is_the_papers_models_from_imagenet_at_two_images_per_batch():
    colab, gpu = PROFILES["colab"], PROFILES["gpu"]
    assert colab.device == "cuda" and colab.amp and colab.detector.width == gpu.detector.width == 1.0
    fpn = recipes.RECIPES["07"]  # FPN's 0.02 for 16 images, scaled linearly to the T4's 2
    assert colab.detector.batch_size == 2 and colab.detector.lr == pytest.approx(fpn.lr * 2 / fpn.batch)
    assert colab.detector.optimizer == "sgd" and colab.detector.weights_backbone == gpu.detector.weights_backbone
    assert colab.resize.faster_rcnn == gpu.resize.faster_rcnn and colab.steps.fpn < fpn.iterations


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    """A wheel built from a copy of the checkout's package sources (setuptools writes build/ and egg-info there)."""
    src, out = tmp_path_factory.mktemp("src"), tmp_path_factory.mktemp("wheel")
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, src / name)
    for name in ("course_lib", "solutions"):
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "--no-index",
                    "-w", str(out), str(src)], check=True, capture_output=True, cwd=src)
    (path,) = out.glob("course_lib-*.whl")
    return path


def test_the_wheel_ships_every_module_the_solutions_and_the_timings(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    modules = {p.relative_to(ROOT).as_posix() for p in (ROOT / "course_lib").rglob("*.py")}
    assert modules - names == set(), "pyproject's [tool.setuptools] packages lacks a package of course_lib"
    solutions = {f"course_lib/solutions/{p.name}" for p in (ROOT / "solutions").glob("ch*.py")}
    assert len(solutions) == len(NOTEBOOKS) and solutions <= names, "COURSE_SOLUTIONS=1 needs them installed"
    assert {"course_lib/timings.json", "course_lib/data/make_synthetic.py", "course_lib/setup.py"} <= names
    assert not any(n.startswith(("solutions/", "tests/", "notebooks/", "data/")) for n in names), sorted(names)[:5]


def test_write_rewrites_a_set_up_cell_and_inserts_one_where_a_notebook_has_none(tmp_path):
    """`python -m course_lib.setup` after a version change: an old set-up cell is replaced; a new notebook's first code
    cell is kept, with the set-up cell inserted before it; the README's Colab table follows the notebooks."""
    (tmp_path / "notebooks").mkdir()
    markdown = {"cell_type": "markdown", "id": "goals", "metadata": {}, "source": ["# Goals\n"]}
    def notebook(first_code: str) -> dict:
        return {"nbformat": 4, "nbformat_minor": 5, "metadata": {}, "cells": [
            markdown, {"cell_type": "code", "id": "c1", "metadata": {}, "outputs": [], "execution_count": None,
                       "source": [first_code]}]}
    old = setup.cell_source("01_old", version="0.0.1")
    (tmp_path / "notebooks" / "01_old.ipynb").write_text(json.dumps(notebook(old)))
    (tmp_path / "notebooks" / "02_new.ipynb").write_text(json.dumps(notebook("import torch\n")))
    (tmp_path / "README.md").write_text(f"# Course\n{setup.LINKS_BEGIN}\nstale\n{setup.LINKS_END}\n")
    changed = setup.write(tmp_path)
    assert {p.name for p in changed} == {"01_old.ipynb", "02_new.ipynb", "README.md"}
    old_nb = json.loads((tmp_path / "notebooks" / "01_old.ipynb").read_text())
    assert len(old_nb["cells"]) == 2 and "".join(old_nb["cells"][1]["source"]) == setup.cell_source("01_old")
    new_nb = json.loads((tmp_path / "notebooks" / "02_new.ipynb").read_text())
    assert [c["cell_type"] for c in new_nb["cells"]] == ["markdown", "code", "code"]
    assert "".join(new_nb["cells"][1]["source"]) == setup.cell_source("02_new")
    assert "".join(new_nb["cells"][2]["source"]) == "import torch\n", "the notebook's own first cell is kept"
    assert setup.colab_url("02_new") in (tmp_path / "README.md").read_text()
    assert setup.write(tmp_path) == [], "a second run changes nothing"
