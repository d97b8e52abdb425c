"""LAD sampler: re-masking schedule counts, confidence-guided re-masking, early stopping,
semi-autoregressive blocks, fixed positions, sampling knobs, errors."""
import math

import pytest
import torch

from diffusionlm.lm import DiffusionLM
from diffusionlm.models.base import DenoiserOutput
from diffusionlm.models.transformer import DiffusionTransformer, TransformerConfig
from diffusionlm.processes import Absorb, GammaHybrid, Structural, Uniform
from diffusionlm.samplers import SAMPLERS, get_sampler
from diffusionlm.samplers.lad import LAD
from diffusionlm.schedules.hyper import Flat

N = 50  # real tokens; MASK = N
MASK = N


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


_TINY = {}


def tiny_lm(process=None):
    """A random tiny transformer (cached: building it is the slow part) under Structural(N)."""
    if "model" not in _TINY:
        torch.manual_seed(0)
        _TINY["model"] = DiffusionTransformer(TransformerConfig.preset("tiny", vocab_size=N + 1)).eval()
    return DiffusionLM(_TINY["model"], process or Structural(N), Flat())


def eta_ref(k, n_iter, eta0, s):
    """The paper's schedule, written out independently of the sampler."""
    return eta0 * (math.exp(-s * k / n_iter) - math.exp(-s)) / (1 - math.exp(-s))


def count_ref(k, n_iter, eta0, s, n):
    return 0 if k >= n_iter else math.floor(eta_ref(k, n_iter, eta0, s) * n + 0.5)


class TableModel:
    """Stub denoiser: at position j puts probability probs[j, t] on token t whatever the input,
    and a huge logit on MASK (which the sampler must never emit)."""

    def __init__(self, probs):
        self.probs = probs  # [d, N]
        self.vocab_size = N + 1
        self.calls = 0
        self.seen_levels = []

    def __call__(self, input_ids, *, position_ids=None, attention_mask=None, levels=None, cache=None):
        self.calls += 1
        self.seen_levels.append(levels)
        B, L = input_ids.shape
        logits = torch.full((B, L, self.vocab_size), 0.0, dtype=torch.float64)
        logits[..., :N] = torch.log(self.probs[:L])
        logits[..., MASK] = 1e4
        return DenoiserOutput(logits)


class ScriptModel:
    """Stub denoiser whose greedy prediction for row b at call c (1-based) is token
    script(b, c) at every position; default script(b, c) = min(c, stop[b]): the prediction
    changes on calls 1 .. stop[b], then stays constant."""

    def __init__(self, stop=None, script=None):
        self.script = script or (lambda b, c: min(c, stop[b]))
        self.vocab_size = N + 1
        self.calls = 0

    def __call__(self, input_ids, *, position_ids=None, attention_mask=None, levels=None, cache=None):
        self.calls += 1
        B, L = input_ids.shape
        logits = torch.zeros(B, L, self.vocab_size)
        for b in range(B):
            logits[b, :, self.script(b, self.calls)] = 10.0
        return DenoiserOutput(logits)


def stub_lm(model, process=None):
    return DiffusionLM(model, process or Structural(N), Flat())


def masked(rec):
    return rec.tokens == MASK


# -- registry, schedule ---------------------------------------------------------------------
def test_registered_and_serialisable():
    assert get_sampler("lad") is LAD and SAMPLERS["lad"] is LAD
    d = LAD(iterations=8, top_k=1).to_dict()
    assert d["name"] == "lad" and d["iterations"] == 8 and d["top_k"] == 1


def test_schedule_endpoints_and_rounding_rule(monkeypatch):
    s = LAD(iterations=10, eta0=0.8, sharpness=3.0)
    assert s.eta(0) == pytest.approx(0.8) and s.eta(10) == 0.0
    etas = [s.eta(k) for k in range(11)]
    assert all(a > b for a, b in zip(etas, etas[1:]))
    for k in range(11):
        assert s.eta(k) == pytest.approx(eta_ref(k, 10, 0.8, 3.0), abs=1e-15)
        assert s.remask_count(k, 37) == count_ref(k, 10, 0.8, 3.0, 37)
    # round half UP (Python's round would give the even 2 for 2.5)
    monkeypatch.setattr(s, "eta", lambda k, n_iter=None: 0.5)
    assert s.remask_count(1, 5) == 3 and s.remask_count(1, 3) == 2
    assert LAD(remask=False).remask_count(1, 100) == 0


# -- scheduled re-masking ----------------------------------------------------------------------
@pytest.mark.parametrize("confidence", [False, True])
def test_remask_count_per_iteration_matches_schedule(confidence):
    lm = tiny_lm()
    it, eta0, s = 12, 0.9, 2.0
    # per-row infilling masks: each row has a different number n of free positions
    B, d = 3, 24
    fixed = torch.zeros(B, d, dtype=torch.bool)
    fixed[0, :3] = True
    fixed[1, ::4] = True
    fixed[2, 10:20] = True
    prompt = torch.randint(0, N, (B, d), generator=gen(1))
    sampler = LAD(iterations=it, eta0=eta0, sharpness=s, confidence=confidence, patience=None)
    out = sampler.sample(lm, B, d, prompt=prompt, fixed=fixed, generator=gen(0), keep_history=True)
    assert out.num_model_calls == it == len(out.history)
    n = (~fixed).sum(1).tolist()
    for rec in out.history:
        assert rec.step >= 1 and rec.levels is None
        m = masked(rec)
        assert not (m & fixed).any()  # only free positions are re-masked
        got = m.sum(1).tolist()
        want = [count_ref(rec.step, it, eta0, s, nb) for nb in n]
        assert got == want, (rec.step, got, want)  # exactly, so the draws are distinct positions
    assert [r.step for r in out.history] == list(range(1, it + 1))
    assert not masked(out.history[-1]).any() and not (out.tokens == MASK).any()
    assert any(count_ref(k, it, eta0, s, n[0]) > 0 for k in range(1, it))


def test_remask_false_never_shows_mask_after_the_first_iteration():
    lm = tiny_lm()
    for sampler in (LAD(iterations=6, remask=False, patience=None), LAD(iterations=6, eta0=0.0, patience=None)):
        out = sampler.sample(lm, 2, 16, prompt=torch.tensor([3, 4]), generator=gen(0), keep_history=True)
        assert len(out.history) == 6
        for rec in out.history:
            assert not masked(rec).any()
        # self-refinement: later iterations re-predict (and here change) the previous output
        assert any(rec.changed.any() for rec in out.history[1:])


def test_confidence_guided_remasks_the_least_confident():
    d = 12
    g = gen(3)
    top = torch.linspace(0.30, 0.90, d)[torch.randperm(d, generator=g)]  # distinct confidences
    probs = torch.full((d, N), 0.0, dtype=torch.float64)
    probs[:] = ((1 - top) / (N - 1)).double()[:, None]
    best = torch.randint(0, N, (d,), generator=g)
    probs[torch.arange(d), best] = top.double()
    model = TableModel(probs)
    it, eta0 = 8, 1.0
    sampler = LAD(iterations=it, eta0=eta0, confidence=True, top_k=1, patience=None)
    out = sampler.sample(stub_lm(model), 2, d, generator=gen(0), keep_history=True)
    order = torch.argsort(top.double())  # least confident first
    for rec in out.history:
        c = count_ref(rec.step, it, eta0, 1.0, d)
        want = torch.zeros(d, dtype=torch.bool)
        want[order[:c]] = True
        for b in range(2):
            assert torch.equal(masked(rec)[b], want), rec.step
            # confidence = model probability of the current token, nan where MASK
            keep = ~want
            assert torch.allclose(rec.confidence[b, keep], top.double()[keep])
            assert torch.isnan(rec.confidence[b, want]).all()
    assert torch.equal(out.tokens, best.expand(2, d))

    # random re-masking with the same model does not always pick the least confident
    out = LAD(iterations=it, eta0=eta0, top_k=1, patience=None).sample(
        stub_lm(TableModel(probs)), 4, d, generator=gen(0), keep_history=True
    )
    picks_lowest = []
    for rec in out.history[:3]:
        c = count_ref(rec.step, it, eta0, 1.0, d)
        picks_lowest += [set(masked(rec)[b].nonzero().flatten().tolist()) == set(order[:c].tolist()) for b in range(4)]
    assert not all(picks_lowest)


# -- early stopping ------------------------------------------------------------------------------
@pytest.mark.parametrize("remask", [False, True])
@pytest.mark.parametrize("stop", [1, 5])
def test_early_stop_fires_on_the_third_unchanged_iteration(stop, remask):
    model = ScriptModel([stop])
    out = LAD(iterations=50, top_k=1, remask=remask).sample(stub_lm(model), 1, 6, generator=gen(0), keep_history=True)
    # calls 1 .. stop change the output; calls stop+1, stop+2, stop+3 are unchanged: stop there
    assert out.num_model_calls == stop + 3 == model.calls == len(out.history)
    assert (out.tokens == stop).all()


def test_early_stop_patience_and_disable():
    out = LAD(iterations=50, top_k=1, patience=2).sample(stub_lm(ScriptModel([4])), 1, 5, generator=gen(0))
    assert out.num_model_calls == 6
    out = LAD(iterations=9, top_k=1, patience=None).sample(stub_lm(ScriptModel([1])), 1, 5, generator=gen(0))
    assert out.num_model_calls == 9
    # never more calls than iterations, even when the schedule ends first
    out = LAD(iterations=5, top_k=1).sample(stub_lm(ScriptModel([4])), 1, 5, generator=gen(0))
    assert out.num_model_calls == 5


def test_early_stop_per_row():
    # row 0 predicts 1 on calls 1 .. 4 (converged after call 4), then would drift (2 + call);
    # row 1 changes until call 6 and converges after call 9
    model = ScriptModel(script=lambda b, c: (1 if c <= 4 else 2 + c) if b == 0 else min(c, 6))
    out = LAD(iterations=50, top_k=1, eta0=0.7).sample(stub_lm(model), 2, 8, generator=gen(0), keep_history=True)
    assert out.num_model_calls == 9
    assert (out.tokens[0] == 1).all() and (out.tokens[1] == 6).all()
    for rec in out.history[4:]:  # row 0 is done: kept clean and no longer updated
        assert not rec.changed[0].any() and not masked(rec)[0].any()


# -- fixed positions, MASK, blocks -------------------------------------------------------------------
@pytest.mark.parametrize("block_size", [None, 3])
def test_fixed_positions_never_change_and_no_mask(block_size):
    lm = tiny_lm()
    B, d = 3, 20
    fixed = torch.rand(B, d, generator=gen(5)) < 0.4
    values = torch.randint(0, N, (B, d), generator=gen(6))
    out = LAD(iterations=12, block_size=block_size).sample(
        lm, B, d, prompt=values, fixed=fixed, generator=gen(0), keep_history=True
    )
    for rec in out.history:
        assert torch.equal(rec.tokens[fixed], values[fixed])
        assert not rec.changed[fixed].any() and torch.isnan(rec.confidence[fixed]).all()
    assert torch.equal(out.tokens[fixed], values[fixed])
    assert not (out.tokens == MASK).any() and (out.tokens < N).all()


def test_never_emits_mask_even_when_the_model_prefers_it():
    probs = torch.full((10, N), 1.0 / N, dtype=torch.float64)
    out = LAD(iterations=5).sample(stub_lm(TableModel(probs)), 4, 10, generator=gen(0), keep_history=True)
    assert (out.tokens < N).all()
    for rec in out.history:
        assert not (rec.tokens[~masked(rec)] >= N).any()


def test_semi_autoregressive_frozen_blocks():
    lm = tiny_lm()
    P, b, nblocks, per = 3, 4, 4, 3
    d = P + b * nblocks
    prompt = torch.tensor([7, 8, 9])
    out = LAD(iterations=nblocks * per, block_size=b, patience=None).sample(
        lm, 2, d, prompt=prompt, generator=gen(0), keep_history=True
    )
    assert out.num_model_calls == nblocks * per
    for rec in out.history:
        j = (rec.step - 1) // per  # block being generated
        lo, hi = P + j * b, P + (j + 1) * b
        assert (rec.tokens[:, hi:] == MASK).all()  # later blocks not started
        assert not rec.changed[:, :lo].any()  # earlier blocks frozen
        assert not masked(rec)[:, :lo].any()
        if rec.step % per == 0:  # block done: clean, and equal to the final output from now on
            assert not masked(rec)[:, lo:hi].any()
            assert torch.equal(rec.tokens[:, :hi], out.tokens[:, :hi])
    assert torch.equal(out.tokens[:, :P], prompt.expand(2, P))


def test_semi_autoregressive_editable_blocks_and_budget_split():
    lm = tiny_lm()
    P, b = 2, 4
    d = P + 10  # 10 free positions -> blocks of 4, 4, 2
    out = LAD(iterations=11, block_size=b, edit_previous=True, patience=None).sample(
        lm, 2, d, prompt=torch.tensor([1, 2]), generator=gen(0), keep_history=True
    )
    assert out.num_model_calls == 11  # 4 + 4 + 3 (the remainder goes to the first blocks)
    later = [rec for rec in out.history if rec.step > 4]  # blocks 1 and 2
    assert any(rec.changed[:, P : P + b].any() for rec in later)  # block 0 was amended
    for rec in later:  # ... but never re-masked
        assert not masked(rec)[:, P : P + b].any()
    assert not (out.tokens == MASK).any()


def test_early_stop_restarts_in_every_block():
    probs = torch.softmax(torch.randn(12, N, generator=gen(2), dtype=torch.float64), -1)
    model = TableModel(probs)
    out = LAD(iterations=40, block_size=4, top_k=1).sample(stub_lm(model), 1, 12, generator=gen(0))
    assert out.num_model_calls == 3 * 4  # each of 3 blocks: 1 changing call + 3 unchanged


# -- sampling knobs --------------------------------------------------------------------------------
def test_top_k_1_is_greedy_argmax():
    lm = tiny_lm()
    B, d, it = 2, 14, 3
    x = torch.full((B, d), MASK)
    x[:, :2] = torch.tensor([5, 6])
    for _ in range(it):
        x[:, 2:] = lm.forward(x, torch.zeros(B, d), None)[:, 2:, :N].argmax(-1)
    for seed, temp in ((0, 1.0), (1, 0.3)):
        out = LAD(iterations=it, remask=False, top_k=1, temperature=temp, patience=None).sample(
            lm, B, d, prompt=torch.tensor([5, 6]), generator=gen(seed)
        )
        assert torch.equal(out.tokens, x)
    # a vanishing nucleus keeps only the most likely token: greedy as well
    out = LAD(iterations=it, remask=False, top_p=1e-9, patience=None).sample(
        lm, B, d, prompt=torch.tensor([5, 6]), generator=gen(2)
    )
    assert torch.equal(out.tokens, x)


def test_top_k_restricts_to_the_k_most_likely():
    probs = torch.softmax(torch.randn(8, N, generator=gen(4), dtype=torch.float64), -1)
    out = LAD(iterations=1, top_k=3).sample(stub_lm(TableModel(probs)), 16, 8, generator=gen(0))
    top3 = probs.topk(3, -1).indices
    assert (out.tokens[..., None] == top3[None]).any(-1).all()


def test_eos_bias_raises_eos_frequency():
    lm = tiny_lm()
    eos = 7
    freq = {}
    for bias in (0.0, 3.0):
        out = LAD(iterations=4, eos_id=eos, eos_bias=bias).sample(lm, 8, 32, generator=gen(0))
        freq[bias] = (out.tokens == eos).float().mean().item()
    assert freq[3.0] > 3 * freq[0.0] and freq[3.0] > 0.15
    greedy = LAD(iterations=2, top_k=1, eos_id=eos, eos_bias=100.0).sample(lm, 2, 10, generator=gen(0))
    assert (greedy.tokens == eos).all()


def test_seeds_make_it_reproducible():
    lm = tiny_lm()
    s = LAD(iterations=6, confidence=True, top_p=0.9, temperature=0.8, block_size=5)
    a = s.sample(lm, 2, 15, generator=gen(11), keep_history=True)
    b = s.sample(lm, 2, 15, generator=gen(11), keep_history=True)
    c = s.sample(lm, 2, 15, generator=gen(12))
    assert torch.equal(a.tokens, b.tokens) and not torch.equal(a.tokens, c.tokens)
    for ra, rb in zip(a.history, b.history):
        assert torch.equal(ra.tokens, rb.tokens)


def test_callback_history_calls_and_seconds():
    lm = tiny_lm()
    seen = []
    out = LAD(iterations=5, patience=None).sample(lm, 1, 8, generator=gen(0), callback=seen.append, keep_history=True)
    assert len(seen) == len(out.history) == out.num_model_calls == 5
    assert out.seconds > 0
    first = out.history[0]
    assert torch.equal(first.changed, first.tokens != MASK)  # everything started as MASK
    real = ~masked(first)
    assert ((first.confidence[real] > 0) & (first.confidence[real] <= 1)).all()
    out = LAD(iterations=5).sample(lm, 1, 8, generator=gen(0))
    assert out.history == []


def test_levels_passed_to_the_model():
    probs = torch.full((6, N), 1.0 / N, dtype=torch.float64)
    model = TableModel(probs)
    LAD(iterations=3, patience=None).sample(stub_lm(model), 1, 6, generator=gen(0))
    assert all((lv == 0).all() for lv in model.seen_levels)  # Structural: zeros, as in training
    model = TableModel(probs)
    lm = stub_lm(model, GammaHybrid(N, 0.5))  # time-conditioned, with MASK: 1 at MASK, 0 elsewhere
    LAD(iterations=3, eta0=0.5, patience=None).sample(lm, 1, 6, prompt=torch.tensor([1]), generator=gen(0))
    assert torch.equal(model.seen_levels[0], torch.tensor([[0.0] + [1.0] * 5]))
    assert torch.equal(model.seen_levels[-1], (model.seen_levels[-1] > 0).float())


# -- errors ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(eta0=1.5), "eta0"),
        (dict(eta0=-0.1), "eta0"),
        (dict(sharpness=0.0), "sharpness"),
        (dict(sharpness=-1.0), "sharpness"),
        (dict(iterations=0), "iterations"),
        (dict(iterations=2.5), "iterations"),
        (dict(top_p=0.0), "top_p"),
        (dict(top_p=1.2), "top_p"),
        (dict(top_k=0), "top_k"),
        (dict(temperature=0.0), "temperature"),
        (dict(temperature=-1.0), "temperature"),
        (dict(block_size=0), "block_size"),
        (dict(eos_bias=2.0), "eos_id"),
        (dict(eos_id=-1), "eos_id"),
        (dict(patience=0), "patience"),
        (dict(remask="yes"), "remask"),
        (dict(precision="float16"), "precision"),
    ],
)
def test_bad_knobs(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LAD(**kwargs)


def test_refuses_a_process_without_mask():
    torch.manual_seed(0)
    lm = DiffusionLM(DiffusionTransformer(TransformerConfig.preset("tiny", vocab_size=N)), Uniform(N), Flat())
    with pytest.raises(ValueError, match="Uniform"):
        LAD().check_fits(lm)
    with pytest.raises(ValueError, match="MASK"):
        LAD(iterations=2).sample(lm, 1, 4)
    LAD().check_fits(tiny_lm(Absorb(N)))  # Absorb-like processes fit
    LAD().check_fits(tiny_lm())


def test_errors_at_sampling_time():
    lm = tiny_lm()
    with pytest.raises(ValueError, match="eos_id"):
        LAD(eos_id=N).sample(lm, 1, 4)
    with pytest.raises(ValueError, match="iterations"):
        LAD(iterations=3, block_size=2).sample(lm, 1, 8)  # 4 blocks, 3 calls
    with pytest.raises(ValueError, match="positions"):
        LAD(iterations=2).sample(lm, 1, 2000)
    with pytest.raises(ValueError, match="length"):
        LAD(iterations=2).sample(lm, 1)
    fixed = torch.tensor([True, False, False, True])
    out = LAD(iterations=2).sample(lm, 1, prompt=torch.tensor([4, 0, 0, 5]), fixed=fixed, generator=gen(0))
    assert out.tokens.shape == (1, 4) and out.tokens[0, 0] == 4 and out.tokens[0, 3] == 5
    with pytest.raises(ValueError, match="longer"):
        LAD(iterations=2).sample(lm, 1, 2, prompt=torch.tensor([1, 2, 3]))


def test_fully_fixed_needs_no_model_call():
    out = LAD(iterations=3).sample(tiny_lm(), 1, 3, prompt=torch.tensor([1, 2, 3]))
    assert out.num_model_calls == 0 and torch.equal(out.tokens, torch.tensor([[1, 2, 3]]))


def test_refine_is_greedy_self_refinement_from_given_text():
    """LAD.refine(lm, ids): argmax over the real tokens at every position from the whole previous
    output, until unchanged or the budget of calls; the same as the loop written out, and a
    fixed point of the model is returned after one call."""
    lm = tiny_lm(Structural(N, mask_id=MASK))
    x = torch.randint(0, N, (2, 12), generator=gen(3))
    want, calls = x.clone(), 0
    with torch.no_grad():
        for _ in range(5):
            new = lm.forward(want, torch.zeros(want.shape), None)[..., :N].argmax(-1)
            calls += 1
            if torch.equal(new, want):
                break
            want = new
    got, n = LAD(iterations=5).refine(lm, x)
    assert torch.equal(got, want) and n == calls
    again, one = LAD().refine(lm, got[0].tolist(), iterations=1)  # a list is one row
    assert one == 1 and again.shape == (12,)
    if n < 5:  # converged: its output is a fixed point
        assert torch.equal(LAD().refine(lm, got)[0], got) and LAD().refine(lm, got)[1] == 1
    narrow, _ = LAD().refine(lm, x, iterations=2, real=7)
    assert int(narrow.max()) < 7
    with pytest.raises(ValueError, match="iterations must be an int >= 1, got 0"):
        LAD().refine(lm, x, iterations=0)


def test_refine_with_min_probability_edits_only_confident_positions():
    """min_probability = tau: one call changes exactly the positions whose argmax has probability
    >= tau (the rest keep their token); tau = 0 is the plain update, tau above every
    probability changes nothing; tau outside [0, 1] is one line."""
    lm = tiny_lm(Structural(N, mask_id=MASK))
    x = torch.randint(0, N, (2, 12), generator=gen(4))
    with torch.no_grad():
        probs = torch.softmax(lm.forward(x, torch.zeros(x.shape), None)[..., :N].double(), -1)
    top, arg = probs.max(-1)
    tau = float(top.median())
    got, _ = LAD().refine(lm, x, iterations=1, min_probability=tau)
    assert torch.equal(got, torch.where(top >= tau, arg, x))
    assert torch.equal(LAD().refine(lm, x, iterations=1, min_probability=0.0)[0], arg)
    assert torch.equal(LAD().refine(lm, x, iterations=3, min_probability=float(top.max()) + 1e-9)[0], x)
    with pytest.raises(ValueError, match="min_probability must be in \\[0, 1\\] or None, got 1.5"):
        LAD().refine(lm, x, min_probability=1.5)


def test_refine_under_the_shifted_layout_reads_the_last_given_token():
    """SHIFTED: row j reads token j-1, so a d-row forward never reads the last token; refine
    appends one MASK row and drops its output: one call is argmax of that forward's first d rows,
    and a model output that depends on the last token changes the refinement of the row before."""
    model = tiny_lm().model
    lm = DiffusionLM(model, Structural(N), Flat(), layout="shifted", bos_id=N - 1)
    x = torch.randint(0, N, (2, 10), generator=gen(5))
    with torch.no_grad():
        want = lm.forward(torch.cat([x, torch.full((2, 1), lm.process.mask_id)], 1), torch.zeros(2, 11), None)[:, :10, :N].argmax(-1)
    got, _ = LAD().refine(lm, x, iterations=1)
    assert torch.equal(got, want)
    y = x.clone()
    y[:, -1] = (y[:, -1] + 1) % N  # only the last token differs: with full attention every row sees it
    with torch.no_grad():
        a = lm.forward(torch.cat([x, torch.full((2, 1), lm.process.mask_id)], 1), torch.zeros(2, 11), None)[:, :10]
        b = lm.forward(torch.cat([y, torch.full((2, 1), lm.process.mask_id)], 1), torch.zeros(2, 11), None)[:, :10]
    assert not torch.allclose(a, b)
