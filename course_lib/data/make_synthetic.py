"""Generate the course's offline datasets (no download): segmentation scenes, small traffic signs
modelled on Tsinghua-Tencent 100K, and multi-scale shapes.

    python -m course_lib.data.make_synthetic                      # profile from $COURSE_PROFILE
    python -m course_lib.data.make_synthetic --profile ci --skip-existing
    python -m course_lib.data.make_synthetic --only small_objects --seed 1 --out /tmp/data

(``python -m course_lib.data.make_synthetic`` in a checkout is the same command.) The profile (course_lib/profiles.py)
sets the number and size of the images; the output goes to ``--out`` (default: ``data_root()/<profile>``, see
course_lib.data.paths). The same seed gives byte-identical files. A notebook's set-up cell calls :func:`build`.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from course_lib.data.atomic import directory_size
from course_lib.data.paths import SYNTHETIC_DATASETS, data_root
from course_lib.data.synthetic import build_dataset
from course_lib.profiles import PROFILES, Profile, get_profile, profile_names

__all__ = ["build", "main"]


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return f"{n:.1f} GiB"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", choices=profile_names(), default=None,
                        help="data size (default: $COURSE_PROFILE, else gpu with CUDA / cpu without)")
    parser.add_argument("--out", type=Path, default=None, help="output directory (default: data/<profile>)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--only", action="append", choices=SYNTHETIC_DATASETS, default=None,
                        help="build only this dataset (repeatable)")
    parser.add_argument("--skip-existing", action="store_true",
                        help="keep a dataset whose directory is complete (DONE.json with the same parameters)")
    parser.add_argument("--workers", type=int, default=0,
                        help="worker processes (default 0: one per CPU core, at most 8, for large profiles)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser.parse_args(argv)


def build(profile: Profile, out: Path | None = None, *, only=None, seed: int = 0, skip_existing: bool = True,
          workers: int = 0, progress: bool = True) -> Path:
    """Build ``profile``'s synthetic datasets (``only``: some of them) under ``out`` (default ``data_root()/<name>``),
    printing one line per dataset and a total; returns ``out``."""
    out = Path(out) if out is not None else data_root() / profile.name
    names = list(only or SYNTHETIC_DATASETS)
    start = time.perf_counter()
    total_bytes = 0
    for name in names:
        count = {"segmentation": profile.data.segmentation_images,
                 "small_objects": profile.data.small_objects_images, "multiscale": profile.data.multiscale_images}[name]
        n_workers = workers or (1 if count <= 100 else min(8, os.cpu_count() or 1))
        t0 = time.perf_counter()
        path, built = build_dataset(name, out, profile, seed=seed, skip_existing=skip_existing,
                                    workers=n_workers, progress=progress)
        files, size = directory_size(path)
        total_bytes += size
        what = "built" if built else "complete, skipped"
        print(f"{name}: {what} {path} ({files} files, {human_bytes(size)}, {time.perf_counter() - t0:.1f} s)")
    print(f"Done: {len(names)} dataset(s) for profile {profile.name!r} in {out}, "
          f"{human_bytes(total_bytes)} on disk, {time.perf_counter() - start:.1f} s.")
    return out


def main(argv=None) -> int:
    args = parse_args(argv)
    # generating the gpu profile's data needs no GPU: look the profile up without get_profile's CUDA check
    key = (args.profile or os.environ.get("COURSE_PROFILE", "")).strip().lower()
    profile = PROFILES[key] if key in PROFILES else get_profile(key or None)
    build(profile, args.out, only=args.only, seed=args.seed, skip_existing=args.skip_existing, workers=args.workers,
          progress=not args.quiet)
    return 0


if __name__ == "__main__":
    sys.exit(main())
