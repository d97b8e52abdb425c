"""Trainer: exact resume, atomic checkpoints, non-finite stop, EMA, validation."""
import json

import pytest
import torch

from diffusionlm.lm import DiffusionLM
from diffusionlm.models import DiffusionTransformer, TransformerConfig
from diffusionlm.processes import Absorb, GammaHybrid
from diffusionlm.schedules import Block, Flat
from diffusionlm.training import NonFiniteLossError, TrainConfig, Trainer, latest_checkpoint, load_checkpoint
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
    for crash in ("model.safetensors", "optimizer.pt"):
        with pytest.raises(KeyboardInterrupt):
            save_checkpoint(tmp_path, 3, t.module.state_dict(), {"x": 1}, {"step": 3}, _crash_after=crash)
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
    with pytest.raises(NonFiniteLossError, match=r"step 3.*checkpoint-000002"):
        t.fit()
    assert latest_checkpoint(tmp_path).name == "checkpoint-000002"


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
