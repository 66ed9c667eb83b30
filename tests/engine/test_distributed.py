"""fit under torchrun: 2 CPU processes (gloo) follow the single-process run with the combined batch; a crash of
one rank stops the run with a message and leaves the last checkpoint intact; launched again, the workers resume
at that step. Two launches (a few seconds each) cover all three."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from course_lib.engine import _sync_batchnorm, load_weights

from . import ddp_train

SCRIPT = Path(ddp_train.__file__)


def torchrun(out: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(SCRIPT.parents[2])}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(SCRIPT), str(out), *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


def test_two_ranks_crash_resume_and_equal_one_process_with_the_combined_batch(tmp_path):
    crashed = torchrun(tmp_path, "--crash-rank", "1", "--crash-step", "5")
    assert crashed.returncode != 0, "the run must stop when a rank fails"
    assert "[rank 1/2] training stopped after step 5 of 6: RuntimeError: simulated failure of rank 1" in crashed.stderr
    assert f"{tmp_path / 'run.pt'} holds the last complete checkpoint" in crashed.stderr
    assert torch.load(tmp_path / "run.pt", weights_only=True)["step"] == 4 and not (tmp_path / "weights.pt").exists()

    run = torchrun(tmp_path)  # the same command again: it resumes from the step-4 checkpoint
    assert run.returncode == 0, run.stderr[-4000:]
    steps = json.loads((tmp_path / "steps.json").read_text())
    assert steps["ran"] == [5, 6] and steps["history"] == [1, 2, 3, 4, 5, 6]
    state = torch.load(tmp_path / "run.pt", weights_only=True)
    assert state["step"] == 6 and state["world_size"] == 2 and len(state["rng_ranks"]) == 2
    assert not list(tmp_path.glob(".*.tmp"))

    single = ddp_train.make_model()
    history = ddp_train.train(single, 2 * ddp_train.BATCH)  # one process, the combined batch
    ddp = load_weights(ddp_train.make_model(), tmp_path / "weights.pt")
    for (name, a), b in zip(single.state_dict().items(), ddp.state_dict().values()):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6, msg=f"{name} differs from the single-process run")
    assert steps["loss"] == pytest.approx([r["loss"] for r in history.records], rel=1e-5)


def test_training_batch_norm_becomes_sync_batchnorm_with_the_same_parameters():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU())
    weight = model[1].weight
    converted = _sync_batchnorm(model)
    assert converted is model and type(model[1]) is nn.SyncBatchNorm and model[1].weight is weight
    plain = nn.Sequential(nn.Linear(2, 2))
    assert _sync_batchnorm(plain) is plain and type(plain[0]) is nn.Linear
