"""Weights files: read a state dict from disk and check it against a model, with errors that say what is wrong.

One home for every loader of the course -- the backbones (ResNet, VGG16), the segmentation models, the
detectors and ``engine``'s checkpoints -- so a wrong path, an unreadable file or a file for another
architecture is reported the same way everywhere::

    state_dict = read_state_dict(path)                    # FileNotFoundError / ValueError naming the file
    load_state_dict_checked(model, state_dict, repr(path))  # ValueError listing missing / unexpected / wrong-shape keys

Nothing is downloaded in this course: weights are local files saved with ``torch.save(model.state_dict(), path)``
(or a training checkpoint that holds it under ``"model"``). Files are read with ``weights_only=True`` (tensors and
plain containers only, no arbitrary pickled code) onto the CPU. This module imports nothing from ``course_lib``,
so every layer may use it.
"""
from __future__ import annotations

import copy
import os
from collections.abc import Iterable, Mapping

import torch
from torch import Tensor, nn

__all__ = ["read_file", "read_state_dict", "unwrap_state_dict", "state_dict_mismatches", "check_state_dict",
           "load_state_dict_checked"]

# keys under which training checkpoints commonly keep the model's state dict
WRAPPER_KEYS = ("model", "model_state_dict", "state_dict")
SAVE_HINT = "Pass the path of a state dict saved with torch.save(model.state_dict(), path) (nothing is downloaded in this course)."


def read_file(path: str | os.PathLike, *, missing: str | None = None) -> object:
    """``torch.load(path, map_location="cpu", weights_only=True)`` with clear errors.

    Raises:
        FileNotFoundError: no file at ``path``; the message is ``missing`` (which should name the path and
            say what to do) or a default one naming the path.
        ValueError: the file exists but cannot be read as a torch file.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(missing or f"Weights file {path!r} does not exist. {SAVE_HINT}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # unpickling errors come in many types
        raise ValueError(f"Could not read {path!r} as a torch file: {e}. Save one with "
                         "torch.save(model.state_dict(), path).") from e


def unwrap_state_dict(obj: object, source: str) -> dict[str, Tensor]:
    """The state dict in ``obj``: ``obj`` itself, or the dict under ``"model"`` / ``"model_state_dict"`` /
    ``"state_dict"`` of a training checkpoint. ``source`` names the file in the error (a ValueError if what is
    found is not a dict of tensors)."""
    for key in WRAPPER_KEYS:
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
            break
    if not isinstance(obj, Mapping) or not all(isinstance(v, Tensor) for v in obj.values()):
        kind = type(obj).__name__
        if isinstance(obj, Mapping):
            kind += f" with non-tensor entries, e.g. {next(k for k, v in obj.items() if not isinstance(v, Tensor))!r}"
        raise ValueError(f"{source} does not hold a state dict (a dict of tensors); got a {kind}. {SAVE_HINT}")
    return dict(obj)


def read_state_dict(path: str | os.PathLike, *, missing: str | None = None) -> dict[str, Tensor]:
    """The state dict stored in the file ``path`` (bare or in a training checkpoint); see :func:`read_file`."""
    return unwrap_state_dict(read_file(path, missing=missing), repr(os.fspath(path)))


def state_dict_mismatches(own: Mapping[str, Tensor], state_dict: Mapping[str, Tensor], *,
                          ignore_unexpected: Iterable[str] = ()) -> tuple[list[str], list[str], list[str]]:
    """``(missing, unexpected, wrong_shape)`` keys of ``state_dict`` against the model's own ``own``, each
    in order (the model's order for missing and wrong-shape keys, the file's for unexpected ones)."""
    ignore = set(ignore_unexpected)
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own and k not in ignore]
    wrong_shape = [k for k in own if k in state_dict and tuple(own[k].shape) != tuple(state_dict[k].shape)]
    return missing, unexpected, wrong_shape


def _keys(kind: str, keys: list[str]) -> str:
    """``missing key 'a'`` / ``missing keys 'a', 'b', ... (12 in all)``."""
    shown = ", ".join(repr(k) for k in keys[:5])
    if len(keys) == 1:
        return f"{kind} key {shown}"
    return f"{kind} keys {shown}" + (f", ... ({len(keys)} in all)" if len(keys) > 5 else "")


def check_state_dict(model: nn.Module, state_dict: Mapping[str, Tensor], source: str, *,
                     fix: str = "Check that it was saved from the same architecture (depth, number of classes).",
                     model_name: str | None = None, ignore_unexpected: Iterable[str] = ()) -> None:
    """Raise a ValueError that lists what does not fit when ``state_dict`` (read from ``source``, e.g. the
    file's name) does not match ``model.state_dict()`` key for key and shape for shape. ``model_name``
    describes the model in the message (default: its class), ``fix`` says what to do."""
    own = model.state_dict()
    missing, unexpected, wrong_shape = state_dict_mismatches(own, state_dict, ignore_unexpected=ignore_unexpected)
    if not (missing or unexpected or wrong_shape):
        return
    lines = [f"The weights in {source} do not fit {model_name or f'the model ({type(model).__name__})'}:"]
    if missing:
        lines.append(f"  {_keys('missing', missing)}")
    if unexpected:
        lines.append(f"  {_keys('unexpected', unexpected)}")
    for k in wrong_shape[:5]:
        lines.append(f"  {k!r} has shape {list(state_dict[k].shape)} in the file but {list(own[k].shape)} in the model")
    if len(wrong_shape) > 5:
        lines.append(f"  ... and {len(wrong_shape) - 5} more keys of another shape")
    lines.append(fix)
    raise ValueError("\n".join(lines))


def load_state_dict_checked(model: nn.Module, state_dict: Mapping[str, Tensor], source: str, *,
                            fix: str = "Check that it was saved from the same architecture (depth, number of classes).",
                            model_name: str | None = None) -> nn.Module:
    """``model.load_state_dict(state_dict)`` (strict) that reports a mismatch by name and never loads half-way.

    Batch-norm counters (``num_batches_tracked``) the model does not have are skipped: a frozen batch norm keeps
    no counter, and a file saved from an ordinary ``BatchNorm2d`` (torchvision's ImageNet ResNets) still loads.
    Keys that differ are first offered to the modules' own ``_load_from_state_dict`` hooks, on a copy of the
    model: torchvision renamed some keys over the years (FPN blocks, RPN head) and still loads the old names.
    """
    own = model.state_dict()
    counters = {k for k in state_dict if k.endswith("num_batches_tracked") and k not in own}
    state_dict = {k: v for k, v in state_dict.items() if k not in counters}
    if any(state_dict_mismatches(own, state_dict)):
        try:  # old key names that a module renames while loading? try on a copy, so a failure writes nothing
            copy.deepcopy(model).load_state_dict(state_dict)
        except RuntimeError:
            check_state_dict(model, state_dict, source, fix=fix, model_name=model_name)
            raise
    model.load_state_dict(state_dict)
    return model
