"""fit's mixed-precision branch (autocast + GradScaler) on the CPU in bfloat16: the path CUDA runs in float16,
resumed through a crash bit for bit, scaler state included."""
import pytest
import torch
from torch import nn

from course_lib.engine import fit

from .test_engine import Noisy, assert_same_weights, make_run


def train(steps, path=None, callback=None, seed=0, dtypes=None):
    model, opt, sched = make_run(seed)

    def loss_fn(model, batch):
        x, y = batch
        logits = model(x)
        if dtypes is not None:
            dtypes.add(logits.dtype)
        return nn.functional.cross_entropy(logits, y)

    hist = fit(model, Noisy(), loss_fn, opt, steps=steps, batch_size=4, lr_scheduler=sched, device="cpu", amp=True,
               grad_clip=1.0, checkpoint_path=path, checkpoint_every=3, progress=False, callback=callback)
    return model, hist


def test_cpu_autocast_with_grad_scaling_resumes_bit_for_bit(tmp_path):
    dtypes = set()
    straight, h_straight = train(8, dtypes=dtypes)
    assert dtypes == {torch.bfloat16}, "amp=True on the CPU must run the forward pass under bfloat16 autocast"
    assert all(p.dtype == torch.float32 for p in straight.parameters()), "master weights stay float32"

    def crash(step, record):
        if step == 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(8, tmp_path / "amp.pt", callback=crash)
    state = torch.load(tmp_path / "amp.pt", weights_only=True)
    assert state["step"] == 3 and state["scaler"]["scale"] > 0, "the GradScaler's state is checkpointed"
    resumed, h_resumed = train(8, tmp_path / "amp.pt", seed=7)
    assert_same_weights(straight, resumed)
    assert [r["loss"] for r in h_resumed.records] == [r["loss"] for r in h_straight.records]


def test_amp_default_is_off_on_the_cpu():
    model, opt, _ = make_run()
    seen = set()

    def loss_fn(model, batch):
        logits = model(batch[0])
        seen.add(logits.dtype)
        return nn.functional.cross_entropy(logits, batch[1])

    fit(model, Noisy(), loss_fn, opt, steps=1, batch_size=4, device="cpu", progress=False)
    assert seen == {torch.float32}
