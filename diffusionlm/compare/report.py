"""The comparison's report: results.md (a markdown table, units and what +- means stated) and
the plots (ppl.png, genppl_vs_entropy.png, quality_vs_steps.png) from the results dict, each
with its error bars: the bound's Monte-Carlo standard error, the samples' bootstrap standard
errors of gen PPL and entropy; over training seeds, seeds.png (mean +- s.e. over the seeds).
The numbers a plot draws come from `bound_bars`, `sample_points` and `seed_points`, so that
what is drawn can be checked without reading pixels."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np

import matplotlib
import matplotlib.pyplot as plt
from matplotlib.ticker import LogFormatter

from ..eval.stats import seed_summary


# ---------------------------------------------------------------------------------------------
# the report
# ---------------------------------------------------------------------------------------------
def _composition_text(c: dict) -> str:
    def part(p: dict) -> str:
        args = ", ".join(f"{k}={v}" for k, v in p.items() if k not in ("name", "vocab_size", "mask_id", "noise") and v is not None)
        return f"{p['name']}({args})" if args else p["name"]

    return f"{part(c['process'])} + {part(c['schedule'])}, {c['layout']}"


def _likelihood_cells(lk: dict) -> tuple:
    """(NLL ± stderr, PPL [low, high], terms) as table cells; "n/a" where there is none."""
    if lk.get("nll_per_token") is None:
        return "n/a", "n/a", ""
    se = lk.get("stderr_per_token")
    nll = f"{lk['nll_per_token']:.4f} ± " + ("n/a" if se is None else f"{se:.4f}")
    ppl = f"{lk['ppl']:.3f}" + ("" if lk.get("ppl_low") is None else f" [{lk['ppl_low']:.3f}, {lk['ppl_high']:.3f}]")
    terms = "; ".join(f"{k} {v:.4f}" for k, v in (lk.get("terms") or {}).items())
    return nll, ppl, terms


def _num(x: Optional[float]) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def markdown_table(results: dict) -> str:
    f = results["fairness"]
    d = results["data"]
    lines = ["# Comparison", "",
             f"Every model trained **{f['train_steps']} optimizer steps** of batch {f['batch_size']} x {d['length']} tokens "
             f"({f['tokens_per_model']:,} tokens, the same stream for every variant: see the SHA-1 column) with seed {f['seed']}.",
             ""]
    if f.get("budget_minutes") is not None:
        per = ", ".join(f"{k} {v:.3f}" for k, v in f["seconds_per_step"].items())
        lines += [f"Steps sized before training by the {f['budget_minutes']} min budget: floor(budget / "
                  f"{f['seconds_per_step_sum']:.3f} s), the sum of the seconds per step timed on each model "
                  f"({f['probe_steps']} steps after a warm-up): {per}.", ""]
    lines += ["## Training and likelihood", "",
              "| variant | composition | steps | tokens | train s | tokens SHA-1 | NLL bound (nats/token) | PPL bound [exp(nats -+ stderr)] | terms (nats/token) | bound |",
              "|---|---|---:|---:|---:|---|---:|---:|---|---|"]
    rows = list(results["variants"].items())
    if "judge_model" in results:
        rows.append(("judge", results["judge_model"]))
    for name, r in rows:
        lk = r.get("likelihood", {})
        nll, ppl, terms = _likelihood_cells(lk)
        lines.append(f"| {r['label']} | {_composition_text(r['composition'])} | {r['train_steps']} | {r['train_tokens']:,} | "
                     f"{r['train_seconds']:.1f} | {r['train_tokens_sha1'][:10]} | {nll} | {ppl} | {terms} | {lk.get('method', '')} |")
    lines += ["", "## Samples", "",
              f"Judge: {results['judge']}. No variant judges its own samples. Steps: model calls of the "
              "sampler (an AR sampler makes one per token, so it has one step count: the length).", "",
              "| variant | sampler | steps | model calls | gen PPL (judge) | entropy (nats) | distinct-2 | s / sample |",
              "|---|---|---:|---:|---:|---:|---:|---:|"]
    for name, r in results["variants"].items():
        for s in r.get("sampling", []):
            lines.append(f"| {r['label']} | {s['sampler']} | {s['steps']} | {s['model_calls']} | {_num(s['gen_ppl'])} | "
                         f"{s['entropy']:.3f} | {s['distinct2']:.3f} | {s['seconds_per_sample']:.4f} |")
    ref = results.get("reference")
    if ref:
        lines.append(f"| reference: real test text | - | - | - | {_num(ref['gen_ppl'])} | {ref['entropy']:.3f} | {ref['distinct2']:.3f} | - |")
    lines += ["",
              "Units: NLL in nats per token of the test blocks; PPL = exp(NLL / token); seconds are wall-clock on "
              "this machine. ± is one standard error of the Monte-Carlo estimate of the bound (0 where every step "
              "is computed exactly); the PPL interval is exp(nats - stderr) .. exp(nats + stderr). gen PPL: "
              "token-weighted exp(mean NLL per token) of the samples under the judge; entropy: unigram entropy "
              "of the sampled ids (nats); distinct-2: unique bigrams / bigrams.",
              "",
              f"Data: {d['corpus']} ({d['tokenizer']} tokenizer, vocabulary {d['vocab_size']}); test: "
              f"{d['test_blocks_used']} blocks, {d['test_tokens']} tokens. Wall time of the whole job: {results['wall_seconds']:.0f} s."]
    m = results.get("machine")
    if m:
        lines.append(f"Machine: {m['cpus']} CPUs, {m['torch_threads']} torch threads, load average "
                     f"{m['load_average_1_5_15_min']} (1 / 5 / 15 min) at the start; {m['platform']}.")
    return "\n".join(lines) + "\n"


def _series(results: dict):
    """(label, [sampling rows]) per (variant, sampler)."""
    for name, r in results["variants"].items():
        by: dict = {}
        for s in r.get("sampling", []):
            by.setdefault(s["sampler"], []).append(s)
        for sampler, rows in by.items():
            yield f"{name} / {sampler}", rows


def _plain_log_axis(axis) -> None:
    axis.set_major_formatter(LogFormatter(labelOnlyBase=False))
    axis.set_minor_formatter(LogFormatter(labelOnlyBase=False, minor_thresholds=(2, 0.5)))


def _finish_genppl(fig, ax, xlabel: str, title: str, path: Path) -> None:
    """A generative-PPL plot's log y axis, labels, legend, and the file."""
    ax.set_yscale("log")
    _plain_log_axis(ax.yaxis)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("generative PPL under the judge (log scale)")
    ax.set_title(title)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def bound_bars(results: dict) -> dict:
    """What ppl.png draws: per variant with a bound, its PPL and the asymmetric bar
    exp(nats -+ one Monte-Carlo standard error) as (below, above) distances (0: no bar)."""
    v = {k: r["likelihood"] for k, r in results["variants"].items() if (r.get("likelihood") or {}).get("ppl") is not None}
    return {n: {"ppl": lk["ppl"], "below": lk["ppl"] - lk["ppl_low"] if lk.get("ppl_low") is not None else 0.0,
                "above": lk["ppl_high"] - lk["ppl"] if lk.get("ppl_high") is not None else 0.0} for n, lk in v.items()}


def sample_points(results: dict) -> dict:
    """What the two sample plots draw: per (variant / sampler) series the steps, entropy, gen PPL
    and their bootstrap standard errors over the samples (None: no bar), rows without gen PPL left out."""
    out = {}
    for label, rows in _series(results):
        rows = [s for s in rows if s["gen_ppl"] is not None]
        out[label] = {"steps": [s["steps"] for s in rows], "entropy": [s["entropy"] for s in rows],
                      "entropy_se": [s.get("entropy_se") for s in rows], "gen_ppl": [s["gen_ppl"] for s in rows],
                      "gen_ppl_se": [s.get("gen_ppl_se") for s in rows]}
    return out


def _bars(se: list) -> Optional[list]:
    """Error-bar lengths for matplotlib (None where a point has no standard error: no bar)."""
    return None if all(x is None for x in se) else [0.0 if x is None else x for x in se]


def _bound_plot(bars: dict, title: str, ylabel: str, path: Path) -> None:
    names = list(bars)
    fig, ax = plt.subplots(figsize=(max(7, 0.9 * len(names)), 3.8))
    ax.bar(range(len(names)), [bars[n]["ppl"] for n in names],
           yerr=[[bars[n]["below"] for n in names], [bars[n]["above"] for n in names]], capsize=4, color="tab:blue")
    ax.set_yscale("log")
    _plain_log_axis(ax.yaxis)
    ax.set_xticks(range(len(names)), names, rotation=30 if len(names) > 6 else 0, ha="right" if len(names) > 6 else "center")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _genppl_vs_entropy(points: dict, ref: Optional[dict], title: str, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for label, p in points.items():
        ax.errorbar(p["entropy"], p["gen_ppl"], xerr=_bars(p["entropy_se"]), yerr=_bars(p["gen_ppl_se"]), fmt="o-",
                    capsize=3, label=label)
        for x, y, n in zip(p["entropy"], p["gen_ppl"], p["steps"]):
            ax.annotate(str(n), (x, y), fontsize=7)
    if ref and ref.get("gen_ppl") is not None:
        ax.plot([ref["entropy"]], [ref["gen_ppl"]], "k*", markersize=12, label="real test text")
    _finish_genppl(fig, ax, "unigram entropy of samples (nats)", title, path)


def plot(results: dict, out: Path) -> list:
    """ppl.png, genppl_vs_entropy.png, quality_vs_steps.png (module docstring; the last two only
    with a judge); returns the names of the files it wrote."""
    matplotlib.use("Agg")
    _bound_plot(bound_bars(results), "Likelihood bound per variant (lower is better)\n"
                "bars: exp(nats/token -+ one Monte-Carlo standard error)", "test PPL bound (log scale)", out / "ppl.png")
    points = sample_points(results)
    if not any(p["gen_ppl"] for p in points.values()):
        return ["ppl.png"]  # no judge: no generative PPL to plot
    ref = results.get("reference")
    _genppl_vs_entropy(points, ref, "Generative PPL against entropy (labels: sampling steps)\n"
                       "bars: bootstrap standard error over the samples", out / "genppl_vs_entropy.png")

    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for label, p in points.items():
        ax.errorbar(p["steps"], p["gen_ppl"], yerr=_bars(p["gen_ppl_se"]), fmt="o-", capsize=3, label=label)
    if ref and ref["gen_ppl"] is not None:
        ax.axhline(ref["gen_ppl"], color="k", linestyle=":", label="real test text")
    ax.set_xscale("log", base=2)
    _finish_genppl(fig, ax, "sampling steps", "Quality against sampling steps\nbars: bootstrap standard error",
                   out / "quality_vs_steps.png")
    return ["ppl.png", "genppl_vs_entropy.png", "quality_vs_steps.png"]


def seed_points(by_seed: dict, samples: dict) -> tuple:
    """What seeds.png draws, over the training seeds: (bars, points). bars: per variant with a
    bound in every seed, exp of the mean bound and the bar exp(mean -+ s.e. over the seeds);
    points: per (variant / sampler) series, mean entropy and gen PPL over the seeds at each
    step count, +- their s.e. over the seeds (None with one seed). by_seed: {seed: {variant:
    likelihood}}, samples: {seed: {variant: sampling rows}}, as the seeds job collects them."""
    seeds = sorted(by_seed)
    bars = {}
    for n in by_seed[seeds[0]]:
        vals = [by_seed[s].get(n, {}).get("nll_per_token") for s in seeds]
        if any(v is None for v in vals):
            continue
        m = seed_summary(vals)
        se = m["se"] or 0.0
        bars[n] = {"ppl": float(np.exp(m["mean"])), "below": float(np.exp(m["mean"]) - np.exp(m["mean"] - se)),
                   "above": float(np.exp(m["mean"] + se) - np.exp(m["mean"])), "nats": m["mean"], "nats_se": m["se"]}
    cells: dict = {}
    for s in seeds:
        for name, rows in samples[s].items():
            for r in rows:
                if r.get("gen_ppl") is not None:
                    cells.setdefault(f"{name} / {r['sampler']}", {}).setdefault(r["steps"], []).append(r)
    points = {}
    for label, by_steps in cells.items():
        full = {k: rs for k, rs in sorted(by_steps.items()) if len(rs) == len(seeds)}
        summ = {k: (seed_summary([r["entropy"] for r in rs]), seed_summary([r["gen_ppl"] for r in rs])) for k, rs in full.items()}
        points[label] = {"steps": list(summ), "entropy": [e["mean"] for e, _ in summ.values()],
                         "entropy_se": [e["se"] for e, _ in summ.values()], "gen_ppl": [g["mean"] for _, g in summ.values()],
                         "gen_ppl_se": [g["se"] for _, g in summ.values()]}
    return bars, points


def plot_seeds(by_seed: dict, samples: dict, out: Path) -> list:
    """seeds.png: the bound per variant (mean over the training seeds, bars +- one s.e. over the
    seeds) and, with a judge, seeds_genppl_vs_entropy.png (means over the seeds, bars +- s.e.)."""
    matplotlib.use("Agg")
    bars, points = seed_points(by_seed, samples)
    n = len(by_seed)
    written = []
    if bars:
        _bound_plot(bars, f"Likelihood bound per variant, mean over {n} training seeds\n"
                    "bars: exp(mean nats/token -+ one s.e. over the seeds)", "test PPL bound (log scale)", out / "seeds.png")
        written.append("seeds.png")
    if points:
        _genppl_vs_entropy(points, None, f"Generative PPL against entropy, mean over {n} training seeds\n"
                           "bars: one s.e. over the seeds (labels: sampling steps)", out / "seeds_genppl_vs_entropy.png")
        written.append("seeds_genppl_vs_entropy.png")
    return written
