"""The speed / quality frontier of sampling (issue 17): generative perplexity against network calls
and wall time, for fixed-step MDLM, threshold decoding at three thresholds, and the approximate
prefix / dual caches (Fast-dLLM), on a trained model.

    python benchmarks/frontier.py --model runs/compare-models/mdlm --judge runs/compare-models/ar \
        [--samples 32] [--length 128] [--steps 128 32] [--thresholds 0.9 0.7 0.5] [--block 32] \
        [--out benchmarks/frontier.json] [--plot docs/frontier.png]

--model: any model `diffusionlm.io.hub.load_model` reads (a run directory, a saved composition, a
fetched SmolLM2 adapter) whose process has a MASK; it is sampled under its own hyperschedule.
--judge: an AR composition (Absorb + Quench, shifted; the compare job's "ar" variant) scoring the
samples exactly (`compare.ar_judge_nll`), or a Hugging Face causal LM directory
(`eval.generative.generative_perplexity` after decoding with the model's tokenizer).

Runs, all on the same seed: MDLM at each --steps; Threshold(t) for each t (the whole sequence
one stage under Flat); with --max-per-step k, the budgeted variant Threshold(0, max_per_step=k)
(the k most confident per call); Threshold(t0, block=B) uncached (t0 the first threshold), and the same
with approx_cache="prefix" and "dual" (refreshed at each block): their token agreement with that
uncached run says how approximate the caches are; with --remdm-steps, ReMDM at those steps.
With --prompt-corpus / --prompt-length P, every sample continues a P-token window of that corpus's
validation split (as Fast-dLLM measures: decoding given a prompt), and gen PPL, entropy and token
agreement are of the generated positions only (the judge: NLL of each given all before it).
Per run: gen PPL (token-weighted exp of the
judge's mean NLL), unigram entropy (a collapsed sampler has a flattering PPL and a low entropy),
network calls per sample (mean of `calls_per_sample`) and seconds per sample.
Target (issue 17): a threshold run reaches the fixed-step (steps = length) MDLM's gen PPL within
5% with at most a third of its calls (`meets_target`; also required here: at least 90% of its
unigram entropy, since a sampler that collapses into runs of one token has a flattering PPL).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import time

import torch

from diffusionlm.compare import ar_judge_nll, causal_lm_judge
from diffusionlm.eval.diversity import unigram_entropy
from diffusionlm.io.hub import load_model
from diffusionlm.lm import DiffusionLM
from diffusionlm.masks import Layout
from diffusionlm.schedules import Quench
from diffusionlm.samplers import MDLM, ReMDM, Threshold


def judge_fn(path: str, tokenizer, start: int = 0):
    """tokens [S, d] -> (total NLL, tokens) of positions `start`.. (the continuation of a prompt)."""
    m = load_model(path)
    lm = m.lm
    if getattr(lm.process, "name", None) == "absorb" and type(lm.schedule).__name__ == "Quench":
        return (lambda toks: ar_judge_nll(lm, toks, start)), f"AR composition {path} (exact NLL)"
    if start:
        # a causal LM behind the denoiser protocol sharing the model's tokenizer (the base of an
        # adapted SmolLM2) is read as its AR composition: Quench, SHIFTED, exact; with another
        # tokenizer "tokens P.. given 0..P-1" cannot be scored exactly
        if getattr(lm.model, "ignores_levels", False) and m.tokenizer.vocab_size == tokenizer.vocab_size \
                and lm.bos_id is not None and Layout(lm.layout) is Layout.SHIFTED:
            ar = DiffusionLM(lm.model, lm.process, Quench(), layout="shifted", bos_id=lm.bos_id)
            return (lambda toks: ar_judge_nll(ar, toks, start)), f"causal LM {path} read as AR (exact NLL)"
        raise SystemExit(f"--prompt-length needs an AR composition judge (Absorb + Quench) or a causal LM with "
                         f"the model's tokenizer, not {path}")
    return causal_lm_judge(path, tokenizer), f"causal LM {path}"


def windows_from(corpus: str, tokenizer, samples: int, length: int, split: str = "validation") -> torch.Tensor:
    """[samples, length] windows of the corpus's split at evenly spaced offsets: the first P
    tokens of each are a prompt, the rest its real continuation (a reference row)."""
    from diffusionlm.data import load_corpus

    ids = torch.tensor(tokenizer.encode("\n".join(load_corpus(corpus, split))))
    if len(ids) < samples * length:
        raise SystemExit(f"{corpus}'s {split} split has {len(ids)} tokens: too few for {samples} windows of {length}")
    offsets = torch.arange(samples) * ((len(ids) - length) // samples)
    return torch.stack([ids[o: o + length] for o in offsets.tolist()])


def runs(args) -> list[tuple[str, object]]:
    out = [(f"MDLM steps={s}", MDLM(steps=s)) for s in args.steps]
    out += [(f"threshold {t}", Threshold(t)) for t in args.thresholds]
    # the budgeted variant at a fixed rate: the k most confident per call (threshold 0, cap k)
    out += [(f"threshold budget k={k}", Threshold(0.0, max_per_step=k)) for k in args.max_per_step]
    t0 = args.thresholds[0]
    out += [(f"threshold {t0} block={args.block}", Threshold(t0, block=args.block))]
    out += [(f"threshold {t0} block={args.block} {mode} cache", Threshold(t0, block=args.block, approx_cache=mode))
            for mode in ("prefix", "dual")]
    out += [(f"ReMDM {args.remdm_schedule} eta={args.remdm_eta} steps={s}", ReMDM(args.remdm_eta, args.remdm_schedule, steps=s))
            for s in args.remdm_steps]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--judge", required=True)
    ap.add_argument("--samples", type=int, default=32)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--length", type=int, default=128)
    ap.add_argument("--steps", type=int, nargs="+", default=[128, 32])
    ap.add_argument("--thresholds", type=float, nargs="+", default=[0.9, 0.7, 0.5])
    ap.add_argument("--block", type=int, default=32)
    ap.add_argument("--max-per-step", type=int, nargs="*", default=[],
                    help="budgeted runs: the k most confident positions per call (Threshold(0, max_per_step=k))")
    ap.add_argument("--remdm-steps", type=int, nargs="*", default=[], help="ReMDM runs (more steps buy quality)")
    ap.add_argument("--remdm-eta", type=float, default=0.02)
    ap.add_argument("--remdm-schedule", default="cap")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--prompt-corpus", default=None,
                    help="condition every sample on a prompt from this corpus's validation split")
    ap.add_argument("--prompt-split", default="validation", help="the split prompts come from (wikitext2: test only)")
    ap.add_argument("--prompt-length", type=int, default=0,
                    help="prompt tokens out of --length; the judge scores only the continuation")
    ap.add_argument("--out", default="benchmarks/frontier.json")
    ap.add_argument("--plot", default=None)
    ap.add_argument("--replot", action="store_true", help="only draw --plot from the rows in --out")
    args = ap.parse_args()
    if args.replot:
        with open(args.out) as f:
            res = json.load(f)
        plot(res["rows"], args.plot, res.get("machine", {}).get("threads"))
        return

    m = load_model(args.model)
    lm, tok = m.lm, m.tokenizer
    P = args.prompt_length
    if (P > 0) != (args.prompt_corpus is not None) or not 0 <= P < args.length:
        raise SystemExit("--prompt-corpus and --prompt-length (in [1, --length)) go together")
    real = windows_from(args.prompt_corpus, tok, args.samples, args.length, args.prompt_split) if P else None
    prompts = None if real is None else real[:, :P]
    judge, judge_name = judge_fn(args.judge, tok, P)
    N = lm.process.vocab_size
    rows, ref_tokens = [], {}
    for label, sampler in runs(args):
        toks, calls, secs = [], [], 0.0
        for i in range(0, args.samples, args.batch):
            b = min(args.batch, args.samples - i)
            g = torch.Generator().manual_seed(args.seed + i)
            t = time.perf_counter()
            out = sampler.sample(lm, batch_size=b, length=args.length, generator=g,
                                 prompt=None if prompts is None else prompts[i: i + b])
            secs += time.perf_counter() - t
            toks.append(out.tokens)
            calls.append(out.calls_of_samples().double())
        toks = torch.cat(toks)
        assert not bool((toks >= N).any()), label
        if prompts is not None:
            assert torch.equal(toks[:, :P], prompts), label
        nll, cnt = judge(toks)
        toks = toks[:, P:]  # the generated part only, below
        row = {"run": label, "sampler": sampler.to_dict(), "gen_ppl": math.exp(nll / cnt),
               "entropy": unigram_entropy(toks), "calls_per_sample": float(torch.cat(calls).mean()),
               "seconds_per_sample": secs / args.samples}
        if getattr(sampler, "approx_cache", None) is None and getattr(sampler, "block", None) is not None:
            ref_tokens["block"] = toks
        if getattr(sampler, "approx_cache", None) is not None:
            row["agreement_with_uncached"] = float((toks == ref_tokens["block"]).double().mean())
        row["examples"] = [tok.decode(t.tolist()) for t in toks[:2]]
        rows.append(row)
        print(f"{label:40s} gen PPL {row['gen_ppl']:8.2f}  entropy {row['entropy']:.3f}  calls/sample "
              f"{row['calls_per_sample']:7.1f}  s/sample {row['seconds_per_sample']:.3f}"
              + (f"  agreement {row['agreement_with_uncached']:.3f}" if "agreement_with_uncached" in row else ""),
              flush=True)
    if real is not None:  # what the judge says of the corpus's own continuations of the prompts
        nll, cnt = judge(real)
        rows.append({"run": "real continuation (reference)", "gen_ppl": math.exp(nll / cnt),
                     "entropy": unigram_entropy(real[:, P:]), "calls_per_sample": None, "seconds_per_sample": None,
                     "examples": [tok.decode(t.tolist()) for t in real[:2, P:]]})
        print(f"{rows[-1]['run']:40s} gen PPL {rows[-1]['gen_ppl']:8.2f}  entropy {rows[-1]['entropy']:.3f}", flush=True)
    ref = next(r for r in rows if r["run"] == f"MDLM steps={args.steps[0]}")
    for r in rows:
        if r["calls_per_sample"] is None:  # the real-text reference
            continue
        r["ppl_vs_fixed"] = r["gen_ppl"] / ref["gen_ppl"]
        r["calls_vs_fixed"] = r["calls_per_sample"] / ref["calls_per_sample"]
        r["entropy_vs_fixed"] = r["entropy"] / ref["entropy"]
        # a collapsed sampler (runs of one token) has a flattering PPL: it must keep 90% of the entropy
        r["meets_target"] = (r["run"].startswith("threshold") and r["ppl_vs_fixed"] <= 1.05
                             and r["calls_vs_fixed"] <= 1 / 3 and r["entropy_vs_fixed"] >= 0.9)
    result = {"model": args.model, "judge": judge_name, "samples": args.samples, "length": args.length,
              "prompt": None if P == 0 else {"corpus": args.prompt_corpus, "split": args.prompt_split, "tokens": P},
              "seed": args.seed, "machine": {"cpus": os.cpu_count(), "threads": torch.get_num_threads(),
                                             "load": os.getloadavg(), "platform": platform.platform()},
              "rows": rows}
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    if args.plot:
        plot(rows, args.plot, torch.get_num_threads())


def plot(rows: list, path: str, threads: "int | None" = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(14, 4.5))
    for ax, key, xlabel in ((axes[0], "calls_per_sample", "network calls per sample"),
                            (axes[1], "seconds_per_sample", f"seconds per sample (CPU, {threads or '?'} thread{'' if threads == 1 else 's'})")):
        colours = plt.get_cmap("tab20").colors  # one colour per run (the default cycle repeats after 10)
        for i, r in enumerate(rows):
            if r[key] is None:  # the real continuations: a line, they cost no calls
                ax.axhline(r["gen_ppl"], color="gray", linestyle="--", label=f"{r['run']} (entropy {r['entropy']:.2f})")
                continue
            ax.scatter(r[key], r["gen_ppl"], marker="o" if r["run"].startswith(("MDLM", "ReMDM")) else "s",
                       color=colours[i % len(colours)],
                       label=f"{r['run']} (entropy {r['entropy']:.2f})")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(xlabel)
        ax.grid(True, which="both", alpha=0.3)
        ax.set_ylabel("generative PPL (judge)")
    axes[1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))
    fig.tight_layout()
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
