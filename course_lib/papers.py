"""Every number the course attributes to a paper, once, with where it stands in that paper.

A notebook never types a paper's number: it reads it from here, so a number is corrected in one place and every
"beside the paper" table follows. Each entry names the paper, the table (or section / figure), the row and the
column, the dataset and split, and the setting (backbone, variant) -- enough for a student to find it in the PDF::

    >>> from course_lib import papers
    >>> papers.value("fpn.table3.c4.ap")            # doctest: +SKIP
    >>> print(papers.cite("fpn.table3.c4.ap"))      # doctest: +SKIP
    >>> papers.beside_the_paper([("FPN, AP", 0.41, "fpn.table3.fpn.ap")], title="...")   # a table for the notebook

Keys read ``<paper>.<table>.<row>.<column>`` in lower case (e.g. ``rfcn.table3.rfcn.test_s``). Add entries under the
heading of their paper, and verify each against the paper's own text (not a review or a slide) before committing it.
"""
from __future__ import annotations

import difflib
import html
from dataclasses import dataclass

__all__ = ["PaperNumber", "PAPERS", "NUMBERS", "number", "value", "cite", "BesideThePaper", "beside_the_paper"]


@dataclass(frozen=True)
class PaperNumber:
    """One quoted number (or a non-numeric entry such as R-FCN's "fail") and where it stands in its paper."""

    value: float | int | str
    paper: str  # a key of PAPERS
    table: str  # "Table 3", "Sec. 4.1", "Fig. 6" ...
    row: str  # the row (or the sentence) that carries it
    column: str  # "AP", "mAP (%)", "s/img" ...
    dataset: str  # "COCO minival", "PASCAL VOC 2007 test" ...
    setting: str = ""  # backbone / variant: "ResNet-50, C4 baseline"
    unit: str = ""  # "%", "s", "MB" ... ("" when the column says it)
    note: str = ""  # anything a reader needs to compare fairly (GPU model, test-time tricks ...)

    def cite(self) -> str:
        where = f"{self.table}, {self.row}" if self.row else self.table
        setting = f", {self.setting}" if self.setting else ""
        return f"{PAPERS[self.paper]} -- {where}, {self.column} ({self.dataset}{setting})"

    def formatted(self) -> str:
        if isinstance(self.value, str):
            return self.value
        return f"{self.value:g}{self.unit}"


# Papers by short key: authors, title, venue (the version the course quotes).
PAPERS: dict[str, str] = {}

# The numbers, grouped by paper (keep each group under a comment naming the paper).
NUMBERS: dict[str, PaperNumber] = {}


def number(key: str) -> PaperNumber:
    """The registry entry ``key``; an unknown key is an error that suggests the closest ones."""
    try:
        return NUMBERS[key]
    except KeyError:
        close = difflib.get_close_matches(key, NUMBERS, n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
        raise KeyError(f"No paper number {key!r} in course_lib/papers.py.{hint}") from None


def value(key: str) -> float | int | str:
    """The number itself (e.g. 36.2), as the paper prints it."""
    return number(key).value


def cite(key: str) -> str:
    """``"<paper> -- <table>, <row>, <column> (<dataset>, <setting>)"``: where to find the number."""
    return number(key).cite()


@dataclass
class BesideThePaper:
    """What we measured beside what the paper reports, one row per quantity; shows as a table in a notebook.

    ``rows`` holds ``(label, ours, key)`` with ``ours`` a number (or None when not measured in this profile) and
    ``key`` a papers.NUMBERS key (or None when the paper has no such number).
    """

    title: str
    rows: list[tuple[str, float | int | str | None, str | None]]
    ours_label: str = "ours"
    note: str = ""

    def __post_init__(self):
        for _, _, key in self.rows:
            if key is not None:
                number(key)  # fail now, with a suggestion, not when the table is shown

    def records(self) -> list[dict]:
        """One dict per row: label, ours, paper (value), source (citation)."""
        out = []
        for label, ours, key in self.rows:
            entry = number(key) if key is not None else None
            out.append({"label": label, "ours": ours, "paper": None if entry is None else entry.value,
                        "paper_text": "--" if entry is None else entry.formatted(),
                        "source": "--" if entry is None else f"{entry.table}, {entry.row}".rstrip(", ")})
        return out

    @staticmethod
    def _fmt(x) -> str:
        if x is None:
            return "--"
        if isinstance(x, float):
            return f"{x:.3g}"
        return str(x)

    def to_markdown(self) -> str:
        lines = [f"**{self.title}**", "", f"| | {self.ours_label} | paper | where in the paper |", "|---|---|---|---|"]
        for r in self.records():
            lines.append(f"| {r['label']} | {self._fmt(r['ours'])} | {r['paper_text']} | {r['source']} |")
        papers_used = sorted({number(k).paper for _, _, k in self.rows if k is not None})
        lines += ["", "Sources: " + "; ".join(PAPERS[p] for p in papers_used)] if papers_used else []
        if self.note:
            lines += ["", self.note]
        return "\n".join(lines)

    def _repr_markdown_(self) -> str:
        return self.to_markdown()

    def _repr_html_(self) -> str:
        e = html.escape
        head = (f"<b>{e(self.title)}</b><table><tr><th></th><th>{e(self.ours_label)}</th><th>paper</th>"
                "<th>where in the paper</th></tr>")
        body = "".join(f"<tr><td>{e(r['label'])}</td><td>{e(self._fmt(r['ours']))}</td><td>{e(r['paper_text'])}</td>"
                       f"<td>{e(r['source'])}</td></tr>" for r in self.records())
        papers_used = sorted({number(k).paper for _, _, k in self.rows if k is not None})
        foot = ("<p><small>Sources: " + "; ".join(e(PAPERS[p]) for p in papers_used) + "</small></p>") if papers_used else ""
        note = f"<p><small>{e(self.note)}</small></p>" if self.note else ""
        return head + body + "</table>" + foot + note

    def __repr__(self) -> str:
        return self.to_markdown()


def beside_the_paper(rows, *, title: str, ours_label: str = "ours", note: str = "") -> BesideThePaper:
    """A "beside the paper" table: ``rows`` = ``[(label, ours, key), ...]`` (see :class:`BesideThePaper`)."""
    return BesideThePaper(title=title, rows=[tuple(r) for r in rows], ours_label=ours_label, note=note)
