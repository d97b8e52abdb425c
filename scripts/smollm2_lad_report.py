"""LAD self-correction of SmolLM2 adapted from its AR start (issue 22, the LAD target).

The measurement (the same as docs/smollm2/README.md's, on more sentences): WikiText-2 raw
sentences of 16-48 tokens, corrupted by the Structural process's own edits without masking
(swaps, duplications, a span shift; p ~ U[0, p_max], mask_prob 0, seed 0), then greedy
self-refinement through the toolkit's sampler, `LAD.refine` (every position re-predicted from
the whole previous output, at most --iterations calls), optionally with `min_probability` tau
(only edits the model is at least tau sure of). Score: token Levenshtein distance to the original
over its length, mean +- s.e. over sentences, and the paired change (after - before) +- s.e.

tau is chosen on TUNING sentences (the grid --taus): the next --sentences sentences of the test
split after the measured ones (only the test split of WikiText-2 is stored offline), disjoint from
them; then the measured sentences are scored with that tau and with none (the paper's plain update). Every checkpoint in --steps is measured on test at the
chosen tau: the curve of the edit distance against training tokens.

    python scripts/smollm2_lad_report.py --run runs/smollm2-lad2 --sentences 64 --out docs/smollm2/lad.json
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))

from diffusionlm.config import RunConfig  # noqa: E402
from diffusionlm.eval.edit import levenshtein  # noqa: E402
from diffusionlm.io.runs import build  # noqa: E402
from diffusionlm.processes import Structural  # noqa: E402
from diffusionlm.samplers.lad import LAD  # noqa: E402
from diffusionlm.training import load_model_weights  # noqa: E402
from smollm2_report import sentences  # noqa: E402  (the earlier measurement's sentences)


def mean_se(v: list) -> tuple:
    m = sum(v) / len(v)
    return m, math.sqrt(sum((x - m) ** 2 for x in v) / (len(v) - 1) / len(v))


def corrupt_all(sents: list, vocab: int, mask_id: int, p_max: float) -> list:
    proc = Structural(vocab, mask_id=mask_id, p_max=p_max, mask_prob=0.0)
    g = torch.Generator().manual_seed(0)
    return [proc.corrupt(torch.tensor([ids]), generator=g).ids for ids in sents]


def measure(lm, sents: list, noisy: list, tau, iterations: int, tok=None) -> dict:
    before, after, calls, examples = [], [], [], []
    kept = restored = clean_n = corrupt_n = 0
    for i, (ids, y) in enumerate(zip(sents, noisy)):
        # the first call alone, then the rest from its output: the same as refine(y, iterations)
        # (it stops after one call where nothing changed), with the first call's output kept
        one, _ = LAD().refine(lm, y, 1, min_probability=tau)
        fixed, c = one, 1
        if iterations > 1 and not torch.equal(one, y):
            fixed, rest = LAD().refine(lm, one, iterations - 1, min_probability=tau)
            c += rest
        # what one call does, position by position (the edits keep the length): of the tokens the
        # noise left alone, how many the model keeps; of those it changed, how many it restores
        orig = torch.tensor(ids)
        hit, clean = one[0] == orig, y[0] == orig
        kept += int((hit & clean).sum()); clean_n += int(clean.sum())
        restored += int((hit & ~clean).sum()); corrupt_n += int((~clean).sum())
        before.append(levenshtein(y[0].tolist(), ids) / len(ids))
        after.append(levenshtein(fixed[0].tolist(), ids) / len(ids))
        calls.append(c)
        if tok is not None and i < 10:
            examples.append({"original": tok.decode(ids), "noisy": tok.decode(y[0].tolist()), "refined": tok.decode(fixed[0].tolist())})
    (bm, bs), (am, as_) = mean_se(before), mean_se(after)
    dm, ds = mean_se([b - a for a, b in zip(before, after)])
    changed = sum(float((y[0] != torch.tensor(ids)).float().mean()) for ids, y in zip(sents, noisy)) / len(sents)
    return {"tau": tau, "sentences": len(sents), "changed_fraction": changed, "edit_before": bm, "edit_before_stderr": bs,
            "edit_after": am, "edit_after_stderr": as_, "delta": dm, "delta_stderr": ds,
            "improved": sum(a < b for a, b in zip(after, before)), "worsened": sum(a > b for a, b in zip(after, before)),
            "mean_calls": sum(calls) / len(calls), "first_call_kept": kept / max(clean_n, 1),
            "first_call_restored": restored / max(corrupt_n, 1), "examples": examples}


def load_step(run_dir: Path, step: int):
    """The run's composition with checkpoint `step`'s weights (0: the un-adapted start: LoRA's B is
    zero at initialisation, so the model is the base read under the run's process)."""
    run = RunConfig.from_dict(json.loads((run_dir / "run.json").read_text()))
    built = build(run, data=False)
    if step:
        load_model_weights(built.lm.model, run_dir / f"checkpoint-{step:06d}")  # checksummed, base checked
    built.lm.model.eval()
    return built


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", type=Path, default=REPO / "runs" / "smollm2-lad2")
    ap.add_argument("--steps", type=int, nargs="+", default=[0, 40, 80, 120, 160])
    ap.add_argument("--sentences", type=int, default=64)
    ap.add_argument("--p-max", type=float, nargs="+", default=[0.2, 0.5])
    ap.add_argument("--taus", type=float, nargs="+", default=[0.5, 0.7, 0.9])
    ap.add_argument("--iterations", type=int, default=8)
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "smollm2" / "lad.json")
    args = ap.parse_args(argv)
    t0 = time.time()
    last = max(args.steps)
    built = load_step(args.run, last)
    tok, lm = built.tokenizer, built.lm
    both = sentences(tok, 2 * args.sentences)
    data = {"test": both[:args.sentences], "tuning": both[args.sentences:]}  # "tuning": the tuning half
    noisy = {(split, p): corrupt_all(data[split], tok.vocab_size, lm.model.mask_id, p) for split in data for p in args.p_max}
    out = {"run": str(args.run), "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}, "tuning": {}, "test": {}, "curve": {}}
    # tau on the tuning sentences, at the last checkpoint: the smallest mean edit distance over both noise levels
    score = {}
    for tau in [None] + args.taus:
        rows = [measure(lm, data["tuning"], noisy["tuning", p], tau, args.iterations) for p in args.p_max]
        out["tuning"][str(tau)] = rows
        score[tau] = sum(r["edit_after"] for r in rows)
        print(f"tuning tau={tau}: " + "; ".join(f"p_max {p}: {r['edit_before']:.3f} -> {r['edit_after']:.3f}" for p, r in zip(args.p_max, rows)), flush=True)
    best = min(score, key=score.get)
    out["chosen_tau"] = best
    for tau in dict.fromkeys([None, best]):
        out["test"][str(tau)] = [measure(lm, data["test"], noisy["test", p], tau, args.iterations, tok) for p in args.p_max]
    for step in sorted(args.steps):
        m = built.lm if step == last else load_step(args.run, step).lm
        out["curve"][str(step)] = [measure(m, data["test"], noisy["test", p], best, args.iterations) for p in args.p_max]
        print(f"test step {step} tau={best}: " + "; ".join(
            f"p_max {p}: {r['edit_before']:.3f} -> {r['edit_after']:.3f} +- {r['edit_after_stderr']:.3f} (delta {r['delta']:+.3f} +- {r['delta_stderr']:.3f}, {r['improved']}-{r['worsened']})"
            for p, r in zip(args.p_max, out["curve"][str(step)])), flush=True)
    out["seconds"] = time.time() - t0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1))
    for tau, rows in out["test"].items():
        print(f"test tau={tau}: " + "; ".join(
            f"p_max {p}: changed {r['changed_fraction']:.3f}, edit {r['edit_before']:.3f} -> {r['edit_after']:.3f} (delta {r['delta']:+.3f} +- {r['delta_stderr']:.3f}, {r['improved']}-{r['worsened']}; "
            f"one call keeps {r['first_call_kept']:.3f} of clean tokens, restores {r['first_call_restored']:.3f} of changed ones)"
            for p, r in zip(args.p_max, rows)))
    print(f"wrote {args.out} in {out['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
