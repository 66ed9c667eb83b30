"""engine.overfit / loss_fall / check_overfit: the first sanity check of every training chapter."""
import pytest
import torch
from torch import nn

from course_lib.engine import History, check_overfit, fit, loss_fall, overfit


def _history(losses):
    return History([{"step": i, "loss": v} for i, v in enumerate(losses)])


def test_loss_fall_is_from_the_first_step_to_the_last_ten():
    h = _history([2.0] + [1.0] * 5 + [0.1] * 10)
    assert loss_fall(h) == pytest.approx(0.95)
    assert loss_fall(_history([1.0, 1.0])) == 0.0
    with pytest.raises(ValueError, match="at least 2 steps"):
        loss_fall(_history([1.0]))
    with pytest.raises(ValueError, match="first loss is 0.0"):
        loss_fall(_history([0.0, 0.0]))


def test_check_overfit_names_what_failed():
    good = _history([3.0] + [0.2] * 20)
    assert "down 93 %" in check_overfit(good, 0.95, what="AP50")
    with pytest.raises(AssertionError, match="loss did not fall far enough"):
        check_overfit(_history([3.0] + [1.0] * 20), 0.95, what="AP50")
    with pytest.raises(AssertionError, match="mIoU is too low"):
        check_overfit(good, 0.5, what="mIoU")
    with pytest.raises(AssertionError, match="mIoU is too low"):
        check_overfit(good, float("nan"), what="mIoU")  # a NaN score is not a pass


def _mse(model, batch):
    x, y = batch
    return nn.functional.mse_loss(model(x), y)


def test_overfit_learns_two_samples_and_a_frozen_model_fails():
    torch.manual_seed(0)
    samples = [(torch.randn(8), torch.randn(3)) for _ in range(2)]
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 3))
    history = overfit(model, samples, _mse, steps=100, lr=1e-2, progress=False)
    assert len(history) == 100 and loss_fall(history) > 0.99
    frozen = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 3))
    frozen[0].requires_grad_(False)
    frozen[2].weight.requires_grad_(False)  # only a bias can move: it cannot fit two different targets
    with pytest.raises(AssertionError, match="did not fall"):
        check_overfit(overfit(frozen, samples, _mse, steps=100, lr=1e-2, progress=False), 1.0, what="fit")
    with pytest.raises(ValueError, match="no trainable parameters"):
        overfit(nn.Linear(2, 2).requires_grad_(False), samples, _mse, steps=5)


def _dropout_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 64), nn.ReLU(), nn.Dropout(0.2), nn.Linear(64, 3))


def test_overfit_until_stops_early_on_the_same_path():
    """until is asked every check_every steps; the run that stops at step k is the first k steps of the run without
    it, to the bit, even when until evaluates the model and draws random numbers (dropout needs the same draws)."""
    g = torch.Generator().manual_seed(3)
    samples = [(torch.randn(8, generator=g), torch.randn(3, generator=g)) for _ in range(2)]
    full_model = _dropout_net()
    torch.manual_seed(1)
    full = overfit(full_model, samples, _mse, steps=120, lr=1e-2, progress=False)
    asked = []

    def noisy_until(model):
        def until(history):
            asked.append(len(history))
            model.eval()
            model(torch.randn(4, 8))  # a random draw and an eval-mode forward, as an evaluation makes
            torch.rand(10)
            model.train()
            return False
        return until

    never_model = _dropout_net()
    torch.manual_seed(1)
    never = overfit(never_model, samples, _mse, steps=120, lr=1e-2, progress=False, until=noisy_until(never_model),
                    check_every=25)
    assert asked == [25, 50, 75, 100]  # not at the last step: the run ends there anyway
    assert [r["loss"] for r in never.records] == [r["loss"] for r in full.records]
    assert all(torch.equal(a, b) for a, b in zip(never_model.parameters(), full_model.parameters()))

    early_model = _dropout_net()
    torch.manual_seed(1)
    early = overfit(early_model, samples, _mse, steps=120, lr=1e-2, progress=False, check_every=20,
                    until=lambda history: loss_fall(history) >= 0.95)
    k = len(early)
    assert k % 20 == 0 and 20 < k < 120 and loss_fall(early) >= 0.95
    assert loss_fall(History(full.records[:k - 20])) < 0.95  # it stopped at the first check that passed
    assert [r["loss"] for r in early.records] == [r["loss"] for r in full.records[:k]]
    with pytest.raises(ValueError, match="check_every=0"):
        overfit(_dropout_net(), samples, _mse, steps=5, until=lambda h: True, check_every=0)


def test_fit_stops_when_its_callback_returns_true_only():
    samples = [(torch.randn(8), torch.randn(3)) for _ in range(4)]
    model = nn.Linear(8, 3)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    history = fit(model, samples, _mse, opt, steps=10, batch_size=2, progress=False,
                  callback=lambda step, record: step == 4)
    assert len(history) == 4
    history = fit(model, samples, _mse, opt, steps=10, batch_size=2, progress=False,
                  callback=lambda step, record: record)  # a callback's other return values do not stop it
    assert len(history) == 10


def test_detector_optimizer_schedules():
    from course_lib.engine import detector_optimizer

    params = [nn.Parameter(torch.zeros(2))]
    opt, sched = detector_optimizer(params, kind="sgd", lr=0.1, steps=40, warmup=3)
    lrs = []
    for _ in range(40):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step(); sched.step()
    assert isinstance(opt, torch.optim.SGD) and opt.param_groups[0]["momentum"] == 0.9
    assert lrs[:3] == pytest.approx([0.1 / 3, 0.2 / 3, 0.1]) and lrs[29] == pytest.approx(0.1)
    assert lrs[30:] == pytest.approx([0.01] * 10)  # divided by 10 for the last quarter
    opt, sched = detector_optimizer(params, kind="adamw", lr=0.1, steps=10, warmup=1)
    lrs = []
    for _ in range(10):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step(); sched.step()
    assert isinstance(opt, torch.optim.AdamW) and lrs[0] == pytest.approx(0.1)
    assert all(a > b for a, b in zip(lrs, lrs[1:])) and lrs[5] == pytest.approx(0.05)  # cosine to 0
    with pytest.raises(ValueError, match="kind='adam'"):
        detector_optimizer(params, kind="adam", lr=0.1, steps=10)


@pytest.mark.parametrize("kind", ["sgd", "adamw"])
def test_detector_optimizer_is_fused_and_steps_as_the_for_loop_does(kind):
    """The fused kernels (faster on the CPU too) take the same steps as PyTorch's for-loop implementation."""
    from course_lib.engine import detector_optimizer

    g = torch.Generator().manual_seed(0)
    start = [torch.randn(4, 3, generator=g), torch.randn(5, generator=g)]
    grads = [[torch.randn(t.shape, generator=g) for t in start] for _ in range(5)]
    finals = []
    for fused in (True, False):
        params = [nn.Parameter(t.clone()) for t in start]
        opt, sched = detector_optimizer(params, kind=kind, lr=0.1, steps=5, warmup=2)
        assert opt.param_groups[0]["fused"] is True
        if not fused:  # the implementation is read from the group at each step
            opt.param_groups[0]["fused"], opt.param_groups[0]["foreach"] = None, False
        for step in grads:
            for p, grad in zip(params, step):
                p.grad = grad.clone()
            opt.step(); sched.step()
        finals.append([p.detach() for p in params])
    for a, b in zip(*finals):
        torch.testing.assert_close(a, b)
