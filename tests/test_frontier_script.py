"""benchmarks/frontier.py end to end at toy size: prompted runs keep their prompts, the judge
scores the continuations only, and the real-text reference row and the target fields are written."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from test_hub import TOK, tiny_composition

from diffusionlm.schedules.hyper import Flat, Quench

ROOT = Path(__file__).resolve().parents[1]


def test_frontier_with_prompts_end_to_end(tmp_path):
    tiny_composition(Flat()).save_pretrained(tmp_path / "model", tokenizer=TOK)
    tiny_composition(Quench()).save_pretrained(tmp_path / "judge", tokenizer=TOK)
    out = tmp_path / "f.json"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "frontier.py"), "--model", tmp_path / "model", "--judge",
           tmp_path / "judge", "--samples", "4", "--batch", "2", "--length", "24", "--steps", "16", "4",
           "--thresholds", "0.9", "--max-per-step", "4", "--block", "8", "--prompt-corpus", "shakespeare_char",
           "--prompt-length", "8", "--out", out, "--plot", tmp_path / "f.png"]
    r = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads(out.read_text())
    assert res["prompt"] == {"corpus": "shakespeare_char", "split": "validation", "tokens": 8}
    runs = {row["run"]: row for row in res["rows"]}
    assert {"MDLM steps=16", "threshold 0.9", "threshold budget k=4", "threshold 0.9 block=8 dual cache",
            "real continuation (reference)"} <= set(runs)
    assert runs["MDLM steps=16"]["calls_vs_fixed"] == 1.0
    # 16 generated positions, at most 4 per call: at least 4 calls, at most 16
    assert 4 <= runs["threshold budget k=4"]["calls_per_sample"] <= 16
    assert runs["real continuation (reference)"]["calls_per_sample"] is None
    assert all(isinstance(row.get("meets_target", False), bool) for row in res["rows"])
    assert (tmp_path / "f.png").stat().st_size > 0


def test_prompts_need_an_exact_judge_and_both_flags(tmp_path):
    tiny_composition(Flat()).save_pretrained(tmp_path / "model", tokenizer=TOK)
    base = [sys.executable, str(ROOT / "benchmarks" / "frontier.py"), "--model", str(tmp_path / "model"),
            "--judge", str(tmp_path / "model"), "--samples", "2", "--length", "16", "--out", str(tmp_path / "f.json")]
    r = subprocess.run(base + ["--prompt-length", "4"], capture_output=True, text=True, timeout=600)
    assert r.returncode != 0 and "go together" in r.stderr
    r = subprocess.run(base + ["--prompt-length", "4", "--prompt-corpus", "shakespeare_char"], capture_output=True,
                       text=True, timeout=600)
    assert r.returncode != 0 and "needs an AR composition judge" in r.stderr
