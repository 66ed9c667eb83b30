"""Repository hygiene: the two dependency lists agree, notebooks carry no outputs, CI runs `make test`."""
import json
import re
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# conda-forge names that differ from PyPI names
CONDA_TO_PYPI = {"pytorch": "torch"}


def _name_and_spec(requirement: str) -> tuple[str, str]:
    match = re.match(r"\s*([A-Za-z0-9_.\-]+)\s*(.*)", requirement)
    return match.group(1).lower().replace("_", "-"), match.group(2).replace(" ", "")


def test_environment_yml_and_pyproject_name_the_same_packages():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pypi = dict(_name_and_spec(r) for r in project["dependencies"] + project["optional-dependencies"]["dev"])
    conda = {}
    text = (ROOT / "environment.yml").read_text()
    for line in text.split("dependencies:", 1)[1].splitlines():
        item = re.match(r"\s+-\s+([^#]+)", line)
        if item and not item.group(1).strip().startswith(("python", "pip")):
            name, spec = _name_and_spec(item.group(1).strip())
            conda[CONDA_TO_PYPI.get(name, name)] = spec
    assert sorted(conda) == sorted(pypi), (
        f"environment.yml and pyproject.toml list different packages: only in environment.yml "
        f"{sorted(set(conda) - set(pypi))}, only in pyproject.toml {sorted(set(pypi) - set(conda))}")
    mismatched = {name: (conda[name], pypi[name]) for name in pypi if conda[name] != pypi[name]}
    assert not mismatched, f"version ranges differ (environment.yml, pyproject.toml): {mismatched}"


NOTEBOOKS = sorted(p for p in (ROOT / "notebooks").glob("*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_committed_without_outputs(path):
    cells = json.loads(path.read_text())["cells"]
    dirty = [i for i, c in enumerate(cells) if c["cell_type"] == "code" and (c.get("outputs") or c.get("execution_count"))]
    assert not dirty, (f"{path.name}: cells {dirty} carry outputs or execution counts; clear them before committing "
                       f"(`jupyter nbconvert --clear-output --inplace {path.relative_to(ROOT)}`)")
    ids = [c.get("id") for c in cells]
    assert None not in ids and len(set(ids)) == len(ids), (
        f"{path.name}: cells {[i for i, x in enumerate(ids) if x is None]} have no id, or ids repeat (nbformat 4.5 "
        "needs one unique id per cell; a cell added by a script lacks it): `python -c \"import nbformat as n; "
        f"p='{path.relative_to(ROOT)}'; b=n.read(p, 4); n.validator.normalize(b); n.write(b, p)\"` adds them")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_opens_with_goals_and_ends_with_self_checking_exercises(path):
    cells = json.loads(path.read_text())["cells"]
    first = "".join(cells[0]["source"]) if cells else ""
    assert cells[0]["cell_type"] == "markdown" and "learn" in first.lower(), (
        f"{path.name} must open with a markdown cell saying what the student will learn")
    code = ["".join(c["source"]) for c in cells if c["cell_type"] == "code"]
    assert any("assert" in src or "ex.check_" in src for src in code[-3:]), (
        f"{path.name} must end with self-checking exercises (checkers of course_lib.exercises)")


def test_ci_runs_the_readme_test_command():
    assert "make test" in (ROOT / ".ci" / "run").read_text()
    assert "make test" in (ROOT / "README.md").read_text()


TRAINING = [p for p in NOTEBOOKS if re.match(r"0[1-8]_", p.name)]  # the chapters that train a model


@pytest.mark.parametrize("path", TRAINING, ids=[p.name for p in TRAINING])
def test_training_chapter_overfits_first_and_checks_its_cpu_target(path):
    """Every training chapter first overfits two images (engine.overfit / overfit_detector + check_overfit) and then
    checks the quality its markdown states for the cpu profile (profiles.check_targets), as the README promises."""
    cells = json.loads(path.read_text())["cells"]
    code = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
    markdown = ["".join(c["source"]) for c in cells if c["cell_type"] == "markdown"]
    assert re.search(r"\boverfit_detector\(|check_overfit\(", code), f"{path.name}: no overfit check"
    assert any("### First: " in m for m in markdown), f"{path.name}: no '### First: ...' overfit section"
    assert re.search(r"check_targets\(PROFILE, \{", code), f"{path.name}: no profiles.check_targets of its cpu target"
    assert any("`cpu`" in m and "target" in m for m in markdown), f"{path.name}: no markdown states its cpu target"
