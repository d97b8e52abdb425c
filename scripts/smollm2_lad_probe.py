"""One forward of a LAD run's checkpoints on the report's sentences, position by position (issue 22,
docs/smollm2/lad.md "Trials 2 and 3"): the share of untouched tokens the argmax keeps, of changed
tokens it restores, the model's probability of the token in front of it where that token is right
and where it is wrong; then every gate "edit where the argmax has probability >= a and the current
token <= b" on a grid, chosen on the tuning sentences by one call's Hamming errors, and scored on
the test sentences (the same 64 + 64 sentences and noise as scripts/smollm2_lad_report.py).

    python scripts/smollm2_lad_probe.py --run runs/smollm2-lad-aligned --steps 100 200 300 400
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))

from smollm2_lad_report import corrupt_all, load_step  # noqa: E402
from smollm2_report import sentences  # noqa: E402

from diffusionlm.samplers.lad import LAD  # noqa: E402

GRID = [(a, b) for a in (0.0, 0.3, 0.5, 0.7, 0.8, 0.9) for b in (1.0, 0.5, 0.2, 0.1, 0.05, 0.02, 0.01)]


def positions(lm, sents, noisy, vocab: int) -> torch.Tensor:
    """[positions, 5]: untouched?, p(current token), p(argmax), argmax == original, argmax == current."""
    rows = []
    for ids, y in zip(sents, noisy):
        pr = torch.softmax(LAD.edit_logits(lm, y, vocab)[0].double(), -1)  # the forward refine argmaxes
        cur, orig = y[0], torch.tensor(ids)
        top, arg = pr.max(-1)
        rows.append(torch.stack([(cur == orig).double(), pr.gather(-1, cur[:, None]).squeeze(-1), top,
                                 (arg == orig).double(), (arg == cur).double()], 1))
    return torch.cat(rows)


def gate_effect(v: torch.Tensor, a: float, b: float) -> tuple:
    """(Hamming errors after - before per token, edits) of one call under the gate (a, b)."""
    clean, p_cur, top, arg_ok, arg_cur = v.unbind(1)
    edit = (arg_cur == 0) & (top >= a) & (p_cur <= b)
    gain = (edit & (clean == 0) & (arg_ok == 1)).sum()
    loss = (edit & (clean == 1)).sum()
    return float((loss - gain) / v.shape[0]), int(edit.sum())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", type=Path, required=True)
    ap.add_argument("--steps", type=int, nargs="+", default=[400])
    ap.add_argument("--sentences", type=int, default=64)
    ap.add_argument("--p-max", type=float, nargs="+", default=[0.2, 0.5])
    args = ap.parse_args(argv)
    tok = load_step(args.run, 0).tokenizer
    both = sentences(tok, 2 * args.sentences)
    split = {"test": both[:args.sentences], "tuning": both[args.sentences:]}
    for step in args.steps:
        lm = load_step(args.run, step).lm
        for p in args.p_max:
            v = {name: positions(lm, s, corrupt_all(s, tok.vocab_size, lm.model.mask_id, p), tok.vocab_size)
                 for name, s in split.items()}
            t = v["test"]
            clean = t[:, 0] == 1
            print(f"step {step} p_max {p}: keeps {float(t[clean, 3].mean()):.3f}, restores {float(t[~clean, 3].mean()):.3f}, "
                  f"p(current) right {float(t[clean, 1].mean()):.3f} / wrong {float(t[~clean, 1].mean()):.3f}", flush=True)
            a, b = min(GRID, key=lambda g: gate_effect(v["tuning"], *g)[0])
            tun, tst = gate_effect(v["tuning"], a, b), gate_effect(t, a, b)
            print(f"   best gate on tuning: argmax >= {a}, current <= {b}: Hamming {tun[0]:+.4f} ({tun[1]} edits); "
                  f"on test {tst[0]:+.4f} ({tst[1]} edits)", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
