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
  finished ``run.json`` is skipped on the next call (``--force`` runs it again from scratch; its old results
  stay until the new run has finished, and come back if it is interrupted);
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
import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from course_lib.data.atomic import atomic_write_bytes
from course_lib.data.paths import DATA_CHOICES, repo_root
from course_lib.profiles import profile_names
from course_lib.report import (CHAPTER_PAPERS, NOTEBOOKS, REPORT, RUN, build_report,  # noqa: F401 (re-exported)
                               chapters, strip_ansi)

__all__ = ["chapters", "run", "execute_notebook", "build_report", "main"]

# --data papers: the dataset each chapter's paper reports on (a chapter not listed keeps the synthetic sets)
# 04: Fast R-CNN Table 4 trains on VOC 2007 trainval; 05: Faster R-CNN Table 3 on 07+12; 06: R-FCN sec. 4.1 on 07+12;
# all three test on VOC 2007 test. 01-03 keep VOC 2012 segmentation (FCN's seg11valid subset of VOC 2011 is not built).
PAPERS_DATA = {"01": "voc", "02": "voc", "03": "voc", "04": "voc07", "05": "voc0712", "06": "voc0712", "07": "coco",
               "08": "tt100k"}
METRICS_CODE = """\
import json as _json, resource as _resource, sys as _sys
_m = {"peak_rss_mib": _resource.getrusage(_resource.RUSAGE_SELF).ru_maxrss / 1024}
if "torch" in _sys.modules and _sys.modules["torch"].cuda.is_available():
    _torch = _sys.modules["torch"]
    _m.update(peak_gpu_mib=_torch.cuda.max_memory_allocated() / 2**20, gpu=_torch.cuda.get_device_name())
print("COURSE_RUN_METRICS " + _json.dumps(_m))
"""


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
        client.set_widgets_metadata()  # the explorers' state (their pictures), as nbclient's own execute() keeps it
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


def _check_gpus(gpus: int) -> None:
    """``--gpus N`` > 1 needs N GPUs here: say so before anything runs (not N CPU processes reported "done")."""
    if not isinstance(gpus, int) or gpus < 1:
        raise ValueError(f"--gpus {gpus!r}: must be an integer >= 1.")
    if gpus > 1:
        import torch

        found = torch.cuda.device_count()
        if found < gpus:
            instead = f"--gpus {found}" if found > 1 else "no --gpus (one process)"
            raise ValueError(f"--gpus {gpus}: this machine has {found} CUDA GPU(s) (torch.cuda.device_count(), "
                             f"CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', 'unset')}). "
                             f"Run with {instead}, or on a machine with {gpus} GPUs.")


def _check_results_dir(root: Path) -> None:
    """The results folder: never inside the committed notebooks, and writable now (not after a whole chapter)."""
    from course_lib.data.atomic import check_writable

    if NOTEBOOKS.resolve() in (root, *root.parents):
        raise ValueError(f"Results dir {root} is inside {NOTEBOOKS}: the committed notebooks are never overwritten.")
    try:
        check_writable(root / REPORT, what="the results report", option="--results folder")
    except OSError as e:
        raise ValueError(str(e)) from None


def _put_back(aside: Path, *paths: Path) -> None:
    """Move what :func:`_keep_until_finished` set aside back over ``paths`` (whatever a new run left there goes)."""
    if not aside.exists():
        return
    for path in paths:
        if not (aside / path.name).exists():
            continue
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
        (aside / path.name).rename(path)
    shutil.rmtree(aside)


@contextlib.contextmanager
def _keep_until_finished(out_dir: Path, executed: Path):
    """--force: the chapter's old results (its folder, its executed notebook) are set aside while it runs again,
    deleted once the new run has finished, and put back when it is interrupted -- so report.md never links
    results that are gone. (A run killed outright leaves them aside: the next run puts them back first.)"""
    aside = out_dir.with_name(f".{out_dir.name}.previous")
    aside.mkdir(parents=True)
    for path in (out_dir, executed):
        if path.exists():
            path.rename(aside / path.name)
    try:
        yield
    except BaseException:
        _put_back(aside, out_dir, executed)
        raise
    shutil.rmtree(aside)


def _finished(status: Path) -> bool:
    return status.is_file() and json.loads(status.read_text()).get("status") == "done"


def run(profile: str, chapter_ids: list[str] | None = None, *, data: str = "synthetic", gpus: int = 1,
        force: bool = False, results: Path | None = None, timeout: int | None = None, progress: bool = True) -> Path:
    """Run the chapters (see the module docstring); returns the report's path."""
    from tqdm.auto import tqdm

    if profile not in profile_names():
        raise ValueError(f"Unknown profile {profile!r}. Valid: {', '.join(profile_names())}.")
    if data not in (*DATA_CHOICES, "papers"):
        raise ValueError(f"--data {data!r}: choose one of {', '.join((*DATA_CHOICES, 'papers'))}.")
    _check_gpus(gpus)
    known = chapters()
    chosen = list(known) if not chapter_ids else [c.strip() for c in chapter_ids]
    unknown = [c for c in chosen if c not in known]
    if unknown:
        raise ValueError(f"Unknown chapter(s) {', '.join(unknown)}. Chapters: {', '.join(known)}.")
    chosen = [c for c in known if c in chosen]  # the course's order
    root = Path(results if results is not None else repo_root() / "results").resolve() / profile
    _check_results_dir(root)

    outer = tqdm(chosen, desc=f"chapters ({profile})", unit="chapter", disable=not progress)
    for chapter in outer:
        out_dir, executed = root / chapter, root / known[chapter].name
        _put_back(out_dir.with_name(f".{chapter}.previous"), out_dir, executed)  # after a killed --force run
        status = out_dir / RUN
        if _finished(status) and not force:
            outer.write(f"{chapter}: done before (results/{profile}/{chapter}/{RUN}) -- skipped; --force runs it again")
            continue
        chapter_data = PAPERS_DATA.get(chapter, "synthetic") if data == "papers" else data
        env = {"COURSE_PROFILE": profile, "COURSE_DATA": chapter_data, "COURSE_RESULTS_DIR": str(out_dir),
               # the exercises' stubs are the students' to fill: the reference solutions stand in for them
               "COURSE_SOLUTIONS": os.environ.get("COURSE_SOLUTIONS", "1")}
        outer.set_postfix_str(known[chapter].stem)
        started = datetime.now(timezone.utc).isoformat(timespec="seconds")
        with _keep_until_finished(out_dir, executed) if force else contextlib.nullcontext():
            result = _run_chapter(chapter, known[chapter], out_dir, env, gpus, timeout, progress)
            if result.get("error"):  # a traceback's colours: noise in run.json and report.md
                result["error"] = strip_ansi(result["error"])
            _write_json(status, {"chapter": chapter, "notebook": known[chapter].name, "profile": profile,
                                 "data": chapter_data, "gpus": gpus, "started": started, **result})
        if result["status"] != "done":
            outer.write(f"{chapter}: FAILED after {result['wall_s']:.0f} s -- {result.get('error')}\n"
                        f"   the executed notebook up to the error: {executed}")
    report = build_report(root)
    if progress:
        print(f"report: {report}")
    return report


# ---------------------------------------------------------------------------------------------- command line


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m course_lib.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", choices=profile_names(), default=None,
                        help="sizes and schedules (course_lib/profiles.py); default: $COURSE_PROFILE, else gpu/cpu")
    parser.add_argument("--chapters", nargs="+", metavar="ID", help="chapter ids, e.g. 02 05 07 (default: all)")
    parser.add_argument("--data", default="synthetic", help="synthetic (default), voc, coco, tt100k, or papers")
    parser.add_argument("--gpus", type=int, default=1, help="processes per chapter; > 1 runs under torchrun")
    parser.add_argument("--force", action="store_true", help="run finished chapters again (their old results are replaced once the new run finishes)")
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
