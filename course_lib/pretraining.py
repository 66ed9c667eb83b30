"""ImageNet in miniature: a classification pretraining for the laptop's backbones, from the course's own generators.

Every paper of the course fine-tunes a backbone pretrained on ImageNet classification; the ``cpu`` and ``ci``
profiles cannot download one for their narrow networks (torchvision's weights fit only the paper's widths), so their
detectors start from random weights. This module gives them a start of the same kind: a classifier trained on
:class:`ObjectCrops` -- one object per image, 20 classes (the 15 traffic-sign classes of ``small_objects`` and the
5 shapes of ``multiscale``), on the generators' own street and clutter backgrounds -- whose ResNet, minus its
classifier, a detector loads with ``weights_backbone=<file>`` (and then, as with ImageNet weights, freezes batch
norm and the first two stages: :func:`course_lib.backbones.resnet.backbone_training_setup`). Chapter 4's VGG16 is
pretrained the same way (:class:`VGG16Classifier`: its convolutions, which R-CNN loads; the crops are too small for
the paper's fc6).

Crop ``i`` depends only on ``(seed, split, i)`` (its own random stream, named ``pretraining-<split>``, never one of
the detection datasets' streams), so the same seed gives the same crops, and no pretraining crop is a detection
image. :func:`pretrain` trains with :func:`course_lib.engine.fit` (progress bar, resumable checkpoint) and saves the
backbone's state dict atomically; ``data_scripts/pretrain_backbones.py`` builds the profile's file when missing.

What to expect from it: He, Girshick, Dollar, "Rethinking ImageNet Pre-training" (ICCV 2019), in their abstract:
detectors trained on COCO from random initialisation are "no worse than their ImageNet pre-training counterparts"
"with the sole exception of increasing the number of training iterations so the randomly initialized models may
converge" (the result holding with only 10 % of COCO's training data too); "ImageNet pre-training speeds up
convergence early in training, but does not necessarily provide regularization or improve final target task
accuracy". So with long schedules the gain shrinks to nothing; the laptop's runs -- a few hundred steps, far from
converged -- are where the faster start should show.

Measured (``cpu`` profile, one shared 2-core machine, one thread; ``tests/benchmarks/bench_pretraining.py``): the
pretraining (2000 steps of 64 crops, 64 px) took 12.6 minutes and reached 98.8 % top-1 on 2000 ``val`` crops.
Chapter 7's FPN, 400 steps on ``multiscale`` (48 validation images; seeded data orders from ``engine.epoch_seed``;
the backbone file built before that change), AP50 from scratch / pretrained: seed 0 0.179 / 0.515, seed 1
0.191 / 0.521 (AP 0.064 / 0.238 and 0.072 / 0.243); the paired bootstrap standard error of the AP50 difference
0.028 and 0.026 -- a gain of 12 to 13 standard errors on both seeds.
"""
from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from course_lib.backbones.resnet import resnet50
from course_lib.backbones.vgg import VGG16
from course_lib.data.synthetic import multiscale, traffic_signs
from course_lib.data.synthetic.common import image_rng, to_uint8
from course_lib.engine import fit, save_checkpoint
from course_lib.segmentation.common import IMAGENET_MEAN, IMAGENET_STD

__all__ = ["PRETRAINED", "NETWORKS", "network_settings", "backbone_path", "backbone_weights", "build_backbone",
           "CLASSES", "ObjectCrops", "Classifier", "VGG16Classifier", "resnet_classifier", "vgg_classifier",
           "classifier", "classification_loss", "accuracy", "backbone_state_dict", "pretrain"]

#: the classes, in label order: the traffic signs of ``small_objects``, then the shapes of ``multiscale``
CLASSES: tuple[str, ...] = (tuple(f"sign:{c[0]}" for c in traffic_signs.SIGN_CLASSES)
                            + tuple(f"shape:{c[0]}" for c in multiscale.SHAPE_CLASSES))
_SIGNS = len(traffic_signs.SIGN_CLASSES)
_SPLITS = ("train", "val")

#: a profile's ``detector.weights_backbone`` / ``rcnn.weights_backbone`` naming this module's file:
#: :func:`backbone_weights` resolves it
PRETRAINED = "pretrained"

#: the networks pretrained here: the detectors' ResNet-50 (chapters 5-8, ``profile.detector``) and chapter 4's VGG16
#: (R-CNN's, which Fast R-CNN starts from; ``profile.rcnn``)
NETWORKS = ("resnet50", "vgg16")
_NAMES = {"resnet50": "ResNet-50", "vgg16": "VGG16"}


def _check_network(network: str) -> None:
    if network not in NETWORKS:
        raise ValueError(f"network={network!r}: the course pretrains {', '.join(map(repr, NETWORKS))}.")


def network_settings(profile, network: str) -> tuple[str | None, float]:
    """``(weights_backbone, width)`` of ``profile``'s ``network``: the detectors' ResNet-50 reads ``profile.detector``,
    chapter 4's VGG16 ``profile.rcnn``."""
    _check_network(network)
    part = profile.detector if network == "resnet50" else profile.rcnn
    return part.weights_backbone, part.width


def backbone_path(root: str | os.PathLike, width: float, network: str = "resnet50") -> Path:
    """The pretrained ``network`` (ResNet-50 or VGG16) at ``width`` under a profile's data folder ``root``
    (``data/<profile>``)."""
    _check_network(network)
    return Path(root) / "pretrained" / f"{network}_w{width:g}.pth"


def backbone_weights(profile, network: str = "resnet50") -> str | Path | None:
    """What a model of ``profile`` passes as ``weights_backbone``: the profile's setting for ``network`` (the
    detectors' ResNet-50: ``detector.weights_backbone``; chapter 4's VGG16: ``rcnn.weights_backbone``) --
    torchvision's ImageNet weights by name in ``gpu``, None for random -- or, where that is :data:`PRETRAINED`
    (``cpu``, ``ci``), the file this module's :func:`pretrain` wrote for the profile's width, which must exist."""
    from course_lib.data.paths import data_root

    weights, width = network_settings(profile, network)
    if weights != PRETRAINED:
        return weights
    path = backbone_path(data_root() / profile.name, width, network)
    if not path.is_file():
        raise FileNotFoundError(
            f"The {profile.name!r} profile's models start from the course's pretrained {_NAMES[network]} at width "
            f"{width:g}, and {path} does not exist. Build it once (about 10 minutes in cpu, seconds in ci; "
            f"resumable): `make lab`, or `python data_scripts/pretrain_backbones.py --profile {profile.name}`.")
    return path


def build_backbone(profile, network: str = "resnet50", *, root: str | os.PathLike | None = None, seed: int = 0,
                   num_workers: int = 0, val_crops: int = 0, progress: bool = True) -> Path | None:
    """Pretrain ``profile``'s ``network`` file if the profile uses one (:data:`PRETRAINED`) and it is missing, under
    ``root`` (default ``data_root() / profile.name``); resumable (:func:`pretrain`). Returns its path, None if the
    profile uses none. What ``make lab``, ``make test`` and an installed chapter's set-up cell run, for each of
    :data:`NETWORKS`."""
    from course_lib.data.paths import data_root

    weights, width = network_settings(profile, network)
    if weights != PRETRAINED:
        return None
    path = backbone_path(root if root is not None else data_root() / profile.name, width, network)
    if not path.is_file():
        settings = profile.pretraining
        if progress:
            print(f"Pretraining the {profile.name!r} profile's {_NAMES[network]} (width {width:g}) on "
                  f"{settings.steps * settings.batch_size:,} synthetic crops, once: {path}")
        path.parent.mkdir(parents=True, exist_ok=True)
        summary = pretrain(path, network=network, width=width, steps=settings.steps, batch_size=settings.batch_size,
                           size=settings.crop_size, seed=seed, num_workers=num_workers, device=profile.device,
                           val_crops=val_crops, progress=progress)
        if progress and val_crops:
            print(f"top-1 accuracy on {val_crops} held-out crops: {summary['val_accuracy']:.3f}")
    return path


class ObjectCrops(torch.utils.data.Dataset):
    """``length`` square crops of ``size`` pixels, each one object of class ``i % len(CLASSES)`` (balanced) covering
    35-90 % of the side at a random place, on a street background (half of them) or ``multiscale``'s clutter.
    Item ``i``: ``(float32 [3, size, size] in 0..1, int64 label)``, the same for the same ``(seed, split, i)``."""

    def __init__(self, length: int, *, size: int = 64, seed: int = 0, split: str = "train"):
        if not (isinstance(length, int) and length >= 1):
            raise ValueError(f"ObjectCrops: length={length!r} must be an integer >= 1 (the number of crops).")
        if not (isinstance(size, int) and size >= 16):
            raise ValueError(f"ObjectCrops: size={size!r} must be an integer >= 16 pixels (objects are drawn at "
                             "35-90 % of it).")
        if split not in _SPLITS:
            raise ValueError(f"ObjectCrops: split={split!r}; use one of {_SPLITS} (their crops never coincide).")
        self.length, self.size, self.seed, self.split = length, size, int(seed), split
        self.classes = CLASSES

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        if not 0 <= index < self.length:
            raise IndexError(f"ObjectCrops index {index} out of range (length {self.length}).")
        return torch.from_numpy(self.draw(index)).permute(2, 0, 1).float().div_(255), \
            torch.tensor(index % len(CLASSES))

    def draw(self, index: int) -> np.ndarray:
        """Crop ``index`` as ``uint8 [size, size, 3]``."""
        rng = image_rng(self.seed, f"pretraining-{self.split}", index)
        label, s = index % len(CLASSES), self.size
        if rng.random() < 0.5:
            image = traffic_signs.street_background(rng, s, s)
        else:
            image = multiscale._background(rng, s, s)
        side = rng.uniform(0.35, 0.9) * s
        aspect = math.exp(rng.uniform(math.log(0.7), math.log(1.4)))
        if label < _SIGNS:  # the sign's own aspect (triangles are lower than wide), lit as in small_objects
            aspect = traffic_signs.ASPECT.get(traffic_signs.SIGN_CLASSES[label][2], 1.0)
        w = int(np.clip(round(side / math.sqrt(aspect)), 6, s))
        h = int(np.clip(round(side * math.sqrt(aspect)), 6, s))
        x, y = int(rng.integers(0, s - w + 1)), int(rng.integers(0, s - h + 1))
        region = image[y: y + h, x: x + w]
        if label < _SIGNS:
            rgba = traffic_signs.render_sign(label + 1, w, h)
            light = rng.uniform(0.6, 1.1) * (1 + rng.uniform(-0.06, 0.06, 3))
            alpha = rgba[..., 3:]
            region[:] = region * (1 - alpha) + 255.0 * rgba[..., :3] * light * alpha
        else:
            shape = label - _SIGNS + 1
            mask = multiscale.shape_mask(shape, w, h, rng)
            colour = np.array(multiscale.SHAPE_CLASSES[shape - 1][1], np.float32) + rng.uniform(-35, 35, 3)
            region[mask] = colour * (1 + 0.1 * np.linspace(-1, 1, h)[:, None].repeat(w, 1)[mask])[:, None]
        image = image + rng.normal(0, 4, image.shape).astype(np.float32)
        return to_uint8(image)


class Classifier(nn.Module):
    """A backbone with its classifier, fed 0..1 images: normalised first with the detectors' ImageNet mean and std
    (``GeneralizedRCNNTransform``'s), so the backbone sees here the values it will see in a detector."""

    def __init__(self, network: nn.Module):
        super().__init__()
        self.network = network
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: Tensor) -> Tensor:
        return self.network((images - self.mean) / self.std)


def resnet_classifier(width: float, num_classes: int = len(CLASSES)) -> Classifier:
    """The course's ResNet-50 at ``width`` (the profile's ``detector.width``) with ordinary batch norm and a
    ``num_classes``-way classifier: the network whose body the detectors cut
    (:func:`course_lib.backbones.resnet.build_resnet`)."""
    return Classifier(resnet50(width=width, num_classes=num_classes))


class VGG16Classifier(VGG16):
    """VGG16's thirteen convolutions (:class:`course_lib.backbones.vgg.VGG16`, torchvision's ``features.*`` names)
    with a classifier that fits any crop: pool5 averaged over its positions, then one linear layer (``fc``). The
    paper's fc6 reads a 7 x 7 pool5, i.e. a 224-px input; the pretraining's 64-px crops give a 2 x 2 one. So the
    convolutions are pretrained and fc6 / fc7 start at random in the detector, where R-CNN's fine-tuning trains them."""

    def __init__(self, width: float, num_classes: int = len(CLASSES)):
        super().__init__(width=width, fully_connected=False)
        self.fc = nn.Linear(self.out_channels["pool5"], num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(super().forward(x)["pool5"].mean((2, 3)))


def vgg_classifier(width: float, num_classes: int = len(CLASSES)) -> Classifier:
    """The course's VGG16 at ``width`` (the profile's ``rcnn.width``) as a ``num_classes``-way classifier
    (:class:`VGG16Classifier`)."""
    return Classifier(VGG16Classifier(width, num_classes))


def classifier(network: str, width: float, num_classes: int = len(CLASSES)) -> Classifier:
    """:func:`resnet_classifier` or :func:`vgg_classifier`, by ``network`` (one of :data:`NETWORKS`)."""
    _check_network(network)
    return (resnet_classifier if network == "resnet50" else vgg_classifier)(width, num_classes)


def classification_loss(model: Classifier, batch) -> dict[str, Tensor]:
    """``fit``'s ``loss_fn``: cross-entropy of the batch's logits."""
    images, labels = batch
    return {"loss_classifier": F.cross_entropy(model(images), labels)}


@torch.no_grad()
def accuracy(model: Classifier, dataset, *, batch_size: int = 64) -> float:
    """Top-1 accuracy of ``model`` (eval mode) on ``dataset``."""
    was = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size)
        right = sum(int((model(x.to(device)).argmax(1) == y.to(device)).sum()) for x, y in loader)
    finally:
        model.train(was)
    return right / len(dataset)


def backbone_state_dict(model: Classifier) -> dict[str, Tensor]:
    """The network's state dict without its classifier (``fc.*``): what ``weights_backbone=<file>`` loads."""
    return {k: v.detach().clone().contiguous() for k, v in model.network.state_dict().items()
            if not k.startswith("fc.")}


def pretrain(out: str | os.PathLike, *, width: float, steps: int, network: str = "resnet50", batch_size: int = 64,
             size: int = 64, lr: float = 2e-3, seed: int = 0, checkpoint_path: str | os.PathLike | None = None,
             checkpoint_every: int = 100, num_workers: int = 0, val_crops: int = 0, device=None,
             progress: bool = True, callback=None) -> dict:
    """Pretrain a ``network`` classifier (ResNet-50 or VGG16, :func:`classifier`) at ``width`` on
    ``steps * batch_size`` fresh :class:`ObjectCrops` (each seen once) with AdamW at ``lr`` (warm-up over the first
    5 %, then cosine to 0), and save its backbone's state dict to ``out`` atomically. ``checkpoint_path`` (default ``out`` + ``.ckpt``): :func:`course_lib.engine.fit`'s checkpoint
    -- run again with the same arguments after an interruption to resume; it is deleted once ``out`` is written.
    ``val_crops`` > 0: top-1 accuracy on that many crops of the ``val`` split; ``device``: fit's (default CUDA if
    available); ``callback``: fit's. Returns a summary dict."""
    out = Path(out)
    checkpoint = Path(checkpoint_path) if checkpoint_path is not None else out.with_name(out.name + ".ckpt")
    torch.manual_seed(seed)
    model = classifier(network, width)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    warmup = max(1, steps // 20)
    cosine = lambda step: 0.5 * (1 + math.cos(math.pi * min(step, steps) / steps))  # noqa: E731
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / warmup) * cosine(step))
    crops = ObjectCrops(steps * batch_size, size=size, seed=seed)
    history = fit(model, crops, classification_loss, optimizer, steps=steps, batch_size=batch_size,
                  lr_scheduler=schedule, device=device, seed=seed, checkpoint_path=checkpoint,
                  checkpoint_every=checkpoint_every, num_workers=num_workers, progress=progress, callback=callback)
    save_checkpoint(out, backbone_state_dict(model))
    checkpoint.unlink(missing_ok=True)
    summary = {"file": str(out), "network": network, "width": width, "steps": steps, "batch_size": batch_size,
               "size": size, "seed": seed, "classes": len(CLASSES), "last_loss": history.last["loss"] if history.last else None,
               "seconds": history.last["time"] if history.last else None}
    if val_crops:
        summary["val_accuracy"] = accuracy(model, ObjectCrops(val_crops, size=size, seed=seed, split="val"))
    return summary
