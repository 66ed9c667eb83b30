"""The instructors' command: run the chapters' notebooks headless and write a results report.

    python -m course_lib.run --profile gpu                          # every chapter, in order
    python -m course_lib.run --profile gpu --chapters 05 07         # some chapters
    python -m course_lib.run --profile gpu --data voc               # PASCAL VOC instead of the synthetic sets
    python -m course_lib.run --profile gpu --chapters 07 --gpus 4   # training cells on 4 GPUs (torchrun)
    make instructor PROFILE=gpu CHAPTERS="05 07" DATA=voc GPUS=4    # the same through make

Each notebook runs in its own Jupyter kernel (nbclient), in the chapters' order, with the profile in
``$COURSE_PROFILE``, the data choice in ``$COURSE_DATA`` (read by ``course_lib.data.dataset_dir``) and
``$COURSE_RESULTS_DIR`` = ``results/<profile>/<chapter>/``, where ``course_lib.report`` puts the chapter's
tables, figures and training checkpoints, and ``$COURSE_SOLUTIONS=1`` (unless set otherwise): the exercise cells
check the reference solutions in place of the students' stubs. Written under ``results/<profile>/`` (never over the committed
notebooks; each file atomically):

* ``<notebook>.ipynb`` -- the executed notebook, outputs included;
* ``<chapter>/run.json`` -- status, wall time, peak memory (process RSS, GPU), device; a chapter with a
  finished ``run.json`` is skipped on the next call (``--force`` runs it again from scratch);
* ``<chapter>/figures/*.png`` -- the plots (those the notebook recorded, and every plot it shows);
* ``report.md`` -- per chapter its measured tables beside the papers' numbers (``course_lib/papers.py``), its
  plots, time and memory; the software versions and the device.

**Resuming.** Interrupt it at any time (Ctrl-C, a lost machine) and run the same command again: finished
chapters are skipped, and the interrupted one runs again from its first cell, its training cells resuming from
their checkpoints (``fit(..., checkpoint_path=report.checkpoint(name))``).

**Several GPUs.** With ``--gpus N`` > 1 each chapter runs under ``torchrun --standalone --nproc_per_node N``:
N kernels execute the notebook side by side and ``engine.fit`` trains with DistributedDataParallel (one GPU per
process, ``batch_size`` per process); rank 0 writes the results.

**Real data.** ``--data voc|coco|tt100k`` reads the datasets that ``data_scripts/prepare_*.py`` prepared in place
of the synthetic ones (see ``course_lib.data.paths``); ``--data papers`` gives each chapter its paper's dataset
(VOC for chapters 1-6, COCO for 7, TT100K for 8).
"""
from __future__ import annotations

import argparse
import base64
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from course_lib.data.atomic import atomic_write_bytes
from course_lib.data.paths import DATA_CHOICES, repo_root
from course_lib.profiles import profile_names

__all__ = ["chapters", "run", "execute_notebook", "build_report", "main"]

NOTEBOOKS = repo_root() / "notebooks"
# --data papers: the dataset each chapter's paper reports on (a chapter not listed keeps the synthetic sets)
PAPERS_DATA = {"01": "voc", "02": "voc", "03": "voc", "04": "voc", "05": "voc", "06": "voc", "07": "coco",
               "08": "tt100k"}
# the papers of a chapter, for the report's list of quoted numbers when the notebook records no table
CHAPTER_PAPERS = {"00": ["coco"], "01": ["overfeat"], "02": ["fcn"], "03": ["unet"], "03b": ["rcnn", "faster_rcnn"],
                  "04": ["rcnn", "fast_rcnn"], "05": ["faster_rcnn"], "06": ["rfcn"], "07": ["fpn"],
                  "08": ["efpn", "tt100k"]}
SECTIONS = ("beside the paper", "results in this profile")  # where a notebook shows its measured results
METRICS_CODE = """\
import json as _json, resource as _resource, sys as _sys
_m = {"peak_rss_mib": _resource.getrusage(_resource.RUSAGE_SELF).ru_maxrss / 1024}
if "torch" in _sys.modules and _sys.modules["torch"].cuda.is_available():
    _torch = _sys.modules["torch"]
    _m.update(peak_gpu_mib=_torch.cuda.max_memory_allocated() / 2**20, gpu=_torch.cuda.get_device_name())
print("COURSE_RUN_METRICS " + _json.dumps(_m))
"""


def chapters() -> dict[str, Path]:
    """``{chapter id: notebook}`` in the course's order: ``"00"``, ``"01"``, ..., ``"03b"``, ... ."""
    found = sorted(NOTEBOOKS.glob("[0-9][0-9]*_*.ipynb"))
    return {p.name.split("_", 1)[0]: p for p in found}


def _write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, (json.dumps(obj, indent=1, default=str) + "\n").encode())


# ---------------------------------------------------------------------------------------------- executing


def execute_notebook(path: Path, out: Path, env: dict, *, timeout: int | None = None, progress: bool = True) -> dict:
    """Execute notebook ``path`` in a fresh kernel with ``env`` added to the environment, write the executed
    notebook to ``out`` (atomically; also when a cell fails) and return ``{"status", "wall_s", metrics...}``."""
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError
    from tqdm.auto import tqdm

    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3", allow_errors=False)
    code = [i for i, c in enumerate(nb.cells) if c.cell_type == "code"]
    bar = tqdm(total=len(code), desc=path.stem, unit="cell", disable=not progress, leave=False)
    result = {"status": "failed", "error": None}
    t0 = time.perf_counter()
    try:
        client.reset_execution_trackers()
        with client.setup_kernel(env={**os.environ, **env}, cwd=str(path.parent)):
            info = client.wait_for_reply(client.kc.kernel_info())
            nb.metadata["language_info"] = info["content"]["language_info"]
            for index, cell in enumerate(nb.cells):
                if cell.cell_type == "markdown" and cell.source.startswith("## "):
                    bar.set_postfix_str(cell.source.splitlines()[0][3:43], refresh=False)
                if cell.cell_type != "code":
                    continue
                client.execute_cell(cell, index, execution_count=client.code_cells_executed + 1)
                bar.update(1)
            result["wall_s"] = time.perf_counter() - t0
            probe = nbformat.v4.new_code_cell(METRICS_CODE)
            nb.cells.append(probe)  # run in the same kernel, then taken out again
            try:
                client.execute_cell(probe, len(nb.cells) - 1, store_history=False)
            finally:
                nb.cells.pop()
            for output in probe.outputs:
                for line in output.get("text", "").splitlines():
                    if line.startswith("COURSE_RUN_METRICS "):
                        result.update(json.loads(line.split(" ", 1)[1]))
            result["status"] = "done"
    except CellExecutionError as e:
        result["error"] = str(e).strip().splitlines()[-1][:500] if str(e).strip() else type(e).__name__
    finally:
        bar.close()
        result.setdefault("wall_s", time.perf_counter() - t0)
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(out, nbformat.writes(nb).encode())
    return result


def _run_chapter(chapter: str, notebook: Path, out_dir: Path, env: dict, gpus: int, timeout, progress) -> dict:
    executed = out_dir.parent / notebook.name
    if gpus <= 1:
        return execute_notebook(notebook, executed, env, timeout=timeout, progress=progress)
    # N kernels under torchrun; rank 0 keeps its executed notebook and metrics
    metrics = out_dir / "worker.json"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(gpus),
           "-m", "course_lib.run", "--_worker", str(notebook), str(executed), str(metrics)]
    if timeout:
        cmd += ["--timeout", str(timeout)]
    proc = subprocess.run(cmd, env={**os.environ, **env})
    result = json.loads(metrics.read_text()) if metrics.is_file() else {"status": "failed", "wall_s": None}
    metrics.unlink(missing_ok=True)
    if proc.returncode != 0:
        result.update(status="failed", error=result.get("error") or f"torchrun exited with {proc.returncode}")
    return result


def _worker(notebook: str, executed: str, metrics: str, timeout) -> int:
    """One torchrun process: execute the notebook; rank 0 writes the results."""
    rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    out = Path(executed) if rank == 0 else Path(executed).with_suffix(f".rank{rank}.ipynb")
    # each kernel sees its own GPU only, so that every cell (not only fit) of rank r runs on GPU r
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if os.environ.get("CUDA_VISIBLE_DEVICES") else None
    env = {"CUDA_VISIBLE_DEVICES": visible[local] if visible and local < len(visible) else str(local)}
    result = execute_notebook(Path(notebook), out, env, timeout=timeout, progress=rank == 0)
    if rank == 0:
        _write_json(Path(metrics), {**result, "processes": int(os.environ.get("WORLD_SIZE", "1"))})
    else:
        out.unlink(missing_ok=True)
    return 0 if result["status"] == "done" else 1


def run(profile: str, chapter_ids: list[str] | None = None, *, data: str = "synthetic", gpus: int = 1,
        force: bool = False, results: Path | None = None, timeout: int | None = None, progress: bool = True) -> Path:
    """Run the chapters (see the module docstring); returns the report's path."""
    from tqdm.auto import tqdm

    if profile not in profile_names():
        raise ValueError(f"Unknown profile {profile!r}. Valid: {', '.join(profile_names())}.")
    if data not in (*DATA_CHOICES, "papers"):
        raise ValueError(f"--data {data!r}: choose one of {', '.join((*DATA_CHOICES, 'papers'))}.")
    if not isinstance(gpus, int) or gpus < 1:
        raise ValueError(f"--gpus {gpus!r}: must be an integer >= 1.")
    known = chapters()
    chosen = list(known) if not chapter_ids else [c.strip() for c in chapter_ids]
    unknown = [c for c in chosen if c not in known]
    if unknown:
        raise ValueError(f"Unknown chapter(s) {', '.join(unknown)}. Chapters: {', '.join(known)}.")
    chosen = [c for c in known if c in chosen]  # the course's order
    root = Path(results if results is not None else repo_root() / "results").resolve() / profile
    if NOTEBOOKS.resolve() in (root, *root.parents):
        raise ValueError(f"Results dir {root} is inside {NOTEBOOKS}: the committed notebooks are never overwritten.")

    outer = tqdm(chosen, desc=f"chapters ({profile})", unit="chapter", disable=not progress)
    for chapter in outer:
        out_dir = root / chapter
        status = out_dir / "run.json"
        if status.is_file() and not force and json.loads(status.read_text()).get("status") == "done":
            outer.write(f"{chapter}: done before (results/{profile}/{chapter}/run.json) -- skipped; --force runs it again")
            continue
        if force and out_dir.exists():
            shutil.rmtree(out_dir)
        chapter_data = PAPERS_DATA.get(chapter, "synthetic") if data == "papers" else data
        env = {"COURSE_PROFILE": profile, "COURSE_DATA": chapter_data, "COURSE_RESULTS_DIR": str(out_dir),
               # the exercises' stubs are the students' to fill: the reference solutions stand in for them
               "COURSE_SOLUTIONS": os.environ.get("COURSE_SOLUTIONS", "1")}
        outer.set_postfix_str(known[chapter].stem)
        started = datetime.now(timezone.utc).isoformat(timespec="seconds")
        result = _run_chapter(chapter, known[chapter], out_dir, env, gpus, timeout, progress)
        _write_json(status, {"chapter": chapter, "notebook": known[chapter].name, "profile": profile,
                             "data": chapter_data, "gpus": gpus, "started": started, **result})
        if result["status"] != "done":
            outer.write(f"{chapter}: FAILED after {result['wall_s']:.0f} s -- {result.get('error')}\n"
                        f"   the executed notebook up to the error: {root / known[chapter].name}")
    report = build_report(root)
    if progress:
        print(f"report: {report}")
    return report


# ---------------------------------------------------------------------------------------------- the report


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
    runs = {c: json.loads((root / c / "run.json").read_text()) for c in known if (root / c / "run.json").is_file()}
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
        recorded = sorted((chapter_dir / "tables").glob("*.md")) if (chapter_dir / "tables").is_dir() else []
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
        figures = chapter_dir / "figures"
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
            lines += [f"![{n}]({c}/figures/notebook/{n}.png)" for n, _ in shown] + ["", "</details>"]
        lines.append("")
    out = root / "report.md"
    root.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out, "\n".join(lines).encode())
    return out


# ---------------------------------------------------------------------------------------------- command line


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m course_lib.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", choices=profile_names(), default=None,
                        help="sizes and schedules (course_lib/profiles.py); default: $COURSE_PROFILE, else gpu/cpu")
    parser.add_argument("--chapters", nargs="+", metavar="ID", help="chapter ids, e.g. 02 05 07 (default: all)")
    parser.add_argument("--data", default="synthetic", help="synthetic (default), voc, coco, tt100k, or papers")
    parser.add_argument("--gpus", type=int, default=1, help="processes per chapter; > 1 runs under torchrun")
    parser.add_argument("--force", action="store_true", help="run finished chapters again (their results are removed)")
    parser.add_argument("--results", type=Path, default=None, help="results directory (default: <repo>/results)")
    parser.add_argument("--timeout", type=int, default=None, help="seconds per cell (default: none)")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--_worker", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args._worker:
        return _worker(*args._worker, args.timeout)
    if args.profile is None:
        from course_lib.profiles import get_profile

        args.profile = get_profile().name
    try:
        report = run(args.profile, args.chapters, data=args.data, gpus=args.gpus, force=args.force,
                     results=args.results, timeout=args.timeout, progress=not args.no_progress)
    except ValueError as e:
        parser.error(str(e))
    runs = [json.loads(p.read_text()) for p in report.parent.glob("*/run.json")]
    return 0 if all(r["status"] == "done" for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
