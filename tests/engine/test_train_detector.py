"""engine.train_detector / train_and_evaluate: chapters 5-8's one training call reads every setting from the profile."""
import dataclasses

import torch
from torch import nn

from course_lib import engine
from course_lib.profiles import PROFILES, get_profile


def _capture(monkeypatch):
    calls = []

    def fake_fit(model, dataset, loss_fn, optimizer, **kwargs):
        calls.append(dict(loss_fn=loss_fn, optimizer=optimizer, random=torch.rand(1).item(), **kwargs))
        return engine.History()
    monkeypatch.setattr(engine, "fit", fake_fit)
    return calls


def test_train_detector_takes_the_profiles_optimiser_batch_device_and_clipping(monkeypatch):
    calls = _capture(monkeypatch)
    model = nn.Linear(3, 2)
    model.bias.requires_grad_(False)
    for name in ("ci", "cpu"):  # the gpu profile's recipe: tests/engine/test_recipe_training.py
        profile = PROFILES[name]
        engine.train_detector(model, [], steps=8, profile=profile, seed=3)
        call = calls[-1]
        kind = {"adamw": torch.optim.AdamW, "sgd": torch.optim.SGD}[profile.detector.optimizer]
        assert type(call["optimizer"]) is kind
        assert call["optimizer"].param_groups[0]["initial_lr"] == profile.detector.lr
        assert [p for g in call["optimizer"].param_groups for p in g["params"]] == [model.weight], "what trains"
        assert (call["batch_size"], call["device"], call["amp"], call["num_workers"], call["grad_clip"], call["seed"]) \
            == (profile.detector.batch_size, profile.device, profile.amp, profile.num_workers, 10.0, 3)
        assert call["steps"] == 8 and call["loss_fn"].__name__ == "detection_loss"
    assert calls[0]["random"] == calls[1]["random"], "every generator seeded with seed before training"


def test_fit_keywords_and_a_loss_and_parameters_of_ones_own(monkeypatch):
    calls = _capture(monkeypatch)
    model = nn.Linear(3, 2)
    profile = dataclasses.replace(get_profile("ci"), num_workers=0)
    engine.train_detector(model, [], steps=2, profile=profile, loss_fn=len, params=[model.bias], progress=False)
    assert calls[0]["loss_fn"] is len and calls[0]["progress"] is False
    assert calls[0]["optimizer"].param_groups[0]["params"] == [model.bias]


def test_train_and_evaluate_evaluates_with_the_profiles_batch(monkeypatch):
    _capture(monkeypatch)
    seen = {}

    def fake_evaluate(model, dataset, **kwargs):
        seen.update(kwargs, dataset=dataset)
        return {"AP50": 0.5}, []
    monkeypatch.setattr(engine, "evaluate_detector", fake_evaluate)
    profile = get_profile("ci")
    history, metrics = engine.train_and_evaluate(nn.Linear(3, 2), ["train"], ["val"], steps=2, profile=profile)
    assert metrics == {"AP50": 0.5} and isinstance(history, engine.History)
    assert seen == {"device": profile.device, "batch_size": profile.detector.batch_size, "dataset": ["val"]}
