"""One training loop for every chapter.

``fit`` runs ``steps`` optimiser steps of ``loss_fn(model, batch)`` with

* a deterministic data order: epoch ``e`` visits the samples in the order
  ``torch.randperm(len(dataset), generator=Generator().manual_seed(epoch_seed(seed, e)))``, cut into
  ``len(dataset) // batch_size`` batches (the last incomplete one is dropped). ``epoch_seed`` mixes the two
  numbers (NumPy's ``SeedSequence``), so that the runs of seeds 0, 1, 2 -- a comparison's repeats -- see
  unrelated orders: with ``seed + e`` seed 1 would replay seed 0's epochs shifted by one, and the spread over
  seeds would understate the noise;
* mixed precision (``torch.autocast`` + ``GradScaler``) on CUDA (float16); on the CPU only when asked with
  ``amp=True`` (bfloat16, so that the mixed-precision path is tested without a GPU);
* channels-last memory for the model's 4-d weights (and so its convolutions' activations): on CUDA, and on the
  CPU unless the model says ``channels_last_on_cpu = False`` (``fit(channels_last=...)`` decides either way).
  On 2 CPU cores a training step is faster in that layout for FCN-8s, U-Net, Fast R-CNN, C4 and FPN (1.05-2.4x
  over four runs); R-FCN's and EFPN stage 2's ratios straddle 1 (0.6-1.8x: their batch norm's forward pass can
  be slower in channels-last), so such a model may say no (``tests/benchmarks/bench_training.py --compare
  channels_last``). A run and its resumption use the same layout, so resuming stays exact;
* optional gradient clipping (global L2 norm) and a learning-rate scheduler stepped per step;
* a ``History`` of every step (loss, each named loss term, learning rate, time) to plot;
* atomic, resumable checkpoints: model, optimiser, scheduler, scaler, step, history and the
  random number generators (so that dropout and random augmentations replay exactly).
  An interrupted run resumed from its checkpoint ends with the same weights, bit for bit on
  CPU with ``num_workers=0``, as a run that was never interrupted;
* several processes under ``torchrun --nproc_per_node N`` (``$WORLD_SIZE`` > 1): PyTorch's
  ``DistributedDataParallel`` (NCCL on CUDA, one GPU per process; gloo on the CPU), batch norm made
  ``SyncBatchNorm`` on CUDA, and a distributed sampler: ``batch_size`` is per process, and step ``s`` of process ``r``
  takes the ``r``-th slice of the batch that one process would take with ``batch_size * N`` -- so N processes
  follow, to float tolerance, the single-process run with the combined batch. Logged losses are averaged over
  the processes; rank 0 alone shows progress and writes the (atomic) checkpoints, which hold every rank's
  random state, so a resumed run continues at the same step. A rank that fails says so and where the last
  complete checkpoint is; torchrun then stops the others. One process (no ``torchrun``) is the default.

Checkpoints hold only tensors and plain Python values: they load with
``torch.load(path, weights_only=True)``, which cannot execute code hidden in a file.
"""
from __future__ import annotations

import math
import os
import random
import re
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from course_lib.data.atomic import check_writable, remove_stale_temporaries
from course_lib.evaluation import evaluate_detector
from course_lib.state_dict import check_state_dict, read_file

__all__ = ["seed_everything", "epoch_seed", "fit", "History", "save_checkpoint", "save_weights", "load_weights",
           "remove_checkpoint_temporaries", "train_detector", "train_and_evaluate", "overfit",
           "loss_fall", "check_overfit", "overfit_detector", "detector_optimizer", "recipe_schedule", "training_steps",
           "recipe_optimizer"]


def seed_everything(seed: int) -> None:
    """Seed Python's ``random``, NumPy and PyTorch (CPU and every CUDA device)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds all CUDA devices


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of epoch ``epoch``'s data order in a run seeded ``seed``: a 32-bit number drawn from NumPy's
    ``SeedSequence([seed, epoch])``, which hashes its entropy so that nearby (seed, epoch) pairs give unrelated
    streams. Both must be integers >= 0."""
    for name, value in (("seed", seed), ("epoch", epoch)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
            raise ValueError(f"{name}={value!r}: a run's seed and epoch must be integers >= 0.")
    return int(np.random.SeedSequence([int(seed), int(epoch)]).generate_state(1)[0])


class History:
    """What happened at each step: ``records`` is a list of dicts with keys
    ``step`` (1-based), ``loss`` (the sum), one key per named loss term, ``lr`` and ``time``
    (seconds since the run started)."""

    def __init__(self, records: list[dict] | None = None):
        self.records = list(records or [])

    def __len__(self) -> int:
        return len(self.records)

    @property
    def last(self) -> dict | None:
        return self.records[-1] if self.records else None

    def to_dict(self) -> dict:
        return {"records": [dict(r) for r in self.records]}

    @classmethod
    def from_dict(cls, d: dict) -> "History":
        return cls(d["records"])

    def plot(self, ax=None, terms: bool = True, smooth: float = 0.6):
        """Plot the loss (and each loss term) against the step; returns the figure.

        ``smooth`` is the weight of an exponential moving average drawn over the raw
        curve (0 = no smoothing), as in TensorBoard.
        """
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 3.5)) if ax is None else (ax.figure, ax)
        steps = [r["step"] for r in self.records]
        keys = ["loss"] + ([k for k in self.records[0] if k not in ("step", "loss", "lr", "time")]
                           if terms and self.records else [])
        for key in keys:
            raw = np.array([r[key] for r in self.records], dtype=float)
            (line,) = ax.plot(steps, raw, alpha=0.3 if smooth else 1.0, lw=1)
            if smooth:
                ema, avg = np.empty_like(raw), raw[0]
                for i, v in enumerate(raw):  # a loop over steps, not pixels: a few thousand at most
                    avg = smooth * avg + (1 - smooth) * v
                    ema[i] = avg
                ax.plot(steps, ema, color=line.get_color(), lw=2 if key == "loss" else 1.5)
            line.set_label(key)
        ax.set(xlabel="step", ylabel="loss", title="training loss")
        if len(keys) > 1:
            ax.legend(fontsize="small")
        ax.grid(alpha=0.3)
        return fig


# ---------------------------------------------------------------------------- checkpoints

def remove_checkpoint_temporaries(path: str | os.PathLike) -> list[Path]:
    """Remove the temporaries that killed writes of checkpoint ``path`` left beside it, ``.<name>.<pid>.<random>.tmp``
    (a live writer's file is kept): the one rule of :func:`course_lib.data.atomic.remove_stale_temporaries`."""
    path = Path(path)
    return remove_stale_temporaries(path.parent, (rf"\.{re.escape(path.name)}\.(?P<pid>\d+)\.[^.]+\.tmp",))


def save_checkpoint(path: str | os.PathLike, state: dict) -> None:
    """``torch.save(state, path)`` atomically: write a temporary file in the same
    directory, then ``os.replace`` it over ``path``. A crash mid-save leaves the old file
    (and a temporary file that the next save removes)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_checkpoint_temporaries(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_weights(model: nn.Module, path: str | os.PathLike) -> None:
    """Save the final weights (the model's ``state_dict``) atomically."""
    save_checkpoint(path, {"model": model.state_dict()})


def _load(path: Path) -> dict:
    try:
        state = read_file(path)
    except ValueError as e:
        raise RuntimeError(f"Could not read checkpoint {path} ({e}). Delete it or pass another path.") from e
    if not isinstance(state, dict):
        raise RuntimeError(f"{path} is not a course_lib checkpoint. Delete it or pass another path.")
    return state


def _check_matches(model: nn.Module, weights: dict, path: Path) -> None:
    """Name the keys that differ between ``weights`` and ``model`` (missing, unexpected, or another
    shape -- e.g. a head trained for another number of classes)."""
    check_state_dict(model, weights, f"checkpoint {path}",
                     fix=f"Delete {path} or pass another checkpoint path to start from scratch.")


def load_weights(model: nn.Module, path: str | os.PathLike) -> nn.Module:
    """Load weights saved by ``save_weights`` or a training checkpoint of ``fit`` into ``model``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No weights at {path}: train the model first "
                                "(e.g. with fit(..., checkpoint_path=...)).")
    state = _load(path)
    weights = state.get("model", state)
    _check_matches(model, weights, path)
    model.load_state_dict(weights)
    return model


def _rng_state() -> dict:
    np_state = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": (np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def _set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---------------------------------------------------------------------------- the loop


def _to_device(x, device: torch.device):
    """Move tensors (tv_tensors included) inside lists, tuples and dicts to ``device``."""
    if isinstance(x, torch.Tensor):
        return x.to(device, non_blocking=True)
    if isinstance(x, dict):
        return {k: _to_device(v, device) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(_to_device(v, device) for v in x)
    return x


def _batches(dataset, batch_size, start, steps, seed, collate_fn, num_workers, pin_memory, rank=0, world=1):
    """Yield ``(step, batch)`` for steps ``start+1 .. steps``: the order is a function of
    (seed, epoch) only, so a resumed run starts at the right batch without replaying data.
    With ``world`` processes, each global batch of ``batch_size * world`` samples is cut into
    ``world`` slices and process ``rank`` takes its own (the distributed sampler)."""
    per_epoch = len(dataset) // (batch_size * world)
    if per_epoch == 0:
        per_process = f" x {world} processes" if world > 1 else ""
        raise ValueError(f"The dataset has {len(dataset)} samples, fewer than batch_size={batch_size}{per_process}: "
                         "lower batch_size or add data.")
    step, epoch = start, start // per_epoch
    while step < steps:
        this_epoch = epoch_seed(seed, epoch)
        order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(this_epoch))
        batches = order[: per_epoch * batch_size * world].view(per_epoch, world, batch_size)[:, rank]
        batches = batches[step - epoch * per_epoch: steps - epoch * per_epoch].tolist()
        # An explicit generator keeps the DataLoader from drawing from the global RNG.
        loader = DataLoader(dataset, batch_sampler=batches, collate_fn=collate_fn, num_workers=num_workers,
                            pin_memory=pin_memory, generator=torch.Generator().manual_seed(this_epoch))
        for batch in loader:
            step += 1
            yield step, batch
        epoch += 1


class _LossModule(nn.Module):
    """``loss_fn(model, batch)`` as one module, so that DistributedDataParallel sees the whole forward
    pass, whichever of the model's methods ``loss_fn`` calls."""

    def __init__(self, model: nn.Module, loss_fn):
        super().__init__()
        self.model, self.loss_fn = model, loss_fn

    def forward(self, batch):
        return self.loss_fn(self.model, batch)


def _distributed(device: torch.device | None) -> tuple[int, int, torch.device | None]:
    """``(rank, world_size, device)``: (0, 1, device) for one process; under torchrun, the process group
    (initialised here if needed: NCCL for CUDA, gloo for the CPU) and this process's GPU."""
    if not (dist.is_available() and (dist.is_initialized() or int(os.environ.get("WORLD_SIZE", "1")) > 1)):
        return 0, 1, device
    want_cuda = device.type == "cuda" if device is not None else torch.cuda.is_available()
    if want_cuda and (device is None or device.index is None):
        # LOCAL_RANK's GPU; the only visible one when each process sees its own (course_lib.run --gpus N)
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())
    if want_cuda:
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if want_cuda else "gloo")
    return dist.get_rank(), dist.get_world_size(), device


def _sync_batchnorm(model: nn.Module) -> nn.Module:
    """Batch norm layers that train (``BatchNorm*d``; not ``FrozenBatchNorm2d``) become ``SyncBatchNorm``, which
    normalises with the statistics of the whole global batch. In place below the root, with the same parameters
    (the optimiser keeps working). PyTorch implements SyncBatchNorm on CUDA only: on the CPU (gloo) batch norm
    stays per process."""
    if any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return model


# ---------------------------------------------------------------------------- resuming

# param-group entries that say how a run computes, not what it computes (and the scheduler-driven learning rate)
_NOT_SETTINGS = {"params", "lr", "initial_lr", "foreach", "fused", "capturable", "differentiable"}


def _base_lr(group: dict) -> float:
    """The learning rate the run was given: a scheduler keeps it as ``initial_lr`` and changes ``lr``."""
    return group.get("initial_lr", group["lr"])


def _param_group_differences(saved: dict, optimizer: torch.optim.Optimizer) -> list[str]:
    """How the saved optimiser state differs from ``optimizer``: the groups' sizes, the parameters' shapes in order
    (read from the saved per-parameter state), the base learning rates and the other hyper-parameters."""
    groups, params = saved["param_groups"], [p for g in optimizer.param_groups for p in g["params"]]
    if [len(g["params"]) for g in groups] != [len(g["params"]) for g in optimizer.param_groups]:
        return [f"parameter groups of sizes {[len(g['params']) for g in groups]} saved, "
                f"{[len(g['params']) for g in optimizer.param_groups]} now"]
    ids = [i for g in groups for i in g["params"]]  # the saved ids of the parameters, in order
    out = []
    for position, (i, p) in enumerate(zip(ids, params)):
        # momentum buffers, Adam's averages: the parameter's shape (a factored state, Adafactor's, is not compared)
        shapes = {tuple(v.shape) for v in saved["state"].get(i, {}).values() if torch.is_tensor(v) and v.dim()}
        if len(shapes) == 1 and shapes != {tuple(p.shape)}:
            out.append(f"parameter {position} has shape {list(p.shape)} but its saved optimiser state "
                       f"{list(*shapes)} (other parameters, or the same in another order)")
            break
    for k, (old, new) in enumerate(zip(groups, optimizer.param_groups)):
        if _base_lr(old) != _base_lr(new):
            out.append(f"group {k}: lr={_base_lr(old)} saved, lr={_base_lr(new)} now")
        for key in sorted((set(old) & set(new)) - _NOT_SETTINGS):
            if "max_momentum" in old and key in ("momentum", "betas"):  # OneCycleLR cycles them
                continue
            if old[key] != new[key] and not (isinstance(new[key], tuple) and list(new[key]) == list(old[key])):
                out.append(f"group {k}: {key}={old[key]} saved, {key}={new[key]} now")
    return out


def _resume_differences(state: dict, optimizer, lr_scheduler, steps: int) -> list[str]:
    """Everything that keeps ``state`` from resuming with these settings, each as 'X saved, Y now'."""
    out = []
    saved_type = state.get("optimizer_type")
    # checkpoints written before the type was saved: the names of the settings tell, when each side has some that
    # the other lacks (another class; a newer torch only adds names)
    old = set(state["optimizer"]["param_groups"][0]) - _NOT_SETTINGS
    new = set(optimizer.param_groups[0]) - _NOT_SETTINGS
    if saved_type is not None and saved_type != type(optimizer).__name__:
        out.append(f"optimizer {saved_type} saved, {type(optimizer).__name__} now")
    elif saved_type is None and old - new and new - old:
        out.append(f"another optimizer: settings {sorted(old)} saved, {sorted(new)} now ({type(optimizer).__name__})")
    else:
        out += _param_group_differences(state["optimizer"], optimizer)
    saved_scheduler = state.get("lr_scheduler_type", "")
    if lr_scheduler is not None and saved_scheduler != "" and saved_scheduler != type(lr_scheduler).__name__:
        out.append(f"lr_scheduler {saved_scheduler} saved, {type(lr_scheduler).__name__} now")
    if state["step"] > steps:
        out.append(f"{state['step']} steps saved, steps={steps} now (fewer)")
    return out


def _check_resumable(path: Path, state: dict, model: nn.Module, optimizer, lr_scheduler, steps: int) -> None:
    """Refuse, before anything is loaded, a checkpoint that this model, optimiser, scheduler and ``steps`` cannot
    continue exactly; the error names the file, each difference and the two ways out."""
    if "optimizer" not in state:
        raise ValueError(f"{path} holds weights only, not a training checkpoint of fit(): load it with "
                         "load_weights(model, path), or pass another checkpoint_path.")
    _check_matches(model, state["model"], path)
    differences = _resume_differences(state, optimizer, lr_scheduler, steps)
    if differences:
        raise ValueError(f"Cannot resume from checkpoint {path}: it was saved with other settings -- "
                         + "; ".join(differences) + f". Either delete {path} (or pass another checkpoint_path) "
                         "to train from scratch with the new settings, or pass the settings it was saved with.")


def _resume(path: Path, model, optimizer, lr_scheduler, scaler, *, steps, seed, batch_size, rank, world):
    """``(history, start)`` of the checkpoint at ``path``, its state loaded into the model, optimiser, scheduler,
    scaler and random generators -- after :func:`_check_resumable` found nothing to refuse."""
    state = _load(path)
    _check_resumable(path, state, model, optimizer, lr_scheduler, steps)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    if lr_scheduler is not None and state.get("lr_scheduler") is not None:
        lr_scheduler.load_state_dict(state["lr_scheduler"])
    if state["scaler"]:  # empty when saved without AMP (e.g. on the CPU)
        scaler.load_state_dict(state["scaler"])
    saved_world = state.get("world_size", 1)
    _set_rng_state(state["rng_ranks"][rank] if saved_world == world and "rng_ranks" in state else state["rng"])
    if (state["seed"], state["batch_size"], saved_world) != (seed, batch_size, world):
        warnings.warn(f"Resuming {path}, saved with seed={state['seed']}, batch_size={state['batch_size']}, "
                      f"{saved_world} process(es), under seed={seed}, batch_size={batch_size}, {world} "
                      "process(es): the data order changes.", stacklevel=3)
    return History.from_dict(state["history"]), state["step"]


def _save(path: Path, step: int, history: History, model, optimizer, lr_scheduler, scaler, *, seed, batch_size,
          rank, world) -> None:
    """Write the checkpoint of ``step``; with several processes every rank's random state, by rank 0 alone
    (the others wait for the file)."""
    state = {
        "model": model.state_dict(), "optimizer": optimizer.state_dict(),
        "optimizer_type": type(optimizer).__name__,
        "lr_scheduler": lr_scheduler.state_dict() if lr_scheduler is not None else None,
        "lr_scheduler_type": type(lr_scheduler).__name__ if lr_scheduler is not None else None,
        "scaler": scaler.state_dict(), "step": step, "rng": _rng_state(),
        "history": history.to_dict(), "seed": seed, "batch_size": batch_size,
    }
    if world > 1:
        ranks = [None] * world
        dist.all_gather_object(ranks, state["rng"])
        state.update(rng_ranks=ranks, world_size=world)
        if rank == 0:
            save_checkpoint(path, state)
        dist.barrier()
    else:
        save_checkpoint(path, state)


# ---------------------------------------------------------------------------- one step


def _loss_values(terms: dict, step: int, world: int) -> dict[str, float]:
    """The loss terms as floats (averaged over the processes, so every rank logs and checks the same); a clear
    error for a term that is not a scalar or not finite -- before the weights are updated."""
    for name, v in terms.items():
        if v.numel() != 1:
            raise ValueError(f"step {step}: loss term {name!r} has shape {list(v.shape)}; "
                             "loss_fn must return scalars (reduce with .mean() or .sum()).")
    if world > 1:
        mean = torch.stack([v.detach().float().reshape(()) for v in terms.values()])
        dist.all_reduce(mean)
        values = dict(zip(terms, (mean / world).tolist()))
    else:
        values = {name: float(v.detach()) for name, v in terms.items()}
    for name, v in values.items():
        if not math.isfinite(v):
            raise FloatingPointError(
                f"step {step}: loss term {name!r} is {v} (terms: {values}). Training stopped before "
                f"updating the weights; the last checkpoint is intact. Try a lower learning rate, "
                f"grad_clip, or check the targets of this batch.")
    return values


def _step(step, batch, forward, model, optimizer, lr_scheduler, scaler, *, amp, amp_dtype, device, grad_clip,
          world) -> dict:
    """One optimiser step on ``batch`` (already on ``device``); returns its record without the time."""
    with torch.autocast(device.type, dtype=amp_dtype, enabled=amp):
        out = forward(batch)
    terms = out if isinstance(out, dict) else {"loss": out}
    values = _loss_values(terms, step, world)
    loss = sum(terms.values())

    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    if grad_clip is not None:
        scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
        nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    scaler.step(optimizer)
    scaler.update()
    lr = optimizer.param_groups[0]["lr"]  # the rate this step used
    if lr_scheduler is not None:
        lr_scheduler.step()
    total = float(loss.detach()) if world == 1 else sum(values.values())
    return {"step": step, **(values if isinstance(out, dict) else {}), "loss": total, "lr": lr}


# ---------------------------------------------------------------------------- fit


def _check_arguments(steps, batch_size, checkpoint_every, seed) -> None:
    for name, value, low in (("steps", steps, 0), ("batch_size", batch_size, 1),
                             ("checkpoint_every", checkpoint_every, 1), ("seed", seed, 0)):
        if not isinstance(value, int) or value < low:
            raise ValueError(f"{name}={value!r}: must be an integer >= {low}.")


def _prepare(model: nn.Module, device, world: int, channels_last: bool | None) -> tuple[nn.Module, torch.device]:
    """The device (default CUDA if available) and the model on it: SyncBatchNorm across GPUs, channels-last (None:
    on CUDA, and on the CPU unless ``model.channels_last_on_cpu`` is False)."""
    device = torch.device(device if device is not None else "cuda" if torch.cuda.is_available() else "cpu")
    if world > 1 and device.type == "cuda":
        model = _sync_batchnorm(model)
    model.to(device)  # in place: the optimiser keeps pointing at the same parameters
    if channels_last is None:
        channels_last = device.type == "cuda" or getattr(model, "channels_last_on_cpu", True)
    if channels_last:
        model.to(memory_format=torch.channels_last)  # in place too: only the 4-d tensors' strides change
    return model, device


def _forward(model, loss_fn, world: int, device: torch.device, find_unused_parameters: bool):
    """``batch -> loss_fn(model, batch)``: wrapped in DistributedDataParallel with several processes."""
    if world == 1:
        return lambda batch: loss_fn(model, batch)
    return nn.parallel.DistributedDataParallel(_LossModule(model, loss_fn),
                                               device_ids=[device.index] if device.type == "cuda" else None,
                                               find_unused_parameters=find_unused_parameters)


def _say_where_it_stopped(error: BaseException, path, done: int, steps: int, rank: int, world: int) -> None:
    """With several processes, name the failing rank and the last complete checkpoint (torchrun stops the rest)."""
    import sys

    saved = f"{path} holds the last complete checkpoint; run the same command again to resume" \
        if path is not None else "no checkpoint_path was given, so nothing was saved"
    print(f"[rank {rank}/{world}] training stopped after step {done} of {steps}: {type(error).__name__}: {error}. "
          f"{saved}.", file=sys.stderr, flush=True)


def fit(model: nn.Module, dataset, loss_fn, optimizer: torch.optim.Optimizer, *, steps: int, batch_size: int,
        collate_fn=None, lr_scheduler=None, device=None, amp: bool | None = None, grad_clip: float | None = None,
        checkpoint_path=None, checkpoint_every: int = 100, seed: int = 0, num_workers: int = 0,
        progress: bool = True, callback=None, find_unused_parameters: bool = False,
        channels_last: bool | None = None) -> History:
    """Train ``model`` for ``steps`` optimiser steps and return the ``History``.

    ``loss_fn(model, batch)`` returns a scalar tensor or a dict of named scalar terms
    (summed; each is recorded). The batch is already on ``device`` (default: CUDA if
    available, else CPU). ``amp`` defaults to True on CUDA (float16); ``amp=True`` on the CPU
    runs the same path in bfloat16 (slow: for tests). ``channels_last`` puts the model's 4-d weights in
    channels-last memory, in place, before the first step; default: on CUDA, and on the CPU unless
    ``model.channels_last_on_cpu`` is False (see the module docstring). ``callback(step, record)`` is called
    after each step (and after its checkpoint); if it returns True the run stops there (early stopping: the history
    ends at that step, and a checkpoint, if any, holds the steps done up to the last one due).

    With ``checkpoint_path``, state is saved every ``checkpoint_every`` steps and at the
    end; calling ``fit`` again with the same path resumes where it stopped, and returns at
    once when the checkpoint already holds ``steps`` steps. A checkpoint saved with another optimiser, other
    parameters, another learning rate or other hyper-parameters, or more steps, is refused before anything is
    loaded (delete it to start again); a folder that cannot be written is refused before the first step.

    Under ``torchrun`` (see the module docstring) ``batch_size`` is per process;
    ``find_unused_parameters`` is passed to ``DistributedDataParallel`` (needed when some trainable
    parameters get no gradient in a step).
    """
    _check_arguments(steps, batch_size, checkpoint_every, seed)
    path = Path(checkpoint_path) if checkpoint_path is not None else None
    if path is not None:
        check_writable(path)
    rank, world, device = _distributed(torch.device(device) if device is not None else None)
    model, device = _prepare(model, device, world, channels_last)
    cuda = device.type == "cuda"
    amp = cuda if amp is None else bool(amp)
    scaler = torch.amp.GradScaler(device.type, enabled=amp)
    parts = (model, optimizer, lr_scheduler, scaler)
    run = {"seed": seed, "batch_size": batch_size, "rank": rank, "world": world}
    history, start = History(), 0
    if path is not None and rank == 0:
        remove_checkpoint_temporaries(path)
    if path is not None and path.exists():
        history, start = _resume(path, *parts, steps=steps, **run)
        if start >= steps:
            return history

    model.train()
    forward = _forward(model, loss_fn, world, device, find_unused_parameters)
    t0 = time.perf_counter() - (history.last["time"] if history.last else 0.0)
    bar = tqdm(total=steps, initial=start, disable=not progress or rank != 0, desc="training")
    done = start  # the last step completed (for the message if a rank fails)
    try:
        for step, batch in _batches(dataset, batch_size, start, steps, seed, collate_fn, num_workers, cuda,
                                    rank, world):
            record = _step(step, _to_device(batch, device), forward, *parts, amp=amp, device=device,
                           amp_dtype=torch.float16 if cuda else torch.bfloat16, grad_clip=grad_clip, world=world)
            record["time"] = time.perf_counter() - t0
            history.records.append(record)
            done = step
            bar.set_postfix(loss=f"{record['loss']:.4f}", refresh=False)
            bar.update(1)
            if path is not None and (step % checkpoint_every == 0 or step == steps):
                _save(path, step, history, *parts, **run)
            if callback is not None and callback(step, record) is True:
                break
    except BaseException as e:
        if world > 1:
            _say_where_it_stopped(e, path, done, steps, rank, world)
        raise
    finally:
        bar.close()
    return history


# ---------------------------------------------------------------------------- the detectors' optimiser


def detector_optimizer(params, *, kind: str, lr: float, steps: int, weight_decay: float = 1e-4,
                       warmup: int | None = None):
    """``(optimizer, lr_scheduler)`` for chapters 5-8's detectors outside their papers' recipes: the rule of
    ``PROFILE.detector.optimizer`` "sgd" and "adamw" at ``PROFILE.detector.lr`` (the gpu profile's "recipe" is
    :func:`recipe_optimizer`).

    * ``kind="sgd"``: in the papers' manner, for a backbone that starts from ImageNet -- SGD, momentum 0.9, linear
      warm-up over ``warmup`` steps (default ``min(500, steps // 5)``, Detectron's 500 iterations), then the
      papers' step decay: the learning rate divided by 10 for the last quarter of the steps.
    * ``kind="adamw"``: a detector that trains in a few hundred steps on a laptop, from the course's own pretrained
      ResNet (``course_lib.pretraining``: the ``cpu`` profile downloads no ImageNet weights) or from scratch: AdamW,
      the same warm-up, then a cosine decay to 0. SGD at the papers' rate barely moves a random ResNet in that
      budget.

    Both are PyTorch's fused implementations (one kernel per parameter tensor, on the CPU too): AdamW's step over
    an R50-FPN's 2.6 M parameters at width 0.25 takes 7 ms instead of the for-loop's 32 ms on 2 cores
    (``tests/benchmarks/bench_training.py --compare unfused`` times whole steps).
    """
    params = [p for p in params if p.requires_grad]
    if not params:
        raise ValueError("detector_optimizer: no trainable parameters (requires_grad is False everywhere).")
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps={steps!r}: must be an integer >= 1.")
    warmup = max(1, min(500, steps // 5)) if warmup is None else max(1, warmup)
    if kind == "sgd":
        optimizer = torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay, fused=True)
        decay = lambda step: 0.1 if step >= 3 * steps // 4 else 1.0  # noqa: E731
    elif kind == "adamw":
        optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=True)
        decay = lambda step: 0.5 * (1 + math.cos(math.pi * min(step, steps) / steps))  # noqa: E731
    else:
        raise ValueError(f"kind={kind!r}: 'sgd' (fine-tuning in the papers' manner) or 'adamw' (a laptop's few "
                         "steps); the papers' own recipes are the optimizer 'recipe' (recipe_optimizer).")
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / warmup) * decay(step))
    return optimizer, schedule


# ---------------------------------------------------------------------------- the papers' recipes (the gpu profile)


def _world_size() -> int:
    """The processes training together: torchrun's ``$WORLD_SIZE`` (or the initialised group's), else 1."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return int(os.environ.get("WORLD_SIZE", "1"))


def recipe_schedule(recipe: str, profile, *, images_per_gpu: int):
    """``course_lib.recipes.scaled(recipe)`` for this run: on the GPUs training together (the world size, 1 without
    torchrun) x ``images_per_gpu``, for the part of the paper's iterations that ``profile.schedule`` says."""
    from course_lib import recipes

    return recipes.scaled(recipe, gpus=_world_size(), images_per_gpu=images_per_gpu,
                          fraction=recipes.schedule_fraction(profile.schedule, recipe))


def training_steps(steps: int | None, recipe: str, profile, *, images_per_gpu: int | None = None) -> int:
    """The optimiser steps of one run: ``steps`` (a profile's ``steps.*`` value), or where it is None -- the gpu
    profile's, "the recipe's" -- the iterations of :func:`recipe_schedule` (``images_per_gpu``: default
    ``profile.detector.batch_size``). The one place a gpu step count comes from."""
    if steps is not None:
        return steps
    if images_per_gpu is None and not recipe.startswith(("05", "06", "07", "08")):
        raise ValueError(f"training_steps(..., {recipe!r}): the default batch is the detectors' (chapters 5-8); for "
                         "another chapter's recipe pass images_per_gpu, the batch of its run.")
    batch = profile.detector.batch_size if images_per_gpu is None else images_per_gpu
    return recipe_schedule(recipe, profile, images_per_gpu=batch).iterations


def recipe_optimizer(params, recipe: str, *, profile, images_per_gpu: int, steps: int | None = None,
                     loss_terms: int | None = None, lr_scale: float = 1.0):
    """``(optimizer, lr_scheduler, steps)`` of a paper's recipe (:func:`recipe_schedule`): ``torch.optim.SGD(params,
    **schedule.optimizer_kwargs())``, ``LambdaLR(optimizer, schedule.lr_factor)`` (the warm-up, then the paper's
    steps) and the schedule's iterations. ``steps``: None, or the same number (a profile that states another one
    for a recipe run is refused: the recipe is the one source). ``loss_terms``: the pixels a batch's mean loss
    averages, for a recipe whose rate is for a summed loss (FCN's; ``recipes.mean_loss_sgd``). ``lr_scale``: a
    stage that continues from the one before at a lower rate (FCN-16s and -8s: 1 / ``fcn.sec4_2.stage.lr_drop``)."""
    params = [p for p in params if p.requires_grad]
    if not params:
        raise ValueError("recipe_optimizer: no trainable parameters (requires_grad is False everywhere).")
    schedule = recipe_schedule(recipe, profile, images_per_gpu=images_per_gpu)
    if steps is not None and steps != schedule.iterations:
        raise ValueError(f"steps={steps} with recipe {recipe!r}, whose schedule has {schedule.iterations} iterations "
                         f"on {schedule.gpus} GPU(s) x {images_per_gpu} images: with the optimizer 'recipe' leave the "
                         "profile's steps None (the recipe's), shorten it with the profile's schedule ('one_day'), "
                         "or choose the optimizer 'sgd' / 'adamw' to train a number of steps of your own.")
    kwargs = schedule.optimizer_kwargs(loss_terms=loss_terms)
    optimizer = torch.optim.SGD(params, **{**kwargs, "lr": kwargs["lr"] * lr_scale})
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, schedule.lr_factor), schedule.iterations


def train_detector(model: nn.Module, dataset, *, steps: int | None, profile, recipe: str | None = None,
                   loss_fn=None, params=None, seed: int = 0, **fit_kwargs) -> History:
    """Chapters 5-8's one training call: ``steps`` steps of ``loss_fn`` (default: the detector's own losses,
    ``detection_loss``) with the profile's optimiser, device, mixed precision and loader workers, gradients clipped
    at 10, every random number generator seeded with ``seed`` first. The optimiser: ``profile.detector.optimizer``
    "recipe" (the gpu profile) trains the paper recipe ``recipe`` (a ``course_lib.recipes`` key, e.g. "07") for its
    iterations (:func:`recipe_optimizer`; ``steps`` None); "sgd" / "adamw" :func:`detector_optimizer` with the
    profile's rate for ``steps``. ``params``: what trains (default: every parameter that requires a gradient, e.g.
    EFPN's stage 2 passes ``set_stage(model, 2)``); ``fit_kwargs`` go to :func:`fit` as they are."""
    from course_lib.data import detection_collate
    from course_lib.detection.generalized_rcnn import detection_loss

    seed_everything(seed)
    params = [p for p in (model.parameters() if params is None else params) if p.requires_grad]
    detector = profile.detector
    if detector.optimizer == "recipe":
        if recipe is None:
            raise ValueError(f"profile {profile.name!r} trains each detector with its paper's recipe "
                             "(detector.optimizer 'recipe'): pass recipe=<a course_lib.recipes key, e.g. '07'>.")
        optimizer, schedule, steps = recipe_optimizer(params, recipe, profile=profile, steps=steps,
                                                      images_per_gpu=detector.batch_size)
    else:
        if steps is None or detector.lr is None:
            raise ValueError(f"steps={steps}, detector.lr={detector.lr} in profile {profile.name!r}: None means the "
                             "recipe's, which only the optimizer 'recipe' reads; give the optimizer "
                             f"{detector.optimizer!r} a number of steps and a rate.")
        optimizer, schedule = detector_optimizer(params, kind=detector.optimizer, lr=detector.lr, steps=steps)
    kwargs = dict(batch_size=detector.batch_size, collate_fn=detection_collate, lr_scheduler=schedule,
                  device=profile.device, amp=profile.amp, grad_clip=10.0, seed=seed, num_workers=profile.num_workers)
    return fit(model, dataset, loss_fn or detection_loss, optimizer, steps=steps, **{**kwargs, **fit_kwargs})


def train_and_evaluate(model: nn.Module, train_set, val_set, *, steps: int | None, profile,
                       **kwargs) -> tuple[History, dict]:
    """:func:`train_detector` on ``train_set``, then ``evaluate_detector`` on ``val_set``: ``(history, COCO metrics)``
    -- what chapters 6 and 7 do for every detector they compare."""
    history = train_detector(model, train_set, steps=steps, profile=profile, **kwargs)
    metrics, _ = evaluate_detector(model, val_set, device=profile.device, batch_size=profile.detector.batch_size)
    return history, metrics


# ---------------------------------------------------------------------------- the first sanity check


def overfit(model: nn.Module, samples, loss_fn, *, steps: int, lr: float = 3e-3, collate_fn=None, device=None,
            warmup: int = 10, progress: bool = True, until=None, check_every: int = 50) -> History:
    """Train ``model`` on a handful of ``samples`` (a dataset of two images, say) until it knows them by heart.

    The first check of a new model and training loop (Karpathy, "A Recipe for Training Neural Networks", 2019:
    "overfit a single batch"): a network that cannot drive its loss to almost zero on two images, and then
    find their objects, has a bug -- a wrong target, a sign, a frozen layer -- that no amount of data will fix.
    Every step sees all ``samples`` as one batch; Adam (``lr``), ``warmup`` steps of linear warm-up, then a
    cosine decay to 0; gradients clipped at norm 10. The same ``fit`` as the real training, so the code path
    is the one the chapter then runs at scale. Check the result with :func:`check_overfit`.

    ``until(history) -> bool``, if given, is asked every ``check_every`` steps: True stops the run there, the samples
    learnt (``steps`` is then the most it may take). The random number generators are restored after each call (a
    DataLoader it builds draws its seed from them), and a model it evaluates must come back in training mode with
    its weights unchanged: then a run that stops at step k is the first k steps of the run without it.
    """
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps={steps!r}: must be an integer >= 1.")
    if not isinstance(check_every, int) or check_every < 1:
        raise ValueError(f"check_every={check_every!r}: must be an integer >= 1 (steps between two calls of until).")
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("overfit: the model has no trainable parameters (requires_grad is False everywhere).")
    optimizer = torch.optim.Adam(params, lr=lr)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * step / steps)))
    done = History()

    def stop(step: int, record: dict) -> bool:
        done.records.append(record)
        if until is None or step % check_every or step >= steps:
            return False
        with torch.random.fork_rng():  # CPU and CUDA generators back as they were: the training draws the same
            return bool(until(done))

    return fit(model, samples, loss_fn, optimizer, steps=steps, batch_size=len(samples), collate_fn=collate_fn,
               lr_scheduler=schedule, device=device, grad_clip=10.0, progress=progress, callback=stop)


def loss_fall(history: History, last: int = 10) -> float:
    """How far the loss fell: ``1 - mean(last `last` steps) / first step`` (0.9 = down by 90 %)."""
    if len(history) < 2:
        raise ValueError(f"loss_fall needs a history of at least 2 steps, got {len(history)}.")
    first = float(history.records[0]["loss"])
    if not first > 0:
        raise ValueError(f"the first loss is {first}: a fall from it means nothing (is the loss a loss?).")
    tail = [float(r["loss"]) for r in history.records[-last:]]
    return 1.0 - (sum(tail) / len(tail)) / first


OVERFIT_MIN_FALL, OVERFIT_MIN_SCORE = 0.9, 0.9  # check_overfit's defaults: the loss down 90 %, the score 0.9


def check_overfit(history: History, score: float, *, what: str, min_fall: float = OVERFIT_MIN_FALL,
                  min_score: float = OVERFIT_MIN_SCORE) -> str:
    """Assert that :func:`overfit` worked: the loss fell by at least ``min_fall`` and ``score`` (``what``: "AP50",
    "mIoU", "accuracy" on the same samples) is at least ``min_score``. Returns the one-line verdict; raises
    ``AssertionError`` saying which part failed and where to look otherwise."""
    fall = loss_fall(history)
    first, last = float(history.records[0]["loss"]), float(history.records[-1]["loss"])
    line = (f"overfit {len(history)} steps: loss {first:.3f} -> {last:.3f} (down {100 * fall:.0f} %, "
            f"needed {100 * min_fall:.0f} %), {what} {score:.3f} on the same images (needed {min_score:.2f})")
    problems = []
    if not fall >= min_fall:
        problems.append("the loss did not fall far enough: look for a frozen layer, a wrong target or a learning "
                        "rate far off")
    if not score >= min_score:
        problems.append(f"{what} is too low although the model trained on these very images: look at the "
                        "post-processing (score threshold, box decoding, label mapping)")
    if problems:
        raise AssertionError(line + "; " + "; ".join(problems) + ".")
    return line


def overfit_detector(model: nn.Module, samples, loss_fn, *, steps: int, collate_fn, device=None, eval_set=None,
                     predict=None, eval_batch_size: int = 2, lr: float = 3e-3, show: bool = True,
                     title: str = "two images learnt by heart", progress: bool = True, check_every: int = 50):
    """The detector chapters' (4-8) first check in one call: :func:`overfit` ``model`` on ``samples``, score it with
    ``course_lib.evaluation.evaluate_detector`` on the same images (``eval_set``, a ``CocoDetection`` subset of
    them, where ``samples`` are not one themselves -- Fast R-CNN trains on ``(image, proposals, target)`` items),
    and :func:`check_overfit` its AP50 (which raises if either number is short). With ``show``, prints the verdict
    and plots the losses under ``title``.

    ``steps`` is the most it trains: every ``check_every`` steps, once the loss has fallen far enough, the AP50 on the
    images is measured (in eval mode; the random state restored after it), and the run stops as soon as both pass. A run
    that no check passes trains all ``steps`` exactly as without the checks, so a probe that passed at ``steps`` still
    passes, sooner or as late; one that learnt the images and then fell back below a threshold now passes where it
    stood.

    Returns ``(history, metrics, verdict)``: the :class:`History`, the COCO metrics on those images and the one-line
    verdict to print.
    """
    eval_set = samples if eval_set is None else eval_set

    def score():
        return evaluate_detector(model, eval_set, device=device, batch_size=eval_batch_size, predict=predict,
                                 progress=False)[0]

    def learnt(history: History) -> bool:
        return loss_fall(history) >= OVERFIT_MIN_FALL and score()["AP50"] >= OVERFIT_MIN_SCORE

    history = overfit(model, samples, loss_fn, steps=steps, lr=lr, collate_fn=collate_fn, device=device,
                      progress=progress, until=learnt, check_every=check_every)
    metrics = score()
    verdict = check_overfit(history, metrics["AP50"], what="AP50")
    if show:
        import matplotlib.pyplot as plt

        print(verdict)
        history.plot().axes[0].set_title(title)
        plt.show()
    return history, metrics, verdict
