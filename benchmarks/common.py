"""Shared by the benchmark scripts: timing, the model FLOP count, writing the results."""
from __future__ import annotations

import json
import os
import statistics
import time

import torch


#: the clocks a benchmark may time with: wall time, or this process's CPU time (on a CPU shared
#: with other jobs, a 1-thread run's CPU time is what it would take alone, its wall time is not)
CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}


def timed(fn, repeats: int, clock=time.perf_counter, warmup: bool = True) -> float:
    """Median time of `fn` over `repeats` runs after one warm-up (CUDA synchronised)."""
    if warmup:
        fn()
    out = []
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        t = clock()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        out.append(clock() - t)
    return statistics.median(out)


def step_flops(rows: int, keys: int, cfg) -> float:
    """Forward FLOPs of `rows` query rows against `keys` key rows: per layer 24 R E^2
    (QKV, output projection, 4x MLP) + 4 R C E (scores and weighted sum), plus the head 2 R E V."""
    E = cfg.hidden
    return cfg.n_layers * (24 * rows * E * E + 4 * rows * keys * E) + 2 * rows * E * cfg.vocab_size


def write_json(path: str, results) -> None:
    """Write a benchmark's results to `path` (its folder created), and say where."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w") as f:
        json.dump(results, f, indent=2)
    print(f"wrote {path}")


def matmul_peak(n: int = 2048, repeats: int = 10) -> float:
    """The best float32 [n, n] @ [n, n] FLOP/s of `repeats` tries (the default torch threads)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best
