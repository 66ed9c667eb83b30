"""Table III of the EFPN paper in one run: FPN-1x, FPN-2x and EFPN-1x on the same images -- seconds per image and
peak memory, and the ratios EFPN-1x / FPN-2x beside the paper's (1.05 / 1.42 s and 4899 / 6349 MB, read from
``course_lib.papers``; goal: at or below them).

Run by hand; pytest does not collect it (no ``test_`` prefix)::

    .venv/bin/python tests/benchmarks/bench_efpn.py                   # 1400 px (FPN-2x: 2800), as Table III
    .venv/bin/python tests/benchmarks/bench_efpn.py --min-size 512    # what a CPU laptop manages
    .venv/bin/python tests/benchmarks/bench_efpn.py --smoke           # 256 px, one repeat: checks the script runs

The same weights for the three runs: a ResNet-50 FPN detector (seeded random initialisation, saved once), the EFPN
built from that file (its top four levels and heads; the extension seeded too). FPN-2x is the same FPN with the
transform's sizes doubled. Images: synthetic TT100K-like street scenes (square, ``--min-size`` pixels after the
model's resize). Inference, one image at a time, in ``torch.inference_mode``. Each measurement is a spawned process
of its own, so its peak memory is its own: ``torch.cuda.max_memory_allocated`` on CUDA; on the CPU the peak resident
set size during inference above the resident size before it (Linux's VmHWM, reset through ``/proc/self/clear_refs``
after the model is built, so that loading the weights does not hide the peak; tracemalloc does not see
torch's allocations). The three runs alternate ``--rounds`` times in a rotated order; medians are reported.
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
import warnings

import torch
from _process import in_fresh_process  # this folder: a script's own folder is on sys.path

RUNS = ("FPN-1x", "FPN-2x", "EFPN-1x")
NUM_CLASSES = 46  # TT100K's 45 evaluated classes + background


def scenes(count: int, side: int):
    """``count`` synthetic street scenes (float [3, side, side] in [0, 1]) with small traffic signs."""
    from course_lib.data.synthetic.traffic_signs import generate_image

    return [torch.from_numpy(generate_image(0, 9000 + i, side, side)[0]).permute(2, 0, 1).float() / 255
            for i in range(count)]


def _rss(field: str) -> int:
    """``VmRSS`` / ``VmHWM`` of this process in bytes (Linux)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def _child(run: str, weights: str, images, min_size: int, device: str, repeats: int, threads: int
           ) -> tuple[float, int, float]:
    from course_lib.detection.efpn import efpn_resnet50_fpn
    from course_lib.detection.faster_rcnn_fpn import fasterrcnn_resnet50_fpn

    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    size = 2 * min_size if run == "FPN-2x" else min_size
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "a plain FPN: the extension is untrained" -- expected here
        builder = efpn_resnet50_fpn if run == "EFPN-1x" else fasterrcnn_resnet50_fpn
        model = builder(weights=weights, min_size=size, max_size=size, frozen_bn_eps=1e-5).eval().to(device)
    images = [im.to(device) for im in images]
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    else:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset the peak resident set size to the current one: the built model
        before = _rss("VmRSS")
    with torch.inference_mode():
        model([images[0]])  # warm-up (its allocations count: the allocator keeps them for the timed passes)
        times, cpu_times = [], []
        for _ in range(repeats):
            start, cpu_start = time.perf_counter(), time.process_time()
            for im in images:
                model([im])
            if device == "cuda":
                torch.cuda.synchronize()
            times.append((time.perf_counter() - start) / len(images))
            cpu_times.append((time.process_time() - cpu_start) / len(images))
    peak = torch.cuda.max_memory_allocated() if device == "cuda" else _rss("VmHWM") - before
    return statistics.median(times), peak, statistics.median(cpu_times)


def measure(*args) -> tuple[float, int, float]:
    """``_child(*args)`` in a fresh (spawned) process of its own: (seconds per image, peak memory in bytes, CPU
    seconds per image of the process -- on a shared machine the fairer time: other processes do not inflate it)."""
    return in_fresh_process(_child, *args)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--min-size", type=int, default=1400, help="the 1x input side (Table III: 1400)")
    parser.add_argument("--images", type=int, default=2, help="images timed per pass")
    parser.add_argument("--repeats", type=int, default=2, help="timed passes per process (after one warm-up)")
    parser.add_argument("--rounds", type=int, default=3, help="times the three runs alternate")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads per process (0: torch's default); 1 makes "
                        "CPU seconds the pure compute time (no spinning threads) on a shared machine")
    parser.add_argument("--smoke", action="store_true", help="256 px, one repeat and round: checks the script runs")
    args = parser.parse_args()
    if args.smoke:
        args.min_size, args.repeats, args.rounds, args.images = 256, 1, 1, 1

    from course_lib import papers
    from course_lib.detection.faster_rcnn_fpn import fasterrcnn_resnet50_fpn

    images = scenes(args.images, args.min_size)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        weights = os.path.join(tmp, "fpn_random.pth")
        torch.save(fasterrcnn_resnet50_fpn(num_classes=NUM_CLASSES).state_dict(), weights)
        print(f"device {args.device} ({args.threads or torch.get_num_threads()} CPU threads), torch {torch.__version__}; ResNet-50, "
              f"{args.images} images of {args.min_size} x {args.min_size} (FPN-2x: {2 * args.min_size}); "
              f"{args.repeats} timed passes per process, median over {args.rounds} rounds")
        load = os.getloadavg()[0]
        if load > (os.cpu_count() or 1):
            print(f"warning: load average {load:.1f} on {os.cpu_count()} cores: times are noisy and pessimistic")
        rounds = {}
        for r in range(args.rounds):
            for run in RUNS[r % 3:] + RUNS[: r % 3]:
                rounds.setdefault(run, []).append(measure(run, weights, images, args.min_size, args.device,
                                                          args.repeats, args.threads))
                print(f"  round {r + 1}: {run:8s} {rounds[run][-1][0]:8.3f} s/image, {rounds[run][-1][2]:8.3f} CPU s/image",
                      flush=True)
    results = {run: (statistics.median(v[0] for v in vals), max(v[1] for v in vals), statistics.median(v[2] for v in vals))
               for run, vals in rounds.items()}
    memory = "peak GPU memory" if args.device == "cuda" else "peak RSS rise"
    print(f"\n{'run':10s}{'s / image':>10s}{'CPU s / image':>15s}{memory:>18s}")
    for run in RUNS:
        seconds, peak, cpu = results[run]
        print(f"{run:10s}{seconds:10.3f}{cpu:15.3f}{peak / 2**20:14.0f} MiB")
    t = 0 if args.device == "cuda" else 2  # CPU seconds on the CPU: a loaded machine does not bias them
    time_ratio = results["EFPN-1x"][t] / results["FPN-2x"][t]
    memory_ratio = results["EFPN-1x"][1] / results["FPN-2x"][1]
    paper = {k: papers.value(f"efpn.table3.{k}") for k in ("efpn_1400.runtime_s", "fpn_2800.runtime_s",
                                                           "fpn_1400.runtime_s", "efpn_1400.memory_mb",
                                                           "fpn_2800.memory_mb")}
    print(f"\nEFPN-1x / FPN-2x: time {time_ratio:.2f} (paper {paper['efpn_1400.runtime_s'] / paper['fpn_2800.runtime_s']:.2f}), "
          f"memory {memory_ratio:.2f} (paper {paper['efpn_1400.memory_mb'] / paper['fpn_2800.memory_mb']:.2f}); "
          f"EFPN-1x / FPN-1x: time {results['EFPN-1x'][t] / results['FPN-1x'][t]:.2f} "
          f"(paper {paper['efpn_1400.runtime_s'] / paper['fpn_1400.runtime_s']:.2f})")
    print("goal: EFPN-1x / FPN-2x at or below the paper's ratios")


if __name__ == "__main__":
    main()
