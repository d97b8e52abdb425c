"""Distributed training on CPU (gloo): two processes under torchrun end with the same weights as
one process on the doubled batch, through the real config / BatchStream / Trainer path, over two
stages (a new Trainer on the same model per stage, as `diffusionlm train` runs a recipe); and a job
checkpointed under DDP and under FSDP2 (`fully_shard`), SIGKILLed and relaunched, resumes exactly
as the uninterrupted job (the same per-rank losses, metrics and final weights, bitwise).

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
from diffusionlm.config import RunConfig
from diffusionlm.io.runs import build
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


# -- checkpoints that survive a kill: DDP and FSDP2, gloo on CPU ---------------------------
# tests/ddp_worker.py --resumable: Absorb + Flat, whose random levels each rank draws with its own
# generator (seed + rank), so an exact resume needs every rank's RNG state back, not rank 0's;
# a checkpoint every 2 steps; --die-at 3 SIGKILLs every rank when step 4 asks for its batch (step 3
# trained and logged, its checkpoint not yet due). Run again, the job resumes from LATEST (step 2).
RESUMABLE = ["--resumable", "--batch", 2, "--steps", 4]
_runs: dict = {}


def resumable_runs(tmp_path_factory, kind):
    """(straight, resumed) output folders of the uninterrupted and the killed-then-resumed job."""
    if kind not in _runs:
        from diffusionlm.training import latest_checkpoint

        base = tmp_path_factory.mktemp(kind)
        flag = ["--fsdp"] if kind == "fsdp" else []
        straight = torchrun([WORKER, *RESUMABLE, *flag, "--out", base / "straight"])
        killed = torchrun([WORKER, *RESUMABLE, *flag, "--out", base / "killed", "--die-at", 3])
        out, _ = killed.communicate(timeout=300)
        assert killed.returncode != 0, f"the job was not killed:\n{out[-3000:]}"
        run = base / "killed" / "run"
        assert latest_checkpoint(run).name == "checkpoint-000002"
        assert [json.loads(l)["step"] for l in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]
        finish(torchrun([WORKER, *RESUMABLE, *flag, "--out", base / "killed"]))
        finish(straight)
        _runs[kind] = (base / "straight", base / "killed")
    return _runs[kind]


@pytest.mark.slow
@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch built without torch.distributed")
@pytest.mark.parametrize("kind", ["ddp", "fsdp"])
def test_a_killed_job_resumes_exactly_as_the_uninterrupted_one(tmp_path_factory, kind):
    from diffusionlm.io.safeio import load_safetensors
    from diffusionlm.training import latest_checkpoint

    straight, resumed = resumable_runs(tmp_path_factory, kind)
    for rank in (0, 1):
        a = json.loads((straight / f"losses-{rank}.json").read_text())
        b = json.loads((resumed / f"losses-{rank}.json").read_text())
        assert a["world"] == b["world"] == 2 and a["start"] == 0 and b["start"] == 2
        assert b["steps"] == [3, 4] and b["loss"] == a["loss"][2:], (rank, a, b)
    r0 = json.loads((straight / "losses-0.json").read_text())["loss"]
    r1 = json.loads((straight / "losses-1.json").read_text())["loss"]
    assert r0 != r1  # the ranks draw differently: restoring rank 0's RNG everywhere would show
    # the metrics log: each step once, the losses of the uninterrupted run
    log = [[json.loads(l) for l in (d / "run" / "metrics.jsonl").read_text().splitlines()] for d in (straight, resumed)]
    assert [m["step"] for m in log[1]] == [1, 2, 3, 4]
    assert [m["loss"] for m in log[0]] == [m["loss"] for m in log[1]]
    w = [load_safetensors(d / "weights.safetensors", require_checksum=True)[0] for d in (straight, resumed)]
    assert w[0].keys() == w[1].keys() and all(torch.equal(w[0][k], w[1][k]) for k in w[0])
    # the checkpoint holds the gathered full weights (FSDP: not the shards), equal to the final ones
    ck = load_safetensors(latest_checkpoint(resumed / "run") / "model.safetensors", require_checksum=True)[0]
    assert ck.keys() == w[1].keys() and all(torch.equal(ck[k], w[1][k]) for k in ck)


@pytest.mark.slow
@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch built without torch.distributed")
def test_fsdp_trains_the_same_model_as_ddp(tmp_path_factory):
    from diffusionlm.io.safeio import load_safetensors

    ddp, fsdp = (resumable_runs(tmp_path_factory, k)[0] for k in ("ddp", "fsdp"))
    for rank in (0, 1):
        a, b = (json.loads((d / f"losses-{rank}.json").read_text())["loss"] for d in (ddp, fsdp))
        assert a == pytest.approx(b, rel=1e-5, abs=1e-6)
    a, b = (load_safetensors(d / "weights.safetensors")[0] for d in (ddp, fsdp))
    moved = max(float((a[k] - v).abs().max()) for k, v in load_safetensors(ddp / "run" / "checkpoint-000002" / "model.safetensors")[0].items())
    assert moved > 1e-4  # steps 3-4 moved the weights: agreeing at the end means something
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=1e-6, msg=lambda m: f"{k}: {m}")


@pytest.mark.slow
@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch built without torch.distributed")
def test_diffusionlm_train_under_torchrun_with_fsdp_keeps_the_full_model(tmp_path):
    """`torchrun -m diffusionlm.cli train train.fsdp=true`: the final model/ is written from the
    gathered full weights (FSDP's own state dict holds DTensor shards), equal to the last checkpoint."""
    from diffusionlm.models import DiffusionTransformer
    from diffusionlm.io.safeio import load_safetensors
    from diffusionlm.training import latest_checkpoint

    corpus = ddp_worker.write_corpus(tmp_path / "corpus.txt")
    out = tmp_path / "run"
    over = [o for o in ddp_worker.overrides(corpus, 2, 2) if not o.startswith(("stages=", "train.two_halves"))]
    finish(torchrun(["-m", "diffusionlm.cli", "train", *over, "train.fsdp=true", f"train.out_dir={out}"]))
    model = DiffusionTransformer.from_pretrained(out / "model" / "backbone")  # (a saved composition)
    ck = load_safetensors(latest_checkpoint(out) / "model.safetensors")[0]
    final = model.state_dict()
    assert ck.keys() == final.keys() and all(torch.equal(ck[k], final[k]) for k in ck)
