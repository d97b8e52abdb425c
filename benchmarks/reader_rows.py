"""What the SHIFTED_LAST reader's extra rows cost by themselves (issue 22; lora_step.py prices the
whole step at 1.29x SHIFTED's): the two pieces of a SmolLM2-shaped step whose size the rows change,
timed alone, forward + backward, at R = 2 d rows a sequence (SHIFTED two halves) and
R = 2 d + d / w (one reader a block), summed over the layers:

    sdpa_mask   scaled_dot_product_attention(q, k, v, attn_mask) with a dense additive mask
                [B, 1, R, R], the kind the hf backbone's "add" mask feeds it (its pattern random:
                half the keys, the diagonal kept): O(R^2)
    mlp_matmul  one [B R, E] @ [E, F] projection: O(R)

    python benchmarks/reader_rows.py [--batch 8] [--length 128] [--width 4] [--out benchmarks/out/reader_rows.json]

If the ratios stay near R'/R (1.125) and (R'/R)^2 (1.27), the rows' own arithmetic is what the
reader costs; a step ratio above both is spent elsewhere.
"""
import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import timed, write_json  # noqa: E402  (benchmarks/ is a folder of scripts)

HEADS, HEAD_DIM, E, F, LAYERS = 9, 64, 576, 1536, 30  # SmolLM2-135M


def pieces(batch: int, rows: int, repeats: int) -> dict:
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(batch, HEADS, rows, HEAD_DIM, generator=g, requires_grad=True) for _ in range(3))
    mask = torch.where(torch.rand(rows, rows, generator=g) < 0.5, float("-inf"), 0.0)
    mask.fill_diagonal_(0.0)  # every row keeps a key
    mask = mask.expand(batch, 1, rows, rows).contiguous()
    x = torch.randn(batch * rows, E, generator=g, requires_grad=True)
    w = torch.randn(E, F, generator=g) / E ** 0.5

    def sdpa():
        torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask).sum().backward()

    def mlp():
        (x @ w).sum().backward()

    return {"sdpa_mask": timed(sdpa, repeats) * LAYERS, "mlp_matmul": timed(mlp, repeats) * LAYERS}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--length", type=int, default=128, help="d: the noisy half's length")
    ap.add_argument("--width", type=int, default=4, help="w: block width (one reader a block)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", default="benchmarks/out/reader_rows.json")
    args = ap.parse_args()
    if min(args.batch, args.length, args.width, args.repeats) < 1 or args.length % args.width:
        ap.error(f"--batch, --length, --width and --repeats must be positive and --length ({args.length}) "
                 f"a multiple of --width ({args.width}): one reader a block of w")
    r0, r1 = 2 * args.length, 2 * args.length + args.length // args.width
    shifted, last = pieces(args.batch, r0, args.repeats), pieces(args.batch, r1, args.repeats)
    rows = []
    for name in shifted:
        ratio = last[name] / shifted[name]
        rows.append({"piece": name, "shifted_s": shifted[name], "shifted_last_s": last[name], "ratio": ratio})
        print(f"{name:10s} R={r0}: {shifted[name]:.3f} s  R={r1}: {last[name]:.3f} s  ratio {ratio:.3f}")
    write_json(args.out, {"batch": args.batch, "rows": [r0, r1], "threads": torch.get_num_threads(), "pieces": rows,
                          "row_ratio": r1 / r0})


if __name__ == "__main__":
    main()
