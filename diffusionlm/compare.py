"""The main job: train, evaluate and compare AR and diffusion variants on equal footing.

    diffusionlm compare                       # defaults: offline stdlib corpus, `tiny`, < 10 min on 2 CPU cores
    diffusionlm compare --budget-minutes 30 --preset gpt2-small --corpus tinyshakespeare

The same backbone (preset, width, depth, tokenizer, data, batch, length, seed) is trained as

    ar       Absorb + Quench, SHIFTED, two-halves   sampled by AR (KV cache)
    mdlm     Absorb + Flat (continuous time)   sampled by MDLM
    block    Absorb + Block(16, 4), two-halves sampled by MDLM (KV cache)
    gamma    GammaHybrid(0.05) + Flat, time-conditioned          sampled by SEDD analytic
    epsilon  EpsilonHybrid(0.01, 1) + Flat(T)  sampled by ACS(eta = 0.05)

for the same number of optimizer steps each (the same tokens; a time budget caps the total and
the table reports the steps actually taken), then evaluated on the test split:

    NLL bound / PPL   the composition's Monte-Carlo bound (M draws, seeded) over every token of the
                      test blocks; exact for ar (Quench, M = T is not needed: one causal forward
                      computes the same sum, proven in the tests)
    gen PPL           token-weighted exp(mean NLL) of the samples under the judge: by default the
                      trained ar variant (its exact causal log-likelihood), or any HF causal LM
                      (`--judge DIR`) through diffusionlm.eval.generative
    entropy, distinct-2   of the samples' ids (diffusionlm.eval.diversity)
    seconds / sample  wall time of sampling divided by the number of samples

at each number of sampling steps in `steps` (quality against steps). Writes results.json, a
Markdown table (results.md), plots (ppl.png, genppl_vs_entropy.png, quality_vs_steps.png) and
each trained variant as a run directory, models/<variant>/ (run.json + model/), which
`diffusionlm sample / eval --run` and `diffusionlm demo --model` load.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch

__all__ = ["CompareConfig", "VARIANTS", "compare"]


@dataclass
class CompareConfig:
    corpus: str = "stdlib"
    tokenizer: str = "byte"
    preset: str = "tiny"
    length: int = 128
    batch_size: int = 16
    lr: float = 1e-3
    train_steps: int = 150  # per variant: every variant sees the same tokens (reproducible)
    budget_minutes: Optional[float] = 8.0  # cap on total training time, shared equally (None: no cap)
    eval_blocks: int = 32
    eval_samples: int = 4  # M, Monte-Carlo draws of the bound per sequence
    num_samples: int = 16  # generated sequences per (variant, steps)
    steps: tuple = (16, 64)  # sampling steps for the diffusion variants (quality vs steps)
    variants: tuple = ("ar", "mdlm", "block", "gamma", "epsilon")
    judge: Optional[str] = None  # a local HF causal LM directory; default: the trained ar variant
    out_dir: str = "runs/compare"
    seed: int = 0
    device: str = "cpu"
    progress: bool = True

    def __post_init__(self) -> None:
        unknown = set(self.variants) - set(VARIANTS)
        if unknown:
            raise ValueError(f"unknown variants {sorted(unknown)}; known: {list(VARIANTS)}")
        if "ar" not in self.variants and self.judge is None:
            raise ValueError("the default judge is the ar variant: keep 'ar' in variants or give --judge")
        if self.budget_minutes is not None and self.budget_minutes <= 0:
            raise ValueError("budget_minutes must be > 0")
        if self.train_steps < 1:
            raise ValueError(f"train_steps must be >= 1, got {self.train_steps}")
        if self.eval_samples < 1:  # checked here, before any training (issue 14)
            raise ValueError(f"eval_samples (--eval-samples, M) must be >= 1, got {self.eval_samples}")
        self.steps = tuple(int(s) for s in self.steps)
        if any(s < 1 for s in self.steps):
            raise ValueError(f"sampling steps must be >= 1, got {self.steps}")


def _variant(name: str, N: int):
    """(process, training schedule, layout, two_halves, sampler factory(steps))."""
    from .processes import Absorb, EpsilonHybrid, GammaHybrid
    from .samplers import get_sampler
    from .schedules import Block, Flat, Quench

    if name == "ar":
        # two-halves under Quench supervises every position in one forward (per-sequence draws
        # would train one position per sequence per step): the usual AR training, same code path
        return Absorb(N), Quench(), "shifted", True, lambda steps: get_sampler("ar")()
    if name == "mdlm":
        return Absorb(N), Flat(), "aligned", False, lambda steps: get_sampler("mdlm")(steps=steps)
    if name == "block":
        # rate 4 tokens per step at training; sampling at `steps` retimes the same path
        return Absorb(N), Block(16, 4), "aligned", True, lambda steps: get_sampler("mdlm")(steps=steps)
    if name == "gamma":
        return GammaHybrid(N, 0.05), Flat(), "aligned", False, lambda steps: get_sampler("sedd_analytic")(steps=steps)
    if name == "epsilon":
        return (EpsilonHybrid(N, 0.01, 1.0), Flat(steps=128), "aligned", False,
                lambda steps: get_sampler("acs")(eta=0.05, steps=steps))
    raise ValueError(name)


VARIANTS = ("ar", "mdlm", "block", "gamma", "epsilon")
LABELS = {"ar": "AR (Absorb+Quench)", "mdlm": "MDLM (Absorb+Flat)", "block": "Block diffusion (Absorb+Block16)",
          "gamma": "GammaHybrid(0.05)+Flat", "epsilon": "EpsilonHybrid(0.01)+Flat, ACS"}


@torch.no_grad()
def ar_judge_nll(lm_ar, tokens: torch.Tensor) -> tuple[float, int]:
    """Total NLL and token count of `tokens` [S, d] under the ar variant: one causal forward
    over [BOS, x[:-1]] (equal to its Quench bound, see tests/test_lm.py)."""
    from .masks import causal_mask_mod, dense_mask, shift_inputs

    S, d = tokens.shape
    ids = shift_inputs(tokens, "shifted", lm_ar.bos_id)
    mask = dense_mask(causal_mask_mod(), 1, d)
    logits = lm_ar.model(ids, position_ids=torch.arange(d)[None].expand(S, d), attention_mask=mask).logits
    logp = torch.log_softmax(logits[..., : lm_ar.process.vocab_size].double(), -1)
    return float(-logp.gather(-1, tokens[..., None]).sum()), S * d


def _bar(total, desc, enabled):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, disable=not enabled, dynamic_ncols=True, leave=False)


def compare(cfg: CompareConfig) -> dict:
    from .data import TokenBlocks, load_corpus, load_tokenizer
    from .eval.diversity import distinct_n, unigram_entropy

    t_start = time.perf_counter()
    torch.manual_seed(cfg.seed)
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok = load_tokenizer(cfg.tokenizer)
    N = tok.vocab_size
    train_blocks = TokenBlocks(load_corpus(cfg.corpus, "train"), tok, cfg.length)
    test_blocks = TokenBlocks(load_corpus(cfg.corpus, "test"), tok, cfg.length)
    test_ids = test_blocks.ids[: cfg.eval_blocks]
    if len(test_ids) == 0:
        raise ValueError(f"the {cfg.corpus} test split holds no block of {cfg.length} tokens")
    per_variant = float("inf") if cfg.budget_minutes is None else cfg.budget_minutes * 60 / len(cfg.variants)
    results: dict[str, Any] = {"config": _jsonable(asdict(cfg)), "data": {
        "corpus": cfg.corpus, "tokenizer": cfg.tokenizer, "vocab_size": N, "train_blocks": len(train_blocks.ids),
        "test_blocks_used": len(test_ids), "test_tokens": int(test_ids.numel())}, "variants": {}}
    lms: dict[str, Any] = {}
    # -- train ------------------------------------------------------------------------
    for name in cfg.variants:
        lm, info = train_variant(cfg, name, tok, train_blocks, per_variant)
        lm.model.eval()
        lms[name] = lm
        results["variants"][name] = info
        save_variant(out / "models" / name, cfg, name, lm)
    # -- likelihood -----------------------------------------------------------------------
    for name, lm in lms.items():
        g = torch.Generator().manual_seed(cfg.seed + 17)
        nll, n, var = 0.0, 0, 0.0
        bar = _bar(len(test_ids), f"bound {name}", cfg.progress)
        for i in range(0, len(test_ids), cfg.batch_size):
            x = test_ids[i : i + cfg.batch_size]
            M = x.shape[1] if name == "ar" else cfg.eval_samples  # ar: every Quench step, exact
            b = lm.nll_bound(x, num_samples=M, generator=g)
            nll += float(b.nll.sum())
            n += int(b.num_tokens.sum())
            if name != "ar":
                var += float((b.stderr**2).sum())
            bar.update(len(x))
        bar.close()
        r = results["variants"][name]
        r["nll_per_token"] = nll / n
        r["ppl_bound"] = math.exp(nll / n)
        r["bits_per_token"] = nll / n / math.log(2)
        r["nll_stderr_per_token"] = math.sqrt(var) / n
        r["bound_mc_samples"] = "exact (all T steps)" if name == "ar" else cfg.eval_samples
    # -- samples: gen PPL, entropy, speed, against steps ------------------------------------
    judge = _judge(cfg, lms)
    for name, lm in lms.items():
        _, _, _, _, make = _variant(name, N)
        rows = []
        for steps in ([cfg.length] if name == "ar" else cfg.steps):
            sampler = make(steps)
            g = torch.Generator().manual_seed(cfg.seed + 29)
            t0 = time.perf_counter()
            with torch.no_grad():
                s = sampler.sample(lm, batch_size=cfg.num_samples, length=cfg.length, generator=g)
            secs = (time.perf_counter() - t0) / cfg.num_samples
            toks = s.tokens
            if (toks >= N).any():
                raise RuntimeError(f"{name} emitted ids outside the vocabulary (MASK?)")
            nll, cnt = judge(toks)
            rows.append({"steps": steps, "gen_ppl": math.exp(nll / cnt), "entropy": unigram_entropy(toks),
                         "distinct2": distinct_n(toks, 2), "seconds_per_sample": secs, "model_calls": s.num_model_calls,
                         "example": tok.decode(toks[0].tolist())[:200]})
        results["variants"][name]["sampling"] = rows
    results["judge"] = cfg.judge or "the trained ar variant (exact causal likelihood)"
    results["wall_seconds"] = time.perf_counter() - t_start
    (out / "results.json").write_text(json.dumps(results, indent=2))
    (out / "results.md").write_text(markdown_table(results))
    plot(results, out)
    return results


def train_variant(cfg: CompareConfig, name: str, tok, train_blocks, seconds: float = float("inf")):
    """Train one variant's `tiny` (or cfg.preset) backbone for cfg.train_steps optimizer steps
    (or until `seconds` pass); returns its DiffusionLM and what the results table records."""
    from .data import BatchStream
    from .lm import DiffusionLM
    from .models import DiffusionTransformer, TransformerConfig
    from .training import TrainConfig, Trainer

    N = tok.vocab_size
    proc, schedule, layout, two_halves, _ = _variant(name, N)
    torch.manual_seed(cfg.seed)
    mcfg = TransformerConfig.preset(cfg.preset, vocab_size=proc.model_vocab_size,
                                    input_vocab_size=max(proc.model_vocab_size, N + 1),
                                    max_positions=cfg.length, time_conditioning=proc.time_conditioned)
    model = DiffusionTransformer(mcfg)
    lm = DiffusionLM(model, proc, schedule, layout=layout, bos_id=tok.bos_id)
    stream = BatchStream(train_blocks, cfg.batch_size, seed=cfg.seed)
    tcfg = TrainConfig(steps=10**7, batch_size=cfg.batch_size, lr=cfg.lr, lr_schedule="constant", clip=1.0,
                       two_halves=two_halves, seed=cfg.seed, progress=False)
    trainer = Trainer(lm, tcfg, stream, device=cfg.device)
    t0 = time.perf_counter()
    bar = _bar(cfg.train_steps, f"train {name}", cfg.progress)
    while trainer.step < cfg.train_steps and time.perf_counter() - t0 < seconds:
        m = trainer.train_step()
        bar.update(1)
        bar.set_postfix(loss=f"{m['loss']:.3f}")
    bar.close()
    info = {"label": LABELS[name], "process": proc.config(), "schedule": schedule.to_dict(),
            "layout": layout, "two_halves": two_halves, "train_steps": trainer.step,
            "train_seconds": time.perf_counter() - t0, "train_tokens": trainer.step * cfg.batch_size * cfg.length,
            "params": sum(p.numel() for p in model.parameters())}
    return lm, info


def save_variant(path: Path, cfg: CompareConfig, name: str, lm) -> None:
    """Write a trained variant as a run directory (run.json + model/) that `load_run`,
    `diffusionlm sample --run`, `diffusionlm eval --run` and `diffusionlm demo --model` read."""
    from .config import DataSpec, ModelSpec, RunConfig

    run = RunConfig(model=ModelSpec(kind="transformer", preset=cfg.preset), process=lm.process.config(),
                    schedule=lm.schedule.to_dict(), layout=lm.layout.value,
                    data=DataSpec(corpus=cfg.corpus, tokenizer=cfg.tokenizer, length=cfg.length))
    path.mkdir(parents=True, exist_ok=True)
    lm.model.save_pretrained(str(path / "model"))
    (path / "run.json").write_text(json.dumps({**run.to_dict(), "_comment": f"diffusionlm compare variant {name}"}, indent=2))


def _judge(cfg: CompareConfig, lms: dict):
    if cfg.judge is None:
        return lambda toks: ar_judge_nll(lms["ar"], toks)
    from .data import load_tokenizer
    from .eval.generative import generative_perplexity

    tok = load_tokenizer(cfg.tokenizer)

    def judge(toks):
        texts = [tok.decode(r.tolist()) for r in toks]
        r = generative_perplexity(texts, cfg.judge)
        return r["nll"], r["tokens"]

    return judge


def markdown_table(results: dict) -> str:
    lines = [
        "| variant | train steps | NLL bound / token | PPL bound | steps | gen PPL | entropy | distinct-2 | s / sample |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in results["variants"].items():
        for i, s in enumerate(r.get("sampling", [])):
            head = (f"| {r['label']} | {r['train_steps']} | {r['nll_per_token']:.4f} ± {r['nll_stderr_per_token']:.4f} | "
                    f"{r['ppl_bound']:.3f} ") if i == 0 else "| | | | "
            lines.append(head + f"| {s['steps']} | {s['gen_ppl']:.3f} | {s['entropy']:.3f} | {s['distinct2']:.3f} | {s['seconds_per_sample']:.3f} |")
    d = results["data"]
    lines.append("")
    lines.append(f"Data: {d['corpus']} ({d['tokenizer']} tokenizer, vocabulary {d['vocab_size']}); test: "
                 f"{d['test_blocks_used']} blocks, {d['test_tokens']} tokens. Judge: {results['judge']}. "
                 f"Wall time: {results['wall_seconds']:.0f} s.")
    return "\n".join(lines) + "\n"


def plot(results: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results["variants"])
    v = results["variants"]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.bar(range(len(names)), [v[n]["ppl_bound"] for n in names],
           yerr=[v[n]["ppl_bound"] * v[n]["nll_stderr_per_token"] for n in names], color="tab:blue")
    ax.set_xticks(range(len(names)), names)
    ax.set_ylabel("test PPL (upper bound)")
    ax.set_title("Likelihood per variant (lower is better)")
    fig.tight_layout()
    fig.savefig(out / "ppl.png", dpi=120)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(6, 4))
    for n in names:
        xs = [s["entropy"] for s in v[n]["sampling"]]
        ys = [s["gen_ppl"] for s in v[n]["sampling"]]
        ax.plot(xs, ys, "o-", label=n)
        for s in v[n]["sampling"]:
            ax.annotate(str(s["steps"]), (s["entropy"], s["gen_ppl"]), fontsize=7)
    ax.set_xlabel("unigram entropy of samples (nats)")
    ax.set_ylabel("generative PPL (judge)")
    ax.set_title("Generative PPL against entropy (labels: steps)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "genppl_vs_entropy.png", dpi=120)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(6, 4))
    for n in names:
        ax.plot([s["steps"] for s in v[n]["sampling"]], [s["gen_ppl"] for s in v[n]["sampling"]], "o-", label=n)
    ax.set_xscale("log")
    ax.set_xlabel("sampling steps (model calls)")
    ax.set_ylabel("generative PPL (judge)")
    ax.set_title("Quality against sampling steps")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "quality_vs_steps.png", dpi=120)
    plt.close(fig)


def _jsonable(x):
    if isinstance(x, tuple):
        return list(x)
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    return x
