#!/usr/bin/env python
"""Download the ImageNet weights the papers fine-tune, and torchvision's COCO Faster R-CNN R50-FPN that
``make reference`` evaluates, into torchvision's cache, ahead of time.

    python data_scripts/download_weights.py                 # VGG16, ResNet-50, ResNet-101, the COCO R50-FPN (about 960 MB)
    python data_scripts/download_weights.py --arch resnet50

For a machine that is online only at setup (``make weights``): afterwards ``resnet_body(50,
weights="IMAGENET1K_V1")`` and the other backbones load them offline. Files go where torchvision looks,
``$TORCH_HOME/hub/checkpoints`` (default ``~/.cache/torch/hub/checkpoints``), under torchvision's names; each is
verified against the SHA-256 prefix in its name. An interrupted download resumes (``<file>.part``); a file already
there is verified and kept; a damaged one is named, with what to do.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

try:
    import course_lib  # noqa: F401
except ImportError:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from course_lib.backbones.weights import (IMAGENET, CorruptWeightsError, cache_path, expected_prefix,
                                          verify_cached, weights_enum)
from course_lib.data.download import ChecksumError, download, human_bytes

REFERENCE = "fasterrcnn_resnet50_fpn"  # torchvision's COCO_V1 detector (course_lib.evaluation.reference)


def published(name: str):
    """The torchvision weights enum member that ``name`` stands for."""
    if name == REFERENCE:
        from course_lib.evaluation.reference import REFERENCE_WEIGHTS
        return REFERENCE_WEIGHTS
    return weights_enum(name)[IMAGENET[name]]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", action="append", choices=[*sorted(IMAGENET), REFERENCE],
                        help="only these networks (repeat the flag); default: all of them")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    wanted = [published(name) for name in (args.arch or [*IMAGENET, REFERENCE])]
    missing = [w for w in wanted if not cache_path(w).exists()]
    total = sum(w.meta.get("_file_size", 0) * 1e6 for w in missing)
    where = cache_path(wanted[0]).parent
    print(f"{len(wanted)} weights file(s) in {where}; {len(missing)} to download ({human_bytes(total)}).")
    failed = 0
    for w in wanted:
        path = cache_path(w)
        try:
            if path.exists():
                verify_cached(path)
                print(f"{path.name}: already there, SHA-256 prefix verified ({w!r})")
                continue
            download(w.url, path, sha256=expected_prefix(path), progress=not args.quiet)
            print(f"{path.name}: downloaded and verified ({w!r})")
        except (CorruptWeightsError, ChecksumError, OSError) as e:
            failed += 1
            print(f"{path.name}: {e}", file=sys.stderr)
    if failed:
        print(f"{failed} of {len(wanted)} file(s) are not in place; run the same command again once the cause is "
              "fixed (downloads resume).", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
