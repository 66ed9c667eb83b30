"""How big things are: the one place that decides data sizes and schedules.

Four profiles, chosen with the environment variable ``COURSE_PROFILE``:

* ``ci``  -- tiny data and schedules: every notebook runs in under 60 s on 2 CPU cores.
* ``cpu`` -- a laptop: visibly meaningful results in minutes.
* ``gpu`` -- instructors: the papers' full-scale models, each chapter's paper recipe (``course_lib.recipes``:
  optimiser, rate, schedule) from torchvision's ImageNet weights (``make weights`` once, online), CUDA and mixed
  precision.
* ``colab`` -- Colab's free T4 (15 GB): the papers' models from ImageNet at 2 images per batch, short fine-tuning
  schedules (not the papers' recipes).

Default: ``gpu`` when CUDA is available, else ``cpu``. ``make test`` sets ``ci``.

Profiles change sizes, schedules and where a backbone starts (random weights; ImageNet's in gpu and colab, with the
papers' recipes in gpu), never the models: a notebook runs the same cells in every profile.

One form: a :class:`Profile` is a few groups (frozen dataclasses), each named for what reads it --
``PROFILE.data`` (the synthetic datasets), ``PROFILE.segmentation`` (FCN / U-Net training),
``PROFILE.detector`` (every ResNet detector), ``PROFILE.resize`` (each detector's transform),
``PROFILE.proposals`` (RPN / RoI counts), ``PROFILE.steps`` (each detector training run) ... Their defaults
are the papers' values (and the course's full-scale data), so the ``gpu`` profile is ``Profile("gpu", ...)``
plus its machine; ``ci`` and ``cpu`` write out only what they shrink. A number that no profile changes is
a module constant below, not a field. Where the gpu value is a paper recipe's (a detector's steps and rate), the
field says ``None`` -- "the recipe's", read in one place, ``course_lib.engine`` -- so there is no second number to
disagree with ``course_lib.recipes``.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

__all__ = ["Profile", "PROFILES", "get_profile", "profile_names", "check_targets", "replace", "flatten",
           "OVERFIT_STEPS", "OVERFIT_STEPS_LONG", "EFPN_SMALL_ROI_SIZE"]

# every training chapter overfits two images first (engine.overfit / overfit_detector): Adam steps, in every profile
# (the detectors' overfit_detector at most: it stops at the first multiple of 50 steps where both checks pass)
OVERFIT_STEPS = 300
# chapters 4, 5 and 7's probes (Fast R-CNN from R-CNN's VGG16; C4 and FPN from the pretrained trunk, 32 sampled RoIs
# per image in cpu) learn two images more slowly than the others': at 300 steps, in cpu, Fast R-CNN's and FPN's AP50 on
# the two images was 0.867 and 0.876 (0.9 needed), C4's loss fell by 89.9 % (90 % needed); at 500 all three pass on
# seed 0 (AP50 1.0; loss down 98 / 97 / 94 %), FPN on seeds 1 and 2 too, C4 on seed 2 (on seed 1 its loss fell by 97 %
# but its AP50 was 0.875: one object of the two images missed)
OVERFIT_STEPS_LONG = 500
# EFPN: RoIs with sqrt(wh) below this go to P2' (Deng et al. 2021, sec. IV-A3: 56 px at 1400 px on TT100K)
EFPN_SMALL_ROI_SIZE = 56.0


@dataclass(frozen=True)
class SyntheticData:
    """The offline synthetic datasets (course_lib.data.make_synthetic): images, size."""
    segmentation_images: int = 1500
    segmentation_side: int = 384  # square
    small_objects_images: int = 1000  # small objects, modelled on Tsinghua-Tencent 100K
    small_objects_val_images: int = 200  # the last ones of them: the validation split
    small_objects_size: tuple[int, int] = (1024, 1024)  # (height, width)
    multiscale_images: int = 2000  # multi-scale objects for the R-CNN family and FPN
    multiscale_val_images: int = 400  # the last ones of them: the validation split
    multiscale_size: tuple[int, int] = (800, 1024)


@dataclass(frozen=True)
class PatchTraining:
    """Chapter 1: the sliding-window patch classifiers."""
    steps: int = 4000
    batch_size: int = 256  # patches per step


@dataclass(frozen=True)
class SegmentationTraining:
    """Chapters 2-3: each FCN and U-Net training run."""
    steps: int = 20000  # each U-Net run
    # each FCN stage with optimizer "adam" (None: the recipe sets FCN's own). Chapter 2 trains five stages per seed
    # (three of the paper's, two controls continuing the coarser net), three seeds
    fcn_stage_steps: int | None = None
    batch_size: int = 8
    crop_size: int = 320  # training crop side (pixels)
    width: float = 1.0  # channel width multiplier (1.0 = paper)
    optimizer: str = "recipe"  # FCN: "recipe" (its paper's SGD, course_lib.recipes "02") or "adam" (3e-4, from scratch)
    weights_backbone: str | None = "IMAGENET1K_V1"  # FCN's VGG16 (U-Net trains from scratch, as its paper)

    def __post_init__(self):
        if self.optimizer != "recipe" and not (isinstance(self.fcn_stage_steps, int) and self.fcn_stage_steps > 0):
            raise ValueError(f"SegmentationTraining(optimizer={self.optimizer!r}, fcn_stage_steps="
                             f"{self.fcn_stage_steps!r}): outside the paper's recipe each FCN stage needs its own "
                             "number of steps, a positive int (e.g. fcn_stage_steps=100).")


@dataclass(frozen=True)
class SelectiveSearch:
    """Selective search proposals: chapter 4's R-CNN and Fast R-CNN, and chapter 5's speed comparison."""
    images: int = 200  # images given proposals (training + evaluation)
    mode: str = "fast"  # strategies: "single" or R-CNN's "fast" (8 strategies)
    max_proposals: int = 2000  # per image (R-CNN: ~2000)
    processes: int = 8  # images searched in parallel (chapter 4; selective search is single-threaded NumPy)


@dataclass(frozen=True)
class RCNNNetwork:
    """Chapter 4's VGG16: R-CNN's, which Fast R-CNN starts from."""
    width: float = 1.0  # VGG16 channel width multiplier (1.0 = paper)
    warp_size: int = 224  # R-CNN's warped region side (paper: 224 for VGG16; context 16 * size / 224)
    optimizer: str = "recipe"  # "recipe" (the papers', course_lib.recipes "04.rcnn" / "04") or "sgd" (0.005, scratch)
    # the VGG16's start: torchvision's ImageNet weights; "pretrained": the course's own "ImageNet in miniature" file for
    # this width, its convolutions (course_lib.pretraining.backbone_weights(profile, "vgg16")); None: random
    weights_backbone: str | None = "IMAGENET1K_V1"


@dataclass(frozen=True)
class DetectorTraining:
    """Chapters 5-8: every ResNet detector, its optimiser (engine.detector_optimizer) and batch."""
    width: float = 1.0  # channel width multiplier (1.0 = paper)
    rfcn_depth: int = 101  # ResNet depth of R-FCN and of its C4 comparison (chapter 6)
    c4_anchor_sizes: tuple[int, ...] = (128, 256, 512)  # the single-level (C4, R-FCN) RPN's 3 scales (600 px)
    # "recipe" (each chapter's paper recipe, course_lib.recipes, scaled to batch_size x GPUs), or with lr: "sgd"
    # (engine.detector_optimizer's SGD) or "adamw" (from scratch, in a few hundred steps)
    optimizer: str = "recipe"
    lr: float | None = None  # "sgd" / "adamw" only (None: the recipe's)
    batch_size: int = 4  # images per GPU
    # the ResNet's start: torchvision's ImageNet weights; "pretrained": the course's own "ImageNet in miniature" file
    # for this width (course_lib.pretraining.backbone_weights finds it); None: random
    weights_backbone: str | None = "IMAGENET1K_V1"
    # the C4 detectors' conv5_x box head (chapters 5-7): "frozen" batch norm (the papers') or "trainable" (ci / cpu:
    # their pretraining's 64-px crops gave conv5_x 4 x 4 maps, not the 14 x 14 RoIs it pools; fasterrcnn_resnet50_c4)
    c4_head_batch_norm: str = "frozen"


@dataclass(frozen=True)
class Resize:
    """A detector transform's resize: shorter side, longer side cap (pixels)."""
    min_size: int
    max_size: int


@dataclass(frozen=True)
class DetectorResize:
    """Each detector's transform."""
    fast_rcnn: Resize = Resize(600, 1000)  # chapter 4 (Fast R-CNN paper)
    faster_rcnn: Resize = Resize(800, 1333)  # chapter 5's C4 and make gpu-check (Detectron's 800 / 1333)
    rfcn: Resize = Resize(600, 1000)  # chapter 6's R-FCN and C4 (R-FCN paper)
    fpn: Resize = Resize(800, 1333)  # chapter 7's FPN, C4 and ablation runs (FPN paper)
    efpn: Resize = Resize(1400, 1400)  # chapter 8's 1x input; the teacher sees 2x (EFPN: TT100K at 1400 x 1400)


@dataclass(frozen=True)
class ProposalCounts:
    """How many regions the RPNs keep and the RoI heads sample, per image."""
    train: int = 2000  # RPN top-n per level before NMS and per image after it, training (FPN paper; C4, FPN, EFPN)
    test: int = 1000  # the same at test time
    rois_per_image: int = 512  # RoIs sampled per image for the Fast R-CNN loss
    rfcn: int = 300  # R-FCN's RPN proposals after NMS, training and test (R-FCN paper)
    rfcn_ohem_rois: int = 128  # chapter 6: RoIs per image that train the head, sampled or OHEM's hardest (R-FCN paper)
    efpn_rois_per_image: int = 512  # EFPN's (chapter 8) RoI batch: its sign images hold more objects each
    efpn_ohem_rois: int = 128  # EFPN stage 3's OHEM: the hardest of the efpn_rois_per_image sampled


@dataclass(frozen=True)
class TrainingSteps:
    """Optimiser steps of each detector training run (batch: ``detector.batch_size``, chapter 4: 2 images). None (the
    gpu profile): the iterations of the run's paper recipe (the key after each field), scaled to the batch and GPUs
    -- ``engine.training_steps`` reads it."""
    rcnn: int | None = None  # chapter 4: R-CNN fine-tuning (128 warped regions each); "04.rcnn"
    fast_rcnn: int | None = None  # chapter 4: Fast R-CNN; "04"
    faster_rcnn: int | None = None  # chapter 5: Faster R-CNN R50-C4; "05"
    rfcn: int | None = None  # chapter 6: R-FCN and its C4 comparison; "06"
    rfcn_ablation: int | None = None  # chapter 6: each k = 1 / 7 run (k = 7 shared with the comparison if equal to rfcn); "06"
    fpn: int | None = None  # chapter 7: FPN and C4; "07"
    fpn_ablation: int | None = None  # chapter 7: each ablation (no top-down / no lateral / P2-only) and the FPN it
    # is compared with; "07"
    efpn_fpn: int | None = None  # chapter 8, stage 1: the FPN baseline; "08.1"
    efpn_distill: int | None = None  # stage 2: the extension by cross-resolution distillation; "08.2"
    efpn_head: int | None = None  # stage 3: the P2' head with OHEM; "08.3"
    efpn_ablation: int | None = None  # stage-2 steps of each ablation (Tables II and IV in miniature); "08.2"


@dataclass(frozen=True)
class Timing:
    """What the speed measurements time."""
    rfcn_rois: tuple[int, ...] = (300, 2000)  # chapter 6's head timing, plotted: RoI counts (R-FCN's Table 3), first = test
    efpn_images: int = 20  # chapter 8's Table III: images timed per model


@dataclass(frozen=True)
class BackbonePretraining:
    """The laptop's stand-in for ImageNet pre-training (course_lib.pretraining, data_scripts/pretrain_backbones.py):
    a ResNet-50 at ``detector.width`` and a VGG16 at ``rcnn.width`` (where the profile starts from them) each classify
    ``steps * batch_size`` synthetic object crops of ``crop_size`` pixels. The defaults are the ``cpu`` profile's
    (about 10 minutes a network on 2 cores); at width 1.0 (``gpu``) nothing is pretrained: the models fine-tune
    torchvision's ImageNet weights (``make weights``)."""
    steps: int = 2000
    batch_size: int = 64
    crop_size: int = 64  # square crops, one object covering 35-90 % of the side
    # notebook 00's FPN from random weights vs from this start (every profile: a demonstration). 150 before the cpu
    # profile's 32 RoIs per image, at which 150 steps let the pretrained start lead by 0.18-0.26 AP50 over 3 seeds
    # (at 64 RoIs: 0.27-0.33)
    demo_steps: int = 200


@dataclass(frozen=True)
class Profile:
    name: str
    description: str
    device: str = "cuda"  # "cpu" or "cuda"
    amp: bool = True  # mixed precision (CUDA only)
    num_workers: int = 8  # DataLoader processes feeding each training run (fit)
    schedule: str = "paper"  # a recipe's length: "paper" (all its iterations) or "one_day" (recipes.ONE_DAY's part)
    data: SyntheticData = SyntheticData()
    patches: PatchTraining = PatchTraining()
    segmentation: SegmentationTraining = SegmentationTraining()
    selective_search: SelectiveSearch = SelectiveSearch()
    rcnn: RCNNNetwork = RCNNNetwork()
    detector: DetectorTraining = DetectorTraining()
    resize: DetectorResize = DetectorResize()
    proposals: ProposalCounts = ProposalCounts()
    steps: TrainingSteps = TrainingSteps()
    timing: Timing = Timing()
    pretraining: BackbonePretraining = BackbonePretraining()
    # the seeds chapters 7 and 8 run their ablations on (8: the first only, from that seed's stage-1 FPN); () runs
    # none: cpu's ten minutes per notebook hold the main comparison's three seeds (08's four ablations took 265 s)
    ablation_seeds: tuple[int, ...] = (0, 1, 2)


PROFILES: dict[str, Profile] = {
    "ci": Profile(
        "ci", "tiny data and schedules for CI (every notebook < 60 s on 2 CPU cores)",
        device="cpu", amp=False, num_workers=0,
        data=SyntheticData(segmentation_images=12, segmentation_side=128, small_objects_images=8,
                           small_objects_val_images=2, small_objects_size=(256, 256), multiscale_images=12,
                           multiscale_val_images=2, multiscale_size=(256, 256)),
        patches=PatchTraining(steps=40, batch_size=64),
        segmentation=SegmentationTraining(steps=4, fcn_stage_steps=2, batch_size=2, crop_size=96, width=0.125,
                                          optimizer="adam", weights_backbone=None),
        selective_search=SelectiveSearch(images=4, mode="single", max_proposals=50, processes=0),
        rcnn=RCNNNetwork(width=0.125, warp_size=64, optimizer="sgd", weights_backbone="pretrained"),
        detector=DetectorTraining(width=0.125, rfcn_depth=50, c4_anchor_sizes=(32, 64, 128), optimizer="adamw",
                                  lr=1e-3, batch_size=2, weights_backbone="pretrained", c4_head_batch_norm="trainable"),
        # chapters 6 and 7 train several detectors each: their images are the smallest
        resize=DetectorResize(fast_rcnn=Resize(256, 320), faster_rcnn=Resize(256, 320), rfcn=Resize(128, 160),
                              fpn=Resize(128, 160), efpn=Resize(256, 256)),
        proposals=ProposalCounts(train=100, test=50, rois_per_image=32, rfcn=50, rfcn_ohem_rois=16,
                                 efpn_rois_per_image=32, efpn_ohem_rois=4),
        steps=TrainingSteps(rcnn=1, fast_rcnn=2, faster_rcnn=2, rfcn=2, rfcn_ablation=1, fpn=2, fpn_ablation=2,
                            efpn_fpn=2, efpn_distill=2, efpn_head=2, efpn_ablation=1),
        ablation_seeds=(0,),
        timing=Timing(rfcn_rois=(10, 20, 40), efpn_images=1),
        pretraining=BackbonePretraining(steps=2, batch_size=4, crop_size=32, demo_steps=1),
    ),
    "cpu": Profile(
        "cpu", "a laptop: meaningful results in minutes on a CPU",
        # no DataLoader processes: fit starts a new loader every epoch (96 images: every 24-48 steps), and starting and
        # stopping two worker processes costs seconds each time, which the steps between do not win back on 2 cores
        # (bench_training --workers 2 0 --steps 100: a whole fit call, s/step with 2 vs 0 workers, FCN-8s 0.361 vs
        # 0.241, FPN 0.212 vs 0.117, C4 0.261 vs 0.169; the steps within an epoch cost the same). The detectors' batches
        # are the same either way, so are their results; FCN's random crops come from another generator
        device="cpu", amp=False, num_workers=0,
        # validation: a third of each detection set (24 and 48 images, the training images as before), so that a
        # bootstrap standard error over images is small enough for a verdict (at 24 multi-scale images, 0.046 on an
        # APs difference of 0.08 between FPN and C4)
        data=SyntheticData(segmentation_images=120, segmentation_side=192, small_objects_images=72,
                           small_objects_val_images=24, small_objects_size=(512, 512), multiscale_images=144,
                           multiscale_val_images=48, multiscale_size=(384, 384)),
        patches=PatchTraining(steps=1500, batch_size=128),
        # FCN: 100 steps a stage (300 before the controls and seeds: 15 stages instead of 3)
        segmentation=SegmentationTraining(steps=300, fcn_stage_steps=100, batch_size=4, crop_size=160, width=0.25,
                                          optimizer="adam", weights_backbone=None),
        selective_search=SelectiveSearch(images=16, max_proposals=300, processes=2),
        rcnn=RCNNNetwork(width=0.25, optimizer="sgd", weights_backbone="pretrained"),
        detector=DetectorTraining(width=0.25, rfcn_depth=50, c4_anchor_sizes=(64, 128, 256), optimizer="adamw",
                                  lr=1e-3, batch_size=2, weights_backbone="pretrained", c4_head_batch_norm="trainable"),
        resize=DetectorResize(fast_rcnn=Resize(384, 512), faster_rcnn=Resize(384, 512), rfcn=Resize(384, 512),
                              fpn=Resize(384, 512), efpn=Resize(384, 384)),
        # 32 RoIs per image (Fast R-CNN's 64 halved): C4's conv5_x head runs per RoI, so its step takes 0.17 s instead
        # of 0.31, and the time saved buys steps -- seed 0, AP50: C4 0.427 at 600 steps (64 RoIs: 0.441), 0.486 at 900
        # (0.507); FPN 0.463 at 250 (0.486). EFPN keeps 64: its sign images hold 8 objects each, and 32 RoIs (8 of
        # them positive at most) cost its stage-1 FPN 0.06 AP50 (3 seeds: 0.42 against 0.48).
        # EFPN's stage 3 trains 200 steps (60 before): stage 2's P2' is far from the P2 that the copied head learnt on
        # (seed 0, after stage 2: APs 0.03 against its stage-1 FPN's 0.13), and 60 steps left EFPN 0.05-0.10 AP50 under
        # its own start on every seed; at 200 it is level with it (seeds 0 / 1: AP50 0.377 / 0.393, start 0.386 / 0.402)
        proposals=ProposalCounts(train=600, test=300, rois_per_image=32, rfcn_ohem_rois=32, efpn_rois_per_image=64,
                                 efpn_ohem_rois=32),
        steps=TrainingSteps(rcnn=20, fast_rcnn=400, faster_rcnn=500, rfcn=300, rfcn_ablation=300, fpn=350,
                            fpn_ablation=350, efpn_fpn=350, efpn_distill=60, efpn_head=200, efpn_ablation=20),
        ablation_seeds=(),
        timing=Timing(rfcn_rois=(300, 1000, 2000), efpn_images=2),
    ),
    # the papers' values: every default above
    "gpu": Profile("gpu", "instructors: the papers' models and recipes from ImageNet, on CUDA with mixed precision"),
    # Colab's free T4 (about 15 GB, 2 CPU cores; course_lib.setup picks it there): the papers' models and image sizes at
    # 2 images per batch (FPN's lr scaled linearly), EFPN at 800 px (its 2x teacher sees 1600 px), a quarter of the
    # gpu profile's former steps, a quarter of its data (built in the notebook's set-up cell). Colab is online, so the
    # backbones start from torchvision's ImageNet weights as in gpu, but fine-tune on short schedules (SGD for the
    # detectors and chapter 4, Adam for FCN / U-Net), not the papers' recipes. Not yet timed on a T4.
    "colab": Profile(
        "colab", "Colab's free T4 GPU (15 GB): the papers' models at 2 images per batch, a quarter of the schedules",
        num_workers=2,
        data=SyntheticData(segmentation_images=375, small_objects_images=250, small_objects_val_images=50,
                           multiscale_images=500, multiscale_val_images=100),
        patches=PatchTraining(steps=1000),
        segmentation=SegmentationTraining(steps=5000, fcn_stage_steps=1000, optimizer="adam"),  # 15 FCN stages
        selective_search=SelectiveSearch(processes=2),  # Colab's 2 cores
        rcnn=RCNNNetwork(optimizer="sgd"),
        detector=DetectorTraining(optimizer="sgd", lr=0.02 * 2 / 16, batch_size=2),
        resize=DetectorResize(efpn=Resize(800, 800)),
        steps=TrainingSteps(rcnn=250, fast_rcnn=1000, faster_rcnn=5000, rfcn=5000, rfcn_ablation=5000, fpn=5000,
                            fpn_ablation=5000, efpn_fpn=5000, efpn_distill=2500, efpn_head=1250, efpn_ablation=1250),
    ),
}


def profile_names() -> list[str]:
    return list(PROFILES)


def get_profile(name: str | None = None) -> Profile:
    """The profile named ``name``, else ``$COURSE_PROFILE``, else ``gpu`` with CUDA / ``cpu`` without."""
    if name is None:
        name = os.environ.get("COURSE_PROFILE", "").strip()
    if not name:
        import torch

        name = "gpu" if torch.cuda.is_available() else "cpu"
    key = name.strip().lower()
    if key not in PROFILES:
        raise ValueError(
            f"Unknown course profile {name!r}. Valid profiles: {', '.join(PROFILES)}. "
            "Set it with e.g. `export COURSE_PROFILE=cpu`."
        )
    profile = PROFILES[key]
    if profile.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise RuntimeError(
                "The 'gpu' profile needs CUDA, but torch.cuda.is_available() is False. "
                "Use COURSE_PROFILE=cpu on this machine."
            )
    return profile


def replace(profile: Profile, **changes) -> Profile:
    """A copy of ``profile`` with some fields changed (for experiments in a notebook): a top-level field by its
    value, a group's fields by a dict, e.g. ``replace(PROFILE, amp=False, detector=dict(batch_size=2))``."""
    for group, value in changes.items():
        if isinstance(value, dict):
            changes[group] = dataclasses.replace(getattr(profile, group), **value)
    return dataclasses.replace(profile, **changes)


def flatten(config, prefix: str = "") -> dict:
    """Every value of a profile (or of one of its groups) by its path: ``{"detector.width": 0.25, ...}``."""
    values = {}
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        if dataclasses.is_dataclass(value):
            values.update(flatten(value, f"{prefix}{field.name}."))
        else:
            values[prefix + field.name] = value
    return values


def check_targets(profile: Profile, results: dict[str, tuple[float, float]], *, stated_for: str = "cpu") -> str:
    """A chapter's stated quality, checked: ``results`` maps a name to ``(measured, target)``, e.g.
    ``{"FPN AP50": (metrics["AP50"], 0.15)}``.

    The targets are those the chapter states for the ``stated_for`` profile (the laptop's, where they were measured
    on 2 cores). In that profile a value below its target (or NaN) raises an ``AssertionError`` naming it: the main
    training did not do what the chapter says it does. In the other profiles (``ci``: a few steps that only prove the
    cells run; ``gpu``: the papers' scale) the same line is printed beside the values, for information. Returns the
    text to print.
    """
    if not results:
        raise ValueError("check_targets: no results given (a dict of name -> (measured, target)).")
    checked = profile.name == stated_for
    parts, short = [], []
    for name, (value, target) in results.items():
        value, target = float(value), float(target)
        ok = value >= target  # False for NaN
        parts.append(f"{name} {value:.3f} (target {target:g}{', met' if ok else ', not met' if checked else ''})")
        if not ok:
            short.append(f"{name} = {value:.3f} < {target:g}")
    line = f"{stated_for} targets: " + "; ".join(parts)
    if not checked:
        return line + f" -- stated for the {stated_for!r} profile; this is {profile.name!r}, not checked"
    if short:
        raise AssertionError(f"{line}. Below the {stated_for!r} profile's stated target: {', '.join(short)}. Did the "
                             "training above run all its steps, in this profile, from a fresh kernel?")
    return line
