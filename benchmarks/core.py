"""Core speed: corrupting a [64, 1024] batch with each process, and building each mask.

    python benchmarks/core.py [--out benchmarks/out/core.json] [--repeats 5]

Prints a table and writes JSON. Every path timed here is vectorized (no Python loop over
positions or batch rows); the numbers are medians over `repeats` runs after one warm-up.
Mask builders are cached per (schedule, length, step) in the library; the cache is cleared
before each timed call so that the cost of building is what is measured.
"""
from __future__ import annotations

import argparse
import json
import os
import platform

import torch

from common import timed
from diffusionlm import masks
from diffusionlm.processes import Absorb, EpsilonHybrid, GammaHybrid, Uniform
from diffusionlm.processes.structural import Structural
from diffusionlm.schedules import Block, Flat, Quench, Slide




def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="benchmarks/out/core.json")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--vocab", type=int, default=50257)
    args = ap.parse_args()
    g = torch.Generator().manual_seed(0)
    N = args.vocab
    B, d = 64, 1024
    x0 = torch.randint(0, N, (B, d), generator=g)
    level = torch.rand(B, 1, generator=g).expand(B, d)
    results: dict = {"machine": {"cpu_threads": torch.get_num_threads(), "torch": torch.__version__, "platform": platform.platform()}}

    rows = []
    procs = [Absorb(N), Uniform(N), GammaHybrid(N, 0.01), EpsilonHybrid(N, 0.01), Structural(N)]
    for p in procs:
        if isinstance(p, Structural):
            fn = lambda p=p: p.corrupt(x0, generator=g)
        else:
            fn = lambda p=p: p.corrupt(x0, level, generator=g)
        ms = timed(fn, args.repeats) * 1e3
        rows.append({"process": p.name, "batch": [B, d], "ms": ms, "tokens_per_s": B * d / ms * 1e3})
    results["corrupt"] = rows

    mrows = []
    for dd in (1024, 4096):
        for s in (Quench(), Flat(steps=dd), Block(16), Block(dd // 4), Slide(16)):
            k = s.num_steps(dd) // 2
            for kind in ("dense", "flex"):
                def build(s=s, k=k, kind=kind, dd=dd):
                    masks.inference_mask.cache_clear()
                    masks.inference_mask(s, dd, k, kind)
                mrows.append({"mask": "inference", "schedule": repr(s), "d": dd, "kind": kind, "ms": timed(build, args.repeats) * 1e3})
            # per-sequence training draws (8 rows, each its own step) and the two-halves layout
            draw = s.draw(8, dd, generator=g)
            cats = masks.categories_from_levels(draw.level, draw.next_level)
            mrows.append({"mask": "training[8 rows]", "schedule": repr(s), "d": dd, "kind": "dense",
                          "ms": timed(lambda: masks.training_mask(cats), args.repeats) * 1e3})
            seg = s.draw_segments(1, dd, generator=g).segment
            for kind in ("dense", "flex"):
                mrows.append({"mask": "two_halves", "schedule": repr(s), "d": dd, "kind": kind,
                              "ms": timed(lambda kind=kind: masks.two_halves_mask(seg, kind=kind), args.repeats) * 1e3})
    results["masks"] = mrows

    print(f"corrupt a [{B}, {d}] batch (N = {N}), median of {args.repeats}")
    print(f"{'process':<16}{'ms':>10}{'Mtok/s':>10}")
    for r in rows:
        print(f"{r['process']:<16}{r['ms']:>10.2f}{r['tokens_per_s'] / 1e6:>10.2f}")
    print(f"\nbuild masks, median of {args.repeats}")
    print(f"{'mask':<18}{'schedule':<38}{'d':>6}{'kind':>7}{'ms':>10}")
    for r in mrows:
        print(f"{r['mask']:<18}{r['schedule']:<38}{r['d']:>6}{r['kind']:>7}{r['ms']:>10.2f}")
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(results, f, indent=2)
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
