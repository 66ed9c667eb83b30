"""Chapter 4's controls: Fast R-CNN against R-CNN, over Fast R-CNN's seeds, image sizes and starts.

Run by hand; pytest does not collect it (no ``test_`` prefix; a ci-sized smoke test runs it)::

    COURSE_PROFILE=cpu .venv/bin/python tests/benchmarks/control_fast_rcnn.py --seeds 0 1 2 --sizes 384 768
    COURSE_PROFILE=cpu .venv/bin/python tests/benchmarks/control_fast_rcnn.py --start scratch --seeds 0 1 2

It runs notebook 04's own cells up to R-CNN's evaluation (found by what they define, so that a cell added to the
notebook does not shift them): the data, selective search, R-CNN fine-tuned from the profile's VGG16 (``--start
scratch``: from random weights, as the notebook was before the pretraining) with its SVMs and regressors. Then, for
each seed and image size, it trains Fast R-CNN from R-CNN's fine-tuned VGG16 exactly as the notebook's training cell
does (its optimiser, steps, batch and clipping; only the resize's shorter side changes, the longer side capped at
4/3 of it) and prints one JSON line: AP50 with its bootstrap SE over the validation images, the paired difference
Fast R-CNN - R-CNN with its SE, AP50 by object size, and seconds. The notebook's own Fast R-CNN differs from seed 0
here: its overfit probe draws random numbers first. The numbers chapter 4 quotes came from this procedure (cpu,
seeds 0 / 1 / 2, sizes 384 / 768, both starts).
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
ROOT = Path(__file__).resolve().parents[2]
NOTEBOOK = ROOT / "notebooks" / "04_rcnn_fast_rcnn.ipynb"
# what each of the notebook's cells that this control runs defines or does, in the notebook's order
CELLS = ("from course_lib.setup import notebook", "PROFILE = get_profile()", "image, target = train_set[0]",
         "def proposals_for(",
         "rcnn = rcnn_vgg16(", "rcnn.fit_detectors(", "def predict_with(")


def notebook_cells(markers=CELLS) -> list[str]:
    """The sources of the notebook's code cells that contain each marker, in order (one cell per marker)."""
    cells = ["".join(c["source"]) for c in json.loads(NOTEBOOK.read_text())["cells"] if c["cell_type"] == "code"]
    found = []
    for marker in markers:
        matches = [s for s in cells if marker in s]
        if len(matches) != 1:
            raise SystemExit(f"{NOTEBOOK.name}: {len(matches)} code cells contain {marker!r} (expected 1); update "
                             f"{Path(__file__).name}'s CELLS to the notebook's cells.")
        found.append(matches[0])
    return found


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="Fast R-CNN's training seeds")
    parser.add_argument("--sizes", type=int, nargs="+", default=None,
                        help="Fast R-CNN's image shorter sides (default: the profile's)")
    parser.add_argument("--start", choices=("profile", "scratch"), default="profile",
                        help="the VGG16's start: the profile's (cpu: the course's pretraining) or random weights")
    args = parser.parse_args(argv)
    if args.sizes and min(args.sizes) < 32:
        raise SystemExit(f"--sizes {args.sizes}: an image side below 32 px leaves conv5_3 (stride 16) one cell.")
    os.chdir(NOTEBOOK.parent)  # the notebook's own working directory
    ns = {"display": print, "__name__": "__control__"}
    sources = notebook_cells()
    for marker, source in zip(CELLS, sources):
        if marker == "rcnn = rcnn_vgg16(" and args.start == "scratch":
            p = ns["PROFILE"]
            ns["PROFILE"] = dataclasses.replace(p, rcnn=dataclasses.replace(p.rcnn, weights_backbone=None))
        exec(compile(source, f"{NOTEBOOK.name}: {marker}", "exec"), ns)
    from course_lib.engine import fit, seed_everything
    from course_lib.evaluation import ap50_by_size, bootstrap_ap, bootstrap_ap_difference, evaluate_detector

    p, val_set, rcnn = ns["PROFILE"], ns["val_set"], ns["rcnn"]
    scored = dict(label_to_cat_id=val_set.label_to_cat_id, img_ids=[d["image_id"] for d in ns["rcnn_detections"]])
    r = bootstrap_ap(val_set.coco, ns["rcnn_detections"], **scored)
    print(json.dumps({"detector": "R-CNN", "start": args.start, "AP50": round(r["AP50"], 3),
                      "AP50_se": round(r["AP50_se"], 3),
                      **{k: round(v, 3) for k, v in ap50_by_size(val_set.coco, ns["rcnn_detections"], **scored).items()}}),
          flush=True)
    for seed in args.seeds:
        for size in args.sizes or [p.resize.fast_rcnn.min_size]:
            start = time.perf_counter()
            seed_everything(seed)
            fast = ns["fast_rcnn_vgg16"](ns["NUM_CLASSES"], vgg=copy.deepcopy(rcnn.features.vgg), min_size=size,
                                         max_size=size * 4 // 3).to(ns["DEVICE"])
            # the notebook's training cell
            optimizer, schedule, steps = ns["optimizer_for"](fast, "04", p.steps.fast_rcnn, 2)
            fit(fast, ns["train_items"], ns["detection_loss"], optimizer, steps=steps, lr_scheduler=schedule,
                batch_size=2, collate_fn=ns["collate"], device=ns["DEVICE"], grad_clip=10.0, progress=False)
            seconds = []
            _, detections = evaluate_detector(fast, ns["val_subset"], device=ns["DEVICE"], batch_size=1,
                                              predict=ns["predict_with"](ns["val_proposals"], seconds), progress=False)
            f = bootstrap_ap(val_set.coco, detections, **scored)
            d = bootstrap_ap_difference(val_set.coco, detections, ns["rcnn_detections"], **scored)
            print(json.dumps({"detector": "Fast R-CNN", "start": args.start, "seed": seed, "min_size": size,
                              "AP50": round(f["AP50"], 3), "AP50_se": round(f["AP50_se"], 3),
                              "minus_rcnn": round(d["AP50"], 3), "minus_rcnn_se": round(d["AP50_se"], 3),
                              **{k: round(v, 3) for k, v in ap50_by_size(val_set.coco, detections, **scored).items()},
                              "s_per_image": round(sorted(seconds)[len(seconds) // 2], 3),
                              "seconds": round(time.perf_counter() - start)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
