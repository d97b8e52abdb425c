"""Load test of the demo server (issue 14): many concurrent requests at the limits.

    python benchmarks/demo_load.py [--model RUN_DIR] [--requests 50] [--sampler acs]

Starts `diffusionlm demo` as its own process (default DemoLimits; with no --model, the main
job's MDLM variant, untrained: the same architecture and so the same work per step as the
trained one), warms it up with one request, then sends `--requests` requests at once, each from
its own gradio_client session and thread, at the limits: the most steps, the longest length the
model allows, the largest batch. It records the server's RSS every 50 ms (and the kernel's peak,
VmHWM), each request's latency from submission to result (queue wait included), and the RSS
once they have all finished, against the RSS when idle (after the warm-up). Bounded frames per
session, packed, are what let the memory come back: the target is within 10% of idle.
Writes benchmarks/out/demo_load.json.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def rss_mb(pid: int, field: str = "VmRSS") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} for pid {pid}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def untrained_default_model(path: Path, positions: int = 128) -> None:
    """The main job's MDLM variant (`diffusionlm compare` defaults, `positions` long), saved
    without training."""
    from diffusionlm.compare import CompareConfig, save_variant, train_variant
    from diffusionlm.data import TokenBlocks, load_corpus, load_tokenizer

    cfg = CompareConfig(length=positions)
    tok = load_tokenizer(cfg.tokenizer)
    lm, _ = train_variant(cfg, "mdlm", tok, TokenBlocks(load_corpus(cfg.corpus, "train"), tok, cfg.length), seconds=0)
    save_variant(path, cfg, "mdlm", lm)


class Sampler(threading.Thread):
    """The server's RSS every `every` seconds until stopped."""

    def __init__(self, pid: int, every: float = 0.05):
        super().__init__(daemon=True)
        self.pid, self.every, self.samples, self.halt = pid, every, [], threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            self.samples.append((time.perf_counter(), rss_mb(self.pid)))
            time.sleep(self.every)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", help="a run directory (default: the main job's MDLM variant, untrained)")
    ap.add_argument("--positions", type=int, default=128,
                    help="without --model: the untrained model's length (128: the main job's; 512: the demo's length limit)")
    ap.add_argument("--requests", type=int, default=50)
    ap.add_argument("--sampler", default="acs", help="ACS re-draws every step, so every step calls the model")
    ap.add_argument("--settle", type=float, default=10.0, help="seconds to wait after the last request")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "out" / "demo_load.json"))
    args = ap.parse_args()

    from gradio_client import Client

    from diffusionlm.io.runs import load_run
    from diffusionlm.demo.app import api_args
    from diffusionlm.demo.core import DemoLimits

    tmp = tempfile.TemporaryDirectory()
    model_dir = args.model
    if model_dir is None:
        model_dir = str(Path(tmp.name) / "mdlm")
        untrained_default_model(Path(model_dir), args.positions)
    run, built = load_run(model_dir)
    limits = DemoLimits()
    length = min(limits.max_length, int(built.lm.max_positions))
    del built
    at_limits = dict(prompt="def ", steps=limits.max_steps, length=length, batch=limits.max_batch,
                     sampler=args.sampler)

    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    server = subprocess.Popen([sys.executable, "-m", "diffusionlm.cli", "demo", "--model", model_dir, "--port", str(port)],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.time() + 300
        while True:
            try:
                Client(url, verbose=False)
                break
            except Exception:
                if server.poll() is not None or time.time() > deadline:
                    raise RuntimeError(f"the demo server did not start:\n{server.stdout.read()}")
                time.sleep(0.5)
        rss_cold = rss_mb(server.pid)
        t = time.perf_counter()
        warm = Client(url, verbose=False).predict(*api_args(**at_limits), api_name="/generate")
        one = time.perf_counter() - t
        if warm[0]:
            raise RuntimeError(f"the warm-up request was refused: {warm[0]}")
        time.sleep(2.0)
        rss_idle = rss_mb(server.pid)

        clients = [Client(url, verbose=False) for _ in range(args.requests)]  # one session each
        latencies, errors = [None] * args.requests, []
        barrier = threading.Barrier(args.requests + 1)

        def one_request(i: int) -> None:
            barrier.wait()
            t0 = time.perf_counter()
            try:
                out = clients[i].predict(*api_args(**at_limits), api_name="/generate")
                if out[0]:
                    errors.append(out[0])
                latencies[i] = time.perf_counter() - t0
            except Exception as err:  # a refusal by the queue (full) arrives as an exception
                errors.append(f"{type(err).__name__}: {err}")

        sampler = Sampler(server.pid)
        sampler.start()
        threads = [threading.Thread(target=one_request, args=(i,)) for i in range(args.requests)]
        for th in threads:
            th.start()
        barrier.wait()
        t_start = time.perf_counter()
        for th in threads:
            th.join()
        wall = time.perf_counter() - t_start
        time.sleep(args.settle)
        sampler.halt.set()
        sampler.join()
        rss_after = rss_mb(server.pid)
        del clients
        time.sleep(2.0)
        rss_after_closed = rss_mb(server.pid)
        peak_hwm = rss_mb(server.pid, "VmHWM")
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
        tmp.cleanup()

    done = sorted(x for x in latencies if x is not None)
    q = statistics.quantiles(done, n=20, method="inclusive") if len(done) >= 2 else [float("nan")] * 19
    result = {
        "model": args.model or f"main job's MDLM variant (compare defaults, length {args.positions}), untrained",
        "requests": args.requests,
        "request": at_limits, "limits": limits.__dict__, "completed": len(done), "errors": errors[:5],
        "num_errors": len(errors), "one_request_alone_s": one, "wall_s": wall,
        "latency_p50_s": statistics.median(done) if done else float("nan"), "latency_p95_s": q[18],
        "latency_max_s": done[-1] if done else float("nan"),
        "rss_cold_mb": rss_cold, "rss_idle_mb": rss_idle, "rss_peak_sampled_mb": max(r for _, r in sampler.samples),
        "rss_peak_hwm_mb": peak_hwm, "rss_after_mb": rss_after, "rss_after_clients_closed_mb": rss_after_closed,
        "after_vs_idle": rss_after / rss_idle - 1.0, "load": os.getloadavg(),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"{args.requests} concurrent requests at the limits ({json.dumps(at_limits)}), "
          f"{limits.concurrency} at a time: {len(done)} completed, {len(errors)} errors, wall {wall:.1f} s "
          f"(one alone {one:.2f} s)")
    print(f"latency p50 {result['latency_p50_s']:.1f} s, p95 {result['latency_p95_s']:.1f} s, "
          f"max {result['latency_max_s']:.1f} s")
    print(f"server RSS: cold {rss_cold:.0f} MB, idle (warm) {rss_idle:.0f} MB, peak {result['rss_peak_sampled_mb']:.0f} MB "
          f"(VmHWM {peak_hwm:.0f} MB), after {rss_after:.0f} MB ({100 * result['after_vs_idle']:+.1f}% vs idle), "
          f"after the clients closed {rss_after_closed:.0f} MB")
    print(f"load average {result['load']}")


if __name__ == "__main__":
    main()
