"""Each chapter's paper recipe -- optimiser, learning rate and its steps, batch, iterations, input size, ImageNet
backbone -- in one place, with where every value comes from, and the linear scaling rule that fits it to the GPUs
at hand::

    >>> from course_lib import recipes
    >>> recipes.RECIPES["07"].lr, recipes.RECIPES["07"].batch          # FPN: 0.02 for 8 GPUs x 2 images
    (0.02, 16)
    >>> s = recipes.scaled("07", gpus=1, images_per_gpu=2)           # one GPU: lr / 8, 8x the iterations
    >>> s.lr, s.iterations, s.milestones, s.images_seen
    (0.0025, 640000, (480000,), 1280000)
    >>> print(recipes.RECIPES["07"].source("lr"))  # where the 0.02 stands in the paper  # doctest: +ELLIPSIS
    Lin, Dollar, ... -- Sec. 5.2, Implementation details (Fast/Faster R-CNN), learning rate (COCO trainval35k)

A value a paper states is read from its cited entry in :mod:`course_lib.papers` (``sources[field]`` names the
key, ``"papers:<key>"``); a value the paper states in words is ``"paper: <where>"``; a value the paper leaves
out is the authors' released solver/config file's (``"released: <repository> <path>"``) or, failing that, the
course's own choice (``"course: ..."``) -- :meth:`Recipe.source` says which, for every field.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from course_lib import papers

__all__ = ["Recipe", "Schedule", "RECIPES", "WARMUP", "scaled", "mean_loss_sgd", "SCHEDULES", "schedule_fraction",
           "CPU_S_PER_IMAGE", "ONE_DAY", "estimated_gpu_hours"]

# Sources that are not a paper (the paper's own numbers are papers.py keys, "papers:<key>").
_DETECTRON = "released: facebookresearch/Detectron configs/12_2017_baselines/e2e_faster_rcnn_R-50-FPN_1x.yaml"
_DETECTRON_DEFAULTS = "released: facebookresearch/Detectron detectron/core/config.py"
_RCNN_SOLVER = "released: rbgirshick/rcnn finetuning/vgg16/vgg16_pascal_finetune_solver.prototxt"
_FCN_SOLVER = "released: shelhamer/fcn.berkeleyvision.org voc-fcn32s/solver.prototxt (weight_decay: 0.0005)"
_FCN_NET = "released: shelhamer/fcn.berkeleyvision.org voc-fcn32s/net.py (SoftmaxWithLoss, normalize=False)"
_TORCHVISION = "torchvision's ImageNet weights (course_lib/backbones/weights.py): the era's V1 training"


class _Batch:
    """``batch = gpus * images_per_gpu`` images a step; ``images_seen`` over the whole run."""

    @property
    def batch(self) -> int:
        return self.gpus * self.images_per_gpu

    @property
    def images_seen(self) -> int:
        return self.iterations * self.batch


@dataclass(frozen=True)
class Recipe(_Batch):
    """One training run as its paper gives it. ``lr_steps``: the iterations after which the learning rate is
    multiplied by ``lr_decay``; ``iterations``: the whole run; ``batch = gpus * images_per_gpu`` images a step."""

    chapter: str
    name: str
    paper: str  # a papers.PAPERS key
    dataset: str
    optimizer: str
    lr: float
    momentum: float
    weight_decay: float
    gpus: int
    images_per_gpu: int
    iterations: int
    lr_steps: tuple[int, ...]
    lr_decay: float
    min_size: int  # shorter side (detection) or the square tile / crop side (segmentation)
    max_size: int | None  # longer side cap (None: a square crop)
    arch: str | None  # the torchvision classifier the backbone starts from (None: from scratch, as U-Net)
    weights_backbone: str | None  # its weights, a name resolve_weights(name, arch) takes
    warmup_iters: int | None = None  # the paper's warm-up (None: it states none)
    loss: str = "mean"  # what lr is for: a loss averaged over the batch ("mean") or summed over its pixels ("sum")
    note: str = ""
    sources: dict = field(default_factory=dict, compare=False)

    def paper_keys(self) -> dict[str, tuple[str, ...]]:
        """``{field: (papers keys it is read from)}`` for the values the paper states."""
        return {f: tuple(src.removeprefix("papers:").split("+"))
                for f, src in self.sources.items() if src.startswith("papers:")}

    def source(self, name: str, *, short: bool = False) -> str:
        """Where ``name``'s value comes from: the paper's table/section and row, a released file, or the course
        (``short``: without the paper's title, for a table under it)."""
        src = self.sources[name]
        if not src.startswith("papers:"):
            return src
        if short:
            return " + ".join(f"{papers.number(k).table}, {papers.number(k).row}: {papers.number(k).column}"
                              for k in self.paper_keys()[name])
        return " + ".join(papers.cite(k) for k in self.paper_keys()[name])


    def to_markdown(self) -> str:
        """The recipe as a notebook shows it: one row per value, with where it comes from."""
        names = ("optimizer", "lr", "lr_steps", "lr_decay", "iterations", "momentum", "weight_decay", "gpus",
                 "images_per_gpu", "min_size", "max_size", "arch", "weights_backbone") + (("loss",) * (self.loss != "mean"))
        rows = [f"| {n} | {getattr(self, n)!r} | {self.source(n, short=True)} |" for n in names]
        return "\n".join([f"**{self.name}** ({self.dataset}); paper: {papers.PAPERS[self.paper]}", "",
                           "| | value | source |", "|---|---|---|", *rows]
                         + (["", self.note] if self.note else []))

    def _repr_markdown_(self) -> str:
        return self.to_markdown()


def _recipe(chapter: str, name: str, paper: str, dataset: str, **fields) -> Recipe:
    """A Recipe whose fields are given as ``P(key, ...)`` (the paper's, read from papers.py), or ``(value, source)``."""
    values, sources = {}, {}
    for k, v in fields.items():
        if isinstance(v, P):
            values[k], sources[k] = v.value, "papers:" + "+".join(v.keys)
        elif isinstance(v, tuple) and len(v) == 2 and isinstance(v[1], str):
            values[k], sources[k] = v
        else:
            values[k] = v  # note, warmup None ...
    return Recipe(chapter=chapter, name=name, paper=paper, dataset=dataset, sources=sources, **values)


class P:
    """A value read from papers.py: one key, or several combined by ``combine`` (e.g. two schedule phases summed)."""

    def __init__(self, *keys: str, combine=None):
        self.keys, self.combine = keys, combine

    @property
    def value(self):
        vals = [papers.value(k) for k in self.keys]
        return self.combine(*vals) if self.combine else vals[0]


_sum = lambda *v: sum(v)  # noqa: E731 -- two schedule phases: the whole run
_tuple = lambda *v: tuple(v)  # noqa: E731
_ratio = lambda low, high: low / high  # noqa: E731 -- the lowered learning rate over the first


def _two_phase(prefix: str) -> dict:
    """lr, momentum, weight decay and the two-phase step schedule that Fast/Faster R-CNN, R-FCN and FPN all state as
    "<lr> for <n> mini-batches, then <lr/10> for <m>" -- read from ``<prefix>.{lr,iterations,lr_low,...}``."""
    k = lambda c: f"{prefix}.{c}"  # noqa: E731
    return dict(optimizer=("sgd", "paper: SGD, in the section that gives the schedule"), lr=P(k("lr")),
                momentum=P(k("momentum")), weight_decay=P(k("weight_decay")),
                iterations=P(k("iterations"), k("iterations_low"), combine=_sum),
                lr_steps=P(k("iterations"), combine=_tuple), lr_decay=P(k("lr_low"), k("lr"), combine=_ratio))


_IMAGENET = lambda arch: (arch, "paper: an ImageNet-pretrained " + arch)  # noqa: E731
_V1 = ("IMAGENET1K_V1", _TORCHVISION)

_ALL = [
    _recipe("02", "FCN-VGG16 (each of the FCN-32s, -16s, -8s stages)", "fcn", "PASCAL VOC 2011 + SBD (8498 images)",
            optimizer=("sgd", "paper: Sec. 4.3 'We train by SGD with momentum'"),
            lr=P("fcn.sec4_3.optimizer.lr_vgg16"), momentum=P("fcn.sec4_3.optimizer.momentum"),
            weight_decay=(5e-4, _FCN_SOLVER + "; the paper: '5^-4 or 2^-4' (fcn.sec4_3.optimizer.weight_decay)"),
            gpus=(1, "paper: Sec. 4.3 'a single NVIDIA Tesla K40c'"),
            images_per_gpu=P("fcn.sec4_3.optimizer.minibatch"),
            iterations=P("fcn.sec4_1.fixed_lr.epochs", "fcn.sec4_3.more_data.images", "fcn.sec4_3.optimizer.minibatch",
                         combine=lambda e, n, b: math.ceil(e * n / b)),
            lr_steps=((), "paper: Sec. 4.3 'fixed learning rates'"), lr_decay=(1.0, "paper: a fixed rate"),
            loss=("sum", _FCN_NET),
            min_size=(320, "course: the gpu profile's crop (the paper trains on whole images)"),
            max_size=(None, "course: a square crop"),
            arch=_IMAGENET("vgg16"), weights_backbone=_V1,
            note="The learning rate is for a loss summed over pixels (the released net.py: SoftmaxWithLoss "
                 "normalize=False); with a pixel-mean loss multiply it by the pixels of a batch. FCN-16s/8s start "
                 "from the stage before with the rate divided by 100 (fcn.sec4_2.stage.lr_drop). The released "
                 "solver trains differently: batch 1, momentum 0.99, lr 1e-10, 100k iterations."),
    _recipe("03", "U-Net", "unet", "ISBI 2012 EM / cell tracking (the course: synthetic cells)",
            optimizer=("sgd", "paper: Sec. 3 'the stochastic gradient descent implementation of Caffe'"),
            lr=(1e-2, "course: the paper states none (mean-reduced loss)"), momentum=P("unet.sec3.optimizer.momentum"),
            weight_decay=(0.0, "course: the paper states none"), gpus=(1, "paper: Sec. 5 'a NVidia Titan GPU'"),
            images_per_gpu=P("unet.sec3.optimizer.batch"),
            iterations=(20000, "course: the paper states none (the gpu profile's 20,000 steps)"),
            lr_steps=((), "course: a fixed rate"), lr_decay=(1.0, "course: a fixed rate"),
            min_size=(492, "course: the gpu profile's tile (492 -> 308 px); the text states no tile size"),
            max_size=(None, "course: a square tile"),
            arch=(None, "paper: Sec. 3, trained from scratch (Gaussian init, std sqrt(2/N))"),
            weights_backbone=(None, "paper: no pretraining")),
    _recipe("04", "Fast R-CNN VGG16", "fast_rcnn", "PASCAL VOC 2007 trainval",
            **_two_phase("fast_rcnn.sec2_3.sgd"), gpus=(1, "paper: Table 4, one Nvidia K40 GPU"),
            images_per_gpu=P("fast_rcnn.sec2_3.minibatch.images"),
            min_size=P("fast_rcnn.sec5_2.scale.min_size"), max_size=P("fast_rcnn.sec5_2.scale.max_size"),
            arch=_IMAGENET("vgg16"), weights_backbone=_V1,
            note="128 RoIs per mini-batch, 64 from each image (fast_rcnn.sec2_3.minibatch.rois). R-CNN's fine-tuning "
                 "(same chapter) starts SGD at 0.001 (rcnn.sec2_3.finetune.lr) on 128 warped windows "
                 "(rcnn.sec2_3.finetune.batch); its iterations are not in the paper."),
    _recipe("04.rcnn", "R-CNN fine-tuning VGG16 (one warped window = one 'image')", "rcnn", "PASCAL VOC",
            optimizer=("sgd", "paper: Sec. 2.3 'stochastic gradient descent (SGD) training of the CNN parameters'"),
            lr=P("rcnn.sec2_3.finetune.lr"), momentum=(0.9, _RCNN_SOLVER + " (momentum: 0.9)"),
            weight_decay=(5e-4, _RCNN_SOLVER + " (weight_decay: 0.0005)"), gpus=(1, "course: one GPU"),
            images_per_gpu=P("rcnn.sec2_3.finetune.batch"),
            iterations=(100000, _RCNN_SOLVER + " (max_iter: 100000)"),
            lr_steps=((20000, 40000, 60000, 80000), _RCNN_SOLVER + " (lr_policy: step, stepsize: 20000, gamma: 0.1)"),
            lr_decay=(0.1, _RCNN_SOLVER + " (gamma: 0.1)"),
            min_size=(224, "course: VGG16's 224 x 224 warp (the paper's AlexNet takes 227, rcnn.sec2_1.input_size)"),
            max_size=(None, "course: a square warp"),
            arch=_IMAGENET("vgg16"), weights_backbone=_V1,
            note="32 positive and 96 background windows a mini-batch (Sec. 2.3); then one linear SVM per class."),
    _recipe("05", "Faster R-CNN (the course: ResNet-50 C4)", "faster_rcnn", "PASCAL VOC 2007 trainval",
            **_two_phase("faster_rcnn.sec3_1_3.sgd"),
            gpus=(1, "course: one GPU (the paper's timings, Table 5, are on one K40)"),
            images_per_gpu=P("faster_rcnn.sec3_1_3.minibatch.images"),
            min_size=P("faster_rcnn.sec3_3.scale.min_size"),
            max_size=P("fast_rcnn.sec5_2.scale.max_size"),
            arch=("resnet50", "course: ResNet-50 C4 (the FPN paper's Table 3(a) baseline); the paper tunes VGG-16"),
            weights_backbone=_V1,
            note="The paper's schedule is one stage of its 4-step alternating training, with VGG-16 (conv3_1 and up "
                 "tuned); the course trains its R50-C4 end to end on that schedule. Max side: Fast R-CNN's cap, "
                 "which Faster R-CNN's Sec. 3.3 follows ([2])."),
    _recipe("06", "R-FCN ResNet-101", "rfcn", "PASCAL VOC 07+12 trainval",
            **_two_phase("rfcn.sec2.sgd"), gpus=P("rfcn.sec2.training.gpus"),
            images_per_gpu=P("rfcn.sec2.training.images_per_gpu"), min_size=P("rfcn.sec2.training.min_size"),
            max_size=(1000, "course: the paper states none; Fast R-CNN's cap (fast_rcnn.sec5_2.scale.max_size)"),
            arch=_IMAGENET("resnet101"), weights_backbone=_V1,
            note="OHEM: 128 of 300 RoIs per image back-propagated. The paper alternates RPN and R-FCN training "
                 "(4 steps); the schedule is the R-FCN step's."),
    _recipe("07", "Faster R-CNN ResNet-50 FPN", "fpn", "COCO trainval35k",
            **_two_phase("fpn.sec5_2.sgd"), gpus=P("fpn.sec5_2.training.gpus"),
            images_per_gpu=P("fpn.sec5_2.training.images_per_gpu"), min_size=P("fpn.sec5_2.training.min_size"),
            max_size=(1333, _DETECTRON + " (TRAIN.MAX_SIZE: 1333); the paper states none"),
            arch=_IMAGENET("resnet50"), weights_backbone=_V1,
            note="512 RoIs per image, 2000 proposals for training and 1000 for testing (Sec. 5.2)."),
    *[_recipe(f"08.{i}", f"EFPN stage {i}: {what}", "efpn", "Tsinghua-Tencent 100K (the course: a synthetic stand-in)",
              optimizer=("sgd", _DETECTRON), lr=(0.02, _DETECTRON + " (BASE_LR: 0.02)"),
              momentum=(0.9, _DETECTRON_DEFAULTS + " (SOLVER.MOMENTUM = 0.9)"),
              weight_decay=(1e-4, _DETECTRON + " (WEIGHT_DECAY: 0.0001)"),
              gpus=(8, _DETECTRON + " (NUM_GPUS: 8)"),
              images_per_gpu=(2, _DETECTRON_DEFAULTS + " (TRAIN.IMS_PER_BATCH = 2)"),
              iterations=(iters, src), lr_steps=(steps, src), lr_decay=(0.1, _DETECTRON + " (GAMMA: 0.1)"),
              min_size=P("efpn.sec4_a3.tt100k.input_size"), max_size=P("efpn.sec4_a3.tt100k.input_size"),
              arch=_IMAGENET("resnet50"), weights_backbone=_V1,
              warmup_iters=None,
              note="The paper's only schedule is \"we follow the training scheme in Detectron\" (efpn.sec4_a3.coco."
                   "schedule): stage 1 is Detectron's 1x R-50-FPN run; stages 2 and 3 (backbone and heads frozen; "
                   "then the P2' head with OHEM) have no stated length -- the course's choice.")
      for i, what, iters, steps, src in (
          (1, "the FPN baseline", 90000, (60000, 80000), _DETECTRON + " (MAX_ITER: 90000, STEPS: [0, 60000, 80000])"),
          (2, "the extension, by cross-resolution distillation", 45000, (30000, 40000),
           "course: half of stage 1 (the paper states none)"),
          (3, "the P2' head with OHEM", 22500, (15000, 20000),
           "course: a quarter of stage 1 (the paper states none)"))],
]
RECIPES: dict[str, Recipe] = {r.chapter: r for r in _ALL}  # "02" ... "07", and EFPN's stages "08.1" ... "08.3"


# ------------------------------------------------------------------------ the linear scaling rule, with warm-up

# Goyal et al., "Accurate, Large Minibatch SGD: Training ImageNet in 1 Hour" (2017), Sec. 2.1: "Linear Scaling Rule:
# When the minibatch size is multiplied by k, multiply the learning rate by k"; Sec. 2.2: a gradual warm-up. The
# warm-up is Detectron's default, the code FPN's authors released (detectron/core/config.py: SOLVER.WARM_UP_ITERS =
# 500, WARM_UP_FACTOR = 1.0 / 3.0, WARM_UP_METHOD = 'linear'), capped at a fifth of a short run as
# engine.detector_optimizer caps it. None of the course's papers states a warm-up.
WARMUP = {"iters": 500, "factor": 1 / 3, "source": _DETECTRON_DEFAULTS + " (SOLVER.WARM_UP_ITERS = 500, "
          "WARM_UP_FACTOR = 1.0 / 3.0, 'linear'); Goyal et al. 2017, Sec. 2.2 (gradual warm-up)"}


@dataclass(frozen=True)
class Schedule(_Batch):
    """A recipe fitted to ``gpus`` x ``images_per_gpu``: what a notebook's ``gpu`` run passes to its optimiser."""

    recipe: Recipe
    gpus: int
    images_per_gpu: int
    lr: float
    weight_decay: float
    iterations: int
    milestones: tuple[int, ...]
    warmup_iters: int
    warmup_factor: float

    def optimizer_kwargs(self, *, loss_terms: int | None = None) -> dict:
        """``torch.optim.SGD(params, **schedule.optimizer_kwargs())``. A recipe whose rate is for a loss summed over
        pixels (FCN's, ``recipe.loss == "sum"``) is trained here on their mean: ``loss_terms`` = the pixels a batch's
        mean averages, and the rate and weight decay become those that make the same SGD steps
        (:func:`mean_loss_sgd`). A mean-loss recipe ignores ``loss_terms``."""
        lr, weight_decay = self.lr, self.weight_decay
        if self.recipe.loss == "sum":
            if loss_terms is None:
                raise ValueError(f"recipe {self.recipe.chapter}'s learning rate {lr:g} is for a loss summed over "
                                 "pixels: pass loss_terms = the pixels of a batch (batch x crop height x crop width) "
                                 "to train on the pixel-mean loss with the equivalent rate.")
            lr, weight_decay = mean_loss_sgd(lr, weight_decay, _positive_int("loss_terms", loss_terms))
        return {"lr": lr, "momentum": self.recipe.momentum, "weight_decay": weight_decay}

    def lr_factor(self, step: int) -> float:
        """The multiplier of ``lr`` at ``step`` (0-based): a linear warm-up from ``warmup_factor``, then x
        ``lr_decay`` at each milestone -- ``torch.optim.lr_scheduler.LambdaLR(optimizer, schedule.lr_factor)``."""
        decay = self.recipe.lr_decay ** sum(step >= m for m in self.milestones)
        if step < self.warmup_iters:
            alpha = step / self.warmup_iters
            return decay * (self.warmup_factor * (1 - alpha) + alpha)
        return decay


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}={value!r}: a recipe takes a positive integer number of {name.replace('_', ' ')} "
                         "(e.g. gpus=1, images_per_gpu=2).")
    return value


def scaled(recipe: str | Recipe, *, gpus: int = 1, images_per_gpu: int | None = None,
           fraction: float = 1.0) -> Schedule:
    """``recipe`` (a key of RECIPES or a Recipe) on ``gpus`` x ``images_per_gpu`` (default: the paper's per GPU).

    The linear scaling rule: with k = (gpus x images_per_gpu) / the paper's batch, the learning rate is x k and the
    iterations and learning-rate steps / k, so the images seen stay the paper's (to the nearest step). A loss summed
    over the batch's pixels (FCN's) already has k in its gradient: its rate stays, and its weight decay, which acts
    once a step, is x k -- the same rule written for a sum (k small steps = one step on k times the batch, decay
    included). ``fraction`` < 1 shortens the run and its steps alike (a shorter schedule, not the paper's). The
    warm-up is :data:`WARMUP`.
    """
    r = RECIPES[recipe] if isinstance(recipe, str) else recipe
    gpus = _positive_int("gpus", gpus)
    images_per_gpu = _positive_int("images_per_gpu", r.images_per_gpu if images_per_gpu is None else images_per_gpu)
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction={fraction!r}: the part of the paper's schedule to run, in (0, 1].")
    k = gpus * images_per_gpu / r.batch
    iterations = max(1, round(r.iterations * fraction / k))
    milestones = tuple(max(1, round(m * fraction / k)) for m in r.lr_steps)
    warmup = r.warmup_iters if r.warmup_iters is not None else min(WARMUP["iters"], iterations // 5)
    lr, weight_decay = (r.lr, r.weight_decay * k) if r.loss == "sum" else (r.lr * k, r.weight_decay)
    return Schedule(r, gpus, images_per_gpu, lr=lr, weight_decay=weight_decay, iterations=iterations,
                    milestones=milestones, warmup_iters=warmup, warmup_factor=WARMUP["factor"])


def mean_loss_sgd(lr: float, weight_decay: float, terms: int) -> tuple[float, float]:
    """``(lr * terms, weight_decay / terms)``: SGD on a loss *summed* over ``terms`` terms with ``lr`` and
    ``weight_decay`` makes exactly the steps of SGD on their *mean* with these. With S = N x M (sum = N x mean):
    ``lr * (grad S + wd * w) = (lr * N) * (grad M + (wd / N) * w)``, so every gradient, and every momentum buffer
    built from them, is the same up to the factor N that the rate absorbs. FCN's rate is for the sum (its released
    net.py: ``SoftmaxWithLoss`` with ``normalize=False``); the course's loss is the pixel mean (N = the pixels of a
    batch; where pixels are ignored, label 255, the mean is over fewer and the match is approximate)."""
    return lr * terms, weight_decay / terms


# ------------------------------------------------------------------------ the schedule a gpu run takes

# ``Profile.schedule``: the part of each recipe's iterations a gpu run trains -- the paper's whole schedule, or the
# shorter one an instructor can finish in a day (:data:`ONE_DAY`, below).
SCHEDULES = ("paper", "one_day")


def schedule_fraction(schedule: str, recipe: str) -> float:
    """The ``fraction`` of :func:`scaled` for ``recipe`` under the schedule ``schedule`` (one of :data:`SCHEDULES`)."""
    if schedule == "paper":
        return 1.0
    if schedule == "one_day":
        return ONE_DAY.get(recipe, 1.0)
    raise ValueError(f"schedule={schedule!r}: one of {', '.join(map(repr, SCHEDULES))} (the paper's iterations, "
                     "or recipes.ONE_DAY's part of them).")


# ------------------------------------------------------------------------ what a full recipe costs

# CPU seconds per training image at the gpu sizes, one core of a shared 2-core machine (README, "What a gpu run
# costs"; make test-fullsize). GPU hours ~ CPU s / 300 (the factor that maps the course's R50-FPN CPU step to
# Detectron2's published R50-FPN speed, 0.105 s/image per V100): a V100-class estimate, not a measurement.
CPU_S_PER_IMAGE = {"02": 22.0, "03": 26.5, "05": 135.0, "06": 55.0, "07": 32.0, "08.1": 84.0, "08.2": 84.0,
                   "08.3": 84.0}
CPU_TO_GPU = 300.0


# A shorter schedule an instructor can run in a day (about 12 GPU hours at the estimate above): the part of each
# recipe's iterations that ``scaled(..., fraction=ONE_DAY.get(key, 1.0))`` runs. Not the paper's schedule; what it
# reaches is not measured.
ONE_DAY = {"02": 1 / 8, "07": 1 / 4, "08.1": 1 / 16, "08.2": 1 / 16, "08.3": 1 / 16}


def estimated_gpu_hours(recipe: str | Recipe, *, fraction: float = 1.0, s_per_image: float | None = None) -> float:
    """Hours on one GPU for the recipe's images: ``s_per_image`` (measured, e.g. by make gpu-check) or the
    README's CPU s/image / 300; NaN where neither is known (chapter 04)."""
    r = RECIPES[recipe] if isinstance(recipe, str) else recipe
    if s_per_image is None:
        cpu = CPU_S_PER_IMAGE.get(r.chapter)
        s_per_image = cpu / CPU_TO_GPU if cpu is not None else float("nan")
    return r.images_seen * fraction * s_per_image / 3600
