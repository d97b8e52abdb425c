"""The GPU check (issue 24, item 5): what only a CUDA device can show, in one run of a few minutes.

    python benchmarks/gpu_check.py [--length 1024] [--preset gpt2-small] [--out gpu_check.json]

On a machine without CUDA it prints one line saying so and exits 0 (``--cpu`` runs the checks a
CPU can run -- FlexAttention forward only, bf16 step, cache; tiny sizes -- to test the script). On CUDA, with one model's
weights copied between backends:

1. **FlexAttention training masks = dense SDPA**: the two-halves training loss (Block schedule,
   its [x_noisy ; x_clean] mask) and its gradients with ``attention="flex"`` (compiled
   FlexAttention, BlockMask) against ``attention="sdpa"`` with the dense boolean mask, same draw.
2. **bf16 training step**: one Trainer step under ``precision="bf16"``: finite loss, within 3% of
   the fp32 loss of the same batch, weights updated and finite.
3. **flash backend**: ``attention="flash"`` (flash-attn, bf16) against SDPA in bf16 on full and
   causal attention (flash takes no custom mask); "unavailable" when flash-attn is not installed.
4. **exact KV cache**: MDLM under Block(16, 4) and greedy AR under Quench give the same tokens with
   and without the cache, and the cached logits of a step equal the uncached ones.
5. **throughput**: training steps/s and tokens/s of the two-halves step with FlexAttention
   against dense masked SDPA (bf16 autocast), median of --repeats.

Prints a Markdown table (check | result | detail) and exits 1 when a check fails. Budget: about
3-6 minutes on an H100 at the defaults (FlexAttention's compile is most of it).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from diffusionlm.lm import DiffusionLM  # noqa: E402
from diffusionlm.models import DiffusionTransformer, TransformerConfig  # noqa: E402
from diffusionlm.processes import Absorb  # noqa: E402
from diffusionlm.schedules import Block, Quench  # noqa: E402

VOCAB = 258  # byte tokenizer's real ids + 2 (MASK = VOCAB)


def build(preset: str, attention: str, length: int, device, state=None, schedule=None, layout="aligned", **over):
    cfg = TransformerConfig.preset(preset, vocab_size=VOCAB + 1, max_positions=2 * length, attention=attention, **over)
    torch.manual_seed(0)
    model = DiffusionTransformer(cfg).to(device)
    if state is not None:
        model.load_state_dict(state)
    return DiffusionLM(model, Absorb(VOCAB), schedule or Block(16), layout=layout, bos_id=VOCAB - 1)


def batch(B: int, d: int, device, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, VOCAB, (B, d), generator=torch.Generator().manual_seed(seed)).to(device)


def loss_and_grads(lm, x0, seed: int, backward: bool):
    g = torch.Generator(device=x0.device).manual_seed(seed)
    lm.model.zero_grad(set_to_none=True)
    if not backward:
        with torch.no_grad():
            return float(lm.loss(x0, generator=g, two_halves=True).loss), None
    out = lm.loss(x0, generator=g, two_halves=True)
    out.loss.backward()
    return float(out.loss), {n: p.grad.detach().clone() for n, p in lm.model.named_parameters() if p.grad is not None}


def check_flex(args, dev, backward: bool):
    dense = build(args.preset, "sdpa", args.length, dev, **args.over)
    flex = build(args.preset, "flex", args.length, dev, state=dense.model.state_dict(), **args.over)
    x0 = batch(args.batch, args.length, dev)
    a, ga = loss_and_grads(dense, x0, 1, backward)
    b, gb = loss_and_grads(flex, x0, 1, backward)
    ok = abs(a - b) <= 1e-4 * max(1.0, abs(a))
    detail = f"loss sdpa {a:.6f} flex {b:.6f}"
    if backward:
        worst = max(float((ga[n] - gb[n]).abs().max() / ga[n].abs().max().clamp_min(1e-12)) for n in ga)
        ok &= worst < 1e-3
        detail += f"; worst relative grad diff {worst:.1e}"
    return ok, detail


def check_bf16(args, dev):
    from diffusionlm.training import TrainConfig, Trainer

    x0 = batch(args.batch, args.length, dev, seed=2)
    results = {}
    for precision in ("fp32", "bf16"):
        lm = build(args.preset, "sdpa", args.length, dev, **args.over)
        before = {n: p.detach().clone() for n, p in lm.model.named_parameters()}
        torch.manual_seed(3)
        trainer = Trainer(lm, TrainConfig(steps=1, batch_size=args.batch, precision=precision, progress=False,
                                          two_halves=True, lr=1e-3), iter([x0]), [], device=dev)
        trainer.fit()
        loss = trainer.history[-1]["loss"] if trainer.history else float("nan")
        moved = any(not torch.equal(before[n], p) for n, p in lm.model.named_parameters())
        finite = all(torch.isfinite(p).all() for p in lm.model.parameters())
        results[precision] = (loss, moved, finite)
    (l32, _, _), (l16, moved, finite) = results["fp32"], results["bf16"]
    ok = moved and finite and abs(l16 - l32) <= 0.03 * abs(l32)
    return ok, f"loss fp32 {l32:.4f} bf16 {l16:.4f}; weights updated {moved}, finite {finite}"


def check_flash(args, dev):
    try:
        import flash_attn  # noqa: F401  (optional extra)
    except ImportError:
        return None, "flash-attn not installed (pip install flash-attn --no-build-isolation): not checked"
    sdpa = build(args.preset, "sdpa", args.length, dev, **args.over)
    flash = build(args.preset, "flash", args.length, dev, state=sdpa.model.state_dict(), **args.over)
    ids = batch(args.batch, args.length, dev, seed=4)
    worst = 0.0
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        for mask in (None, "causal"):
            a = sdpa.model(ids, attention_mask=mask).logits.float()
            b = flash.model(ids, attention_mask=mask).logits.float()
            worst = max(worst, float((a - b).abs().max() / a.abs().max()))
    return worst < 2e-2, f"bf16 logits, full and causal: worst relative diff {worst:.1e} (bf16 rounding: < 2e-2)"


def check_cache(args, dev):
    from diffusionlm.samplers import AR, MDLM

    d = min(args.length, 256)
    lm = build(args.preset, "sdpa", d, dev, schedule=Block(16, 4), **args.over)
    tokens = {}
    for cache in (True, False):
        g = torch.Generator(device=dev).manual_seed(5)
        tokens[cache] = MDLM(cache=cache).sample(lm, 2, length=d, generator=g).tokens
    ok = torch.equal(tokens[True], tokens[False])
    ar = build(args.preset, "sdpa", d, dev, schedule=Quench(), layout="shifted", **args.over)
    prompt = batch(2, 8, dev, seed=6)
    ar_tokens = [AR(greedy=True, cache=c).sample(ar, 2, length=64, prompt=prompt,
                                                 generator=torch.Generator(device=dev).manual_seed(0)).tokens
                 for c in (True, False)]
    ok_ar = torch.equal(*ar_tokens)
    return ok and ok_ar, f"MDLM Block(16, 4) {d} tokens: same {ok}; greedy AR 56 new tokens: same {ok_ar}"


def throughput(args, dev):
    rows = []
    x0 = batch(args.batch, args.length, dev, seed=7)
    for attention in ("sdpa", "flex"):
        lm = build(args.preset, attention, args.length, dev, **args.over)
        opt = torch.optim.AdamW(lm.model.parameters(), lr=1e-4)

        def step():
            opt.zero_grad(set_to_none=True)
            with torch.autocast("cuda", dtype=torch.bfloat16):
                out = lm.loss(x0, two_halves=True)
            out.loss.backward()
            opt.step()

        step()
        step()  # compile / warm-up
        times = []
        for _ in range(args.repeats):
            torch.cuda.synchronize()
            t = time.perf_counter()
            step()
            torch.cuda.synchronize()
            times.append(time.perf_counter() - t)
        sec = sorted(times)[len(times) // 2]
        rows.append((attention, sec, args.batch * args.length / sec))
    (_, s_d, tok_d), (_, s_f, tok_f) = rows
    return True, (f"two-halves step, {args.preset}, {args.batch} x {args.length}, bf16: dense SDPA {s_d * 1e3:.1f} ms "
                  f"({tok_d:,.0f} tok/s), FlexAttention {s_f * 1e3:.1f} ms ({tok_f:,.0f} tok/s): {s_d / s_f:.2f}x")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--length", type=int, default=1024)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--preset", default="gpt2-small")
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--cpu", action="store_true", help="no CUDA: run the forward-only checks on tiny sizes (tests)")
    ap.add_argument("--out", help="JSON results")
    args = ap.parse_args()
    args.over = {}
    if not torch.cuda.is_available():
        if not args.cpu:
            print("gpu_check: no CUDA device here (torch.cuda.is_available() is False): nothing checked")
            return 0
        dev = torch.device("cpu")
        args.preset, args.length, args.batch = "tiny", 32, 2
        args.over = {"n_layers": 1, "hidden": 32, "n_heads": 2, "cond_dim": 16}
        checks = [("FlexAttention = dense SDPA (forward only on CPU)", lambda: check_flex(args, dev, backward=False)),
                  ("bf16 training step", lambda: check_bf16(args, dev)),
                  ("exact KV cache", lambda: check_cache(args, dev))]
    else:
        dev = torch.device("cuda")
        checks = [("FlexAttention training masks = dense SDPA", lambda: check_flex(args, dev, backward=True)),
                  ("bf16 training step", lambda: check_bf16(args, dev)),
                  ("flash backend", lambda: check_flash(args, dev)),
                  ("exact KV cache", lambda: check_cache(args, dev)),
                  ("throughput", lambda: throughput(args, dev))]
    print(f"device: {torch.cuda.get_device_name() if dev.type == 'cuda' else 'cpu'}; torch {torch.__version__}\n")
    print("| check | result | detail |\n|---|---|---|")
    results, failed = [], False
    for name, fn in checks:
        t = time.perf_counter()
        try:
            ok, detail = fn()
        except Exception as err:  # a check that crashes is a failed check, reported in its row
            ok, detail = False, f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
        verdict = "n/a" if ok is None else "ok" if ok else "FAILED"
        failed |= ok is False
        print(f"| {name} | {verdict} | {detail} ({time.perf_counter() - t:.0f} s) |", flush=True)
        results.append({"check": name, "result": verdict, "detail": detail})
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
