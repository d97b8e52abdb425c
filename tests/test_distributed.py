"""Distributed training on CPU (gloo): two processes under torchrun end with the same weights as
one process on the doubled batch, through the real config / BatchStream / Trainer path, over two
stages (a new Trainer on the same model per stage, as `diffusionlm train` runs a recipe).

Why the weights must agree: the objective is deterministic (see tests/ddp_worker.py: Absorb with
Quench, then Block, both in the two-halves layout, where every noisy segment is fully masked), each
rank's loss is a mean over its own B rows, and DDP AVERAGES gradients over ranks, which is the
gradient of the mean over the 2B rows the single process sees (BatchStream gives rank r of 2 rows
r*B .. r*B+B-1 of the global batch that a single stream with batch 2B reads whole).
"""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the worker, whatever pytest's import mode
import ddp_worker  # noqa: E402
from diffusionlm.config import RunConfig, build
from diffusionlm.data import BatchStream
from diffusionlm.schedules import hyperschedule

ROOT = Path(__file__).resolve().parents[1]
WORKER = Path(__file__).with_name("ddp_worker.py")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(args, timeout=300, nproc=2):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
           "--master_addr", "127.0.0.1", "--master_port", str(free_port()), *map(str, args)]
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(proc, timeout=300):
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        pytest.fail(f"torchrun timed out:\n{out[-4000:]}")
    assert proc.returncode == 0, f"torchrun failed ({proc.returncode}):\n{out[-6000:]}"
    return out


# -- fast checks of the two facts the comparison rests on ----------------------------------
def test_shards_of_two_ranks_are_the_rows_of_one_stream_with_double_batch():
    blocks = torch.arange(50 * 3).reshape(50, 3)
    single = BatchStream(blocks, batch_size=8, seed=7)
    ranks = [BatchStream(blocks, batch_size=4, seed=7, rank=r, world_size=2) for r in range(2)]
    for _ in range(15):  # across an epoch boundary (6 batches per epoch)
        one = next(single)
        parts = [next(s) for s in ranks]
        assert torch.equal(one["index"], torch.cat([p["index"] for p in parts]))
        assert torch.equal(one["input_ids"], torch.cat([p["input_ids"] for p in parts]))
        assert one["epoch"] == parts[0]["epoch"] == parts[1]["epoch"]


def test_worker_objective_is_deterministic_and_a_mean_over_rows(tmp_path):
    corpus = ddp_worker.write_corpus(tmp_path / "c.txt")
    run = RunConfig.from_file(None, ddp_worker.overrides(corpus, 8, 2))
    torch.manual_seed(0)
    built = build(run)
    x = next(built.train_stream)["input_ids"]
    for schedule in run.stages:
        built.lm.schedule = hyperschedule(schedule["schedule"])
        with torch.no_grad():
            a = built.lm.loss(x, generator=torch.Generator().manual_seed(1), two_halves=True).loss
            b = built.lm.loss(x, generator=torch.Generator().manual_seed(2), two_halves=True).loss
            halves = [built.lm.loss(h, generator=torch.Generator().manual_seed(3), two_halves=True).loss for h in x.chunk(2)]
        assert torch.equal(a, b)  # no dependence on the random draws
        torch.testing.assert_close(a, (halves[0] + halves[1]) / 2, rtol=1e-6, atol=1e-6)


# -- the real thing ------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch built without torch.distributed")
def test_two_processes_match_one_process_on_the_doubled_batch(tmp_path, monkeypatch):
    steps, B = 3, 4
    proc = torchrun([WORKER, "--out", tmp_path / "two", "--batch", B, "--steps", steps])
    # meanwhile, the reference here: one process, batch 2B, the same rows
    for k in ("RANK", "WORLD_SIZE"):
        monkeypatch.delenv(k, raising=False)
    single = ddp_worker.run(tmp_path / "one", 2 * B, steps)
    finish(proc)

    r0 = json.loads((tmp_path / "two" / "losses-0.json").read_text())
    r1 = json.loads((tmp_path / "two" / "losses-1.json").read_text())
    assert r0["world"] == r1["world"] == 2 and single["world"] == 1
    assert len(single["rows"]) == 2 * steps  # two stages
    for k, rows in enumerate(single["rows"]):
        assert rows == r0["rows"][k] + r1["rows"][k]
    # each rank's loss is a mean over its rows: their average is the single process's loss
    for a, b, s in zip(r0["loss"], r1["loss"], single["loss"]):
        assert abs((a + b) / 2 - s) < 1e-5

    two = torch.load(tmp_path / "two" / "weights.pt")
    one = torch.load(tmp_path / "one" / "weights.pt")
    init = torch.load(tmp_path / "one" / "init.pt")
    assert two.keys() == one.keys() == init.keys()
    moved = max(float((one[k] - init[k]).abs().max()) for k in one)
    assert moved > 1e-3, "training did not move the weights: the comparison would prove nothing"
    for k in one:
        torch.testing.assert_close(two[k], one[k], rtol=0, atol=1e-5, msg=lambda m: f"{k}: {m}")

    # each stage's checkpoint (a new Trainer per stage, as the CLI runs a recipe's stages) holds
    # the bare model's weights, not a DDP wrapper's ("module." keys), and equals the final weights
    from diffusionlm.training import latest_checkpoint, load_checkpoint

    for stage in ("stage-1", "stage-2"):
        ck = load_checkpoint(latest_checkpoint(tmp_path / "two" / stage))
        assert ck["trainer_state"]["step"] == steps
        assert not any(k.startswith("module.") for k in ck["model"]), f"{stage}: {sorted(ck['model'])[:3]}"
        assert set(ck["model"]) <= set(one)  # (a tied head may be stored once)
    for k, v in ck["model"].items():
        torch.testing.assert_close(v, two[k], rtol=0, atol=0)
