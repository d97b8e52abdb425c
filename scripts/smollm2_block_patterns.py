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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("result")
    ap.add_argument("--width", type=int, default=4)
    args = ap.parse_args()
    print(table(json.loads(Path(args.result).read_text()), args.width))


if __name__ == "__main__":
    main()
