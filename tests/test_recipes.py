"""The recipe table is the papers': every value a paper states equals the number typed below from the paper's own
text (quoted beside it), the recipe reads it from its cited papers.py entry, every other value names a released
file or the course as its source, and every backbone is one torchvision can load. Then the linear scaling rule."""
import math

import pytest

from course_lib import papers, recipes
from course_lib.backbones.weights import resolve_weights

# Typed from the papers' text (found with the search tool; quotes abridged). A number changed in papers.py -- or a
# recipe that stops reading it -- fails here.
PAPER_TEXT = {
    # FCN (CVPR 2015) Sec. 4.3: "We use a minibatch size of 20 images and fixed learning rates of 10^-3, 10^-4, and
    # 5^-5 for FCN-AlexNet, FCN-VGG16, and FCN-GoogLeNet ... We use momentum 0.9, weight decay of 5^-4 or 2^-4";
    # Sec. 4.1: "(at least 175 epochs)"; Sec. 4.3: "a larger set of 8498 PASCAL training images"
    "fcn.sec4_3.optimizer.lr_vgg16": 1e-4, "fcn.sec4_3.optimizer.momentum": 0.9, "fcn.sec4_3.optimizer.minibatch": 20,
    "fcn.sec4_3.optimizer.weight_decay": "5e-4 or 2e-4", "fcn.sec4_1.fixed_lr.epochs": 175,
    "fcn.sec4_3.more_data.images": 8498,
    # U-Net Sec. 3: "reduce the batch to a single image. Accordingly we use a high momentum (0.99)"
    "unet.sec3.optimizer.momentum": 0.99, "unet.sec3.optimizer.batch": 1,
    # R-CNN Sec. 2.3: "We start SGD at a learning rate of 0.001 ... 32 positive windows (over all classes) and 96
    # background windows to construct a mini-batch of size 128"
    "rcnn.sec2_3.finetune.lr": 0.001, "rcnn.sec2_3.finetune.batch": 128,
    # Fast R-CNN Sec. 2.3: "a global learning rate of 0.001. When training on VOC07 or VOC12 trainval we run SGD for
    # 30k mini-batch iterations, and then lower the learning rate to 0.0001 and train for another 10k iterations ...
    # A momentum of 0.9 and parameter decay of 0.0005"; "N = 2 images"; Sec. 5.2: "s = 600 pixels ... we cap the
    # longest image side at 1000 pixels"
    "fast_rcnn.sec2_3.sgd.lr": 0.001, "fast_rcnn.sec2_3.sgd.iterations": 30000, "fast_rcnn.sec2_3.sgd.lr_low": 0.0001,
    "fast_rcnn.sec2_3.sgd.iterations_low": 10000, "fast_rcnn.sec2_3.sgd.momentum": 0.9,
    "fast_rcnn.sec2_3.sgd.weight_decay": 0.0005, "fast_rcnn.sec2_3.minibatch.images": 2,
    "fast_rcnn.sec5_2.scale.min_size": 600, "fast_rcnn.sec5_2.scale.max_size": 1000,
    # Faster R-CNN Sec. 3.1.3: "Each mini-batch arises from a single image ... a learning rate of 0.001 for 60k
    # mini-batches, and 0.0001 for the next 20k mini-batches on the PASCAL VOC dataset. We use a momentum of 0.9 and a
    # weight decay of 0.0005"; Sec. 3.3: "their shorter side is s = 600 pixels"
    "faster_rcnn.sec3_1_3.sgd.lr": 0.001, "faster_rcnn.sec3_1_3.sgd.iterations": 60000,
    "faster_rcnn.sec3_1_3.sgd.lr_low": 0.0001, "faster_rcnn.sec3_1_3.sgd.iterations_low": 20000,
    "faster_rcnn.sec3_1_3.sgd.momentum": 0.9, "faster_rcnn.sec3_1_3.sgd.weight_decay": 0.0005,
    "faster_rcnn.sec3_1_3.minibatch.images": 1, "faster_rcnn.sec3_3.scale.min_size": 600,
    # R-FCN Sec. 2 (Training): "a weight decay of 0.0005 and a momentum of 0.9 ... shorter side of image) is 600
    # pixels. Each GPU holds 1 image ... We train the model with 8 GPUs ... a learning rate of 0.001 for 20k
    # mini-batches and 0.0001 for 10k mini-batches on VOC"
    "rfcn.sec2.sgd.lr": 0.001, "rfcn.sec2.sgd.iterations": 20000, "rfcn.sec2.sgd.lr_low": 0.0001,
    "rfcn.sec2.sgd.iterations_low": 10000, "rfcn.sec2.sgd.momentum": 0.9, "rfcn.sec2.sgd.weight_decay": 0.0005,
    "rfcn.sec2.training.min_size": 600, "rfcn.sec2.training.images_per_gpu": 1, "rfcn.sec2.training.gpus": 8,
    # FPN Sec. 5.2 (Implementation details): "shorter side has 800 pixels. Synchronized SGD ... on 8 GPUs. Each
    # mini-batch involves 2 image per GPU and 512 RoIs per image. We use a weight decay of 0.0001 and a momentum of
    # 0.9. The learning rate is 0.02 for the first 60k mini-batches and 0.002 for the next 20k"
    "fpn.sec5_2.sgd.lr": 0.02, "fpn.sec5_2.sgd.iterations": 60000, "fpn.sec5_2.sgd.lr_low": 0.002,
    "fpn.sec5_2.sgd.iterations_low": 20000, "fpn.sec5_2.sgd.momentum": 0.9, "fpn.sec5_2.sgd.weight_decay": 0.0001,
    "fpn.sec5_2.training.min_size": 800, "fpn.sec5_2.training.gpus": 8, "fpn.sec5_2.training.images_per_gpu": 2,
    # EFPN Sec. IV-A3: "Images are resized to 1400 x 1400"; "we follow the training scheme in Detectron"
    "efpn.sec4_a3.tt100k.input_size": 1400, "efpn.sec4_a3.coco.schedule": "Detectron",
}

# The recipe table as the course states it (README, report): chapter -> (lr, gpus x images, iterations, lr steps,
# shorter side, backbone).
TABLE = {
    "02": (1e-4, 1, 20, 74358, (), 320, "vgg16"),
    "03": (1e-2, 1, 1, 20000, (), 492, None),
    "04": (1e-3, 1, 2, 40000, (30000,), 600, "vgg16"),
    "04.rcnn": (1e-3, 1, 128, 100000, (20000, 40000, 60000, 80000), 224, "vgg16"),
    "05": (1e-3, 1, 1, 80000, (60000,), 600, "resnet50"),
    "06": (1e-3, 8, 1, 30000, (20000,), 600, "resnet101"),
    "07": (0.02, 8, 2, 80000, (60000,), 800, "resnet50"),
    "08.1": (0.02, 8, 2, 90000, (60000, 80000), 1400, "resnet50"),
    "08.2": (0.02, 8, 2, 45000, (30000, 40000), 1400, "resnet50"),
    "08.3": (0.02, 8, 2, 22500, (15000, 20000), 1400, "resnet50"),
}
FIELDS = ("optimizer", "lr", "momentum", "weight_decay", "gpus", "images_per_gpu", "iterations", "lr_steps",
          "lr_decay", "min_size", "max_size", "arch", "weights_backbone")


def test_the_cited_entries_hold_the_papers_numbers():
    for key, value in PAPER_TEXT.items():
        assert papers.value(key) == value, f"{key}: papers.py says {papers.value(key)!r}, the paper {value!r}"


def test_the_table_is_the_courses():
    assert set(recipes.RECIPES) == set(TABLE)
    for key, (lr, gpus, ipg, iters, steps, side, arch) in TABLE.items():
        r = recipes.RECIPES[key]
        assert math.isclose(r.lr, lr), f"{key}: lr {r.lr}"
        assert (r.gpus, r.images_per_gpu, r.iterations, r.lr_steps, r.min_size, r.arch) == (
            gpus, ipg, iters, steps, side, arch), f"{key}: {r}"


@pytest.mark.parametrize("key", list(recipes.RECIPES))
def test_every_paper_stated_value_is_read_from_its_cited_entry(key):
    r = recipes.RECIPES[key]
    for name, keys in r.paper_keys().items():
        for k in keys:
            assert k in PAPER_TEXT, f"{key}.{name} reads {k}, which this test does not check against the paper's text"
            assert papers.number(k).paper in (r.paper, "fast_rcnn"), f"{key}.{name}: {k} is another paper's"
    # the values themselves, from the typed numbers (a recipe that computes them wrong fails)
    t = PAPER_TEXT
    two_phase = {"04": "fast_rcnn.sec2_3.sgd", "05": "faster_rcnn.sec3_1_3.sgd", "06": "rfcn.sec2.sgd",
                 "07": "fpn.sec5_2.sgd"}
    if key in two_phase:
        p = two_phase[key]
        assert r.lr == t[f"{p}.lr"] and r.momentum == t[f"{p}.momentum"] and r.weight_decay == t[f"{p}.weight_decay"]
        assert r.iterations == t[f"{p}.iterations"] + t[f"{p}.iterations_low"]
        assert r.lr_steps == (t[f"{p}.iterations"],)
        assert math.isclose(r.lr * r.lr_decay, t[f"{p}.lr_low"])
        assert {"lr", "momentum", "weight_decay", "iterations", "lr_steps", "lr_decay"} <= set(r.paper_keys())


def test_the_paper_stated_fields_are_the_ones_the_papers_state():
    stated = {k: set(r.paper_keys()) for k, r in recipes.RECIPES.items()}
    assert {"lr", "momentum", "images_per_gpu", "iterations"} <= stated["02"]
    assert {"momentum", "images_per_gpu"} <= stated["03"] and "lr" not in stated["03"]  # U-Net states no rate
    assert {"images_per_gpu", "min_size", "max_size"} <= stated["04"]
    assert {"lr", "images_per_gpu"} <= stated["04.rcnn"] and "iterations" not in stated["04.rcnn"]
    assert {"images_per_gpu", "min_size"} <= stated["05"]
    assert {"gpus", "images_per_gpu", "min_size"} <= stated["06"]
    assert {"gpus", "images_per_gpu", "min_size"} <= stated["07"] and "max_size" not in stated["07"]
    for stage in ("08.1", "08.2", "08.3"):  # EFPN states only its input size and "Detectron's scheme"
        assert stated[stage] == {"min_size", "max_size"}


@pytest.mark.parametrize("key", list(recipes.RECIPES))
def test_every_value_says_where_it_comes_from(key):
    r = recipes.RECIPES[key]
    for name in FIELDS:
        assert name in r.sources, f"{key}.{name} has no source"
        src = r.source(name)
        assert src.startswith(("Long", "Ronneberger", "Girshick", "Ren", "Dai", "Lin", "Deng", "paper:", "released:",
                               "course:", "torchvision")), f"{key}.{name}: {src}"
        if src.startswith("released:"):
            repo, path = src.split()[1:3]
            assert repo.count("/") == 1 and "." in path, f"{key}.{name}: name the repository and the file"
    assert r.source("lr") and "Sec." in recipes.RECIPES["07"].source("lr")


@pytest.mark.parametrize("key", list(recipes.RECIPES))
def test_every_backbone_is_one_torchvision_resolves(key):
    r = recipes.RECIPES[key]
    if r.arch is None:  # U-Net trains from scratch, as its paper does
        assert key == "03" and r.weights_backbone is None
        return
    weights = resolve_weights(r.weights_backbone, r.arch)
    assert weights.name == "IMAGENET1K_V1" and type(weights).__name__.lower().startswith(r.arch)


# ------------------------------------------------------------------------------ the linear scaling rule


@pytest.mark.parametrize("key", list(recipes.RECIPES))
def test_scaling_to_the_papers_own_setting_is_the_identity(key):
    r = recipes.RECIPES[key]
    s = recipes.scaled(key, gpus=r.gpus, images_per_gpu=r.images_per_gpu)
    assert (s.lr, s.iterations, s.milestones, s.images_seen) == (r.lr, r.iterations, r.lr_steps, r.images_seen)
    # FCN's rate is for a summed loss: one term is the identity there too
    assert s.optimizer_kwargs(loss_terms=1) == {"lr": r.lr, "momentum": r.momentum, "weight_decay": r.weight_decay}


def test_doubling_the_batch_doubles_lr_and_halves_steps_and_milestones():
    one, two = recipes.scaled("07", gpus=1, images_per_gpu=2), recipes.scaled("07", gpus=1, images_per_gpu=4)
    assert math.isclose(two.lr, 2 * one.lr) and two.iterations * 2 == one.iterations
    assert tuple(2 * m for m in two.milestones) == one.milestones
    four = recipes.scaled("07", gpus=2, images_per_gpu=2)  # GPUs or images per GPU: the same total batch
    assert (four.lr, four.iterations, four.milestones) == (two.lr, two.iterations, two.milestones)


@pytest.mark.parametrize("key, gpus, per_gpu", [("07", 1, 2), ("07", 1, 8), ("05", 4, 1), ("06", 1, 2), ("08.1", 1, 4)])
def test_the_images_seen_stay_the_papers(key, gpus, per_gpu):
    r, s = recipes.RECIPES[key], recipes.scaled(key, gpus=gpus, images_per_gpu=per_gpu)
    assert s.images_seen == r.images_seen
    assert math.isclose(s.lr / s.batch, r.lr / r.batch)  # lr per image: the rule itself
    assert [m * s.batch for m in s.milestones] == [m * r.batch for m in r.lr_steps]


def test_a_summed_loss_keeps_its_rate_and_scales_its_decay():
    """FCN's loss is summed over the batch's pixels: its gradient already grows with the batch (k), so the rule
    keeps the rate; the decay, once a step over k times fewer steps, is x k. On the pixel mean: lr x N, decay / N."""
    r = recipes.RECIPES["02"]
    assert r.loss == "sum" and r.source("loss").startswith("released: shelhamer/fcn.berkeleyvision.org")
    s = recipes.scaled("02", gpus=1, images_per_gpu=8)  # k = 8 / 20
    assert s.lr == r.lr and math.isclose(s.weight_decay, r.weight_decay * 0.4)
    assert s.iterations == round(r.iterations / 0.4)
    pixels = 8 * 320 * 320
    kwargs = s.optimizer_kwargs(loss_terms=pixels)
    assert math.isclose(kwargs["lr"], r.lr * pixels) and math.isclose(kwargs["weight_decay"], r.weight_decay * 0.4 / pixels)
    assert math.isclose(kwargs["lr"] * kwargs["weight_decay"], s.lr * s.weight_decay)  # the decay a step: the same
    with pytest.raises(ValueError, match="summed over pixels: pass loss_terms"):
        s.optimizer_kwargs()
    assert "| loss | 'sum' |" in r.to_markdown() and "| loss |" not in recipes.RECIPES["07"].to_markdown()


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_sgd_on_a_summed_loss_is_sgd_on_the_mean_with_the_converted_rate(momentum):
    """recipes.mean_loss_sgd, numerically: three SGD steps (momentum and weight decay included) on a pixel-summed
    cross-entropy with (lr, wd), and on the pixel-mean one with mean_loss_sgd(lr, wd, N), give the same weights."""
    import torch

    g = torch.Generator().manual_seed(0)
    images, labels = torch.randn(2, 3, 5, 6, generator=g), torch.randint(0, 4, (2, 5, 6), generator=g)
    n = labels.numel()  # the pixels of the batch: 60
    start = torch.nn.Conv2d(3, 4, 3, padding=1)
    lr, wd = 1e-3, 0.05  # a large decay: a conversion that forgot it (or the rate) fails
    weights = []
    for reduction, (rate, decay) in (("sum", (lr, wd)), ("mean", recipes.mean_loss_sgd(lr, wd, n))):
        model = torch.nn.Conv2d(3, 4, 3, padding=1)
        model.load_state_dict(start.state_dict())
        optimizer = torch.optim.SGD(model.parameters(), lr=rate, momentum=momentum, weight_decay=decay)
        for _ in range(3):
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(model(images), labels, reduction=reduction).backward()
            optimizer.step()
        weights.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    start_weights = torch.cat([p.detach().flatten() for p in start.parameters()])
    assert (weights[0] - start_weights).abs().max() > 1e-3, "the steps must move the weights for the test to mean much"
    torch.testing.assert_close(weights[0], weights[1], rtol=1e-5, atol=1e-6)
    assert recipes.mean_loss_sgd(1e-4, 5e-4, 1000) == (1e-4 * 1000, 5e-4 / 1000)


def test_the_schedules_a_gpu_run_can_take():
    assert recipes.schedule_fraction("paper", "07") == 1.0
    assert recipes.schedule_fraction("one_day", "07") == recipes.ONE_DAY["07"]
    assert recipes.schedule_fraction("one_day", "05") == 1.0  # a recipe that fits in a day runs whole
    with pytest.raises(ValueError, match="'paper', 'one_day'"):
        recipes.schedule_fraction("short", "07")


def test_fpn_on_one_gpu():
    s = recipes.scaled("07", gpus=1, images_per_gpu=2)  # 0.02 for 16 images -> 0.0025 for 2; 8x the iterations
    assert (s.lr, s.iterations, s.milestones) == (0.0025, 640000, (480000,))


@pytest.mark.parametrize("bad", [0, -1, 1.5, "2", True])
def test_a_batch_that_is_not_a_positive_int_is_refused(bad):
    with pytest.raises(ValueError, match="positive integer"):
        recipes.scaled("07", gpus=1, images_per_gpu=bad)
    with pytest.raises(ValueError, match="positive integer"):
        recipes.scaled("07", gpus=bad, images_per_gpu=2)


def test_a_shorter_schedule_scales_steps_and_milestones_alike():
    s = recipes.scaled("07", gpus=1, images_per_gpu=2, fraction=0.25)
    assert (s.iterations, s.milestones, s.lr) == (160000, (120000,), 0.0025)
    with pytest.raises(ValueError, match="fraction"):
        recipes.scaled("07", fraction=0)


def test_warm_up_then_the_steps():
    s = recipes.scaled("07", gpus=1, images_per_gpu=2)
    assert s.warmup_iters == 500 and math.isclose(s.lr_factor(0), 1 / 3)  # Detectron: 500 iterations from lr / 3
    assert 1 / 3 < s.lr_factor(250) < 1 and s.lr_factor(500) == 1.0 == s.lr_factor(479999)
    assert math.isclose(s.lr_factor(480000), 0.1)
    short = recipes.scaled("07", gpus=1, images_per_gpu=2, fraction=1e-3)  # 640 steps: warm-up capped at a fifth
    assert short.warmup_iters == 128


def test_the_gpu_hour_estimate_is_the_readmes_method():
    r = recipes.RECIPES["07"]
    assert math.isclose(recipes.estimated_gpu_hours("07"), r.images_seen * 32 / 300 / 3600)
    assert math.isclose(recipes.estimated_gpu_hours("07", s_per_image=0.1), r.images_seen * 0.1 / 3600)
    assert math.isnan(recipes.estimated_gpu_hours("04"))  # not measured: said, not guessed


# ------------------------------------------------------------------------------ make gpu-check's recipe timing


def test_the_recipe_timing_runs_on_the_cpu_at_a_tenth_of_the_size():
    """make gpu-check times one step of each paper recipe on CUDA; the same code path, tiny, on the CPU."""
    from course_lib import gpu_check
    from course_lib.profiles import PROFILES

    fpn = next(c for c in gpu_check.TRAINING_CASES if c.chapter == "07")
    r = gpu_check.recipe_timing(fpn, PROFILES["ci"], device="cpu", amp=False, steps=1, scale=0.1, images_per_gpu=1)
    assert r["recipe"] == "07" and r["size"] == (80, 107) and r["batch"] == 1 and math.isfinite(r["loss"])
    assert r["images"] == 1_280_000 and math.isclose(r["gpu_hours"], r["s_per_step"] * 1_280_000 / 3600)
    assert math.isclose(r["readme_hours"], recipes.estimated_gpu_hours("07"))


def test_the_readme_table_is_the_recipes():
    """README's "What a gpu run costs" shows each recipe's images seen and estimated hours: they follow the recipes."""
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    head = readme.index("| chapter | the paper's recipe")
    rows = [line for line in readme[head:].splitlines()[2:] if line.startswith("|")]
    rows = [row for row in rows if not row.startswith("| 01")]
    assert len(rows) == len(recipes.RECIPES)

    def images(n):
        return f"{n / 1e6:.2f} M" if n >= 1e6 else f"{n // 1000} k"

    def hours(h):
        return "not measured" if math.isnan(h) else f"~{h:.0f}" if h >= 10 else "~" + f"{h:.1f}".removesuffix(".0")

    for row, (key, r) in zip(rows, recipes.RECIPES.items()):
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert cells[0].startswith(key.split(".")[0]), (key, row)
        assert cells[2] == images(r.images_seen), (key, cells[2])
        assert cells[3] == hours(recipes.estimated_gpu_hours(key)), (key, cells[3])
        day = recipes.estimated_gpu_hours(key, fraction=recipes.ONE_DAY.get(key, 1.0))
        assert math.isnan(day) and cells[5] == "--" or cells[5] == hours(day), (key, cells[5])
        assert math.isnan(day) or day <= 12.5, f"{key}: the one-day schedule is {day:.1f} estimated hours"


def test_a_notebook_shows_the_recipe_with_its_sources():
    text = recipes.RECIPES["07"].to_markdown()
    assert "| lr | 0.02 | Sec. 5.2, Implementation details" in text and "Detectron" in text  # max side: released
    assert text.count("Feature Pyramid Networks") == 1  # the paper once, above the table
    assert recipes.RECIPES["07"]._repr_markdown_() == text
