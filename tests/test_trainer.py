"""Trainer: exact resume, atomic checkpoints, non-finite stop, EMA, validation."""
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from diffusionlm.lm import DiffusionLM
from diffusionlm.models import DiffusionTransformer, TransformerConfig
from diffusionlm.processes import Absorb, GammaHybrid
from diffusionlm.schedules import Block, Flat
from diffusionlm.training import (
    CheckpointFormatError, NonFiniteError, NonFiniteLossError, RunDirInUse, RunDirLock, TrainConfig, Trainer,
    latest_checkpoint, load_checkpoint,
)
from diffusionlm.io.safeio import CorruptFileError, load_safetensors
from diffusionlm.training.checkpoint import save_checkpoint

N = 13


class Stream:
    """A resumable stream of random batches: batch i depends only on (seed, i)."""

    def __init__(self, batch=4, d=12, seed=0):
        self.batch, self.d, self.seed, self.i = batch, d, seed, 0

    def __next__(self):
        g = torch.Generator().manual_seed(self.seed * 100003 + self.i)
        self.i += 1
        return torch.randint(0, N, (self.batch, self.d), generator=g)

    def state_dict(self):
        return {"i": self.i}

    def load_state_dict(self, s):
        self.i = s["i"]


def make_lm(process=None, dropout=0.1, seed=0):
    torch.manual_seed(seed)
    process = process or Absorb(N)
    cfg = TransformerConfig.preset("tiny", vocab_size=process.model_vocab_size, input_vocab_size=N + 2, n_layers=2,
                                   hidden=32, n_heads=2, max_positions=32, dropout=dropout,
                                   time_conditioning=process.time_conditioned)
    return DiffusionLM(DiffusionTransformer(cfg), process, Flat())


def cfg(tmp, **kw):
    base = dict(steps=6, lr=3e-3, warmup_steps=2, ema=0.9, out_dir=str(tmp), progress=False, seed=3, clip=0.5)
    base.update(kw)
    return TrainConfig(**base)


def weights(trainer):
    return {k: v.clone() for k, v in trainer.module.state_dict().items()}


def test_resume_is_exact(tmp_path):
    straight = Trainer(make_lm(), cfg(tmp_path / "a"), Stream())
    straight.fit()
    # k steps, stop, resume in a fresh process-like object, k more
    first = Trainer(make_lm(), cfg(tmp_path / "b"), Stream())
    first.fit(steps=3)
    torch.manual_seed(12345)  # a resumed run must not depend on the state it starts in
    second = Trainer(make_lm(seed=99), cfg(tmp_path / "b"), Stream())
    assert second.step == 3
    second.fit()
    a, b = weights(straight), weights(second)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    la = [m["loss"] for m in straight.history]
    lb = [m["loss"] for m in first.history] + [m["loss"] for m in second.history]
    assert la == lb
    ema_a, ema_b = straight.ema.state_dict(), second.ema.state_dict()
    assert all(torch.equal(ema_a[k], ema_b[k]) for k in ema_a)
    # the metrics log holds each step once
    steps = [json.loads(l)["step"] for l in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 7))


def test_killed_save_leaves_previous_checkpoint(tmp_path):
    t = Trainer(make_lm(), cfg(tmp_path, save_every=2, steps=2), Stream())
    t.fit()
    good = latest_checkpoint(tmp_path)
    assert good.name == "checkpoint-000002"
    t.step = 3
    for crash in ("model.safetensors", "ema.safetensors", "optimizer.safetensors", "trainer_state.json"):
        with pytest.raises(KeyboardInterrupt):
            save_checkpoint(tmp_path, 3, t.module.state_dict(), {"x": 1}, {"step": 3}, ema_state=t.ema.state_dict(),
                            _crash_after=crash)
        assert latest_checkpoint(tmp_path) == good
        ck = load_checkpoint(good)
        assert ck["trainer_state"]["step"] == 2
    resumed = Trainer(make_lm(), cfg(tmp_path, save_every=2, steps=4), Stream())
    assert resumed.step == 2
    resumed.fit()
    assert latest_checkpoint(tmp_path).name == "checkpoint-000004"
    assert not list(tmp_path.glob("*.tmp-*"))  # leftovers of the killed saves are cleaned


def test_non_finite_loss_stops_with_a_message(tmp_path):
    t = Trainer(make_lm(dropout=0.0), cfg(tmp_path, steps=4, save_every=1), Stream())
    t.fit(steps=2)
    with torch.no_grad():
        next(t.module.parameters()).fill_(float("nan"))
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss \(nan\) at step 3.*checkpoint-000002") as err:
        t.fit()
    assert "\n" not in str(err.value)
    assert latest_checkpoint(tmp_path).name == "checkpoint-000002"


def test_nan_in_a_weight_the_loss_never_reads_stops_and_keeps_the_checkpoint(tmp_path):
    """Row N+1 of the input embedding (an id the data never holds, outside the tied head): a NaN
    there leaves the loss finite, so only the weight check sees it. Nothing non-finite is saved."""
    t = Trainer(make_lm(dropout=0.0), cfg(tmp_path, steps=4, save_every=2), Stream())
    t.fit(steps=2)
    good = latest_checkpoint(tmp_path)
    with torch.no_grad():
        t.module.tok_emb.weight[N + 1, 3] = float("nan")
    with pytest.raises(NonFiniteError, match=r"non-finite weights \(tok_emb\.weight\) after step 3, not saved.*checkpoint-000002"):
        t.fit()
    with pytest.raises(NonFiniteError, match="tok_emb.weight"):
        t.save()  # asked directly: refused too
    assert latest_checkpoint(tmp_path) == good and sorted(p.name for p in tmp_path.glob("checkpoint-*")) == ["checkpoint-000002"]
    assert torch.isfinite(load_checkpoint(good)["model"]["tok_emb.weight"]).all()
    with pytest.raises(NonFiniteError, match="weights hold non-finite values"):  # the writer's own guard
        save_checkpoint(tmp_path, 9, t.module.state_dict(), {}, {"step": 9})
    assert latest_checkpoint(tmp_path) == good


def test_non_finite_gradient_is_not_applied(tmp_path):
    t = Trainer(make_lm(dropout=0.0), cfg(tmp_path, steps=4), Stream())
    t.fit(steps=1)
    before = weights(t)
    p = t.module.blocks[0].mlp.fc.weight
    p.register_hook(lambda g: g * float("nan"))
    with pytest.raises(NonFiniteError, match=r"non-finite gradient norm \(nan\) at step 2, not applied"):
        t.train_step()
    after = weights(t)
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_loss_falls_on_a_fixed_batch(tmp_path):
    class Fixed(Stream):
        def __next__(self):
            self.i += 1
            # the same two sequences, 8 copies each: MDLM's 1/l-weighted loss needs a few
            # hundred tokens per step to make steady progress
            return torch.arange(24).remainder(N).view(2, 12).repeat(8, 1)

    x = next(Fixed())[:2]

    def bound(lm):  # the seeded NLL bound: a low-variance view of the objective
        return float(lm.nll_bound(x, num_samples=32, generator=torch.Generator().manual_seed(0)).nll.mean())

    for proc in (Absorb(N), GammaHybrid(N, 0.1)):
        lm = make_lm(proc, dropout=0.0)
        before = bound(lm)
        Trainer(lm, TrainConfig(steps=100, lr=3e-3, lr_schedule="constant", clip=None, progress=False, seed=0), Fixed()).fit()
        after = bound(lm)
        assert after < 0.8 * before, (proc, before, after)


def test_validation_and_accumulation(tmp_path):
    val = [Stream(seed=7).__next__() for _ in range(2)]
    t = Trainer(make_lm(), cfg(tmp_path, steps=2, eval_every=2, eval_batches=2, eval_samples=2, grad_accum=2), Stream(), val)
    hist = t.fit()
    assert "val_nll" in hist[-1] and hist[-1]["val_ppl"] > 1
    assert hist[-1]["tokens"] == 2 * 4 * 12
    # the same seeded evaluation gives the same number
    assert t.evaluate()["val_nll"] == t.evaluate()["val_nll"]


def test_config_errors():
    with pytest.raises(ValueError, match="steps"):
        TrainConfig(steps=0)
    with pytest.raises(ValueError, match="precision"):
        TrainConfig(precision="fp8")
    with pytest.raises(ValueError, match="ema"):
        TrainConfig(ema=1.5)
    with pytest.raises(ValueError, match="fp16"):
        Trainer(make_lm(), TrainConfig(precision="fp16", progress=False), Stream(), device="cpu")


# ------------------------------------------------------------------------------------------
# untrusted checkpoints: nothing is unpickled
# ------------------------------------------------------------------------------------------
class Payload:
    """Unpickling this runs code: it writes the marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('ran')",))


def test_a_pickle_payload_in_optimizer_pt_is_refused_and_never_runs(tmp_path):
    run = tmp_path / "run"
    Trainer(make_lm(), cfg(run, steps=2), Stream()).fit()
    ck = latest_checkpoint(run)
    marker = tmp_path / "pwned"
    with open(ck / "optimizer.pt", "wb") as f:
        pickle.dump({"optimizer": Payload(marker)}, f)
    with pytest.raises(CheckpointFormatError, match="checkpoint written by an older format: .*optimizer.pt, a pickle"):
        Trainer(make_lm(), cfg(run, steps=4), Stream())
    # the same as format 1 wrote it: no "format" key, optimizer.pt beside the weights
    state = json.loads((ck / "trainer_state.json").read_text())
    del state["format"]
    (ck / "trainer_state.json").write_text(json.dumps(state))
    for f in ("optimizer.json", "optimizer.safetensors"):
        (ck / f).unlink()
    with pytest.raises(CheckpointFormatError, match="older format"):
        Trainer(make_lm(), cfg(run, steps=4), Stream())
    assert not marker.exists()
    # its weights are safetensors: they still load for sampling / evaluation
    from diffusionlm.training import load_model_weights

    model = make_lm().model
    load_model_weights(model, ck)
    assert torch.equal(model.tok_emb.weight, load_safetensors(ck / "model.safetensors")[0]["tok_emb.weight"])
    assert not marker.exists()


def test_resume_never_unpickles(tmp_path, monkeypatch):
    Trainer(make_lm(), cfg(tmp_path, steps=2), Stream()).fit()

    def refuse(*a, **k):
        raise AssertionError("something was unpickled")

    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    t = Trainer(make_lm(), cfg(tmp_path, steps=3), Stream())
    assert t.step == 2
    t.fit()
    assert latest_checkpoint(tmp_path).name == "checkpoint-000003"
    ck = latest_checkpoint(tmp_path)
    assert sorted(p.name for p in ck.iterdir()) == [
        "ema.safetensors", "model.safetensors", "optimizer.json", "optimizer.safetensors", "trainer_state.json"]


def flip_byte(path: Path, offset_in_data: int = 5) -> None:
    """Flip one byte of a safetensors file's tensor data (after its 8-byte length and header)."""
    raw = bytearray(path.read_bytes())
    start = 8 + int.from_bytes(raw[:8], "little")
    raw[start + offset_in_data] ^= 0x40
    path.write_bytes(bytes(raw))


def test_a_flipped_byte_in_a_checkpoint_is_reported_naming_the_file(tmp_path):
    for name in ("model.safetensors", "ema.safetensors", "optimizer.safetensors"):
        run = tmp_path / name
        Trainer(make_lm(), cfg(run, steps=1), Stream()).fit()
        flip_byte(latest_checkpoint(run) / name)
        with pytest.raises(CorruptFileError, match=rf"{name} fails its checksum"):
            Trainer(make_lm(), cfg(run, steps=2), Stream())
    run = tmp_path / "cut"
    Trainer(make_lm(), cfg(run, steps=1), Stream()).fit()
    f = latest_checkpoint(run) / "model.safetensors"
    f.write_bytes(f.read_bytes()[:-100])
    with pytest.raises(CorruptFileError, match=r"model.safetensors is not a readable safetensors file .*truncated"):
        Trainer(make_lm(), cfg(run, steps=2), Stream())


# ------------------------------------------------------------------------------------------
# the run directory: LATEST, the lock, clean-up, the metrics log
# ------------------------------------------------------------------------------------------
def test_latest_must_name_a_checkpoint_inside_the_run_directory(tmp_path):
    run = tmp_path / "run"
    Trainer(make_lm(), cfg(run, steps=1), Stream()).fit()
    outside = tmp_path / "elsewhere"
    (outside / "checkpoint-000009").mkdir(parents=True)
    (outside / "checkpoint-000009" / "trainer_state.json").write_text("{}")
    for bad in ("../elsewhere/checkpoint-000009", str(outside / "checkpoint-000009"), "checkpoint-000001/../..", "x"):
        (run / "LATEST").write_text(bad)
        with pytest.raises(ValueError, match="LATEST must name a checkpoint-<step> directory inside"):
            latest_checkpoint(run)
    (run / "checkpoint-000009").symlink_to(outside / "checkpoint-000009")
    (run / "LATEST").write_text("checkpoint-000009")
    with pytest.raises(ValueError, match="a link out of the run directory"):
        Trainer(make_lm(), cfg(run, steps=2), Stream())
    (run / "checkpoint-000009").unlink()
    (run / "LATEST").unlink()
    (run / "LATEST").symlink_to(outside / "checkpoint-000009" / "trainer_state.json")
    with pytest.raises(ValueError, match="not a link"):
        latest_checkpoint(run)


HOLD = "import sys, time; from diffusionlm.training import RunDirLock; RunDirLock(sys.argv[1]).acquire(); print('held', flush=True); time.sleep(120)"


def test_a_second_writer_is_refused_and_the_lock_dies_with_its_holder(tmp_path):
    run = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(run)], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    try:
        assert holder.stdout.readline().strip() == "held"
        t = Trainer(make_lm(), cfg(run, steps=2), Stream())
        with pytest.raises(RunDirInUse, match=rf"run dir {run} in use by PID {holder.pid}"):
            t.fit()
        assert not (run / "LATEST").exists() and not (run / "metrics.jsonl").exists()  # nothing written
    finally:
        holder.kill()  # killed, not released: the kernel drops the lock
        holder.wait()
    t.fit()
    assert latest_checkpoint(run).name == "checkpoint-000002"
    with RunDirLock(run), RunDirLock(run):  # re-entrant within a process
        Trainer(make_lm(), cfg(run, steps=3), Stream()).fit()


def test_clean_up_spares_another_live_process_temporary_files(tmp_path):
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    try:
        tmp_path.mkdir(exist_ok=True)
        theirs = [tmp_path / f"checkpoint-000005.tmp-{live.pid}", tmp_path / f"LATEST.tmp-{live.pid}"]
        stale = [tmp_path / f"checkpoint-000004.tmp-{dead.pid}", tmp_path / f"LATEST.tmp-{dead.pid}"]
        for p in (theirs[0], stale[0]):
            p.mkdir()
            (p / "model.safetensors").write_text("partial")
        for p in (theirs[1], stale[1]):
            p.write_text("checkpoint-000005")
        Trainer(make_lm(), cfg(tmp_path, steps=1), Stream()).fit()
        assert all(p.exists() for p in theirs), "another live process's temporary files were deleted"
        assert not any(p.exists() for p in stale)
    finally:
        live.kill()
        live.wait()


def steps_logged(run):
    return [json.loads(l)["step"] for l in (run / "metrics.jsonl").read_text().splitlines()]


def test_a_torn_last_metrics_line_is_dropped_and_said_so(tmp_path, capfd):
    Trainer(make_lm(), cfg(tmp_path, steps=4, save_every=2), Stream()).fit(steps=2)
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 3, "loss": 2.5')  # a kill in the middle of a write
    t = Trainer(make_lm(), cfg(tmp_path, steps=4, save_every=2), Stream())
    assert t.step == 2
    t.fit()
    assert "metrics.jsonl: dropped a torn last line" in capfd.readouterr().err
    assert steps_logged(tmp_path) == [1, 2, 3, 4]
    # damage anywhere but the last line is not an accident a kill makes: an error naming the line
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    lines[1] = lines[1][:10]
    (tmp_path / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    from diffusionlm.training import MetricsLog

    with pytest.raises(ValueError, match="metrics.jsonl line 2 is not JSON"):
        MetricsLog(tmp_path).read()


class Dies(Stream):
    """A stream whose process is 'killed' (KeyboardInterrupt) when step `at` asks for its batch."""

    def __init__(self, at, **kw):
        super().__init__(**kw)
        self.at = at

    def __next__(self):
        if self.i + 1 == self.at:
            raise KeyboardInterrupt("killed")
        return super().__next__()


def test_a_kill_before_the_first_checkpoint_does_not_duplicate_metrics(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        Trainer(make_lm(), cfg(tmp_path, steps=4), Dies(at=3)).fit()  # logs steps 1, 2; saves nothing
    assert steps_logged(tmp_path) == [1, 2] and latest_checkpoint(tmp_path) is None
    Trainer(make_lm(), cfg(tmp_path, steps=4), Stream()).fit()  # starts over
    assert steps_logged(tmp_path) == [1, 2, 3, 4]
    # and a kill after a checkpoint keeps the lines up to it, once
    with pytest.raises(KeyboardInterrupt):
        Trainer(make_lm(), cfg(tmp_path / "b", steps=6, save_every=2), Dies(at=4)).fit()
    assert steps_logged(tmp_path / "b") == [1, 2, 3]
    Trainer(make_lm(), cfg(tmp_path / "b", steps=6, save_every=2), Stream()).fit()
    assert steps_logged(tmp_path / "b") == [1, 2, 3, 4, 5, 6]


# ------------------------------------------------------------------------------------------
# a frozen base: checkpoints hold only what trains, and resume exactly
# ------------------------------------------------------------------------------------------
LLAMA = {"model_type": "llama", "vocab_size": 259, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
         "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 64,
         "bos_token_id": 257, "eos_token_id": 256, "pad_token_id": 258}


def lora_lm(seed=0, tied=False):
    """A tiny random Llama (built from its config after seeding, as `diffusionlm train` does) with
    LoRA on q / v: everything but the adapters frozen. `tied`: its head is its input embedding."""
    from diffusionlm.config import RunConfig
    from diffusionlm.io.runs import build
    from diffusionlm.training import seed_everything

    hf = {**LLAMA, "tie_word_embeddings": True} if tied else LLAMA
    run = RunConfig.from_file(None, ["model.kind=hf", "model.path=null", "model.hf_config=" + json.dumps(hf),
                                     'model.lora={"r": 4, "target_modules": ["q_proj", "v_proj"]}',
                                     "data.tokenizer=byte", "data.length=12", 'process={"name": "absorb"}'])
    seed_everything(seed)
    return build(run, data=False).lm


@pytest.mark.filterwarnings("ignore::FutureWarning")
def straight_and_stopped(make_lm, tmp_path):
    """A 4-step run made straight (in tmp_path/a) and one stopped after 2 steps (tmp_path/b), each on
    make_lm(): (straight, stopped, the stopped run's checkpoint, that checkpoint's tensors)."""
    straight = Trainer(make_lm(), cfg(tmp_path / "a", steps=4), Stream())
    straight.fit()
    first = Trainer(make_lm(), cfg(tmp_path / "b", steps=4), Stream())
    first.fit(steps=2)
    ck = latest_checkpoint(tmp_path / "b")
    return straight, first, ck, load_safetensors(ck / "model.safetensors")[0]


def test_lora_checkpoints_hold_the_adapters_only_and_resume_exactly(tmp_path):
    straight, first, ck, saved = straight_and_stopped(lora_lm, tmp_path)
    trainable = {n for n, p in first.module.named_parameters() if p.requires_grad}
    assert set(saved) == trainable and all("lora_" in n for n in saved)
    full_bytes = sum(v.numel() * v.element_size() for v in first.module.state_dict().values())
    ck_bytes = sum(f.stat().st_size for f in ck.iterdir())
    assert ck_bytes < 0.2 * full_bytes, (ck_bytes, full_bytes)  # weights + EMA + Adam moments of the adapters
    assert json.loads((ck / "trainer_state.json").read_text())["weights"] == "trainable"

    torch.manual_seed(999)
    second = Trainer(lora_lm(), cfg(tmp_path / "b", steps=4), Stream())
    assert second.step == 2
    second.fit()
    a, b = weights(straight), weights(second)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert [m["loss"] for m in straight.history] == [m["loss"] for m in first.history + second.history]
    ea, eb = straight.ema.state_dict(), second.ema.state_dict()
    assert all(torch.equal(ea[k], eb[k]) for k in ea)

    # the adapters belong to their base: another base (here another seed's random init) is refused
    with pytest.raises(ValueError, match="trained adapters on another base"):
        Trainer(lora_lm(seed=1), cfg(tmp_path / "b", steps=5), Stream())
    from diffusionlm.training import load_model_weights

    fresh = lora_lm().model
    load_model_weights(fresh, latest_checkpoint(tmp_path / "b"))
    c = fresh.state_dict()
    assert all(torch.equal(c[k], b[k]) for k in b)


# ------------------------------------------------------------------------------------------
# the command line: seeded before anything random; a stop is one line
# ------------------------------------------------------------------------------------------
def cli_train(corpus, out, *extra):
    from diffusionlm.cli import main

    return main(["train", "model.preset=tiny", 'model.overrides={"n_layers": 1, "hidden": 32, "n_heads": 2, "cond_dim": 16}',
                 "data.tokenizer=byte", f"data.corpus={corpus}", "data.length=16", "data.val_batches=0",
                 "train.steps=2", "train.batch_size=2", "train.progress=false", f"train.out_dir={out}", *extra])


def test_two_trainings_with_one_seed_give_identical_weights(tmp_path, capsys):
    import random

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the quick brown fox jumps over the lazy dog. " * 80)
    final = {}
    for name, seed, noise in (("a", 0, 1), ("b", 0, 2), ("c", 1, 1)):
        torch.manual_seed(noise)  # whatever state the process is in before
        random.seed(noise)
        torch.rand(noise)
        assert cli_train(corpus, tmp_path / name, f"train.seed={seed}") == 0
        final[name] = load_safetensors(tmp_path / name / "model" / "backbone" / "model.safetensors")[0]
    a, b, c = final["a"], final["b"], final["c"]
    assert all(torch.equal(a[k], b[k]) for k in a), "the same seed gave different weights"
    assert any(not torch.equal(a[k], c[k]) for k in a), "another seed gave the same weights: the check proves nothing"
    capsys.readouterr()
    # a run that blows up stops with one line and exit status 1, keeping nothing non-finite
    assert cli_train(corpus, tmp_path / "nan", "train.lr=1e30", "train.clip=null", "train.steps=4") == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "non-finite" in err and "at step 2" in err, err
    assert latest_checkpoint(tmp_path / "nan") is None


def test_a_tied_trainable_pair_is_checked_by_tensor_not_by_name(tmp_path):
    """A tied embedding / head trains as one parameter under two names (SmolLM2's LoRA run saved
    its MASK rows under the head's name; a fresh model lists the embedding's): either name loads,
    and a tensor that does not train here is still refused."""
    from diffusionlm.training.checkpoint import check_weights

    class Tied(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = torch.nn.Embedding(5, 3)
            self.body = torch.nn.Linear(3, 3)
            self.head = torch.nn.Linear(3, 5, bias=False)
            self.head.weight = self.emb.weight
            self.body.requires_grad_(False)

    m = Tied()
    assert [n for n, p in m.named_parameters() if p.requires_grad] == ["emb.weight"]
    check_weights(m, {"head.weight": torch.zeros(5, 3)}, tmp_path, partial=True)
    check_weights(m, {"emb.weight": torch.zeros(5, 3)}, tmp_path, partial=True)
    with pytest.raises(ValueError, match="not trainable here"):
        check_weights(m, {"emb.weight": torch.zeros(5, 3), "body.weight": torch.zeros(3, 3)}, tmp_path, partial=True)
    with pytest.raises(ValueError, match=r"missing \['emb.weight'\]"):
        check_weights(m, {}, tmp_path, partial=True)


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_a_tied_head_under_lora_checkpoints_the_adapters_only_and_resumes(tmp_path):
    """SmolLM2's head is its embedding; with the MASK row as peft trainable tokens both are wrapped,
    and torch's ignore_frozen_params kept the tied frozen weight under its second name (113 MB a
    checkpoint, and a resume that refused it). Now: adapters only; resume exact; an older
    checkpoint holding that frozen alias loads, one whose alias differs from the base is refused."""
    from diffusionlm.io.safeio import save_safetensors
    from diffusionlm.training import load_model_weights

    def tied_lm():
        return lora_lm(tied=True)

    lm = tied_lm()
    assert lm.model.model.get_output_embeddings().weight is not None
    straight, first, ck, saved = straight_and_stopped(tied_lm, tmp_path)
    assert saved and all("lora_" in k for k in saved), sorted(k for k in saved if "lora_" not in k)
    second = Trainer(tied_lm(), cfg(tmp_path / "b", steps=4), Stream())
    assert second.step == 2
    second.fit()
    a, b = weights(straight), weights(second)
    assert all(torch.equal(a[k], b[k]) for k in a)

    # a checkpoint written before the fix: the frozen tied weight under the head's name
    fresh = tied_lm().model
    alias = next(k for k in fresh.state_dict() if "lm_head" in k and k.endswith("base_layer.weight"))
    old = dict(saved, **{alias: fresh.state_dict()[alias].clone()})
    save_safetensors(ck / "model.safetensors", old)
    load_model_weights(fresh, ck)
    bad = dict(old, **{alias: old[alias] + 1})
    save_safetensors(ck / "model.safetensors", bad)
    with pytest.raises(ValueError, match="trainable weights of another configuration"):
        load_model_weights(tied_lm().model, ck)
