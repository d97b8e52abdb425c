"""The NLL bound's error bar against its spread over seeds, for trained compare variants.

    python benchmarks/bound_stderr.py runs/compare/models --variants mdlm epsilon --seeds 30 --M 4 \
        --out benchmarks/out/bound_stderr.json

For each variant (a run directory written by `diffusionlm compare`: models/<name>/run.json), the
corpus bound over the first `--blocks` test blocks of the run's corpus is computed with `--seeds`
different seeds (one torch.Generator per seed, as the compare job draws), each with M model
evaluations per row, through `lm.nll_bound` -- so running this file with PYTHONPATH pointing at
another checkout measures that checkout's estimator. Printed per variant: the mean estimate
(nats/token), the observed sd of the estimate over the seeds, the RMS of the reported stderr,
their ratio, and (where the estimator reports it) the split into its lines.
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch


def corpus(lm, ids, M, seed, batch_size):
    g = torch.Generator().manual_seed(seed)
    nll, var, n, terms = 0.0, 0.0, 0, {}
    with torch.no_grad():
        for i in range(0, len(ids), batch_size):
            b = lm.nll_bound(ids[i : i + batch_size], num_samples=M, generator=g)
            nll += float(b.nll.sum())
            var += float((b.stderr**2).sum())
            n += int(b.num_tokens.sum())
            for k, v in (getattr(b, "terms", None) or {}).items():
                terms[k] = terms.get(k, 0.0) + float(v.sum())
    return nll / n, math.sqrt(var) / n, {k: v / n for k, v in terms.items()}, getattr(b, "method", "iid formula (old)")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("models", help="the models/ folder of a compare run")
    p.add_argument("--variants", nargs="+", default=["mdlm", "epsilon"])
    p.add_argument("--seeds", type=int, default=30)
    p.add_argument("--M", type=int, default=4)
    p.add_argument("--blocks", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--out")
    args = p.parse_args()
    import diffusionlm
    from diffusionlm.io.runs import load_run
    from diffusionlm.data import TokenBlocks, load_corpus

    torch.set_num_threads(1)
    out = {"diffusionlm": str(Path(diffusionlm.__file__).parent), "M": args.M, "seeds": args.seeds, "variants": {}}
    for name in args.variants:
        run, built = load_run(Path(args.models) / name)
        lm = built.lm
        lm.model.eval()
        ids = TokenBlocks(load_corpus(run.data.corpus, "test"), built.tokenizer, run.data.length).ids[: args.blocks]
        rows = [corpus(lm, ids, args.M, s, args.batch_size) for s in range(args.seeds)]
        est = torch.tensor([r[0] for r in rows], dtype=torch.float64)
        se = torch.tensor([r[1] for r in rows], dtype=torch.float64)
        terms = {k: sum(r[2][k] for r in rows) / len(rows) for k in rows[0][2]}
        res = {"mean": float(est.mean()), "observed_sd": float(est.std()), "reported_rms": float(se.pow(2).mean().sqrt()),
               "reported_mean": float(se.mean()), "terms": terms, "method": rows[0][3]}
        res["ratio"] = res["reported_rms"] / res["observed_sd"]
        out["variants"][name] = res
        print(f"{name:8s} {res['mean']:.4f} nats/token  observed sd {res['observed_sd']:.4f}  reported stderr (rms) "
              f"{res['reported_rms']:.4f}  ratio {res['ratio']:.2f}  terms {json.dumps({k: round(v, 4) for k, v in terms.items()})}")
        print(f"         {res['method']}", flush=True)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
