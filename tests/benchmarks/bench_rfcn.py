"""R-FCN against the chapter-5 Faster R-CNN C4, side by side: head time as the number of RoIs grows, seconds
per image, peak memory (R-FCN paper, Table 3: 0.17 vs 0.42 s/img at test time on a K40).

Run by hand; pytest does not collect it (no ``test_`` prefix)::

    .venv/bin/python tests/benchmarks/bench_rfcn.py                  # ResNet-101, 600 px, 300/1000/2000 RoIs
    .venv/bin/python tests/benchmarks/bench_rfcn.py --smoke          # ResNet-50, 224 px, 50/100 RoIs: checks it runs

Both detectors have the same depth, see the same image (a synthetic multi-scale scene, 600 x 800, resized by
the models to a ``--min-size`` shorter side) and, for the head timings, the same proposals (random boxes in the
resized image, seeded), handed to ``roi_heads.predict`` -- the one method in which the two differ:

* ``C4`` -- ``fasterrcnn_resnet{depth}_c4``: RoIAlign 14 x 14 on C4, then conv5_x and the predictor *per RoI*;
* ``R-FCN`` -- ``rfcn_resnet{depth}``: conv_new_1 and the score maps once per image on the dilated C5, then
  PSRoI pooling and a mean per RoI. Its conv5_x runs in the backbone, once per image: the head time below
  includes the score maps but not conv5_x, and the s/image column has everything.

The s/image column is a whole inference -- transform, backbone, RPN, head on the same 300 fixed proposals,
post-processing -- so that neither detector's count depends on what its (randomly initialised) RPN proposes.

Every measurement is a spawned process of its own (its peak memory is its own): peak resident set size
(``ru_maxrss``) on the CPU, as the growth over the peak after building the model and computing the features;
``torch.cuda.max_memory_allocated`` on CUDA. Times are medians of ``--repeats`` passes after ``--warmup`` passes:
wall-clock seconds on CUDA; on the CPU the process's CPU seconds (``time.process_time``), which other processes
sharing the machine do not inflate (run with OMP_NUM_THREADS=1 so that they are also the wall-clock time of an
idle core).
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
from _process import in_fresh_process, peak_memory, rss_peak  # this folder: a script's own folder is on sys.path

NUM_CLASSES = 21  # PASCAL VOC: 20 classes + background, as the paper's Table 3


def make_image(height: int = 600, width: int = 800) -> torch.Tensor:
    from course_lib.data.synthetic.multiscale import generate_image

    image, _ = generate_image(0, 7000, height, width)
    return torch.from_numpy(image).permute(2, 0, 1).float().div(255)


def random_proposals(count: int, height: int, width: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(count)
    xy = torch.rand(count, 2, generator=g) * torch.tensor([width * 0.8, height * 0.8])
    wh = 16 + torch.rand(count, 2, generator=g) * torch.tensor([width * 0.4, height * 0.4])
    return torch.cat([xy, (xy + wh).minimum(torch.tensor([width - 1.0, height - 1.0]))], 1)


def _build(name: str, depth: int, min_size: int):
    from course_lib.detection.faster_rcnn_c4 import fasterrcnn_resnet50_c4, fasterrcnn_resnet101_c4
    from course_lib.detection.rfcn import rfcn_resnet50, rfcn_resnet101

    torch.manual_seed(0)
    common = dict(min_size=min_size, max_size=min_size * 5 // 3, rpn_post_nms_top_n_test=300)
    if name == "C4":
        return {50: fasterrcnn_resnet50_c4, 101: fasterrcnn_resnet101_c4}[depth](num_classes=NUM_CLASSES, **common)
    return {50: rfcn_resnet50, 101: rfcn_resnet101}[depth](num_classes=NUM_CLASSES, **common)


def _measure(name: str, what: str, rois: int, depth: int, min_size: int, device: str, repeats: int, warmup: int) -> tuple:
    """In a child process: build, warm up, time; report (seconds, peak bytes, growth bytes)."""
    model = _build(name, depth, min_size).to(device).eval()
    image = make_image().to(device)
    with torch.inference_mode():
        image_list, _, _ = model.prepare([image])
        features = model.features(image_list)
        proposals = [random_proposals(rois, *image_list.image_sizes[0]).to(device)]
    rss_built = rss_peak()
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()

    def one_pass():
        with torch.inference_mode():
            if what == "head":
                model.roi_heads.predict(features, proposals, image_list.image_sizes)
            else:  # the whole inference, the head on the fixed proposals
                images, _, sizes = model.prepare([image])
                feats = model.features(images)
                model.proposals(images, feats)
                detections, _ = model.detect(feats, proposals, images)
                model.postprocess(detections, images, sizes)

    clock = time.perf_counter if device == "cuda" else time.process_time
    for _ in range(warmup):
        one_pass()
    times = []
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        start = clock()
        one_pass()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(clock() - start)
    peak, growth = peak_memory(device, rss_built)
    return statistics.median(times), peak, growth


def measure(*args):
    return in_fresh_process(_measure, *args)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--depth", type=int, default=101, choices=(50, 101), help="ResNet depth of both detectors")
    parser.add_argument("--min-size", type=int, default=600, help="shorter side (default: the paper's 600)")
    parser.add_argument("--rois", type=int, nargs="+", default=[300, 1000, 2000], help="RoIs per image for the head")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes per process")
    parser.add_argument("--warmup", type=int, default=1, help="untimed passes before them")
    parser.add_argument("--parts", default="heads,image", help="comma-separated: heads, image")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--smoke", action="store_true", help="ResNet-50, 224 px, 50/100 RoIs, 1 repeat")
    args = parser.parse_args()
    if args.smoke:
        args.depth, args.min_size, args.rois, args.repeats = 50, 224, [50, 100], 1
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    if not parts or set(parts) - {"heads", "image"}:
        parser.error(f"--parts must list heads and/or image, got {args.parts!r}")
    if min(args.rois) < 1:
        parser.error(f"--rois must be positive, got {args.rois}")

    print(f"device {args.device} ({torch.get_num_threads()} CPU threads), torch {torch.__version__}; ResNet-{args.depth}, "
          f"one 600 x 800 image resized to a {args.min_size}-px shorter side; {args.repeats} timed passes per process "
          f"after {args.warmup}; " + ("wall-clock seconds" if args.device == "cuda" else "CPU seconds of the process"))
    load = os.getloadavg()[0]
    if load > (os.cpu_count() or 1):
        print(f"warning: load average {load:.1f} on {os.cpu_count()} cores: times are noisy and pessimistic")
    memory = "peak GPU mem" if args.device == "cuda" else "RSS growth"
    results = {}
    run = lambda name, what, rois: measure(name, what, rois, args.depth, args.min_size, args.device, args.repeats,
                                           args.warmup)
    for rois in args.rois if "heads" in parts else []:
        for name in ("R-FCN", "C4"):
            results[name, rois] = run(name, "head", rois)
            print(f"  head {name:6s} {rois:5d} RoIs: {results[name, rois][0]:8.3f} s", flush=True)
    for name in ("R-FCN", "C4") if "image" in parts else []:
        results[name, "image"] = run(name, "image", 300)
        print(f"  inference {name:6s} (300 fixed RoIs): {results[name, 'image'][0]:8.3f} s/image", flush=True)

    def mem(result):
        value = result[1] if result[2] is None else result[2]
        return value / 2 ** 20

    print(f"\n{'':24s}{'R-FCN':>10s}{'C4':>10s}{'C4 / R-FCN':>12s}   {memory} R-FCN / C4 (MiB)")
    keys = (args.rois if "heads" in parts else []) + (["image"] if "image" in parts else [])
    for key in keys:
        label = f"head, {key} RoIs (s)" if key != "image" else "inference (s / image)"
        r, c = results["R-FCN", key], results["C4", key]
        print(f"{label:24s}{r[0]:10.3f}{c[0]:10.3f}{c[0] / r[0]:11.1f}x   {mem(r):8.0f} / {mem(c):8.0f}")
    first, last = args.rois[0], args.rois[-1]
    for name in ("R-FCN", "C4") if "heads" in parts and len(args.rois) > 1 else []:
        growth = results[name, last][0] / results[name, first][0]
        print(f"{name}: head time x{growth:.2f} from {first} to {last} RoIs ({last / first:.1f}x the RoIs)")
    print("paper, Table 3 (K40, ResNet-101): test 0.17 s/img (R-FCN) vs 0.42 (Faster R-CNN, 10 per-RoI layers)")


if __name__ == "__main__":
    main()
