"""From scratch vs the "ImageNet in miniature" start (course_lib/pretraining.py): one detector, one run each.

Run by hand; pytest does not collect it (no ``test_`` prefix)::

    .venv/bin/python data_scripts/pretrain_backbones.py --profile cpu      # the backbone file, once
    .venv/bin/python tests/benchmarks/bench_pretraining.py --profile cpu   # chapter 7's FPN, both starts

Chapter 7's Faster R-CNN R50-FPN exactly as its notebook builds it (the profile's width, sizes, proposal counts,
steps, optimiser and batch) on the profile's ``multiscale`` data, trained by ``engine.train_and_evaluate`` from the
same seed: once from random weights (ordinary batch norm, every stage trains: torchvision's rule without weights),
once with ``weights_backbone=<the pretrained file>`` (batch norm frozen, conv1 and conv2_x frozen: the rule with
weights, as the papers fine-tune ImageNet's). Prints, as JSON lines, each run's AP50, AP, APs with their bootstrap
standard errors over the validation images, and the paired difference (pretrained - scratch) with its standard error.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from course_lib import engine  # noqa: E402
from course_lib.data import CocoDetection, data_root, dataset_dir  # noqa: E402
from course_lib.detection.faster_rcnn_fpn import fasterrcnn_resnet50_fpn  # noqa: E402
from course_lib.evaluation import evaluate_detector  # noqa: E402
from course_lib.evaluation.bootstrap import bootstrap_ap, bootstrap_ap_difference  # noqa: E402
from course_lib.profiles import get_profile, profile_names  # noqa: E402
from course_lib.pretraining import backbone_weights  # noqa: E402


def run(profile, start: str, weights: Path, steps: int, seed: int = 0) -> dict:
    root = dataset_dir("multiscale", profile)
    train_set = CocoDetection(root / "images", root / "annotations" / "instances_train.json")
    val_set = CocoDetection(root / "images", root / "annotations" / "instances_val.json")
    p = profile
    schedule = dict(width=p.detector.width, min_size=p.resize.fpn.min_size, max_size=p.resize.fpn.max_size,
                    rpn_pre_nms_top_n_train=p.proposals.train, rpn_post_nms_top_n_train=p.proposals.train,
                    rpn_pre_nms_top_n_test=p.proposals.test, rpn_post_nms_top_n_test=p.proposals.test,
                    box_batch_size_per_image=p.proposals.rois_per_image)
    torch.manual_seed(seed)
    model = fasterrcnn_resnet50_fpn(num_classes=train_set.num_classes, **schedule,
                                    weights_backbone=weights if start == "pretrained" else None)
    trainable = sum(q.numel() for q in model.parameters() if q.requires_grad)
    t0 = time.perf_counter()
    # engine.train_and_evaluate's two halves, to keep the detections for the bootstrap
    history = engine.train_detector(model, train_set, steps=steps, profile=p, seed=seed, progress=False)
    seconds = time.perf_counter() - t0
    _, detections = evaluate_detector(model, val_set, device=p.device, batch_size=p.detector.batch_size,
                                      progress=False)
    metrics = bootstrap_ap(val_set.coco, detections, label_to_cat_id=val_set.label_to_cat_id)
    return {"start": start, "seed": seed, "steps": steps, **{k: round(v, 4) for k, v in metrics.items()},
            "last_loss": round(history.last["loss"], 4), "trainable_params": trainable, "train_seconds": round(seconds),
            "val_images": len(val_set)}, (val_set, detections)


def paired_difference(val_set, a, b, resamples: int = 200) -> dict:
    """AP50 and AP of ``b`` minus ``a`` and the standard error of that difference: both scored on the same bootstrap
    resamples of the validation images (a paired bootstrap, ``bootstrap_ap_difference``)."""
    out = bootstrap_ap_difference(val_set.coco, b, a, resamples=resamples, label_to_cat_id=val_set.label_to_cat_id)
    return {f"d{name}": round(out[name], 4) for name in ("AP50", "AP")} | \
        {f"d{name}_se": round(out[f"{name}_se"], 4) for name in ("AP50", "AP")}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", choices=profile_names(), default="cpu")
    parser.add_argument("--steps", type=int, default=None, help="default: the profile's chapter-7 FPN steps")
    parser.add_argument("--seed", type=int, default=0, help="of the detector's initial weights and data order")
    parser.add_argument("--starts", nargs="+", choices=("scratch", "pretrained"), default=["scratch", "pretrained"])
    args = parser.parse_args(argv)
    profile = get_profile(args.profile)
    weights = backbone_weights(profile)  # the course's pretrained file (an error naming the command if missing)
    print(f"{profile.name} profile, torch threads {torch.get_num_threads()}, backbone file {weights}")
    detections = {}
    for start in args.starts:
        line, (val_set, detections[start]) = run(profile, start, weights, args.steps or profile.steps.fpn, args.seed)
        print(json.dumps(line), flush=True)
    if len(detections) == 2:
        print(json.dumps({"pretrained - scratch": paired_difference(val_set, detections["scratch"],
                                                                     detections["pretrained"])}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
