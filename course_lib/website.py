"""The course as a static website: every chapter executed, the explorers as pictures, the papers' numbers.

    python -m course_lib.website                        # profile cpu (SITE_PROFILE), output build/site/
    python -m course_lib.website --profile ci --executed build/executed/ci
    make site [SITE_PROFILE=ci]                      # the same through make

Built with Sphinx + MyST-NB (the engine of Jupyter Book 1), not Jupyter Book 2 / mystmd: mystmd downloads its HTML
theme from api.mystmd.org / GitHub at build time (the theme is not on npm), so it cannot build offline; Sphinx, its
book theme and MathJax 3 (``sphinx-mathjax-offline``) all come from PyPI, and the site loads nothing from elsewhere.

* **Executed chapters.** A notebook is executed (``course_lib.run.execute_notebook``, ``COURSE_SOLUTIONS=1``) into
  ``build/site-cache/<profile>/`` unless the cached copy's key -- the notebook's content, the profile and the
  library's version (``__version__`` and its sources, ``course_lib/`` and ``solutions/``) -- is unchanged. With
  ``--executed DIR`` a copy ``DIR/<notebook>`` (``make test`` writes them) is taken instead when its code cells are
  the notebook's and it holds its explorers' state.
* **Explorers** (ipywidgets need a kernel) are shown as their first picture, taken from the executed notebook's
  widget state, with a line saying where to move them.
* **Exercises** keep their stubs: notebooks are committed with stubs and the checkers load ``solutions/`` only at
  run time, so no solution source reaches a page (``tests/browser/test_site.py`` greps every page for them); the
  checkers' "[COURSE_SOLUTIONS=1]" lines are reworded for readers.
* ``papers.html``: the papers' numbers (``course_lib/papers.py``), one table per paper.

The site is written to a temporary folder beside ``--out`` and renamed into place once complete.
"""
from __future__ import annotations

import argparse
import copy
import hashlib
import html
import importlib.metadata
import json
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

import course_lib
from course_lib import papers
from course_lib.data.atomic import atomic_write_bytes
from course_lib.data.paths import checkout_root, repo_root
from course_lib.report import CHAPTER_PAPERS, chapters

__all__ = ["BUILD", "cache_key", "executed_notebook", "publish", "papers_page", "build_site", "main"]

BUILD = repo_root() / "build"
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"
SOLUTIONS_MARK = "[COURSE_SOLUTIONS=1]"
SOLUTIONS_NOTE = ("(This page was built with the course's reference solution standing in for the stub above; "
                  "when you run the notebook, the checker checks your own code.)")


def library_version() -> str:
    """``__version__`` and a digest of the library's and the solutions' sources: what an executed chapter depends on
    (an edit there may change what a notebook shows, so every chapter runs again)."""
    root = repo_root()
    digest = hashlib.sha256()
    sources = [*(root / "course_lib").rglob("*.py"), *(root / "solutions").glob("*.py")]
    for path in sorted(p for p in sources if p != Path(__file__).resolve()):  # not this builder: no notebook uses it
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    return f"{course_lib.__version__}+{digest.hexdigest()[:16]}"


def cache_key(notebook: Path, profile: str) -> str:
    """What decides whether a cached executed copy of ``notebook`` is still that notebook run in ``profile``."""
    digest = hashlib.sha256(notebook.read_bytes())
    digest.update(f"\0{profile}\0{library_version()}".encode())
    return digest.hexdigest()


def _cells(nb: dict) -> list[tuple[str, str]]:
    """Every cell's type and source: an executed copy is current only when the notebook's text is unchanged too."""
    return [(c["cell_type"], "".join(c["source"]) if isinstance(c["source"], list) else c["source"]) for c in nb["cells"]]


def _widget_state(nb: dict) -> dict:
    return nb.get("metadata", {}).get("widgets", {}).get(WIDGET_STATE, {}).get("state", {})


def _models(state: dict, model_id: str):
    """Widget ``model_id`` and the widgets inside it, in their order on the page (depth first)."""
    seen, stack = set(), [model_id]
    while stack:
        mid = stack.pop()
        if mid in seen or mid not in state:
            continue
        seen.add(mid)
        yield state[mid]
        children = state[mid]["state"].get("children", [])
        stack.extend(reversed([c.removeprefix("IPY_MODEL_") for c in children if isinstance(c, str)]))


def _picture(state: dict, model_id: str) -> str | None:
    """The base64 PNG of the first ``Image`` widget inside widget ``model_id`` (an explorer's figure), or None."""
    for model in _models(state, model_id):
        if model.get("model_name") == "ImageModel" and model["state"].get("format", "png") == "png":
            for buffer in model.get("buffers", []):
                if buffer.get("path") == ["value"] and buffer.get("encoding") == "base64":
                    return buffer["data"]
    return None


def _widget_text(state: dict, model_id: str) -> str:
    """A widget without a picture (tqdm's progress bar) as the text it showed last: its labels and bars."""
    parts = []
    for model in _models(state, model_id):
        name, values = model.get("model_name", ""), model["state"]
        if name in ("HTMLModel", "LabelModel", "HTMLMathModel"):
            parts.append(html.unescape(re.sub(r"<[^>]+>", "", str(values.get("value", "")))).strip())
        elif name in ("FloatProgressModel", "IntProgressModel"):
            done = values.get("value", 0) / values["max"] if values.get("max") else 0.0
            parts.append("\u2588" * round(10 * done) + " " * (10 - round(10 * done)))
    return " ".join(p for p in parts if p)


def _widget_outputs(nb: dict):
    for cell in nb["cells"]:
        for output in cell.get("outputs", []) if cell["cell_type"] == "code" else []:
            if WIDGET_VIEW in output.get("data", {}):
                yield output["data"][WIDGET_VIEW]["model_id"]


def usable(executed: Path, notebook: Path) -> bool:
    """True when ``executed`` is ``notebook`` run to the end (the same cells, markdown included; no error) with its widgets' state
    (the explorers' pictures)."""
    if not executed.is_file():
        return False
    nb, source = json.loads(executed.read_text()), json.loads(notebook.read_text())
    errors = any(o.get("output_type") == "error" for c in nb["cells"] for o in c.get("outputs", []))
    state = _widget_state(nb)
    return _cells(nb) == _cells(source) and not errors and all(mid in state for mid in _widget_outputs(nb))


def executed_notebook(notebook: Path, profile: str, *, cache: Path, executed: Path | None = None,
                      timeout: int | None = None) -> Path:
    """An executed copy of ``notebook`` in ``profile``: ``executed/<name>`` when usable, else the cached copy in
    ``cache`` when its key is unchanged, else a fresh run (``course_lib.run.execute_notebook``) into ``cache``."""
    if executed is not None and usable(executed / notebook.name, notebook):
        print(f"site: {notebook.name}: the executed copy in {executed}", flush=True)
        return executed / notebook.name
    out, key_file = cache / notebook.name, cache / f"{notebook.stem}.key"
    key = cache_key(notebook, profile)
    if out.is_file() and key_file.is_file() and key_file.read_text().strip() == key:
        print(f"site: {notebook.name}: cached ({cache})", flush=True)
        return out
    from course_lib.run import execute_notebook

    print(f"site: {notebook.name}: executing in the {profile} profile ...", flush=True)
    key_file.unlink(missing_ok=True)  # a run that fails leaves no key beside its copy
    result = execute_notebook(notebook, out, {"COURSE_PROFILE": profile, "COURSE_SOLUTIONS": "1"}, timeout=timeout)
    if result["status"] != "done":
        raise RuntimeError(f"{notebook} failed in the {profile} profile: {result['error']}\nThe executed copy, "
                           f"with the error, is {out}; fix the notebook (or its data: make_synthetic.py --profile "
                           f"{profile}) and build again.")
    atomic_write_bytes(key_file, (key + "\n").encode())
    print(f"site: {notebook.name}: {result['wall_s']:.0f} s", flush=True)
    return out


def _explorer_note(name: str) -> str:
    """Where to move the explorer: JupyterLab, or Colab by the README's link (course_lib.setup.colab_url, from the one
    setting course_lib.REPOSITORY)."""
    from course_lib.setup import colab_url

    lab = "in JupyterLab (<code>make lab</code> in the course's repository)"
    colab = f'<a href="{html.escape(colab_url(Path(name).stem))}">in Colab</a>'
    return (f'<p class="explorer-note"><em>An interactive explorer, shown here as its first picture: open this '
            f"notebook {lab} or {colab} to move its controls.</em></p>")


def publish(nb: dict, name: str) -> dict:
    """A copy of the executed notebook ``nb`` for the site: each explorer replaced by its first picture and a line
    saying where to move it, the checkers' "[COURSE_SOLUTIONS=1]" lines reworded, the widget state dropped."""
    nb = copy.deepcopy(nb)
    state = _widget_state(nb)
    for cell in nb["cells"]:
        if cell["cell_type"] != "code":
            continue
        outputs = []
        for output in cell.get("outputs", []):
            if WIDGET_VIEW in output.get("data", {}):
                model_id = output["data"][WIDGET_VIEW]["model_id"]
                if model_id not in state:
                    raise ValueError(f"{name}: a widget's output has no state in the executed notebook; execute it "
                                     "with course_lib.run.execute_notebook (which keeps the state).")
                png = _picture(state, model_id)
                if png is None and any(m.get("model_name") == "ImageModel" for m in _models(state, model_id)):
                    raise ValueError(f"{name}: an explorer's picture is missing from the executed notebook's widget "
                                     "state; execute it again with course_lib.run.execute_notebook.")
                if png is None:  # a progress bar
                    outputs.append({"output_type": "display_data", "metadata": {},
                                    "data": {"text/plain": _widget_text(state, model_id)}})
                    continue
                outputs.append({"output_type": "display_data", "metadata": {}, "data": {"image/png": png}})
                outputs.append({"output_type": "display_data", "metadata": {},
                                "data": {"text/html": _explorer_note(name)}})
                continue
            if output.get("output_type") == "stream":
                text = "".join(output["text"]) if isinstance(output["text"], list) else output["text"]
                output["text"] = "".join(SOLUTIONS_NOTE + "\n" if line.startswith(SOLUTIONS_MARK) else line
                                         for line in text.splitlines(keepends=True))
            outputs.append(output)
        cell["outputs"] = outputs
    nb.get("metadata", {}).pop("widgets", None)  # else the page would load the widgets' JavaScript from a CDN
    return nb


def _cell(text) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def papers_page(notebooks: dict[str, Path]) -> str:
    """The papers' numbers (``course_lib/papers.py``) as a MyST page: per paper its citation, the chapters among
    ``notebooks`` ({chapter: path}) that quote it, and its table."""
    by_paper: dict[str, list] = {}
    for entry in papers.NUMBERS.values():
        by_paper.setdefault(entry.paper, []).append(entry)
    lines = ["# The papers' numbers", "",
             "Every number the course quotes from a paper, with where it stands in that paper (generated from "
             "`course_lib/papers.py`; the notebooks read them from there).", ""]
    for paper, citation in papers.PAPERS.items():
        if paper not in by_paper:
            continue
        lines += [f"## {paper}", "", citation, ""]
        used = [f"[{c}]({notebooks[c].name})" for c, keys in CHAPTER_PAPERS.items() if paper in keys and c in notebooks]
        if used:
            lines += ["Quoted in chapter " + ", ".join(used) + ".", ""]
        lines += ["| where | row | column | value | dataset | setting | note |", "|---|---|---|---|---|---|---|"]
        lines += [f"| {_cell(e.table)} | {_cell(e.row)} | {_cell(e.column)} | {_cell(e.formatted())} | "
                  f"{_cell(e.dataset)} | {_cell(e.setting)} | {_cell(e.note)} |" for e in by_paper[paper]]
        lines.append("")
    return "\n".join(lines)


def _title() -> str:
    """The course's title: the README's first heading."""
    first = (repo_root() / "README.md").read_text().splitlines()[:1]
    return first[0].lstrip("# ").strip() if first else "The course"


def _index_page(notebooks: dict[str, Path]) -> str:
    toc = "\n".join(p.stem for p in notebooks.values())
    return (f"# {_title()}\n\nThe course's chapters, executed, with their exercises as the students get them "
            "(stubs; the solutions are not published). The explorers are interactive in JupyterLab or Colab; here "
            "each shows its first picture.\n\n"
            f"```{{toctree}}\n:maxdepth: 1\n:caption: Chapters\n\n{toc}\n```\n\n"
            "```{toctree}\n:maxdepth: 1\n:caption: Reference\n\npapers\n```\n")


def _sphinx_config(title: str) -> dict:
    return {
        "project": title, "html_title": title, "author": "the course's authors", "copyright": "the course's authors",
        "extensions": ["myst_nb", "sphinx-mathjax-offline"], "html_theme": "sphinx_book_theme",
        "nb_execution_mode": "off",  # the notebooks arrive executed (see executed_notebook)
        "myst_enable_extensions": ["dollarmath", "amsmath"], "myst_heading_anchors": 3,
        # MathJax 3.2.2 from the site itself (sphinx-mathjax-offline sets mathjax_path), not from a CDN
        "html_theme_options": {"home_page_in_toc": True, "show_navbar_depth": 1, "use_download_button": True},
        "html_show_sphinx": False, "html_last_updated_fmt": None,
        "exclude_patterns": ["_build", "**.ipynb_checkpoints"],
    }


def build_site(notebooks: dict[str, Path], out: Path, *, profile: str, cache: Path, executed: Path | None = None,
               timeout: int | None = None) -> Path:
    """Build the site of ``notebooks`` ({chapter: path}, in order) into ``out`` (a temporary folder, then renamed)."""
    try:
        from sphinx.application import Sphinx

        for package in ("myst-nb", "sphinx-book-theme", "sphinx-mathjax-offline"):
            importlib.metadata.version(package)
    except (ImportError, importlib.metadata.PackageNotFoundError) as e:
        raise SystemExit(f"The site needs {getattr(e, 'name', None) or e}: install the dev extras "
                         "(pip install -e '.[dev]').") from None
    out = out.resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".site-", dir=out.parent) as tmp:
        src, html_dir = Path(tmp) / "src", Path(tmp) / "html"
        src.mkdir()
        for path in notebooks.values():
            run = executed_notebook(path, profile, cache=cache, executed=executed, timeout=timeout)
            nb = publish(json.loads(run.read_text()), path.name)
            (src / path.name).write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n")
        (src / "index.md").write_text(_index_page(notebooks))
        (src / "papers.md").write_text(papers_page(notebooks))
        app = Sphinx(str(src), None, str(html_dir), str(Path(tmp) / "doctrees"), "html",
                     confoverrides=_sphinx_config(_title()), status=sys.stdout, warning=sys.stderr, freshenv=True)
        app.build()
        if app.statuscode:
            raise RuntimeError(f"Sphinx failed (status {app.statuscode}); see the messages above.")
        (html_dir / ".nojekyll").touch()  # GitHub Pages: serve _static/ as it is
        old = out.with_name(out.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        if out.exists():
            out.rename(old)
        html_dir.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m course_lib.website", description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", default=os.environ.get("SITE_PROFILE") or "cpu",
                        help="the profile the chapters run in (default: $SITE_PROFILE, else cpu)")
    parser.add_argument("--executed", type=Path, default=None,
                        help="a folder of executed notebooks to use when current (make test writes build/executed/ci)")
    parser.add_argument("--chapters", nargs="*", default=None, help="chapter ids, e.g. 00 03b (default: all)")
    parser.add_argument("--out", type=Path, default=BUILD / "site")
    parser.add_argument("--cache", type=Path, default=None, help="default: build/site-cache/<profile>")
    parser.add_argument("--timeout", type=int, default=None, help="seconds per cell (default: none)")
    args = parser.parse_args(argv)
    if checkout_root() is None:
        parser.error(f"course_lib is installed ({Path(course_lib.__file__).parent}), without the course's notebooks: "
                     "the site is built from a checkout of the course's repository (make site there).")
    found = chapters()
    unknown = sorted(set(args.chapters or []) - set(found))
    if unknown:
        parser.error(f"no chapter {', '.join(unknown)} in notebooks/ (chapters: {' '.join(found)})")
    selected = {c: p for c, p in found.items() if args.chapters is None or c in args.chapters}
    t0 = time.perf_counter()
    out = build_site(selected, args.out, profile=args.profile, cache=args.cache or BUILD / "site-cache" / args.profile,
                     executed=args.executed, timeout=args.timeout)
    print(f"site: {out}/index.html ({time.perf_counter() - t0:.0f} s); serve it with "
          f"`python -m http.server --directory {out}`")
    return 0


if __name__ == "__main__":
    sys.exit(main())
