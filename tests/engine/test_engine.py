"""The training loop: resumable bit for bit, atomic checkpoints, NaN guard, history."""
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import pytest
import torch
from torch import nn

from course_lib.engine import History, epoch_seed, fit, load_weights, save_checkpoint, save_weights, seed_everything


class Noisy(torch.utils.data.Dataset):
    """Random data with a random augmentation drawn from the global RNG (as transforms v2 do)."""

    def __init__(self, n=18):
        g = torch.Generator().manual_seed(123)
        self.x, self.y = torch.randn(n, 8, generator=g), torch.randint(0, 3, (n,), generator=g)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i] + 0.1 * torch.randn(8), self.y[i]


def make_model():
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Dropout(0.5), nn.Linear(16, 3))


def make_run(seed=0):
    seed_everything(seed)
    model = make_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=[4, 8], gamma=0.1)
    return model, opt, sched


def loss_fn(model, batch):
    x, y = batch
    logits = model(x)
    return {"loss_ce": nn.functional.cross_entropy(logits, y), "loss_l2": 1e-3 * logits.pow(2).mean()}


def train(steps, path=None, callback=None, seed=0, **kw):
    model, opt, sched = make_run(seed)
    hist = fit(model, Noisy(), loss_fn, opt, steps=steps, batch_size=4, lr_scheduler=sched, device="cpu",
               checkpoint_path=path, checkpoint_every=3, progress=False, callback=callback, **kw)
    return model, hist


def assert_same_weights(a, b):
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(p, q), f"{name} differs"


def test_resume_after_crash_equals_uninterrupted_run(tmp_path):
    # 4 batches per epoch, 10 steps: the crash (after step 7) and the resume (from the
    # checkpoint at step 6) fall in the second epoch; dropout, augmentation, momentum and the
    # scheduler all have to be restored for the weights to match bit for bit.
    straight, h_straight = train(10)

    def crash(step, record):
        if step == 7:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(10, tmp_path / "run.pt", callback=crash)
    assert torch.load(tmp_path / "run.pt", weights_only=True)["step"] == 6
    # A differently initialised model: everything must come from the checkpoint.
    resumed, h_resumed = train(10, tmp_path / "run.pt", seed=99)
    assert_same_weights(straight, resumed)
    assert [r["loss"] for r in h_resumed.records] == [r["loss"] for r in h_straight.records]
    assert [r["lr"] for r in h_resumed.records] == [r["lr"] for r in h_straight.records]
    assert h_resumed.records[-1]["lr"] == pytest.approx(0.1 * 0.1 * 0.1)  # two MultiStepLR drops


def test_extending_a_finished_run_equals_one_long_run(tmp_path):
    straight, _ = train(9)
    train(5, tmp_path / "run.pt")  # saved at the end: step 5 (not a multiple of checkpoint_every)
    extended, hist = train(9, tmp_path / "run.pt", seed=7)
    assert_same_weights(straight, extended)
    assert [r["step"] for r in hist.records] == list(range(1, 10))


def test_finished_checkpoint_returns_at_once(tmp_path):
    _, hist = train(4, tmp_path / "run.pt")

    def must_not_train(model, batch):
        raise AssertionError("fit trained although the checkpoint already holds all steps")

    model, opt, _ = make_run(5)
    again = fit(model, Noisy(), must_not_train, opt, steps=4, batch_size=4, device="cpu",
                checkpoint_path=tmp_path / "run.pt", progress=False)
    assert again.to_dict() == hist.to_dict()
    assert_same_weights(model, load_weights(make_model(), tmp_path / "run.pt"))


def test_data_order_is_a_function_of_seed_and_epoch():
    class Index(torch.utils.data.Dataset):
        def __len__(self):
            return 10

        def __getitem__(self, i):
            return torch.tensor(i)

    seen = []
    w = nn.Parameter(torch.zeros(()))

    def record(model, batch):
        seen.append(batch.tolist())
        return w * 0 + 1.0

    fit(nn.Linear(1, 1), Index(), record, torch.optim.SGD([w], lr=0.1), steps=7, batch_size=3, seed=4,
        device="cpu", progress=False)
    expected = []
    for epoch in range(3):  # 3 batches per epoch (the 10th sample is dropped)
        order = torch.randperm(10, generator=torch.Generator().manual_seed(epoch_seed(4, epoch)))
        expected += order[:9].view(3, 3).tolist()
    assert seen == expected[:7]


def test_nearby_seeds_do_not_share_epoch_orders():
    """A comparison repeats its runs with seeds 0, 1, 2: with ``seed + epoch`` as the order's seed, seed 1's epoch e
    was seed 0's epoch e + 1, and the spread over seeds understated the noise. No (seed, epoch) pair of the first
    50 seeds and 50 epochs shares its order's seed with another."""
    seeds = {(s, e): epoch_seed(s, e) for s in range(50) for e in range(50)}
    assert len(set(seeds.values())) == len(seeds)
    assert epoch_seed(1, 0) == epoch_seed(1, 0)  # a function of (seed, epoch) only
    n = 96  # the cpu profile's training images: seed 1's first epoch is none of seed 0's first ten
    first = torch.randperm(n, generator=torch.Generator().manual_seed(epoch_seed(1, 0)))
    assert all(not torch.equal(first, torch.randperm(n, generator=torch.Generator().manual_seed(epoch_seed(0, e))))
               for e in range(10))


@pytest.mark.parametrize("seed, epoch", [(-1, 0), (0, -1), (1.5, 0), ("0", 0), (True, 0)])
def test_epoch_seed_refuses_what_is_not_a_natural_number(seed, epoch):
    with pytest.raises(ValueError, match="integers >= 0"):
        epoch_seed(seed, epoch)


def test_fit_refuses_a_negative_seed_before_training():
    w = nn.Parameter(torch.zeros(()))

    def never(model, batch):
        raise AssertionError("trained")

    with pytest.raises(ValueError, match=r"seed=-3"):
        fit(nn.Linear(1, 1), torch.zeros(8, 1), never, torch.optim.SGD([w], lr=0.1), steps=1, batch_size=2,
            seed=-3, device="cpu", progress=False)


def test_atomic_save_keeps_old_checkpoint_on_failure(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, {"step": 1, "w": torch.arange(4.0)})
    real_save = torch.save

    def failing_save(obj, f, *a, **k):
        f.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, {"step": 2, "w": torch.zeros(4)})
    monkeypatch.setattr(torch, "save", real_save)
    old = torch.load(path, weights_only=True)
    assert old["step"] == 1 and torch.equal(old["w"], torch.arange(4.0))
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"], "a temporary file was left behind"


def test_checkpoint_loads_with_weights_only(tmp_path):
    train(3, tmp_path / "run.pt")
    state = torch.load(tmp_path / "run.pt", weights_only=True)
    assert set(state) >= {"model", "optimizer", "lr_scheduler", "scaler", "step", "rng", "history"}
    assert state["step"] == 3 and len(state["history"]["records"]) == 3


def test_nan_loss_stops_with_step_and_term_named(tmp_path):
    model, opt, _ = make_run()

    def exploding(model, batch):
        terms = loss_fn(model, batch)
        step = len(calls) + 1
        calls.append(step)
        return {"loss_classifier": terms["loss_ce"],
                "loss_box_reg": terms["loss_l2"] * (math.nan if step == 3 else 1.0)}

    calls = []
    with pytest.raises(FloatingPointError, match=r"step 3: loss term 'loss_box_reg' is nan"):
        fit(model, Noisy(), exploding, opt, steps=5, batch_size=4, device="cpu", checkpoint_path=tmp_path / "r.pt",
            checkpoint_every=1, progress=False)
    state = torch.load(tmp_path / "r.pt", weights_only=True)
    assert state["step"] == 2
    assert_same_weights(model, load_weights(make_model(), tmp_path / "r.pt"))  # no update at step 3


def test_mismatched_checkpoint_names_the_key(tmp_path):
    train(3, tmp_path / "run.pt")
    other = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Dropout(0.5), nn.Linear(16, 5))  # 5 classes
    opt = torch.optim.SGD(other.parameters(), lr=0.1)
    with pytest.raises(ValueError, match=r"(?s)'3.weight' has shape \[3, 16\] in the file but \[5, 16\].*Delete"):
        fit(other, Noisy(), loss_fn, opt, steps=6, batch_size=4, device="cpu", checkpoint_path=tmp_path / "run.pt",
            progress=False)
    with pytest.raises(ValueError, match="missing keys '2.weight', '2.bias'"):
        load_weights(nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3)), tmp_path / "run.pt")
    with pytest.raises(FileNotFoundError, match="nowhere.pt"):
        load_weights(make_model(), tmp_path / "nowhere.pt")


def test_save_and_load_weights_roundtrip(tmp_path):
    model, _ = train(2)
    save_weights(model, tmp_path / "w.pt")
    assert_same_weights(model, load_weights(make_model(), tmp_path / "w.pt"))
    with pytest.raises(ValueError, match="weights only, not a training checkpoint"):
        train(3, tmp_path / "w.pt")


def test_grad_clip_bounds_the_update():
    torch.manual_seed(0)
    model = nn.Linear(8, 3)
    before = [p.detach().clone() for p in model.parameters()]
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    fit(model, Noisy(), lambda m, b: 100 * loss_fn(m, b)["loss_ce"], opt, steps=1, batch_size=4, grad_clip=0.01,
        device="cpu", progress=True)  # the progress bar path runs too
    step = torch.cat([(p.detach() - b).flatten() for p, b in zip(model.parameters(), before)])
    assert 0 < step.norm() <= 0.01 + 1e-6


def test_history_records_terms_and_plots():
    _, hist = train(6)
    assert set(hist.last) == {"step", "loss", "loss_ce", "loss_l2", "lr", "time"}
    assert hist.last["loss"] == pytest.approx(hist.last["loss_ce"] + hist.last["loss_l2"])
    assert History.from_dict(hist.to_dict()).records == hist.records
    fig = hist.plot()
    assert isinstance(fig, matplotlib.figure.Figure)
    assert {t.get_text() for t in fig.axes[0].get_legend().get_texts()} == {"loss", "loss_ce", "loss_l2"}


def test_dataset_smaller_than_a_batch_is_a_clear_error():
    model, opt, _ = make_run()
    with pytest.raises(ValueError, match="18 samples, fewer than batch_size=32"):
        fit(model, Noisy(), loss_fn, opt, steps=1, batch_size=32, device="cpu", progress=False)


def test_bad_arguments_are_named():
    model, opt, _ = make_run()
    with pytest.raises(ValueError, match="batch_size=0: must be an integer >= 1"):
        fit(model, Noisy(), loss_fn, opt, steps=1, batch_size=0, device="cpu", progress=False)
    with pytest.raises(ValueError, match="loss term 'loss' has shape \\[4\\]"):
        fit(model, Noisy(), lambda m, b: m(b[0]).sum(1), opt, steps=1, batch_size=4, device="cpu", progress=False)
