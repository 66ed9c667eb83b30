"""R-CNN -> Fast R-CNN -> Faster R-CNN, side by side: seconds per image and peak memory at test time.

Run by hand; pytest does not collect it (no ``test_`` prefix)::

    .venv/bin/python tests/benchmarks/bench_lineage.py            # the papers' networks (minutes on a CPU)
    .venv/bin/python tests/benchmarks/bench_lineage.py --smoke    # tiny networks and images, seconds

The same images (synthetic multi-scale scenes, 600 x 800) and, for the two detectors that take
them, the same 2000 proposals (selective search "fast", topped up with random boxes to exactly
``--proposals``; selective search is timed on its own, as the papers report detector time without
it). The networks are the papers' at full width with 21 classes (PASCAL VOC):

* R-CNN: VGG16 on every proposal warped to 224 x 224 (fc7 features, 20 SVMs, box regressors).
  One VGG16 pass per proposal is too slow for a CPU, so R-CNN is timed on ``--rcnn-regions``
  proposals and extrapolated *linearly* to ``--proposals`` (its cost is proportional to the number
  of regions: each region is one independent forward pass); the table says so.
* Fast R-CNN: VGG16 once per image at a 600 px shorter side, RoI pooling, fc6/fc7 per proposal.
* Faster R-CNN: ResNet-50-C4 at 600 px (the paper's scale), its own RPN with 300 proposals.

Each detector runs in its own process (spawned), so its peak resident memory (``ru_maxrss``; on
CUDA the peak allocated memory) is its own. Fast R-CNN's Table 4 (VGG16, a K40 GPU) reports 47.0 s per
image for R-CNN and 0.32 s for Fast R-CNN (146x); the last lines print what this machine measures beside
those numbers, read from ``course_lib.papers``.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
from _process import in_fresh_process, rss_peak  # this folder: a script's own folder is on sys.path

from course_lib import papers

NUM_CLASSES = 21  # PASCAL VOC: 20 classes + background


def make_images(count: int, height: int, width: int) -> list[torch.Tensor]:
    from course_lib.data.synthetic.multiscale import generate_image

    return [torch.from_numpy(generate_image(0, 5000 + i, height, width)[0]).permute(2, 0, 1).contiguous()
            for i in range(count)]


def topped_up(proposals: torch.Tensor, count: int, height: int, width: int, seed: int) -> torch.Tensor:
    """The first ``count`` proposals, topped up with random boxes (16..400 px sides) if there are fewer."""
    missing = count - len(proposals)
    if missing <= 0:
        return proposals[:count]
    g = torch.Generator().manual_seed(seed)
    side = torch.exp(torch.empty(missing, 2).uniform_(2.77, 5.99, generator=g)).clamp(max=min(height, width) - 1)
    x1 = torch.rand(missing, generator=g) * (width - side[:, 0])
    y1 = torch.rand(missing, generator=g) * (height - side[:, 1])
    return torch.cat([proposals, torch.stack([x1, y1, x1 + side[:, 0], y1 + side[:, 1]], 1)])


def _build(name: str, smoke: bool):
    from course_lib.detection import fast_rcnn_vgg16, fasterrcnn_resnet50_c4, rcnn_vgg16

    width, size = (1 / 16, 150) if smoke else (1.0, 600)  # smoke: thin VGG16, small images (ResNet stays full)
    if name == "R-CNN":
        return rcnn_vgg16(NUM_CLASSES, width=width, chunk_size=16)
    if name == "Fast R-CNN":
        return fast_rcnn_vgg16(NUM_CLASSES, width=width, min_size=size, max_size=1000)
    return fasterrcnn_resnet50_c4(num_classes=NUM_CLASSES, min_size=size, max_size=1000, rpn_post_nms_top_n_test=300)


def _measure(name: str, images, proposals, device: str, repeats: int, smoke: bool) -> tuple:
    """In a child process: build the detector, warm up, time ``repeats`` passes over the images."""
    torch.manual_seed(0)
    model = _build(name, smoke).to(device).eval()
    images = [im.to(device) for im in images]
    proposals = [p.to(device) for p in proposals]
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()

    def run():
        with torch.inference_mode():
            for image, props in zip(images, proposals):
                if name == "Faster R-CNN":
                    model([image.float() / 255])
                else:
                    model([image], [props])
        if device == "cuda":
            torch.cuda.synchronize()

    run()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append((time.perf_counter() - start) / len(images))
    peak = torch.cuda.max_memory_allocated() if device == "cuda" else rss_peak()
    params = sum(p.numel() for p in model.parameters())
    return statistics.median(times), peak, params


def measure(name, images, proposals, device, repeats, smoke):
    return in_fresh_process(_measure, name, images, proposals, device, repeats, smoke)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=2, help="test images (600 x 800)")
    parser.add_argument("--proposals", type=int, default=2000, help="proposals per image (R-CNN, Fast R-CNN)")
    parser.add_argument("--rcnn-regions", type=int, default=32,
                        help="proposals R-CNN is actually timed on, then extrapolated to --proposals")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--smoke", action="store_true", help="tiny networks and images: checks the script runs")
    args = parser.parse_args()

    from course_lib.detection import selective_search

    height, width = (150, 200) if args.smoke else (600, 800)
    proposals_n = min(args.proposals, 100) if args.smoke else args.proposals
    images = make_images(args.images, height, width)
    start = time.perf_counter()
    searched = [selective_search(image, mode="fast", max_proposals=proposals_n) for image in images]
    ss_seconds = (time.perf_counter() - start) / len(images)
    proposals = [topped_up(p, proposals_n, height, width, seed=i) for i, p in enumerate(searched)]
    rcnn_regions = min(args.rcnn_regions, proposals_n)

    threads = torch.get_num_threads()
    print(f"device {args.device} ({threads} CPU threads), {args.images} images {height} x {width}, "
          f"{proposals_n} proposals per image ({sum(map(len, searched)) / len(searched):.0f} from selective search, "
          f"topped up with random boxes)" + (" -- SMOKE: tiny networks" if args.smoke else ""))
    print(f"selective search ('fast', 8 strategies, on the CPU): {ss_seconds:.2f} s per image (not included below)")
    if os.getloadavg()[0] > (os.cpu_count() or 1):
        print(f"warning: load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores; times are pessimistic")

    rows = {}
    rows["R-CNN"] = measure("R-CNN", images, [p[:rcnn_regions] for p in proposals], args.device, args.repeats,
                            args.smoke)
    rows["Fast R-CNN"] = measure("Fast R-CNN", images, proposals, args.device, args.repeats, args.smoke)
    rows["Faster R-CNN"] = measure("Faster R-CNN", images, proposals, args.device, args.repeats, args.smoke)

    seconds_rcnn = rows["R-CNN"][0] * proposals_n / rcnn_regions  # linear in the number of regions
    seconds = {"R-CNN": seconds_rcnn, "Fast R-CNN": rows["Fast R-CNN"][0], "Faster R-CNN": rows["Faster R-CNN"][0]}
    backbone = {"R-CNN": "VGG16, 224 warps", "Fast R-CNN": f"VGG16, {height} px", "Faster R-CNN": f"R50-C4, {height} px"}
    memory = "peak GPU memory" if args.device == "cuda" else "peak RSS"
    print(f"\n{'detector':14s}{'network':20s}{'params':>9s}{'s / image':>12s}{memory:>18s}{'vs R-CNN':>10s}")
    for name, (_, peak, params) in rows.items():
        note = f"  (timed on {rcnn_regions} regions, x{proposals_n / rcnn_regions:.1f})" if name == "R-CNN" else ""
        print(f"{name:14s}{backbone[name]:20s}{params / 1e6:8.1f}M{seconds[name]:12.2f}{peak / 2**30:16.2f} GiB"
              f"{seconds_rcnn / seconds[name]:9.1f}x{note}")
    print(f"\nFast R-CNN is {seconds_rcnn / seconds['Fast R-CNN']:.0f}x faster than R-CNN at test time "
          f"(Fast R-CNN Table 4, VGG16 on a K40: {papers.value('fast_rcnn.table4.rcnn.test_s')} vs "
          f"{papers.value('fast_rcnn.table4.fast.test_s')} s/image, "
          f"{papers.value('fast_rcnn.table4.fast.test_speedup')}x); Faster R-CNN adds its own proposals "
          f"and is {seconds_rcnn / seconds['Faster R-CNN']:.0f}x faster than R-CNN without counting selective search "
          f"({ss_seconds:.1f} s per image more for the first two).")


if __name__ == "__main__":
    main()
