"""The issue-22 measurements of a SmolLM2 block-diffusion adaptation (recipes/smollm2-block.json)
against its base read as AR, on the first --rows rows of --length tokens of WikiText-2 raw test
(wrap rule, the suite's rows). Every Monte-Carlo figure has its stderr.

    python scripts/smollm2_block_report.py --run runs/smollm2-block --out docs/smollm2/block/final.json
    python scripts/smollm2_block_report.py --run runs/smollm2-block --checkpoint 120 --only bound \
        --schedules 4x4 --out docs/smollm2/block/step120.json        # one point of the curve

Measured (nats/token):
* ``ar``: the base's exact AR NLL (`compare.ar_judge_nll`: one causal forward, float64), stderr 0.
* ``bound``: for each --schedules WxS, the adapted model's NLL bound under Block(W, S) (W
  positions a block, S steps a block), M = --samples draws per row, seed 0
  (`eval.evaluate_likelihood`, the toolkit's one estimator, and its stderr).
* ``gen``: --prompts prompts, the first --prompt-length tokens of evenly spaced test rows, each
  continued by --gen-length tokens at temperature 1: the base AR's own samples (AR sampler), the
  adapted model's MDLM under its Block(4, 4) (4 calls a block), Threshold(t) for each
  --thresholds and the budgeted Threshold(0, max_per_step=k) for each --budget (each with every
  --order-by: what orders the positions), all within its
  blocks; per run gen PPL judged by the base (exact NLL of the continuation given its prompt,
  token-weighted), unigram entropy of the generated tokens, network calls per sample, and the
  bootstrap s.e. of PPL and entropy over prompts (--bootstrap resamples); the real continuations
  judged the same way; --examples decoded prompt / continuation pairs per run.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import time
from pathlib import Path

import torch

from diffusionlm.compare import ar_judge_nll
from diffusionlm.eval import dataset_blocks, evaluate_likelihood
from diffusionlm.eval.causal import causal_token_logp
from diffusionlm.eval.diversity import unigram_entropy
from diffusionlm.io.hub import load_model
from diffusionlm.samplers import AR, MDLM, Threshold
from diffusionlm.samplers.adaptive import CONFIDENCES
from diffusionlm.schedules import Block
from diffusionlm.training import latest_checkpoint, load_model_weights


def schedule_of(text: str) -> Block:
    w, s = (int(v) for v in text.lower().split("x"))
    return Block(w, s)


def bootstrap(per_row: list, stat, resamples: int, seed: int = 0) -> float:
    """Standard deviation of `stat` over `resamples` resamplings of the rows with replacement."""
    g = torch.Generator().manual_seed(seed)
    n = len(per_row)
    vals = [stat([per_row[i] for i in torch.randint(0, n, (n,), generator=g).tolist()]) for _ in range(resamples)]
    return float(torch.tensor(vals, dtype=torch.float64).std())


def gen_stats(ar, toks: torch.Tensor, P: int, resamples: int) -> dict:
    """Gen PPL (judge: the base, exact, continuation only) and unigram entropy, with bootstrap s.e."""
    rows = []
    for t in toks:
        nll, n = ar_judge_nll(ar, t[None], P)
        rows.append((nll, n, unigram_entropy(t[None, P:])))
    ppl = lambda rs: math.exp(sum(r[0] for r in rs) / sum(r[1] for r in rs))  # noqa: E731
    ent = lambda rs: sum(r[2] for r in rs) / len(rs)  # noqa: E731
    return {"gen_ppl": ppl(rows), "gen_ppl_se": bootstrap(rows, ppl, resamples), "entropy": ent(rows),
            "entropy_se": bootstrap(rows, ent, resamples), "judge_nll": sum(r[0] for r in rows) / sum(r[1] for r in rows)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", required=True, help="the training's run directory (or a saved composition)")
    ap.add_argument("--checkpoint", type=int, default=None, help="score checkpoint-N instead of the newest weights")
    ap.add_argument("--base", default="smollm2", help="the base causal LM, read as AR (the reference and the judge)")
    ap.add_argument("--data", default="wikitext2-raw", help="the rows scored: a dataset name or a local corpus "
                    "(e.g. the training corpus's held-out split: runs/smollm2-english/train.jsonl --split validation)")
    ap.add_argument("--split", default="test")
    ap.add_argument("--rows", type=int, default=32)
    ap.add_argument("--length", type=int, default=128)
    ap.add_argument("--samples", type=int, default=8, help="M, model evaluations per row for each bound")
    ap.add_argument("--schedules", nargs="*", default=["4x4", "4x16", "2x2", "8x8"])
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--prompt-length", type=int, default=64)
    ap.add_argument("--gen-length", type=int, default=64)
    ap.add_argument("--thresholds", type=float, nargs="*", default=[0.9, 0.7, 0.5])
    ap.add_argument("--budget", type=int, nargs="*", default=[2])
    ap.add_argument("--order-by", nargs="+", choices=CONFIDENCES, default=["drawn"],
                    help="what orders the threshold samplers (samplers/adaptive.py): p of the drawn token (Fast-dLLM), "
                         "or max / margin of the position's distribution (the written tokens exact draws)")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--bootstrap", type=int, default=1000)
    ap.add_argument("--examples", type=int, default=10)
    ap.add_argument("--only", choices=("bound", "gen", "exact"), default=None)
    ap.add_argument("--exact", action="store_true", help="also the exact bound of each schedule (eval/block_exact.py: "
                    "2^w - 1 two-halves forwards a row, every S of one width from the same forwards; no Monte Carlo)")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    if args.checkpoint is not None:  # built as the run built it (LoRA trainable), then the checkpoint's weights (step 0: none)
        from diffusionlm.config import RunConfig
        from diffusionlm.io.runs import build
        from diffusionlm.training import seed_everything

        run = RunConfig.from_dict(json.loads((Path(args.run) / "run.json").read_text()))
        seed_everything(run.train.seed)
        built = build(run, data=False)
        lm, tok, where = built.lm, built.tokenizer, f"{args.run} (step 0: un-adapted)"  # LoRA B = 0, MASK = mean row
    else:
        m = load_model(args.run)
        lm, tok, where = m.lm, m.tokenizer, str(args.run)
    if args.checkpoint:
        ck = Path(args.run) / f"checkpoint-{args.checkpoint:06d}"
        load_model_weights(lm.model, ck)
        where = str(ck)
    lm.model.eval()
    base = load_model(args.base, schedule="quench").lm  # plain causal LM: Absorb + Quench, SHIFTED
    base.model.eval()
    blocks, data = dataset_blocks(args.data, tok, args.length, args.split)
    ids = blocks.ids[: args.rows]
    out = {"model": where, "base": args.base, "data": {**data, "rows": int(ids.shape[0]), "length": args.length},
           "threads": torch.get_num_threads()}
    t0 = time.perf_counter()
    with torch.no_grad():
        ar_tokens = -causal_token_logp(base, ids)[0]  # [S, d]: one causal forward (what ar_judge_nll sums)
        nll, n = float(ar_tokens.sum()), ar_tokens.numel()
        out["ar"] = {"nll": nll / n, "stderr": 0.0, "ppl": math.exp(nll / n), "tokens": n}
        print(f"base AR exact: {nll / n:.4f} nats/token", flush=True)
        if args.only in (None, "bound"):
            out["bound"] = {}
            for s in args.schedules:
                r = evaluate_likelihood(dataclasses.replace(lm, schedule=schedule_of(s)), ids, num_samples=args.samples,
                                        batch_size=8, seed=0, progress=False)["results"]["tensor"]
                out["bound"][s] = {k: r[k] for k in ("nll", "stderr", "ppl") if k in r} | {"M": args.samples}
                print(f"bound Block({s}): {r['nll']:.4f} +- {r['stderr']:.4f} (gap to AR {r['nll'] - nll / n:+.4f})",
                      flush=True)
        if args.exact or args.only == "exact":
            out["exact"] = exact_bounds(lm, ids, args.schedules, nll / n, ar_tokens=ar_tokens)
        if args.only in (None, "gen"):
            out["gen"] = gen(args, lm, base, tok, blocks)
    out["seconds"] = time.perf_counter() - t0
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")


def exact_bounds(lm, ids: torch.Tensor, schedules: list, ar: float, batch: int = 4, ar_tokens=None) -> dict:
    """{"WxS": nats/token} exactly (no stderr), one set of forwards per width; and, per width, where
    the bound's cross-entropies lie (`patterns`): for every MASK pattern of a block, the mean
    -log p(y_i) at each masked offset of the block, beside the base AR's own mean at each offset
    (`ar_tokens` [S, d]: its per-token NLL of the same rows)."""
    from diffusionlm.eval.block_exact import block_bounds, mask_patterns, pattern_nll

    by_width: dict = {}
    for text in schedules:
        sched = schedule_of(text)
        by_width.setdefault(sched.width_, []).append(sched.steps_per_block)
    out = {}
    for w, steps in by_width.items():
        at_w = dataclasses.replace(lm, schedule=Block(w, steps[0]))
        total = {S: 0.0 for S in steps}
        ce = 0.0
        for i in range(0, len(ids), batch):
            x = ids[i:i + batch]
            nll = pattern_nll(at_w, x)  # [P, B, d]
            ce = ce + nll.view(nll.shape[0], -1, w).sum(1)  # [P, w]: summed over rows and blocks
            for S, v in block_bounds(at_w, x, steps, nll=nll).items():
                total[S] += float(v.sum())
        blocks = ids.numel() // w
        pats = mask_patterns(w)
        out[f"patterns_w{w}"] = {
            "what": "mean -log p(y_i) at each offset i of a block (left to right) when the block's MASK pattern is "
                    "the key (1 = masked, offset 0 first), the blocks before clean; null where not masked",
            "ar_by_offset": None if ar_tokens is None else ar_tokens.reshape(-1, w).mean(0).tolist(),
            "ce": {"".join("1" if b else "0" for b in pat.tolist()): [float(c) / blocks if b else None
                                                                    for b, c in zip(pat.tolist(), row.tolist())]
                   for pat, row in zip(pats, ce)},
        }
        for S in steps:
            out[f"{w}x{S}"] = {"nll": total[S] / ids.numel(), "stderr": 0.0, "method": "exact (eval/block_exact.py)"}
            print(f"exact bound Block({w}, {S}): {total[S] / ids.numel():.4f} (gap to AR {total[S] / ids.numel() - ar:+.4f})", flush=True)
    return out


def gen(args, lm, base, tok, blocks) -> dict:
    P, L = args.prompt_length, args.prompt_length + args.gen_length
    all_rows = blocks.ids
    if all_rows.shape[1] < L:
        raise SystemExit(f"rows of {all_rows.shape[1]} tokens are shorter than prompt + generation ({L})")
    pick = torch.linspace(0, all_rows.shape[0] - 1, args.prompts).round().long()
    real = all_rows[pick, :L]
    prompts = real[:, :P]
    runs = [("base AR (temperature 1)", base, AR(temperature=1.0)), ("MDLM Block(4, 4)", lm, MDLM())]
    for c in args.order_by:  # the labels of the default ("drawn") stay those of the earlier reports
        tag = "" if c == "drawn" else f" order_by={c}"
        runs += [(f"threshold {t}{tag}", lm, Threshold(t, order_by=c)) for t in args.thresholds]
        runs += [(f"threshold budget k={k}{tag}", lm, Threshold(0.0, max_per_step=k, order_by=c)) for k in args.budget]
    res = {"prompts": args.prompts, "prompt_length": P, "gen_length": args.gen_length, "runs": []}
    real_stats = gen_stats(base, real, P, args.bootstrap)
    res["real"] = real_stats | {"examples": [[tok.decode(r[:P].tolist()), tok.decode(r[P:].tolist())]
                                             for r in real[: args.examples]]}
    print(f"real continuation: gen PPL {real_stats['gen_ppl']:.2f} entropy {real_stats['entropy']:.3f}", flush=True)
    for label, model, sampler in runs:
        toks, calls, t = [], [], time.perf_counter()
        for i in range(0, args.prompts, args.batch):
            b = prompts[i: i + args.batch]
            o = sampler.sample(model, batch_size=b.shape[0], length=L, prompt=b,
                               generator=torch.Generator().manual_seed(i))
            toks.append(o.tokens)
            calls.append(o.calls_of_samples().double())
        toks = torch.cat(toks)
        assert torch.equal(toks[:, :P], prompts), label
        row = {"run": label, "sampler": sampler.to_dict(), **gen_stats(base, toks, P, args.bootstrap),
               "calls_per_sample": float(torch.cat(calls).mean()), "seconds": time.perf_counter() - t,
               "examples": [[tok.decode(r[:P].tolist()), tok.decode(r[P:].tolist())] for r in toks[: args.examples]]}
        res["runs"].append(row)
        print(f"{label:32s} gen PPL {row['gen_ppl']:9.2f} +- {row['gen_ppl_se']:.2f}  entropy {row['entropy']:.3f} "
              f"+- {row['entropy_se']:.3f}  calls/sample {row['calls_per_sample']:.1f}", flush=True)
    return res


if __name__ == "__main__":
    main()
