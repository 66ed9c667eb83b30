"""Each notebook's set-up cell, and what it calls: :func:`notebook`.

The cell (:func:`cell_source`, the same in every notebook but for its name) first pip-installs the course where
``course_lib`` is missing (Colab, a fresh machine), at the notebook's version (:func:`requirement`). Then
``notebook(name, version)``:

* in a checkout (``make lab``, ``make test``, ``pytest notebooks/...``): prints how long the notebook takes, as it always
  did, and nothing else;
* installed: checks that the installed course is the notebook's version; in Colab enables the custom widget manager
  (the explorers are ipywidgets) and, unless ``COURSE_PROFILE`` is set, picks ``colab`` on a GPU runtime (the free
  T4, 15 GB) or ``cpu`` without one; builds that profile's synthetic data under ``data_root()`` (skipped when
  complete); prints each step and the expected run time. Running it again changes nothing.

``python -m course_lib.setup`` (in a checkout) writes every notebook's set-up cell and the README's "Open in Colab"
table from the one setting, :data:`course_lib.REPOSITORY` / :data:`course_lib.BRANCH`, and ``course_lib.__version__``.
"""
from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import course_lib

__all__ = ["requirement", "colab_url", "cell_source", "colab_links", "notebook", "write"]

SETUP_MARK = "# Set-up, the same in every notebook"  # how write() knows a notebook's set-up cell
# the notebooks whose networks start, in cpu and ci, from course_lib.pretraining's files, and which: the ResNet-50 of
# the detectors (00 measures what it changes; 05-08 fine-tune from it) and chapter 4's VGG16 (R-CNN fine-tunes it,
# Fast R-CNN starts from R-CNN's). Installed, their set-up cell builds the file once (minutes in cpu, seconds in ci)
PRETRAINED_CHAPTERS = {"00": ("resnet50",), "04": ("vgg16",), "05": ("resnet50",), "06": ("resnet50",),
                       "07": ("resnet50",), "08": ("resnet50",)}
LINKS_BEGIN = "<!-- colab links: written by `python -m course_lib.setup` from course_lib.REPOSITORY -->"
LINKS_END = "<!-- end of colab links -->"


def requirement(version: str = course_lib.__version__) -> str:
    """What pip installs in a notebook's set-up cell: the repository at the tag of ``version``."""
    return f"course_lib @ git+{course_lib.REPOSITORY}@v{version}"


def colab_url(name: str) -> str:
    """Colab's link to notebook ``name`` (e.g. ``"05_faster_rcnn"``) in the repository's :data:`~course_lib.BRANCH`."""
    github = re.fullmatch(r"https://github\.com/([^/]+/[^/]+?)/?", course_lib.REPOSITORY)
    if github is None:
        raise ValueError(f"course_lib.REPOSITORY = {course_lib.REPOSITORY!r} is not https://github.com/<owner>/<repo>: "
                         "Colab opens notebooks from GitHub; set it in course_lib/__init__.py.")
    return f"https://colab.research.google.com/github/{github.group(1)}/blob/{course_lib.BRANCH}/notebooks/{name}.ipynb"


def cell_source(name: str, version: str = course_lib.__version__) -> str:
    """The first code cell of notebook ``name``: a bootstrap that must run before course_lib exists, then one call."""
    return f'''\
# Set-up, the same in every notebook: where course_lib is missing (Colab, a fresh machine) pip installs the course at
# this notebook's version; then, installed, notebook() picks the profile and builds the data (course_lib/setup.py).
# It says how long this notebook takes. In a checkout (make lab, make test) it changes nothing.
import importlib.util, subprocess, sys
VERSION, COURSE = "{version}", "{requirement(version)}"
if importlib.util.find_spec("course_lib") is None:
    pip = subprocess.run([sys.executable, "-m", "pip", "install", "-q", COURSE], capture_output=True, text=True)
    if pip.returncode:
        raise RuntimeError(f"Could not install the course ({{COURSE}}): it needs the internet once (or, offline, "
                           f"`pip install .` in a copy of the course's repository). pip said:\\n{{pip.stderr[-1500:]}}")
    importlib.invalidate_caches()
from course_lib.setup import notebook

notebook("{name}", VERSION)'''


def _colab_output():
    """``google.colab.output`` when running in Colab, else None."""
    try:
        from google.colab import output
    except ImportError:
        return None
    return output


def notebook(name: str, version: str | None = None) -> None:
    """Set up notebook ``name`` (see the module docstring), printing what it does and, last, the expected run time."""
    from course_lib.data.paths import checkout_root
    from course_lib.timings import expect

    if checkout_root() is None:
        _installed(name, version)
    expect(name)


def _installed(name: str, version: str | None) -> None:
    from course_lib.data.make_synthetic import build
    from course_lib.profiles import get_profile

    if version is not None and version != course_lib.__version__:
        raise RuntimeError(
            f"{name} is written for version {version} of the course, but course_lib {course_lib.__version__} is "
            f"installed: run `pip install \"{requirement(version)}\"` and restart the kernel (in Colab: Runtime > "
            "Restart session), or open the notebook of the installed version.")
    colab = _colab_output()
    if colab is not None:
        colab.enable_custom_widget_manager()
        print("Colab: custom widget manager enabled (the explorers' sliders work)")
        if not os.environ.get("COURSE_PROFILE", "").strip():
            import torch

            gpu = torch.cuda.is_available()
            os.environ["COURSE_PROFILE"] = "colab" if gpu else "cpu"
            where = f"a GPU runtime ({torch.cuda.get_device_name(0)})" if gpu else "no GPU (Runtime > Change runtime type)"
            print(f"Colab with {where}: COURSE_PROFILE={os.environ['COURSE_PROFILE']} "
                  "(set COURSE_PROFILE before this cell to choose another)")
    profile = get_profile()
    print(f"profile {profile.name}: {profile.description}")
    build(profile, skip_existing=True, progress=profile.name != "ci")  # ci: seconds, and no bars in executed copies
    if name[:2] in PRETRAINED_CHAPTERS:
        from course_lib.pretraining import build_backbone

        for network in PRETRAINED_CHAPTERS[name[:2]]:
            build_backbone(profile, network, progress=profile.name != "ci")


def colab_links(names: list[str]) -> str:
    """The README's "Open in Colab" table for notebooks ``names``, between its two marker lines."""
    rows = "\n".join(f"| `{n}.ipynb` | [Open in Colab]({colab_url(n)}) |" for n in names)
    return f"{LINKS_BEGIN}\n| notebook | Colab |\n|---|---|\n{rows}\n{LINKS_END}"


def write(root: Path) -> list[Path]:
    """Write every notebook's set-up cell and the README's Colab table in checkout ``root``; returns the changed files."""
    from course_lib.data.atomic import atomic_write_bytes

    notebooks = sorted((root / "notebooks").glob("*.ipynb"))
    changed = []
    for path in notebooks:
        nb = json.loads(path.read_text(encoding="utf-8"))
        first = next((i for i, c in enumerate(nb["cells"]) if c["cell_type"] == "code"), len(nb["cells"]))
        cell = nb["cells"][first] if first < len(nb["cells"]) else None
        lines = cell_source(path.stem).splitlines(keepends=True)
        if cell is None or not "".join(cell["source"]).startswith(SETUP_MARK):  # a new notebook: keep its first cell
            cell = {"cell_type": "code", "execution_count": None, "id": "course-setup", "metadata": {}, "outputs": [],
                    "source": []}
            nb["cells"].insert(first, cell)
        if cell["source"] != lines:
            cell["source"] = lines
            atomic_write_bytes(path, (json.dumps(nb, indent=1, ensure_ascii=False) + "\n").encode("utf-8"))
            changed.append(path)
    readme = root / "README.md"
    text = readme.read_text(encoding="utf-8")
    if LINKS_BEGIN not in text or LINKS_END not in text:
        raise ValueError(f"{readme} has no Colab table between {LINKS_BEGIN!r} and {LINKS_END!r}: add the two lines "
                         "where the table belongs, then run `python -m course_lib.setup` again.")
    start, end = text.index(LINKS_BEGIN), text.index(LINKS_END) + len(LINKS_END)
    new = text[:start] + colab_links([p.stem for p in notebooks]) + text[end:]
    if new != text:
        atomic_write_bytes(readme, new.encode("utf-8"))
        changed.append(readme)
    return changed


if __name__ == "__main__":
    from course_lib.data.paths import checkout_root

    checkout = checkout_root()
    if checkout is None:
        sys.exit("python -m course_lib.setup writes the notebooks and README of a checkout; this course_lib is "
                 "installed. Run it in a clone of the course's repository (PYTHONPATH=. or pip install -e .).")
    for path in write(checkout):
        print(f"wrote {path.relative_to(checkout)}")
