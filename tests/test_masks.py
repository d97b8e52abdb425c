"""Attention masks from hyperschedules: dense (SDPA) and FlexAttention agree, and both follow the rules.

FlexAttention runs here eagerly on CPU (forward only), which is exact but slow-ish per call
(tens of ms); compiling it on CPU costs 10-40 s per new mask and is left out.
"""
from __future__ import annotations

import functools

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention.flex_attention import BlockMask, create_mask, flex_attention

from diffusionlm.masks import (
    Layout,
    MaskCache,
    StepMask,
    additive_mask,
    categories_from_levels,
    causal_mask_mod,
    dense_mask,
    flex_block_mask,
    full_mask_mod,
    inference_mask,
    inference_mask_mod,
    segment_readers,
    shift_inputs,
    step_categories,
    training_mask,
    two_halves_inputs,
    two_halves_mask,
    two_halves_mask_mod,
)
from diffusionlm.schedules.hyper import (
    ACTIVE,
    SETTLED,
    WORTHLESS,
    Block,
    Custom,
    Flat,
    Quench,
    Slide,
)

pytestmark = pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")


VOCAB, MASK, BOS = 11, 11, 12  # real ids 0..10, MASK and BOS extra
HEADS, HEAD_DIM = 2, 8
LENGTHS = [7, 8, 13]


@functools.lru_cache(maxsize=None)
def custom(d: int, T: int = 6) -> Custom:
    """A small Custom table whose positions settle out of order (settled set is not a prefix)."""
    k = torch.arange(T + 1, dtype=torch.float64)[:, None]
    i = torch.arange(d)
    a = ((3 * i) % 4).double()
    b = a + 1 + (i % 3).double()
    return Custom(((b - k) / (b - a)).clamp(0, 1))


SCHEDULES = {
    "quench": lambda d: Quench(),
    "flat4": lambda d: Flat(steps=4),
    "block4x2": lambda d: Block(4, 2),
    "block3x1": lambda d: Block(3, 1),
    "slide3": lambda d: Slide(3),
    "custom": custom,
}
# schedules whose two-halves segment plan exists (the Custom table above settles out of order)
SEGMENTABLE = ["quench", "flat4", "block4x2", "block3x1", "slide3"]


# ------------------------------------------------------------------------------------------
# helpers: a tiny attention stack whose q/k/v depend on the tokens each row reads
# ------------------------------------------------------------------------------------------
class TinyAttention:
    """Embedding + `layers` residual attention layers; the mask is a dense bool tensor or a BlockMask."""

    def __init__(self, layers: int = 1, seed: int = 0, max_len: int = 64):
        g = torch.Generator().manual_seed(seed)
        width = HEADS * HEAD_DIM
        self.emb = torch.randn(VOCAB + 2, width, generator=g)
        self.pos = torch.randn(max_len, width, generator=g)
        self.w = [torch.randn(3, width, width, generator=g) / width**0.5 for _ in range(layers)]

    def qkv(self, h: torch.Tensor, w: torch.Tensor):
        B, L, _ = h.shape
        return [(h @ w[i]).view(B, L, HEADS, HEAD_DIM).transpose(1, 2) for i in range(3)]

    def __call__(self, ids, pos, mask, flex: bool = False):
        h = self.emb[ids] + self.pos[pos]
        for w in self.w:
            q, k, v = self.qkv(h, w)
            if flex:
                o = flex_attention(q, k, v, block_mask=mask)
            else:
                o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
            h = h + o.transpose(1, 2).reshape(h.shape)
        return h


def random_tokens(B: int, d: int, seed: int) -> torch.Tensor:
    return torch.randint(0, VOCAB, (B, d), generator=torch.Generator().manual_seed(seed))


def corrupt(x0: torch.Tensor, level: torch.Tensor, seed: int) -> torch.Tensor:
    """A stand-in corruption: clean at level 0, MASK at level 1, MASK with prob `level` between."""
    u = torch.rand(x0.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    masked = (level >= 1) | ((level > 0) & (u < level.double()))
    return torch.where(masked, torch.full_like(x0, MASK), x0)


def both_layouts(x: torch.Tensor) -> torch.Tensor:
    """[B, d] tokens -> [2B, d] ids as read by the rows: ALIGNED rows first, then SHIFTED."""
    return torch.cat([shift_inputs(x, Layout.ALIGNED, BOS), shift_inputs(x, Layout.SHIFTED, BOS)])


def assert_dense_equals_flex(model, ids, pos, dense, block):
    assert isinstance(block, BlockMask)
    out_dense = model(ids, pos, dense)
    out_flex = model(ids, pos, block, flex=True)
    assert torch.isfinite(out_dense).all(), "a fully masked row reached SDPA"
    torch.testing.assert_close(out_flex, out_dense, atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------------------------------
# dense == FlexAttention
# ------------------------------------------------------------------------------------------
def assert_block_mask_covers(block, dense):
    """Every query/key block holding an allowed pair is present in the BlockMask (partial or full)."""
    bq, bk = block.BLOCK_SIZE
    B, _, Lq, Lk = dense.shape
    padded = F.pad(dense, (0, -Lk % bk, 0, -Lq % bq))
    need = padded.view(B, 1, padded.shape[2] // bq, bq, padded.shape[3] // bk, bk).any(5).any(3)
    have = block.to_dense().bool()
    assert not (need & ~have).any()


@pytest.mark.parametrize("d", LENGTHS)
@pytest.mark.parametrize("name", list(SCHEDULES))
def test_inference_dense_matches_flex_every_step(name, d):
    """At every step, with and without dropping worthless rows: the flex BlockMask's mask_mod gives
    exactly the dense mask (create_mask), and FlexAttention equals SDPA in both layouts."""
    s = SCHEDULES[name](d)
    model = TinyAttention()
    x0 = random_tokens(1, d, seed=d)
    table = s.table(d)
    T = s.num_steps(d)
    steps = []
    for k in range(1, T + 1):
        x_step = corrupt(x0, table[k - 1][None], seed=k)
        steps.append(x_step)
        cats = step_categories(s, d, k)
        for drop in (True, False):
            dm = inference_mask(s, d, k, "dense", drop_worthless=drop)
            fm = inference_mask(s, d, k, "flex", drop_worthless=drop)
            assert isinstance(dm, StepMask) and torch.equal(dm.rows, fm.rows)
            expect_rows = (cats != WORTHLESS).nonzero().squeeze(1) if drop else torch.arange(d)
            assert torch.equal(dm.rows, expect_rows)
            L = dm.rows.numel()
            assert dm.mask.shape == (1, 1, L, L) and dm.mask.dtype == torch.bool
            assert torch.equal(create_mask(fm.mask.mask_mod, 1, 1, L, L, device="cpu"), dm.mask)
            mod = inference_mask_mod(cats[dm.rows][None])
            assert torch.equal(create_mask(mod, 1, 1, L, L, device="cpu"), dm.mask)
            assert_block_mask_covers(fm.mask, dm.mask)
            if drop:
                # both layouts at once (the mask is batch-independent): rows read their layout's tokens
                ids = both_layouts(x_step)[:, dm.rows]
                pos = dm.rows[None].expand(2, L)
                assert_dense_equals_flex(model, ids, pos, dm.mask, fm.mask)
    # all steps without dropping, in one batched FlexAttention call per layout pair
    cats_all = s.split(d).categories()
    cats2 = torch.cat([cats_all, cats_all])
    x_all = torch.cat(steps)
    ids = both_layouts(x_all)
    dense = training_mask(cats2)
    for k in range(1, T + 1):
        assert torch.equal(dense[k - 1], inference_mask(s, d, k, drop_worthless=False).mask[0])
    pos = torch.arange(d).expand(2 * T, d)
    assert_dense_equals_flex(model, ids, pos, dense, training_mask(cats2, kind="flex"))


@pytest.mark.parametrize("d", LENGTHS)
@pytest.mark.parametrize("name", list(SCHEDULES))
def test_training_draw_dense_matches_flex(name, d):
    s = SCHEDULES[name](d)
    B = 4
    draw = s.draw(B, d, generator=torch.Generator().manual_seed(d))
    cats = categories_from_levels(draw.level, draw.next_level)
    split = s.split(d)
    assert torch.equal(cats, split.categories()[draw.step - 1])
    x = corrupt(random_tokens(B, d, seed=1), draw.level, seed=2)
    cats2 = torch.cat([cats, cats])  # ALIGNED rows, then SHIFTED rows
    dense = training_mask(cats2)
    assert dense.shape == (2 * B, 1, d, d)
    assert torch.equal(create_mask(inference_mask_mod(cats2), 2 * B, 1, d, d, device="cpu"), dense)
    block = training_mask(cats2, kind="flex")
    pos = torch.arange(d).expand(2 * B, d)
    assert_dense_equals_flex(TinyAttention(), both_layouts(x), pos, dense, block)


def test_training_draw_continuous_time():
    """Continuous-time Flat: no next level; every position with level > 0 is active (dense mask)."""
    draw = Flat().draw(3, 9, generator=torch.Generator().manual_seed(0))
    cats = categories_from_levels(draw.level, None)
    assert (cats == ACTIVE).all()
    assert training_mask(cats).all()
    lv = torch.tensor([[0.0, 0.5, 1.0]])
    assert categories_from_levels(lv, torch.tensor([[0.0, 0.0, 1.0]])).tolist() == [[SETTLED, ACTIVE, WORTHLESS]]
    assert categories_from_levels(lv, torch.tensor([[0.0, 0.0, 0.5]])).tolist() == [[SETTLED, ACTIVE, ACTIVE]]


def segment_draw(s, d, B, seed):
    """draw_segments where the schedule has a segment plan; fixed width-3 segments otherwise."""
    try:
        draw = s.draw_segments(B, d, generator=torch.Generator().manual_seed(seed))
    except ValueError:
        seg = (torch.arange(d) // 3).expand(B, d)
        return seg, None, torch.zeros(B, d)
    return draw.segment, categories_from_levels(draw.level, draw.next_level), draw.level


@pytest.mark.parametrize("d", LENGTHS)
@pytest.mark.parametrize("name", list(SCHEDULES))
def test_two_halves_dense_matches_flex(name, d):
    s = SCHEDULES[name](d)
    B = 3
    seg, cats, level = segment_draw(s, d, B, seed=d)
    x0 = random_tokens(B, d, seed=3)
    xn = corrupt(x0, level, seed=4)
    model = TinyAttention()
    # both layouts stacked along the batch: ALIGNED rows, then SHIFTED rows
    seg2 = torch.cat([seg, seg])
    cats2 = None if cats is None else torch.cat([cats, cats])
    inputs = [two_halves_inputs(xn, x0, seg, layout, bos_id=BOS) for layout in (Layout.ALIGNED, Layout.SHIFTED)]
    ids = torch.cat([i for i, _ in inputs])
    pos = torch.cat([p for _, p in inputs])
    variants = [(False, None), (True, None)] + ([(False, cats2)] if cats2 is not None else [])
    for block_causal, c in variants:
        dense = two_halves_mask(seg2, block_causal=block_causal, categories=c)
        assert dense.shape == (2 * B, 1, 2 * d, 2 * d)
        mod = two_halves_mask_mod(seg2, block_causal=block_causal, categories=c)
        assert torch.equal(create_mask(mod, 2 * B, 1, 2 * d, 2 * d, device="cpu"), dense)
        block = two_halves_mask(seg2, kind="flex", block_causal=block_causal, categories=c)
        assert_block_mask_covers(block, dense)
        assert_dense_equals_flex(model, ids, pos, dense, block)
    if cats is not None:  # block-causal with categories: the exact mask only
        mod = two_halves_mask_mod(seg, block_causal=True, categories=cats)
        assert torch.equal(
            create_mask(mod, B, 1, 2 * d, 2 * d, device="cpu"),
            two_halves_mask(seg, block_causal=True, categories=cats),
        )
    # one row of segment ids: a batch-independent mask, broadcast over the batch
    dense1 = two_halves_mask(seg[:1])
    assert dense1.shape == (1, 1, 2 * d, 2 * d)
    ids, pos = two_halves_inputs(xn, x0, seg[:1], Layout.SHIFTED, bos_id=BOS)
    assert_dense_equals_flex(model, ids, pos, dense1, two_halves_mask(seg[:1], kind="flex"))


@pytest.mark.parametrize("name", SEGMENTABLE)
def test_two_halves_readers_dense_matches_flex_and_the_rule(name):
    """SHIFTED_LAST's readers (one a segment, rows 2d..): the dense mask, the mask_mod evaluated
    by FlexAttention's create_mask, and the BlockMask agree; and the rule holds row by row: reader
    r attends its segment's fed noisy rows, the clean rows before the segment and itself; of the
    other rows only the segment's active noisy rows attend it; the first 2d rows are unchanged."""
    d, B = 13, 3
    s = SCHEDULES[name](d)
    draw = s.draw_segments(B, d, generator=torch.Generator().manual_seed(2))
    cats = categories_from_levels(draw.level, draw.next_level)
    x0 = random_tokens(B, d, seed=3)
    xn = corrupt(x0, draw.level, seed=4)
    ids, pos = two_halves_inputs(xn, x0, draw.segment, Layout.SHIFTED_LAST, bos_id=BOS, categories=cats)
    source, valid, rank = segment_readers(draw.segment, cats)
    R = source.shape[1]
    assert ids.shape == pos.shape == (B, 2 * d + R)
    for c in (None, cats):
        dense = two_halves_mask(draw.segment, categories=c, readers=True)
        assert dense.shape == (B, 1, 2 * d + R, 2 * d + R)
        mod = two_halves_mask_mod(draw.segment, categories=c, readers=True)
        assert torch.equal(create_mask(mod, B, 1, 2 * d + R, 2 * d + R, device="cpu"), dense)
        block = two_halves_mask(draw.segment, kind="flex", categories=c, readers=True)
        assert_block_mask_covers(block, dense)
        assert_dense_equals_flex(TinyAttention(), ids, pos, dense, block)
        assert torch.equal(dense[:, :, :2 * d, :2 * d], two_halves_mask(draw.segment, categories=c))
        for b in range(B):
            fed = torch.ones(d, dtype=torch.bool) if c is None else c[b] != WORTHLESS
            active = torch.ones(d, dtype=torch.bool) if c is None else c[b] == ACTIVE
            for r in range(R):
                row = dense[b, 0, 2 * d + r]
                if not valid[b, r]:
                    assert row.nonzero().squeeze(1).tolist() == [2 * d + r]
                    continue
                assert int(pos[b, 2 * d + r]) == int(source[b, r]) + 1
                assert int(ids[b, 2 * d + r]) == int(xn[b, source[b, r]])
                assert torch.equal(row[:d], (rank[b] == r) & fed)
                assert torch.equal(row[d:2 * d], rank[b] < r)
                assert row[2 * d:].nonzero().squeeze(1).tolist() == [r]
                assert torch.equal(dense[b, 0, :d, 2 * d + r], (rank[b] == r) & active)
                assert not dense[b, 0, d:2 * d, 2 * d + r].any()
    with pytest.raises(ValueError, match="num_readers = 1, but a row has"):
        segment_readers(torch.tensor([[0, 0, 1, 1]]), num_readers=1)


def test_flex_block_sizes_and_long_lengths():
    """Lengths that do and do not fill FlexAttention blocks, and a smaller block size."""
    s = Slide(5)
    model = TinyAttention(max_len=300)
    for d, bs in ((130, 128), (64, 16), (45, 16)):
        for k in (1, 3, d // 2, s.num_steps(d)):
            dm = inference_mask(s, d, k, "dense", drop_worthless=False)
            fm = inference_mask(s, d, k, "flex", drop_worthless=False, block_size=bs)
            ids = random_tokens(1, d, seed=k)
            assert_dense_equals_flex(model, ids, torch.arange(d)[None], dm.mask, fm.mask)


def test_causal_and_full():
    for L in (1, 5, 9):
        c = dense_mask(causal_mask_mod(), 2, L)
        assert c.shape == (2, 1, L, L)
        assert torch.equal(c[0, 0], torch.ones(L, L, dtype=torch.bool).tril())
        assert dense_mask(full_mask_mod(), 1, L, L + 2).all()
        model = TinyAttention()
        ids = random_tokens(2, L, seed=L)
        pos = torch.arange(L).expand(2, L)
        assert_dense_equals_flex(model, ids, pos, c, flex_block_mask(causal_mask_mod(), None, L))
        assert_dense_equals_flex(
            model, ids, pos, dense_mask(full_mask_mod(), 1, L), flex_block_mask(full_mask_mod(), None, L)
        )


def test_dense_mask_evaluates_mask_mod_once():
    calls = []
    inner = inference_mask_mod(torch.tensor([[0, 0, 1, 2, 2]]))

    def counting(b, h, q, kv):
        calls.append((b.shape, q.shape, kv.shape))
        return inner(b, h, q, kv)

    out = dense_mask(counting, 3, 5)
    assert out.shape == (3, 1, 5, 5)
    assert calls == [((3, 1, 1, 1), (1, 1, 5, 1), (1, 1, 1, 5))]


def test_additive_mask():
    m = dense_mask(causal_mask_mod(), 1, 6)
    for dtype in (torch.float32, torch.bfloat16, torch.float64):
        a = additive_mask(m, dtype)
        assert a.dtype == dtype
        assert (a[m] == 0).all() and (a[~m] == torch.finfo(dtype).min).all()
    q, k, v = torch.randn(3, 1, 2, 6, 4).unbind(0)
    torch.testing.assert_close(
        F.scaled_dot_product_attention(q, k, v, attn_mask=additive_mask(m, torch.float32)),
        F.scaled_dot_product_attention(q, k, v, attn_mask=m),
    )
    with pytest.raises(ValueError, match="bool"):
        additive_mask(m.float())


# ------------------------------------------------------------------------------------------
# semantics
# ------------------------------------------------------------------------------------------
def brute_two_halves(seg, block_causal, cats=None):
    """The two-halves rule written out position by position."""
    d = seg.numel()
    m = torch.zeros(2 * d, 2 * d, dtype=torch.bool)
    for q in range(2 * d):
        for kv in range(2 * d):
            if q < d and kv < d:
                ok = bool(seg[kv] == seg[q])
                if ok and cats is not None:
                    cq, ck = int(cats[q]), int(cats[kv])
                    if cq == WORTHLESS:
                        ok = kv == q
                    elif ck == WORTHLESS:
                        ok = False
                    elif cq == SETTLED:
                        ok = ck == SETTLED and kv <= q
            elif q < d:
                ok = bool(seg[kv - d] < seg[q]) and (cats is None or int(cats[q]) != WORTHLESS)
            elif kv < d:
                ok = False
            else:
                ok = bool(seg[kv - d] <= seg[q - d]) if block_causal else kv <= q
            m[q, kv] = ok
    return m


@pytest.mark.parametrize("seg", [[0, 0, 0, 1, 1, 1, 2], [0, 1, 1, 1, 2, 2, 2, 3], [0] * 5, [0, 1, 2, 3], [2, 2, 5, 7, 7]])
@pytest.mark.parametrize("block_causal", [False, True])
def test_two_halves_brute_force(seg, block_causal):
    seg = torch.tensor(seg)
    d = seg.numel()
    m = two_halves_mask(seg[None], block_causal=block_causal)[0, 0]
    assert torch.equal(m, brute_two_halves(seg, block_causal))
    # a noisy segment sees exactly itself and the clean positions before it
    for s in seg.unique():
        rows = (seg == s).nonzero().squeeze(1)
        expect = torch.cat([seg == s, seg < s])
        for r in rows:
            assert torch.equal(m[r], expect)
    # clean rows never see noisy rows; causal (or block-causal) among clean rows
    assert not m[d:, :d].any()
    if not block_causal:
        assert torch.equal(m[d:, d:], torch.ones(d, d, dtype=torch.bool).tril())
    cats = torch.randint(0, 3, (d,), generator=torch.Generator().manual_seed(d))
    mc = two_halves_mask(seg[None], block_causal=block_causal, categories=cats[None])[0, 0]
    assert torch.equal(mc, brute_two_halves(seg, block_causal, cats))


def recover_step(table, seg, level, next_level, s_id):
    """The step k a segment drew: levels on the segment match rows k-1 and k of the table."""
    where = seg == s_id
    for k in range(1, table.shape[0]):
        if torch.equal(table[k - 1][where].float(), level[where]) and torch.equal(
            table[k][where].float(), next_level[where]
        ):
            start = int(where.nonzero()[0])
            if (table[k - 1][:start] == 0).all():
                return k
    raise AssertionError("segment levels match no step of the table")


@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("layout", list(Layout))
@pytest.mark.parametrize("name", SEGMENTABLE)
def test_two_halves_reproduces_inference(name, layout, layers):
    """Each noisy segment's outputs equal those of the inference step it drew (any depth, both
    layouts), when the mask is refined with the draw's categories; the plain segment mask agrees
    wherever a segment holds only active positions."""
    model = TinyAttention(layers=layers, seed=layers)
    for d in (7, 13):
        s = SCHEDULES[name](d)
        table = s.table(d)
        B = 4
        draw = s.draw_segments(B, d, generator=torch.Generator().manual_seed(d + layers))
        cats = categories_from_levels(draw.level, draw.next_level)
        x0 = random_tokens(B, d, seed=5)
        xn = corrupt(x0, draw.level, seed=6)
        readers = layout.reads_last
        ids, pos = two_halves_inputs(xn, x0, draw.segment, layout, bos_id=BOS, categories=cats)
        out = model(ids, pos, two_halves_mask(draw.segment, categories=cats, readers=readers))
        plain_ids, plain_pos = two_halves_inputs(xn, x0, draw.segment, layout, bos_id=BOS)
        plain = model(plain_ids, plain_pos, two_halves_mask(draw.segment, readers=readers))
        for b in range(B):
            for s_id in draw.segment[b].unique():
                where = draw.segment[b] == s_id
                k = recover_step(table, draw.segment[b], draw.level[b], draw.next_level[b], s_id)
                start = int(where.nonzero()[0])
                x_step = torch.where(torch.arange(d) < start, x0[b], xn[b])
                sm = inference_mask(s, d, k)
                step_cats = step_categories(s, d, k)
                if readers:  # the reader of the step's last fed row, as the sampler's driver feeds it
                    rows = torch.cat([sm.rows, sm.rows[-1:] + 1])
                    row_cats = torch.cat([step_cats[sm.rows], torch.tensor([ACTIVE], dtype=step_cats.dtype)])
                    sm = sm._replace(rows=rows, mask=dense_mask(inference_mask_mod(row_cats[None]), 1, len(rows)))
                step_ids = shift_inputs(torch.cat([x_step, x_step[-1:]])[None], layout, BOS)[:, sm.rows]
                ref = model(step_ids, sm.rows[None], sm.mask)[0]
                check = where & (step_cats != WORTHLESS)
                assert check.any()
                at = {int(r): j for j, r in enumerate(sm.rows)}
                ref_rows = torch.tensor([at[int(i)] for i in check.nonzero().squeeze(1)])
                torch.testing.assert_close(out[b, check.nonzero().squeeze(1)], ref[ref_rows], atol=1e-5, rtol=1e-5)
                if (step_cats[where] == ACTIVE).all():
                    torch.testing.assert_close(plain[b, :d][where], out[b, :d][where], atol=1e-5, rtol=1e-5)
                if readers:  # the segment's reader equals the step's reader too
                    r = int(torch.unique_consecutive(draw.segment[b], return_counts=True)[0].tolist().index(int(s_id)))
                    torch.testing.assert_close(out[b, 2 * d + r], ref[-1], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("d", LENGTHS)
@pytest.mark.parametrize("name", list(SCHEDULES))
def test_inference_mask_rules(name, d):
    s = SCHEDULES[name](d)
    for k in range(1, s.num_steps(d) + 1):
        cats = step_categories(s, d, k)
        m = inference_mask(s, d, k, drop_worthless=False).mask[0, 0]
        settled, active, worthless = cats == SETTLED, cats == ACTIVE, cats == WORTHLESS
        idx = torch.arange(d)
        causal = idx[None, :] <= idx[:, None]
        assert torch.equal(m[settled], (settled[None, :] & causal)[settled])
        assert torch.equal(m[active], (~worthless)[None, :].expand(int(active.sum()), d))
        assert torch.equal(m[worthless], torch.eye(d, dtype=torch.bool)[worthless])
        assert m.any(-1).all(), "no row may be fully masked"
        assert not (m[:, worthless] & ~torch.eye(d, dtype=torch.bool)[:, worthless]).any()
        # dropping worthless rows keeps the rest of the mask unchanged
        sm = inference_mask(s, d, k)
        assert torch.equal(sm.mask[0, 0], m[sm.rows][:, sm.rows])


@pytest.mark.parametrize("layout", [Layout.ALIGNED, Layout.SHIFTED])
def test_quench_inference_is_autoregressive(layout):
    """Quench step k feeds rows 0..k-1 under a causal mask; the one active row k-1 sees every row.
    SHIFTED, those rows read BOS, x_0 .. x_{k-2}: plain autoregressive next-token prediction."""
    d = 9
    x = torch.arange(1, d + 1)[None]
    table = Quench().table(d)
    for k in range(1, d + 1):
        sm = inference_mask(Quench(), d, k)
        assert torch.equal(sm.rows, torch.arange(k))
        m = sm.mask[0, 0]
        assert m[k - 1].all()
        assert torch.equal(m, torch.ones(k, k, dtype=torch.bool).tril())
        x_step = corrupt(x, table[k - 1][None], seed=k)
        ids = shift_inputs(x_step, layout, BOS)[0, sm.rows].tolist()
        if layout is Layout.SHIFTED:
            assert ids == [BOS] + list(range(1, k))
        else:
            assert ids == list(range(1, k)) + [MASK]


def test_shift_inputs():
    x = torch.tensor([[5, 6, 7], [8, 9, 10]])
    assert shift_inputs(x, Layout.ALIGNED) is x
    assert shift_inputs(x, "shifted", bos_id=1).tolist() == [[1, 5, 6], [1, 8, 9]]
    assert shift_inputs(x[0], Layout.SHIFTED, bos_id=0).tolist() == [0, 5, 6]
    with pytest.raises(ValueError, match="bos_id"):
        shift_inputs(x, Layout.SHIFTED)
    with pytest.raises(ValueError):
        shift_inputs(x, "sideways")


def test_two_halves_inputs():
    x_clean = torch.tensor([[10, 11, 12, 13, 14, 15, 16]])
    x_noisy = torch.tensor([[20, 21, 22, 23, 24, 25, 26]])
    seg = torch.tensor([[0, 0, 1, 1, 1, 2, 2]])
    ids, pos = two_halves_inputs(x_noisy, x_clean, seg, Layout.ALIGNED)
    assert ids.tolist() == [[20, 21, 22, 23, 24, 25, 26, 10, 11, 12, 13, 14, 15, 16]]
    assert pos.tolist() == [[0, 1, 2, 3, 4, 5, 6] * 2]
    ids, pos = two_halves_inputs(x_noisy, x_clean, seg, Layout.SHIFTED, bos_id=99)
    # first row of each segment reads the clean token before it (BOS at row 0)
    assert ids.tolist() == [[99, 20, 11, 22, 23, 14, 25, 99, 10, 11, 12, 13, 14, 15]]
    assert pos.tolist() == [[0, 1, 2, 3, 4, 5, 6] * 2]
    # per-row segments broadcast over a batch
    seg2 = torch.tensor([[0, 0, 1, 1, 1, 2, 2], [0, 1, 1, 1, 2, 2, 2]])
    ids, _ = two_halves_inputs(x_noisy.expand(2, 7), x_clean.expand(2, 7), seg2, "shifted", bos_id=99)
    assert ids[1, :7].tolist() == [99, 10, 21, 22, 13, 24, 25]
    with pytest.raises(ValueError, match="bos_id"):
        two_halves_inputs(x_noisy, x_clean, seg, Layout.SHIFTED)
    with pytest.raises(ValueError, match="must both be"):
        two_halves_inputs(x_noisy, x_clean[:, :5], seg, Layout.ALIGNED)
    with pytest.raises(ValueError, match="does not match"):
        two_halves_inputs(x_noisy, x_clean, seg[:, :5], Layout.ALIGNED)


# ------------------------------------------------------------------------------------------
# caching and errors
# ------------------------------------------------------------------------------------------
def test_mask_cache_is_bounded_and_owned_by_its_caller():
    """inference_mask builds anew (no module-level store); a MaskCache remembers at most
    `maxsize` masks, shares them between equal keys and evicts the least recently used."""
    s = Block(4, 2)
    a = inference_mask(s, 10, 3)
    b = inference_mask(s, 10, 3)
    assert a is not b and torch.equal(a.mask, b.mask) and torch.equal(a.rows, b.rows)
    cache = MaskCache(maxsize=2)
    m = cache.inference_mask(s, 10, 3)
    assert torch.equal(m.mask, a.mask) and torch.equal(m.rows, a.rows)
    assert cache.inference_mask(s, 10, 3) is m
    assert cache.inference_mask(Block(4, 2), 10, 3) is m  # equal schedules share an entry
    f = cache.inference_mask(s, 10, 3, kind="flex")
    assert cache.inference_mask(s, 10, 3, kind="flex") is f and f is not m
    assert len(cache) == 2
    cache.inference_mask(s, 10, 4)  # a third key evicts the least recently used (the dense step 3)
    assert len(cache) == 2 and cache.inference_mask(s, 10, 3) is not m
    c = custom(7)
    assert cache.inference_mask(c, 7, 2) is cache.inference_mask(Custom(c.table_.clone()), 7, 2)
    with pytest.raises(ValueError, match="maxsize"):
        MaskCache(0)


@pytest.mark.parametrize("name", ["block", "slide", "quench", "flat"])
def test_training_masks_built_once_per_distinct_row_and_equal_to_direct(name):
    """The dense training masks are built per distinct (segment, categories) row and remembered;
    every row still equals the mask_mod evaluated directly for that row."""
    d, B = 24, 6
    s = {"block": Block(8, 2), "slide": Slide(4), "quench": Quench(), "flat": Flat(steps=6)}[name]
    g = torch.Generator().manual_seed(3)
    for _ in range(3):
        draw = s.draw_segments(B, d, generator=g)
        cats = categories_from_levels(draw.level, draw.next_level)
        m = two_halves_mask(draw.segment, categories=cats)
        direct = dense_mask(two_halves_mask_mod(draw.segment, categories=cats), B, 2 * d)
        assert m.shape == (B, 1, 2 * d, 2 * d) and torch.equal(m, direct)
        per_seq = s.draw(B, d, generator=g)
        c2 = categories_from_levels(per_seq.level, per_seq.next_level)
        t = training_mask(c2)
        assert t.shape == (B, 1, d, d) and torch.equal(t, dense_mask(inference_mask_mod(c2), B, d))
    # identical rows: one mask, shared by every row and by the next call with the same rows
    seg = torch.arange(d)[None].div(8, rounding_mode="floor").expand(B, d)
    cats = torch.full((B, d), ACTIVE)
    a, b = two_halves_mask(seg, categories=cats), two_halves_mask(seg.clone(), categories=cats.clone())
    assert a.data_ptr() == b.data_ptr() and a.stride(0) == 0 and torch.equal(a[0], a[B - 1])


def test_errors():
    with pytest.raises(ValueError, match="code 3"):
        inference_mask_mod(torch.tensor([[0, 1, 3]]))
    with pytest.raises(ValueError, match="code -1"):
        training_mask(torch.tensor([[0, -1]]))
    with pytest.raises(ValueError, match="integer"):
        inference_mask_mod(torch.tensor([[0.0, 1.0]]))
    with pytest.raises(ValueError, match="non-decreasing"):
        two_halves_mask_mod(torch.tensor([[0, 1, 0]]))
    with pytest.raises(ValueError, match="non-decreasing"):
        two_halves_mask(torch.tensor([[0, 0, 1], [0, 2, 1]]))
    with pytest.raises(ValueError, match="do not match"):
        two_halves_mask_mod(torch.tensor([[0, 0, 1]]), categories=torch.tensor([[1, 1]]))
    with pytest.raises(ValueError, match="step k"):
        inference_mask(Quench(), 4, 5)
    with pytest.raises(ValueError, match="step k"):
        step_categories(Quench(), 4, 0)
    with pytest.raises(ValueError, match="kind"):
        inference_mask(Quench(), 4, 1, kind="sparse")
    mod = inference_mask_mod(torch.tensor([[0, 1, 2], [1, 1, 1]]))
    with pytest.raises(ValueError, match="batch"):
        dense_mask(mod, 3, 3)
    with pytest.raises(ValueError, match="batch"):
        flex_block_mask(mod, None, 3)
    with pytest.raises(ValueError, match="query rows"):
        dense_mask(mod, 2, 4)
    with pytest.raises(ValueError, match="shape"):
        categories_from_levels(torch.zeros(2, 3), torch.zeros(2, 4))
