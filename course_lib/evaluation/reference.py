"""A paper-class number in minutes: torchvision's released COCO detector, evaluated by the course's pipeline.

torchvision publishes a Faster R-CNN ResNet-50-FPN trained on COCO 2017 train
(``FasterRCNN_ResNet50_FPN_Weights.COCO_V1``; box AP 37.0 on val2017 in the weights' ``meta["_metrics"]``). The
course's :func:`~course_lib.detection.fasterrcnn_resnet50_fpn` has torchvision's modules and names (proven equal in
``tests/detection/test_fpn_equivalence.py``), so the file loads into it unchanged -- frozen batch norm with eps 0,
as torchvision trained it. Evaluated by the course's loader (:class:`~course_lib.data.CocoDetection`), loop
(:func:`~course_lib.evaluation.evaluate_detector`) and COCOeval (:func:`~course_lib.evaluation.coco_evaluate`) on
val2017, it must give torchvision's number: a check of the whole pipeline against a published one, no training::

    python -m course_lib.evaluation.reference --data data/real/coco    # val2017 as data_scripts/prepare_coco.py writes it

The weights come through torchvision's API into its cache (``$TORCH_HOME/hub/checkpoints``); a cached file is
verified against the hash in its name first (:mod:`course_lib.backbones.weights`).

Labels: the model predicts COCO's category ids themselves (1..90; the 10 ids no annotation uses are "N/A" in the
weights' categories), not the dataset's contiguous labels. They are mapped to category ids unchanged, and a
detection of an id the annotation file does not list is dropped -- COCOeval would ignore it, as it does in
torchvision's own evaluation. An annotation file whose ids or names are not COCO's is refused before the model is
loaded.
"""
from __future__ import annotations

import argparse
import json
import math
import os
from pathlib import Path

import torch
from torch.utils.data import Subset
from torchvision.models import WeightsEnum
from torchvision.models.detection import FasterRCNN, FasterRCNN_ResNet50_FPN_Weights

from course_lib.backbones.weights import read_published
from course_lib.data import CocoDetection
from course_lib.data.atomic import atomic_write_bytes
from course_lib.data.paths import data_root
from course_lib.detection import fasterrcnn_resnet50_fpn

from .detection import evaluate_detector

__all__ = ["REFERENCE_WEIGHTS", "reference_model", "check_coco_categories", "evaluate_reference", "summary"]

REFERENCE_WEIGHTS = FasterRCNN_ResNet50_FPN_Weights.COCO_V1


def reference_model(weights: WeightsEnum = REFERENCE_WEIGHTS, *, progress: bool = True, **kwargs) -> FasterRCNN:
    """The course's Faster R-CNN R50-FPN holding torchvision's published ``weights``, in eval mode.

    ``kwargs`` go to :func:`~course_lib.detection.fasterrcnn_resnet50_fpn` (default: torchvision's settings, those
    of the published AP: ``min_size=800``, ``max_size=1333``, ``box_score_thresh=0.05``, 100 detections per image).
    """
    # a cached file verified against the hash in its name, a missing one downloaded by torchvision's API
    state_dict, _ = read_published(weights, progress=progress)
    return fasterrcnn_resnet50_fpn(weights=state_dict, **kwargs).eval()


def check_coco_categories(coco, source: str | os.PathLike, weights: WeightsEnum = REFERENCE_WEIGHTS) -> None:
    """Refuse an annotation file whose category ids are not what ``weights`` predict (COCO's, by id and name)."""
    names = weights.meta["categories"]  # indexed by category id
    wrong = [(c["id"], c["name"]) for c in coco.dataset["categories"]
             if not (0 < int(c["id"]) < len(names) and names[int(c["id"])] == c["name"])]
    if wrong:
        shown = ", ".join(f"{i} {n!r} (COCO: {names[i]!r})" if 0 < i < len(names) else f"{i} {n!r} (not a COCO id)"
                          for i, n in wrong[:5])
        raise ValueError(f"{source}: categories {shown}{' ...' if len(wrong) > 5 else ''} are not COCO's, and "
                         f"{weights!r} predicts COCO's category ids. Evaluate it on COCO annotations (val2017 as "
                         "data_scripts/prepare_coco.py --splits val writes them).")


def evaluate_reference(data: str | os.PathLike, weights: WeightsEnum = REFERENCE_WEIGHTS, *, split: str = "val",
                       limit: int | None = None, device=None, batch_size: int = 2, progress: bool = True,
                       model_kwargs: dict | None = None) -> dict:
    """Evaluate torchvision's published ``weights`` in the course's detector on ``data`` (a COCO layout:
    ``images/``, ``annotations/instances_<split>.json``), the first ``limit`` images or all.

    Returns ``{"metrics": coco_evaluate's dict (0-1), "published_box_map": torchvision's AP in % (meta),
    "weights": name, "annotations": file, "num_images": evaluated}``.
    """
    root = Path(data)
    ann_file = root / "annotations" / f"instances_{split}.json"
    if not ann_file.is_file():
        raise FileNotFoundError(f"{ann_file} does not exist: prepare COCO val2017 with `python data_scripts/prepare_coco.py "
                                "--splits val`, or pass --data a COCO layout (images/, annotations/instances_<split>.json).")
    dataset = CocoDetection(root / "images", ann_file)
    check_coco_categories(dataset.coco, ann_file, weights)
    cat_ids = torch.tensor(dataset.coco.getCatIds())
    if limit is not None:
        dataset = Subset(dataset, range(min(limit, len(dataset))))
    model = reference_model(weights, progress=progress, **(model_kwargs or {}))

    def predict(model, images, targets):
        outputs = model(images)
        keeps = [torch.isin(out["labels"], cat_ids.to(out["labels"].device)) for out in outputs]
        return [{k: v[keep] for k, v in out.items()} for out, keep in zip(outputs, keeps)]

    metrics, _ = evaluate_detector(model, dataset, device=device, batch_size=batch_size, predict=predict,
                                   label_to_cat_id={i: i for i in cat_ids.tolist()}, progress=progress)
    return {"metrics": metrics, "published_box_map": weights.meta["_metrics"]["COCO-val2017"]["box_map"],
            "weights": repr(weights), "annotations": str(ann_file), "num_images": len(dataset)}


def summary(result: dict) -> str:
    """One line: our AP beside torchvision's published one."""
    ap = result["metrics"]["AP"]
    ours = "n/a (no ground truth)" if math.isnan(ap) else f"{100 * ap:.1f}"
    return (f"box AP (IoU 0.50:0.95) on {result['annotations']} ({result['num_images']} images): ours {ours}, "
            f"torchvision's published {result['published_box_map']} ({result['weights']}, meta['_metrics'])")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=None, help="COCO layout root (default: data/real/coco)")
    parser.add_argument("--split", default="val", help="annotations/instances_<split>.json (default: val = val2017)")
    parser.add_argument("--limit", type=int, default=None, help="only the first N images (a quick look; not the published protocol)")
    parser.add_argument("--device", default=None, help="cuda / cpu (default: cuda when available)")
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None, help="also write the result to this JSON file")
    args = parser.parse_args(argv)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)  # a bad --json path fails now, not after the evaluation
    result = evaluate_reference(args.data or data_root() / "real" / "coco", split=args.split, limit=args.limit,
                                device=args.device, batch_size=args.batch_size)
    print(summary(result))
    if args.json:  # COCO's "no ground truth of this size" (NaN here) as null: strict JSON
        metrics = {k: None if math.isnan(v) else v for k, v in result["metrics"].items()}
        atomic_write_bytes(args.json, (json.dumps({**result, "metrics": metrics}, indent=1) + "\n").encode())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
