"""Property tests of the hyperschedules (diffusionlm.schedules.hyper) with hypothesis."""
from __future__ import annotations

import json
import math
from fractions import Fraction

import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from diffusionlm.schedules.hyper import (
    ACTIVE,
    SETTLED,
    WORTHLESS,
    Block,
    Custom,
    Flat,
    Hyperschedule,
    Quench,
    Retimed,
    Slide,
    _segment_plan,
    hyperschedule,
    validate_table,
)

FAST = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SOME = settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# ------------------------------------------------------------------------------------------
# strategies
# ------------------------------------------------------------------------------------------
lengths = st.integers(1, 40)
widths = st.integers(1, 10)
steps_per_block = st.integers(1, 4)
flat_steps = st.integers(1, 20)
# rates with short binary expansions, so that the expected T' can be computed exactly
rates = st.sampled_from([0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0])

base_schedules = st.one_of(
    st.just(Quench()),
    st.builds(Flat, steps=flat_steps),
    st.builds(Block, widths, steps_per_block),
    st.builds(Slide, widths),
)


def _retimings(base: Hyperschedule):
    options = [st.integers(1, 30).map(base.with_steps)]
    if base.nominal_rate is not None:
        options.append(rates.map(base.at_rate))
    return st.one_of(*options)


retimed_schedules = base_schedules.flatmap(_retimings)
schedules = st.one_of(base_schedules, retimed_schedules)


def fits(s: Hyperschedule, d: int) -> bool:
    """A Block / Slide width (of the base of a retiming) is at most the length: wider is refused."""
    while isinstance(s, Retimed):
        s = s.base
    return not isinstance(s, (Block, Slide)) or s.width_ <= d


def _is_ordered(s: Hyperschedule) -> bool:
    """Quench / Block / Slide (and their retimings): levels non-decreasing along the sequence."""
    while isinstance(s, Retimed):
        s = s.base
    return isinstance(s, (Quench, Block, Slide))


def expected_steps(s: Hyperschedule, d: int) -> int:
    """The documented T of each hyperschedule, computed independently (exact rationals)."""
    if isinstance(s, Quench):
        return d
    if isinstance(s, Flat):
        return s.steps
    if isinstance(s, Block):
        return -(-d // s.width_) * s.steps_per_block
    if isinstance(s, Slide):
        return d + s.width_ - 1
    if isinstance(s, Retimed):
        if s.steps is not None:
            return s.steps
        T0 = expected_steps(s.base, d)
        base = s.base
        nominal = Fraction(base.width_, base.steps_per_block) if isinstance(base, Block) else Fraction(1)
        rho = Fraction(base.nominal_rate * s.speed).limit_denominator(64)
        return max(1, math.ceil(Fraction(T0) * nominal / rho))
    raise AssertionError(s)


def brute_table(s: Hyperschedule, d: int) -> torch.Tensor:
    """The documented level formulas, written out entry by entry."""
    T = expected_steps(s, d)
    t = torch.zeros(T + 1, d, dtype=torch.float64)
    for k in range(T + 1):
        for i in range(d):
            if isinstance(s, Quench):
                v = 1.0 if i >= k else 0.0
            elif isinstance(s, Flat):
                v = (T - k) / T
            elif isinstance(s, Block):
                S = s.steps_per_block
                v = min(1.0, max(0.0, 1 - (k - (i // s.width_) * S) / S))
            else:
                w = s.width_
                v = min(1.0, max(0.0, (i + w - k) / w))
            t[k, i] = v
    return t


# ------------------------------------------------------------------------------------------
# the table
# ------------------------------------------------------------------------------------------
@FAST
@given(schedules, lengths)
def test_table_contract(s, d):
    assume(fits(s, d))
    T = s.num_steps(d)
    assert T == expected_steps(s, d)
    t = s.table(d)
    assert t.shape == (T + 1, d) and t.dtype == torch.float64
    assert (t[0] == 1).all() and (t[-1] == 0).all()
    assert (t >= 0).all() and (t <= 1).all()
    assert (t[1:] <= t[:-1]).all(), "levels must be non-increasing in k"
    for k in (0, T // 2, T):
        assert torch.equal(s.levels(k, d), t[k])
    with pytest.raises(ValueError):
        s.levels(T + 1, d)
    assert s.rate(d) == d / T
    assert s.table(d) is t  # cached


@FAST
@given(base_schedules, st.integers(1, 12))
def test_table_matches_documented_formula(s, d):
    assume(fits(s, d))
    assert torch.allclose(s.table(d), brute_table(s, d), rtol=0, atol=1e-12)


@FAST
@given(schedules, lengths)
def test_width(s, d):
    assume(fits(s, d))
    w = s.width(d)
    if isinstance(s, Quench):
        assert w == 1
    elif isinstance(s, (Block, Slide)):
        assert w == min(s.width_, d)
    elif isinstance(s, Flat):
        assert w == d
    else:
        assert 1 <= w <= d
    assert w == int(s.split(d).active.sum(1).max())


@SOME
@given(base_schedules, lengths)
def test_nominal_rate(s, d):
    if isinstance(s, Flat):
        assert s.nominal_rate is None
        with pytest.raises(ValueError, match="rate"):
            s.at_rate(2.0)
    elif isinstance(s, Block):
        assert s.nominal_rate == s.width_ / s.steps_per_block
        # whole blocks: the rate at this length is the nominal one
        assert Block(s.width_, s.steps_per_block).rate(s.width_ * 3) == pytest.approx(s.nominal_rate)
    else:
        assert s.nominal_rate == 1.0
    if s.nominal_rate is not None:
        assert s.at_rate(2.0).nominal_rate == pytest.approx(2.0)


@FAST
@given(schedules, lengths)
def test_split_partitions_every_step(s, d):
    assume(fits(s, d))
    split = s.split(d)
    T = s.num_steps(d)
    t = s.table(d)
    for part in split:
        assert part.shape == (T, d) and part.dtype == torch.bool
    total = split.settled.long() + split.active.long() + split.worthless.long()
    assert (total == 1).all(), "settled / active / worthless must partition every step"
    assert torch.equal(split.settled, t[:-1] == 0)
    assert torch.equal(split.worthless, (t[:-1] == 1) & (t[1:] == 1))
    assert split.active.any(1).all(), "every step moves some position"
    cats = split.categories()
    assert cats.dtype == torch.int8
    assert torch.equal(cats == SETTLED, split.settled)
    assert torch.equal(cats == ACTIVE, split.active)
    assert torch.equal(cats == WORTHLESS, split.worthless)
    if _is_ordered(s):
        # settled positions form a prefix, worthless ones a suffix
        assert (split.settled[:, 1:] <= split.settled[:, :-1]).all()
        assert (split.worthless[:, 1:] >= split.worthless[:, :-1]).all()


@FAST
@given(lengths)
def test_width_one_block_and_slide_are_quench(d):
    q = Quench().table(d)
    assert torch.equal(Block(1, 1).table(d), q)
    assert torch.equal(Slide(1).table(d), q)
    assert torch.equal(Block(1, 1).split(d).active, Quench().split(d).active)
    assert torch.equal(Quench().split(d).active, torch.eye(d, dtype=torch.bool))


# ------------------------------------------------------------------------------------------
# retiming
# ------------------------------------------------------------------------------------------
@FAST
@given(base_schedules, st.integers(1, 20), st.integers(1, 5))
def test_retimed_hits_base_rows_exactly(s, d, m):
    """Slowing down m times passes exactly through every base row (no rounding residue that would
    turn settled or worthless positions into active ones); the same number of steps is the base."""
    assume(fits(s, d))
    T0 = s.num_steps(d)
    base = s.table(d)
    assert torch.equal(Retimed(s, steps=T0).table(d), base)
    slow = Retimed(s, steps=m * T0).table(d)
    assert torch.equal(slow[::m], base)
    for T1 in (max(1, T0 // 2), T0 + 1, 3 * T0 + 1):
        r = Retimed(s, steps=T1)
        t = r.table(d)
        exact = [k for k in range(T1 + 1) if (k * T0) % T1 == 0]
        for k in exact:
            assert torch.equal(t[k], base[k * T0 // T1])


def test_retimed_quench_regression():
    """Quench().with_steps(98) at d = 2 once had a level of 1e-16 where 0 was due (width 2)."""
    s = Quench().with_steps(98)
    assert s.width(2) == 1
    assert s.table(2)[49].tolist() == [0.0, 1.0]


def test_retimed_validation():
    with pytest.raises(ValueError, match="exactly one"):
        Retimed(Quench())
    with pytest.raises(ValueError, match="exactly one"):
        Retimed(Quench(), steps=3, speed=2.0)
    with pytest.raises(ValueError, match="continuous"):
        Retimed(Flat(), steps=3)
    with pytest.raises(ValueError):
        Quench().with_steps(0)
    with pytest.raises(ValueError, match="rho"):
        Quench().at_rate(0.0)
    assert Flat(steps=4).with_steps(7) == Flat(steps=7)


# ------------------------------------------------------------------------------------------
# training draws
# ------------------------------------------------------------------------------------------
@FAST
@given(schedules, lengths, st.integers(1, 6), st.integers(0, 2**31 - 1))
def test_draw_levels_are_consecutive_rows(s, d, B, seed):
    assume(fits(s, d))
    t = s.table(d)
    T = s.num_steps(d)
    draw = s.draw(B, d, generator=torch.Generator().manual_seed(seed))
    assert draw.num_steps == T
    assert draw.level.shape == draw.next_level.shape == (B, d)
    assert draw.step.shape == (B,)
    assert ((draw.step >= 1) & (draw.step <= T)).all()
    assert torch.equal(draw.level, t[draw.step - 1].float())
    assert torch.equal(draw.next_level, t[draw.step].float())
    # u picks step floor(u T) + 1
    u = torch.tensor([0.0, 0.999999, 0.5])
    k = s.draw(3, d, u=u).step
    assert k.tolist() == [1, min(T, int(0.999999 * T) + 1), int(0.5 * T) + 1]


def test_draw_continuous_and_errors():
    draw = Flat().draw(4, 5, generator=torch.Generator().manual_seed(0))
    assert draw.next_level is None and draw.step is None and draw.num_steps is None
    assert ((draw.level > 0) & (draw.level <= 1)).all()
    assert (draw.level == draw.level[:, :1]).all()
    with pytest.raises(ValueError, match="u must"):
        Quench().draw(2, 3, u=torch.tensor([0.5, 1.0]))
    with pytest.raises(ValueError, match="continuous"):
        Flat().table(4)
    with pytest.raises(ValueError, match="positive int"):
        Quench().table(0)


def _segment_plan_or_none(s, d):
    try:
        return _segment_plan(s, d)
    except ValueError as e:
        # only a retimed path may lack a two-halves partition; it must say so
        assert isinstance(s, Retimed), f"{s!r} at d={d}: {e}"
        assert "segment" in str(e)
        return None


@FAST
@given(schedules, lengths, st.integers(1, 5), st.integers(0, 2**31 - 1))
def test_draw_segments(s, d, B, seed):
    assume(fits(s, d))
    assume(_segment_plan_or_none(s, d) is not None)
    t = s.table(d)
    T = s.num_steps(d)
    draw = s.draw_segments(B, d, generator=torch.Generator().manual_seed(seed))
    seg = draw.segment
    assert seg.shape == draw.level.shape == draw.next_level.shape == draw.weight.shape == (B, d)
    assert (seg[:, 0] == 0).all()
    steps = seg[:, 1:] - seg[:, :-1]
    assert ((steps == 0) | (steps == 1)).all(), "segments are contiguous and numbered in order"
    assert (draw.weight > 0).all()
    width = s.segment_width(d)
    for b in range(B):
        for sid in seg[b].unique().tolist():
            where = seg[b] == sid
            idx = where.nonzero().squeeze(1)
            start, end = int(idx[0]), int(idx[-1]) + 1
            assert end - start <= width
            assert (draw.weight[b, where] == draw.weight[b, start]).all()
            ks = [
                k
                for k in range(1, T + 1)
                if torch.equal(t[k - 1, where].float(), draw.level[b, where])
                and torch.equal(t[k, where].float(), draw.next_level[b, where])
                and (t[k - 1, :start] == 0).all()  # everything before the segment is settled
                and ((t[k - 1, end:] == 1) & (t[k, end:] == 1)).all()  # everything after is worthless
                and ((t[k - 1, where] > 0) & ~((t[k - 1, where] == 1) & (t[k, where] == 1))).any()
            ]
            assert ks, f"segment {sid} of row {b} matches no compatible step"


@FAST
@given(schedules, lengths)
def test_draw_segments_unbiased(s, d):
    """Over offsets and uniform picks among compatible steps, every step's expected total weight
    is exactly 1: the segment sum is an unbiased estimate of the sum over all T steps."""
    assume(fits(s, d))
    plan = _segment_plan_or_none(s, d)
    assume(plan is not None)
    seg, compat, weight = plan
    O, S, T = compat.shape
    assert T == s.num_steps(d) and seg.shape == (O, d) and O == s.segment_offsets(d)
    n_compat = compat.sum(-1, keepdim=True).double()
    pick = torch.where(compat, 1.0 / n_compat.clamp(min=1), torch.zeros((), dtype=torch.float64))
    expected = (pick * weight).sum((0, 1)) / O
    torch.testing.assert_close(expected, torch.ones(T, dtype=torch.float64), rtol=0, atol=1e-12)


def test_draw_segments_picks_uniformly():
    """Flat has one segment compatible with every step: steps are drawn uniformly, weight T."""
    T, d, B = 5, 3, 5000
    draw = Flat(steps=T).draw_segments(B, d, generator=torch.Generator().manual_seed(0))
    assert (draw.segment == 0).all() and (draw.weight == T).all()
    k = (T * (1 - draw.level[:, 0].double())).round().long() + 1
    freq = torch.bincount(k, minlength=T + 1)[1:].double() / B
    assert (freq - 1 / T).abs().max() < 0.03, freq
    assert torch.allclose(draw.next_level[:, 0], ((T - k) / T).float())


# ------------------------------------------------------------------------------------------
# Custom tables
# ------------------------------------------------------------------------------------------
@st.composite
def valid_tables(draw):
    T = draw(st.integers(1, 8))
    d = draw(st.integers(1, 6))
    inner = draw(st.lists(st.lists(st.floats(0, 1), min_size=d, max_size=d), min_size=T - 1, max_size=T - 1))
    cols = torch.tensor(inner, dtype=torch.float64).reshape(T - 1, d)
    cols = cols.sort(dim=0, descending=True).values
    return torch.cat([torch.ones(1, d, dtype=torch.float64), cols, torch.zeros(1, d, dtype=torch.float64)])


@FAST
@given(valid_tables(), st.data())
def test_custom_validation(table, data):
    T, d = table.shape[0] - 1, table.shape[1]
    c = Custom(table)
    assert torch.equal(c.table(d), table) and c.num_steps(d) == T
    assert Custom(table.tolist()) == c and hash(Custom(table.clone())) == hash(c)
    with pytest.raises(ValueError, match="length"):
        c.table(d + 1)
    i = data.draw(st.integers(0, d - 1))
    r = data.draw(st.integers(0, T))

    bad = table.clone()
    bad[r, i] = data.draw(st.sampled_from([-0.5, 1.5, -1e-9, 1 + 1e-9]))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        Custom(bad)
    bad = table.clone()
    bad[0, i] = 0.5
    with pytest.raises(ValueError, match="row 0"):
        Custom(bad)
    bad = table.clone()
    bad[-1, i] = 0.5
    with pytest.raises(ValueError, match="last row"):
        Custom(bad)
    if T >= 2:
        bad = table.clone()
        k = data.draw(st.integers(1, T - 1))
        bad[k, i] = 0.0
        bad[k + 1, i] = 0.0
        if k + 1 < T:
            bad[k + 1, i] = 0.5
            with pytest.raises(ValueError, match=f"position {i} rises"):
                Custom(bad)
    bad = table.clone()
    bad[r, i] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        Custom(bad)
    with pytest.raises(ValueError, match="2-D"):
        Custom(table[:, 0])
    with pytest.raises(ValueError, match="2-D"):
        Custom(table[None])


def test_custom_shape_errors():
    with pytest.raises(ValueError, match="at least 2 rows"):
        Custom([[1.0, 1.0]])
    with pytest.raises(ValueError, match="2-D"):
        validate_table(torch.tensor(1.0))


# ------------------------------------------------------------------------------------------
# serialisation
# ------------------------------------------------------------------------------------------
@FAST
@given(st.one_of(schedules, valid_tables().map(Custom), valid_tables().map(lambda t: Custom(t).with_steps(3))))
def test_round_trip(s):
    spec = s.to_dict()
    again = hyperschedule(spec)
    assert again == s and hash(again) == hash(s)
    assert hyperschedule(json.loads(json.dumps(spec))) == s
    assert hyperschedule(s) is s
    assert repr(s).startswith(type(s).__name__)


def test_by_name_and_unknown():
    assert hyperschedule("quench") == Quench()
    assert hyperschedule({"name": "block", "width": 4, "steps_per_block": 2}) == Block(4, 2)
    with pytest.raises(ValueError, match="unknown hyperschedule"):
        hyperschedule("zigzag")
    for bad in (lambda: Block(0), lambda: Block(2, 0), lambda: Slide(0), lambda: Flat(steps=0)):
        with pytest.raises(ValueError, match="positive int"):
            bad()
