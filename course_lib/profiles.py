"""How big things are: the one place that decides data sizes and schedules.

Three profiles, chosen with the environment variable ``COURSE_PROFILE``:

* ``ci``  -- tiny data and schedules: every notebook runs in under 60 s on 2 CPU cores.
* ``cpu`` -- a laptop: visibly meaningful results in minutes.
* ``gpu`` -- instructors: the papers' full-scale models and schedules, CUDA and mixed precision.

Default: ``gpu`` when CUDA is available, else ``cpu``. ``make test`` sets ``ci``.

Profiles change sizes and schedules, never the code path: a notebook runs the same
cells in every profile, only with smaller numbers.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

__all__ = ["Profile", "PROFILES", "get_profile", "profile_names", "check_targets"]


@dataclass(frozen=True)
class Profile:
    name: str
    description: str
    device: str  # "cpu" or "cuda"
    amp: bool  # mixed precision (CUDA only)
    num_workers: int

    # --- offline synthetic datasets (data_scripts/make_synthetic.py) ---
    seg_num_images: int  # segmentation scenes
    seg_image_size: int  # square side in pixels
    small_num_images: int  # small objects, modelled on Tsinghua-Tencent 100K
    small_image_size: tuple[int, int]  # (height, width)
    multi_num_images: int  # multi-scale objects for the R-CNN family and FPN
    multi_image_size: tuple[int, int]  # (height, width)

    # --- chapters 1-3: sliding window, FCN, U-Net ---
    seg_train_steps: int  # optimiser steps per FCN / U-Net training run
    seg_batch_size: int
    seg_crop_size: int  # training crop side (pixels)
    seg_width: float  # channel width multiplier of the trained models (1.0 = paper)
    window_train_steps: int  # chapter 1: optimiser steps of the sliding-window patch classifiers
    window_batch_size: int  # chapter 1: patches per step

    # --- every training chapter: overfit two images first (loss down >= 90 %, then found on those images) ---
    overfit_steps: int  # Adam steps on two training images (engine.overfit)

    # --- chapters 4-8: detectors ---
    det_width: float  # channel width multiplier of the trained ResNet detectors (1.0 = paper)
    det_optimizer: str  # "sgd" (the papers' recipe, fine-tuning from ImageNet) or "adamw" (from scratch, few steps)
    det_lr: float  # its base learning rate (engine.detector_optimizer)
    c4_anchor_sizes: tuple[int, ...]  # the single-level (C4, R-FCN) RPN's 3 anchor scales (paper: 128-512 at 600 px)
    det_min_size: int  # transform: shorter side (paper: 800)
    det_max_size: int  # transform: longer side cap (paper: 1333)
    det_train_steps: int
    det_batch_size: int

    # --- chapter 4: R-CNN and Fast R-CNN (selective search proposals, VGG16) ---
    lineage_num_images: int  # images given selective search proposals (training + evaluation)
    lineage_ss_mode: str  # selective search strategies: "single" or R-CNN's "fast" (8 strategies)
    lineage_max_proposals: int  # proposals per image (R-CNN: ~2000)
    lineage_width: float  # VGG16 channel width multiplier (1.0 = paper)
    lineage_warp_size: int  # R-CNN's warped region side (paper: 224 for VGG16; context 16 * size / 224)
    lineage_min_size: int  # Fast R-CNN transform: shorter side (paper: 600)
    lineage_max_size: int  # longer side cap (paper: 1000)
    lineage_rcnn_steps: int  # R-CNN fine-tuning steps (128 warped regions each)
    lineage_train_steps: int  # Fast R-CNN training steps (2 images each)
    faster_rcnn_train_steps: int  # chapter 5: Faster R-CNN R50-C4 training steps (det_batch_size images each)

    # --- chapter 7: FPN (RPN / RoI sampling sizes shared by the FPN and C4 runs, and the ablations) ---
    fpn_proposals_train: int  # RPN top-n per level before NMS and per image after it, training (paper: 2000)
    fpn_proposals_test: int  # the same at test time (paper: 1000)
    fpn_rois_per_image: int  # RoIs sampled per image for the Fast R-CNN loss (paper: 512)
    fpn_ablation_steps: int  # optimiser steps of each ablation run (no top-down / no lateral / P2-only)
    fpn_min_size: int  # image size of the FPN / C4 / ablation runs (= det_min_size but in ci, where 5 detectors train)
    fpn_max_size: int  # longer side cap of those runs (= det_max_size but in ci)

    # --- chapter 6: R-FCN (and the C4 detector it is compared with, trained on the same schedule) ---
    rfcn_depth: int  # ResNet depth of R-FCN and of its C4 comparison (paper: 101)
    rfcn_min_size: int  # transform: shorter side (paper: 600)
    rfcn_max_size: int  # longer side cap (paper: 1000)
    rfcn_train_steps: int  # optimiser steps of the R-FCN and C4 runs (det_batch_size images each)
    rfcn_ablation_steps: int  # steps of each k = 1 / 3 run of the k ablation
    rfcn_proposals: int  # RPN proposals per image after NMS, training and test (paper: 300)
    rfcn_ohem_rois: int  # OHEM: RoIs back-propagated per image (paper: 128)
    rfcn_timing_rois: tuple[int, ...]  # RoI counts of the notebook's head timing (paper's Table 3: 300 and 2000)

    # --- chapter 8: EFPN (the small-object set; paper: TT100K images resized to 1400 x 1400, sec. IV-A3) ---
    efpn_min_size: int  # shorter side of the 1x input (paper: 1400 on TT100K); the teacher sees 2x
    efpn_max_size: int  # longer side cap (square images: = efpn_min_size)
    efpn_small_roi_size: float  # RoIs with sqrt(wh) below this go to P2' (paper: 56 at 1400 px on TT100K)
    efpn_fpn_steps: int  # stage 1: the FPN baseline
    efpn_distill_steps: int  # stage 2: the extension by cross-resolution distillation
    efpn_head_steps: int  # stage 3: the P2' head with OHEM
    efpn_ohem_rois: int  # OHEM: RoIs back-propagated per image, the hardest of the fpn_rois_per_image sampled
    efpn_ablation_steps: int  # stage-2 steps of each ablation (Tables II and IV in miniature)
    efpn_bench_images: int  # images timed per model in the Table III comparison


PROFILES: dict[str, Profile] = {
    "ci": Profile(
        name="ci",
        description="tiny data and schedules for CI (every notebook < 60 s on 2 CPU cores)",
        device="cpu",
        amp=False,
        num_workers=0,
        seg_num_images=12,
        seg_image_size=128,
        small_num_images=8,
        small_image_size=(256, 256),
        multi_num_images=12,
        multi_image_size=(256, 256),
        seg_train_steps=4,
        seg_batch_size=2,
        seg_crop_size=96,
        seg_width=0.125,
        window_train_steps=40,
        window_batch_size=64,
        overfit_steps=300,
        det_width=0.125,
        det_optimizer="adamw",
        det_lr=2e-3,
        c4_anchor_sizes=(32, 64, 128),
        det_min_size=256,
        det_max_size=320,
        det_train_steps=2,
        det_batch_size=2,
        lineage_num_images=4,
        lineage_ss_mode="single",
        lineage_max_proposals=50,
        lineage_width=0.125,
        lineage_warp_size=64,
        lineage_min_size=256,
        lineage_max_size=320,
        lineage_rcnn_steps=1,
        lineage_train_steps=2,
        faster_rcnn_train_steps=2,
        fpn_proposals_train=100,
        fpn_proposals_test=50,
        fpn_rois_per_image=32,
        fpn_ablation_steps=1,
        fpn_min_size=128,
        fpn_max_size=160,
        rfcn_depth=50,
        rfcn_min_size=128,
        rfcn_max_size=160,
        rfcn_train_steps=2,
        rfcn_ablation_steps=1,
        rfcn_proposals=50,
        rfcn_ohem_rois=16,
        rfcn_timing_rois=(10, 40),
        efpn_min_size=256,
        efpn_max_size=256,
        efpn_small_roi_size=56.0,
        efpn_fpn_steps=2,
        efpn_distill_steps=2,
        efpn_head_steps=2,
        efpn_ohem_rois=4,
        efpn_ablation_steps=1,
        efpn_bench_images=1,
    ),
    "cpu": Profile(
        name="cpu",
        description="a laptop: meaningful results in minutes on a CPU",
        device="cpu",
        amp=False,
        num_workers=2,
        seg_num_images=120,
        seg_image_size=192,
        small_num_images=60,
        small_image_size=(512, 512),
        multi_num_images=120,
        multi_image_size=(384, 384),
        seg_train_steps=300,
        seg_batch_size=4,
        seg_crop_size=160,
        seg_width=0.25,
        window_train_steps=1500,
        window_batch_size=128,
        overfit_steps=300,
        det_width=0.25,
        det_optimizer="adamw",
        det_lr=2e-3,
        c4_anchor_sizes=(64, 128, 256),
        det_min_size=384,
        det_max_size=512,
        det_train_steps=400,
        det_batch_size=2,
        lineage_num_images=16,
        lineage_ss_mode="fast",
        lineage_max_proposals=300,
        lineage_width=0.25,
        lineage_warp_size=224,
        lineage_min_size=384,
        lineage_max_size=512,
        lineage_rcnn_steps=20,
        lineage_train_steps=400,
        faster_rcnn_train_steps=600,
        fpn_proposals_train=600,
        fpn_proposals_test=300,
        fpn_rois_per_image=64,
        fpn_ablation_steps=100,
        fpn_min_size=384,
        fpn_max_size=512,
        rfcn_depth=50,
        rfcn_min_size=384,
        rfcn_max_size=512,
        rfcn_train_steps=320,
        rfcn_ablation_steps=60,
        rfcn_proposals=300,
        rfcn_ohem_rois=64,
        rfcn_timing_rois=(300, 2000),
        efpn_min_size=384,
        efpn_max_size=384,
        efpn_small_roi_size=56.0,
        efpn_fpn_steps=300,
        efpn_distill_steps=100,
        efpn_head_steps=100,
        efpn_ohem_rois=32,
        efpn_ablation_steps=40,
        efpn_bench_images=2,
    ),
    "gpu": Profile(
        name="gpu",
        description="instructors: full-scale models and schedules on CUDA with mixed precision",
        device="cuda",
        amp=True,
        num_workers=8,
        seg_num_images=1500,
        seg_image_size=384,
        small_num_images=1000,
        small_image_size=(1024, 1024),
        multi_num_images=2000,
        multi_image_size=(800, 1024),
        seg_train_steps=20000,
        seg_batch_size=8,
        seg_crop_size=320,
        seg_width=1.0,
        window_train_steps=4000,
        window_batch_size=256,
        overfit_steps=300,
        det_width=1.0,
        det_optimizer="sgd",
        det_lr=0.02 * 4 / 16,  # FPN's 0.02 for 16 images, scaled linearly to det_batch_size = 4
        c4_anchor_sizes=(128, 256, 512),
        det_min_size=800,
        det_max_size=1333,
        det_train_steps=20000,
        det_batch_size=4,
        lineage_num_images=200,
        lineage_ss_mode="fast",
        lineage_max_proposals=2000,
        lineage_width=1.0,
        lineage_warp_size=224,
        lineage_min_size=600,
        lineage_max_size=1000,
        lineage_rcnn_steps=1000,
        lineage_train_steps=4000,
        faster_rcnn_train_steps=20000,
        fpn_proposals_train=2000,
        fpn_proposals_test=1000,
        fpn_rois_per_image=512,
        fpn_ablation_steps=20000,
        fpn_min_size=800,
        fpn_max_size=1333,
        rfcn_depth=101,
        rfcn_min_size=600,
        rfcn_max_size=1000,
        rfcn_train_steps=20000,
        rfcn_ablation_steps=20000,
        rfcn_proposals=300,
        rfcn_ohem_rois=128,
        rfcn_timing_rois=(300, 2000),
        efpn_min_size=1400,
        efpn_max_size=1400,
        efpn_small_roi_size=56.0,
        efpn_fpn_steps=20000,
        efpn_distill_steps=10000,
        efpn_head_steps=5000,
        efpn_ohem_rois=128,
        efpn_ablation_steps=5000,
        efpn_bench_images=20,
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
    """A copy of ``profile`` with some fields changed (for experiments in a notebook)."""
    return dataclasses.replace(profile, **changes)


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
