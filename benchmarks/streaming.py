"""Streaming training data in constant memory (issue 24): peak RSS against the size of the corpus.

    python benchmarks/streaming.py --sizes-mb 64 1024 --steps 20 [--read-all-mb 256]

For each size a text file of that many MB is generated under --dir (default /tmp; NEVER the
repository), then `diffusionlm train` runs --steps steps of a tiny transformer on it with
data.streaming=true data.unit=line (one document per line, packed into rows, byte tokenizer) in
a child process, whose peak RSS (getrusage of the children) is the figure: it must not grow with
the file. --read-all-mb also streams EVERY row of a file of that size through TokenStream
(tokenized, packed, no model) in a child and reports its peak RSS and tokens/s, so the whole file
has been read. Prints a Markdown table; --out writes JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORDS = ("the of and to in a is that for it as was with be by on not he this are or his from at which but have an "
         "they you were her she there one all we their has been would more when will who if no out so said what up "
         "its about into than them can only other new some could time these two may then do first any my now such "
         "like our over man me even most made after also did many before must through back years where much your").split()


def generate(path: Path, mb: int, seed: int = 0) -> None:
    """A text file of `mb` MiB: 4 MiB of random English-word lines, repeated with a varying prefix."""
    if path.exists() and path.stat().st_size >= mb << 20:
        return
    rng = random.Random(seed)
    lines = []
    size = 0
    while size < 4 << 20:
        line = " ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 40))) + "\n"
        lines.append(line)
        size += len(line)
    block = "".join(lines)
    with open(path, "w", encoding="utf-8") as f:
        for i in range(max(1, mb // 4)):
            f.write(f"copy {i}: " + block)


def child(argv: list) -> dict:
    """Run argv in a child process: its wall seconds and its own peak RSS (MiB, os.wait4's rusage)."""
    t = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    out, err = proc.stdout.read(), proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.perf_counter() - t
    if proc.returncode != 0:
        sys.exit(f"child failed: {' '.join(argv)}\n{err[-2000:]}")
    return {"seconds": seconds, "peak_rss_mb": usage.ru_maxrss / 1024, "stdout": out[-400:]}


READ_ALL = """
import sys, time, resource
from diffusionlm.data import load_tokenizer
from diffusionlm.data.streaming import TokenStream
s = TokenStream(sys.argv[1], load_tokenizer("byte"), 512, 64, split="all", unit="line", epochs=1)
t = time.perf_counter(); n = 0
for b in s:
    n += b["input_ids"].numel()
print(n, time.perf_counter() - t)
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes-mb", type=int, nargs="+", default=[64, 1024])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--read-all-mb", type=int, default=0, help="also stream every row of a file this large (0: no)")
    ap.add_argument("--dir", default="/tmp", help="where the generated files go (not the repository)")
    ap.add_argument("--out", help="JSON results")
    args = ap.parse_args()
    folder = Path(args.dir)
    if ROOT in folder.resolve().parents or folder.resolve() == ROOT:
        sys.exit("--dir must be outside the repository")
    rows = []
    for mb in sorted(args.sizes_mb):
        path = folder / f"diffusionlm_stream_{mb}mb.txt"
        t = time.perf_counter()
        generate(path, mb)
        gen = time.perf_counter() - t
        run = child([sys.executable, "-m", "diffusionlm.cli", "train", "model.preset=tiny",
                     'model.overrides={"n_layers": 2, "hidden": 64, "n_heads": 2, "cond_dim": 32}',
                     f"data.corpus={path}", "data.streaming=true", "data.unit=line", "data.length=128",
                     "data.val_batches=0", f"train.steps={args.steps}", "train.batch_size=8", "train.progress=false",
                     f"train.out_dir={folder / f'diffusionlm_stream_run_{mb}'}"])
        rows.append({"what": f"train {args.steps} steps", "file_mb": path.stat().st_size / 2**20, "generate_s": gen,
                     "seconds": run["seconds"], "peak_rss_mb": run["peak_rss_mb"]})
        print(f"| train {args.steps} steps | {rows[-1]['file_mb']:.0f} | {run['seconds']:.1f} | {run['peak_rss_mb']:.0f} |",
              flush=True)
    if args.read_all_mb:
        path = folder / f"diffusionlm_stream_{args.read_all_mb}mb.txt"
        generate(path, args.read_all_mb)
        run = child([sys.executable, "-c", READ_ALL, str(path)])
        tokens, secs = run["stdout"].split()[-2:]
        rows.append({"what": "stream every row (no model)", "file_mb": path.stat().st_size / 2**20,
                     "seconds": run["seconds"], "peak_rss_mb": run["peak_rss_mb"], "tokens": int(tokens),
                     "tokens_per_s": int(tokens) / float(secs)})
        print(f"| every row, {int(tokens):,d} tokens ({rows[-1]['tokens_per_s']:,.0f}/s) | {rows[-1]['file_mb']:.0f} | "
              f"{run['seconds']:.1f} | {run['peak_rss_mb']:.0f} |", flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
