"""A roofline for each sampling step, and the cached / uncached ratio it allows.

    python benchmarks/roofline.py [--preset gpt2-small] [--length 1024] [--batches 1 8]
                                  [--vocab 259] [--points 5] [--repeats 2] [--run-batches 1]
                                  [--clock cpu]

Run it with OMP_NUM_THREADS=1 on a shared CPU: `--clock cpu` (the default) then times this
process's CPU time, what each piece would take alone, which a wall clock on a machine loaded by
other jobs does not give (the load average is recorded per round beside the figures).

Machine ceilings, measured in the same run (once per round, medians over the rounds):

    peak  P = 2 n^3 / t         a float32 [n, n] @ [n, n] matmul (n = 2048)
    bandwidth W = 2 S / t       a copy of S bytes (S = 512 MB: read S, write S); also a read-only
                                reduction (S / t): W is the larger of the two

A step that feeds R rows per sequence against C key rows, batch B, is bounded below by

    t_roof = max( B * F(R, C) / P ,  (4 |theta| + B * 2 n_layers C E * 4) / W )

F(R, C) = benchmarks/common.py step_flops (per layer 24 R E^2 + 4 R C E, plus the head 2 R E V);
the bytes are every float32 weight read once plus the K and V of every key row read once
(E = hidden). Step kinds, Block(16, 16) at rate 1 (one step per token, 16 per block):

    uncached   the full step: the 16 b settled rows + the 16 active rows of block b
    cached     the active block (16 rows) against the cached prefix (16 b rows); the block's
               first step also feeds the 16 rows settled since the last step (32 rows, commits 16)
    ar         one row against a cached prefix of C rows (a decoding step, Quench + KV cache)

Each kind is timed (forward only) at `points` blocks spread over the sequence; the whole run's
uncached time is their piecewise-linear interpolation summed over all T = d steps (an uncached
run of gpt2-small at d = 1024 takes 10 min at batch 1 on 2 cores: too long to repeat). The
cached figure, for the batches in --run-batches, is a WHOLE MDLM sampling run with the KV cache
(the driver, masks, the draws: all its overhead), timed end to end; for the other batches it is
the interpolated sum of the cached forwards plus the per-step overhead (run - forwards) measured
at the first run batch, scaled by nothing (an estimate, marked as such). Rounds alternate the
kinds (A B A B ...) and report medians.

Reported: per step kind and point, the roofline time, the measured time and their ratio; per
batch, the roofline's uncached / cached ratio (summed over every step) against the achieved one
(interpolated uncached sum / measured cached run) and the fraction achieved / roofline.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import time

import torch

from common import CLOCKS, step_flops, timed, write_json
from diffusionlm import masks
from diffusionlm.lm import DiffusionLM
from diffusionlm.models import DiffusionTransformer, TransformerConfig
from diffusionlm.models.cache import plan_cached_step
from diffusionlm.models.packed import PackedLinears
from diffusionlm.processes import Absorb
from diffusionlm.samplers import get_sampler
from diffusionlm.schedules import Block, Quench

PACKED = "+packed"  # the suffix of the step kinds timed through PackedLinears
WIDTH = 16  # Block(16, 16)


# -- machine ceilings ---------------------------------------------------------------------------
CLOCK = CLOCKS["cpu"]


def matmul_peak(n: int = 2048, repeats: int = 3) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    return 2 * n**3 / timed(lambda: a @ b, repeats, CLOCK)


def bandwidth(mb: int = 512, repeats: int = 3) -> dict:
    x = torch.ones(mb * 2**20 // 4)
    y = torch.empty_like(x)
    S = x.numel() * 4
    copy = 2 * S / timed(lambda: y.copy_(x), repeats, CLOCK)
    read = S / timed(lambda: x.sum(), repeats, CLOCK)
    return {"copy": copy, "read": read, "best": max(copy, read)}


# -- the roofline of one step -------------------------------------------------------------------
def roofline(B: int, rows: int, keys: int, cfg, weight_bytes: int, peak: float, bw: float) -> dict:
    flops = B * step_flops(rows, keys, cfg)
    data = weight_bytes + B * 2 * cfg.n_layers * keys * cfg.hidden * 4
    t_c, t_m = flops / peak, data / bw
    return {"flops": flops, "bytes": data, "t_compute": t_c, "t_memory": t_m, "t_roof": max(t_c, t_m),
            "bound": "compute" if t_c >= t_m else "memory"}


class Steps:
    """The forward of one step of each kind at block b (inputs built once, not timed)."""

    def __init__(self, model, B: int, d: int, N: int):
        self.model, self.B, self.d = model, B, d
        self.s = Block(WIDTH, WIDTH)
        self.x = torch.randint(0, N, (B, d), generator=torch.Generator().manual_seed(0))

    def _cache(self, rows: int):
        """A cache of the first `rows` positions, committed causally (as settled rows are)."""
        if rows == 0:
            return self.model.empty_cache()
        pos = torch.arange(rows)
        return self.model(self.x[:, :rows], position_ids=pos[None], attention_mask="causal",
                          cache=self.model.empty_cache(), cache_commit=rows).cache

    def step(self, k: int, cached_step: bool):
        """(fn, rows fed, keys) for step k of Block(16): uncached, or cached with the cache of
        the rows settled before step k - 1 (as the sampler holds it)."""
        st = masks.inference_mask(self.s, self.d, k)
        cats = masks.step_categories(self.s, self.d, k)[st.rows]
        rows = st.rows
        if not cached_step:
            fn = lambda: self.model(self.x[:, rows], position_ids=rows[None], attention_mask=st.mask)  # noqa: E731
            return fn, int(rows.numel()), int(rows.numel())
        prev = masks.step_categories(self.s, self.d, k - 1) if k > 1 else None
        cached = int((prev == masks.SETTLED).sum()) if prev is not None else 0
        plan = plan_cached_step(rows, cats, st.mask, cached)
        cache = self._cache(cached) if cached else None
        fn = lambda: self.model(self.x[:, plan.rows], position_ids=plan.rows[None], attention_mask=plan.mask,  # noqa: E731
                                cache=cache, cache_commit=plan.commit)
        return fn, int(plan.rows.numel()), int(rows.numel())

    def ar(self, C: int):
        """One decoding row at position C against a cache of C rows."""
        cache = self._cache(C)
        pos = torch.tensor([[C]])
        fn = lambda: self.model(self.x[:, C : C + 1], position_ids=pos, attention_mask=None, cache=cache, cache_commit=1)  # noqa: E731
        return fn, 1, C + 1


def cached_run(lm, B: int, d: int) -> float:
    sampler = get_sampler("mdlm")(cache=True)
    t = CLOCK()
    sampler.sample(lm, batch_size=B, length=d, generator=torch.Generator().manual_seed(0))
    return CLOCK() - t


def interp(xs: list, ys: list, x: float) -> float:
    for (x0, y0), (x1, y1) in zip(zip(xs, ys), zip(xs[1:], ys[1:])):
        if x0 <= x <= x1:
            return y0 + (y1 - y0) * (x - x0) / (x1 - x0) if x1 > x0 else y0
    return ys[0] if x < xs[0] else ys[-1]


def load() -> str:
    return open("/proc/loadavg").read().split()[0] if os.path.exists("/proc/loadavg") else "?"


@torch.no_grad()
def run_batch(model, cfg, B: int, d: int, N: int, points: int, repeats: int, weight_bytes: int, full_run: bool,
              overhead_per_step: "float | None" = None, warm: bool = True, packed: bool = False) -> dict:
    nb = d // WIDTH
    blocks = sorted({round(i * (nb - 1) / max(points - 1, 1)) for i in range(points)})
    steps = Steps(model, B, d, N)
    kinds = {}
    for b in blocks:
        k0 = WIDTH * b + 1  # the block's first step (feeds the newly settled block too)
        kinds[("uncached", b)] = steps.step(k0 + 1, cached_step=False)
        kinds[("cached", b)] = steps.step(k0 + 1, cached_step=True)
        kinds[("cached_first", b)] = steps.step(k0, cached_step=True)
        kinds[("ar", b)] = steps.ar(WIDTH * b)
    lm = DiffusionLM(model, Absorb(N), Block(WIDTH, WIDTH))
    # --packed: the cached kinds and the whole cached run again, in the same rounds, through
    # PackedLinears (its packs are built by each round's first packed call, the warm-up)
    ctx = PackedLinears(model, rows=(WIDTH * B, 2 * WIDTH * B)) if packed else None
    packed_kinds = {(k + PACKED, b): v for (k, b), v in kinds.items() if k.startswith("cached")} if packed else {}
    times = {key: [] for key in {**kinds, **packed_kinds}}
    variants = ["", PACKED] if packed else [""]  # "": the plain layers; PACKED: through PackedLinears
    runs = {v: [] for v in variants}
    peaks, bws, loads = [], [], []
    for key, (fn, _, _) in kinds.items():  # warm-up: the kinds at the first block
        if key[1] == blocks[0]:
            fn()
    for r in range(repeats):  # rounds: every kind once per round, alternating
        loads.append(load())
        peaks.append(matmul_peak())
        bws.append(bandwidth()["best"])
        for key, (fn, _, _) in kinds.items():
            times[key].append(timed(fn, 1, CLOCK, warmup=warm))  # warm: the same call just before
        if full_run:
            runs[""].append(cached_run(lm, B, d))
        if ctx is not None:
            with ctx:
                for key, (fn, _, _) in packed_kinds.items():
                    times[key].append(timed(fn, 1, CLOCK, warmup=True))  # the warm-up call packs
                if full_run:
                    runs[PACKED].append(cached_run(lm, B, d))
        print(f"  B={B} round {r + 1}/{repeats}: load {loads[-1]}, peak {peaks[-1] / 1e9:.1f} GFLOP/s, "
              f"bandwidth {bws[-1] / 1e9:.2f} GB/s"
              + "".join(f", cached run{v} {runs[v][-1]:.1f} s" for v in runs if runs[v]), flush=True)
    peak, bw = statistics.median(peaks), statistics.median(bws)
    med = {key: statistics.median(v) for key, v in times.items()}
    per_step = []
    for (kind, b), (fn, R, C) in {**kinds, **packed_kinds}.items():
        roof = roofline(B, R, C, cfg, weight_bytes, peak, bw)
        per_step.append({"kind": kind, "block": b, "rows": R, "keys": C, "measured_s": med[(kind, b)], **roof,
                         "roof_over_measured": roof["t_roof"] / med[(kind, b)]})
    # whole-run sums over every step (block b: 16 steps; cached: 1 first step + 15 others)
    roof_unc = roof_cac = est_unc = 0.0
    est_cac = {v: 0.0 for v in variants}
    xs = blocks
    for b in range(nb):
        L = WIDTH * (b + 1)
        roof_unc += WIDTH * roofline(B, L, L, cfg, weight_bytes, peak, bw)["t_roof"]
        first_rows = WIDTH * (2 if b > 0 else 1)
        roof_cac += roofline(B, first_rows, L, cfg, weight_bytes, peak, bw)["t_roof"]
        roof_cac += (WIDTH - 1) * roofline(B, WIDTH, L, cfg, weight_bytes, peak, bw)["t_roof"]
        est_unc += WIDTH * interp(xs, [med[("uncached", x)] for x in xs], b)
        for v in variants:
            est_cac[v] += interp(xs, [med[("cached_first" + v, x)] for x in xs], b)
            est_cac[v] += (WIDTH - 1) * interp(xs, [med[("cached" + v, x)] for x in xs], b)
    out = {"batch": B, "d": d, "blocks": blocks, "peak_flops": peak, "bandwidth": bw, "peaks": peaks,
           "bandwidths": bws, "loads": loads, "per_step": per_step,
           "roof_uncached_s": roof_unc, "roof_cached_s": roof_cac, "roof_ratio": roof_unc / roof_cac,
           "uncached_s_interpolated": est_unc}
    for v in variants:
        res = {"cached_forwards_s_interpolated": est_cac[v]}
        if runs[v]:
            run = statistics.median(runs[v])
            res.update(cached_run_s=run, cached_runs=runs[v], driver_overhead_s=run - est_cac[v], cached_is="measured run")
        elif overhead_per_step is not None:
            run = est_cac[v] + overhead_per_step * d
            res.update(cached_run_s=run, cached_is="forwards + per-step overhead of the measured batch")
        else:
            run = est_cac[v]
            res.update(cached_run_s=run, cached_is="forwards only")
        res.update(achieved_ratio=est_unc / run, fraction_of_roofline_ratio=est_unc / run / (roof_unc / roof_cac))
        if v:
            out["packed"] = res
        else:
            out.update(res)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="gpt2-small")
    ap.add_argument("--length", type=int, default=1024)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--vocab", type=int, default=259, help="N real tokens (259: the byte tokenizer)")
    ap.add_argument("--points", type=int, default=6, help="blocks at which each step kind is timed")
    ap.add_argument("--repeats", type=int, default=3, help="rounds (every kind once per round)")
    ap.add_argument("--run-batches", type=int, nargs="*", default=[1],
                    help="batches timed by a whole cached sampling run (the others: estimated)")
    ap.add_argument("--clock", choices=list(CLOCKS), default="cpu")
    ap.add_argument("--cold", action="store_true", help="time each step once, without calling it just before "
                    "(the allocator and caches cold: single-shot step times at batch 1 came out 1.6-1.8x the "
                    "steady state inside a sampling run)")
    ap.add_argument("--packed", action="store_true",
                    help="also time the cached steps (and run) with every linear layer through MKL's prepacked GEMM "
                         "(models.packed.PackedLinears, rows 16 B and 32 B; bitwise the same results), in the same "
                         "rounds: both fractions of the roofline ratio from one run")
    ap.add_argument("--out", default="benchmarks/out/roofline.json")
    args = ap.parse_args()
    global CLOCK
    CLOCK = CLOCKS[args.clock]
    d, N = args.length, args.vocab
    if d % WIDTH:
        raise SystemExit(f"--length must be a multiple of {WIDTH}, got {d}")
    cfg = TransformerConfig.preset(args.preset, vocab_size=N + 1, input_vocab_size=N + 2, max_positions=d)
    torch.manual_seed(0)
    model = DiffusionTransformer(cfg).eval()
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    results = {"preset": args.preset, "d": d, "vocab": N, "threads": torch.get_num_threads(), "commit": rev,
               "clock": args.clock, "weight_bytes": weight_bytes, "batches": []}
    print(f"{args.preset} d={d} V={N + 1}: {weight_bytes / 1e6:.0f} MB of weights, {torch.get_num_threads()} threads, "
          f"{args.clock} clock, commit {rev}, load {load()}", flush=True)
    overhead = None
    results["packed"] = args.packed
    for B in sorted(args.batches, key=lambda b: b not in args.run_batches):  # measured runs first
        r = run_batch(model, cfg, B, d, N, args.points, args.repeats, weight_bytes, B in args.run_batches, overhead,
                      not args.cold, args.packed)
        if overhead is None and "driver_overhead_s" in r:
            overhead = max(r["driver_overhead_s"], 0.0) / d
        results["batches"].append(r)
        print(f"B={B}: peak {r['peak_flops'] / 1e9:.1f} GFLOP/s, bandwidth {r['bandwidth'] / 1e9:.2f} GB/s")
        print("| kind | block | rows x keys | bound | roofline ms | measured ms | roofline / measured |")
        print("|---|---:|---|---|---:|---:|---:|")
        for s in sorted(r["per_step"], key=lambda s: (s["kind"], s["block"])):
            print(f"| {s['kind']} | {s['block']} | {s['rows']} x {s['keys']} | {s['bound']} | {s['t_roof'] * 1e3:.1f} "
                  f"| {s['measured_s'] * 1e3:.1f} | {s['roof_over_measured']:.2f} |")
        line = (f"B={B}: roofline uncached {r['roof_uncached_s']:.1f} s / cached {r['roof_cached_s']:.2f} s = "
                f"{r['roof_ratio']:.1f}x; uncached (interpolated) {r['uncached_s_interpolated']:.1f} s")
        print(line, flush=True)
        for name, v in (("plain", r), ("packed", r.get("packed"))):
            if v is not None:
                print(f"B={B} {name}: cached forwards {v['cached_forwards_s_interpolated']:.2f} s, cached ({v['cached_is']}) "
                      f"{v['cached_run_s']:.2f} s: achieved {v['achieved_ratio']:.1f}x = "
                      f"{100 * v['fraction_of_roofline_ratio']:.0f}% of the roofline ratio"
                      + (f" (driver + draws {v['driver_overhead_s']:.2f} s)" if "driver_overhead_s" in v else ""), flush=True)
    write_json(args.out, results)


if __name__ == "__main__":
    main()
