"""Hand a chapter's results to the instructors' report (``python -m course_lib.run``).

A notebook records what belongs in the report -- its "beside the paper" tables and its key plots --
with two calls that do nothing visible in a normal session and return what they were given::

    from course_lib import papers, report

    report.table(papers.beside_the_paper(rows, title="FPN vs C4 (COCO AP)"), name="fpn_vs_c4")  # shows as before
    report.figure(history.plot(), name="training_loss")

When ``$COURSE_RESULTS_DIR`` is set (the runner sets it to ``results/<profile>/<chapter>/``) they also write
``tables/<name>.md`` (+ ``tables/<name>.json``: the rows, for machines) and ``figures/<name>.png``, atomically;
otherwise they write nothing. ``report.checkpoint(name)`` is where a training cell keeps its ``fit`` checkpoint
under the runner (``$COURSE_RESULTS_DIR/checkpoints/<name>.pt``), so an interrupted run resumes; outside the
runner it returns ``default`` (``None`` = no checkpoint).

A table is anything with ``to_markdown()`` (``papers.BesideThePaper``, a pandas DataFrame), a list of dicts
(one per row), or a string of Markdown.

This module owns the results layout (``REPORT``, ``RUN``, ``TABLES``, ``FIGURES``, ``CHECKPOINTS``) and assembles
``results/<profile>/report.md`` from it (:func:`build_report`); ``course_lib.run`` runs the notebooks.
"""
from __future__ import annotations

import base64
import json
import os
import platform
import re
import subprocess
from datetime import datetime, timezone
from pathlib import Path

from course_lib.data.atomic import atomic_write_bytes
from course_lib.data.paths import repo_root

__all__ = ["results_dir", "table", "figure", "checkpoint", "chapters", "build_report"]

ENV = "COURSE_RESULTS_DIR"
# the results layout: results/<profile>/ holds REPORT and each <notebook>.ipynb executed; <chapter>/ holds these
REPORT, RUN, TABLES, FIGURES, CHECKPOINTS = "report.md", "run.json", "tables", "figures", "checkpoints"
NOTEBOOKS = repo_root() / "notebooks"


def results_dir() -> Path | None:
    """``$COURSE_RESULTS_DIR`` as a path, or None when the notebook runs outside the runner."""
    value = os.environ.get(ENV, "").strip()
    return Path(value).expanduser() if value else None


def strip_ansi(text: str) -> str:
    """``text`` without terminal colour codes (a traceback's, tqdm's), which are noise in a file."""
    return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text)


def _name(name: str) -> str:
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
        raise ValueError(f"report name {name!r}: use letters, digits, '_', '-', '.' (it becomes a file name).")
    return name


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, data)


def _markdown(obj) -> str:
    if isinstance(obj, str):
        return obj
    if hasattr(obj, "to_markdown"):
        try:
            return obj.to_markdown()
        except ImportError:  # pandas without `tabulate`
            return "```\n" + obj.to_string() + "\n```"
    if isinstance(obj, (list, tuple)) and obj and all(isinstance(r, dict) for r in obj):
        keys = list(dict.fromkeys(k for r in obj for k in r))
        lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
        lines += ["| " + " | ".join(_cell(r.get(k)) for k in keys) + " |" for r in obj]
        return "\n".join(lines)
    raise TypeError(f"report.table got a {type(obj).__name__}: pass an object with to_markdown() "
                    "(papers.beside_the_paper(...), a DataFrame), a list of dicts, or a Markdown string.")


def _cell(x) -> str:
    if x is None:
        return "--"
    return f"{x:.4g}" if isinstance(x, float) else str(x)


def table(obj, *, name: str):
    """Record ``obj`` as the report's table ``name``; returns ``obj`` (so the notebook still shows it)."""
    _name(name)
    root = results_dir()
    if root is not None:
        _write(root / TABLES / f"{name}.md", _markdown(obj).encode())
        rows = obj.records() if hasattr(obj, "records") else obj if isinstance(obj, (list, tuple)) else None
        if rows is not None:
            _write(root / TABLES / f"{name}.json", json.dumps(rows, default=str, indent=1).encode())
    return obj


def figure(fig, *, name: str, dpi: int = 110):
    """Record a matplotlib figure as ``figures/<name>.png``; returns ``fig``."""
    _name(name)
    root = results_dir()
    if root is not None:
        import io

        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
        _write(root / FIGURES / f"{name}.png", buf.getvalue())
    return fig


def checkpoint(name: str, default=None):
    """The ``fit`` checkpoint path of training run ``name`` under the runner, else ``default``."""
    _name(name)
    root = results_dir()
    return root / CHECKPOINTS / f"{name}.pt" if root is not None else default


# ---------------------------------------------------------------------------------------------- the report
# (assembled by ``python -m course_lib.run`` once the chapters have run)

# the papers of a chapter, for the report's list of quoted numbers when the notebook records no table
CHAPTER_PAPERS = {"00": ["coco"], "01": ["overfeat"], "02": ["fcn"], "03": ["unet"], "03b": ["rcnn", "faster_rcnn"],
                  "04": ["rcnn", "fast_rcnn"], "05": ["faster_rcnn"], "06": ["rfcn"], "07": ["fpn"],
                  "08": ["efpn", "tt100k"]}
SECTIONS = ("beside the paper", "results in this profile")  # where a notebook shows its measured results


def chapters() -> dict[str, Path]:
    """``{chapter id: notebook}`` in the course's order: ``"00"``, ``"01"``, ..., ``"03b"``, ... ."""
    found = sorted(NOTEBOOKS.glob("[0-9][0-9]*_*.ipynb"))
    return {p.name.split("_", 1)[0]: p for p in found}



def environment() -> dict:
    """Software versions and the device, for the report."""
    import numpy
    import torch
    import torchvision

    info = {"python": platform.python_version(), "torch": torch.__version__, "torchvision": torchvision.__version__,
            "numpy": numpy.__version__, "platform": platform.platform(), "cpu": platform.processor() or platform.machine(),
            "cpu_cores": os.cpu_count()}
    try:
        info["course commit"] = subprocess.run(["git", "-C", str(repo_root()), "rev-parse", "--short", "HEAD"],
                                               capture_output=True, text=True, timeout=10).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        info["course commit"] = "unknown"
    if torch.cuda.is_available():
        info["gpu"] = f"{torch.cuda.device_count()} x {torch.cuda.get_device_name(0)}"
        info["cuda"] = torch.version.cuda
    else:
        info["gpu"] = "none"
    return info


def _sections(nb) -> list[tuple[str, list]]:
    """``[(heading, cells)]`` by top-level ``## `` headings (the first entry: cells before any)."""
    out = [("", [])]
    for cell in nb.cells:
        heading = next((line[3:].strip() for line in cell.source.splitlines() if line.startswith("## ")), None) \
            if cell.cell_type == "markdown" else None
        if heading is not None:
            out.append((heading, []))
        out[-1][1].append(cell)
    return out


def _png_outputs(cells) -> list[tuple[str, bytes]]:
    found = []
    for cell in cells:
        pngs = [o["data"]["image/png"] for o in cell.get("outputs", []) if "image/png" in o.get("data", {})]
        for k, png in enumerate(pngs):
            found.append((f"{cell.get('id', 'cell')}-{k}", base64.b64decode(png)))
    return found


def _shown_tables(cells) -> list[str]:
    """What the result cells display, as Markdown (a BesideThePaper / DataFrame shows as Markdown or HTML)."""
    shown = []
    for cell in cells:
        for o in cell.get("outputs", []):
            data = o.get("data", {})
            if "text/markdown" in data:
                shown.append(data["text/markdown"])
            elif "text/html" in data:
                shown.append(data["text/html"])
            elif o.get("output_type") == "stream" and o.get("name") == "stdout" and o["text"].strip():
                shown.append("```\n" + o["text"].rstrip() + "\n```")
            elif "text/plain" in data and "image/png" not in data:
                shown.append("```\n" + data["text/plain"].rstrip() + "\n```")
    return shown


def _quoted_numbers(chapter: str, notebook_source: str) -> list[str]:
    """The papers' numbers the chapter quotes (keys found in its source, else its papers' entries)."""
    from course_lib import papers

    keys = [k for k in papers.NUMBERS if f'"{k}"' in notebook_source or f"'{k}'" in notebook_source]
    if not keys:
        wanted = CHAPTER_PAPERS.get(chapter, [])
        keys = [k for k, n in papers.NUMBERS.items() if n.paper in wanted]
    return [f"| `{k}` | {papers.number(k).formatted()} | {papers.cite(k)} |" for k in keys]


def _mib(x) -> str:
    return "--" if x is None else f"{x:,.0f} MiB"


def _secs(x) -> str:
    if x is None:
        return "--"
    return f"{x:.1f} s" if x < 120 else f"{x / 60:.1f} min" if x < 7200 else f"{x / 3600:.2f} h"


def build_report(root: Path) -> Path:
    """Assemble ``root/report.md`` from the chapters' ``run.json``, recorded tables/figures and executed
    notebooks under ``root`` (= ``results/<profile>``); returns its path."""
    import nbformat

    known = chapters()
    runs = {c: json.loads((root / c / RUN).read_text()) for c in known if (root / c / RUN).is_file()}
    env = environment()
    lines = [f"# Results: profile `{root.name}`", "",
             f"Generated {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')} by `python -m course_lib.run`. "
             "Each chapter: its measured tables beside the papers' numbers, its plots, wall time and peak memory.", "",
             "| chapter | status | data | wall time | peak RAM (kernel) | peak GPU memory | processes |",
             "|---|---|---|---|---|---|---|"]
    for c, r in runs.items():
        lines.append(f"| [{c}](#chapter-{c}) {known[c].stem} | {r['status']} | {r.get('data', 'synthetic')} | "
                     f"{_secs(r.get('wall_s'))} | {_mib(r.get('peak_rss_mib'))} | {_mib(r.get('peak_gpu_mib'))} | "
                     f"{r.get('gpus', 1)} |")
    total = sum(r.get("wall_s") or 0 for r in runs.values())
    lines += ["", f"Total wall time: {_secs(total)}.", "", "**Software and device:** " +
              ", ".join(f"{k} {v}" for k, v in env.items()), ""]
    for c, r in runs.items():
        chapter_dir = root / c
        executed = root / known[c].name
        nb = nbformat.read(executed, as_version=4) if executed.is_file() else None
        title = next((line[2:] for cell in (nb.cells if nb else []) if cell.cell_type == "markdown"
                      for line in cell.source.splitlines() if line.startswith("# ")), known[c].stem)
        title = re.sub(rf"^{re.escape(c)}\s*·\s*", "", title)
        lines += [f'<a id="chapter-{c}"></a>', "", f"## {c} · {title}", "",
                  f"{r['status']} in {_secs(r.get('wall_s'))}; peak RAM {_mib(r.get('peak_rss_mib'))}, "
                  f"peak GPU memory {_mib(r.get('peak_gpu_mib'))}; data: {r.get('data', 'synthetic')}; "
                  f"executed notebook: [{known[c].name}]({known[c].name})", ""]
        if r["status"] != "done":
            lines += [f"**Failed:** `{r.get('error')}`", ""]
        # tables: those the notebook recorded, else what its results section shows
        recorded = sorted((chapter_dir / TABLES).glob("*.md")) if (chapter_dir / TABLES).is_dir() else []
        tables = [p.read_text() for p in recorded]
        if not tables and nb is not None:
            tables = [t for heading, cells in _sections(nb) if heading.lower().lstrip("0123456789. ").startswith(SECTIONS)
                      for t in _shown_tables(cells)]
        lines += ["### Measured, beside the paper", ""]
        lines += [t for table in tables for t in (table.strip(), "")] or ["(no table recorded)", ""]
        source = "\n".join(cell.source for cell in nb.cells) if nb is not None else ""
        quoted = _quoted_numbers(c, source)
        if quoted:
            lines += ["<details><summary>The papers' numbers this chapter quotes (course_lib/papers.py)</summary>", "",
                      "| key | paper | where |", "|---|---|---|", *quoted, "", "</details>", ""]
        # plots: the recorded ones inline; every plot the notebook shows, extracted, behind a fold
        figures = chapter_dir / FIGURES
        inline = sorted(figures.glob("*.png")) if figures.is_dir() else []
        shown = _png_outputs(nb.cells) if nb is not None else []
        for name, png in shown:
            (figures / "notebook").mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(figures / "notebook" / f"{name}.png", png)
        lines += ["### Plots", ""]
        if not inline and nb is not None:  # nothing recorded: the plots of the results and training sections
            wanted = {f"{cell.get('id', 'cell')}-" for heading, cells in _sections(nb)
                      if re.search(r"beside the paper|results|train", heading, re.I) for cell in cells}
            inline = [figures / "notebook" / f"{n}.png" for n, _ in shown if any(n.startswith(w) for w in wanted)]
            inline = inline or [figures / "notebook" / f"{n}.png" for n, _ in shown[-1:]]  # else its last plot
        lines += [f"![{p.stem}]({p.relative_to(root).as_posix()})" for p in inline] or ["(no plot recorded)"]
        if shown:
            lines += ["", f"<details><summary>All {len(shown)} plots of the notebook</summary>", ""]
            lines += [f"![{n}]({c}/{FIGURES}/notebook/{n}.png)" for n, _ in shown] + ["", "</details>"]
        lines.append("")
    out = root / REPORT
    root.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out, strip_ansi("\n".join(lines)).encode())
    return out


