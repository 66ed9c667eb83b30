"""Where the data lives.

``data_root()`` is ``$COURSE_DATA_DIR`` if set, else ``<repo>/data`` in a checkout, else (an installed course, e.g. in
Colab) ``$XDG_CACHE_HOME/course_lib/data`` (``~/.cache/course_lib/data``): one folder per user that every notebook
finds wherever it was copied, regenerable like any cache, and never inside site-packages. Under it:

* ``<profile>/<name>/`` -- the offline synthetic datasets that ``course_lib.data.make_synthetic``
  generates for a profile (``ci``, ``cpu``, ``gpu``): ``segmentation``, ``small_objects``,
  ``multiscale``. A dataset directory is complete when its ``DONE.json`` marker exists (the
  generator writes it last and moves the directory into place atomically).
* ``real/<name>/`` -- real datasets prepared by ``data_scripts/prepare_*.py``: ``voc_seg``,
  ``voc_det``, ``voc07_det``, ``voc0712_det``, ``coco``, ``tt100k``.

**Which data the notebooks read** is ``$COURSE_DATA`` (``make instructor DATA=...`` sets it): ``synthetic``
(default) or a comma-separated choice of real datasets that replace synthetic ones in ``dataset_dir``:

=========  =====================================================================
``voc``    ``segmentation`` -> ``voc_seg`` (chapters 1-3), ``multiscale`` -> ``voc_det`` (chapters 4-6)
``voc07``  ``multiscale`` -> ``voc07_det`` (VOC 2007 trainval; its test split is read as ``val``)
``voc0712`` ``multiscale`` -> ``voc0712_det`` (VOC 2007+2012 trainval; VOC 2007 test read as ``val``)
``coco``   ``multiscale`` -> ``coco`` (chapter 7)
``tt100k`` ``small_objects`` -> ``tt100k`` (chapter 8; its test split is read as ``val``)
=========  =====================================================================

A notebook keeps calling ``dataset_dir("multiscale")`` and takes sizes and classes from the dataset
object, so the same cells train and evaluate on the real data.
"""
from __future__ import annotations

import os
from pathlib import Path

__all__ = [
    "SYNTHETIC_DATASETS",
    "REAL_DATASETS",
    "MARKER",
    "repo_root",
    "checkout_root",
    "data_root",
    "dataset_dir",
    "DATA_CHOICES",
    "data_selection",
]

SYNTHETIC_DATASETS = ("segmentation", "small_objects", "multiscale")
# name -> the script that prepares it
REAL_DATASETS = {
    "voc_seg": "data_scripts/prepare_voc.py",
    "voc_det": "data_scripts/prepare_voc.py",
    "voc07_det": "data_scripts/prepare_voc.py",
    "voc0712_det": "data_scripts/prepare_voc.py",
    "coco": "data_scripts/prepare_coco.py",
    "tt100k": "data_scripts/prepare_tt100k.py",
}
MARKER = "DONE.json"
# $COURSE_DATA choice -> {synthetic dataset it replaces: real dataset}
DATA_CHOICES = {
    "synthetic": {},
    "voc": {"segmentation": "voc_seg", "multiscale": "voc_det"},
    "voc07": {"multiscale": "voc07_det"},
    "voc0712": {"multiscale": "voc0712_det"},
    "coco": {"multiscale": "coco"},
    "tt100k": {"small_objects": "tt100k"},
}
# the files a notebook reads from a replaced dataset (checked up front, so a missing split is named early)
_NEEDED = {
    "voc_seg": ["splits/train.txt", "splits/val.txt", "classes.json"],
    "voc_det": ["annotations/instances_train.json", "annotations/instances_val.json"],
    "voc07_det": ["annotations/instances_train.json", "annotations/instances_val.json"],
    "voc0712_det": ["annotations/instances_train.json", "annotations/instances_val.json"],
    "coco": ["annotations/instances_train.json", "annotations/instances_val.json"],
    "tt100k": ["annotations/instances_train.json", "annotations/instances_val.json"],
}


def repo_root() -> Path:
    """The repository checkout that contains ``course_lib/`` (an instructor's tools; see :func:`checkout_root`)."""
    return Path(__file__).resolve().parents[2]


def checkout_root() -> Path | None:
    """The repository checkout this ``course_lib`` was imported from, or None when it is installed (a wheel)."""
    root = repo_root()
    return root if (root / "pyproject.toml").is_file() and (root / "notebooks").is_dir() else None


def data_root() -> Path:
    """``$COURSE_DATA_DIR`` if set, else ``<repo>/data`` in a checkout, else the user's cache (module docstring)."""
    env = os.environ.get("COURSE_DATA_DIR", "").strip()
    if env:
        return Path(env).expanduser()
    checkout = checkout_root()
    if checkout is not None:
        return checkout / "data"
    cache = os.environ.get("XDG_CACHE_HOME", "").strip()
    return (Path(cache).expanduser() if cache else Path.home() / ".cache") / "course_lib" / "data"


def data_selection(value: str | None = None) -> dict[str, str]:
    """The replacements ``{synthetic name: real name}`` that ``$COURSE_DATA`` (or ``value``) asks for."""
    value = os.environ.get("COURSE_DATA", "") if value is None else value
    mapping: dict[str, str] = {}
    for choice in filter(None, (c.strip().lower() for c in value.split(","))):
        if choice not in DATA_CHOICES:
            raise ValueError(f"COURSE_DATA={value!r}: unknown choice {choice!r}. Valid: {', '.join(DATA_CHOICES)} "
                             "(comma-separated, e.g. 'voc,tt100k').")
        for synthetic, real in DATA_CHOICES[choice].items():
            if mapping.get(synthetic, real) != real:
                raise ValueError(f"COURSE_DATA={value!r}: {mapping[synthetic]!r} and {real!r} both replace "
                                 f"{synthetic!r}; choose one.")
            mapping[synthetic] = real
    return mapping


def dataset_dir(name: str, profile=None) -> Path:
    """The directory of dataset ``name``, checked to be complete.

    ``name`` is a synthetic dataset (``"segmentation"``, ``"small_objects"``, ``"multiscale"``),
    found under ``data_root()/<profile.name>/``, or a prepared real one (``"voc_seg"``,
    ``"voc_det"``, ``"voc07_det"``, ``"voc0712_det"``, ``"coco"``, ``"tt100k"``), found under ``data_root()/real/``.
    ``profile`` is a :class:`~course_lib.profiles.Profile`, a profile name, or ``None`` for
    :func:`~course_lib.profiles.get_profile`'s choice.

    A synthetic name that ``$COURSE_DATA`` replaces (see the module docstring) gives the real
    dataset's directory instead.

    Raises ``FileNotFoundError`` with the command that builds the dataset when the directory is
    missing or incomplete (no ``DONE.json``).
    """
    replaced = data_selection().get(name)
    if replaced is not None:
        path = dataset_dir(replaced)
        missing = [f for f in _NEEDED[replaced] if not (path / f).is_file()]
        if missing:
            raise FileNotFoundError(
                f"COURSE_DATA={os.environ.get('COURSE_DATA')!r} reads {name!r} from {path}, which lacks "
                f"{', '.join(missing)}. Prepare the missing splits with `python {REAL_DATASETS[replaced]} --help`"
                f"{' (e.g. --splits train val)' if replaced == 'coco' else ''}.")
        return path
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
            f"    python -m course_lib.data.make_synthetic --profile {profile.name} --only {name}\n"
            f"or build everything with `make lab` (profile from COURSE_PROFILE) / `make test` (ci)."
        )
    _check_marker(path, name, profile)
    return path


def _check_marker(path: Path, name: str, profile) -> None:
    """A synthetic dataset built for other parameters than ``profile``'s (e.g. before a profile grew its
    validation split) is an error that names the difference, not a silent use of the old files."""
    from course_lib.data.synthetic import dataset_params
    from course_lib.data.synthetic.common import marker_differences, read_marker

    recorded = read_marker(path)
    if recorded is None:
        raise FileNotFoundError(f"Dataset {name!r} at {path}: its {MARKER} cannot be read. Rebuild it with:\n"
                                f"    python -m course_lib.data.make_synthetic --profile {profile.name} --only {name}")
    expected = dataset_params(name, profile, seed=recorded.get("seed", 0))  # any seed (make_synthetic --seed)
    differ = marker_differences(recorded, expected)
    if differ:
        raise FileNotFoundError(
            f"Dataset {name!r} at {path} was built for other parameters than profile {profile.name!r} gives now: "
            + ", ".join(f"{key} {old!r} (the profile: {new!r})" for key, (old, new) in differ.items())
            + f". Rebuild it (a few seconds for ci, about a minute for cpu) with:\n"
            f"    python -m course_lib.data.make_synthetic --profile {profile.name} --only {name}\n"
            f"or `make lab` / `make test`, which rebuild every dataset whose parameters changed.")
