"""Time every notebook end to end in a profile: ``make timings PROFILE=cpu`` (or ``python tests/benchmarks/timings.py``).

Each notebook is executed top to bottom by nbclient in a fresh kernel, as a student's Run All would, with
``COURSE_PROFILE`` set (and ``COURSE_SOLUTIONS=1``, so the exercises' checkers run the reference solutions, as in
``make test``). The seconds go to ``course_lib/timings.json`` (which each notebook's first code cell reads through
``course_lib.timings.expect``) and into the table of the README between the ``timings`` markers, so the README shows
notebook x profile x seconds. The slowest cells of each notebook are printed: they are where a profile's sizes pay.

Budgets (the course's promise): every notebook under 60 s in ``ci`` and under 10 minutes in ``cpu`` on 2 cores; a
notebook over its budget is marked and the script exits with status 1. The datasets of the profile must exist
(``make timings`` builds them first).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from course_lib.profiles import get_profile, profile_names  # noqa: E402
from course_lib.timings import TIMINGS_FILE, format_seconds, load_timings  # noqa: E402

BUDGET_SECONDS = {"ci": 60, "cpu": 600}
README_START, README_END = "<!-- timings:start -->", "<!-- timings:end -->"


def machine() -> str:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    try:
        import torch

        gpu = f", {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ", no GPU"
    except Exception:  # noqa: BLE001 -- the timings do not need torch
        gpu = ""
    threads = os.environ.get("OMP_NUM_THREADS")
    return f"{cores} CPU cores ({platform.machine()}){gpu}" + (f", OMP_NUM_THREADS={threads}" if threads else "")


def run_notebook(path: Path, profile: str, timeout: int,
                 executed: Path | None = None) -> tuple[float, list[tuple[float, str]]]:
    """Execute ``path`` in a fresh kernel with ``COURSE_PROFILE=profile``; (seconds, [(seconds, cell id)] per cell).
    With ``executed`` (a folder), the notebook with its outputs is written there too, also when a cell fails."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    env = {"COURSE_PROFILE": profile, "COURSE_SOLUTIONS": "1"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # the kernel inherits this process's environment
    try:
        client = NotebookClient(nb, timeout=timeout, kernel_name="python3",
                                resources={"metadata": {"path": str(path.parent)}})
        start = time.perf_counter()
        client.execute(stderr=subprocess.DEVNULL)  # the kernel's own log lines; cell errors still raise
        total = time.perf_counter() - start
    finally:
        if executed is not None:
            executed.mkdir(parents=True, exist_ok=True)
            nbformat.write(nb, executed / path.name)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    cells = []
    for index, cell in enumerate(nb.cells):
        timing = cell.get("metadata", {}).get("execution", {})
        if cell.cell_type == "code" and "iopub.execute_input" in timing and "shell.execute_reply" in timing:
            began = datetime.datetime.fromisoformat(timing["iopub.execute_input"].replace("Z", "+00:00"))
            ended = datetime.datetime.fromisoformat(timing["shell.execute_reply"].replace("Z", "+00:00"))
            cells.append(((ended - began).total_seconds(), f"cell {index} ({cell.get('id', '?')})"))
    return total, sorted(cells, reverse=True)


def readme_table(timings: dict, notebooks: list[str]) -> str:
    profiles = [p for p in profile_names() if p in timings["profiles"]] or ["ci"]
    lines = [README_START,
             "| notebook | " + " | ".join(f"`{p}`" for p in profiles) + " |",
             "|---|" + "---:|" * len(profiles)]
    for name in notebooks:
        row = [timings["profiles"].get(p, {}).get("notebooks", {}).get(name) for p in profiles]
        lines.append(f"| `{name}` | " + " | ".join(format_seconds(s) if s is not None else "not measured" for s in row) + " |")
    for p in profiles:
        entry = timings["profiles"][p] if p in timings["profiles"] else {}
        if entry:
            total = sum(entry["notebooks"].values())
            dates = {name: entry.get("dates", {}).get(name, entry["measured"]) for name in entry["notebooks"]}
            when = sorted(set(dates.values()))
            measured = when[0] if len(when) == 1 else "; ".join(
                f"{day}: {', '.join(f'`{n}`' for n in sorted(dates) if dates[n] == day)}" for day in when)
            lines.append(f"\n`{p}`: measured {measured} on {entry['machine']}; all measured notebooks together "
                         f"{format_seconds(total)}.")
    missing = [p for p in profile_names() if p not in timings["profiles"]]
    if missing:
        lines.append(f"\nNot measured yet: {', '.join(f'`{p}`' for p in missing)} "
                     f"(`make timings PROFILE={missing[0]}` measures a profile and rewrites this table).")
    lines.append(README_END)
    return "\n".join(lines)


def update_readme(readme: Path, table: str) -> None:
    text = readme.read_text()
    if README_START not in text or README_END not in text:
        raise SystemExit(f"{readme} has no {README_START} ... {README_END} markers to put the table between")
    head, rest = text.split(README_START, 1)
    tail = rest.split(README_END, 1)[1]
    tmp = readme.with_suffix(".tmp")
    tmp.write_text(head + table + tail)
    tmp.replace(readme)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", default=None, choices=profile_names(),
                        help="default: the one in effect (COURSE_PROFILE, else gpu with CUDA, else cpu)")
    parser.add_argument("--notebooks", nargs="*", default=None,
                        help="notebook names or paths (default: every notebooks/*.ipynb)")
    parser.add_argument("--timeout", type=int, default=3600, help="seconds a single cell may take (default 3600)")
    parser.add_argument("--timings-file", type=Path, default=TIMINGS_FILE)
    parser.add_argument("--readme", type=Path, default=ROOT / "README.md", help="README whose table is rewritten")
    parser.add_argument("--no-write", action="store_true", help="only print the table")
    parser.add_argument("--executed", type=Path, default=None,
                        help="also write each executed notebook, with its outputs, into this folder")
    args = parser.parse_args(argv)
    args.profile = args.profile or get_profile().name

    all_notebooks = sorted((ROOT / "notebooks").glob("*.ipynb"))
    if args.notebooks:
        paths = []
        for name in args.notebooks:  # a path, a name ("05_faster_rcnn") or its number ("05")
            found = [Path(name)] if Path(name).suffix == ".ipynb" else sorted(
                {*(ROOT / "notebooks").glob(f"{name}.ipynb"), *(ROOT / "notebooks").glob(f"{name}_*.ipynb")})
            paths += found or [Path(name)]
    else:
        paths = all_notebooks
    for p in paths:
        if not p.is_file():
            raise SystemExit(f"no notebook {p}")

    timings = load_timings(args.timings_file)
    entry = timings["profiles"].setdefault(args.profile, {"notebooks": {}})
    budget = BUDGET_SECONDS.get(args.profile)
    failed, over = [], []
    print(f"profile {args.profile} on {machine()}; budget per notebook: "
          f"{format_seconds(budget) if budget else 'none'}", flush=True)
    for path in paths:
        print(f"{path.stem} ...", end=" ", flush=True)
        try:
            seconds, cells = run_notebook(path, args.profile, args.timeout, args.executed)
        except Exception as exc:  # noqa: BLE001 -- report every notebook, then fail
            print(f"FAILED ({type(exc).__name__}: {str(exc).strip().splitlines()[-1] if str(exc).strip() else ''})")
            failed.append(path.stem)
            continue
        entry["notebooks"][path.stem] = round(seconds, 1)
        flag = "  OVER BUDGET" if budget and seconds > budget else ""
        if flag:
            over.append(path.stem)
        slowest = ", ".join(f"{c} {format_seconds(s)}" for s, c in cells[:3])
        print(f"{format_seconds(seconds)}{flag}   slowest: {slowest}", flush=True)
    today = datetime.date.today().isoformat()
    dates = entry.setdefault("dates", {})  # per notebook: a partial run (--notebooks) re-dates only what it ran
    for name in entry["notebooks"]:
        dates.setdefault(name, entry.get("measured", today))
    for path in paths:
        if path.stem in entry["notebooks"] and path.stem not in failed:
            dates[path.stem] = today
    entry["machine"] = machine()
    entry["measured"] = today
    timings["profiles"] = {p: timings["profiles"][p] for p in profile_names() if p in timings["profiles"]}
    table = readme_table(timings, [p.stem for p in all_notebooks])
    print("\n" + table)
    if not args.no_write and entry["notebooks"]:
        tmp = args.timings_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(timings, indent=2, sort_keys=True) + "\n")
        tmp.replace(args.timings_file)
        update_readme(args.readme, table)
        print(f"\nwrote {args.timings_file} and the table in {args.readme}")
    if failed:
        print(f"failed: {', '.join(failed)}")
    if over:
        print(f"over the {args.profile} budget of {format_seconds(budget)}: {', '.join(over)}")
    return 1 if failed or over else 0


if __name__ == "__main__":
    sys.exit(main())
