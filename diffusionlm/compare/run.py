"""The comparison's run: train every variant on equal steps and tokens, measure the likelihood
bound, sample and judge (the job itself: `compare`); the spec is diffusionlm.compare.spec, the
report diffusionlm.compare.report."""
from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any, Optional

import torch
import transformers
from tqdm.auto import tqdm

from ..config import DataSpec, RunConfig
from ..data import BatchStream, TokenBlocks, load_corpus, load_tokenizer
from ..eval.bound import corpus_bound
from ..eval.causal import causal_nll
from ..eval.diversity import distinct_n, unigram_entropy
from ..eval.generative import generative_perplexity, load_judge
from ..eval.stats import sample_bootstrap, sampling_seed_table, seed_and_paired_tables
from ..lm import DiffusionLM
from ..models import DiffusionTransformer
from ..training import TrainConfig, Trainer
from .report import markdown_table, plot, plot_seeds
from .spec import CompareConfig, Variant, _Entry, _judge_variant, _resolve, _shared, _variants, default_spec, load_spec


# ---------------------------------------------------------------------------------------------
# training
# ---------------------------------------------------------------------------------------------
class _CountingStream:
    """A batch stream that counts the tokens it hands out and hashes them (equal streams, equal
    digests: the record that every variant saw the same tokens)."""

    def __init__(self, stream: Any):
        self.stream, self.tokens, self._sha = stream, 0, hashlib.sha1()

    def __iter__(self):
        return self

    def __next__(self):
        batch = next(self.stream)
        ids = batch["input_ids"] if isinstance(batch, dict) else batch
        self.tokens += int(ids.numel())
        self._sha.update(ids.to(torch.int64).cpu().numpy().tobytes())
        return batch

    @property
    def digest(self) -> str:
        return self._sha.hexdigest()

    def state_dict(self):
        return self.stream.state_dict()

    def load_state_dict(self, s):
        self.stream.load_state_dict(s)


def _build_lm(cfg: CompareConfig, entry: _Entry) -> Any:
    lm = entry.variant.lm
    if lm is not None and entry.variant.model is None and isinstance(lm.model, DiffusionTransformer):
        torch.manual_seed(entry.seed)  # the weights the spec of this composition gets (Variant.lm)
        fresh = DiffusionLM.from_dict(lm.to_dict())
        with torch.no_grad():
            lm.model.load_state_dict(fresh.model.state_dict())
    if lm is not None:
        return lm
    torch.manual_seed(entry.seed)
    return DiffusionLM.from_dict(entry.composition)


def _trainer(cfg: CompareConfig, entry: _Entry, train_blocks: Any, steps: int, lm: Any = None):
    lm = _build_lm(cfg, entry) if lm is None else lm
    stream = _CountingStream(BatchStream(train_blocks, cfg.batch_size, seed=entry.seed))
    train = {"lr": cfg.lr, "lr_schedule": cfg.lr_schedule, "clip": 1.0, **cfg.train, **entry.variant.train}
    tcfg = TrainConfig(steps=steps, batch_size=cfg.batch_size, seed=entry.seed, progress=False, **train)
    trainer = Trainer(lm, tcfg, stream, device=cfg.device)
    if cfg.min_lr is not None:  # cosine from lr down to min_lr (not 0) after the warmup
        get_scheduler = transformers.get_scheduler  # transformers loads these on first use

        trainer.scheduler = get_scheduler("cosine_with_min_lr", trainer.optimizer, num_warmup_steps=tcfg.warmup_steps,
                                          num_training_steps=steps, scheduler_specific_kwargs={"min_lr": cfg.min_lr})
    return lm, trainer, stream


def _probe(cfg: CompareConfig, entry: _Entry, train_blocks: Any) -> float:
    """Seconds per optimizer step of a throwaway copy of the entry's model (after one warm-up step)."""
    lm = _build_lm(cfg, entry)
    if entry.variant.lm is not None:
        lm = copy.deepcopy(lm)  # the given model stays untrained
    _, trainer, _ = _trainer(cfg, entry, train_blocks, cfg.probe_steps + 1, lm=lm)
    trainer.train_step()
    t0 = time.perf_counter()
    for _ in range(cfg.probe_steps):
        trainer.train_step()
    return (time.perf_counter() - t0) / cfg.probe_steps


def size_steps(step_seconds: dict, budget_seconds: float) -> int:
    """S = floor(budget / sum of the per-step seconds): every model trains S steps and the sum
    fits the budget. ValueError when not even one step each fits."""
    total = sum(step_seconds.values())
    steps = int(budget_seconds // total) if total > 0 else 0
    if steps < 1:
        each = ", ".join(f"{k} {v:.2f} s" for k, v in step_seconds.items())
        raise ValueError(f"a budget of {budget_seconds / 60:.3g} min is too small for one training step of every "
                         f"model ({each}; {total:.2f} s in all): give at least --budget-minutes {total / 60:.2g} "
                         "or --train-steps N")
    return steps


def train_variant(cfg: CompareConfig, variant: "Variant | str", tok: Any, train_blocks: Any,
                  steps: Optional[int] = None, seed: Optional[int] = None) -> tuple:
    """Train one variant (a Variant or a default-spec variant's name) for `steps` optimizer steps
    (default cfg.train_steps); returns its DiffusionLM and what the results record."""
    if isinstance(variant, str):
        variant = _variants(default_spec(), [variant])[0]
    steps = cfg.train_steps if steps is None else steps
    if steps is None:
        raise ValueError("train_variant needs the number of steps (cfg.train_steps is None: sized by a budget)")
    entry = _resolve(cfg, variant, tok, cfg.seed if seed is None else seed)
    return _train(cfg, entry, train_blocks, steps)


def _train(cfg: CompareConfig, entry: _Entry, train_blocks: Any, steps: int) -> tuple:
    lm, trainer, stream = _trainer(cfg, entry, train_blocks, steps)
    bar = _bar(steps, f"train {entry.name}", cfg.progress)
    losses = []
    t0 = time.perf_counter()
    for _ in range(steps):
        m = trainer.train_step()
        losses.append(m["loss"])
        bar.update(1)
        bar.set_postfix(loss=f"{m['loss']:.3f}")
    seconds = time.perf_counter() - t0
    bar.close()
    lm.model.eval()
    tail = losses[-10:]
    info = {"label": entry.variant.label or entry.name, "composition": lm.to_dict(),
            "train_overrides": entry.variant.train, "seed": entry.seed, "train_steps": trainer.step,
            "train_tokens": stream.tokens, "train_tokens_sha1": stream.digest, "train_seconds": seconds,
            "final_loss": sum(tail) / len(tail), "params": sum(p.numel() for p in lm.model.parameters())}
    return lm, info


def _evaluated_only_info(entry: _Entry) -> dict:
    """What the results record of an already-trained variant (field 'model'): not trained here."""

    lm = entry.variant.lm
    lm.model.eval()
    return {"label": entry.variant.label or entry.name, "composition": lm.to_dict(),
            "evaluated_only": True, "model_path": entry.variant.model, "train_overrides": {}, "seed": entry.seed,
            "train_steps": 0, "train_tokens": 0, "train_tokens_sha1": "-", "train_seconds": 0.0,
            "final_loss": None, "params": sum(p.numel() for p in lm.model.parameters())}


def save_variant(path: Path, cfg: CompareConfig, name: str, lm: Any, training: Optional[dict] = None) -> None:
    """Write a trained variant that `diffusionlm sample / eval / demo --model` load: for our
    transformer a run directory (run.json recording the steps and batch it trained + model/, a
    saved composition carrying the `training` facts, which `load_run` reads), for any other
    backbone a saved composition (`DiffusionLM.save_pretrained`, with `training` facts)."""
    path = Path(path)
    if not isinstance(lm.model, DiffusionTransformer):
        lm.save_pretrained(path, tokenizer=load_tokenizer(cfg.tokenizer), training=training)
        return
    path.mkdir(parents=True, exist_ok=True)
    trained = training or {}
    run = RunConfig(composition=lm.to_dict(),
                    data=DataSpec(corpus=cfg.corpus, tokenizer=cfg.tokenizer, length=cfg.length),
                    train=TrainConfig(**{**cfg.train, "steps": trained.get("steps") or 1,
                                         "batch_size": trained.get("batch_size") or cfg.batch_size, "seed": cfg.seed}))
    lm.save_pretrained(path / "model", tokenizer=load_tokenizer(cfg.tokenizer), training=training)
    (path / "run.json").write_text(json.dumps({**run.to_dict(), "_comment": f"diffusionlm compare variant {name}"}, indent=2))


# ---------------------------------------------------------------------------------------------
# evaluation
# ---------------------------------------------------------------------------------------------
def _enumerable_exact(lm: Any, d: int) -> Optional[int]:
    """T when the bound is exact with every step evaluated once (levels only 0 / 1 and a
    process that moves a token deterministically between them, e.g. Absorb + Quench), else None:
    then the estimator is given M = T (the bound itself, stderr 0)."""
    if lm.schedule.continuous:
        return None
    table = lm.schedule.table(d)
    if not bool(((table == 0) | (table == 1)).all()):
        return None
    p_mask, p_sub = lm.process.event_probs(torch.zeros((), dtype=torch.float64), torch.ones((), dtype=torch.float64))
    if float(p_sub) != 0.0 or float(p_mask) not in (0.0, 1.0):
        return None
    return table.shape[0] - 1


@torch.no_grad()
def _likelihood(lm: Any, test_ids: torch.Tensor, cfg: CompareConfig) -> dict:
    """The NLL bound of the test blocks, in nats / token, through the one estimator
    (`diffusionlm.eval.bound.corpus_bound`): its stderr (valid for its draws), the PPL interval
    exp(nats -+ stderr), the dominant terms on their own lines. M = cfg.eval_samples evaluations
    per row, or every step (M = T) where the bound is then exact (`_enumerable_exact`: AR)."""
    if not lm.process.likelihood:
        return {"nll_per_token": None, "stderr_per_token": None, "ppl": None, "ppl_low": None, "ppl_high": None,
                "tokens": int(test_ids.numel()), "method": f"none: {type(lm.process).__name__} declares no likelihood",
                "terms": {}}
    # an autoregressive composition: corpus_bound takes its exact one-forward path (eval.causal)
    T = _enumerable_exact(lm, test_ids.shape[1])
    res = corpus_bound(lm, test_ids, num_samples=T or cfg.eval_samples, batch_size=cfg.eval_batch_size,
                       seed=cfg.seed + 17)
    keys = ("nll_per_token", "stderr_per_token", "ppl", "ppl_low", "ppl_high", "tokens", "method", "terms", "row_nll",
            "row_tokens")
    return {k: res[k] for k in keys}


@torch.no_grad()
def ar_judge_nll(lm_ar: Any, tokens: torch.Tensor, start: int = 0) -> tuple[float, int]:
    """Total NLL and token count of `tokens` [S, d] under an AR composition (Absorb + Quench,
    SHIFTED): one causal forward over [BOS, x[:-1]] (equal to its Quench bound, see tests/test_lm.py).
    With `start` = P, only positions P.. are scored, each given everything before it: the NLL of a
    continuation given its P-token prompt."""
    S, d = tokens.shape
    if not 0 <= start < d:
        raise ValueError(f"start {start} must lie in [0, {d}) for sequences of {d} tokens")
    nll, _ = causal_nll(lm_ar, tokens, torch.arange(d, device=tokens.device)[None].expand(S, d) >= start)
    return float(nll.sum()), S * (d - start)


def _judge_fn(cfg: CompareConfig, judge_lm: Any, tok: Any):
    """tokens [S, d] -> (total NLL, tokens) under the judge, and the judge's name for the table."""
    if cfg.judge["name"] == "none":
        return None, "none (no generative PPL)"
    if cfg.judge["name"] == "trained_ar":
        return (lambda toks: ar_judge_nll(judge_lm, toks),
                f"an AR model (Absorb+Quench, shifted) trained like the variants with seed {cfg.judge['seed']}")
    return causal_lm_judge(cfg.judge["path"], tok), f"the causal LM {cfg.judge['path']}"


def causal_lm_judge(path: str, tok: Any):
    """tokens [S, d] (ids of `tok`) -> (total NLL, tokens) under the causal LM at `path` (any model
    `eval.generative.load_judge` reads), which re-tokenizes the decoded text with its own tokenizer."""
    model, jtok = load_judge(path)

    def judge(toks):
        r = generative_perplexity([tok.decode(row.tolist()) for row in toks], model, jtok)
        return r["nll"] * r["tokens"], r["tokens"]  # its "nll" is per token; the judge returns the total

    return judge


def _sampling(cfg: CompareConfig, entry: _Entry, lm: Any, judge, tok: Any) -> list:
    rows = []
    N = lm.process.vocab_size
    for label, sampler, steps in entry.runs:
        g = torch.Generator().manual_seed(cfg.seed + 29)
        t0 = time.perf_counter()
        s = sampler.sample(lm, batch_size=cfg.num_samples, length=cfg.length, generator=g)
        secs = (time.perf_counter() - t0) / cfg.num_samples
        toks = s.tokens
        if bool((toks >= N).any()):
            raise RuntimeError(f"{entry.name} / {label} emitted ids outside the vocabulary (MASK?)")
        per = [judge(toks[i : i + 1]) for i in range(len(toks))] if judge is not None else None  # per sample: bootstrap
        nll, cnt = (sum(p[0] for p in per), sum(p[1] for p in per)) if per else (None, None)
        rows.append({"sampler": label, "sampler_spec": sampler.to_dict(), "steps": steps if steps is not None else s.num_model_calls,
                     "model_calls": s.num_model_calls, "gen_nll_per_token": None if nll is None else nll / cnt,
                     "gen_ppl": None if nll is None else math.exp(nll / cnt),
                     "entropy": unigram_entropy(toks), "distinct2": distinct_n(toks, 2), "seconds_per_sample": secs,
                     "example": tok.decode(toks[0].tolist())[:200], **sample_bootstrap(toks.tolist(), per)})
    return rows


def _bar(total, desc, enabled):
    return tqdm(total=total, desc=desc, disable=not enabled, dynamic_ncols=True, leave=False)


# ---------------------------------------------------------------------------------------------
# the job
# ---------------------------------------------------------------------------------------------
def _data(cfg: CompareConfig, tok: Any) -> tuple:
    """The training blocks and the test rows of the corpus; too few of either is one line."""
    train_blocks = TokenBlocks(load_corpus(cfg.corpus, "train"), tok, cfg.length)
    test_blocks = TokenBlocks(load_corpus(cfg.corpus, "test"), tok, cfg.length)
    if len(test_blocks.ids) < cfg.eval_blocks:
        raise ValueError(f"the {cfg.corpus} test split holds {len(test_blocks.ids)} blocks of {cfg.length} tokens; "
                         f"eval_blocks (--eval-blocks) is {cfg.eval_blocks}")
    if len(train_blocks.ids) < cfg.batch_size:
        raise ValueError(f"the {cfg.corpus} train split holds {len(train_blocks.ids)} blocks, fewer than one batch ({cfg.batch_size})")
    return train_blocks, test_blocks.ids[: cfg.eval_blocks]


def _sizing(cfg: CompareConfig, models: list, train_blocks: Any) -> tuple:
    """(steps, what the results record of them): the spec's steps, or the budget turned into one
    number of steps for every model from a few timed steps of each, before anything trains."""
    sizing: dict = {"train_steps_given": cfg.train_steps}
    if cfg.budget_minutes is not None:
        per_step = {e.name: _probe(cfg, e, train_blocks) for e in models if e.variant.model is None}
        steps = size_steps(per_step, cfg.budget_minutes * 60)
        sizing.update({"budget_minutes": cfg.budget_minutes, "probe_steps": cfg.probe_steps,
                       "seconds_per_step": per_step, "seconds_per_step_sum": sum(per_step.values()),
                       "planned_train_seconds": steps * sum(per_step.values())})
        if cfg.progress:
            print(f"compare: {steps} steps per model (budget {cfg.budget_minutes} min; seconds per step: "
                  + ", ".join(f"{k} {v:.3f}" for k, v in per_step.items()) + ")", file=sys.stderr, flush=True)
    else:
        steps = cfg.train_steps
    sizing["train_steps"] = steps
    return steps, sizing


def compare(spec: "str | Path | dict | CompareConfig | None" = None, *, variants: Optional[list] = None,
            reuse: bool = False, **shared: Any) -> dict:
    """Run a comparison (module docstring). `spec`: a spec file or dict (default: the default
    spec), or a CompareConfig (the shared settings; variants from the default spec unless given);
    `variants`: replaces the spec's variants (specs, DiffusionLM objects, default-spec names);
    `reuse`: return out_dir's results.json when it recorded this very job (`_finished`: seeds run
    one at a time, or resumed); `shared`: overrides of the shared settings (e.g. out_dir=...).
    Everything is checked before anything trains."""
    t_start = time.perf_counter()
    machine = _machine()
    if isinstance(spec, CompareConfig):
        shared = {**spec.to_dict(), **shared}
        spec = None
    spec = load_spec(spec)
    cfg = _shared(spec, shared)
    if cfg.seeds:
        return _over_seeds(spec, variants, cfg, reuse)
    vs = _variants(spec, variants)
    tok = load_tokenizer(cfg.tokenizer)
    entries = [_resolve(cfg, v, tok, cfg.seed) for v in vs]
    judge_entry = None
    if cfg.judge["name"] == "trained_ar":
        judge_entry = _resolve(cfg, _judge_variant(), tok, cfg.judge["seed"], is_judge=True)
    record = {"shared": _jsonable(cfg.to_dict()), "variants": [_variant_record(e) for e in entries]}
    done = _finished(Path(cfg.out_dir), record) if reuse else None
    if done is not None:
        return done
    train_blocks, test_ids = _data(cfg, tok)
    models = entries + ([judge_entry] if judge_entry else [])
    steps, sizing = _sizing(cfg, models, train_blocks)  # the number of steps, before training
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    results: dict = {
        "spec": record,
        "data": {"corpus": cfg.corpus, "tokenizer": cfg.tokenizer, "vocab_size": tok.vocab_size,
                 "train_blocks": len(train_blocks.ids), "test_blocks_used": len(test_ids),
                 "test_tokens": int(test_ids.numel()), "length": cfg.length},
        "machine": machine,
        "fairness": {**sizing, "batch_size": cfg.batch_size, "seed": cfg.seed,
                     "tokens_per_model": steps * cfg.batch_size * cfg.length},
        "variants": {},
    }
    # -- train ------------------------------------------------------------------------
    lms: dict = {}
    for e in entries:
        if e.variant.model is not None:  # already trained: evaluated only
            lms[e.name] = e.variant.lm
            results["variants"][e.name] = _evaluated_only_info(e)
            continue
        lm, info = _train(cfg, e, train_blocks, steps)
        lms[e.name] = lm
        results["variants"][e.name] = info
        save_variant(out / "models" / e.name, cfg, e.name, lm, training={
            "data": {"corpus": cfg.corpus, "tokenizer": cfg.tokenizer, "length": cfg.length}, "steps": steps,
            "tokens": info["train_tokens"], "batch_size": cfg.batch_size, "seconds": round(info["train_seconds"], 1)})
    judge_lm = None
    if judge_entry is not None:
        judge_lm, judge_info = _train(cfg, judge_entry, train_blocks, steps)
        nll, n = ar_judge_nll(judge_lm, test_ids)
        judge_info["likelihood"] = {"nll_per_token": nll / n, "stderr_per_token": 0.0, "ppl": math.exp(nll / n),
                                    "ppl_low": math.exp(nll / n), "ppl_high": math.exp(nll / n), "tokens": n,
                                    "method": "exact: causal NLL, one forward (its Quench bound)", "terms": {}}
        results["judge_model"] = judge_info
    judge, judge_name = _judge_fn(cfg, judge_lm, tok)
    results["judge"] = judge_name
    # -- likelihood, samples ---------------------------------------------------------------
    bar = _bar(len(entries), "bound and samples", cfg.progress)
    for e in entries:
        r = results["variants"][e.name]
        r["likelihood"] = _likelihood(lms[e.name], test_ids, cfg)
        r["sampling"] = _sampling(cfg, e, lms[e.name], judge, tok)
        bar.update(1)
    bar.close()
    results["reference"] = _reference(test_ids[: cfg.num_samples], judge)
    results["wall_seconds"] = time.perf_counter() - t_start
    (out / "results.json").write_text(json.dumps(results, indent=2))
    (out / "results.md").write_text(markdown_table(results))
    # the files of this run (not results.json's content: the plots are drawn from it)
    results["written"] = ["results.json", "results.md"] + plot(results, out)
    return results


def _reference(ref: torch.Tensor, judge) -> dict:
    """Real text (the first test blocks) under the judge, and its diversity: the samples' yardstick."""
    nll, cnt = judge(ref) if judge is not None else (None, None)
    return {"what": f"the first {len(ref)} test blocks (real text) under the judge",
            "gen_ppl": None if nll is None else math.exp(nll / cnt), "entropy": unigram_entropy(ref), "distinct2": distinct_n(ref, 2)}


def _finished(out: Path, record: dict) -> Optional[dict]:
    """The results.json in `out` when it recorded this very job (`record`: the shared settings
    and the variants, "progress" aside), else None."""
    path = out / "results.json"
    if not path.is_file():
        return None
    try:
        done = json.loads(path.read_text())
    except ValueError:
        return None

    def same(rec: dict) -> dict:
        rec = json.loads(json.dumps(rec))
        rec.get("shared", {}).pop("progress", None)
        return rec

    if not isinstance(done, dict) or same(done.get("spec") or {}) != same(record):
        return None
    print(f"compare: {out} already holds this job's results.json: read, not re-run (delete it to re-run)",
          file=sys.stderr, flush=True)
    return {**done, "written": [], "reused": True}


def _over_seeds(spec: dict, variants: Optional[list], cfg: CompareConfig, reuse: bool = False) -> dict:
    """The job once per training seed (out_dir/seed-S; with `reuse` a seed whose folder holds
    this job's results is read, not re-run), then the seed and paired tables (eval.stats) in
    seeds.md and the seed plots (report.plot_seeds)."""
    runs = {s: compare(spec, variants=variants, reuse=reuse, **{**cfg.to_dict(), "seeds": None, "seed": s,
                                                                "out_dir": str(Path(cfg.out_dir) / f"seed-{s}")})
            for s in cfg.seeds}
    by_seed = {s: {n: v["likelihood"] for n, v in r["variants"].items() if "likelihood" in v} for s, r in runs.items()}
    samples = {s: {n: v["sampling"] for n, v in r["variants"].items() if "sampling" in v} for s, r in runs.items()}
    text = seed_and_paired_tables(by_seed) + "\n\nSamples, over the seeds:\n\n" + sampling_seed_table(samples)
    Path(cfg.out_dir, "seeds.md").write_text(text + "\n")
    return {"seeds": cfg.seeds, "runs": {s: str(Path(cfg.out_dir) / f"seed-{s}") for s in cfg.seeds}, "tables": text,
            "out_dir": cfg.out_dir, "written": ["seeds.md"] + plot_seeds(by_seed, samples, Path(cfg.out_dir))}


def _machine() -> dict:
    """What the timings were measured on: CPU count, torch threads, load average at the start."""
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "platform": platform.platform(),
            "load_average_1_5_15_min": None if load is None else [round(x, 2) for x in load]}


def _variant_record(e: _Entry) -> dict:
    v = e.variant
    return {"name": v.name, "label": v.label, "composition": e.composition, "train": v.train, "model": v.model,
            "samplers": [r[1].to_dict() for r in e.runs]}


def _jsonable(x):
    if isinstance(x, tuple):
        return list(x)
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    return x
