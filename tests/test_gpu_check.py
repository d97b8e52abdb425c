"""benchmarks/gpu_check.py without CUDA: one line saying so, exit 0; with --cpu its forward-only
checks (FlexAttention = dense SDPA forward, a bf16 training step, the exact KV cache) run on tiny sizes and pass."""
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(*args):
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(ROOT)}  # no CUDA, even on a GPU machine
    return subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), *args], capture_output=True,
                          text=True, env=env, timeout=600)


def test_without_cuda_it_says_so_in_one_line_and_exits_0():
    out = run()
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["gpu_check: no CUDA device here (torch.cuda.is_available() is False): nothing checked"]


def test_cpu_smoke_runs_the_forward_checks():
    out = run("--cpu")
    assert out.returncode == 0, out.stdout + out.stderr
    rows = [ln for ln in out.stdout.splitlines() if ln.startswith("| ") and "---" not in ln][1:]
    assert len(rows) == 3 and all("| ok |" in r for r in rows), out.stdout
