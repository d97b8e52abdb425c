"""The comparison's report: results.md (a markdown table, units and what +- means stated) and
the plots (ppl.png, genppl_vs_entropy.png, quality_vs_steps.png) from the results dict."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import matplotlib
import matplotlib.pyplot as plt
from matplotlib.ticker import LogFormatter


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


def plot(results: dict, out: Path) -> list:
    """ppl.png, genppl_vs_entropy.png, quality_vs_steps.png (module docstring; the last two only
    with a judge); returns the names of the files it wrote."""
    matplotlib.use("Agg")

    v = {k: r["likelihood"] for k, r in results["variants"].items() if r["likelihood"].get("ppl") is not None}
    names = list(v)
    fig, ax = plt.subplots(figsize=(7, 3.8))
    ppl = [v[n]["ppl"] for n in names]
    low = [v[n]["ppl"] - v[n]["ppl_low"] if v[n].get("ppl_low") is not None else 0.0 for n in names]  # none: no bar
    high = [v[n]["ppl_high"] - v[n]["ppl"] if v[n].get("ppl_high") is not None else 0.0 for n in names]
    ax.bar(range(len(names)), ppl, yerr=[low, high], capsize=4, color="tab:blue")
    ax.set_yscale("log")
    _plain_log_axis(ax.yaxis)
    ax.set_xticks(range(len(names)), names)
    ax.set_ylabel("test PPL bound (log scale)")
    ax.set_title("Likelihood bound per variant (lower is better)\nbars: exp(nats/token -+ one standard error)")
    fig.tight_layout()
    fig.savefig(out / "ppl.png", dpi=120)
    plt.close(fig)

    ref = results.get("reference")
    if not any(s["gen_ppl"] is not None for _, rows in _series(results) for s in rows):
        return ["ppl.png"]  # no judge: no generative PPL to plot
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for label, rows in _series(results):
        rows = [s for s in rows if s["gen_ppl"] is not None]
        ax.plot([s["entropy"] for s in rows], [s["gen_ppl"] for s in rows], "o-", label=label)
        for s in rows:
            ax.annotate(str(s["steps"]), (s["entropy"], s["gen_ppl"]), fontsize=7)
    if ref and ref["gen_ppl"] is not None:
        ax.plot([ref["entropy"]], [ref["gen_ppl"]], "k*", markersize=12, label="real test text")
    _finish_genppl(fig, ax, "unigram entropy of samples (nats)", "Generative PPL against entropy (labels: sampling steps)",
                   out / "genppl_vs_entropy.png")

    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for label, rows in _series(results):
        rows = [s for s in rows if s["gen_ppl"] is not None]
        ax.plot([s["steps"] for s in rows], [s["gen_ppl"] for s in rows], "o-", label=label)
    if ref and ref["gen_ppl"] is not None:
        ax.axhline(ref["gen_ppl"], color="k", linestyle=":", label="real test text")
    ax.set_xscale("log", base=2)
    _finish_genppl(fig, ax, "sampling steps", "Quality against sampling steps", out / "quality_vs_steps.png")
    return ["ppl.png", "genppl_vs_entropy.png", "quality_vs_steps.png"]
