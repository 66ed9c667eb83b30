"""A notebook run in a profile whose data is missing says which command builds it (issue 13).

Notebooks find their data only through ``course_lib.data.dataset_dir`` / ``data_root`` (whose error names the
``make_synthetic.py`` command), never by a path of their own; one notebook is run on a fresh kernel against an empty
data directory to see the message a student sees. (No notebook loads a checkpoint it did not write: ``fit`` creates
or resumes its own.)
"""
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebooks_find_data_only_through_dataset_dir(path):
    code = ["".join(c["source"]) for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code"]
    own_paths = [line.strip() for src in code for line in src.splitlines()
                 if re.search(r"""["'](\.\./)?data/""", line)]
    assert not own_paths, f"{path.name} builds data paths itself (use dataset_dir, which names the fix): {own_paths}"


def test_missing_dataset_names_the_command_in_the_notebook(tmp_path, monkeypatch):
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    nb = nbformat.read(ROOT / "notebooks" / "00_course_map.ipynb", as_version=4)
    monkeypatch.setenv("COURSE_DATA_DIR", str(tmp_path))  # the kernel inherits the environment
    monkeypatch.setenv("COURSE_PROFILE", "cpu")
    with pytest.raises(CellExecutionError) as error:
        NotebookClient(nb, timeout=120, kernel_name="python3",
                       resources={"metadata": {"path": str(ROOT / "notebooks")}}).execute()
    assert re.search(r"python -m course_lib\.data\.make_synthetic --profile cpu --only \w+", str(error.value))
    assert not any(tmp_path.iterdir()), "the notebook wrote into the empty data directory"
