"""tests/benchmarks/control_fast_rcnn.py, chapter 4's controls, at ci size (seconds): it finds the notebook's cells by
what they define, runs them, and prints R-CNN's line and one line per seed and image size; a marker that no cell (or
more than one) contains stops it with a message naming the marker."""
import json
import os
import runpy
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "control_fast_rcnn.py"


def test_the_control_runs_the_notebooks_cells_and_prints_a_line_per_seed_and_size():
    env = {**os.environ, "COURSE_PROFILE": "ci", "MPLBACKEND": "Agg"}
    run = subprocess.run([sys.executable, str(SCRIPT), "--seeds", "0", "1", "--sizes", "256", "--start", "scratch"],
                         capture_output=True, text=True, env=env, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    lines = [json.loads(line) for line in run.stdout.splitlines() if line.startswith('{"')]
    assert [(r["detector"], r.get("seed"), r.get("min_size")) for r in lines] == [
        ("R-CNN", None, None), ("Fast R-CNN", 0, 256), ("Fast R-CNN", 1, 256)]
    assert all(r["start"] == "scratch" and 0 <= r["AP50"] <= 1 and {"AP50s", "AP50m", "AP50l"} <= set(r)
               for r in lines)
    assert all(r["minus_rcnn"] == pytest.approx(r["AP50"] - lines[0]["AP50"], abs=2e-3) for r in lines[1:])


def test_a_marker_the_notebook_lacks_is_named():
    cells = runpy.run_path(str(SCRIPT))["notebook_cells"]
    assert len(cells()) == 7
    with pytest.raises(SystemExit, match=r"0 code cells contain 'no such line'"):
        cells(("no such line",))
    with pytest.raises(SystemExit, match=r"code cells contain 'import'"):  # several cells: ambiguous
        cells(("import",))
