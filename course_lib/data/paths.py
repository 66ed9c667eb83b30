"""Where the data lives.

``data_root()`` is ``$COURSE_DATA_DIR`` if set, else ``<repo>/data``. Under it:

* ``<profile>/<name>/`` -- the offline synthetic datasets that ``data_scripts/make_synthetic.py``
  generates for a profile (``ci``, ``cpu``, ``gpu``): ``segmentation``, ``small_objects``,
  ``multiscale``. A dataset directory is complete when its ``DONE.json`` marker exists (the
  generator writes it last and moves the directory into place atomically).
* ``real/<name>/`` -- real datasets prepared by ``data_scripts/prepare_*.py``: ``voc_seg``,
  ``voc_det``, ``coco``, ``tt100k``.
"""
from __future__ import annotations

import os
from pathlib import Path

__all__ = [
    "SYNTHETIC_DATASETS",
    "REAL_DATASETS",
    "MARKER",
    "repo_root",
    "data_root",
    "dataset_dir",
]

SYNTHETIC_DATASETS = ("segmentation", "small_objects", "multiscale")
# name -> the script that prepares it
REAL_DATASETS = {
    "voc_seg": "data_scripts/prepare_voc.py",
    "voc_det": "data_scripts/prepare_voc.py",
    "coco": "data_scripts/prepare_coco.py",
    "tt100k": "data_scripts/prepare_tt100k.py",
}
MARKER = "DONE.json"


def repo_root() -> Path:
    """The repository checkout that contains ``course_lib/``."""
    return Path(__file__).resolve().parents[2]


def data_root() -> Path:
    """``$COURSE_DATA_DIR`` if set, else ``<repo>/data``."""
    env = os.environ.get("COURSE_DATA_DIR", "").strip()
    return Path(env).expanduser() if env else repo_root() / "data"


def dataset_dir(name: str, profile=None) -> Path:
    """The directory of dataset ``name``, checked to be complete.

    ``name`` is a synthetic dataset (``"segmentation"``, ``"small_objects"``, ``"multiscale"``),
    found under ``data_root()/<profile.name>/``, or a prepared real one (``"voc_seg"``,
    ``"voc_det"``, ``"coco"``, ``"tt100k"``), found under ``data_root()/real/``.
    ``profile`` is a :class:`~course_lib.profiles.Profile`, a profile name, or ``None`` for
    :func:`~course_lib.profiles.get_profile`'s choice.

    Raises ``FileNotFoundError`` with the command that builds the dataset when the directory is
    missing or incomplete (no ``DONE.json``).
    """
    if name in REAL_DATASETS:
        path = data_root() / "real" / name
        if not (path / MARKER).is_file():
            raise FileNotFoundError(
                f"Dataset {name!r} is not prepared at {path}. Prepare it (it downloads the real data) with:\n"
                f"    python {REAL_DATASETS[name]} --help"
            )
        return path
    if name not in SYNTHETIC_DATASETS:
        raise ValueError(
            f"Unknown dataset {name!r}. Synthetic datasets: {', '.join(SYNTHETIC_DATASETS)}; "
            f"real ones: {', '.join(REAL_DATASETS)}."
        )
    from course_lib.profiles import get_profile

    if profile is None or isinstance(profile, str):
        profile = get_profile(profile)
    path = data_root() / profile.name / name
    if not (path / MARKER).is_file():
        state = "is incomplete (no DONE.json)" if path.exists() else "does not exist"
        raise FileNotFoundError(
            f"Dataset {name!r} for profile {profile.name!r} {state}: {path}\n"
            f"Build it (a few seconds for ci, about a minute for cpu) with:\n"
            f"    python data_scripts/make_synthetic.py --profile {profile.name} --only {name}\n"
            f"or build everything with `make lab` (profile from COURSE_PROFILE) / `make test` (ci)."
        )
    return path
