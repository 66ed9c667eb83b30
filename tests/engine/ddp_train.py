"""Run by tests/engine/test_distributed.py under ``torchrun --nproc_per_node 2`` (gloo, CPU).

    ddp_train.py OUT [--crash-rank R --crash-step S]

Trains ``make_model`` for STEPS steps with ``fit`` (per-process batch BATCH, checkpoint OUT/run.pt) and has
rank 0 write OUT/weights.pt and OUT/steps.json (the steps this launch ran). A rank told to crash raises in its
callback after that step.
"""
import argparse
import json
import os
import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from course_lib.engine import fit, save_weights, seed_everything  # noqa: E402

STEPS, BATCH, CHECKPOINT_EVERY = 6, 3, 2


class Fixed(torch.utils.data.Dataset):
    def __init__(self, n=24):
        g = torch.Generator().manual_seed(5)
        self.x, self.y = torch.randn(n, 8, generator=g), torch.randint(0, 3, (n,), generator=g)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], self.y[i]


def make_model():
    seed_everything(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))


def loss_fn(model, batch):
    x, y = batch
    return {"loss_ce": nn.functional.cross_entropy(model(x), y)}


def train(model, batch_size, checkpoint_path=None, callback=None):
    opt = torch.optim.SGD(model.parameters(), lr=0.2, momentum=0.9)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=3, gamma=0.5)
    return fit(model, Fixed(), loss_fn, opt, steps=STEPS, batch_size=batch_size, lr_scheduler=sched, device="cpu",
               checkpoint_path=checkpoint_path, checkpoint_every=CHECKPOINT_EVERY, progress=False, callback=callback)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=Path)
    parser.add_argument("--crash-rank", type=int, default=-1)
    parser.add_argument("--crash-step", type=int, default=-1)
    args = parser.parse_args()
    rank = int(os.environ["RANK"])
    ran = []

    def callback(step, record):
        ran.append(step)
        if rank == args.crash_rank and step == args.crash_step:
            raise RuntimeError(f"simulated failure of rank {rank}")

    model = make_model()
    history = train(model, BATCH, args.out / "run.pt", callback)
    if rank == 0:
        save_weights(model, args.out / "weights.pt")
        (args.out / "steps.json").write_text(json.dumps({"ran": ran, "history": [r["step"] for r in history.records],
                                                         "loss": [r["loss"] for r in history.records]}))
