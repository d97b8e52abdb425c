"""Core speed: corrupting a [64, 1024] batch with each process, and building each mask.

    python benchmarks/core.py [--out benchmarks/out/core.json] [--repeats 5]

Prints a table and writes JSON. Every path timed here is vectorized (no Python loop over
positions or batch rows); the numbers are medians over `repeats` runs after one warm-up.
Mask builders are cached in the library (inference: per (schedule, length, step); dense training
masks: per distinct row); the caches are cleared before each timed build so that the cost of
building is what is measured, and "next batch" times a fresh draw once the cache is warm.
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
                    masks.clear_caches()
                    masks.inference_mask(s, dd, k, kind)
                mrows.append({"mask": "inference", "schedule": repr(s), "d": dd, "kind": kind, "ms": timed(build, args.repeats) * 1e3})
            # per-sequence training draws (8 rows, each its own step) and the two-halves layout;
            # "build" clears the caches first, "next batch" is a fresh draw after one was built
            # (the library builds a dense training mask once per distinct row and remembers it)
            def fresh(kind_of_draw):
                dr = getattr(s, kind_of_draw)(8, dd, generator=g)
                return dr.segment if kind_of_draw == "draw_segments" else None, masks.categories_from_levels(dr.level, dr.next_level)

            def timed_build(make, clear=True):
                def run():
                    if clear:
                        masks.clear_caches()
                    make()
                return timed(run, args.repeats) * 1e3

            _, cats = fresh("draw")
            mrows.append({"mask": "training[8 rows]", "schedule": repr(s), "d": dd, "kind": "dense",
                          "ms": timed_build(lambda: masks.training_mask(cats))})
            seg, cats = fresh("draw_segments")
            for kind in ("dense", "flex"):
                mrows.append({"mask": "two_halves[8 rows]", "schedule": repr(s), "d": dd, "kind": kind,
                              "ms": timed_build(lambda kind=kind: masks.two_halves_mask(seg, kind=kind, categories=cats))})
            masks.clear_caches()
            masks.two_halves_mask(seg, categories=cats)

            def next_batch():
                sg, ct = fresh("draw_segments")
                masks.two_halves_mask(sg, categories=ct)

            mrows.append({"mask": "two_halves[8 rows] next batch (draw included)", "schedule": repr(s), "d": dd,
                          "kind": "dense", "ms": timed_build(next_batch, clear=False)})
    results["masks"] = mrows

    print(f"corrupt a [{B}, {d}] batch (N = {N}), median of {args.repeats}")
    print(f"{'process':<16}{'ms':>10}{'Mtok/s':>10}")
    for r in rows:
        print(f"{r['process']:<16}{r['ms']:>10.2f}{r['tokens_per_s'] / 1e6:>10.2f}")
    print(f"\nbuild masks, median of {args.repeats}")
    print(f"{'mask':<48}{'schedule':<38}{'d':>6}{'kind':>7}{'ms':>10}")
    for r in mrows:
        print(f"{r['mask']:<48}{r['schedule']:<38}{r['d']:>6}{r['kind']:>7}{r['ms']:>10.2f}")
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(results, f, indent=2)
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
