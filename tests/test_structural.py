"""Structural (LAD, Algorithm 1): vectorized corruption vs a sequential reference, rates, loss, errors."""
from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from diffusionlm.processes.base import Corruption
from diffusionlm.processes.structural import Structural

N = 11


def reference_row(x0_row, lo, n, info, b, mask_id):
    """Pure-Python Algorithm 1 on one row, replaying the draws recorded in info (0-based)."""
    x = [int(t) for t in x0_row]
    if n < 2:
        return x
    seg = x[lo : lo + n]
    # 1. masking
    if bool(info["mask_fired"][b]):
        chosen = [k - lo for k in range(len(x)) if bool(info["mask_select"][b, k])]
        assert len(chosen) == int(info["m"][b]) == math.floor(float(info["mask_frac"][b]) * n)
        for k in chosen:
            seg[k] = mask_id
    # 2. swaps, in order
    for i in range(n - 1):
        if bool(info["swap"][b, lo + i]):
            seg[i], seg[i + 1] = seg[i + 1], seg[i]
    # 3. duplication, in order, reading current values
    for i in range(n):
        if bool(info["dup"][b, lo + i]):
            dd = int(info["dup_dir"][b, lo + i])
            if 0 <= i + dd < n:
                seg[i] = seg[i + dd]
    # 4. span shift
    if bool(info["shift_fired"][b]):
        s = int(info["shift_len"][b])
        if s <= n:
            start = int(info["shift_start"][b])
            assert 0 <= start <= n - s
            delta, dd = int(info["shift_delta"][b]), int(info["shift_dir"][b])
            target = min(max(start + dd * delta, 0), n - s)
            assert target == int(info["shift_target"][b])
            span = seg[start : start + s]
            seg[target : target + s] = span
    x[lo : lo + n] = seg
    return x


def random_spans(B, d, g):
    """Response masks with random offsets and lengths 0 .. d (prompt before, padding after)."""
    lengths = torch.randint(0, d + 1, (B,), generator=g)
    # force the small lengths to appear
    lengths[: min(B, 4)] = torch.tensor([0, 1, 2, 3])[: min(B, 4)].clamp(max=d)
    starts = (torch.rand(B, generator=g) * (d - lengths + 1)).long()
    idx = torch.arange(d)
    return (idx >= starts[:, None]) & (idx < (starts + lengths)[:, None])


@pytest.mark.parametrize("d", [1, 2, 3, 5, 8, 40])
@pytest.mark.parametrize("p_max", [0.5, 1.0])
def test_matches_sequential_reference(d, p_max):
    g = torch.Generator().manual_seed(1000 * d + int(10 * p_max))
    B = 300
    proc = Structural(N, p_max=p_max)
    x0 = torch.randint(0, N, (B, d), generator=g)
    resp = random_spans(B, d, g)
    out = proc.corrupt(x0, response_mask=resp, generator=g)
    info = out.info
    n_changed = 0
    for b in range(B):
        lo, n = int(info["response_start"][b]), int(info["response_len"][b])
        assert resp[b].sum() == n
        if n:
            assert resp[b, lo : lo + n].all()
        expect = reference_row(x0[b], lo, n, info, b, proc.mask_id)
        assert out.ids[b].tolist() == expect, (b, lo, n)
        n_changed += int((out.ids[b] != x0[b]).any())
    if d >= 5:
        assert n_changed > B // 4  # the test exercises real corruption
    # flags live only where the algorithm can use them
    span = info["response_mask"] & info["active"][:, None]
    hi = (info["response_start"] + info["response_len"])[:, None]
    assert not (info["swap"] & ~span).any()
    assert not (info["swap"] & (torch.arange(d) >= hi - 1)).any()
    assert not (info["dup"] & ~span).any()
    assert not (info["mask_select"] & ~span).any()
    assert (info["mask_select"].sum(1) == info["m"]).all()
    # masked / substituted bookkeeping
    assert torch.equal(out.masked, out.ids == proc.mask_id)
    assert torch.equal(out.substituted, (out.ids != x0) & ~out.masked)


def test_heavy_noise_exercises_chains():
    """p_max = 1 with long rows: bubbling swap runs and chained left copies both occur and match."""
    g = torch.Generator().manual_seed(7)
    B, d = 200, 64
    proc = Structural(N, p_max=1.0, mask_prob=0.0)
    x0 = torch.randint(0, N, (B, d), generator=g)
    out = proc.corrupt(x0, generator=g)
    info = out.info
    runs = (info["swap"][:, 1:] & info["swap"][:, :-1]).sum()
    left = info["dup"] & (info["dup_dir"] < 0)
    chains = (left[:, 1:] & left[:, :-1]).sum()
    assert runs > 50 and chains > 20
    for b in range(B):
        assert out.ids[b].tolist() == reference_row(x0[b], 0, d, info, b, proc.mask_id)


def test_only_response_changes_and_short_rows_untouched():
    g = torch.Generator().manual_seed(3)
    B, d = 500, 24
    proc = Structural(N, p_max=1.0, mask_prob=1.0)
    x0 = torch.randint(0, N, (B, d), generator=g)
    resp = random_spans(B, d, g)
    out = proc.corrupt(x0, response_mask=resp, generator=g)
    assert torch.equal(out.ids[~resp], x0[~resp])
    short = resp.sum(1) < 2
    assert short.any()
    assert torch.equal(out.ids[short], x0[short])
    assert not out.masked[short].any() and not out.substituted[short].any()
    assert not out.info["active"][short].any()
    # None = every position is response
    out2 = proc.corrupt(x0, generator=torch.Generator().manual_seed(3))
    assert out2.info["response_mask"].all() and (out2.info["response_len"] == d).all()


def test_masked_count_is_floor_f_n():
    """With no structural noise (p_max = 0) the output has exactly floor(f n) MASKs when masking fired."""
    g = torch.Generator().manual_seed(5)
    B, d = 2000, 30
    proc = Structural(N, p_max=0.0, mask_prob=0.5)
    x0 = torch.randint(0, N, (B, d), generator=g)
    resp = random_spans(B, d, g)
    out = proc.corrupt(x0, response_mask=resp, generator=g)
    info = out.info
    n = info["response_len"]
    expect = torch.where(info["mask_fired"], torch.floor(info["mask_frac"].double() * n).long(), 0)
    assert torch.equal(out.masked.sum(1), expect)
    assert torch.equal(info["m"], expect)
    assert not out.substituted.any()
    assert torch.equal(out.masked, info["mask_select"])
    assert torch.equal(out.ids[~out.masked], x0[~out.masked])


def test_mask_positions_uniform():
    """Chosen mask positions are uniform over the span: per-position frequency flat within 4 SE."""
    g = torch.Generator().manual_seed(11)
    B, d = 20000, 10
    proc = Structural(N, p_max=0.0, mask_prob=1.0)
    out = proc.corrupt(torch.zeros(B, d, dtype=torch.long), generator=g)
    freq = out.masked.double().mean(0)
    overall = freq.mean()
    # E[m/n] = E[floor(10 f)]/10 = 0.45
    assert abs(float(overall) - 0.45) < 0.01
    se = math.sqrt(0.45 * 0.55 / B)
    assert (freq - overall).abs().max() < 4 * se * math.sqrt(2)


def _se_mean(v):
    return float(v.double().std() / math.sqrt(v.numel()))


def test_empirical_rates():
    """Rates over many rows, each within 4 standard errors of the algorithm's value."""
    g = torch.Generator().manual_seed(2024)
    B, d, p_max, mask_prob = 20000, 32, 0.5, 0.5
    proc = Structural(N, p_max=p_max, mask_prob=mask_prob)
    x0 = torch.randint(0, N, (B, d), generator=g)
    out = proc.corrupt(x0, generator=g)
    info = out.info
    n = d
    p = info["p"]
    # p ~ U[0, p_max]: mean p_max / 2, sd p_max / sqrt(12)
    assert 0 <= float(p.min()) and float(p.max()) <= p_max
    assert abs(float(p.mean()) - p_max / 2) < 4 * p_max / math.sqrt(12 * B)
    # masking fires in mask_prob of rows (Bernoulli)
    fired = info["mask_fired"].double()
    assert abs(float(fired.mean()) - mask_prob) < 4 * math.sqrt(mask_prob * (1 - mask_prob) / B)
    # mask fraction f ~ U(0, 1) among fired rows
    f = info["mask_frac"][info["mask_fired"]]
    assert abs(float(f.mean()) - 0.5) < 4 / math.sqrt(12 * f.numel())
    # swap flags: per-row frequency over the n-1 pairs; mean p_max/8 (SE from per-row spread)
    swap_rate = info["swap"][:, : n - 1].double().mean(1)
    assert abs(float(swap_rate.mean()) - p_max / 8) < 4 * _se_mean(swap_rate)
    # ... and tied to the row's own p: E[rate - p/4] = 0
    assert abs(float((swap_rate - p / 4).mean())) < 4 * _se_mean(swap_rate - p / 4)
    # duplication flags over the n positions; directions fair
    dup_rate = info["dup"].double().mean(1)
    assert abs(float(dup_rate.mean()) - p_max / 8) < 4 * _se_mean(dup_rate)
    assert abs(float((dup_rate - p / 4).mean())) < 4 * _se_mean(dup_rate - p / 4)
    dirs = info["dup_dir"][info["dup"]].double()
    assert set(dirs.unique().tolist()) <= {-1.0, 1.0}
    assert abs(float(dirs.mean())) < 4 / math.sqrt(dirs.numel())
    # span shift: once per row with prob E[p]/4 = p_max/8 (marginally Bernoulli)
    r = p_max / 8
    shift = info["shift_fired"].double()
    assert abs(float(shift.mean()) - r) < 4 * math.sqrt(r * (1 - r) / B)
    assert torch.equal(info["shift"], info["shift_fired"])  # n >= 3: always applicable
    # shift parameters uniform on their ranges
    for key, values in (("shift_len", [1, 2, 3]), ("shift_delta", [1, 2, 3, 4]), ("shift_dir", [-1, 1])):
        v = info[key]
        assert set(v.unique().tolist()) == set(values)
        k = len(values)
        for val in values:
            frac = float((v == val).double().mean())
            assert abs(frac - 1 / k) < 4 * math.sqrt((1 / k) * (1 - 1 / k) / B), (key, val)
    start, s = info["shift_start"], info["shift_len"]
    assert (start >= 0).all() and (start <= n - s).all()
    assert (info["shift_target"] >= 0).all() and (info["shift_target"] <= n - s).all()


def test_shift_skipped_when_span_longer_than_response():
    g = torch.Generator().manual_seed(9)
    B = 4000
    proc = Structural(N, p_max=1.0, mask_prob=0.0)
    x0 = torch.randint(0, N, (B, 2), generator=g)
    out = proc.corrupt(x0, generator=g)
    info = out.info
    assert (info["shift_fired"] & (info["shift_len"] == 3)).any()
    assert torch.equal(info["shift"], info["shift_fired"] & (info["shift_len"] <= 2))


def test_seeded_determinism_and_the_level_is_the_mask_fraction():
    """Same seed, same draws; a given level (one per row, as Flat draws it) replaces Algorithm 1's
    own f and nothing else."""
    proc = Structural(N, mask_prob=1.0)
    x0 = torch.randint(0, N, (16, 20), generator=torch.Generator().manual_seed(0))
    a = proc.corrupt(x0, generator=torch.Generator().manual_seed(42))
    a2 = proc.corrupt(x0, generator=torch.Generator().manual_seed(42))
    assert torch.equal(a.ids, a2.ids)
    f = torch.rand(16, generator=torch.Generator().manual_seed(1))
    b = proc.corrupt(x0, f[:, None].expand(16, 20), generator=torch.Generator().manual_seed(42))
    c = proc.corrupt(x0, f, generator=torch.Generator().manual_seed(42))
    assert torch.equal(b.ids, c.ids)
    assert torch.equal(b.info["mask_frac"], f)
    assert torch.equal(b.info["m"], torch.floor(f.double() * 20).long())
    for key in ("p", "swap", "dup", "dup_dir", "shift_fired", "shift_len", "shift_start"):
        assert torch.equal(a.info[key], b.info[key]), key  # every other draw unchanged
    assert isinstance(a, Corruption)
    assert a.ids.dtype == torch.long and a.masked.dtype == torch.bool


def test_empty_batches():
    proc = Structural(N)
    for shape in [(0, 5), (3, 0)]:
        out = proc.corrupt(torch.zeros(shape, dtype=torch.long))
        assert out.ids.shape == shape


def test_no_likelihood():
    proc = Structural(N)
    assert proc.likelihood is False and proc.time_conditioned is False and proc.name == "structural"
    x0 = torch.randint(0, N, (2, 5))
    logits = torch.randn(2, 5, N + 1)
    c = proc.corrupt(x0)
    lv = torch.rand(2, 5)
    for call in (
        lambda: proc.continuous_bound(logits, x0, c, lv),
        lambda: proc.step_kl(logits, x0, c.ids, lv, lv * 0.5),
        lambda: proc.event_probs(lv * 0, lv),
        lambda: proc.prior_kl(),
        lambda: proc.marginal(lv),
    ):
        with pytest.raises((NotImplementedError, ValueError), match="no likelihood"):
            call()


def test_loss_is_ce_on_response_only():
    g = torch.Generator().manual_seed(1)
    B, d = 6, 12
    proc = Structural(N)
    x0 = torch.randint(0, N, (B, d), generator=g)
    resp = random_spans(B, d, g)
    c = proc.corrupt(x0, response_mask=resp, generator=g)
    logits = torch.randn(B, d, N + 1, generator=g)
    loss = proc.loss(logits, x0, c)
    by_hand = F.cross_entropy(logits[..., :N].reshape(-1, N), x0.reshape(-1), reduction="none").reshape(B, d)
    assert loss.shape == (B, d)
    torch.testing.assert_close(loss, torch.where(resp, by_hand, torch.zeros_like(by_hand)))
    # explicit response_mask wins; the MASK logit plays no part
    logits2 = logits.clone()
    logits2[..., N] = 100.0
    all_pos = torch.ones(B, d, dtype=torch.bool)
    torch.testing.assert_close(proc.loss(logits2, x0, c, response_mask=all_pos), by_hand)
    # target is the CLEAN sequence, not the corrupted one
    assert proc.loss(logits, x0, c, level=torch.rand(B, d)).sum() == loss.sum()


def test_prior_config_and_token_set():
    proc = Structural(N, p_max=0.25, mask_prob=0.75)
    assert proc.mask_id == N and proc.model_vocab_size == N + 1
    pr = proc.prior((3, 4))
    assert pr.shape == (3, 4) and (pr == N).all()
    cfg = proc.config()
    assert json.loads(json.dumps(cfg)) == cfg
    assert cfg == {"name": "structural", "vocab_size": N, "mask_id": N, "p_max": 0.25, "mask_prob": 0.75}
    assert Structural(N, mask_id=N + 3).mask_id == N + 3
    assert "Structural(" in repr(proc)


def test_errors():
    proc = Structural(N)
    with pytest.raises(ValueError, match="out of range"):
        proc.corrupt(torch.tensor([[0, N, 1]]))
    with pytest.raises(ValueError, match="out of range"):
        proc.corrupt(torch.tensor([[0, -1, 1]]))
    with pytest.raises(ValueError, match="contiguous"):
        proc.corrupt(torch.zeros(2, 5, dtype=torch.long), response_mask=torch.tensor([[1, 1, 1, 0, 0], [1, 0, 1, 0, 0]]).bool())
    with pytest.raises(ValueError, match="does not fit"):
        proc.corrupt(torch.zeros(2, 5, dtype=torch.long), response_mask=torch.ones(2, 4, dtype=torch.bool))
    with pytest.raises(TypeError, match="bool"):
        proc.corrupt(torch.zeros(2, 5, dtype=torch.long), response_mask=torch.rand(2, 5))
    # the old positional response mask is pointed at the keyword, not silently read as a level
    with pytest.raises(TypeError, match="response_mask="):
        proc.corrupt(torch.zeros(2, 5, dtype=torch.long), torch.ones(2, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match="one level per row"):
        proc.corrupt(torch.zeros(2, 5, dtype=torch.long), torch.rand(2, 5))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        proc.corrupt(torch.zeros(2, 5, dtype=torch.long), torch.full((2,), 1.5))
    with pytest.raises(ValueError, match="does not fit"):
        proc.corrupt(torch.zeros(2, 5, dtype=torch.long), torch.rand(3))
    for bad in (-0.1, 1.5, float("nan"), "0.5", True):
        with pytest.raises(ValueError, match="p_max"):
            Structural(N, p_max=bad)
    with pytest.raises(ValueError, match="0.5"):
        Structural(N, p_max=2.0)
    for bad in (-0.1, 1.01, float("inf")):
        with pytest.raises(ValueError, match="mask_prob"):
            Structural(N, mask_prob=bad)
    with pytest.raises(ValueError, match="mask_id"):
        Structural(N, mask_id=3)
    with pytest.raises(ValueError, match="vocab_size"):
        Structural(1)


# ----------------------------------------------------------------------------------------------
# the process contract inside a composition


def _tiny_lm(schedule):
    from diffusionlm.lm import DiffusionLM
    from diffusionlm.models import DiffusionTransformer, TransformerConfig

    torch.manual_seed(0)
    cfg = TransformerConfig.preset("tiny", vocab_size=N + 1, n_layers=1, hidden=16, n_heads=2, max_positions=32)
    return DiffusionLM(DiffusionTransformer(cfg), Structural(N), schedule)


def test_same_signatures_as_every_process():
    """corrupt(x0, level, generator) / loss(logits, x0, corruption, level, draw) as Absorb's."""
    import inspect

    from diffusionlm.processes import Absorb

    for name in ("corrupt", "loss"):
        mine = list(inspect.signature(getattr(Structural, name)).parameters.values())
        theirs = list(inspect.signature(getattr(Absorb, name)).parameters.values())
        positional = [p.name for p in mine if p.kind is p.POSITIONAL_OR_KEYWORD]
        assert positional == [p.name for p in theirs], name
        assert all(p.kind is p.KEYWORD_ONLY for p in mine if p.name == "response_mask")


@pytest.mark.parametrize("schedule", ["quench", "block", "slide", "custom", "retimed"])
def test_a_schedule_it_cannot_honour_is_refused_naming_both(schedule):
    from diffusionlm.schedules import Block, Custom, Quench, Slide

    make = {"quench": Quench, "block": lambda: Block(4), "slide": lambda: Slide(3),
            "custom": lambda: Custom([[1, 1], [0, 1], [0, 0]]), "retimed": lambda: Quench().with_steps(3)}[schedule]
    sched = make()
    with pytest.raises(ValueError, match=r"Structural\(.*cannot honour the hyperschedule " + type(sched).__name__):
        _tiny_lm(sched)


def test_two_halves_is_refused_naming_both():
    from diffusionlm.schedules import Flat

    lm = _tiny_lm(Flat())
    with pytest.raises(ValueError, match=r"Structural\(.*cannot honour two_halves=True under Flat"):
        lm.loss(torch.zeros(2, 6, dtype=torch.long), two_halves=True)


@pytest.mark.parametrize("steps", [None, 4])
def test_the_composition_feeds_the_flat_level_as_the_mask_fraction(steps):
    """Under Flat the composition's drawn level is Algorithm 1's f: continuous time gives
    f ~ U(0, 1) (the paper's draw), Flat(steps=T) f on the grid {1/T, ..., 1}."""
    from diffusionlm.schedules import Flat

    lm = _tiny_lm(Flat(steps=steps))
    x0 = torch.randint(0, N, (400, 8), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = lm.loss(x0, generator=torch.Generator().manual_seed(1))
    f = out.corruption.info["mask_frac"]
    assert torch.equal(f, out.draw.level[:, 0])
    if steps is None:
        assert abs(float(f.mean()) - 0.5) < 4 / math.sqrt(12 * 400)
    else:
        assert set((f * steps).round().long().tolist()) == {1, 2, 3, 4}
