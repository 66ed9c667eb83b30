"""fit's channels-last layout on the CPU: on by default, off where the model or the caller says so, and a run
interrupted and resumed in that layout still ends with the weights of the uninterrupted run, bit for bit."""
import pytest
import torch
from torch import nn

from course_lib.engine import fit, seed_everything


class Images(torch.utils.data.Dataset):
    def __len__(self):
        return 12

    def __getitem__(self, i):
        g = torch.Generator().manual_seed(i)
        return torch.randn(3, 12, 12, generator=g) + 0.1 * torch.randn(3, 12, 12), i % 3


def make_model():
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Dropout2d(0.2),
                         nn.Conv2d(8, 3, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten())


def loss_fn(model, batch):
    x, y = batch
    return nn.functional.cross_entropy(model(x), y)


def train(steps, path=None, callback=None, **kw):
    seed_everything(0)
    model = make_model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    fit(model, Images(), loss_fn, opt, steps=steps, batch_size=4, device="cpu", checkpoint_path=path,
        checkpoint_every=2, progress=False, callback=callback, **kw)
    return model


def is_channels_last(model):
    return model[0].weight.is_contiguous(memory_format=torch.channels_last) and not model[0].weight.is_contiguous()


def test_channels_last_by_default_on_the_cpu_unless_the_model_or_the_caller_says_no():
    assert is_channels_last(train(1))
    assert not is_channels_last(train(1, channels_last=False))
    seed_everything(0)
    model = make_model()
    model.channels_last_on_cpu = False  # a model that trains slower in that layout (R-FCN, EFPN)
    fit(model, Images(), loss_fn, torch.optim.SGD(model.parameters(), lr=0.1), steps=1, batch_size=4, device="cpu",
        progress=False)
    assert not is_channels_last(model)


def test_resume_in_channels_last_is_bit_exact(tmp_path):
    reference = train(6)

    def crash(step, record):
        if step == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(6, tmp_path / "ckpt.pt", callback=crash)
    resumed = train(6, tmp_path / "ckpt.pt")
    for (name, p), q in zip(reference.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(p, q), f"{name} differs"
