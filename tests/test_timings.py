"""make timings: each notebook's first code cell says how long it takes; the script measures and writes the table."""
import importlib.util
import json
from pathlib import Path

import nbformat
import pytest

from course_lib.timings import expect, format_seconds, load_timings

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def load_script():
    spec = importlib.util.spec_from_file_location("timings_script", ROOT / "tests" / "benchmarks" / "timings.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_first_code_cell_prints_what_to_expect(path):
    cells = nbformat.read(path, as_version=4).cells
    first = next(c for c in cells if c.cell_type == "code")
    assert f'notebook("{path.stem}", VERSION)' in first.source, (
        f"{path.name}: the first code cell should be the set-up cell, whose course_lib.setup.notebook({path.stem!r}) "
        "calls course_lib.timings.expect (`python -m course_lib.setup` writes it)")


def test_expect_says_measured_time_or_how_to_measure(tmp_path, capsys):
    table = tmp_path / "timings.json"
    table.write_text(json.dumps({"profiles": {"ci": {"machine": "2 CPU cores", "measured": "2026-12-01",
                                                     "notebooks": {"05_faster_rcnn": 42.0}}}}))
    assert "expect about 42 s" in expect("05_faster_rcnn", "ci", path=table)
    assert "not measured yet" in expect("05_faster_rcnn", "cpu", path=table)
    assert "make timings PROFILE=cpu" in capsys.readouterr().out
    assert load_timings(tmp_path / "missing.json") == {"profiles": {}}
    assert [format_seconds(s) for s in (42, 300, 7200)] == ["42 s", "5.0 min", "2.0 h"]


def test_timings_script_runs_a_notebook_and_writes_the_table(tmp_path):
    script = load_script()
    assert script.README_START in (ROOT / "README.md").read_text()  # the README has a place for the table
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("print('hello')")])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    notebook = tmp_path / "99_tiny.ipynb"
    nbformat.write(nb, notebook)
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{script.README_START}\nold\n{script.README_END}\nend\n")
    timings = tmp_path / "timings.json"
    status = script.main(["--profile", "ci", "--notebooks", str(notebook), "--timings-file", str(timings),
                          "--readme", str(readme)])
    assert status == 0
    entry = json.loads(timings.read_text())["profiles"]["ci"]
    assert 0 < entry["notebooks"]["99_tiny"] < 60 and "CPU cores" in entry["machine"]
    text = readme.read_text()
    assert text.startswith("intro\n") and text.endswith("end\n") and "old" not in text
    assert "| notebook | `ci` |" in text and "`05_faster_rcnn` | not measured |" in text
    assert "Not measured yet: `cpu`, `gpu`" in text
    # a failing notebook is reported, nothing of it is written, and the exit status says so
    nb.cells[0].source = "raise RuntimeError('boom')"
    nbformat.write(nb, notebook)
    before = timings.read_text()
    assert script.main(["--profile", "ci", "--notebooks", str(notebook), "--timings-file", str(timings),
                        "--readme", str(readme)]) == 1
    assert json.loads(timings.read_text()) == json.loads(before)


def test_a_partial_run_dates_only_the_notebooks_it_ran():
    script = load_script()
    timings = {"profiles": {"cpu": {"machine": "2 CPU cores", "measured": "2026-12-07",
                                    "notebooks": {"02_fcn": 480.0, "05_faster_rcnn": 400.0},
                                    "dates": {"02_fcn": "2026-12-07", "05_faster_rcnn": "2026-12-02"}}}}
    table = script.readme_table(timings, ["02_fcn", "05_faster_rcnn"])
    assert "`cpu`: measured 2026-12-02: `05_faster_rcnn`; 2026-12-07: `02_fcn` on 2 CPU cores" in table
    del timings["profiles"]["cpu"]["dates"]  # a file from before the dates: one day for all
    assert "`cpu`: measured 2026-12-07 on 2 CPU cores" in script.readme_table(timings, ["02_fcn"])


def test_committed_cpu_timings_cover_every_notebook_within_budget():
    """The issue's promise, as measured by `make timings PROFILE=cpu` and committed in course_lib/timings.json:
    every notebook in the laptop profile under 10 minutes on 2 cores, the whole course under an hour."""
    script = load_script()
    entry = load_timings()["profiles"].get("cpu")
    assert entry, "course_lib/timings.json has no cpu column: run `make timings PROFILE=cpu` on a 2-core machine"
    assert "2 CPU cores" in entry["machine"], entry["machine"]
    measured = entry["notebooks"]
    assert set(measured) <= {p.stem for p in NOTEBOOKS}, "a notebook was renamed or removed since the measurement"
    over = {name: s for name, s in measured.items() if s > script.BUDGET_SECONDS["cpu"]}
    assert not over, f"over the cpu budget of {script.BUDGET_SECONDS['cpu']} s: {over}"
    assert sum(measured.values()) < 3600
    missing = sorted({p.stem for p in NOTEBOOKS} - set(measured))
    if missing:
        pytest.skip(f"not yet measured in the cpu profile: {missing} (make timings PROFILE=cpu "
                    f"TIMINGS_ARGS=\"--notebooks {' '.join(missing)}\")")
