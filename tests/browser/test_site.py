"""The course's website (``course_lib.website``, ``make site``) built, served on 127.0.0.1 and read in Chromium.

The chapters come from ``build/executed/ci`` when ``make test`` left current executed copies of all of them there
(``make test-site``, with ``COURSE_SITE_ALL_CHAPTERS=1``, requires it); otherwise two cheap chapters, 00 and 03b (three explorers), are executed in the ci profile (cached in
``build/site-cache/ci``). Every page reachable from the home page loads without a console error, every ``<img>``
decoded, every internal link answers 200 and its anchor exists, the navigation lists the chapters in order, each
explorer is a picture with its note, and no solution's source is anywhere in the site.
"""
from __future__ import annotations

import ast
import functools
import html
import http.server
import json
import os
import re
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from course_lib.report import chapters
from course_lib.website import BUILD, build_site, usable

ROOT = Path(__file__).resolve().parents[2]
CHEAP = ("00", "03b")
TEXT_FILES = (".html", ".js", ".txt", ".ipynb", ".md", ".json", ".inv")


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """``(folder, {chapter: notebook})``: the site built from the executed chapters (see the module's docstring)."""
    try:
        import myst_nb  # noqa: F401
    except ImportError:
        message = "the site needs the dev extras (Sphinx, MyST-NB): pip install -e '.[dev]'"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{message}; under CI=true the site test must run", pytrace=False)
        pytest.skip(message)
    found, executed = chapters(), BUILD / "executed" / "ci"
    stale = [p.name for p in found.values() if not usable(executed / p.name, p)]
    if not stale:
        selected = found
    elif os.environ.get("COURSE_SITE_ALL_CHAPTERS") == "1":  # make test-site: the whole course, as make test ran it
        pytest.fail(f"make test-site builds every chapter from make test-notebooks' executed copies in {executed}; "
                    f"missing, out of date or without their widgets' state: {', '.join(stale)}. Run make "
                    "test-notebooks first.", pytrace=False)
    else:
        selected, executed = {c: found[c] for c in CHEAP}, None
    out = tmp_path_factory.mktemp("site") / "site"
    t0 = time.perf_counter()
    build_site(selected, out, profile="ci", cache=BUILD / "site-cache" / "ci", executed=executed, timeout=600)
    print(f"site of {len(selected)} chapters built in {time.perf_counter() - t0:.0f} s")
    return out, selected


@pytest.fixture(scope="module")
def server(site):
    """The site served by Python's http.server on 127.0.0.1 (a free port), in a thread."""
    handler = functools.partial(Quiet, directory=str(site[0]))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_port}/"
    httpd.shutdown()
    httpd.server_close()


class Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as e:
        return e.code, ""


def _ids(page_html: str) -> set[str]:
    return set(re.findall(r'\bid="([^"]+)"', page_html)) | set(re.findall(r'\bname="([^"]+)"', page_html))


def test_navigation_lists_the_chapters_in_order(site, server, chromium):
    page = chromium.new_page()
    page.goto(server + "index.html")
    hrefs = page.eval_on_selector_all("nav.bd-docs-nav ul.bd-sidenav:not(.bd-sidenav__home-link) a.reference",
                                      "links => links.map(a => a.getAttribute('href'))")
    page.close()
    expected = [f"{p.stem}.html" for p in site[1].values()]
    assert [h for h in hrefs if h != "papers.html"] == expected, f"the navigation lists {hrefs}, not {expected}"
    assert "papers.html" in hrefs, "the papers' numbers page is missing from the navigation"


def test_every_page_loads_clean_with_its_pictures_and_links(site, server, chromium):
    """Every page and what it links to: console errors, undecoded images, untypeset math, dead links or anchors,
    explorers' pictures."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    t0 = time.perf_counter()
    problems, seen, ids = [], set(), {}
    queue = ["index.html"] + sorted(p.name for p in site[0].glob("*.html"))  # reachable or not, every page
    page = chromium.new_page()
    errors: list[str] = []
    page.on("console", lambda m: errors.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(f"page error: {e}"))
    page.on("requestfailed", lambda r: errors.append(f"request failed: {r.url}"))
    while queue:
        path = queue.pop(0)
        if path in seen:
            continue
        seen.add(path)
        errors.clear()
        response = page.goto(server + path, wait_until="load")
        if response is None or response.status != 200:
            problems.append(f"{path}: HTTP {response and response.status}")
            continue
        try:  # MathJax typesets after the load event
            page.wait_for_function("() => !document.querySelector('span.math, div.math') || "
                                   "document.querySelector('mjx-container')", timeout=20_000)
        except PlaywrightTimeout:
            problems.append(f"{path}: its math was not typeset (MathJax) within 20 s")
        images = page.eval_on_selector_all("img", "imgs => imgs.map(i => [i.getAttribute('src'), i.complete, "
                                                  "i.naturalWidth])")
        problems += [f"{path}: image {src} did not decode" for src, done, width in images if not (done and width > 0)]
        problems += [f"{path}: {e}" for e in errors]
        links = page.eval_on_selector_all("a[href]", "links => links.map(a => a.href)")
        for link in links:
            if not link.startswith(server):
                continue
            target, _, anchor = link[len(server):].partition("#")
            target = urllib.parse.unquote(target) or "index.html"
            if target not in ids:
                status, body = _get(server + target)
                if status != 200:
                    problems.append(f"{path}: link to {target}: HTTP {status}")
                    ids[target] = set()
                    continue
                ids[target] = _ids(body)
            if anchor and urllib.parse.unquote(anchor) not in ids[target]:
                problems.append(f"{path}: link to {target}#{anchor}: no such anchor")
            if target.endswith(".html") and target not in seen:
                queue.append(target)
    notes = {}
    for chapter, notebook in site[1].items():
        page.goto(server + f"{notebook.stem}.html")
        notes[chapter] = page.eval_on_selector_all(
            ".explorer-note", "notes => notes.map(n => { const img = n.closest('.cell_output')?.querySelector('img');"
                              " return !!img && img.complete && img.naturalWidth > 0; })")
        code = ["".join(c["source"]) for c in json.loads(notebook.read_text())["cells"] if c["cell_type"] == "code"]
        explorers = sum(len(re.findall(r"^[A-Za-z]*Explorer\(", c, re.M)) for c in code)
        if len(notes[chapter]) != explorers or not all(notes[chapter]):
            problems.append(f"{notebook.name}: {explorers} explorers, pictures with notes: {notes[chapter]}")
    page.close()
    print(f"{len(seen)} pages, {len(ids)} link targets checked in {time.perf_counter() - t0:.1f} s")
    assert {f"{p.stem}.html" for p in site[1].values()} | {"papers.html"} <= seen, sorted(seen)
    assert not problems, "\n".join(problems[:40])


def _normal(text: str) -> str:
    return " ".join(text.split())


def solution_texts() -> dict[str, list[str]]:
    """Per solution (``solutions/chNN.py::name``): its whole source and each line of it (20 characters or more)
    that the committed notebooks do not hold themselves (a stub's docstring may repeat the solution's)."""
    notebook_lines = set()
    for path in (ROOT / "notebooks").glob("*.ipynb"):
        for cell in json.loads(path.read_text())["cells"]:
            notebook_lines |= {line.strip() for line in "".join(cell["source"]).splitlines()}
    texts = {}
    for path in sorted((ROOT / "solutions").glob("ch*.py")):
        source = path.read_text()
        for node in ast.parse(source).body:
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                segment = ast.get_source_segment(source, node)
                lines = [line.strip() for line in segment.splitlines()[1:]]
                texts[f"{path.name}::{node.name}"] = [_normal(segment)] + [
                    line for line in lines if len(line) >= 20 and line not in notebook_lines]
    return texts


def solution_leaks(folder: Path) -> list[str]:
    """``"<file>: <solution>: <text>"`` for every solution text found in a text file of ``folder`` (tags dropped)."""
    texts = solution_texts()
    leaks = []
    for path in sorted(p for p in folder.rglob("*") if p.suffix in TEXT_FILES and p.is_file()):
        raw = path.read_text(errors="replace")
        content = _normal(html.unescape(re.sub(r"<[^>]+>", "", raw))) if path.suffix == ".html" else raw
        if path.suffix == ".ipynb":
            content = _normal("\n".join("".join(c["source"]) for c in json.loads(raw)["cells"]))
        for name, needles in texts.items():
            leaks += [f"{path.relative_to(folder)}: {name}: {n[:80]}" for n in needles if _normal(n) in content]
    return leaks


def test_no_solution_source_in_the_site(site):
    texts = solution_texts()
    assert len(texts) >= 10 and all(len(v) >= 2 for v in texts.values()), "too few solution texts to look for"
    leaks = solution_leaks(site[0])
    assert not leaks, "solution source published:\n" + "\n".join(leaks[:20])


def test_the_solution_grep_finds_a_published_solution(tmp_path):
    """The check above can fail: a page holding one solution's function (as highlighted HTML) is caught."""
    source = (ROOT / "solutions" / "ch03b.py").read_text()
    function = next(n for n in ast.parse(source).body if isinstance(n, ast.FunctionDef))
    code = ast.get_source_segment(source, function)
    page = tmp_path / "leak.html"
    page.write_text("<pre>" + "".join(f"<span>{html.escape(line)}</span>\n" for line in code.splitlines()) + "</pre>")
    assert any(f"ch03b.py::{function.name}" in leak for leak in solution_leaks(tmp_path))
