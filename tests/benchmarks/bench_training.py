"""Training throughput of the ``cpu`` profile: images per second of one optimiser step of every chapter's model.

Run by hand; pytest does not collect it (no ``test_`` prefix)::

    .venv/bin/python tests/benchmarks/bench_training.py                          # every model, cpu profile
    .venv/bin/python tests/benchmarks/bench_training.py --models c4 fpn --steps 5
    .venv/bin/python tests/benchmarks/bench_training.py --compare channels_last  # the option against the baseline
    .venv/bin/python tests/benchmarks/bench_training.py --baseline channels_last --compare bf16 --clock cpu
    .venv/bin/python tests/benchmarks/bench_training.py --workers 2 0 --steps 25  # fit with its data loading: 2 vs 0
    .venv/bin/python tests/benchmarks/bench_training.py --smoke                  # ci sizes, one step: the script runs

Each model is built as its notebook builds it, at the profile's sizes, widths, batch and proposal counts
(``course_lib.profiles``): FCN-8s (02), U-Net (03, valid padding, the eq. 2 weighted loss), Fast R-CNN VGG16 (04,
``--proposals``-style random boxes in place of selective search, which the notebook computes once before training),
Faster R-CNN R50-C4 (05), R-FCN R50 with OHEM (06), Faster R-CNN R50-FPN (07) and EFPN stage 2 (08: the
extension trained by cross-resolution distillation, the FPN frozen). One batch of synthetic images of the profile's
size (the course's own generators), the notebooks' loss functions, the optimiser the notebook uses, gradient clipping
at 10 -- through ``course_lib.engine``'s own step (``engine._step``), so what is timed is what ``fit`` runs, minus
data loading (timed on its own: ``--loading``; ``--workers A B`` times ``fit`` itself over the generated data with A
against B DataLoader processes, interleaved: on 2 cores the processes take CPU time from the training threads).

``--compare OPTION`` builds the model twice from the same seed, once in the default (contiguous) layout in float32
-- ``fit(..., channels_last=False)`` -- and once with the option, and alternates their steps in one process (A, B,
B, A, ...), so that the load of a shared machine falls on both alike; it prints the medians and the ratio (> 1: the
option is faster). Options join with ``+`` (``channels_last+bf16``); ``--baseline OPTIONS`` gives the baseline
options too (``--baseline channels_last``: what ``fit`` runs on the CPU), which the compared run then adds to:

* ``channels_last``: the model's 4-d weights (and so its activations) in channels-last memory format (what ``fit``
  does by default on the CPU, except for a model with ``channels_last_on_cpu = False``);
* ``bf16``: ``torch.autocast("cpu", bfloat16)`` (``fit(amp=True)`` on the CPU);
* ``flush_denormal``: ``torch.set_flush_denormal(True)`` (denormal floats read as zero);
* ``compile``: ``torch.compile`` of the backbone; its first step (the compilation) is printed apart, against
  the steps a notebook runs;
* ``threads1``: one intra-op thread in place of ``torch.get_num_threads()``;
* ``unfused``: the optimiser's for-loop implementation in place of the fused one that ``detector_optimizer`` builds;
* ``scratch``: the detectors (C4, R-FCN, FPN, EFPN) from random weights with every stage and batch norm trainable,
  as the ``cpu`` profile trained them before its pretrained start (``course_lib.pretraining``); by default they
  start as the notebooks build them, from ``backbone_weights(profile)``: batch norms frozen and the stem and
  conv2_x not trained (``trainable_backbone_layers`` 3, the papers' fine-tuning), so their backward pass is shorter.

``--clock cpu`` times the process's CPU seconds with OpenMP's idle threads asleep, in place of the wall clock: on a
machine shared with other jobs a thread that waits for a descheduled one can make a step ten times as long.

Each model runs in a spawned process of its own (``_process.in_fresh_process``). Absolute numbers move with the
machine's load (printed first); the ratios of ``--compare`` are the numbers to read.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
from _process import in_fresh_process  # this folder: a script's own folder is on sys.path

MODELS = ("fcn8s", "unet", "fast_rcnn", "c4", "rfcn", "fpn", "efpn")
NAMES = {"fcn8s": "FCN-8s", "unet": "U-Net", "fast_rcnn": "Fast R-CNN", "c4": "Faster R-CNN C4", "rfcn": "R-FCN",
         "fpn": "FPN", "efpn": "EFPN stage 2"}
OPTIONS = ("channels_last", "bf16", "flush_denormal", "compile", "threads1", "unfused", "scratch")
SEG_CLASSES, MULTI_CLASSES, SIGN_CLASSES = 6, 6, 16  # the synthetic sets' classes + background


def _detection_batch(kind: str, count: int, height: int, width: int):
    """``(images, targets)`` as ``CocoDetection`` + ``detection_collate`` give them: uint8 images, xyxy boxes."""
    if kind == "multiscale":
        from course_lib.data.synthetic.multiscale import generate_image
    else:
        from course_lib.data.synthetic.traffic_signs import generate_image
    images, targets = [], []
    for i in range(count):
        array, annotations = generate_image(0, i, height, width)
        boxes = torch.tensor([a["bbox"] for a in annotations], dtype=torch.float32).reshape(-1, 4)
        boxes[:, 2:] += boxes[:, :2]
        images.append(torch.from_numpy(array).permute(2, 0, 1).contiguous())
        targets.append({"boxes": boxes, "labels": torch.tensor([a["category_id"] for a in annotations]),
                        "image_id": torch.tensor(i)})
    return images, targets


def _random_boxes(count: int, height: int, width: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(count, 2, generator=g) * torch.tensor([width * 0.8, height * 0.8])
    wh = 8 + torch.rand(count, 2, generator=g) * torch.tensor([width * 0.4, height * 0.4])
    return torch.cat([xy, (xy + wh).clamp(max=torch.tensor([width - 1.0, height - 1.0]))], 1)


def build(name: str, profile, scratch: bool = False):
    """``(model, loss_fn, optimizer, lr_scheduler, batch, images per batch)`` as the notebook trains it (``scratch``:
    the detectors from random weights, every layer trainable)."""
    import torch.nn.functional as F

    from course_lib.detection import detection_loss
    from course_lib.engine import detector_optimizer
    from course_lib.pretraining import backbone_weights
    from course_lib.profiles import EFPN_SMALL_ROI_SIZE

    p = profile
    if p.detector.optimizer == "recipe":  # the gpu profile's steps and rates are its recipes' (engine.recipe_optimizer)
        raise SystemExit(f"bench_training times a profile with steps of its own (ci, cpu, colab), not {p.name!r}, whose "
                         "runs are the papers' recipes: make gpu-check times those.")
    det = lambda m, steps: detector_optimizer([q for q in m.parameters() if q.requires_grad],  # noqa: E731
                                              kind=p.detector.optimizer, lr=p.detector.lr, steps=steps)
    if name == "fcn8s":
        from course_lib.segmentation import FCN8s

        model = FCN8s(SEG_CLASSES, width=p.segmentation.width)
        g = torch.Generator().manual_seed(0)
        images = torch.randint(0, 256, (p.segmentation.batch_size, 3, p.segmentation.crop_size, p.segmentation.crop_size), generator=g,
                               dtype=torch.uint8)
        masks = torch.randint(0, SEG_CLASSES, (p.segmentation.batch_size, p.segmentation.crop_size, p.segmentation.crop_size), generator=g)
        loss = lambda m, b: F.cross_entropy(m(b[0]), b[1], ignore_index=255)  # noqa: E731
        return model, loss, torch.optim.Adam(model.parameters(), lr=3e-4), None, (images, masks), p.segmentation.batch_size
    if name == "unet":
        from course_lib.segmentation import UNet, weighted_cross_entropy

        out = (p.segmentation.crop_size - 4) // 16 * 16 + 4
        size = out + 184
        model = UNet(3, SEG_CLASSES, padding="valid", width=p.segmentation.width)
        g = torch.Generator().manual_seed(0)
        batch = (torch.rand(p.segmentation.batch_size, 3, size, size, generator=g),
                 torch.randint(0, SEG_CLASSES, (p.segmentation.batch_size, out, out), generator=g),
                 torch.rand(p.segmentation.batch_size, out, out, generator=g), 1 + torch.rand(p.segmentation.batch_size, out, out, generator=g))
        loss = lambda m, b: weighted_cross_entropy(m(b[0]), b[1], b[3], ignore_index=255)  # noqa: E731
        return model, loss, torch.optim.Adam(model.parameters(), lr=3e-4), None, batch, p.segmentation.batch_size
    if name == "fast_rcnn":
        from course_lib.detection import fast_rcnn_vgg16

        model = fast_rcnn_vgg16(MULTI_CLASSES, width=p.rcnn.width, min_size=p.resize.fast_rcnn.min_size,
                                max_size=p.resize.fast_rcnn.max_size)
        images, targets = _detection_batch("multiscale", 2, *p.data.multiscale_size)
        proposals = [_random_boxes(p.selective_search.max_proposals, *p.data.multiscale_size, seed=i) for i in range(2)]
        optimizer = torch.optim.SGD(model.parameters(), lr=0.005, momentum=0.9, weight_decay=5e-4)
        return model, detection_loss, optimizer, None, (images, proposals, targets), 2
    images, targets = _detection_batch("signs" if name == "efpn" else "multiscale", p.detector.batch_size,
                                       *(p.data.small_objects_size if name == "efpn" else p.data.multiscale_size))
    batch = (images, targets)
    start = dict(weights_backbone=None if scratch else backbone_weights(p))  # the notebooks': the pretrained file
    if name == "c4":
        from course_lib.detection import fasterrcnn_resnet50_c4

        model = fasterrcnn_resnet50_c4(
            num_classes=MULTI_CLASSES, width=p.detector.width, **start, head_batch_norm=p.detector.c4_head_batch_norm,
            min_size=p.resize.faster_rcnn.min_size, max_size=p.resize.faster_rcnn.max_size,
            rpn_anchor_sizes=p.detector.c4_anchor_sizes, rpn_post_nms_top_n_train=p.proposals.train,
            rpn_post_nms_top_n_test=p.proposals.test, box_batch_size_per_image=p.proposals.rois_per_image)
        return (model, detection_loss, *det(model, p.steps.faster_rcnn), batch, p.detector.batch_size)
    if name == "rfcn":
        from course_lib.detection.rfcn import rfcn_resnet50, rfcn_resnet101

        rfcn = {50: rfcn_resnet50, 101: rfcn_resnet101}[p.detector.rfcn_depth]
        model = rfcn(num_classes=MULTI_CLASSES, **start, ohem_batch_size_per_image=p.proposals.rfcn_ohem_rois, width=p.detector.width,
                     rpn_anchor_sizes=p.detector.c4_anchor_sizes, min_size=p.resize.rfcn.min_size, max_size=p.resize.rfcn.max_size,
                     rpn_pre_nms_top_n_train=20 * p.proposals.rfcn, rpn_post_nms_top_n_train=p.proposals.rfcn,
                     rpn_pre_nms_top_n_test=20 * p.proposals.rfcn, rpn_post_nms_top_n_test=p.proposals.rfcn)
        return (model, detection_loss, *det(model, p.steps.rfcn), batch, p.detector.batch_size)
    from course_lib.detection.faster_rcnn_fpn import fasterrcnn_resnet50_fpn

    sizes = (dict(min_size=p.resize.efpn.min_size, max_size=p.resize.efpn.max_size) if name == "efpn"
             else dict(min_size=p.resize.fpn.min_size, max_size=p.resize.fpn.max_size))
    model = fasterrcnn_resnet50_fpn(
        num_classes=SIGN_CLASSES if name == "efpn" else MULTI_CLASSES, width=p.detector.width, **sizes, **start,
        rpn_pre_nms_top_n_train=p.proposals.train, rpn_post_nms_top_n_train=p.proposals.train,
        rpn_pre_nms_top_n_test=p.proposals.test, rpn_post_nms_top_n_test=p.proposals.test,
        box_batch_size_per_image=p.proposals.efpn_rois_per_image if name == "efpn" else p.proposals.rois_per_image)
    if name == "fpn":
        return (model, detection_loss, *det(model, p.steps.fpn), batch, p.detector.batch_size)
    from course_lib.detection.efpn import CrossResolutionDistillation, efpn_from_fpn, set_stage

    model = efpn_from_fpn(model, small_roi_size=EFPN_SMALL_ROI_SIZE)
    params = set_stage(model, 2)
    optimizer, schedule = detector_optimizer(params, kind=p.detector.optimizer, lr=p.detector.lr, steps=p.steps.efpn_distill)
    return model, CrossResolutionDistillation(lam=1.0), optimizer, schedule, batch, p.detector.batch_size


class _Runner:
    """One model as ``fit(..., channels_last=False)`` trains it, plus the ``options`` (a set of ``OPTIONS``);
    ``step()`` runs and times one step."""

    def __init__(self, name: str, profile, options: frozenset[str], threads: int, clock=time.perf_counter):
        from course_lib import engine

        self.engine, self.options, self.threads, self.clock = engine, options, threads, clock
        torch.manual_seed(0)
        model, loss_fn, self.optimizer, self.schedule, self.batch, self.images = build(name, profile, "scratch" in options)
        self.model = model.train()
        self.amp = "bf16" in options
        if "unfused" in options:  # Adam(W) and SGD read the flags of each group at every step
            for group in self.optimizer.param_groups:
                group["fused"], group["foreach"] = None, False
        if "channels_last" in options:
            self.model.to(memory_format=torch.channels_last)
        forward_model = self.model
        if "compile" in options:
            body = getattr(self.model, "backbone", None)
            if body is not None:
                self.model.backbone = torch.compile(body)
            else:
                forward_model = torch.compile(self.model)
        self.forward = lambda batch: loss_fn(forward_model, batch)
        self.scaler = torch.amp.GradScaler("cpu", enabled=False)  # fit: no loss scaling in bfloat16
        self.step_number = 0

    def step(self) -> float:
        torch.set_flush_denormal("flush_denormal" in self.options)
        torch.set_num_threads(1 if "threads1" in self.options else self.threads)
        self.step_number += 1
        start = self.clock()
        self.engine._step(self.step_number, self.batch, self.forward, self.model, self.optimizer, self.schedule,
                          self.scaler, amp=self.amp, amp_dtype=torch.bfloat16, device=torch.device("cpu"),
                          grad_clip=10.0, world=1)
        return self.clock() - start


def _options(text: str) -> frozenset[str]:
    """``"channels_last+bf16"`` -> the set of options; an unknown one is refused by name."""
    names = frozenset(o for o in text.split("+") if o)
    unknown = sorted(names - set(OPTIONS))
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown option(s) {', '.join(unknown)} in {text!r}: join some of "
                                         f"{', '.join(OPTIONS)} with '+'")
    return names


def _measure(name: str, profile_name: str, baseline: frozenset[str], option: frozenset[str] | None, steps: int,
             warmup: int, threads: int, clock: str = "wall", replace: bool = False) -> dict:
    """In a child process: the baseline's (and the option's) step times, alternated, after ``warmup`` steps each.
    The option's run has the baseline's options too, unless ``replace``."""
    from course_lib.profiles import get_profile

    threads = threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    profile = get_profile(profile_name)
    timer = time.perf_counter if clock == "wall" else time.process_time
    runners = {"baseline": _Runner(name, profile, baseline, threads, timer)}
    if option is not None:
        runners["option"] = _Runner(name, profile, option if replace else baseline | option, threads, timer)
    first = {key: r.step() for key, r in runners.items()}  # the first step: allocations, compilation
    for _ in range(warmup - 1):
        for r in runners.values():
            r.step()
    times = {key: [] for key in runners}
    for i in range(steps):
        order = list(runners) if i % 2 == 0 else list(runners)[::-1]  # ABBA: neither always goes first
        for key in order:
            times[key].append(runners[key].step())
    return {"images": runners["baseline"].images, "threads": threads, "first": first,
            "median": {key: statistics.median(t) for key, t in times.items()}, "times": times}


def _loading(profile_name: str, batches: int) -> dict:
    """Seconds to load and collate one detection batch from the generated data set, as fit's DataLoader does."""
    from course_lib.data import CocoDetection, dataset_dir, detection_collate
    from course_lib.profiles import get_profile

    profile = get_profile(profile_name)
    root = dataset_dir("multiscale")
    dataset = CocoDetection(root / "images", root / "annotations" / "instances_train.json")
    start = time.perf_counter()
    for i in range(batches):
        detection_collate([dataset[(i * profile.detector.batch_size + j) % len(dataset)]
                           for j in range(profile.detector.batch_size)])
    return {"seconds": (time.perf_counter() - start) / batches, "root": str(root)}


LOADED = ("fcn8s", "c4", "rfcn", "fpn")  # the models --workers times: each trains on a generated data set by fit


def _fit_workers(name: str, profile_name: str, workers: tuple[int, int], steps: int, rounds: int) -> dict:
    """Seconds per step of ``fit`` itself -- loading from the generated data set included -- with ``workers[0]`` and
    ``workers[1]`` DataLoader processes, alternating runs of ``steps`` steps (A, B, B, A, ...) of one model each; the
    median step interval after a run's first step (which waits for the loader to start), and -- the figure that
    decides -- the median of each whole call's seconds per step, the loader's starts and stops included (fit starts a
    loader every epoch): what a notebook's training run pays. One untimed call per arm comes first."""
    from torchvision import tv_tensors
    from torchvision.transforms import v2

    from course_lib.data import CocoDetection, SegmentationDataset, dataset_dir, detection_collate
    from course_lib.engine import fit
    from course_lib.profiles import get_profile

    profile = get_profile(profile_name)
    if name == "fcn8s":  # 02's training crops
        crop = profile.segmentation.crop_size
        dataset = SegmentationDataset(dataset_dir("segmentation"), "train", transforms=v2.Compose([
            v2.RandomCrop(crop, pad_if_needed=True, fill={tv_tensors.Image: 0, tv_tensors.Mask: 255}),
            v2.RandomHorizontalFlip()]))
        collate = None
    else:
        root = dataset_dir("multiscale")
        dataset = CocoDetection(root / "images", root / "annotations" / "instances_train.json")
        collate = detection_collate
    runs = {count: build(name, profile) for count in workers}  # model, loss, optimizer, schedule, batch, images
    batch = runs[workers[0]][5]
    for count in workers:  # one untimed call each: the process's one-off warm-up falls on neither
        model, loss, optimizer = runs[count][:3]
        fit(model, dataset, loss, optimizer, steps=2, batch_size=batch, collate_fn=collate, device="cpu",
            grad_clip=10.0, num_workers=count, progress=False)
    times: dict[int, list[float]] = {count: [] for count in workers}
    whole: dict[int, list[float]] = {count: [] for count in workers}  # a fit call's seconds / its steps
    for i in range(rounds):
        for count in workers if i % 2 == 0 else workers[::-1]:
            model, loss, optimizer = runs[count][:3]
            stamps, start = [], time.perf_counter()
            fit(model, dataset, loss, optimizer, steps=steps, batch_size=batch, collate_fn=collate,
                device="cpu", grad_clip=10.0, num_workers=count, progress=False, seed=i,
                callback=lambda step, record: stamps.append(time.perf_counter()))
            times[count] += [b - a for a, b in zip(stamps, stamps[1:])]
            whole[count].append((time.perf_counter() - start) / steps)
    return {"median": {count: statistics.median(t) for count, t in times.items()}, "images": batch,
            "whole": {count: statistics.median(t) for count, t in whole.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    parser.add_argument("--profile", default="cpu", help="the profile whose sizes are timed (default: cpu)")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per model (and per option)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    parser.add_argument("--threads", type=int, default=0, help="intra-op threads (default: torch's choice)")
    parser.add_argument("--compare", type=_options, help="time the baseline plus these options (joined by '+', "
                        f"of {', '.join(OPTIONS)}) against the baseline, interleaved")
    parser.add_argument("--against", type=_options, help="time these options as they are (not added to the "
                        "baseline's) against the baseline, interleaved: --baseline scratch+unfused --against "
                        "channels_last is the cpu profile before issue 23 and the pretrained start against today's")
    parser.add_argument("--baseline", type=_options, default=frozenset(),
                        help="options of the baseline too (default none: contiguous, float32, the optimiser as built)")
    parser.add_argument("--workers", type=int, nargs=2, metavar=("A", "B"),
                        help="time fit itself, loading from the generated data included, with A against B DataLoader "
                             f"processes, interleaved (models {', '.join(LOADED)}; e.g. --workers 2 0)")
    parser.add_argument("--rounds", type=int, default=4, help="--workers: runs of --steps steps per worker count")
    parser.add_argument("--loading", action="store_true",
                        help="also time loading one detection batch from the generated data (data/<COURSE_PROFILE>, or $COURSE_DATA_DIR)")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="time steps by the wall clock (default), or by the CPU seconds of the process with "
                             "OMP_WAIT_POLICY=passive (idle threads sleep): on a loaded machine, where waiting for a "
                             "descheduled thread can stretch a step tenfold, CPU seconds still measure the work")
    parser.add_argument("--smoke", action="store_true", help="ci sizes, one step: checks the script runs")
    args = parser.parse_args()
    if args.compare is not None and args.against is not None:
        parser.error("give --compare (options added to the baseline's) or --against (options as they are), not both")
    replace = args.against is not None
    if replace:
        args.compare = args.against
    if args.smoke:
        args.profile, args.steps, args.warmup = "ci", 1, 1
    if args.clock == "cpu":
        os.environ["OMP_WAIT_POLICY"] = "passive"  # read by the spawned processes' OpenMP at start

    print(f"profile {args.profile}, torch {torch.__version__}, CPU capability "
          f"{torch.backends.cpu.get_cpu_capability()}, {os.cpu_count()} cores, load average "
          f"{os.getloadavg()[0]:.1f}; {args.steps} timed steps after {args.warmup} warm-up"
          + ("; CPU seconds (not wall), OMP_WAIT_POLICY=passive" if args.clock == "cpu" else "")
          + (f"; baseline {'+'.join(sorted(args.baseline)) or 'contiguous float32'}" +
             (f", against it {'' if replace else 'plus '}{'+'.join(sorted(args.compare)) or 'contiguous float32'}, "
              "interleaved" if args.compare is not None else "")))
    if args.workers is not None:
        a, b = args.workers
        if a == b or min(a, b) < 0:
            parser.error(f"--workers {a} {b}: two different numbers of DataLoader processes, each >= 0")
        print(f"fit over the generated data, {args.steps} steps a call, {args.rounds} calls each: s/step of the steps "
              "after a call's first, and of whole calls (the loader's start included); ratio > 1: "
              f"{b} workers train faster")
        print(f"{'model':18s}{f'{a} workers':>12s}{f'{b} workers':>12s}{'ratio':>8s}{f'whole {a}':>12s}"
              f"{f'whole {b}':>12s}{'ratio':>8s}")
        for name in (m for m in args.models if m in LOADED):
            r = in_fresh_process(_fit_workers, name, args.profile, (a, b), max(args.steps, 3), args.rounds)
            (ta, tb), (wa, wb) = ((r[key][a], r[key][b]) for key in ("median", "whole"))
            print(f"{NAMES[name]:18s}{ta:12.3f}{tb:12.3f}{ta / tb:7.2f}x{wa:12.3f}{wb:12.3f}{wa / wb:7.2f}x", flush=True)
        return
    header = f"{'model':18s}{'images':>7s}{'s / step':>10s}{'images/s':>10s}"
    if args.compare is not None:
        header += f"{'option s/step':>15s}{'ratio':>8s}{'1st step (s)':>20s}"
    print(header)
    ratios = []
    for name in args.models:
        r = in_fresh_process(_measure, name, args.profile, args.baseline, args.compare, args.steps, args.warmup,
                             args.threads, args.clock, replace)
        base = r["median"]["baseline"]
        line = f"{NAMES[name]:18s}{r['images']:7d}{base:10.3f}{r['images'] / base:10.2f}"
        if args.compare is not None:
            option = r["median"]["option"]
            ratios.append(base / option)
            line += (f"{option:15.3f}{base / option:7.2f}x"
                     f"{r['first']['baseline']:9.1f} /{r['first']['option']:7.1f}")
        print(line, flush=True)
    if args.compare is not None:
        print(f"{'+'.join(sorted(args.compare)) or 'contiguous float32'}: geometric mean of the ratios {statistics.geometric_mean(ratios):.2f}x "
              "(> 1: the option trains faster)")
    if args.loading:
        r = in_fresh_process(_loading, args.profile, 10)
        print(f"loading + collating one detection batch from {r['root']}: {r['seconds']:.3f} s")
    if os.getloadavg()[0] > (os.cpu_count() or 1):
        print(f"note: load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores: absolute times are pessimistic")


if __name__ == "__main__":
    main()
