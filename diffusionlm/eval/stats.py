"""Error bars a reviewer accepts: over training seeds, paired on the same rows, bootstrapped.

    seed_summary([3.12, 3.18, 3.09])                  # {"mean", "se", "sd", "n"}: mean +- s.e. over seeds
    paired_difference(nll_a, nll_b, tokens)           # per-row bounds of two variants on the SAME rows
    bootstrap_se(texts, statistic, draws=1000, seed=0)  # any statistic of a set of samples
    seed_and_paired_tables(results_by_seed)           # the compare report's two Markdown tables

Definitions:

* **Over seeds.** n training seeds give values v_1..v_n of a metric; the report gives their mean
  and its standard error sd(v, ddof = 1) / sqrt(n) (n = 1: no error bar, None). This is the
  variation a re-run with another seed would show -- the Monte-Carlo stderr of the bound is only
  the part from the bound's draws.
* **Paired difference.** Two variants scored on the same rows: row i has bounds a_i, b_i (nats,
  summed over its t_i tokens). The difference per token is D = sum_i (a_i - b_i) / sum_i t_i and
  its standard error the ratio estimator's, sqrt(n / (n - 1) sum_i (d_i - D t_i)^2) / sum_i t_i
  with d_i = a_i - b_i (equal t_i: sd(d_i / t) / sqrt(n)). The rows' own variation cancels in d_i:
  a difference far smaller than either variant's spread over rows can be significant. Each row's
  Monte-Carlo noise is in d_i, so it is counted too. Over seeds: the per-seed differences D_s
  summarised as above (mean +- s.e. over seeds).
* **Bootstrap.** The standard error of a statistic of n samples (gen PPL = exp(total judge NLL /
  total tokens), unigram entropy, distinct-n) is the sd of the statistic over `draws` resamples of
  the n samples with replacement (numpy Generator(seed)); tests hold it to the closed form for the
  mean and to the delta method for the PPL.
"""
from __future__ import annotations

import itertools
import math
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np

from .diversity import distinct_n, unigram_entropy

__all__ = ["seed_summary", "paired_difference", "bootstrap_se", "sample_bootstrap", "seed_and_paired_tables",
           "sampling_seed_table"]


def seed_summary(values: Sequence[float]) -> Dict[str, Any]:
    """Mean, its standard error sd / sqrt(n) (None for n = 1), sd (ddof 1) and n of per-seed values."""
    v = np.asarray([float(x) for x in values], dtype=np.float64)
    if v.size == 0:
        raise ValueError("no values to summarise")
    sd = float(v.std(ddof=1)) if v.size > 1 else None
    return {"mean": float(v.mean()), "se": sd / math.sqrt(v.size) if sd is not None else None, "sd": sd, "n": int(v.size)}


def paired_difference(a: Sequence[float], b: Sequence[float], tokens: Optional[Sequence[float]] = None) -> Dict[str, Any]:
    """(a - b) per token over the same rows, +- its standard error (module docstring).
    a, b: per-row bounds in nats (summed over each row's tokens); tokens: per-row counts (default 1)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    t = np.ones_like(a) if tokens is None else np.asarray(tokens, dtype=np.float64)
    if a.shape != b.shape or a.shape != t.shape or a.ndim != 1:
        raise ValueError(f"paired rows must match: {a.shape}, {b.shape}, tokens {t.shape}")
    n = a.size
    if n < 2:
        raise ValueError("a paired standard error needs at least 2 rows")
    d = a - b
    D = d.sum() / t.sum()
    se = math.sqrt(n / (n - 1) * float(((d - D * t) ** 2).sum())) / float(t.sum())
    return {"diff": float(D), "se": se, "z": float(D / se) if se > 0 else math.inf * np.sign(D), "rows": int(n)}


def bootstrap_se(samples: Sequence[Any], statistic: Callable[[List[Any]], float], draws: int = 1000,
                 seed: int = 0) -> Dict[str, float]:
    """The statistic of the samples and its bootstrap standard error (module docstring)."""
    items = list(samples)
    if len(items) < 2:
        raise ValueError("bootstrap needs at least 2 samples")
    rng = np.random.Generator(np.random.PCG64(seed))
    stats = [statistic([items[i] for i in rng.integers(0, len(items), len(items))]) for _ in range(draws)]
    return {"value": float(statistic(items)), "se": float(np.std(stats, ddof=1)), "draws": int(draws)}


def sample_bootstrap(rows: List[List[int]], judged: Optional[List[tuple]] = None, draws: int = 200,
                     seed: int = 0) -> Dict[str, Optional[float]]:
    """Bootstrap standard errors over the generated samples (rows of ids): of the unigram
    entropy, of distinct-2 and, with `judged` (per sample (total judge NLL, tokens)), of the gen
    PPL exp(sum NLL / sum tokens). One resampling seed for all three."""
    if len(rows) < 2:
        return {"gen_ppl_se": None, "entropy_se": None, "distinct2_se": None}
    out = {"entropy_se": bootstrap_se(rows, unigram_entropy, draws, seed)["se"],
           "distinct2_se": bootstrap_se(rows, lambda s: distinct_n(s, 2), draws, seed)["se"], "gen_ppl_se": None}
    if judged:
        out["gen_ppl_se"] = bootstrap_se(judged, lambda s: math.exp(sum(n for n, _ in s) / sum(c for _, c in s)),
                                         draws, seed)["se"]
    return out


def _fmt(mean: Optional[float], se: Optional[float], digits: int = 4) -> str:
    if mean is None:
        return "n/a"
    return f"{mean:.{digits}f}" + (f" +- {se:.{digits}f}" if se is not None else "")


def seed_and_paired_tables(by_seed: Dict[int, Dict[str, Dict[str, Any]]]) -> str:
    """Markdown: (1) each variant's bound (nats/token) mean +- s.e. over the seeds, with the mean
    Monte-Carlo stderr beside it; (2) for each pair of variants the paired difference on the same
    rows, per seed and mean +- s.e. over the seeds. by_seed: {seed: {variant: likelihood dict with
    "nll_per_token", "stderr_per_token", "row_nll", "row_tokens"}}."""
    seeds = sorted(by_seed)
    names = [n for n in by_seed[seeds[0]] if all(n in by_seed[s] for s in seeds)]
    lines = [f"Over {len(seeds)} training seeds ({', '.join(map(str, seeds))}): mean +- standard error over the seeds.", "",
             "| variant | bound, nats/token (over seeds) | mean Monte-Carlo stderr | per seed |", "|---|---|---|---|"]
    for n in names:
        vals = [by_seed[s][n]["nll_per_token"] for s in seeds]
        if any(v is None for v in vals):
            lines.append(f"| {n} | n/a (no likelihood) | | |")
            continue
        s = seed_summary(vals)
        mc = [by_seed[q][n].get("stderr_per_token") for q in seeds]
        mc_mean = float(np.mean(mc)) if all(m is not None for m in mc) else None
        lines.append(f"| {n} | {_fmt(s['mean'], s['se'])} | {_fmt(mc_mean, None)} | {', '.join(f'{v:.4f}' for v in vals)} |")
    lines += ["", "Paired differences on the same test rows (a - b, nats/token; per seed: +- the paired standard error "
              "over rows; over seeds: mean +- standard error of the per-seed differences; MC-only s.e.: the s.e. of that "
              "mean from the per-seed paired standard errors alone, sqrt(sum se^2) / n, without the training seed's "
              "variation).", "",
              "| a - b | over seeds | MC-only s.e. | per seed |", "|---|---|---|---|"]
    for x, y in itertools.combinations(names, 2):
        per = []
        for s in seeds:
            A, B = by_seed[s][x], by_seed[s][y]
            if A.get("row_nll") is None or B.get("row_nll") is None:
                break
            per.append(paired_difference(A["row_nll"], B["row_nll"], A["row_tokens"]))
        if len(per) != len(seeds):
            continue
        over = seed_summary([p["diff"] for p in per])
        mc_only = math.sqrt(sum(p["se"] ** 2 for p in per)) / len(per)
        lines.append(f"| {x} - {y} | {_fmt(over['mean'], over['se'])} | {mc_only:.4f} | "
                     + ", ".join(_fmt(p["diff"], p["se"]) for p in per) + " |")
    return "\n".join(lines)


def sampling_seed_table(by_seed: Dict[int, Dict[str, List[Dict[str, Any]]]]) -> str:
    """Markdown: gen PPL, unigram entropy and distinct-2 of each (variant, sampler, steps), mean +-
    s.e. over the seeds (each seed's own bootstrap s.e. is in its results.json). by_seed: {seed:
    {variant: the compare job's sampling rows}}."""
    seeds = sorted(by_seed)
    cells: Dict[tuple, Dict[str, list]] = {}
    for s in seeds:
        for name, rows in by_seed[s].items():
            for r in rows:
                c = cells.setdefault((name, r["sampler"], r["steps"]), {"gen_ppl": [], "entropy": [], "distinct2": []})
                for k in c:
                    c[k].append(r.get(k))
    lines = ["| variant | sampler | steps | gen PPL | entropy | distinct-2 |", "|---|---|---|---|---|---|"]
    for (name, sampler, steps), c in cells.items():
        out = []
        for k in ("gen_ppl", "entropy", "distinct2"):
            v = c[k]
            out.append("n/a" if len(v) != len(seeds) or any(x is None for x in v) else
                       _fmt(seed_summary(v)["mean"], seed_summary(v)["se"], 3))
        lines.append(f"| {name} | {sampler} | {steps} | " + " | ".join(out) + " |")
    return "\n".join(lines)
