"""The gpu profile trains each chapter with its paper's recipe: the optimiser, rate, momentum, weight decay, warm-up,
learning-rate steps and iterations that engine.train_detector / recipe_optimizer build are exactly
``course_lib.recipes.scaled(key, ...)``'s (which tests/test_recipes.py compares with the papers), on the GPUs at hand
(the world size) x the profile's batch. The gpu profile is read without CUDA: only its settings are used."""
import dataclasses
import json
import math
import re
from pathlib import Path

import pytest
import torch
from torch import nn

from course_lib import engine, recipes
from course_lib.profiles import PROFILES, TrainingSteps, replace

GPU = PROFILES["gpu"]
# each detector run's steps field and the recipe its notebook passes (chapter 4's two: test_chapter_4_...)
DETECTOR_RUNS = {"faster_rcnn": "05", "rfcn": "06", "rfcn_ablation": "06", "fpn": "07", "fpn_ablation": "07",
                 "efpn_fpn": "08.1", "efpn_distill": "08.2", "efpn_head": "08.3", "efpn_ablation": "08.2"}
CHAPTER_4 = {"rcnn": "04.rcnn", "fast_rcnn": "04"}


def _capture(monkeypatch):
    calls = []

    def fake_fit(model, dataset, loss_fn, optimizer, **kwargs):
        calls.append(dict(optimizer=optimizer, **kwargs))
        return engine.History()
    monkeypatch.setattr(engine, "fit", fake_fit)
    return calls


def _assert_built_as(optimizer, scheduler, steps, expected: recipes.Schedule, loss_terms=None):
    assert type(optimizer) is torch.optim.SGD and steps == expected.iterations
    group = optimizer.param_groups[0]
    kwargs = expected.optimizer_kwargs(loss_terms=loss_terms)
    assert (group["initial_lr"], group["momentum"], group["weight_decay"], group["dampening"], group["nesterov"]) == (
        kwargs["lr"], kwargs["momentum"], kwargs["weight_decay"], 0, False)
    factor = scheduler.lr_lambdas[0]
    probes = {0, 1, expected.warmup_iters - 1, expected.warmup_iters, expected.iterations - 1}
    probes |= {m + d for m in expected.milestones for d in (-1, 0)}
    for step in sorted(probes):
        assert factor(step) == expected.lr_factor(step), step
    assert math.isclose(group["lr"], kwargs["lr"] * expected.lr_factor(0))  # LambdaLR set the first step's rate


def test_every_detector_step_count_names_its_recipe():
    """gpu states no step count of its own: every one is None, "the recipe's" (this table says which)."""
    fields = [f.name for f in dataclasses.fields(TrainingSteps)]
    assert set(fields) == set(DETECTOR_RUNS) | set(CHAPTER_4)
    assert all(getattr(GPU.steps, f) is None for f in fields)


@pytest.mark.parametrize("field, key", DETECTOR_RUNS.items())
@pytest.mark.parametrize("world, schedule", [(1, "paper"), (2, "paper"), (1, "one_day")])
def test_the_gpu_profile_trains_each_detector_with_its_papers_recipe(monkeypatch, field, key, world, schedule):
    calls = _capture(monkeypatch)
    if world > 1:
        monkeypatch.setenv("WORLD_SIZE", str(world))  # torchrun's: the linear scaling rule counts every GPU's images
    profile = replace(GPU, schedule=schedule)
    model = nn.Linear(3, 2)
    engine.train_detector(model, [], steps=getattr(profile.steps, field), profile=profile, recipe=key)
    call = calls[-1]
    expected = recipes.scaled(key, gpus=world, images_per_gpu=GPU.detector.batch_size,
                              fraction=recipes.ONE_DAY.get(key, 1.0) if schedule == "one_day" else 1.0)
    _assert_built_as(call["optimizer"], call["lr_scheduler"], call["steps"], expected)
    assert call["batch_size"] == GPU.detector.batch_size
    assert engine.training_steps(getattr(profile.steps, field), key, profile) == expected.iterations  # what notebooks print
    r = recipes.RECIPES[key]
    assert math.isclose(expected.lr, r.lr * world * GPU.detector.batch_size / r.batch)  # the rule, at this batch


def test_chapter_4_and_fcn_train_their_papers_recipes():
    """R-CNN: 128 warped windows a step (its paper's batch, whatever the images); Fast R-CNN: 2 images; FCN: the
    profile's crops, on the pixel-mean loss with the summed-loss rate converted (recipes.mean_loss_sgd)."""
    params = list(nn.Linear(3, 2).parameters())
    for key, per_step in (("04.rcnn", 128), ("04", 2)):
        optimizer, scheduler, steps = engine.recipe_optimizer(params, key, profile=GPU, images_per_gpu=per_step)
        expected = recipes.scaled(key, gpus=1, images_per_gpu=per_step)
        _assert_built_as(optimizer, scheduler, steps, expected)
        assert steps == recipes.RECIPES[key].iterations  # the paper's own batch: its own iterations
    seg = GPU.segmentation
    pixels = seg.batch_size * seg.crop_size ** 2
    optimizer, scheduler, steps = engine.recipe_optimizer(params, "02", profile=GPU, images_per_gpu=seg.batch_size,
                                                          loss_terms=pixels)
    expected = recipes.scaled("02", gpus=1, images_per_gpu=seg.batch_size)
    _assert_built_as(optimizer, scheduler, steps, expected, loss_terms=pixels)
    assert math.isclose(optimizer.param_groups[0]["initial_lr"], 1e-4 * pixels)  # FCN's 1e-4 a pixel, on the mean
    later, _, _ = engine.recipe_optimizer(params, "02", profile=GPU, images_per_gpu=seg.batch_size, loss_terms=pixels,
                                          lr_scale=1 / 100)  # FCN-16s / -8s: the rate / 100 (Sec. 4.2)
    assert math.isclose(later.param_groups[0]["initial_lr"], 1e-4 * pixels / 100)
    assert later.param_groups[0]["weight_decay"] == optimizer.param_groups[0]["weight_decay"]


class _Stop(Exception):
    pass


def test_a_recipe_run_steps_the_rate_as_lr_factor_says(monkeypatch):
    """The real fit, a tiny model: the rate of every step is the schedule's rate x lr_factor(step) -- the warm-up,
    then the drop at the milestone (a recipe of 10 iterations, so that the whole run is a few milliseconds)."""
    tiny = dataclasses.replace(recipes.RECIPES["07"], chapter="tiny", gpus=1, images_per_gpu=2, iterations=10,
                               lr_steps=(6,))
    monkeypatch.setitem(recipes.RECIPES, "tiny", tiny)
    profile = replace(GPU, device="cpu", amp=False, num_workers=0, detector=dict(batch_size=2))
    dataset = [(torch.randn(3), {}) for _ in range(4)]
    seen = []
    history = engine.train_detector(nn.Linear(3, 2), dataset, steps=None, profile=profile, recipe="tiny",
                                    loss_fn=lambda model, batch: model(torch.stack(batch[0])).pow(2).mean(),
                                    progress=False, callback=lambda step, record: seen.append(record["lr"]))
    schedule = recipes.scaled("tiny", gpus=1, images_per_gpu=2)
    assert len(history) == 10 and schedule.warmup_iters == 2 and schedule.milestones == (6,)
    assert seen == pytest.approx([schedule.lr * schedule.lr_factor(s) for s in range(10)], rel=1e-12)
    assert seen[0] < seen[2] == schedule.lr and math.isclose(seen[6], schedule.lr * tiny.lr_decay)


def test_a_recipe_run_refuses_a_step_count_of_its_own_and_asks_for_its_recipe(monkeypatch):
    _capture(monkeypatch)
    model = nn.Linear(3, 2)
    with pytest.raises(ValueError, match="leave the profile's steps None"):
        engine.train_detector(model, [], steps=100, profile=replace(GPU, steps=dict(fpn=100)), recipe="07")
    with pytest.raises(ValueError, match="pass recipe="):
        engine.train_detector(model, [], steps=None, profile=GPU)
    with pytest.raises(ValueError, match="None means the recipe's"):  # ci's AdamW needs its own steps
        engine.train_detector(model, [], steps=None, profile=PROFILES["ci"], recipe="07")
    assert engine.training_steps(7, "07", GPU) == 7  # a number is the number (ci, cpu)


def _calls(code: str, name: str) -> list[str]:
    """The argument text of every call of engine's ``name(...)`` in ``code`` (``engine.name`` only where the notebook
    defines a ``name`` of its own)."""
    own = f"def {name}(" in code
    out = []
    for match in re.finditer(rf"(?<![\w.])(engine\.)?{name}\(", code):
        if code[max(0, match.start() - 4):match.start()] == "def " or (own and not match.group(1)):
            continue
        depth, i = 1, match.end()
        while depth:
            depth += {"(": 1, ")": -1}.get(code[i], 0)
            i += 1
        out.append(code[match.end():i - 1])
    return out


def test_every_notebook_training_call_names_its_recipe():
    """Chapters 2 and 4-8 pass a recipe to each engine training call (a gpu run without one would be refused only
    when it starts, hours in), and between them name every recipe but U-Net's."""
    root = Path(__file__).resolve().parents[2] / "notebooks"
    named = set()
    for notebook in [root / "02_fcn.ipynb", *sorted(root.glob("0[4-8]_*.ipynb"))]:
        cells = json.loads(notebook.read_text())["cells"]
        code = "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
        calls = [(name, args) for name in ("train_detector", "train_and_evaluate", "recipe_optimizer", "training_steps")
                 for args in _calls(code, name)]
        assert calls, notebook.name
        for name, args in calls:
            assert re.search(r"\"0[2-8](\.\w+)?\"|'0[2-8](\.\w+)?'|\brecipe\b", args), f"{notebook.name}: {name}({args})"
        named |= set(re.findall(r"[\"'](0[2-8](?:\.\w+)?)[\"']", code)) & set(recipes.RECIPES)
    assert named == set(recipes.RECIPES) - {"03"}, named


def test_training_steps_takes_the_detectors_batch_only_for_a_detector_recipe():
    gpu = PROFILES["gpu"]
    assert engine.training_steps(None, "07", gpu) == recipes.scaled("07", images_per_gpu=gpu.detector.batch_size).iterations
    assert engine.training_steps(123, "02", gpu) == 123
    with pytest.raises(ValueError, match=r"'04'.*images_per_gpu"):
        engine.training_steps(None, "04", gpu)  # Fast R-CNN trains 2 images a step, not the detectors' 4
    assert engine.training_steps(None, "04", gpu, images_per_gpu=2) == recipes.scaled("04", images_per_gpu=2).iterations
