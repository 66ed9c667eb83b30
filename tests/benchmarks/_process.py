"""What the benchmark scripts share: each measurement runs in a fresh process of its own, so the peak memory it
reports is its own and no run inherits another's warm caches."""
from __future__ import annotations

import multiprocessing as mp
import resource
from concurrent.futures import ProcessPoolExecutor

import torch


def in_fresh_process(fn, *args):
    """``fn(*args)`` in a spawned process; its result comes back, and so does any exception it raises."""
    with ProcessPoolExecutor(max_workers=1, mp_context=mp.get_context("spawn")) as pool:
        return pool.submit(fn, *args).result()


def rss_peak() -> int:
    """This process's peak resident memory so far, in bytes."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def peak_memory(device: str, before: int) -> tuple[int, int | None]:
    """``(peak bytes, growth since before)``: CUDA's allocator peak (no growth), or the CPU's peak resident memory."""
    if device == "cuda":
        return torch.cuda.max_memory_allocated(), None
    peak = rss_peak()
    return peak, peak - before
