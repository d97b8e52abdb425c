"""Dense SDPA vs FlexAttention on each hyperschedule's masks.

    python benchmarks/attention.py [--lengths 1024 2048] [--out benchmarks/out/attention.json]

For every schedule, at the middle inference step (forward: the sampler's path) and on the
two-halves training mask (length 2d; forward here on CPU, forward + backward on a GPU when one
is present), times one attention call [1, 12 heads, L, 64] with each backend and reports the
mask's density (fraction of allowed entries: what FlexAttention can skip). Median of
`repeats` after a warm-up. FlexAttention runs eager on CPU (its compiled CPU path costs tens of
seconds per new shape); on GPU it is compiled.
"""
from __future__ import annotations

import argparse
import json
import os

import torch
import torch.nn.functional as F
from torch.nn.attention.flex_attention import flex_attention

from common import timed
from diffusionlm import masks
from diffusionlm.schedules import Block, Flat, Quench, Slide




def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--lengths", type=int, nargs="+", default=[1024, 2048])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default="benchmarks/out/attention.json")
    args = ap.parse_args()
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    flex = torch.compile(flex_attention) if dev == "cuda" else flex_attention
    dtype = torch.bfloat16 if dev == "cuda" else torch.float32
    g = torch.Generator().manual_seed(0)
    rows = []
    for d in args.lengths:
        for s in (Quench(), Flat(steps=d), Block(16, 16), Block(d // 4, d // 4), Slide(16)):
            k = s.num_steps(d) // 2
            step = masks.inference_mask(s, d, k, "dense", device=dev)
            L = int(step.rows.numel())
            block = masks.inference_mask(s, d, k, "flex", device=dev).mask
            seg = s.draw_segments(1, d, generator=g).segment.to(dev)
            dense2 = masks.two_halves_mask(seg, device=dev)
            block2 = masks.two_halves_mask(seg, kind="flex", device=dev)
            for what, mask_d, mask_b, length in (("inference", step.mask, block, L), ("two_halves", dense2, block2, 2 * d)):
                q, kk, v = (torch.randn(1, 12, length, 64, device=dev, dtype=dtype) for _ in range(3))
                grad = dev == "cuda" and what == "two_halves"
                for t in (q, kk, v):
                    t.requires_grad_(grad)

                def run_sdpa():
                    o = F.scaled_dot_product_attention(q, kk, v, attn_mask=mask_d)
                    if grad:
                        o.sum().backward()

                def run_flex():
                    o = flex(q, kk, v, block_mask=mask_b)
                    if grad:
                        o.sum().backward()

                with torch.set_grad_enabled(grad):
                    ts = timed(run_sdpa, args.repeats)
                    tf = timed(run_flex, args.repeats)
                rows.append({
                    "schedule": repr(s), "d": d, "mask": what, "rows": length, "backward": grad,
                    "density": float(mask_d.float().mean()), "sdpa_ms": ts * 1e3, "flex_ms": tf * 1e3,
                    "flex_speedup": ts / tf,
                })
    print(f"device {dev}; one attention call [1, 12, L, 64]; median of {args.repeats}")
    print(f"{'schedule':<38}{'d':>6}{'mask':>12}{'L':>7}{'density':>9}{'sdpa ms':>10}{'flex ms':>10}{'flex x':>8}")
    for r in rows:
        print(f"{r['schedule']:<38}{r['d']:>6}{r['mask']:>12}{r['rows']:>7}{r['density']:>9.3f}{r['sdpa_ms']:>10.1f}{r['flex_ms']:>10.1f}{r['flex_speedup']:>8.2f}")
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"device": dev, "rows": rows}, f, indent=2)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
