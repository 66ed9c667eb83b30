"""course_lib.state_dict: one reader and checker of weights files, with errors that name the file and the keys."""
import pytest
import torch
from torch import nn

from course_lib.state_dict import load_state_dict_checked, read_state_dict


def small(classes=3):
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4, classes))


def test_reads_bare_and_wrapped_state_dicts(tmp_path):
    model = small()
    torch.save(model.state_dict(), tmp_path / "bare.pt")
    torch.save({"model": model.state_dict(), "step": 3}, tmp_path / "checkpoint.pt")
    for name in ("bare.pt", "checkpoint.pt"):
        loaded = read_state_dict(tmp_path / name)
        assert list(loaded) == list(model.state_dict())
        assert all(torch.equal(loaded[k], v) for k, v in model.state_dict().items())


def test_bad_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pt.*does not exist.*nothing is downloaded"):
        read_state_dict(tmp_path / "nope.pt")
    with pytest.raises(FileNotFoundError, match="^no VGG here$"):
        read_state_dict(tmp_path / "nope.pt", missing="no VGG here")
    (tmp_path / "junk.pt").write_text("not a torch file")
    with pytest.raises(ValueError, match="Could not read '.*junk.pt' as a torch file"):
        read_state_dict(tmp_path / "junk.pt")
    torch.save({"lr": 0.1, "weight": torch.zeros(2)}, tmp_path / "mixed.pt")
    with pytest.raises(ValueError, match="mixed.pt' does not hold a state dict.*non-tensor entries, e.g. 'lr'"):
        read_state_dict(tmp_path / "mixed.pt")
    torch.save([torch.zeros(2)], tmp_path / "list.pt")
    with pytest.raises(ValueError, match="list.pt' does not hold a state dict.*got a list"):
        read_state_dict(tmp_path / "list.pt")


def test_mismatches_are_listed_and_nothing_is_loaded_half_way():
    model, other = small(3), small(5)
    before = [p.detach().clone() for p in model.parameters()]
    state_dict = other.state_dict()
    state_dict.pop("1.bias")
    state_dict["head.weight"] = torch.zeros(1)
    with pytest.raises(ValueError) as error:
        load_state_dict_checked(model, state_dict, "'other.pt'", model_name="a 3-class net")
    message = str(error.value)
    assert message.startswith("The weights in 'other.pt' do not fit a 3-class net:")
    assert "missing key '1.bias'" in message and "unexpected key 'head.weight'" in message
    assert "'3.weight' has shape [5, 4] in the file but [3, 4] in the model" in message
    assert "same architecture" in message  # what to do
    # the conv weights fit, but were not copied: the model is as it was
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before))


def test_batch_norm_counters_without_a_place_are_skipped():
    class Frozen(nn.Module):  # a batch norm without the counter, like FrozenBatchNorm2d
        def __init__(self):
            super().__init__()
            for name in ("weight", "bias", "running_mean", "running_var"):
                self.register_buffer(name, torch.zeros(4))

    source = nn.Sequential(nn.BatchNorm2d(4))
    source[0].running_mean.fill_(2.0)
    assert "0.num_batches_tracked" in source.state_dict()
    target = load_state_dict_checked(nn.Sequential(Frozen()), source.state_dict(), "'bn.pt'")
    assert torch.equal(target[0].running_mean, torch.full((4,), 2.0))


def test_old_key_names_are_left_to_the_modules_hooks():
    class Renaming(nn.Linear):  # accepts the old name "w" for "weight", as torchvision's FPN does for its blocks
        def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
            if prefix + "w" in state_dict:
                state_dict[prefix + "weight"] = state_dict.pop(prefix + "w")
            super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    model = nn.Sequential(Renaming(2, 2))
    old = {"0.w": torch.ones(2, 2), "0.bias": torch.zeros(2)}
    load_state_dict_checked(model, old, "'old.pt'")
    assert torch.equal(model[0].weight, torch.ones(2, 2))
    with pytest.raises(ValueError, match="unexpected key '0.v'"):
        load_state_dict_checked(model, {"0.v": torch.ones(2, 2), "0.bias": torch.zeros(2)}, "'bad.pt'")
