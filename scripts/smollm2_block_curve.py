"""The exact bound of the SmolLM2 block-diffusion trials against the tokens they trained on (a plot
for docs/smollm2/block.md): one line a trial, the base's AR NLL and the issue's target (AR + 0.5).

    python scripts/smollm2_block_curve.py --schedule 4x64 --out docs/smollm2/block_curve.png \
        --trial "LoRA r=16" docs/smollm2/block/exact_step120.json docs/smollm2/block/exact_final.json \
        --trial "full fine-tune" docs/smollm2/block/exact_full_step160.json ...

Each file is a `smollm2_block_report.py --only exact` result; its tokens are read from the
checkpoint it names (`checkpoint-N`: N steps x 8 rows x 128 tokens, the recipe's batch) or given
as `FILE:TOKENS`. Files on other rows than the first (its `data`) are refused in one line.
"""
import argparse
import json
import re
from pathlib import Path


def point(spec: str, schedule: str, tokens_per_step: int) -> tuple:
    """(tokens, exact bound, AR NLL, the rows' description) of one result file."""
    path, _, tokens = spec.partition(":")
    d = json.loads(Path(path).read_text())
    if schedule not in d.get("exact", {}):
        raise SystemExit(f"{path} has no exact bound for {schedule} (it has {sorted(d.get('exact', {}))})")
    if not tokens:
        m = re.search(r"checkpoint-(\d+)", d["model"])
        if m is None:
            raise SystemExit(f"{path}: cannot tell the tokens from {d['model']!r}; give it as {path}:TOKENS")
        tokens = int(m.group(1)) * tokens_per_step
    rows = (d["data"].get("name"), d["data"].get("split"), d["data"]["rows"], d["data"]["length"])
    return int(tokens), d["exact"][schedule]["nll"], d["ar"]["nll"], rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trial", nargs="+", action="append", required=True, metavar=("LABEL", "FILE"))
    ap.add_argument("--schedule", default="4x64")
    ap.add_argument("--tokens-per-step", type=int, default=8 * 128)
    ap.add_argument("--target", type=float, default=0.5, help="the issue's gap to AR")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9.6, 4.4))
    # more trials than the default cycle's ten colours: tab20's ten dark shades first, then its ten light ones
    colors = plt.get_cmap("tab20").colors
    ars, rows = set(), set()
    for i, (label, *files) in enumerate(args.trial):
        pts = sorted(point(f, args.schedule, args.tokens_per_step) for f in files)
        ars.update(round(p[2], 6) for p in pts)
        rows.update(p[3] for p in pts)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=label,
                color=colors[(2 * i) % 20 + (2 * i) // 20 % 2])
    if len(rows) != 1 or len(ars) != 1:
        raise SystemExit(f"the files score different rows ({sorted(map(str, rows))}): one plot compares one set of rows")
    ar = ars.pop()
    ax.axhline(ar, color="k", lw=1, label=f"base, read as AR (exact): {ar:.3f}")
    ax.axhline(ar + args.target, color="k", lw=1, ls="--", label=f"target: AR + {args.target}")
    w, s = args.schedule.split("x")
    ax.set_xlabel("training tokens")
    ax.set_ylabel(f"exact bound, Block({w}, {s}) [nats/token]")
    name, split, n, length = rows.pop()
    ax.set_title(f"{name} {split}, first {n} rows x {length} tokens", fontsize=9)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # beside the axes, not over the curves
    ax.grid(alpha=0.3)
    fig.tight_layout()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=120)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
