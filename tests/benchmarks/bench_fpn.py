"""course_lib's Faster R-CNN R50-FPN against torchvision's, side by side: seconds per image for inference and for
a training step, and peak memory.

Run by hand; pytest does not collect it (no ``test_`` prefix)::

    .venv/bin/python tests/benchmarks/bench_fpn.py             # 800 px, the paper's (and torchvision's) defaults
    .venv/bin/python tests/benchmarks/bench_fpn.py --smoke     # 320 px, one repeat: checks the script runs

The same images (synthetic multi-scale scenes, resized by the models to an 800-px shorter side) and the same
weights (torchvision's random initialisation, seeded, loaded into both) for three runs:

* ``torchvision`` -- ``torchvision.models.detection.fasterrcnn_resnet50_fpn``;
* ``course_lib`` -- ``course_lib.detection.faster_rcnn_fpn.fasterrcnn_resnet50_fpn`` with the pure-PyTorch ops;
* ``course_lib + tv kernels`` -- the same inside ``course_lib.ops.pooling.use_torchvision_kernels()``: RoIAlign (and
  the other RoI ops) call torchvision's compiled kernels; everything else stays pure PyTorch.

Inference: one image at a time in eval mode (torch.inference_mode). Training: one step (forward, backward, SGD) on
a batch of ``--batch`` images with their ground-truth boxes. The three runs alternate, ``--rounds`` times (in a
rotated order each round), and the table reports the median over rounds, so that a machine whose load drifts
favours no run. Every measurement is a spawned process of its own, so its peak memory is its own: peak
resident set size (``ru_maxrss``) on the CPU -- tracemalloc does not
see torch's allocations -- reported as the process's peak and as the growth over the peak after building the model;
``torch.cuda.max_memory_allocated`` on CUDA. The target is within 1.10x of torchvision.
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import torch
from _process import in_fresh_process, peak_memory, rss_peak  # this folder: a script's own folder is on sys.path

NUM_CLASSES = 91  # torchvision's COCO head
RUNS = ("torchvision", "course_lib", "course_lib + tv kernels")


def make_samples(count: int, height: int, width: int):
    """``count`` synthetic multi-scale scenes: (uint8 [3, H, W] image, {"boxes", "labels"}) pairs."""
    from course_lib.data.synthetic.multiscale import generate_image

    samples = []
    for i in range(count):
        image, annotations = generate_image(0, 7000 + i, height, width)
        xywh = torch.tensor([a["bbox"] for a in annotations], dtype=torch.float32).reshape(-1, 4)
        boxes = torch.cat([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], 1)
        labels = torch.tensor([a["category_id"] for a in annotations], dtype=torch.int64)
        samples.append((torch.from_numpy(image).permute(2, 0, 1).contiguous(), {"boxes": boxes, "labels": labels}))
    return samples


def _build(run: str, weights_path: str, min_size: int):
    from torchvision.models.detection import fasterrcnn_resnet50_fpn as tv_fasterrcnn_resnet50_fpn

    from course_lib.detection.faster_rcnn_fpn import fasterrcnn_resnet50_fpn

    builder = tv_fasterrcnn_resnet50_fpn if run == "torchvision" else fasterrcnn_resnet50_fpn
    extra = dict(weights_backbone=None) if run == "torchvision" else {}
    model = builder(weights=None, num_classes=NUM_CLASSES, min_size=min_size, **extra)
    model.load_state_dict(torch.load(weights_path, weights_only=True))
    return model


def _measure(run: str, mode: str, weights_path: str, samples, batch: int, min_size: int, device: str,
             repeats: int) -> tuple:
    """In a child process: build, warm up, time ``repeats`` passes; report seconds per image and peak memory."""
    from course_lib.ops.pooling import use_torchvision_kernels

    use_torchvision_kernels(run.endswith("tv kernels"))
    torch.manual_seed(0)
    model = _build(run, weights_path, min_size).to(device)
    images = [(image.float() / 255).to(device) for image, _ in samples]
    targets = [{k: v.to(device) for k, v in target.items()} for _, target in samples]
    rss_built = rss_peak()
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()

    if mode == "inference":
        model.eval()

        def one_pass():
            with torch.inference_mode():
                for image in images:
                    model([image])
        per_pass = len(images)
    else:
        model.train()
        optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)

        def one_pass():
            optimizer.zero_grad(set_to_none=True)
            losses = model(images[:batch], targets[:batch])
            sum(losses.values()).backward()
            optimizer.step()
        per_pass = batch

    one_pass()  # warm-up
    times = []
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        one_pass()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append((time.perf_counter() - start) / per_pass)
    peak, growth = peak_memory(device, rss_built)
    return statistics.median(times), peak, growth


def measure(*args):
    return in_fresh_process(_measure, *args)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=2, help="test images (inference), 600 x 800 before resizing")
    parser.add_argument("--batch", type=int, default=2, help="images per training step")
    parser.add_argument("--repeats", type=int, default=2, help="timed passes per process (after one warm-up)")
    parser.add_argument("--rounds", type=int, default=3, help="times the three runs alternate")
    parser.add_argument("--min-size", type=int, default=800, help="the models' shorter side (default: the paper's 800)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--modes", default="inference,train", help="comma-separated: inference, train")
    parser.add_argument("--smoke", action="store_true", help="320 px, 1 repeat: checks that the script runs")
    args = parser.parse_args()
    if args.smoke:
        args.min_size, args.repeats, args.rounds = 320, 1, 1
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not modes or set(modes) - {"inference", "train"}:
        parser.error(f"--modes must list inference and/or train, got {args.modes!r}")

    from torchvision.models.detection import fasterrcnn_resnet50_fpn as tv_fasterrcnn_resnet50_fpn

    samples = make_samples(max(args.images, args.batch), 600, 800)
    torch.manual_seed(0)
    reference = tv_fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=NUM_CLASSES)
    with tempfile.TemporaryDirectory() as tmp:
        weights_path = os.path.join(tmp, "fasterrcnn_resnet50_fpn_random.pth")
        torch.save(reference.state_dict(), weights_path)
        del reference

        print(f"device {args.device} ({torch.get_num_threads()} CPU threads), torch {torch.__version__}; "
              f"images 600 x 800 resized to a {args.min_size}-px shorter side; inference on {args.images} images one "
              f"at a time, training steps on batches of {args.batch}; {args.repeats} timed passes per process, "
              f"median over {args.rounds} alternating rounds")
        load = os.getloadavg()[0]
        if load > (os.cpu_count() or 1):
            print(f"warning: load average {load:.1f} on {os.cpu_count()} cores: other processes share the CPU, "
                  "times are noisy and pessimistic")
        rounds = {}
        for mode in modes:
            for r in range(args.rounds):
                for run in RUNS[r % len(RUNS):] + RUNS[: r % len(RUNS)]:  # rotate the order every round
                    result = measure(run, mode, weights_path, samples, args.batch, args.min_size, args.device,
                                     args.repeats)
                    rounds.setdefault((mode, run), []).append(result)
                    print(f"  round {r + 1}: {mode:9s} {run:24s} {result[0]:7.3f} s/image", flush=True)
    # median time over rounds; the largest memory peak seen
    results = {key: (statistics.median(r[0] for r in values), max(r[1] for r in values),
                     None if values[0][2] is None else max(r[2] for r in values))
               for key, values in rounds.items()}

    memory = "peak GPU mem" if args.device == "cuda" else "peak RSS"
    print(f"\n{'mode':10s}{'run':26s}{'s / image':>10s}{'x tv':>7s}{memory:>14s}{'x tv':>7s}"
          + ("" if args.device == "cuda" else f"{'RSS growth':>13s}{'x tv':>7s}"))
    for mode in modes:
        tv_seconds, tv_peak, tv_growth = results[mode, "torchvision"]
        for run in RUNS:
            seconds, peak, growth = results[mode, run]
            line = (f"{mode:10s}{run:26s}{seconds:10.3f}{seconds / tv_seconds:6.2f}x"
                    f"{peak / 2**30:10.2f} GiB{peak / tv_peak:6.2f}x")
            if growth is not None:
                line += f"{growth / 2**30:9.2f} GiB{growth / max(tv_growth, 1):6.2f}x"
            print(line)
    print("\ntarget: course_lib within 1.10x of torchvision (time); 'x tv' = ratio to torchvision's run")


if __name__ == "__main__":
    main()
