"""ImageNet weights through torchvision's own weights API, checked before use.

Every paper of the course fine-tunes a classifier pretrained on ImageNet (FCN and Fast R-CNN a VGG16, Faster
R-CNN, R-FCN and FPN a ResNet-50/101). The backbones' loaders take those weights in any of three forms::

    resnet_body(50, weights="IMAGENET1K_V1")                    # a torchvision weights name ("DEFAULT" too)
    resnet_body(50, weights=ResNet50_Weights.IMAGENET1K_V1)     # a torchvision weights enum member
    resnet_body(50, weights="my/resnet50.pth")                  # a local state dict file

A name or enum is read from torchvision's cache, ``$TORCH_HOME/hub/checkpoints/<file>`` (``torch.hub.get_dir()``),
under the file name torchvision uses (``resnet50-0676ba61.pth``), and downloaded there by torchvision's own
``Weights.get_state_dict(check_hash=True)`` when missing. The eight hex digits in the name are the start of the
file's SHA-256: torch.hub checks them only when it downloads, so a file already in the cache is checked here
first -- a truncated or replaced file is refused with its path, not loaded. Offline, a missing file is an error
naming the file, its URL and the cache folder; ``make weights`` (``data_scripts/download_weights.py``) fetches
everything ahead of time on a machine that is online at setup.
"""
from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from urllib.error import URLError
from urllib.parse import urlparse

import torch
from torch import Tensor
from torchvision.models import WeightsEnum, get_model_weights

from course_lib.state_dict import read_state_dict, unwrap_state_dict

__all__ = ["WeightsEnum", "ARCHITECTURES", "IMAGENET", "WeightsSpec", "weights_enum", "resolve_weights", "cache_path", "verify_cached",
           "CorruptWeightsError", "WeightsUnavailableError", "read_weights", "read_published", "expected_prefix", "is_weights_file"]

# The torchvision classifiers whose ImageNet weights the course's backbones load (full width only), and the
# weights the papers fine-tune: the original (V1) ImageNet training of each, the one the papers' era used.
ARCHITECTURES = ("vgg16", "resnet50", "resnet101")
IMAGENET = {"vgg16": "IMAGENET1K_V1", "resnet50": "IMAGENET1K_V1", "resnet101": "IMAGENET1K_V1"}

WeightsSpec = "str | os.PathLike | WeightsEnum"

_HASH = re.compile(r"-([a-f0-9]{8,})\.")  # torch.hub's naming convention: <name>-<sha256 prefix>.<ext>


class CorruptWeightsError(ValueError):
    """A cached weights file whose SHA-256 does not start with the digits in its name."""


class WeightsUnavailableError(RuntimeError):
    """Weights that are neither in the cache nor downloadable (offline, or the server refused)."""


def weights_enum(arch: str) -> type[WeightsEnum]:
    """torchvision's weights enum of ``arch`` (``"resnet50"`` -> ``ResNet50_Weights``)."""
    if arch not in ARCHITECTURES:
        raise ValueError(f"no ImageNet weights for {arch!r}: the course's backbones are {', '.join(ARCHITECTURES)}")
    return get_model_weights(arch)


def resolve_weights(weights: WeightsSpec, arch: str) -> WeightsEnum | Path:
    """``weights`` as a torchvision enum member of ``arch``'s weights, or as a local file path.

    A string is a file when such a file exists or it looks like a path (a ``/`` or a ``.pth``/``.pt`` ending);
    otherwise it must name one of ``arch``'s weights (``"IMAGENET1K_V1"``, ``"DEFAULT"``, or with the enum's
    name in front, ``"ResNet50_Weights.IMAGENET1K_V1"``, as torchvision accepts).
    """
    enum = weights_enum(arch)
    if isinstance(weights, WeightsEnum):
        if not isinstance(weights, enum):
            raise ValueError(f"{weights!r} are weights of another network; a {arch} takes {enum.__name__} "
                             f"({', '.join(enum.__members__)}).")
        return weights
    if isinstance(weights, os.PathLike):
        return Path(weights)
    if not isinstance(weights, str):
        raise TypeError(f"weights must be a file path, a torchvision weights name or a {enum.__name__} member; "
                        f"got {type(weights).__name__} {weights!r}")
    if is_weights_file(weights):
        return Path(weights)
    name = weights.removeprefix(enum.__name__ + ".")
    if name not in enum.__members__:
        raise ValueError(f"{weights!r} is neither a file nor a name of {enum.__name__}: use one of "
                         f"{', '.join(repr(n) for n in enum.__members__)}, or the path of a state dict file.")
    return enum[name]


def is_weights_file(weights: WeightsSpec) -> bool:
    """Whether ``weights`` names a local file (not torchvision's weights by name or enum); see :func:`resolve_weights`."""
    if isinstance(weights, WeightsEnum):
        return False
    return isinstance(weights, os.PathLike) or os.path.exists(weights) or "/" in weights or os.sep in weights \
        or weights.endswith((".pth", ".pt"))


def cache_path(weights: WeightsEnum) -> Path:
    """Where torchvision keeps ``weights``: ``torch.hub.get_dir()/checkpoints/<file name of its URL>``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(weights.url).path)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def expected_prefix(path: str | os.PathLike) -> str | None:
    """The SHA-256 prefix in a torch.hub file name (``resnet50-0676ba61.pth`` -> ``"0676ba61"``), or None."""
    match = _HASH.search(Path(path).name)
    return match.group(1) if match else None


def verify_cached(path: str | os.PathLike) -> None:
    """Check a cached weights file against the SHA-256 prefix in its name (what torch.hub checks on download)."""
    path = Path(path)
    expected = expected_prefix(path)
    if expected is None:
        return  # no hash in the name: nothing to check against
    actual = _sha256(path)
    if not actual.startswith(expected):
        raise CorruptWeightsError(
            f"{path} is damaged or not the published file: its SHA-256 starts with {actual[:len(expected)]}, its "
            f"name says {expected}. Delete it (rm '{path}') and load the weights again online, or run "
            "`make weights`, to download it afresh.")


def read_weights(weights: WeightsSpec, arch: str, *, progress: bool = True) -> tuple[dict[str, Tensor], str]:
    """The state dict of ``weights`` for a torchvision ``arch`` (see the module's docstring), and a name for it in
    error messages. A cached file is verified first; a missing one is downloaded through torchvision's API."""
    resolved = resolve_weights(weights, arch)
    if isinstance(resolved, Path):
        return read_state_dict(resolved), repr(os.fspath(resolved))
    return read_published(resolved, progress=progress)


def read_published(weights: WeightsEnum, *, progress: bool = True) -> tuple[dict[str, Tensor], str]:
    """The state dict of any torchvision weights enum member (a classifier's, a detector's) and a name for it: a
    cached file verified first, a missing one downloaded by torchvision's ``get_state_dict(check_hash=True)``."""
    path = cache_path(weights)
    if path.exists():
        verify_cached(path)
    try:
        state = weights.get_state_dict(progress=progress, check_hash=True)  # torchvision's own download and load
    except (URLError, ConnectionError, TimeoutError) as e:
        reason = getattr(e, "reason", e)
        raise WeightsUnavailableError(
            f"{weights!r} ({path.name}) is not in torchvision's cache {path.parent} and could not be downloaded "
            f"from {weights.url} ({reason}). On a machine that is online, run `make weights` (or load them once), "
            f"or copy {path.name} into {path.parent}.") from None
    except RuntimeError as e:
        if "invalid hash value" in str(e):
            raise CorruptWeightsError(f"the download of {weights.url} is not the published file ({e}); nothing "
                                      f"was saved to {path}. Try again later.") from None
        raise
    return unwrap_state_dict(state, f"{weights!r} ({path})"), f"{weights!r} ({path})"
