"""Where the NLL bound estimator's variance comes from, and whether its error bar is calibrated.

    python benchmarks/bound_variance.py [--seeds 150] [--Ms 4 8 16 32] [--out benchmarks/out/bound_variance.json]

On tiny random models (byte-free: V = 7 real tokens, d = 64, the test's `tiny_lm` size), for
each composition and M: the bound of 3 fixed rows estimated with --seeds independent seeds (one
generator per (seed, row), as `corpus_bound` draws); per row the observed sd of the estimate over
the seeds, the RMS of the reported stderr, their ratio (observed / reported; 1 = calibrated), and
the correlation of the two replicates of a seed (0 when they are independent).

`--profile` also prints, for Absorb under Flat() (continuous time), the per-draw contribution
against the level l: the mean and the second moment of ONE draw's weighted term (the integrand
times the level's weight, many corruption draws per level) in bins of l, which is where the
single-draw variance sits.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from diffusionlm.eval.bound import conditional_nll_bound, row_generators  # noqa: E402
from diffusionlm.lm import DiffusionLM  # noqa: E402
from diffusionlm.models import DiffusionTransformer, TransformerConfig  # noqa: E402
from diffusionlm.processes import Absorb, EpsilonHybrid  # noqa: E402
from diffusionlm.schedules import Block, Flat  # noqa: E402

V = 7


def tiny_lm(proc, schedule, d: int, seed: int = 0) -> DiffusionLM:
    torch.manual_seed(seed)
    cfg = TransformerConfig.preset("tiny", vocab_size=proc.model_vocab_size, input_vocab_size=V + 2, n_layers=1,
                                   hidden=16, n_heads=2, max_positions=d, time_conditioning=proc.time_conditioned)
    return DiffusionLM(DiffusionTransformer(cfg).eval(), proc, schedule, bos_id=V + 1)


COMPOSITIONS = {
    "Absorb + Flat()": lambda: (Absorb(V), Flat()),
    "Absorb + Flat(64)": lambda: (Absorb(V), Flat(steps=64)),
    "Absorb + Block(8, 4)": lambda: (Absorb(V), Block(8, 4)),
    "EpsilonHybrid(0.05) + Flat(64)": lambda: (EpsilonHybrid(V, 0.05), Flat(steps=64)),
}


def spread(lm, y, M: int, seeds: int, salt: int = 12345) -> dict:
    """Per row of y: observed sd over seeds, RMS reported stderr, their ratio, replicate correlation."""
    n, d = y.shape
    x = y.repeat(seeds, 1)  # row s * n + j: sequence j under seed s
    out = conditional_nll_bound(lm, x, M, generator=row_generators(salt, range(seeds * n)), chunk_size=256)
    est = out.nll.reshape(seeds, n)
    rep = out.stderr.reshape(seeds, n).pow(2).mean(0).sqrt()
    obs = est.std(0)
    samples = out.samples.reshape(seeds, n, -1)
    corr = []
    for j in range(n):
        a, b = samples[:, j, 0], samples[:, j, 1] if samples.shape[-1] > 1 else samples[:, j, 0]
        corr.append(float(torch.corrcoef(torch.stack([a, b]))[0, 1]) if samples.shape[-1] > 1 else float("nan"))
    return {"observed": obs.tolist(), "reported": rep.tolist(), "ratio": (obs / rep).tolist(), "replicate_corr": corr,
            "method": out.method}


def profile(lm, y, levels: int = 24, draws: int = 400) -> list:
    """Absorb + Flat(): per level bin, E and E[.^2] of one draw's weighted term (the integrand)."""
    rows = []
    edges = torch.logspace(-4, 0, levels + 1, dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    proc = lm.process
    for lo, hi in zip(edges[:-1].tolist(), edges[1:].tolist()):
        l = torch.empty(draws, dtype=torch.float64).uniform_(lo, hi, generator=g)
        x = y[:1].expand(draws, -1)
        lt = l[:, None].expand_as(x).float()
        corr = proc.corrupt(x, lt, generator=g)
        with torch.no_grad():
            logits = lm.forward(corr.ids, lt, None).double()
        f = proc.continuous_bound(logits, x, corr, lt.double()).sum(1)
        rows.append({"l_low": lo, "l_high": hi, "mean": float(f.mean()), "second_moment": float((f**2).mean()),
                     "share_of_E_f2": float((f**2).mean() * (hi - lo))})
    total = sum(r["share_of_E_f2"] for r in rows)
    for r in rows:
        r["share_of_E_f2"] /= total
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=150)
    ap.add_argument("--Ms", type=int, nargs="+", default=[4, 8, 16, 32])
    ap.add_argument("--d", type=int, default=64)
    ap.add_argument("--only", nargs="*", help="compositions to run (default: all)")
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--mix", type=float, help="the level density's weight a (eval.bound.LEVEL_MIX; 0: uniform l)")
    ap.add_argument("--out")
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.mix is not None:
        import diffusionlm.eval.bound as bound

        bound.LEVEL_MIX = args.mix
    y = torch.randint(0, V, (3, args.d), generator=torch.Generator().manual_seed(2))
    results = {"seeds": args.seeds, "d": args.d, "rows": {}}
    print("| composition | M | observed sd (3 rows) | observed / reported | replicate corr | estimator |\n|---|---|---|---|---|---|")
    for name, make in COMPOSITIONS.items():
        if args.only and name not in args.only:
            continue
        proc, schedule = make()
        lm = tiny_lm(proc, schedule, args.d)
        for M in args.Ms:
            r = spread(lm, y, M, args.seeds)
            results["rows"][f"{name} | M={M}"] = r
            fmt = lambda v: ", ".join(f"{x:.3f}" for x in v)  # noqa: E731
            print(f"| {name} | {M} | {fmt(r['observed'])} | {fmt(r['ratio'])} | {fmt(r['replicate_corr'])} | "
                  f"{r['method']} |", flush=True)
    if args.profile:
        lm = tiny_lm(Absorb(V), Flat(), args.d)
        prof = profile(lm, y)
        results["profile"] = prof
        print("\n| l bin | E[one draw] | E[one draw^2] | share of E[f^2] over l |\n|---|---|---|---|")
        for p in prof:
            print(f"| {p['l_low']:.1e} - {p['l_high']:.1e} | {p['mean']:.2f} | {p['second_moment']:.1f} | "
                  f"{p['share_of_E_f2']:.3f} |")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
