"""The gpu profile's full-scale path on the CPU: one training step of every chapter's model in
``course_lib.gpu_check.TRAINING_CASES`` at the gpu sizes (800 px transform, 2000 proposals, 512 RoIs per image,
full width) on one small image -- so that shape and memory mistakes of that path show without a GPU.

One such step costs 20-140 CPU-seconds (measured on one core of the shared 2-core machine: FCN-8s 22 s, R50-C4
135 s, R-FCN R101 55 s at its 600 px, R50-FPN 32 s, EFPN 84 s), several minutes together: too much for CI's 15-minute budget, so these run when
asked (``COURSE_FULLSIZE_TESTS=1 make test``, or ``make test-fullsize``) and, with AMP on CUDA, in
``make gpu-check``. What always runs: the no-CUDA skip of ``make gpu-check`` and its table.
"""
import math
import os
import subprocess

import pytest
import torch

from course_lib import gpu_check
from course_lib.profiles import PROFILES, replace

FULLSIZE = os.environ.get("COURSE_FULLSIZE_TESTS") == "1"


@pytest.mark.slow
@pytest.mark.skipif(not FULLSIZE, reason="full-scale step: 20-140 s each on a CPU; COURSE_FULLSIZE_TESTS=1 runs it")
@pytest.mark.parametrize("case", gpu_check.TRAINING_CASES, ids=lambda c: f"{c.chapter}-{c.name}")
def test_one_training_step_at_the_gpu_profiles_sizes(case):
    gpu = PROFILES["gpu"]
    assert (gpu.resize.faster_rcnn.min_size, gpu.proposals.train, gpu.proposals.rois_per_image) == (800, 2000, 512)
    size = (64, 80) if case.detector else (gpu.segmentation.crop_size, gpu.segmentation.crop_size)
    result = gpu_check.train_steps(case, gpu, steps=1, batch_size=1, image_size=size, device="cpu", amp=False)
    assert math.isfinite(result["loss"])


def test_gpu_check_skips_with_a_clear_message_without_cuda(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu_check.main([]) == 0
    out = capsys.readouterr().out
    assert out.startswith("gpu-check skipped: no CUDA device") and "make gpu-check" in out


def test_make_gpu_check_runs_the_module_without_the_venv():
    dry = subprocess.run(["make", "-n", "gpu-check"], cwd=gpu_check.REPO, capture_output=True, text=True)
    assert dry.returncode == 0 and "-m course_lib.gpu_check" in dry.stdout and "PYTHONPATH=." in dry.stdout


def test_the_checks_code_runs_on_the_cpu_at_ci_sizes():
    """The CUDA-vs-CPU comparison and the training steps of make gpu-check, CPU against CPU at small sizes."""
    fpn = next(c for c in gpu_check.TRAINING_CASES if c.name == "Faster R-CNN R50-FPN")
    ci = PROFILES["ci"]
    small = replace(ci, resize=dict(faster_rcnn=ci.resize.fpn))  # 128 px, as chapter 7 in ci
    name, status, detail = gpu_check._equivalence(fpn, small, devices=("cpu", "cpu"), image_size=(64, 80))
    assert status == "ok" and "features 0.0e+00" in detail and "roi head 0.0e+00" in detail, detail
    result = gpu_check.train_steps(fpn, small, steps=2, batch_size=1, image_size=(64, 80), device="cpu", amp=False)
    assert math.isfinite(result["loss"]) and result["s_per_step"] > 0


def test_random_detection_batch_and_table():
    images, targets = gpu_check.random_detection_batch(2, (64, 80), num_classes=5)
    assert [im.shape for im in images] == [(3, 64, 80)] * 2
    boxes = torch.cat([t["boxes"] for t in targets])
    assert (boxes[:, 2:] > boxes[:, :2]).all() and (boxes[:, 2] <= 80).all() and (boxes[:, 3] <= 64).all()
    out = "warming up\n\nop   ours ms  ratio\nnms  1.0  0.90\n\ntarget: within 1.10x\n"
    assert gpu_check._result_lines(out) == ["op   ours ms  ratio", "nms  1.0  0.90"]
    assert gpu_check._result_lines("a\nb\n") == ["a", "b"]
    assert gpu_check._table([("a", "ok", "x"), ("longer check", "FAIL", "y")]).splitlines()[2].startswith("a ")
