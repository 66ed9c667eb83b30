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
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

from course_lib.data.atomic import atomic_write_bytes

__all__ = ["results_dir", "table", "figure", "checkpoint"]

ENV = "COURSE_RESULTS_DIR"


def results_dir() -> Path | None:
    """``$COURSE_RESULTS_DIR`` as a path, or None when the notebook runs outside the runner."""
    value = os.environ.get(ENV, "").strip()
    return Path(value).expanduser() if value else None


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
        _write(root / "tables" / f"{name}.md", _markdown(obj).encode())
        rows = obj.records() if hasattr(obj, "records") else obj if isinstance(obj, (list, tuple)) else None
        if rows is not None:
            _write(root / "tables" / f"{name}.json", json.dumps(rows, default=str, indent=1).encode())
    return obj


def figure(fig, *, name: str, dpi: int = 110):
    """Record a matplotlib figure as ``figures/<name>.png``; returns ``fig``."""
    _name(name)
    root = results_dir()
    if root is not None:
        import io

        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
        _write(root / "figures" / f"{name}.png", buf.getvalue())
    return fig


def checkpoint(name: str, default=None):
    """The ``fit`` checkpoint path of training run ``name`` under the runner, else ``default``."""
    _name(name)
    root = results_dir()
    return root / "checkpoints" / f"{name}.pt" if root is not None else default
