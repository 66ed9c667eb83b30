"""course_lib.ops vs torchvision.ops: same inputs, one run, a table of median times.

Run by hand (``make bench``); pytest does not collect it (no ``test_`` prefix)::

    .venv/bin/python tests/benchmarks/bench_ops.py              # full sizes
    .venv/bin/python tests/benchmarks/bench_ops.py --smoke      # tiny sizes, seconds

Inputs are those of a detector on an 800 x 1088 image: clustered proposal boxes for NMS,
log-uniform RoI sizes from 16 to 400 pixels, a 256-channel stride-4 map for RoIAlign and
RoIPool, R-FCN's k^2 (C+1) = 7*7*(20+1+1) score maps at stride 16 for PSRoIPool.
Each repeat times torchvision then course_lib back to back (fair under a noisy machine);
the table shows the medians and their ratio (ours / torchvision; < 1 means we are faster).
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
import torchvision

from course_lib import ops
from course_lib.ops.pooling import torchvision_kernels_enabled

IMAGE_H, IMAGE_W = 800, 1088


def clustered_boxes(n: int, generator: torch.Generator, clusters: int = 50) -> tuple[torch.Tensor, torch.Tensor]:
    """Proposals as an RPN makes them: many boxes jittered around a few object centres."""
    centres = torch.rand(clusters, 2, generator=generator) * torch.tensor([IMAGE_W, IMAGE_H])
    sizes = torch.exp(torch.empty(clusters, 2).uniform_(3.0, 6.0, generator=generator))  # 20..400 px
    which = torch.randint(0, clusters, (n,), generator=generator)
    jitter = 1 + 0.15 * torch.randn(n, 4, generator=generator)
    cx, cy = centres[which, 0] * jitter[:, 0], centres[which, 1] * jitter[:, 1]
    w, h = sizes[which, 0] * jitter[:, 2].abs(), sizes[which, 1] * jitter[:, 3].abs()
    boxes = torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=1)
    return boxes, torch.rand(n, generator=generator)


def random_rois(n: int, generator: torch.Generator, batch_size: int = 1) -> torch.Tensor:
    """``Tensor[n, 5]`` RoIs with log-uniform sides of 16..400 pixels, anywhere in the image."""
    side = torch.exp(torch.empty(n, 2).uniform_(2.77, 5.99, generator=generator))
    x1 = torch.rand(n, generator=generator) * (IMAGE_W - side[:, 0])
    y1 = torch.rand(n, generator=generator) * (IMAGE_H - side[:, 1])
    index = torch.randint(0, batch_size, (n,), generator=generator).float()
    return torch.stack([index, x1, y1, x1 + side[:, 0], y1 + side[:, 1]], dim=1)


def cases(smoke: bool):
    """(name, ours, torchvision) triples of argument-less callables on shared inputs."""
    g = torch.Generator().manual_seed(0)
    scale = 1 / 8 if smoke else 1.0
    shrink = (lambda n: max(8, int(n * scale))) if smoke else (lambda n: n)
    out = []

    for n in (1000, 5000, 20000):
        n = shrink(n)
        boxes, scores = clustered_boxes(n, g)
        out.append((f"nms {n} boxes, IoU 0.7",
                    lambda b=boxes, s=scores: ops.nms(b, s, 0.7),
                    lambda b=boxes, s=scores: torchvision.ops.nms(b, s, 0.7)))
    n = shrink(5000)
    boxes, scores = clustered_boxes(n, g)
    labels = torch.randint(0, 80, (n,), generator=g)
    out.append((f"batched_nms {n} boxes, 80 classes",
                lambda: ops.batched_nms(boxes, scores, labels, 0.7),
                lambda: torchvision.ops.batched_nms(boxes, scores, labels, 0.7)))

    c, h, w = (32, 50, 68) if smoke else (256, IMAGE_H // 4, IMAGE_W // 4)
    features = torch.randn(1, c, h, w, generator=g)
    k = shrink(512)
    rois = random_rois(k, g)
    for sr in (2, -1):
        label = "adaptive" if sr <= 0 else f"sampling {sr}"
        out.append((f"roi_align {k} RoIs 7x7, {c}x{h}x{w}, {label}",
                    lambda sr=sr: ops.roi_align(features, rois, 7, 1 / 4, sr),
                    lambda sr=sr: torchvision.ops.roi_align(features, rois, 7, 1 / 4, sr)))
    trainable = features.clone().requires_grad_(True)

    def forward_backward(fn):
        def run():
            trainable.grad = None
            fn(trainable, rois, 7, 1 / 4, 2).sum().backward()
        return run

    out.append((f"roi_align fwd+bwd {k} RoIs, sampling 2",
                forward_backward(ops.roi_align), forward_backward(torchvision.ops.roi_align)))
    out.append((f"roi_pool {k} RoIs 7x7, {c}x{h}x{w}",
                lambda: ops.roi_pool(features, rois, 7, 1 / 4),
                lambda: torchvision.ops.roi_pool(features, rois, 7, 1 / 4)))

    # FPN's pooler: the level mapping (eq. 1) and RoIAlign from P2..P5, each RoI from its level
    pyramid = {str(i): torch.randn(1, c, -(-h // 2**i), -(-w // 2**i), generator=g) for i in range(4)}
    roi_boxes = [rois[:, 1:]]  # a new name: the lambdas above read `boxes` when they run
    ours_pool = ops.MultiScaleRoIAlign(["0", "1", "2", "3"], 7, 2)
    tv_pool = torchvision.ops.MultiScaleRoIAlign(["0", "1", "2", "3"], 7, 2)
    shapes = [(IMAGE_H, IMAGE_W)]
    out.append((f"MultiScaleRoIAlign {k} RoIs 7x7, P2..P5 {c} channels",
                lambda: ours_pool(pyramid, roi_boxes, shapes), lambda: tv_pool(pyramid, roi_boxes, shapes)))
    many = [random_rois(shrink(20000), g)[:, 1:]]
    ours_mapper, tv_mapper = ops.LevelMapper(2, 5), torchvision.ops.poolers.LevelMapper(2, 5)
    out.append((f"LevelMapper {len(many[0])} RoIs (FPN eq. 1)", lambda: ours_mapper(many), lambda: tv_mapper(many)))

    kk, classes = 7, 21
    score_maps = torch.randn(1, kk * kk * (classes + 1), IMAGE_H // 16, IMAGE_W // 16, generator=g)
    k = shrink(300)
    ps_rois = random_rois(k, g)  # a new name: the RoIAlign and RoIPool lambdas above read `rois` when they run
    out.append((f"ps_roi_pool {k} RoIs k=7, {score_maps.shape[1]} maps 1/16",
                lambda: ops.ps_roi_pool(score_maps, ps_rois, kk, 1 / 16),
                lambda: torchvision.ops.ps_roi_pool(score_maps, ps_rois, kk, 1 / 16)))
    out.append((f"ps_roi_align {k} RoIs k=7, sampling 2",
                lambda: ops.ps_roi_align(score_maps, ps_rois, kk, 1 / 16, 2),
                lambda: torchvision.ops.ps_roi_align(score_maps, ps_rois, kk, 1 / 16, 2)))
    return out


def median_ms(ours, reference, repeats: int, warmup: int) -> tuple[float, float]:
    for _ in range(warmup):
        reference()
        ours()
    times_ours, times_ref = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        reference()
        times_ref.append(time.perf_counter() - start)
        start = time.perf_counter()
        ours()
        times_ours.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times_ours), 1e3 * statistics.median(times_ref)


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, to check the script runs")
    parser.add_argument("--only", default="", help="run only the rows whose name contains this")
    args = parser.parse_args(argv)
    if torchvision_kernels_enabled():
        raise SystemExit("use_torchvision_kernels is on: the benchmark would compare torchvision with itself")
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, torchvision {torchvision.__version__}, {args.threads} threads, "
          f"median of {args.repeats} (after {args.warmup} warm-up)")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    if args.threads > 1 and load > os.cpu_count():
        print(f"note: the machine is busy (load {load:.1f} on {os.cpu_count()} cores); multi-threaded ops "
              "stall waiting for cores while torchvision's RoI and NMS kernels use one thread, so ratios are "
              "pessimistic -- compare with --threads 1")
    header = f"{'op':<52} {'course_lib ms':>14} {'torchvision ms':>15} {'ratio':>7}"
    print(header)
    print("-" * len(header))
    rows = []
    with torch.inference_mode(False):
        for name, ours, reference in cases(args.smoke):
            if args.only not in name:
                continue
            ours_ms, ref_ms = median_ms(ours, reference, args.repeats, args.warmup)
            rows.append({"op": name, "ours_ms": ours_ms, "torchvision_ms": ref_ms, "ratio": ours_ms / ref_ms})
            print(f"{name:<52} {ours_ms:>14.2f} {ref_ms:>15.2f} {ours_ms / ref_ms:>7.2f}", flush=True)
    return rows


if __name__ == "__main__":
    main()
