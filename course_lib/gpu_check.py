"""``make gpu-check``: what only a GPU can show, in one run of a few minutes, printed as one table.

    make gpu-check                                  # or, without the course's venv (a GPU machine's own torch):
    PYTHONPATH=. python3 -m course_lib.gpu_check    # [--skip-bench] [--skip-tests] [--steps 2]

1. the CUDA tests (``pytest -m`` none: the tests that skip without CUDA, selected by ``-k cuda``);
2. CUDA against CPU on one batch, for every chapter's detector: backbone features, RPN head outputs and the RoI
   head's scores on the same proposals, TF32 off (float32 on both sides);
3. ``--steps`` mixed-precision training steps (``engine.fit``, float16 autocast + GradScaler) of every chapter's
   model at the ``gpu`` profile's sizes (800 px, 2000 proposals, 512 RoIs per image, the profile's batch), with
   seconds per step (the last step) and peak GPU memory;
4. one training step of each chapter's paper recipe (``course_lib.recipes``: its images per GPU, its input size),
   as seconds per iteration and peak memory, and from it the hours the full recipe takes on this GPU, beside the
   README's estimate;
5. the benchmark scripts (``tests/benchmarks``): bench_fpn and bench_lineage on CUDA, bench_ops (CPU only), their
   result tables, within the check's 8-minute budget.

Without CUDA it prints why and exits 0 (nothing to check). It needs torch, torchvision, numpy, pillow and (for
the tests) pytest -- all preinstalled on the course's GPU machine (Python 3.12, torch 2.11, torchvision 0.26); it
does not import pycocotools or the notebooks' widgets, so no venv is needed there.

:data:`TRAINING_CASES` is the list of each chapter's model at full scale, shared with the CPU test of one step at
the ``gpu`` sizes (``tests/instructor/test_gpu_profile_step.py``): a new chapter adds one entry.
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

REPO = Path(__file__).resolve().parents[1]
__all__ = ["TrainingCase", "TRAINING_CASES", "random_detection_batch", "train_steps", "recipe_timing", "main"]


@dataclass(frozen=True)
class TrainingCase:
    """One chapter's model: ``build(profile)`` -> ``(model, loss_fn, make_batch)``, ``make_batch(n, (h, w))`` a
    batch of ``n`` random images of that size (with targets) in the form ``loss_fn`` takes."""

    chapter: str
    name: str
    build: Callable
    detector: bool = True  # compared CUDA vs CPU (detectors only)


def random_detection_batch(n: int, size: tuple[int, int], num_classes: int, seed: int = 0):
    """``(images, targets)``: ``n`` random float images in [0, 1] and 3 boxes each, from 24 px to half the image."""
    g = torch.Generator().manual_seed(seed)
    h, w = size
    images, targets = [], []
    for _ in range(n):
        images.append(torch.rand(3, h, w, generator=g))
        side = torch.empty(3, 2).uniform_(24, max(25, min(h, w) / 2), generator=g)
        x1 = torch.rand(3, generator=g) * (w - side[:, 0])
        y1 = torch.rand(3, generator=g) * (h - side[:, 1])
        boxes = torch.stack([x1, y1, x1 + side[:, 0], y1 + side[:, 1]], 1)
        targets.append({"boxes": boxes, "labels": torch.randint(1, num_classes, (3,), generator=g)})
    return images, targets


def _detection_loss(model, batch):
    images, targets = batch
    return model(images, targets)


def _detector_kwargs(profile) -> dict:
    """The profile's detector sizes, as chapters 5 and 7 pass them (paper: 800/1333 px, 2000 proposals, 512 RoIs)."""
    return dict(min_size=profile.resize.faster_rcnn.min_size, max_size=profile.resize.faster_rcnn.max_size,
                rpn_pre_nms_top_n_train=profile.proposals.train, rpn_post_nms_top_n_train=profile.proposals.train,
                rpn_pre_nms_top_n_test=profile.proposals.test, rpn_post_nms_top_n_test=profile.proposals.test,
                box_batch_size_per_image=profile.proposals.rois_per_image)


def _detector(builder, num_classes=21, own_config=False):
    def build(profile):
        # own_config: the builder's defaults are its paper's (R-FCN: 600 px, 300 RoIs, OHEM), as its chapter runs it
        kwargs = {} if own_config else _detector_kwargs(profile)
        model = builder(num_classes=num_classes, **kwargs)
        return model, _detection_loss, lambda n, size, seed=0: random_detection_batch(n, size, num_classes, seed)
    return build


def _c4(profile):
    from course_lib.detection import fasterrcnn_resnet50_c4

    return _detector(fasterrcnn_resnet50_c4)(profile)


def _fpn(profile):
    from course_lib.detection import fasterrcnn_resnet50_fpn

    return _detector(fasterrcnn_resnet50_fpn)(profile)


def _rfcn(profile):
    from course_lib.detection.rfcn import rfcn_resnet101

    return _detector(rfcn_resnet101, own_config=True)(profile)


def _efpn(profile):
    from course_lib.detection.efpn import efpn_resnet50_fpn

    return _detector(efpn_resnet50_fpn)(profile)


def _fcn8s(profile):
    from course_lib.segmentation import FCN8s

    def batch(n, size, seed=0):
        g = torch.Generator().manual_seed(seed)
        return torch.rand(n, 3, *size, generator=g), torch.randint(0, 21, (n, *size), generator=g)

    def loss(model, b):
        return nn.functional.cross_entropy(model(b[0]), b[1], ignore_index=255)

    return FCN8s(21, width=profile.segmentation.width), loss, batch


TRAINING_CASES: list[TrainingCase] = [
    TrainingCase("02", "FCN-8s (VGG16)", _fcn8s, detector=False),
    TrainingCase("05", "Faster R-CNN R50-C4", _c4),
    TrainingCase("06", "R-FCN R101", _rfcn),
    TrainingCase("07", "Faster R-CNN R50-FPN", _fpn),
    TrainingCase("08", "EFPN R50", _efpn),
]


def train_steps(case: TrainingCase, profile, *, steps: int, batch_size: int, image_size: tuple[int, int],
                device: str, amp: bool, transform_size: tuple[int, int] | None = None) -> dict:
    """``steps`` steps of ``engine.fit`` on one random batch; returns s/step (the last step), peak memory, losses.
    ``transform_size``: the detector's (shorter side, longer side cap) instead of the profile's."""
    from course_lib.detection.transform import GeneralizedRCNNTransform
    from course_lib.engine import fit, seed_everything

    seed_everything(0)
    model, loss_fn, make_batch = case.build(profile)
    if transform_size is not None:
        for m in model.modules():
            if isinstance(m, GeneralizedRCNNTransform):
                m.min_size, m.max_size = (transform_size[0],), transform_size[1]
    batch = make_batch(batch_size, image_size)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=1e-3, momentum=0.9)
    times = []
    last = [time.perf_counter()]

    def tick(step, record):
        if device == "cuda":
            torch.cuda.synchronize()
        now = time.perf_counter()
        times.append(now - last[0])
        last[0] = now

    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    history = fit(model, [batch], lambda m, b: loss_fn(m, b[0]), optimizer, steps=steps, batch_size=1,
                  collate_fn=lambda items: items, device=device, amp=amp, progress=False, callback=tick)
    out = {"s_per_step": times[-1], "loss": history.last["loss"]}
    if device == "cuda":
        out["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
    return out


def recipe_timing(case: TrainingCase, profile, *, device: str, amp: bool, steps: int = 2, scale: float = 1.0,
                  images_per_gpu: int | None = None) -> dict:
    """One training step of ``case`` at its chapter's paper recipe (``course_lib.recipes``): the recipe's images per
    GPU and input size (x ``scale``, for a dry run on a CPU). Returns s/iteration, peak GiB (CUDA), and the hours
    one such GPU needs for every recipe of the chapter (all of EFPN's stages) at that speed, beside the README's
    estimate for the same images (``recipes.estimated_gpu_hours``)."""
    from course_lib import recipes

    runs = [r for key, r in recipes.RECIPES.items() if key.split(".")[0] == case.chapter]
    recipe = runs[-1] if case.name.startswith("EFPN") else runs[0]  # EFPN's model is the stages after the baseline
    n = recipe.images_per_gpu if images_per_gpu is None else images_per_gpu
    side = max(32, round(recipe.min_size * scale))
    cap = None if recipe.max_size is None else max(side, round(recipe.max_size * scale))
    size = (side, side if cap is None else min(cap, round(side * 4 / 3)))  # a 3:4 image, as VOC's and COCO's are
    out = train_steps(case, profile, steps=steps, batch_size=n, image_size=size, device=device, amp=amp,
                      transform_size=None if not case.detector else (side, cap))
    images = sum(r.images_seen for r in runs)
    out.update(recipe=recipe.chapter, batch=n, size=size, images=images,
               gpu_hours=out["s_per_step"] / n * images / 3600,
               readme_hours=sum(recipes.estimated_gpu_hours(r) for r in runs))
    return out


# ------------------------------------------------------------------------------------------- the checks


def _cuda_tests() -> list[tuple[str, str, str]]:
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", "cuda", "tests/ops"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    summary = (proc.stdout.strip().splitlines() or ["no output"])[-1]
    ok = proc.returncode == 0 and "skipped" not in summary
    return [("CUDA tests (pytest -k cuda tests/ops)", "ok" if ok else "FAIL", summary)]


def _relative_difference(x: torch.Tensor, y: torch.Tensor) -> float:
    """max |x - y| / max |x| (0 for two empty tensors, inf for different shapes)."""
    if x.shape != y.shape:
        return float("inf")
    if x.numel() == 0:
        return 0.0
    y = y.to(x.device)
    return float((x - y).abs().max() / x.abs().max().clamp(min=1e-12))


def _equivalence(case: TrainingCase, profile, devices=("cpu", "cuda"), image_size=(480, 640)) -> tuple[str, str, str]:
    """One batch through the detector on two devices (same weights, TF32 off): the largest relative differences of
    the features, the RPN head's outputs, and the RoI head's ``predict`` outputs on the first device's proposals."""
    tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        torch.manual_seed(0)
        model, _, make_batch = case.build(profile)
        model.eval()
        images, _ = make_batch(1, image_size)
        results, proposals = {}, None
        for device in devices:
            m = model.to(device)
            with torch.no_grad():
                image_list, _, _ = m.prepare([im.to(device) for im in images])
                features = m.features(image_list)
                objectness, deltas = m.rpn.head(m.rpn.select_features(features))
                if proposals is None:
                    proposals = [p[:300].cpu() for p in m.proposals(image_list, features)[0]]
                scores = m.roi_heads.predict(features, [p.to(device) for p in proposals], image_list.image_sizes)
            results[device] = {"features": list(features.values()), "rpn": [*objectness, *deltas],
                               "roi head": list(scores)}
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
    a, b = (results[d] for d in devices)
    worst = {key: max([_relative_difference(x, y) for x, y in zip(a[key], b[key])], default=0.0) for key in a}
    rois = sum(len(p) for p in proposals)
    ok = all(v < 1e-3 for v in worst.values()) and rois > 0  # no RoIs would make the head's comparison empty
    return (f"{case.chapter} {case.name}: {devices[1]} = {devices[0]}", "ok" if ok else "FAIL",
            ", ".join(f"{k} {v:.1e}" for k, v in worst.items()) + f" on {rois} RoIs (max |diff| / max |x|, "
            "TF32 off; < 1e-3)")


def _result_lines(stdout: str) -> list[str]:
    """A benchmark's result table: from its header (the line with ``ratio`` or ``x tv``) to the next blank line;
    else its last four lines."""
    lines = [line.rstrip() for line in stdout.splitlines()]
    head = next((i for i, line in enumerate(lines) if re.search(r"\bratio\b|x tv", line)
                 and not line.startswith("target")), None)
    if head is None:
        return [line for line in lines if line.strip()][-4:]
    end = next((j for j in range(head + 1, len(lines)) if not lines[j].strip()), len(lines))
    return lines[head:end]


def _bench(deadline: float) -> list[tuple[str, str, str]]:
    """The benchmark scripts, each within what is left of the check's time budget (``deadline``, perf_counter)."""
    rows = []
    for script, args, note in (("bench_fpn.py", ["--rounds", "1", "--repeats", "2", "--device", "cuda"], "CUDA"),
                               ("bench_lineage.py", ["--images", "1", "--device", "cuda"], "CUDA"),
                               ("bench_ops.py", ["--repeats", "5"], "CPU: the script has no --device")):
        left = deadline - time.perf_counter()
        if left < 30:
            rows.append((script, "skip", "the check's 8-minute budget is spent"))
            continue
        start = time.perf_counter()
        try:
            proc = subprocess.run([sys.executable, str(REPO / "tests" / "benchmarks" / script), *args], cwd=REPO,
                                  capture_output=True, text=True, timeout=min(240, left),
                                  env={**os.environ, "PYTHONPATH": str(REPO)})
        except subprocess.TimeoutExpired:
            rows.append((script, "FAIL", f"over {min(240, left):.0f} s"))
            continue
        lines = _result_lines(proc.stdout)
        status = "ok" if proc.returncode == 0 else "FAIL"
        detail = f"{note}, {time.perf_counter() - start:.0f} s" + ("" if proc.returncode == 0 else
                                                             f"; {(proc.stderr.strip().splitlines() or [''])[-1]}")
        rows.append((script, status, detail))
        rows += [("", "", line) for line in lines[:12]]
    return rows


def _table(rows: list[tuple[str, str, str]]) -> str:
    w0 = max(len(r[0]) for r in rows)
    lines = [f"{'check':<{w0}}  {'result':<6}  detail", "-" * (w0 + 60)]
    lines += [f"{a:<{w0}}  {b:<6}  {c}" for a, b, c in rows]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m course_lib.gpu_check", description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=2, help="AMP training steps per model (default 2)")
    parser.add_argument("--skip-tests", action="store_true")
    parser.add_argument("--skip-bench", action="store_true")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("gpu-check skipped: no CUDA device (torch.cuda.is_available() is False on this machine, torch "
              f"{torch.__version__}). Run `make gpu-check` on a machine with an NVIDIA GPU.")
        return 0
    from course_lib.profiles import PROFILES

    gpu = PROFILES["gpu"]
    started = time.perf_counter()
    rows = [("device", "", f"{torch.cuda.get_device_name(0)}, torch {torch.__version__}, CUDA {torch.version.cuda}, "
                           f"Python {sys.version.split()[0]}")]
    if not args.skip_tests:
        rows += _cuda_tests()
    for case in TRAINING_CASES:
        if case.detector:
            try:
                rows.append(_equivalence(case, gpu))
            except Exception as e:  # one failure must not hide the other rows
                rows.append((f"{case.chapter} {case.name}: CUDA = CPU", "FAIL", f"{type(e).__name__}: {e}"[:200]))
    for case in TRAINING_CASES:
        size = gpu.data.multiscale_size if case.detector else (gpu.segmentation.crop_size, gpu.segmentation.crop_size)
        batch = gpu.detector.batch_size if case.detector else gpu.segmentation.batch_size
        try:
            r = train_steps(case, gpu, steps=args.steps, batch_size=batch, image_size=size, device="cuda", amp=True)
            ok = torch.isfinite(torch.tensor(r["loss"])).item()
            rows.append((f"{case.chapter} {case.name}: {args.steps} AMP steps", "ok" if ok else "FAIL",
                         f"{r['s_per_step']:.3f} s/step, peak {r['peak_gib']:.1f} GiB, batch {batch} x {size[0]}x{size[1]}, "
                         f"loss {r['loss']:.3f}"))
        except Exception as e:
            rows.append((f"{case.chapter} {case.name}: {args.steps} AMP steps", "FAIL", f"{type(e).__name__}: {e}"[:200]))
        torch.cuda.empty_cache()
    for case in TRAINING_CASES:
        label = f"{case.chapter} {case.name}: paper recipe, 1 step"
        try:
            r = recipe_timing(case, gpu, device="cuda", amp=True)
            rows.append((label, "ok", f"{r['s_per_step']:.3f} s/iter at {r['batch']} x {r['size'][0]}x{r['size'][1]}, "
                                      f"peak {r['peak_gib']:.1f} GiB; its {r['images'] / 1e6:.2f} M images: "
                                      f"{r['gpu_hours']:.0f} h on this GPU (README est. {r['readme_hours']:.0f} h)"))
        except Exception as e:
            rows.append((label, "FAIL", f"{type(e).__name__}: {e}"[:200]))
        torch.cuda.empty_cache()
    if not args.skip_bench:
        rows += _bench(deadline=started + 7.5 * 60)
    rows.append(("total", "", f"{time.perf_counter() - started:.0f} s"))
    print(_table(rows))
    return 0 if all(r[1] != "FAIL" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
