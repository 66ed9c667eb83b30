#!/usr/bin/env python
"""Pretrain the laptop's backbones on the course's "ImageNet in miniature" (course_lib/pretraining.py).

    python data_scripts/pretrain_backbones.py --profile cpu             # builds what is missing, resumable
    python data_scripts/pretrain_backbones.py --profile ci --out /tmp/w  # seconds

Writes ``data/<profile>/pretrained/resnet50_w<width>.pth`` and ``vgg16_w<width>.pth`` (or under ``--out``, or
``$COURSE_DATA_DIR/<profile>``), each where the profile starts from it: the state dict of a ResNet-50 at the
profile's ``detector.width`` (chapters 5-8) and of a VGG16's convolutions at its ``rcnn.width`` (chapter 4), without
their classifiers, trained for the profile's ``pretraining`` steps (course_lib/profiles.py) from ``--seed``. A model
loads one with ``weights_backbone=<that file>``. An existing file is kept (delete it to train again); an interrupted run resumes
from its checkpoint (``<file>.ckpt``) when run again.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

try:
    from course_lib.data.paths import data_root
    from course_lib.pretraining import NETWORKS, PRETRAINED, backbone_path, build_backbone, network_settings
except ImportError:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from course_lib.data.paths import data_root
    from course_lib.pretraining import NETWORKS, PRETRAINED, backbone_path, build_backbone, network_settings
from course_lib.profiles import PROFILES, get_profile, profile_names


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profile", choices=profile_names(), default=None,
                        help="sizes and steps (default: $COURSE_PROFILE, else gpu with CUDA / cpu without)")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: data/<profile>)")
    parser.add_argument("--seed", type=int, default=0, help="random seed of the weights and the crops (default 0)")
    parser.add_argument("--workers", type=int, default=0, help="data loader processes (default 0: in the main one)")
    parser.add_argument("--val-crops", type=int, default=2000, help="crops of the val split to score (default 2000)")
    parser.add_argument("--network", choices=NETWORKS, action="append", default=None,
                        help="only this network (repeatable; default: every one the profile starts from)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    key = (args.profile or os.environ.get("COURSE_PROFILE", "")).strip().lower()
    profile = PROFILES[key] if key in PROFILES else get_profile(key or None)
    root = args.out if args.out is not None else data_root() / profile.name
    for network in args.network or NETWORKS:
        weights, width = network_settings(profile, network)
        if weights != PRETRAINED:
            print(f"The {profile.name!r} profile pretrains no {network}: it starts from "
                  f"{weights or 'random weights'} (ImageNet's: `make weights`).")
            continue
        path = backbone_path(root, width, network)
        if path.is_file():
            print(f"{path}: exists, kept (delete it to pretrain again).")
            continue
        start = time.perf_counter()
        build_backbone(profile, network, root=root, seed=args.seed, num_workers=args.workers,
                       val_crops=args.val_crops, progress=not args.quiet)
        print(f"Done: {path} ({path.stat().st_size / 2 ** 20:.1f} MiB) in {time.perf_counter() - start:.0f} s.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
