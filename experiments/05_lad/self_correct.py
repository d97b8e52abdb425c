"""Study 5, the refinement half: does the Structural (LAD) model repair corrupted lines, and
better than MDLM re-masking of the same inputs?

For K validation lines x of shakespeare_char (16-64 characters, in corpus order):

    corruption   y = Structural(p_max, mask_prob=0).corrupt(x): the process's own structural
                 edits only (adjacent swaps, duplications, one span shift; no MASK), on the
                 line alone. p_max is found by bisection (fixed seed) so that the mean fraction
                 of changed characters, mean_x |{i: y_i != x_i}| / |x|, is the target (10%, 20%).
    (a) LAD      the toolkit's LAD sampler, `LAD.refine` (diffusionlm/samplers/lad.py): greedy
                 self-refinement of given text, i.e. LAD without re-masking (the paper's second
                 inference method, section 2.5) started from z = y instead of MASK:
                 z <- argmax_v p(v | z) at every position until z stops changing or
                 `iterations` calls.
    (b) MDLM     re-masking with the MDLM model: the confidence of position i is the model's
                 p(y_i | y with only i masked) (n forwards, one per position); the
                 round(r n) least confident positions (r = the target fraction) are set to MASK
                 and filled in one forward by argmax over the characters. The same with r n
                 positions drawn at random is reported beside it (`mdlm_random`), and the same
                 confidence re-masking with the LAD model (`lad_remask`), which separates the
                 model from the procedure.

Score: the character edit distance (Levenshtein, unit costs) to x normalised by |x|, before
and after; mean +- standard error over the lines; lines improved / worsened / exactly restored
(lines the draw left unchanged, p near 0, count as exact for a repair that changes nothing);
3 examples among the corrupted lines.
Predictions are restricted to the tokenizer's characters (never MASK or the special id).
The MDLM baseline (b) is this study's own procedure (the LAD paper has no such comparison).

    PYTHONPATH=$PWD DIFFUSIONLM_DATA=$PWD/../shared/data OMP_NUM_THREADS=1 \\
      python experiments/05_lad/self_correct.py --lines 200
    # models of several training seeds (compare --seeds: MODELS/seed-S/models/{lad,mdlm}):
    python experiments/05_lad/self_correct.py --models runs/study5_2000 --seeds 0 1 2 --out OUT

With --seeds the same corrupted lines (corruption seed --seed) are repaired by each training
seed's models (OUT/seed-S/self_correct.*), and OUT/seeds.md gives each method's after - before
as mean +- s.e. over the training seeds (diffusionlm.eval.stats.seed_summary).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Callable, Optional

import torch

from diffusionlm.eval.edit import levenshtein  # unit-cost edit distance, two-row DP
from diffusionlm.samplers.lad import LAD

HERE = Path(__file__).resolve().parent

LEVELS = (0.10, 0.20)


# ---------------------------------------------------------------------------------------------
# data and score
# ---------------------------------------------------------------------------------------------
def validation_lines(tok, k: int, lo: int = 16, hi: int = 64) -> list:
    """The first k lines (no newline) of shakespeare_char validation with lo <= length <= hi."""
    from diffusionlm.data import load_corpus

    out = []
    for doc in load_corpus("shakespeare_char", "validation"):
        for line in doc.split("\n"):
            if lo <= len(line) <= hi:
                out.append(tok.encode(line))
                if len(out) == k:
                    return out
    return out


def mean_se(v: list) -> tuple:
    m = sum(v) / len(v)
    if len(v) < 2:
        return m, float("nan")
    return m, math.sqrt(sum((x - m) ** 2 for x in v) / (len(v) - 1) / len(v))


# ---------------------------------------------------------------------------------------------
# corruption: the Structural process's own edits, calibrated to a changed fraction
# ---------------------------------------------------------------------------------------------
def _padded(lines: list, pad: int) -> tuple:
    d = max(len(x) for x in lines)
    ids = torch.full((len(lines), d), pad, dtype=torch.long)
    resp = torch.zeros(len(lines), d, dtype=torch.bool)
    for i, x in enumerate(lines):
        ids[i, : len(x)] = torch.tensor(x)
        resp[i, : len(x)] = True
    return ids, resp


def corrupt(lines: list, p_max: float, vocab_size: int, seed: int = 0) -> list:
    """Each line corrupted by Structural(p_max, mask_prob=0) on its own span (one batch)."""
    from diffusionlm.processes import Structural

    proc = Structural(vocab_size, p_max=p_max, mask_prob=0.0)
    ids, resp = _padded(lines, 0)
    out = proc.corrupt(ids, generator=torch.Generator().manual_seed(seed), response_mask=resp).ids
    return [out[i, : len(x)].tolist() for i, x in enumerate(lines)]


def changed_fraction(lines: list, noisy: list) -> list:
    return [sum(a != b for a, b in zip(x, y)) / len(x) for x, y in zip(lines, noisy)]


def calibrate(lines: list, target: float, vocab_size: int, seed: int = 0, rounds: int = 20) -> float:
    """p_max in [0, 1] whose mean changed fraction over `lines` is closest to `target` (bisection;
    the same seed at every round, so the changed fraction grows with p_max)."""
    def rate(p):
        return sum(changed_fraction(lines, corrupt(lines, p, vocab_size, seed))) / len(lines)

    if rate(1.0) < target:
        raise ValueError(f"target changed fraction {target} is above what p_max = 1 gives ({rate(1.0):.3f})")
    lo, hi = 0.0, 1.0
    for _ in range(rounds):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if rate(mid) < target else (lo, mid)
    return min((lo, hi), key=lambda p: abs(rate(p) - target))


# ---------------------------------------------------------------------------------------------
# the two repairs
# ---------------------------------------------------------------------------------------------
def _logits(lm, x: torch.Tensor, n_out: int) -> torch.Tensor:
    """Logits over the first n_out ids (the characters) of the model on x [B, d]; levels are 1
    at MASK for a time-conditioned process, 0 elsewhere (as the LAD sampler feeds them)."""
    process = lm.process
    if getattr(process, "time_conditioned", False):
        levels = (x == process.mask_id).float()
    else:
        levels = torch.zeros(x.shape)
    return lm.forward(x, levels, None)[..., :n_out].float()


def refine(lm, ids: list, n_out: int, iterations: int = 16) -> tuple:
    """(a) Greedy self-refinement from the given text (diffusionlm's LAD.refine over the first
    n_out ids); returns (ids, calls)."""
    out, calls = LAD().refine(lm, ids, iterations, real=n_out)
    return out.tolist(), calls


@torch.no_grad()
def confidence(lm, ids: list, n_out: int) -> torch.Tensor:
    """p(y_i | y with only position i masked), one row per position [n]."""
    n = len(ids)
    x = torch.tensor(ids).repeat(n, 1)
    eye = torch.eye(n, dtype=torch.bool)
    x[eye] = lm.process.mask_id
    logp = torch.log_softmax(_logits(lm, x, n_out)[eye], -1)  # [n, n_out], row i at position i
    return logp.gather(-1, torch.tensor(ids)[:, None]).squeeze(-1).exp()


@torch.no_grad()
def remask_fill(lm, ids: list, n_out: int, fraction: float, how: str = "confidence",
                generator: Optional[torch.Generator] = None) -> tuple:
    """(b) Set round(fraction n) positions to MASK (the least confident, or random) and fill them
    by argmax in one forward; returns (ids, the re-masked positions)."""
    if how not in ("confidence", "random"):
        raise ValueError(f"how must be 'confidence' or 'random', got {how!r}")
    n = len(ids)
    m = int(math.floor(fraction * n + 0.5))
    if how == "confidence":
        pos = confidence(lm, ids, n_out).argsort(stable=True)[:m]
    else:
        pos = torch.randperm(n, generator=generator)[:m]
    x = torch.tensor([ids])
    x[0, pos] = lm.process.mask_id
    x[0, pos] = _logits(lm, x, n_out)[0, pos].argmax(-1)
    return x[0].tolist(), sorted(pos.tolist())


# ---------------------------------------------------------------------------------------------
# the measurement
# ---------------------------------------------------------------------------------------------
def score(lines: list, noisy: list, repaired: list, decode: Callable, examples: int = 3) -> dict:
    before = [levenshtein(y, x) / len(x) for x, y in zip(lines, noisy)]
    after = [levenshtein(z, x) / len(x) for x, z in zip(lines, repaired)]
    (bm, bs), (am, as_) = mean_se(before), mean_se(after)
    dm, ds = mean_se([a - b for b, a in zip(before, after)])  # after - before: < 0 is a repair
    return {
        "edit_before": bm, "edit_before_stderr": bs, "edit_after": am, "edit_after_stderr": as_,
        "delta": dm, "delta_stderr": ds,
        "improved": sum(a < b for b, a in zip(before, after)),
        "worsened": sum(a > b for b, a in zip(before, after)),
        "exact": sum(z == x for x, z in zip(lines, repaired)),
        "examples": [{"original": decode(x), "corrupted": decode(y), "repaired": decode(z)}
                     for x, y, z in [t for t in zip(lines, noisy, repaired) if t[0] != t[1]][:examples]],
    }


METHODS = ("lad_refine", "mdlm_remask", "mdlm_random", "lad_remask")


def run(lad, mdlm, lines: list, levels=LEVELS, n_out: Optional[int] = None, iterations: int = 16,
        decode: Callable = str, seed: int = 0, methods=METHODS) -> dict:
    """Every method at every level on the same corrupted lines; `lad` / `mdlm` are DiffusionLMs."""
    n_out = n_out or lad.process.vocab_size
    out = {}
    for level in levels:
        p_max = calibrate(lines, level, lad.process.vocab_size, seed)
        noisy = corrupt(lines, p_max, lad.process.vocab_size, seed)
        ch = mean_se(changed_fraction(lines, noisy))
        res = {"p_max": p_max, "changed": ch[0], "changed_stderr": ch[1], "lines": len(lines),
               "uncorrupted": sum(x == y for x, y in zip(lines, noisy))}
        g = torch.Generator().manual_seed(seed)
        for name in methods:
            t0 = time.perf_counter()
            if name == "lad_refine":
                done = [refine(lad, y, n_out, iterations) for y in noisy]
                fixed, calls = [d[0] for d in done], [d[1] for d in done]
            else:
                lm = lad if name == "lad_remask" else mdlm
                how = "random" if name == "mdlm_random" else "confidence"
                fixed, calls = [remask_fill(lm, y, n_out, level, how, g)[0] for y in noisy], None
            res[name] = score(lines, noisy, fixed, decode)
            res[name]["mean_calls"] = sum(calls) / len(calls) if calls else None
            res[name]["seconds"] = time.perf_counter() - t0
        out[f"{level:.2f}"] = res
    return out


def table(results: dict) -> str:
    rows = ["| corruption (changed chars) | method | edit dist. before | after | after - before | improved / worsened / exact |",
            "|---|---|---:|---:|---:|---|"]
    for level, res in results.items():
        for name in METHODS:
            if name not in res:
                continue
            r = res[name]
            rows.append(
                f"| {float(level):.0%} target ({res['changed']:.3f} +- {res['changed_stderr']:.3f}, p_max {res['p_max']:.3f}) "
                f"| {name} | {r['edit_before']:.4f} +- {r['edit_before_stderr']:.4f} | {r['edit_after']:.4f} +- "
                f"{r['edit_after_stderr']:.4f} | {r['delta']:+.4f} +- {r['delta_stderr']:.4f} | "
                f"{r['improved']} / {r['worsened']} / {r['exact']} of {res['lines']} ({res['uncorrupted']} uncorrupted) |")
    return "\n".join(rows)


def plot(results: dict, path: Path) -> None:
    """Edit distance before (hatched) and after each method, per corruption level, with s.e. bars."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    levels = list(results)
    fig, ax = plt.subplots(figsize=(7, 3.6))
    width = 0.8 / (len(METHODS) + 1)
    for k, level in enumerate(levels):
        res = results[level]
        first = res[METHODS[0]]
        ax.bar(k, first["edit_before"], width, yerr=first["edit_before_stderr"], color="lightgrey", hatch="//",
               label="corrupted (before)" if k == 0 else None)
        for j, name in enumerate(METHODS, 1):
            r = res[name]
            ax.bar(k + j * width, r["edit_after"], width, yerr=r["edit_after_stderr"], color=f"C{j - 1}",
                   label=name if k == 0 else None)
    ax.set_xticks([k + 0.4 - width / 2 for k in range(len(levels))])
    ax.set_xticklabels([f"{float(v):.0%} changed" for v in levels])
    ax.set_ylabel("edit distance / length")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def over_seeds(per_seed: dict) -> str:
    """Markdown: each (level, method)'s edit distance after, and after - before, mean +- s.e. over
    the training seeds; per_seed: {seed: run()'s results}."""
    from diffusionlm.eval.stats import seed_summary

    seeds = sorted(per_seed)
    first = per_seed[seeds[0]]
    rows = [f"Over {len(seeds)} training seeds ({', '.join(map(str, seeds))}): mean +- standard error over the seeds "
            "of the per-seed means (each over the same corrupted lines).", "",
            "| corruption (changed chars) | method | edit dist. before | after | after - before | per seed (after - before) |",
            "|---|---|---:|---:|---:|---|"]
    for level, res in first.items():
        for name in METHODS:
            if name not in res:
                continue
            after = seed_summary([per_seed[s][level][name]["edit_after"] for s in seeds])
            delta = seed_summary([per_seed[s][level][name]["delta"] for s in seeds])
            se = (lambda x: "" if x is None else f" +- {x:.4f}")
            rows.append(f"| {float(level):.0%} target ({res['changed']:.3f}) | {name} | {res[name]['edit_before']:.4f} | "
                        f"{after['mean']:.4f}{se(after['se'])} | {delta['mean']:+.4f}{se(delta['se'])} | "
                        + ", ".join(f"{per_seed[s][level][name]['delta']:+.4f} +- {per_seed[s][level][name]['delta_stderr']:.4f}"
                                    for s in seeds) + " |")
    return "\n".join(rows)


def _one(args, models: Path, out: Path, argv) -> dict:
    """self_correct.{json,md,png} in `out` for the lad / mdlm models in `models`; returns the results."""
    from diffusionlm.io.hub import load_model

    lad, mdlm = (load_model(models / k) for k in ("lad", "mdlm"))
    tok = lad.tokenizer
    lines = validation_lines(tok, args.lines)
    t0 = time.perf_counter()
    results = run(lad.lm, mdlm.lm, lines, n_out=len(tok.chars), iterations=args.iterations, decode=tok.decode, seed=args.seed)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"command": "python experiments/05_lad/self_correct.py " + " ".join(argv if argv is not None else sys.argv[1:]),
            "models": str(models), "lines": len(lines), "iterations": args.iterations, "seed": args.seed,
            "seconds": round(time.perf_counter() - t0, 1)}
    (out / "self_correct.json").write_text(json.dumps({"meta": meta, "results": results}, indent=1) + "\n")
    plot(results, out / "self_correct.png")
    md = table(results)
    ex = []
    for level, res in results.items():
        for name in ("lad_refine", "mdlm_remask"):
            for e in res[name]["examples"]:
                shown = [e[k].replace("\n", "\\n") for k in ("original", "corrupted", "repaired")]  # one line each
                ex.append(f"- {level} {name}: `{shown[0]}` -> `{shown[1]}` -> `{shown[2]}`")
    (out / "self_correct.md").write_text(md + "\n\nExamples (original -> corrupted -> repaired):\n\n" + "\n".join(ex) + "\n")
    print(md)
    print("\n".join(ex))
    return results


def _done(args, models: Path, out: Path) -> Optional[dict]:
    """With --resume: the results in out/self_correct.json when they were measured with these
    models, lines, iterations and corruption seed (else None: measure)."""
    path = out / "self_correct.json"
    if not args.resume or not path.is_file():
        return None
    done = json.loads(path.read_text())
    meta = done.get("meta", {})
    same = (meta.get("models"), meta.get("lines"), meta.get("iterations"), meta.get("seed")) == (
        str(models), args.lines, args.iterations, args.seed)
    return done["results"] if same else None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--lines", type=int, default=200, help="K validation lines (default 200)")
    ap.add_argument("--iterations", type=int, default=16, help="max greedy refinement calls (default 16)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--models", default=str(HERE / "run" / "models"),
                    help="folder with lad/ and mdlm/ (with --seeds: the compare output holding seed-S/models/)")
    ap.add_argument("--seeds", type=int, nargs="+", help="training seeds: MODELS/seed-S/models, one output folder each")
    ap.add_argument("--out", default=str(HERE / "run"), help="where self_correct.json / .md / .png go")
    ap.add_argument("--resume", action="store_true",
                    help="with --seeds: read a seed's self_correct.json measured with the same models, lines, iterations and seed")
    args = ap.parse_args(argv)
    if args.lines < 2:
        raise SystemExit(f"--lines must be >= 2 (a standard error needs two), got {args.lines}")
    if args.iterations < 1:
        raise SystemExit(f"--iterations must be >= 1, got {args.iterations}")
    if not args.seeds:
        _one(args, Path(args.models), Path(args.out), argv)
        return 0
    per_seed = {s: _done(args, Path(args.models) / f"seed-{s}" / "models", Path(args.out) / f"seed-{s}")
                or _one(args, Path(args.models) / f"seed-{s}" / "models", Path(args.out) / f"seed-{s}", argv) for s in args.seeds}
    text = over_seeds(per_seed)
    (Path(args.out) / "seeds.md").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
