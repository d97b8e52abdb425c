"""Per-step forward cost with and without the KV cache, beside the ideal FLOP ratio.

    python benchmarks/forward.py [--presets tiny gpt2-small] [--length 1024]

For a step k of a hyperschedule, the uncached step feeds every non-worthless row under the
step's mask; the cached step feeds only the rows not yet cached (rows settled since the last
step, then the active rows) against a cache holding the settled prefix. The cache is filled
beforehand (not timed). Ideal FLOP ratio per step, per layer with hidden E and R rows fed against
C key rows: 24 R E^2 (projections + MLP) + 4 R C E (scores + weighted sum), plus the head
2 R E V. Steps at 1/4, 1/2 and 3/4 of T; medians of `repeats`.
"""
from __future__ import annotations

import argparse

import torch

from common import step_flops, timed, write_json
from diffusionlm import masks
from diffusionlm.models import DiffusionTransformer, TransformerConfig
from diffusionlm.models.cache import plan_cached_step
from diffusionlm.schedules import Block, Quench, Slide






def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--presets", nargs="+", default=["tiny", "gpt2-small"])
    ap.add_argument("--length", type=int, default=1024)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default="benchmarks/out/forward.json")
    args = ap.parse_args()
    d = args.length
    V = 50258
    results = []
    for preset in args.presets:
        cfg = TransformerConfig.preset(preset, vocab_size=V, max_positions=d)
        model = DiffusionTransformer(cfg).eval()
        x = torch.randint(0, V - 1, (1, d))
        for s in (Quench(), Block(d // 4, d // 4), Block(16, 16), Slide(16)):
            T = s.num_steps(d)
            for k in (T // 4, T // 2, 3 * T // 4):
                step = masks.inference_mask(s, d, k)
                cats = masks.step_categories(s, d, k)[step.rows]
                prev = masks.step_categories(s, d, k - 1) if k > 1 else None
                cached = int((prev == masks.SETTLED).sum()) if prev is not None else 0
                plan = plan_cached_step(step.rows, cats, step.mask, cached)
                rows = step.rows
                with torch.no_grad():
                    cache = model.empty_cache()
                    if cached:
                        pre = rows[:cached]
                        cache = model(x[:, pre], position_ids=pre[None], attention_mask=step.mask[..., :cached, :cached],
                                      cache=cache, cache_commit=cached).cache
                    full = lambda: model(x[:, rows], position_ids=rows[None], attention_mask=step.mask)
                    fast = lambda: model(x[:, plan.rows], position_ids=plan.rows[None], attention_mask=plan.mask,
                                         cache=cache, cache_commit=plan.commit)
                    t_full, t_fast = timed(full, args.repeats), timed(fast, args.repeats)
                L, R = int(rows.numel()), int(plan.rows.numel())
                ideal = step_flops(L, L, cfg) / step_flops(R, L, cfg)
                results.append({"preset": preset, "schedule": repr(s), "d": d, "step": k, "T": T,
                                "rows_uncached": L, "rows_cached": R, "uncached_ms": t_full * 1e3,
                                "cached_ms": t_fast * 1e3, "speedup": t_full / t_fast, "ideal_flop_ratio": ideal})
                r = results[-1]
                print(f"{preset:<11}{r['schedule']:<38}k={k:>5}/{T:<5} rows {L:>5} -> {R:>4}  "
                      f"{r['uncached_ms']:>9.1f} ms -> {r['cached_ms']:>8.1f} ms  x{r['speedup']:>6.1f} (ideal x{ideal:>6.1f})", flush=True)
    write_json(args.out, results)


if __name__ == "__main__":
    main()
