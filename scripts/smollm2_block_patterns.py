"""Where a block-diffusion bound's cross-entropies lie: a markdown table from the `patterns_w<w>`
entry that `smollm2_block_report.py --only exact` writes (one row a MASK pattern of a block, one
column an offset in the block; each cell the mean -log p(y_i) over the scored blocks, and its
excess over the base AR's own mean at that offset).

    python scripts/smollm2_block_patterns.py docs/smollm2/block/exact_full_step320.json [--width 4]

The rows "AR order" are the patterns whose masked offsets are a suffix of the block (everything
left of the first masked token known, nothing right of it): the first masked token's conditional
there is the AR model's own, so its excess is what the adaptation lost of the base's AR skill.
"""
import argparse
import json
from pathlib import Path


def table(result: dict, width: int) -> str:
    p = result["exact"][f"patterns_w{width}"]
    ar = p["ar_by_offset"]
    head = "| pattern (1 = MASK, offset 0 first) | kind | " + " | ".join(f"offset {j}" for j in range(width)) + " |"
    lines = [head, "|" + "---|" * (width + 2)]
    lines.append("| base, read as AR | exact | " + " | ".join(f"{a:.3f}" for a in ar) + " |")
    for key, ce in sorted(p["ce"].items(), key=lambda kv: (kv[0].count("1"), kv[0][::-1])):
        first = key.index("1")
        suffix = key == "0" * first + "1" * (width - first)
        kind = "AR order" if suffix else ("left known" if all(c == "0" for c in key[:first]) and key.count("1") == 1 else "")
        cells = [("" if c is None else f"{c:.3f} ({c - a:+.2f})") for c, a in zip(ce, ar)]
        lines.append(f"| {key} | {kind} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def summary(result: dict, width: int, schedule: str) -> dict:
    """The bound split in two: the model's own AR-order NLL (its first masked token's cross-entropy
    in the AR-order patterns, mean over offsets) against the base's AR NLL, and the rest (the bound
    `schedule` minus that: what the block's other orders cost). `last_offset_unseen`: the largest
    change, at offsets 0..w-2, that revealing the last offset makes (0: no row of the block reads
    the last token, as in the SHIFTED layout). `layout_price`: what that costs under a random order
    (many steps a block) if the other offsets were predicted perfectly: E over the last offset's
    rank of CE(last | the offsets revealed before it) - CE(last | all others), per token."""
    import itertools
    import math

    p = result["exact"][f"patterns_w{width}"]
    ce, ar = p["ce"], p["ar_by_offset"]
    key = lambda masked: "".join("1" if j in masked else "0" for j in range(width))  # noqa: E731
    own = [ce[key(set(range(j, width)))][j] for j in range(width)]
    full = set(range(width))
    unseen = max(abs(ce[key(m)][j] - ce[key(m - {width - 1})][j])
                 for r in range(2, width + 1) for m in map(set, itertools.combinations(range(width), r))
                 if width - 1 in m for j in m - {width - 1})
    last, rest = width - 1, list(range(width - 1))
    base = ce[key({last})][last]
    price = 0.0
    for k in range(width):  # the last offset's rank k: k of the others revealed before it, each set alike
        sets = list(itertools.combinations(rest, k))
        price += sum(ce[key(full - set(s))][last] - base for s in sets) / len(sets) / width
    bound = result["exact"][schedule]["nll"]
    own_mean, ar_mean = sum(own) / width, sum(ar) / width
    return {"bound": bound, "base_ar": ar_mean, "own_ar_order": own_mean, "gain_over_base": ar_mean - own_mean,
            "block_cost": bound - own_mean, "last_offset_unseen": unseen, "layout_price": price / width,
            "ar_exact": result["ar"]["nll"], "check": math.isclose(ar_mean, result["ar"]["nll"], rel_tol=1e-6)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("result")
    ap.add_argument("--width", type=int, default=4)
    ap.add_argument("--schedule", default="4x64", help="the bound the summary splits")
    args = ap.parse_args()
    result = json.loads(Path(args.result).read_text())
    print(table(result, args.width))
    print()
    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in summary(result, args.width, args.schedule).items()}))


if __name__ == "__main__":
    main()
