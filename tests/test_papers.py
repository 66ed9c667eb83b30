"""The paper-number registry and the notebooks stay in sync: every key a notebook reads exists, and a converted
notebook never types a registry number itself (it reads it from ``course_lib/papers.py``)."""
import importlib.util
import json
import re
from pathlib import Path

import pytest

from course_lib import papers

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def _pending() -> set[str]:
    spec = importlib.util.spec_from_file_location("_template_test", ROOT / "tests" / "exercises" / "test_notebook_exercises.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.PENDING


def _sources(path, kinds=("code", "markdown")):
    return ["".join(c["source"]) for c in json.loads(path.read_text())["cells"] if c["cell_type"] in kinds]


def _keys_used(path) -> set[str]:
    keys = set()
    for src in _sources(path, ("code",)):
        for key in re.findall(r"""["']([a-z][a-z0-9_]*(?:\.[a-z0-9_]+){2,})["']""", src):
            if key.split(".", 1)[0] in papers.PAPERS:
                keys.add(key)
    return keys


def _significant_digits(value: float) -> int:
    mantissa = f"{abs(value):.10e}".split("e")[0].replace(".", "").rstrip("0")
    return len(mantissa.lstrip("0"))


def test_every_entry_says_where_it_stands():
    for key, entry in papers.NUMBERS.items():
        assert entry.paper in papers.PAPERS, f"{key}: unknown paper {entry.paper!r}"
        assert key.split(".", 1)[0] == entry.paper, f"{key}: keys start with their paper's key ({entry.paper})"
        assert entry.table and entry.column and entry.dataset, f"{key}: table, column and dataset are required"
        assert key == key.lower() and len(key.split(".")) >= 3, f"{key}: keys read <paper>.<table>.<row>[.<column>]"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_registry_keys_used_in_notebooks_exist(path):
    unknown = sorted(k for k in _keys_used(path) if k not in papers.NUMBERS)
    assert not unknown, f"{path.name} reads paper numbers that course_lib/papers.py does not have: {unknown}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebooks_do_not_type_paper_numbers(path):
    if path.name in _pending():
        pytest.skip(f"{path.name} is not converted yet (PENDING in tests/exercises/test_notebook_exercises.py)")
    typed = []
    # results with a fraction and at least 3 significant digits are distinctive (59.4, 0.0382, 77.5); whole numbers
    # are mostly settings the code needs as arguments (a 227-pixel input, 100 detections), and 0.9 or 20 are everywhere
    # only the numbers of the papers the notebook reads from the registry: a plot offset of 1.05 in chapter 01 is not
    # EFPN's 1.05 s
    cited = {key.split(".", 1)[0] for key in _keys_used(path)}
    numbers = {e.value for e in papers.NUMBERS.values()
               if e.paper in cited and isinstance(e.value, float) and not e.value.is_integer()}
    for value in sorted(v for v in numbers if _significant_digits(v) >= 3):
        text = f"{value:g}" if abs(value) >= 1e-4 else repr(value)
        pattern = rf"(?<![\d.]){re.escape(text)}(?!\d)"
        for src in _sources(path):
            if re.search(pattern, src):
                typed.append(text)
                break
    assert not typed, (f"{path.name} types paper numbers {typed}: read them with papers.value(key) or show them "
                       "with papers.beside_the_paper(...)")


def test_the_check_sees_a_typed_number(tmp_path):
    assert _significant_digits(59.4) == 3 and _significant_digits(0.0003529) == 4 and _significant_digits(0.9) == 1
    nb = {"cells": [{"cell_type": "code", "source": ["PAPER = {'FCN-8s': 62.7}\n", "x = papers.value('fcn.table2.nope')"]}]}
    path = tmp_path / "x.ipynb"
    path.write_text(json.dumps(nb))
    assert _keys_used(path) == {"fcn.table2.nope"}
    assert re.search(r"(?<![\d.])62\.7(?!\d)", _sources(path)[0])
