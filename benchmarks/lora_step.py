"""The LoRA adaptation step of recipes/smollm2-block.json as a fraction of this machine's measured
matmul peak (issue 22, item 4), and what each removed waste is worth.

    python benchmarks/lora_step.py [--model smollm2] [--batch 8] [--length 128] [--rounds 3] \
        [--out benchmarks/out/lora_step.json] [--profile]

One step: Absorb + Block(4, 4), SHIFTED, the two-halves layout ([x_noisy ; x_clean], 2d rows),
LoRA r = 16 on every projection, AdamW on the adapters and the MASK row: the recipe's step, built
by the recipe's own config code on random ids.

Model FLOPs of a step (what any implementation must compute; matmuls only), for a Llama with
hidden E, key/value width Ekv, MLP width F, L layers, vocab V and R = 2 B d rows:
    forward   L x 2 R (E E + 2 E Ekv + E E + 3 E F)   q, k, v, o, gate, up, down projections
              + L x 4 B d (2d) E                        scores and weighted sum (every key; an upper bound
                                                        of what the block masks keep)
              + 2 B d E V                               the head over the d noisy rows (the clean half
                                                        is never scored)
    backward  the same again: activation gradients only (frozen weights need none of their own;
              LoRA's own products are under 1% and not counted)
Peak: the best of several float32 [n, n] @ [n, n] (n = 2048) in this process, same threads.
Fraction = model FLOPs / step time / peak. Variants, timed alternately in rounds (median):
    noisy_head   the head over the noisy half only (this round's code)
    full_head    the head over all 2d rows, sliced afterwards (the code before this round)
    merged_mask  noisy_head, with the frozen MASK row merged into the embedding (peft's trainable
                 tokens otherwise rebuild the 49k x 576 embedding and the tied head with index_copy
                 at every forward, two 113 MB copies, although the row never changes)
    shifted_last noisy_head under the SHIFTED_LAST layout (one reader row a block: 2 B d + B d / w
                 rows through every layer; its FLOPs count them)
    recipe_now   the recipe's step since trial 12: shifted_last with the AR anchor (train.ar_anchor
                 = 4: one more forward of the base, adapters off, no gradient, over the B d clean
                 rows with causal attention and the head at every row; its FLOPs count it)
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import matmul_peak  # noqa: E402  (benchmarks/ is a folder of scripts)




def model_flops(cfg, batch: int, d: int, readers: int = 0, anchor: bool = False) -> float:
    """The module docstring's count; ``readers`` extra rows a row (SHIFTED_LAST: d / w) go through
    every layer forward and backward; ``anchor`` adds the base's forward over the d clean rows
    (causal attention, the head at every row), which has no backward."""
    E, F, L, V = cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers, cfg.vocab_size
    Ekv = E * cfg.num_key_value_heads // cfg.num_attention_heads
    proj = 2 * E * E + 2 * E * Ekv + 3 * E * F
    R = 2 * batch * d + batch * readers
    forward = L * 2 * R * proj + L * 4 * R * (2 * d) * E / 2 + 2 * batch * d * E * V
    base = L * 2 * batch * d * proj + L * 4 * batch * d * d * E / 2 + 2 * batch * d * E * V if anchor else 0.0
    return 2 * forward + base


def build(model: str, batch: int, d: int):
    from diffusionlm.config import RunConfig
    from diffusionlm.io.runs import build as build_run
    from diffusionlm.training import TrainConfig, Trainer, seed_everything

    # the step measured since the first round: SHIFTED, no AR anchor (the recipe has moved to
    # shifted_last and the anchor since; the shifted_last variant prices the former)
    run = RunConfig.from_file(str(REPO / "recipes" / "smollm2-block.json"), [
        f"model.path={model}", f"data.length={d}", "train.curriculum=null", "train.out_dir=null", "train.progress=false",
        f"train.batch_size={batch}", "train.eval_every=0", "train.save_every=0", "composition.layout=shifted",
        "train.ar_anchor=0.0"])
    seed_everything(0)
    built = build_run(run, data=False)
    V = built.lm.process.vocab_size
    g = torch.Generator().manual_seed(0)

    class Random:
        def __next__(self):
            return torch.randint(0, V, (batch, d), generator=g)

        def state_dict(self):
            return {}

    trainer = Trainer(built.lm, run.train, Random(), None, device="cpu")
    return built.lm, trainer


def full_head(lm):
    """The code before this round: the head over all 2d rows (a forward that ignores first_logits)."""
    denoiser = lm.model
    forward = type(denoiser).forward

    class Patched(type(denoiser)):
        def forward(self, *a, first_logits=0, **k):
            return forward(self, *a, **k)

    return Patched


def token_layers(lm) -> list:
    from peft.tuners.trainable_tokens.layer import TrainableTokensLayer

    return [m for m in lm.model.modules() if isinstance(m, TrainableTokensLayer)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--length", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--profile", action="store_true", help="print the top operators of one step")
    ap.add_argument("--out", default="benchmarks/out/lora_step.json")
    args = ap.parse_args()
    from diffusionlm.masks import Layout

    lm, trainer = build(args.model, args.batch, args.length)
    recipe_layout = lm.layout  # SHIFTED, pinned in build(); shifted_last and recipe_now switch it
    cfg = lm.model.config
    flops = model_flops(cfg, args.batch, args.length)
    w = lm.schedule.width(args.length)
    own = {"shifted_last": model_flops(cfg, args.batch, args.length, readers=args.length // w),
           "recipe_now": model_flops(cfg, args.batch, args.length, readers=args.length // w, anchor=True)}
    peak = matmul_peak()
    plain_cls, patched = type(lm.model), full_head(lm)
    layers = token_layers(lm)
    frozen_row = not any(p.requires_grad for m in layers for p in m.parameters(recurse=False))

    def use(name):
        lm.model.__class__ = patched if name == "full_head" else plain_cls
        lm.layout = Layout.SHIFTED_LAST if name in ("shifted_last", "recipe_now") else recipe_layout
        trainer.config.ar_anchor = 4.0 if name == "recipe_now" else 0.0
        for m in layers:
            if name == "merged_mask" and not m.merged:
                m.merge()
            elif name != "merged_mask" and m.merged:
                m.unmerge()

    variants = ["noisy_head", "full_head", "shifted_last", "recipe_now"] + (["merged_mask"] if layers and frozen_row else [])
    trainer.train_step()  # warm-up
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU]) as prof:
            trainer.train_step()
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))
    times = {k: [] for k in variants}
    for _ in range(args.rounds):
        for name in variants:
            use(name)
            t = time.perf_counter()
            trainer.train_step()
            times[name].append(time.perf_counter() - t)
    use("noisy_head")
    rows = []
    for name, ts in times.items():
        s = statistics.median(ts)
        f = own.get(name, flops)
        rows.append({"variant": name, "step_s": s, "times": ts, "model_gflop": f / 1e9,
                     "gflop_per_s": f / s / 1e9, "fraction_of_peak": f / s / peak,
                     "tokens_per_s": args.batch * args.length / s,
                     "time_vs_noisy_head": s / statistics.median(times["noisy_head"])})
        print(f"{name:12s} {s:7.2f} s/step  {f / s / 1e9:6.1f} GFLOP/s  {f / s / peak:6.1%} of the "
              f"{peak / 1e9:.1f} GFLOP/s matmul peak  {args.batch * args.length / s:6.1f} tokens/s", flush=True)
    out = {"model": args.model, "batch": args.batch, "length": args.length, "threads": torch.get_num_threads(),
           "peak_gflop_per_s": peak / 1e9, "rows": rows, "load": os.getloadavg()}
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    sys.exit(main())
