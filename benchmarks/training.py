"""Training speed and memory: tokens/s, peak memory, model FLOP utilisation, two-halves vs naive.

    python benchmarks/training.py [--presets tiny gpt2-small] [--out benchmarks/out/training.json]

MFU = achieved model FLOP/s / the machine's measured matmul peak, both measured in this run:
the peak is the best of several float32 [n, n] x [n, n] matmuls (n = 2048; the default torch
threads); model FLOPs per step are 3x the forward FLOPs (forward + backward) of the transformer
(benchmarks/common.py: step_flops, which counts the QKV / output / MLP matmuls, attention scores
and the head). Each configuration runs in its own process so that its peak resident memory
(ru_maxrss) is its own. Two-halves vs naive: Absorb + Block(16) at length d; naive per-sequence
training supervises one block (16 positions) per sequence per step, the two-halves layout every
position; compared in supervised tokens per second.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import resource
import time

import torch

from common import matmul_peak, step_flops




def _run(preset: str, batch: int, d: int, steps: int, mode: str, q) -> None:
    from diffusionlm.lm import DiffusionLM
    from diffusionlm.models import DiffusionTransformer, TransformerConfig
    from diffusionlm.processes import Absorb
    from diffusionlm.schedules import Block, Flat

    N = 50257
    cfg = TransformerConfig.preset(preset, vocab_size=N + 1, input_vocab_size=N + 1, max_positions=2 * d)
    torch.manual_seed(0)
    model = DiffusionTransformer(cfg)
    schedule = Flat() if mode == "flat" else Block(16, 1)
    lm = DiffusionLM(model, Absorb(N), schedule)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, N, (batch, d), generator=g)
    two = mode == "two_halves"

    def step():
        out = lm.loss(x, generator=g, two_halves=two)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        opt.step()

    step()  # warm-up
    t = time.perf_counter()
    for _ in range(steps):
        step()
    dt = (time.perf_counter() - t) / steps
    L = 2 * d if two else d
    flops = 3 * batch * step_flops(L, L, cfg) / 1.0  # forward + backward ~ 3x forward
    supervised = batch * (d if two else (16 if mode == "naive" else d))
    q.put({"preset": preset, "mode": mode, "batch": batch, "d": d, "step_s": dt, "tokens_per_s": batch * d / dt,
           "supervised_tokens_per_s": supervised / dt, "model_flops_per_s": flops / dt,
           "params": sum(p.numel() for p in model.parameters()),
           "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024})


def run(preset, batch, d, steps, mode):
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_run, args=(preset, batch, d, steps, mode, q))
    p.start()
    res = q.get()
    p.join()
    return res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--presets", nargs="+", default=["tiny", "gpt2-small"])
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--out", default="benchmarks/out/training.json")
    args = ap.parse_args()
    peak = matmul_peak()
    print(f"measured float32 matmul peak: {peak / 1e9:.1f} GFLOP/s ({torch.get_num_threads()} threads)")
    rows = []
    shapes = {"tiny": (16, 256), "gpt2-small": (4, 512)}
    for preset in args.presets:
        B, d = shapes[preset]
        r = run(preset, B, d, args.steps, "flat")
        r["mfu"] = r["model_flops_per_s"] / peak
        rows.append(r)
        print(f"{preset:<11} B={B} d={d}: {r['tokens_per_s']:9.0f} tok/s  {r['model_flops_per_s'] / 1e9:7.1f} GFLOP/s  "
              f"MFU {100 * r['mfu']:5.1f}%  peak RSS {r['peak_rss_mb']:7.0f} MB", flush=True)
    for mode in ("naive", "two_halves"):
        r = run("tiny", 16, 256, args.steps, mode)
        r["mfu"] = r["model_flops_per_s"] / peak
        rows.append(r)
        print(f"tiny Block(16) {mode:<10}: {r['supervised_tokens_per_s']:9.0f} supervised tok/s  step {r['step_s'] * 1e3:7.1f} ms", flush=True)
    naive = next(r for r in rows if r["mode"] == "naive")
    fast = next(r for r in rows if r["mode"] == "two_halves")
    print(f"two-halves vs naive, supervised tokens/s: x{fast['supervised_tokens_per_s'] / naive['supervised_tokens_per_s']:.1f}")
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"matmul_peak_flops": peak, "threads": torch.get_num_threads(), "rows": rows}, f, indent=2)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
