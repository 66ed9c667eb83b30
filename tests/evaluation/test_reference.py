"""torchvision's published COCO detector in the course's pipeline, offline: a seeded random Faster R-CNN R50-FPN is
"published" by a local HTTP server under torch.hub's naming, read through the weights API into the course's FPN,
and evaluated on a tiny COCO set with COCO's real category ids -- the AP must be pycocotools' on torchvision's own
predictions, to the last digit."""
from __future__ import annotations

import hashlib
import json
import math
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from torchvision.models import Weights, WeightsEnum
from torchvision.models.detection import FasterRCNN, FasterRCNN_ResNet50_FPN_Weights
from torchvision.models.detection._utils import overwrite_eps
from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
from torchvision.ops.misc import FrozenBatchNorm2d

from course_lib.backbones.weights import CorruptWeightsError, cache_path
from course_lib.evaluation import reference
from course_lib.evaluation.reference import evaluate_reference, summary

CATEGORIES = FasterRCNN_ResNet50_FPN_Weights.COCO_V1.meta["categories"]  # index = COCO category id
COCO_CATEGORIES = [{"id": i, "name": n, "supercategory": "x"} for i, n in enumerate(CATEGORIES) if n not in ("__background__", "N/A")]
SMALL = {"min_size": 96, "max_size": 128, "box_score_thresh": 0.0}  # fast, and a random model's scores all kept
SIZES = {139: (64, 80), 285: (80, 60), 632: (72, 72), 724: (56, 96)}  # image id: (height, width)


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    """A seeded torchvision Faster R-CNN's state dict served on 127.0.0.1 as ``<name>-<sha256[:8]>.pth``, and
    a weights enum with torchvision's meta whose COCO_V1 points there; torchvision's model as its builder makes it
    from those weights (frozen batch norm, eps 0)."""
    root = tmp_path_factory.mktemp("published")
    torch.manual_seed(0)
    state = torchvision.models.detection.fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None).state_dict()
    # a random classifier picks one class everywhere; five with the same weights and nearly the same bias share the
    # top scores: person, dog, an "N/A" id, teddy bear and toothbrush (ids beyond 80, the contiguous labels' range)
    ids, cls = [1, 18, 83, 88, 90], "roi_heads.box_predictor.cls_score"
    state[f"{cls}.weight"] = state[f"{cls}.weight"] * 0.03
    state[f"{cls}.weight"][ids] = state[f"{cls}.weight"][1].clone()
    state[f"{cls}.bias"] = torch.zeros(91).index_copy(0, torch.tensor(ids), 3 + 0.01 * torch.arange(5.0))
    torch.save(state, root / "tmp.pth")
    name = f"fasterrcnn_resnet50_fpn_coco-{hashlib.sha256((root / 'tmp.pth').read_bytes()).hexdigest()[:8]}.pth"
    (root / "tmp.pth").rename(root / name)
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), partial(_Quiet, directory=str(root)))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    meta = {**FasterRCNN_ResNet50_FPN_Weights.COCO_V1.meta}
    entry = Weights(url=f"http://127.0.0.1:{httpd.server_address[1]}/{name}", transforms=None, meta=meta)
    enum = WeightsEnum("FasterRCNN_ResNet50_FPN_Weights", [("COCO_V1", entry)])
    torchvisions = FasterRCNN(_resnet_fpn_extractor(torchvision.models.resnet50(norm_layer=FrozenBatchNorm2d), 3),
                              num_classes=91, **SMALL)
    torchvisions.load_state_dict(state)
    overwrite_eps(torchvisions, 0.0)
    yield enum.COCO_V1, torchvisions.eval()
    httpd.shutdown()


@pytest.fixture
def torch_home(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))


def tiny_coco(root: Path, model) -> list[dict]:
    """Four noise images (PNG: every decoder reads the same pixels) and ground truth taken from ``model``'s own
    top detections of real COCO ids, jittered, so AP is neither 0 nor 1; returns the model's detections."""
    (root / "images").mkdir(parents=True)
    (root / "annotations").mkdir()
    rng = np.random.default_rng(0)
    images, annotations, detections = [], [], []
    for image_id, (h, w) in SIZES.items():
        pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / "images" / f"{image_id:012d}.png")
        images.append({"id": image_id, "file_name": f"{image_id:012d}.png", "height": h, "width": w})
        with torch.no_grad():
            out = model([torch.from_numpy(pixels).permute(2, 0, 1).float() / 255])[0]
        detections.append({"image_id": image_id, **out})
        real = [i for i, label in enumerate(out["labels"].tolist()) if CATEGORIES[label] != "N/A"][:3]
        for i in real:
            x1, y1, x2, y2 = (out["boxes"][i] + torch.tensor([1.0, -1.0, 2.0, 0.5])).clamp(min=0).tolist()
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": int(out["labels"][i]),
                                "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1), "iscrowd": 0})
    (root / "annotations" / "instances_val.json").write_text(json.dumps(
        {"images": images, "annotations": annotations, "categories": COCO_CATEGORIES}))
    return detections


def pycocotools_ap(ann_file: Path, detections: list[dict]) -> list[float]:
    """COCOeval on torchvision's detections as its references hand them over (every label, unfiltered)."""
    gt = COCO(str(ann_file))
    results = [{"image_id": d["image_id"], "category_id": int(label), "bbox": [x1, y1, x2 - x1, y2 - y1], "score": float(s)}
               for d in detections for (x1, y1, x2, y2), s, label in zip(d["boxes"].double().tolist(), d["scores"], d["labels"])]
    evaluator = COCOeval(gt, gt.loadRes(results), "bbox")
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
    return evaluator.stats.tolist()


def test_published_weights_in_the_course_pipeline_give_pycocotools_ap_on_torchvisions_predictions(
        tmp_path, published, torch_home, capsys):
    weights, torchvisions = published
    detections = tiny_coco(tmp_path / "coco", torchvisions)
    labels = torch.cat([d["labels"] for d in detections])
    assert any(CATEGORIES[i] == "N/A" for i in labels.tolist()), "the dropped N/A ids must occur"
    assert (labels > 80).any(), "ids beyond the 80 contiguous labels must occur"
    expected = pycocotools_ap(tmp_path / "coco" / "annotations" / "instances_val.json", detections)
    assert 0.05 < expected[0] < 0.95, "a test of the AP needs one that is neither 0 nor 1"

    result = evaluate_reference(tmp_path / "coco", weights, batch_size=1, progress=False, model_kwargs=SMALL)
    ours = [result["metrics"][k] for k in ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")]
    np.testing.assert_array_equal(ours, [math.nan if v == -1 else v for v in expected])  # COCO's -1: NaN here
    assert result["published_box_map"] == 37.0 and result["num_images"] == 4
    assert cache_path(weights).is_file(), "downloaded into torchvision's cache by its API"
    assert f"ours {100 * expected[0]:.1f}, torchvision's published 37.0" in summary(result)


def test_a_damaged_cached_file_and_foreign_categories_are_refused_before_evaluating(tmp_path, published, torch_home):
    weights, torchvisions = published
    tiny_coco(tmp_path / "coco", torchvisions)
    path = cache_path(weights)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"not the published file")
    with pytest.raises(CorruptWeightsError, match=path.name):
        evaluate_reference(tmp_path / "coco", weights, progress=False)

    ann = tmp_path / "coco" / "annotations" / "instances_val.json"
    data = json.loads(ann.read_text())
    data["categories"] = [{"id": 1, "name": "aeroplane"}, *data["categories"][1:]]  # VOC's class 1 is not COCO's
    ann.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"instances_val.json: categories 1 'aeroplane' \(COCO: 'person'\)"):
        evaluate_reference(tmp_path / "coco", weights, progress=False)


def test_the_command_line_prints_both_numbers_and_writes_strict_json(tmp_path, monkeypatch, capsys):
    with pytest.raises(FileNotFoundError, match=r"instances_val.json does not exist: prepare COCO val2017 with .*prepare_coco.py"):
        reference.main(["--data", str(tmp_path)])
    result = {"metrics": {"AP": 0.36951, "APs": math.nan}, "published_box_map": 37.0, "num_images": 5000,
              "weights": "FasterRCNN_ResNet50_FPN_Weights.COCO_V1", "annotations": "coco/annotations/instances_val.json"}
    calls = []
    monkeypatch.setattr(reference, "evaluate_reference", lambda data, **kw: calls.append((data, kw)) or result)
    assert reference.main(["--data", str(tmp_path), "--limit", "10", "--json", str(tmp_path / "out" / "ap.json")]) == 0
    assert calls[0][0] == tmp_path and calls[0][1]["limit"] == 10
    assert capsys.readouterr().out == ("box AP (IoU 0.50:0.95) on coco/annotations/instances_val.json (5000 images): ours 37.0, "
                                       "torchvision's published 37.0 (FasterRCNN_ResNet50_FPN_Weights.COCO_V1, meta['_metrics'])\n")
    assert json.loads((tmp_path / "out" / "ap.json").read_text(), parse_constant=pytest.fail)["metrics"] == {"AP": 0.36951, "APs": None}
