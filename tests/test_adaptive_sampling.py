"""Adaptive parallel decoding (Threshold), the approximate prefix / dual caches, ReMDM re-masking.

By definition: the selection rule against a brute-force reading of it; threshold 0 decodes each
stage of the hyperschedule in one call, threshold 1 one token per call; under Quench with the
oracle the samples follow the true law (one position per call is exact ancestral sampling); a
fresh dual / prefix cache gives the uncached logits and refreshing every call gives the uncached
sampler; ReMDM's posterior keeps the forward marginals and ReMDM(eta=0) is MDLM. Contracts: each
option composes with Block, Slide and Flat (never MASK, fixed positions unchanged, seeded
reproducible, exact cache == no cache); bad inputs are one clear error.
"""
from __future__ import annotations

import math
import os
from dataclasses import replace

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

from diffusionlm import specs
from diffusionlm.lm import DiffusionLM
from diffusionlm.models.hf import HFDenoiser
from diffusionlm.processes import Absorb, Uniform
from diffusionlm.samplers import MDLM, ReMDM, Threshold
from diffusionlm.samplers.adaptive import cache_rows, confidence_of, select_by_confidence, stage_steps
from diffusionlm.samplers.remdm import remask_posterior, remask_sigma
from diffusionlm.schedules import Block, Flat, Quench, Slide
from test_hf_adapter import hf_model
from test_samplers import D_TOY, P_TOY, N, S_TOY, chi_square_p, gen, make_lm, process, toy_lm

D = 12
SCHEDULES = [Flat(), Flat(6), Block(4), Block(3, 2), Slide(4), Quench()]
KINDS = ["absorb", "epsilon", "gamma"]


def lm_for(kind: str, schedule, layout: str = "aligned") -> DiffusionLM:
    return make_lm(process(kind), schedule, layout, time_conditioning=(kind == "gamma"))


def n_stages(schedule, d: int) -> int:
    """Calls of threshold 0: each call decodes every started position of the stage (the earliest
    finish step of the positions left), until none is left."""
    table = (schedule.with_steps(1) if schedule.continuous else schedule).table(d)
    start, finish = stage_steps(table)
    left, calls = set(range(d)), 0
    while left:
        stage = min(int(finish[i]) for i in left)
        left -= {i for i in left if int(start[i]) <= stage}
        calls += 1
    return calls


# ---------------------------------------------------------------------------------------------
# the selection rule and the stages
# ---------------------------------------------------------------------------------------------
def brute_select(conf, movable, threshold, cap):
    out = torch.zeros_like(movable)
    for b in range(conf.shape[0]):
        idx = [i for i in range(conf.shape[1]) if movable[b, i]]
        if not idx:
            continue
        best = max(idx, key=lambda i: (conf[b, i].item(), -i))
        take = {i for i in idx if conf[b, i] > threshold} | {best}
        if cap is not None:
            take = set(sorted(take, key=lambda i: (-conf[b, i].item(), i))[:cap])
        for i in take:
            out[b, i] = True
    return out


def test_selection_rule_matches_its_definition():
    g = gen(0)
    for trial in range(200):
        conf = torch.rand(3, 7, generator=g, dtype=torch.float64)
        if trial % 3 == 0:
            conf = (conf * 4).round() / 4  # ties
        movable = torch.rand(3, 7, generator=g) < 0.6
        for threshold in (0.0, 0.3, 0.75, 1.0):
            for cap in (None, 1, 2, 5):
                got = select_by_confidence(conf, movable, threshold, cap)
                assert torch.equal(got, brute_select(conf, movable, threshold, cap)), (trial, threshold, cap)


def test_stage_steps():
    start, finish = stage_steps(Block(2, 2).table(6))
    assert start.tolist() == [1, 1, 3, 3, 5, 5] and finish.tolist() == [2, 2, 4, 4, 6, 6]
    start, finish = stage_steps(Slide(3).table(5))
    assert start.tolist() == [1, 2, 3, 4, 5] and finish.tolist() == [3, 4, 5, 6, 7]
    start, finish = stage_steps(Flat(4).table(3))
    assert start.tolist() == [1, 1, 1] and finish.tolist() == [4, 4, 4]


# ---------------------------------------------------------------------------------------------
# threshold 0: one call per stage; threshold 1: one token per call
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("schedule", SCHEDULES, ids=repr)
def test_threshold_zero_decodes_each_stage_in_one_call(schedule):
    out = Threshold(0.0).sample(lm_for("absorb", schedule), batch_size=2, length=D, generator=gen(1))
    want = n_stages(schedule, D)
    assert out.num_model_calls == want
    assert out.calls_per_sample.tolist() == [want, want]
    if isinstance(schedule, Flat):
        assert out.num_model_calls == 1


@pytest.mark.parametrize("schedule", SCHEDULES, ids=repr)
def test_threshold_one_decodes_one_token_per_call(schedule):
    seen = []
    out = Threshold(1.0).sample(lm_for("absorb", schedule), batch_size=2, length=D, generator=gen(2), callback=seen.append)
    assert out.num_model_calls == D and len(seen) == D
    for rec in seen:
        assert rec.changed.sum(1).tolist() == [1, 1]


def test_calls_per_sample_differ_per_row():
    """Row 0 has 8 fixed positions: it needs 4 calls at one token per call, row 1 needs 12."""
    prompt = torch.randint(0, N, (2, D), generator=gen(3))
    fixed = torch.zeros(2, D, dtype=torch.bool)
    fixed[0, :8] = True
    out = Threshold(1.0).sample(lm_for("absorb", Flat()), 2, D, prompt=prompt, fixed=fixed, generator=gen(3))
    assert out.calls_per_sample.tolist() == [4, 12] and out.num_model_calls == 12
    assert torch.equal(out.tokens[0, :8], prompt[0, :8])


def test_fixed_step_samplers_report_calls_per_sample():
    out = MDLM(steps=5).sample(lm_for("absorb", Flat()), batch_size=3, length=D, generator=gen(0))
    assert out.calls_per_sample.tolist() == [out.num_model_calls] * 3
    assert out.calls_of_samples().tolist() == [out.num_model_calls] * 3


@pytest.mark.parametrize("schedule", [Flat(), Block(4), Slide(4)], ids=repr)
def test_threshold_passes_and_the_forced_token(schedule):
    """Each call unmasks the tokens above the threshold plus one: whenever a row unmasks more
    than one token, all of them are above the threshold."""
    lm = make_lm(Absorb(N), schedule, seed=5)
    with torch.no_grad():  # sharpen the tiny model so that confidences spread over [0, 1]
        lm.model.tok_emb.weight.mul_(8.0)
    seen = []
    out = Threshold(0.3).sample(lm, batch_size=4, length=D, generator=gen(4), callback=seen.append)
    assert len(seen) == out.num_model_calls < 4 * D
    several = 0
    for rec in seen:
        for b in range(4):
            c = rec.confidence[b][rec.changed[b]]
            if c.numel() > 1:
                several += 1
                assert bool((c > 0.3).all())
    assert several > 0


@pytest.mark.parametrize("cap", [1, 3, 5])
def test_budgeted_variant_caps_tokens_per_call(cap):
    seen = []
    lm = lm_for("absorb", Block(6))
    out = Threshold(0.0, max_per_step=cap).sample(lm, batch_size=2, length=D, generator=gen(5), callback=seen.append)
    assert out.num_model_calls == 2 * math.ceil(6 / cap)  # exactly min(cap, left) per call: top-k decoding
    for rec in seen:
        assert bool((rec.changed.sum(1) <= cap).all())


def test_quench_with_the_oracle_follows_the_true_law():
    """Under Quench one position moves per call: threshold decoding is exact ancestral sampling."""
    out = Threshold(0.5).sample(toy_lm("absorb", Quench()), batch_size=S_TOY, length=D_TOY, generator=gen(6))
    assert out.num_model_calls == D_TOY
    assert chi_square_p(out.tokens, P_TOY, 3) > 1e-3


@pytest.mark.parametrize("confidence", ["max", "margin"])
def test_ordering_by_the_distribution_keeps_the_true_law_where_the_drawn_token_does_not(confidence):
    """Under Flat (one stage, every position movable) one token a call: ordered by a function of
    each position's distribution, the order is chosen before the value and every written token is
    an exact draw from the oracle's conditional, so the samples follow the true law; ordered by the
    probability of each position's own draw (Fast-dLLM's "drawn"), the modes are preferred and the
    law is visibly not kept."""
    lm = toy_lm("absorb", Flat())
    out = Threshold(1.0, order_by=confidence).sample(lm, batch_size=S_TOY, length=D_TOY, generator=gen(9))
    assert out.num_model_calls == D_TOY
    assert chi_square_p(out.tokens, P_TOY, 3) > 1e-3
    drawn = Threshold(1.0).sample(lm, batch_size=S_TOY, length=D_TOY, generator=gen(9))
    assert chi_square_p(drawn.tokens, P_TOY, 3) < 1e-6


def test_confidence_of_each_kind():
    p = torch.tensor([[[0.5, 0.3, 0.2], [0.1, 0.1, 0.8]]], dtype=torch.float64)
    drawn = torch.tensor([[1, 2]])
    assert torch.allclose(confidence_of(p, drawn, "drawn"), torch.tensor([[0.3, 0.8]], dtype=torch.float64))
    assert torch.allclose(confidence_of(p, drawn, "max"), torch.tensor([[0.5, 0.8]], dtype=torch.float64))
    assert torch.allclose(confidence_of(p, drawn, "margin"), torch.tensor([[0.2, 0.7]], dtype=torch.float64))
    with pytest.raises(ValueError, match=r"order_by \(the confidence ranking the positions\) must be one of \('drawn', 'max', 'margin'\), got 'entropy'"):
        Threshold(0.5, order_by="entropy")


# ---------------------------------------------------------------------------------------------
# composes with every hyperschedule, process and layout
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("layout", ["aligned", "shifted"])
@pytest.mark.parametrize("schedule", [Flat(), Block(4), Slide(4)], ids=repr)
def test_threshold_composes(kind, layout, schedule):
    lm = lm_for(kind, schedule, layout)
    prompt = torch.randint(0, N, (3, D), generator=gen(7))
    fixed = torch.zeros(3, D, dtype=torch.bool)
    fixed[:, [0, 1, 7]] = True
    mask_id = lm.process.mask_id
    for sampler in (Threshold(0.5), Threshold(0.2, max_per_step=2), Threshold(0.5, block=4)):
        a = sampler.sample(lm, 3, D, prompt=prompt, fixed=fixed, generator=gen(8))
        b = sampler.sample(lm, 3, D, prompt=prompt, fixed=fixed, generator=gen(8))
        c = replace(sampler, cache=False).sample(lm, 3, D, prompt=prompt, fixed=fixed, generator=gen(8))
        assert torch.equal(a.tokens, b.tokens)  # seeded
        assert torch.equal(a.tokens, c.tokens)  # exact cache == no cache
        assert not bool((a.tokens == mask_id).any()) and bool((a.tokens < N).all())
        assert torch.equal(a.tokens[fixed], prompt[fixed])


def test_threshold_spec_round_trip():
    s = Threshold(0.7, max_per_step=4, block=8, approx_cache="dual", refresh_every=3, order_by="margin")
    spec = s.to_dict()
    assert spec["name"] == "threshold"
    assert specs.build("sampler", spec) == s


# ---------------------------------------------------------------------------------------------
# approximate caches
# ---------------------------------------------------------------------------------------------
def hf_lm(kind: str, layout: str = "shifted") -> DiffusionLM:
    model = HFDenoiser.from_model(hf_model(kind), mask="add")
    n = model.mask_id
    return DiffusionLM(model, Absorb(n, mask_id=n), Flat(), layout=layout, bos_id=0)


def models_for_cache():
    return [("transformer", lambda: lm_for("absorb", Flat())), ("gpt2", lambda: hf_lm("gpt2")),
            ("llama", lambda: hf_lm("llama"))]


@pytest.mark.parametrize("name,build", models_for_cache(), ids=lambda v: v if isinstance(v, str) else "")
def test_fresh_dual_and_prefix_caches_give_the_uncached_logits(name, build):
    """The cache plumbing is exact: K/V of a full forward, rows re-selected (prefix, or prefix +
    suffix out of position order), then the block fed alone, give the full forward's logits."""
    lm = build()
    model, d, a, b = lm.model, D, 4, 8
    x = torch.randint(0, lm.process.vocab_size, (2, d), generator=gen(9))
    x[:, 5:] = lm.process.mask_id
    pos = torch.arange(d)
    full = model(x, position_ids=pos[None].expand(2, -1), attention_mask=None, cache=model.empty_cache(), cache_commit=d)
    for keep, feed in ((torch.cat([pos[:a], pos[b:]]), pos[a:b]), (pos[:a], pos[a:])):
        out = model(x[:, feed], position_ids=feed[None].expand(2, -1), attention_mask=None, cache=cache_rows(full.cache, keep))
        assert (out.logits - full.logits[:, feed]).abs().max().item() < 1e-4


@pytest.mark.parametrize("mode", ["prefix", "dual"])
@pytest.mark.parametrize("name,build", models_for_cache(), ids=lambda v: v if isinstance(v, str) else "")
def test_cache_refreshed_every_call_equals_uncached(mode, name, build):
    lm = build()
    ref = Threshold(0.2, block=4).sample(lm, 2, D, generator=gen(10))
    out = Threshold(0.2, block=4, approx_cache=mode, refresh_every=1).sample(lm, 2, D, generator=gen(10))
    assert torch.equal(out.tokens, ref.tokens) and out.num_model_calls == ref.num_model_calls


class FedRows:
    """Wraps a model and records how many rows each call fed."""

    def __init__(self, model):
        self.model, self.fed, self.vocab_size = model, [], model.vocab_size

    def __call__(self, ids, **kw):
        self.fed.append(ids.shape[1])
        return self.model(ids, **kw)

    def empty_cache(self):
        return self.model.empty_cache()

    def parameters(self):
        return self.model.parameters()


@pytest.mark.parametrize("mode,between", [("prefix", "rest"), ("dual", "block")])
def test_approx_caches_feed_fewer_rows(mode, between):
    lm = lm_for("absorb", Flat())
    spy = FedRows(lm.model)
    lm2 = DiffusionLM(spy, lm.process, lm.schedule, layout=lm.layout, bos_id=lm.bos_id)
    out = Threshold(1.0, block=4, approx_cache=mode).sample(lm2, 1, D, generator=gen(11))
    assert out.num_model_calls == D and len(spy.fed) == D
    for call, rows in enumerate(spy.fed):
        blk = call // 4
        want = D if call % 4 == 0 else (D - 4 * blk if between == "rest" else 4)
        assert rows == want, (call, spy.fed)
    assert not bool((out.tokens == lm.process.mask_id).any())


def test_approx_cache_errors_name_both():
    class NoCache:
        def __init__(self, model):
            self.model, self.vocab_size = model, model.vocab_size

        def __call__(self, ids, **kw):
            return self.model(ids, **kw)

        def parameters(self):
            return self.model.parameters()

    lm = lm_for("absorb", Flat())
    bare = DiffusionLM(NoCache(lm.model), lm.process, lm.schedule, layout=lm.layout, bos_id=lm.bos_id)
    with pytest.raises(ValueError, match=r"approx_cache='dual'.*NoCache"):
        Threshold(0.5, block=4, approx_cache="dual").sample(bare, 1, D)
    for schedule in (Block(4), Slide(4)):
        with pytest.raises(ValueError, match=r"approx_cache='prefix'.*(Block|Slide).*no suffix"):
            Threshold(0.5, block=4, approx_cache="prefix").sample(lm_for("absorb", schedule), 1, D)
    with pytest.raises(ValueError, match="give block="):
        Threshold(0.5, approx_cache="dual")
    with pytest.raises(ValueError, match="approx_cache must be one of"):
        Threshold(0.5, block=4, approx_cache="suffix")
    with pytest.raises(ValueError, match="refresh_every applies to an approximate cache"):
        Threshold(0.5, refresh_every=2)


# ---------------------------------------------------------------------------------------------
# bad inputs
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", [-0.1, 1.5, float("nan"), True, "0.5", None])
def test_threshold_outside_unit_interval_is_an_error(bad):
    with pytest.raises(ValueError, match=r"threshold \(1: one token per call\) must be a number in \[0, 1\]"):
        Threshold(bad)


@pytest.mark.parametrize("field", ["max_per_step", "block", "refresh_every"])
def test_bad_counts(field):
    extra = {"approx_cache": "dual", "block": 4} if field == "refresh_every" else {}
    with pytest.raises(ValueError, match=f"{field} must be an int >= 1"):
        Threshold(0.5, **{**extra, field: 0})


def test_threshold_needs_a_mask():
    lm = make_lm(Uniform(N), Flat())
    with pytest.raises(ValueError, match="no MASK"):
        Threshold(0.5).sample(lm, 1, D)


# ---------------------------------------------------------------------------------------------
# ReMDM
# ---------------------------------------------------------------------------------------------
def test_remask_posterior_keeps_the_forward_marginals():
    """With y known, z_t ~ q_t(. | y) pushed through the ReMDM step is q_s(. | y) for every
    sigma in [0, sigma_max] (so re-masking does not change the marginals)."""
    g = gen(12)
    n, mask_id = 5, 5
    a_t = torch.rand(64, generator=g, dtype=torch.float64) * 0.9
    a_s = a_t + (1 - a_t) * torch.rand(64, generator=g, dtype=torch.float64)
    for eta, sched in ((0.0, "cap"), (0.05, "cap"), (1.0, "cap"), (0.5, "rescale"), (1.0, "rescale")):
        sigma = remask_sigma(a_t, a_s, eta, sched)
        assert bool((sigma >= 0).all() and (sigma * a_t <= 1 - a_s + 1e-12).all())
        y = torch.full((64,), 2)
        onehot = torch.nn.functional.one_hot(y, n).double()
        from_mask = remask_posterior(torch.full((64,), mask_id), a_t, a_s, sigma, onehot, mask_id, n + 1)
        from_y = remask_posterior(y, a_t, a_s, sigma, onehot, mask_id, n + 1)
        law = (1 - a_t)[:, None] * from_mask + a_t[:, None] * from_y
        want = torch.zeros(64, n + 1, dtype=torch.float64)
        want[:, 2], want[:, mask_id] = a_s, 1 - a_s
        assert torch.allclose(law, want, atol=1e-12)
    assert torch.equal(remask_sigma(torch.tensor([0.5]), torch.tensor([1.0]), 1.0, "cap"), torch.tensor([0.0]))


@pytest.mark.parametrize("schedule", [Flat(8), Block(4, 3), Slide(4), Quench()], ids=repr)
def test_remdm_eta_zero_is_mdlm(schedule):
    lm = lm_for("absorb", schedule)
    a = MDLM().sample(lm, 3, D, generator=gen(13)).tokens
    b = ReMDM(0.0).sample(lm, 3, D, generator=gen(13)).tokens
    assert torch.equal(a, b)


@pytest.mark.parametrize("layout", ["aligned", "shifted"])
@pytest.mark.parametrize("schedule", [Flat(10), Block(4, 3), Slide(4)], ids=repr)
@pytest.mark.parametrize("sched", ["cap", "rescale"])
def test_remdm_composes_and_remasks(layout, schedule, sched):
    lm = lm_for("absorb", schedule, layout)
    prompt = torch.randint(0, N, (3, D), generator=gen(14))
    fixed = torch.zeros(3, D, dtype=torch.bool)
    fixed[:, [0, 5]] = True
    seen = []
    sampler = ReMDM(0.5, schedule=sched)
    a = sampler.sample(lm, 3, D, prompt=prompt, fixed=fixed, generator=gen(15), callback=seen.append)
    b = ReMDM(0.5, schedule=sched, cache=False).sample(lm, 3, D, prompt=prompt, fixed=fixed, generator=gen(15))
    assert torch.equal(a.tokens, b.tokens)
    assert not bool((a.tokens == N).any()) and torch.equal(a.tokens[fixed], prompt[fixed])
    remasked = sum(int((r.changed & (r.tokens == N)).sum()) for r in seen)
    assert remasked > 0  # decoded tokens really go back to MASK
    for r in seen:
        assert not bool(r.changed[fixed].any())


def test_remdm_errors():
    with pytest.raises(ValueError, match=r"ReMDM eta must be a number in \[0, 1\]"):
        ReMDM(1.5)
    with pytest.raises(ValueError, match="ReMDM schedule must be one of"):
        ReMDM(0.1, schedule="loop")
    with pytest.raises(ValueError, match="not Absorb"):
        ReMDM(0.1).sample(lm_for("epsilon", Flat(4)), 1, D)
