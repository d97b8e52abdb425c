"""Sampling speed: cached vs uncached generation, beside the ideal FLOP ratio; AR vs HF generate().

    python benchmarks/sampling.py [--configs tiny:256 tiny:1024 gpt2-small:256:2] [--batch 8]

For each (preset, length d) and hyperschedule — Block(d/4), Block(16), Slide(16) (each at rate
1: Block(w) runs w steps per block) and Quench — times MDLM sampling of `batch` sequences with
the KV cache and without it, with the same seed (the tokens are identical; the tests prove it),
and the ideal FLOP ratio: the model FLOPs of every uncached step (every non-worthless row)
over those of every cached step (only the rows not yet cached), from the per-step row counts.
Then AR greedy decoding through our sampler vs Hugging Face `generate()` (greedy, KV cache)
on the same random weights (GPT-2 4 x 128, Llama 4 x 128, GPT-2 12 x 768 = gpt2-small; batch
`--batch`, 8 prompt tokens + BOS): tokens per second of each, alternating A B A B, medians, by
the CPU clock (`--clock cpu`, the default: run with OMP_NUM_THREADS=1 on a shared machine) and
the wall clock.
Targets (issue 4): cached Block(d/4) >= 2x uncached; Block(16) at d = 1024 >= 10x; AR >= 0.9x
generate(). Issue 17: AR >= 1.1x generate() on the small GPT-2 and Llama, >= 1.0x on gpt2-small.
"""
from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch

from common import CLOCKS, step_flops, write_json
from diffusionlm import masks
from diffusionlm.lm import DiffusionLM
from diffusionlm.models import DiffusionTransformer, TransformerConfig
from diffusionlm.processes import Absorb
from diffusionlm.samplers import get_sampler
from diffusionlm.schedules import Block, Quench, Slide




def ideal_ratio(schedule, d: int, cfg) -> float:
    full = fed = 0.0
    cached = 0
    for k in range(1, schedule.num_steps(d) + 1):
        cats = masks.step_categories(schedule, d, k)
        L = int((cats != masks.WORTHLESS).sum())
        s = int((cats == masks.SETTLED).sum())
        full += step_flops(L, L, cfg)
        fed += step_flops(L - cached, L, cfg)
        cached = s
    return full / fed


#: the schedules timed, by the names --schedules takes
SCHEDULES = {
    "block_quarter": lambda d: Block(d // 4, d // 4),
    "block16": lambda d: Block(16, 16),
    "slide16": lambda d: Slide(16),
    "quench": lambda d: Quench(),
}


def run_diffusion(preset: str, d: int, batch: int, N: int, schedules=tuple(SCHEDULES)) -> list[dict]:
    cfg = TransformerConfig.preset(preset, vocab_size=N + 1, input_vocab_size=N + 2, max_positions=d)
    torch.manual_seed(0)
    model = DiffusionTransformer(cfg).eval()
    rows = []
    for schedule in (SCHEDULES[name](d) for name in schedules):
        lm = DiffusionLM(model, Absorb(N), schedule)
        res = {"preset": preset, "d": d, "batch": batch, "schedule": repr(schedule), "steps": schedule.num_steps(d)}
        toks = {}
        for cache in (True, False):
            sampler = get_sampler("mdlm")(cache=cache)
            t = time.perf_counter()
            out = sampler.sample(lm, batch_size=batch, length=d, generator=torch.Generator().manual_seed(0))
            res["cached_s" if cache else "uncached_s"] = time.perf_counter() - t
            toks[cache] = out.tokens
        res["same_tokens"] = bool(torch.equal(toks[True], toks[False]))
        res["speedup"] = res["uncached_s"] / res["cached_s"]
        res["ideal_flop_ratio"] = ideal_ratio(schedule, d, cfg)
        rows.append(res)
        print(f"{preset:<11} d={d:<5} {res['schedule']:<40} cached {res['cached_s']:8.2f} s  uncached "
              f"{res['uncached_s']:8.2f} s  x{res['speedup']:6.2f} (ideal x{res['ideal_flop_ratio']:6.2f})  same={res['same_tokens']}", flush=True)
    return rows


def hf_causal_lm(kind: str, n_layer: int, hidden: int, n_head: int, vocab: int):
    """A random HF causal LM: GPT-2 (learned positions, tied head) or Llama (RoPE, GQA 2:1, SwiGLU)."""
    import transformers

    torch.manual_seed(0)
    if kind == "gpt2":
        cfg = transformers.GPT2Config(vocab_size=vocab, n_layer=n_layer, n_embd=hidden, n_head=n_head, n_positions=1024)
        return transformers.GPT2LMHeadModel(cfg).eval()
    cfg = transformers.LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=4 * hidden,
                                   num_hidden_layers=n_layer, num_attention_heads=n_head,
                                   num_key_value_heads=max(1, n_head // 2), max_position_embeddings=1024)
    return transformers.LlamaForCausalLM(cfg).eval()


#: the AR comparisons, by the names --ar takes: (kind, layers, hidden, heads)
AR_MODELS = {
    "gpt2-4x128": ("gpt2", 4, 128, 4),
    "llama-4x128": ("llama", 4, 128, 4),
    "gpt2-small": ("gpt2", 12, 768, 12),
}


def run_ar(name: str, new_tokens: int, batch: int, repeats: int = 3, clock: str = "cpu") -> dict:
    """AR (Quench + KV cache) against Hugging Face ``generate()`` greedy on the same weights.

    The two runs alternate ``repeats`` times (A B A B ...) and the medians are compared, so a
    burst of load on the shared machine does not favour either side. Both clocks are recorded;
    `clock` is the one the ratio uses (CPU time: what each would take alone at 1 thread).
    """
    from diffusionlm.models.hf import HFDenoiser

    kind, n_layer, hidden, n_head = AR_MODELS[name]
    V = 50257
    hf = hf_causal_lm(kind, n_layer, hidden, n_head, V)
    # No early stop on either side: every run decodes exactly new_tokens tokens.
    hf.generation_config.eos_token_id = None
    hf.generation_config.pad_token_id = V - 1
    prompt = torch.randint(0, V - 1, (batch, 8), generator=torch.Generator().manual_seed(1))
    # The SHIFTED layout's row 0 reads BOS: generate() gets the same BOS-led context.
    with_bos = torch.cat([torch.full((batch, 1), V - 1), prompt], 1)
    # from_model(mask="add") grows the embedding in place; HF's own generate() must run on the
    # un-resized weights, or its argmax would range over the extra MASK column too.
    den = HFDenoiser.from_model(copy.deepcopy(hf), mask="add")
    lm = DiffusionLM(den, Absorb(V, mask_id=den.mask_id), Quench(), layout="shifted", bos_id=V - 1)
    sampler = get_sampler("ar")(max_new_tokens=new_tokens, greedy=True)

    def hf_run():
        with torch.no_grad():
            return hf.generate(with_bos, max_new_tokens=new_tokens, do_sample=False, attention_mask=torch.ones_like(with_bos))

    def ours_run():
        return sampler.sample(lm, batch_size=batch, prompt=prompt)

    hf_run(), ours_run()  # warm-up
    t = {("hf", c): [] for c in CLOCKS} | {("ours", c): [] for c in CLOCKS}
    for _ in range(repeats):
        for side, fn in (("hf", hf_run), ("ours", ours_run)):
            t0 = {c: CLOCKS[c]() for c in CLOCKS}
            out = fn()
            for c in CLOCKS:
                t[(side, c)].append(CLOCKS[c]() - t0[c])
            if side == "hf":
                ref = out
            else:
                ours = out
    same = bool(torch.equal(ours.tokens, ref[:, 1:]))
    med = {key: statistics.median(v) for key, v in t.items()}
    res = {"model": f"{kind} {n_layer}x{hidden}", "batch": batch, "new_tokens": new_tokens, "repeats": repeats,
           "clock": clock, "same_tokens": same, "load": open("/proc/loadavg").read().split()[0]}
    for c in CLOCKS:
        res[f"hf_tokens_per_s_{c}"] = batch * new_tokens / med[("hf", c)]
        res[f"ours_tokens_per_s_{c}"] = batch * new_tokens / med[("ours", c)]
        res[f"ratio_{c}"] = med[("hf", c)] / med[("ours", c)]
    res["ratio"] = res[f"ratio_{clock}"]
    print(f"AR {res['model']:<14} HF generate {res[f'hf_tokens_per_s_{clock}']:8.1f} tok/s   ours "
          f"{res[f'ours_tokens_per_s_{clock}']:8.1f} tok/s ({clock} clock)   ratio {res['ratio']:.2f} "
          f"(wall {res['ratio_wall']:.2f}, cpu {res['ratio_cpu']:.2f})   same={same}   load {res['load']}", flush=True)
    return res


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--configs", nargs="+", default=["tiny:256", "tiny:1024", "gpt2-small:256:2"],
                    help="preset:length[:batch] (batch defaults to --batch)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--vocab", type=int, default=50257)
    ap.add_argument("--ar-tokens", type=int, default=128)
    ap.add_argument("--schedules", nargs="+", default=list(SCHEDULES), choices=list(SCHEDULES))
    ap.add_argument("--no-ar", action="store_true", help="skip AR vs HF generate()")
    ap.add_argument("--ar", nargs="+", default=list(AR_MODELS), choices=list(AR_MODELS), help="the AR comparisons")
    ap.add_argument("--ar-repeats", type=int, default=3)
    ap.add_argument("--clock", choices=list(CLOCKS), default="cpu", help="the clock of the AR ratio")
    ap.add_argument("--no-diffusion", action="store_true", help="only AR vs HF generate()")
    ap.add_argument("--out", default="benchmarks/out/sampling.json")
    args = ap.parse_args()
    results = {"threads": torch.get_num_threads(), "diffusion": [], "ar": []}
    for item in ([] if args.no_diffusion else args.configs):
        preset, d, *b = item.split(":")
        results["diffusion"] += run_diffusion(preset, int(d), int(b[0]) if b else args.batch, args.vocab, args.schedules)
    if not args.no_ar:
        for name in args.ar:
            results["ar"].append(run_ar(name, args.ar_tokens, args.batch, args.ar_repeats, args.clock))
    write_json(args.out, results)


if __name__ == "__main__":
    main()
