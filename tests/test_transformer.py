"""The DiT-style transformer, its explicit KV cache and the attention backends."""
from __future__ import annotations

import dataclasses
import importlib.util
import math

import pytest
import torch

from diffusionlm.masks import Layout, dense_mask, flex_block_mask, inference_mask, inference_mask_mod, shift_inputs, step_categories
from diffusionlm.models import (
    ATTENTION_BACKENDS,
    Denoiser,
    DiffusionTransformer,
    KVCache,
    TransformerConfig,
    attention,
    output_size,
    plan_cached_step,
)
from diffusionlm.models.cache import _Store
from diffusionlm.schedules.hyper import ACTIVE, SETTLED, WORTHLESS, Block, Flat, Quench, Slide

V = 20  # real tokens 0..19
MASK = 20
BOS = 21
D = 11
HAS_FLASH = importlib.util.find_spec("flash_attn") is not None


def assert_close(actual, expected, atol=1e-6, rtol=0):
    """max |actual - expected| <= atol (torch.testing.assert_close imports torch.distributed: slow)."""
    assert rtol == 0 and actual.shape == expected.shape, (actual.shape, expected.shape)
    err = (actual - expected).abs().max().item()
    assert err <= atol, f"max abs difference {err:.3g} > {atol:g}"


def tiny_config(**kw) -> TransformerConfig:
    base = dict(
        vocab_size=V + 1,
        input_vocab_size=V + 2,
        mask_id=MASK,
        max_positions=32,
        n_layers=2,
        n_heads=4,
        hidden=32,
        cond_dim=16,
        time_frequency_dim=16,
    )
    base.update(kw)
    return TransformerConfig(**base)


def make_model(seed: int = 0, randomize_ada: bool = False, **kw) -> DiffusionTransformer:
    torch.manual_seed(seed)
    model = DiffusionTransformer(tiny_config(**kw)).eval()
    if randomize_ada:  # adaLN-Zero starts at zero: give the conditioning path some weight
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "ada" in name or "levels_emb" in name:
                    p.normal_(0.0, 0.3)
    return model


def step_tokens(schedule, d: int, k: int, y: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """x at the start of step k: settled positions hold y, active ones fresh random tokens or MASK
    (redrawn every step), worthless ones MASK."""
    cats = step_categories(schedule, d, k).long()
    noise = torch.randint(0, V + 1, y.shape, generator=gen)  # V == MASK
    x = torch.where(cats == SETTLED, y, noise)
    return torch.where(cats == WORTHLESS, torch.full_like(y, MASK), x)


def run_cached_vs_full(model, schedule, layout, *, levels_fn=None, weight_fn=None, seed=0):
    """At every step of `schedule`: full forward over the step's rows vs the cached forward.
    Returns the largest |difference| of logits."""
    gen = torch.Generator().manual_seed(seed)
    B = 2
    y = torch.randint(0, V, (B, D), generator=gen)
    T = schedule.num_steps(D)
    table = schedule.table(D).float()
    cache = KVCache.empty(model.config.n_layers)
    worst = 0.0
    for k in range(1, T + 1):
        x = step_tokens(schedule, D, k, y, gen)
        inputs = shift_inputs(x, layout, BOS)  # row j reads x[j] (ALIGNED) or x[j-1] (SHIFTED)
        step = inference_mask(schedule, D, k, "dense")
        rows = step.rows
        lv = table[k - 1][rows].expand(B, -1)  # the level of the token each row predicts
        extra = {}
        if levels_fn:
            extra["levels"] = lv
        if weight_fn:
            extra["embedding_weight"] = weight_fn(lv)
        with torch.no_grad():
            full = model(inputs[:, rows], position_ids=rows[None], attention_mask=step.mask, **extra).logits
            plan = plan_cached_step(rows, step_categories(schedule, D, k)[rows], step.mask, cache.length)
            fed = slice(cache.length, None)
            extra_fed = {n: t[:, fed] for n, t in extra.items()}
            out = model(
                inputs[:, plan.rows],
                position_ids=plan.rows[None],
                attention_mask=plan.mask,
                cache=cache,
                cache_commit=plan.commit,
                **extra_fed,
            )
        assert out.cache.length == plan.cached
        assert out.logits.shape == (B, len(plan.rows), V + 1)
        worst = max(worst, (out.logits - full[:, fed]).abs().max().item())
        cache = out.cache
    # every position ends up settled at the last step's end; the cache holds those settled before it
    assert cache.length == int((step_categories(schedule, D, T) == SETTLED).sum())
    return worst


SCHEDULES = [Quench(), Block(4, 2), Slide(3)]


@pytest.mark.parametrize("layout", [Layout.ALIGNED, Layout.SHIFTED], ids=["aligned", "shifted"])
@pytest.mark.parametrize("schedule", SCHEDULES, ids=repr)
def test_cached_logits_equal_uncached(schedule, layout):
    model = make_model()
    assert run_cached_vs_full(model, schedule, layout) < 1e-5


def test_caching_an_active_row_is_detected():
    """Negative control: caching an active row (its token changes later) is not exact, and the
    comparison above would see it. Block(4, 2): rows 0..3 are active at steps 1 and 2."""
    model = make_model()
    schedule = Block(4, 2)
    step = inference_mask(schedule, D, 2, "dense")
    assert step.rows.tolist() == [0, 1, 2, 3]
    x1 = torch.tensor([[MASK, 3, MASK, 5]])
    x2 = torch.tensor([[7, 3, MASK, 5]])  # row 0 changes between the steps
    pos = step.rows[None]
    with torch.no_grad():
        wrong = model(x1, position_ids=pos, attention_mask=step.mask, cache_commit=1).cache
        full = model(x2, position_ids=pos, attention_mask=step.mask).logits
        cached = model(x2[:, 1:], position_ids=pos[:, 1:], attention_mask=step.mask[..., 1:, :], cache=wrong).logits
        assert (cached - full[:, 1:]).abs().max() > 1e-3
        with pytest.raises(ValueError, match="only 0 rows are settled"):
            plan_cached_step(step.rows, step_categories(schedule, D, 2)[step.rows], step.mask, 1)


@pytest.mark.parametrize("layout", [Layout.ALIGNED, Layout.SHIFTED], ids=["aligned", "shifted"])
def test_cache_exact_with_time_conditioning_and_weighted_embedding(layout):
    model = make_model(randomize_ada=True, time_conditioning=True, weighted_embedding_gamma=0.5)
    weight_fn = lambda lv: model.embedding_weight_from_sigma(-torch.log1p(-0.999 * lv))  # noqa: E731
    for schedule in (Block(4, 2), Slide(3)):
        assert run_cached_vs_full(model, schedule, layout, levels_fn=True, weight_fn=weight_fn) < 1e-5


def test_cache_exact_with_flex_backend():
    model = make_model(attention="flex")
    assert run_cached_vs_full(model, Block(4, 2), Layout.SHIFTED) < 1e-5


def test_cache_is_immutable_and_crops():
    model = make_model()
    ids = torch.randint(0, V, (2, 7))
    empty = model.empty_cache()
    out = model(ids[:, :5], cache=empty, cache_commit=3, attention_mask="causal")
    assert empty.length == 0 and empty.keys[0] is None  # the input cache is untouched
    c3 = out.cache
    assert c3.length == 3 and c3.keys[0].shape == (2, 4, 3, 8) and c3.num_layers == 2
    c5 = model(ids[:, 3:5], cache=c3, cache_commit=2, attention_mask="causal").cache
    assert c3.length == 3 and c5.length == 5
    # the causal prefix computed in two pieces equals one forward over all 5 rows
    full = model(ids[:, :5], cache_commit=5, attention_mask="causal").cache
    for a, b in zip(c5.keys + c5.values, full.keys + full.values):
        assert_close(a, b, atol=1e-6, rtol=0)
    assert c5.crop(3).length == 3 and torch.equal(c5.crop(3).keys[1], c3.keys[1])
    assert c5.select(torch.tensor([1])).batch_size == 1
    with pytest.raises(ValueError, match="crop"):
        c3.crop(4)
    with pytest.raises(ValueError, match="commit"):
        c3.append([(k, v) for k, v in zip(c3.keys, c3.values)], 4)
    with pytest.raises(ValueError, match="batch size"):
        model(ids[:1, :2], cache=c3)
    with pytest.raises(ValueError, match="layers"):
        model(ids[:, :2], cache=KVCache.empty(3))
    # default positions continue after the cache
    a = model(ids[:, 3:5], cache=c3, attention_mask="causal").logits
    b = model(ids[:, 3:5], cache=c3, position_ids=torch.tensor([[3, 4]]), attention_mask="causal").logits
    assert_close(a, b, atol=0, rtol=0)


def test_cache_store_is_written_only_past_the_newest_cache(monkeypatch):
    """The preallocated K/V store (cache.py, "Storage"): a cache appends in place only while it
    is the newest built on its store; appending to an older cache again (a branch), extending
    it for attention, cropping it, copy instead, and no cache's rows ever change."""
    monkeypatch.setattr(_Store, "MIN_CAPACITY", 4)  # so that 32 rows outgrow the first buffers
    model = make_model()
    ids = torch.randint(0, V, (2, 32), generator=torch.Generator().manual_seed(3))
    causal = lambda L, P: torch.ones(P + L, P + L, dtype=torch.bool).tril()[P:][None, None]  # noqa: E731
    c3 = model(ids[:, :3], cache_commit=3, attention_mask="causal").cache
    c5 = model(ids[:, 3:5], cache=c3, cache_commit=2, attention_mask=causal(2, 3)).cache
    assert c5._store is c3._store  # the newest cache appended in place
    snap = [t.clone() for t in c3.keys + c3.values + c5.keys + c5.values]
    # a branch from the older c3: other rows 3..4; must not touch c5's rows 3..4
    other = ids[:, 10:12]
    b5 = model(other, cache=c3, position_ids=torch.tensor([[3, 4]]), cache_commit=2, attention_mask=causal(2, 3)).cache
    assert b5._store is not c3._store
    # scratch rows written by an uncommitted call on the newest cache are past every view
    model(ids[:, 5:9], cache=c5, attention_mask=causal(4, 5))
    model(ids[:, 5:7], cache=c5.crop(4), position_ids=torch.tensor([[4, 5]]), cache_commit=2, attention_mask=causal(2, 4))
    for a, b in zip(snap, c3.keys + c3.values + c5.keys + c5.values):
        assert torch.equal(a, b)
    # the branch equals one forward over its rows; growth past the first capacity stays exact
    ref = model(torch.cat([ids[:, :3], other], 1), cache_commit=5, attention_mask="causal").cache
    for a, b in zip(b5.keys + b5.values, ref.keys + ref.values):
        assert_close(a, b, atol=1e-6, rtol=0)
    c = model.empty_cache()
    capacities = set()
    for j in range(0, 32, 8):
        c = model(ids[:, j : j + 8], cache=c, cache_commit=8, attention_mask=causal(8, j)).cache
        capacities.add(c._store.keys[0].shape[2])
    full = model(ids, cache_commit=32, attention_mask="causal").cache
    assert c.length == 32 and c.keys[0].shape == (2, 4, 32, 8) and len(capacities) > 1
    for a, b in zip(c.keys + c.values, full.keys + full.values):
        assert_close(a, b, atol=1e-6, rtol=0)


def test_logits_to_keep_gives_the_last_rows():
    model = make_model(randomize_ada=True, time_conditioning=True)
    ids = torch.randint(0, V, (2, 6), generator=torch.Generator().manual_seed(1))
    lv = torch.rand(2, 6, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        full = model(ids, levels=lv, attention_mask="causal").logits
        last = model(ids, levels=lv, attention_mask="causal", logits_to_keep=3).logits
    assert last.shape == (2, 3, full.shape[-1])
    assert_close(last, full[:, -3:], atol=1e-6, rtol=0)
    for bad in (-1, 7, True):
        with pytest.raises(ValueError, match="logits_to_keep"):
            model(ids, levels=lv, logits_to_keep=bad)


def test_plan_cached_step_checks_prefix():
    rows = torch.arange(4)
    with pytest.raises(ValueError, match="prefix"):
        plan_cached_step(rows, torch.tensor([SETTLED, ACTIVE, SETTLED, ACTIVE]), None, 0)
    with pytest.raises(ValueError, match="only 1 rows are settled"):
        plan_cached_step(rows, torch.tensor([SETTLED, ACTIVE, ACTIVE, ACTIVE]), None, 2)
    plan = plan_cached_step(rows, torch.tensor([SETTLED, SETTLED, ACTIVE, ACTIVE]), torch.ones(1, 1, 4, 4, dtype=torch.bool), 1)
    assert plan.rows.tolist() == [1, 2, 3] and plan.commit == 1 and plan.cached == 2 and plan.mask.shape == (1, 1, 3, 4)


def test_plan_cached_step_non_strict_and_per_batch_row():
    """The sampler driver's use: settled rows after the prefix (fixed positions behind the cursor)
    are fed, not cached; per batch row a row is settled only where every batch row has it settled;
    and a settled row that does not hold its own position (a worthless position dropped before it)
    ends the cacheable prefix."""
    rows = torch.arange(4)
    cats = torch.tensor([SETTLED, ACTIVE, SETTLED, ACTIVE])
    plan = plan_cached_step(rows, cats, None, 0, strict=False)
    assert plan.rows.tolist() == [0, 1, 2, 3] and plan.commit == 1 and plan.cached == 1
    per_row = torch.tensor([[SETTLED, SETTLED, ACTIVE, ACTIVE], [SETTLED, ACTIVE, ACTIVE, ACTIVE]])
    plan = plan_cached_step(rows, per_row, None, 1, strict=False)
    assert plan.rows.tolist() == [1, 2, 3] and plan.commit == 0 and plan.cached == 1
    gap = torch.tensor([0, 2, 3])  # position 1 worthless (dropped); position 2 settled
    plan = plan_cached_step(gap, torch.tensor([SETTLED, SETTLED, ACTIVE]), None, 0, strict=False)
    assert plan.cached == 1 and plan.rows.tolist() == [0, 2, 3]
    with pytest.raises(ValueError, match="prefix"):
        plan_cached_step(gap, torch.tensor([SETTLED, SETTLED, ACTIVE]), None, 0)
    with pytest.raises(ValueError, match=r"must be \[L'\]"):
        plan_cached_step(rows, torch.zeros(2, 3, dtype=torch.long), None, 0)


# ---------------------------------------------------------------------------------------------
# attention backends
# ---------------------------------------------------------------------------------------------
def test_sdpa_and_flex_give_the_same_logits():
    sdpa = make_model()
    flex = make_model(attention="flex")
    flex.load_state_dict(sdpa.state_dict())
    ids = torch.randint(0, V + 2, (2, D))
    pos = torch.arange(D)[None]
    with torch.no_grad():
        for schedule in (Block(4, 2), Slide(3)):
            for k in (1, 3, schedule.num_steps(D)):
                dense = inference_mask(schedule, D, k, "dense")
                block = inference_mask(schedule, D, k, "flex")
                r = dense.rows
                a = sdpa(ids[:, r], position_ids=pos[:, r], attention_mask=dense.mask).logits
                b = flex(ids[:, r], position_ids=pos[:, r], attention_mask=block.mask).logits
                c = flex(ids[:, r], position_ids=pos[:, r], attention_mask=dense.mask).logits  # dense -> BlockMask
                d = sdpa(ids[:, r], position_ids=pos[:, r], attention_mask=block.mask).logits  # BlockMask -> dense
                for other in (b, c, d):
                    assert_close(other, a, atol=1e-5, rtol=0)
        for mask in (None, "causal"):
            assert_close(
                flex(ids, attention_mask=mask).logits, sdpa(ids, attention_mask=mask).logits, atol=1e-5, rtol=0
            )
        # per-sequence masks (batch dimension 2) built from different categories
        cats = torch.tensor([[SETTLED] * 4 + [ACTIVE] * 4 + [WORTHLESS] * 3, [SETTLED] * 6 + [ACTIVE] * 5])
        mod = inference_mask_mod(cats)
        a = sdpa(ids, attention_mask=dense_mask(mod, 2, D)).logits
        b = flex(ids, attention_mask=flex_block_mask(mod, 2, D)).logits
        c = flex(ids, attention_mask=dense_mask(mod, 2, D)).logits
        assert_close(b, a, atol=1e-5, rtol=0)
        assert_close(c, a, atol=1e-5, rtol=0)


def test_attention_function_matches_manual_softmax_and_zeroes_empty_rows():
    torch.manual_seed(0)
    q, k, v = torch.randn(2, 3, 5, 8), torch.randn(2, 3, 7, 8), torch.randn(2, 3, 7, 8)
    mask = torch.rand(2, 1, 5, 7) > 0.4
    mask[:, :, 0] = True
    mask[1, 0, 2] = False  # a row that may attend to nothing
    scores = (q @ k.transpose(-1, -2)) / math.sqrt(8)
    ref = torch.softmax(scores.masked_fill(~mask, float("-inf")), -1).nan_to_num(0.0) @ v
    with torch.no_grad():
        for name in ("sdpa", "flex"):
            out = attention(q, k, v, mask, name)
            assert_close(out, ref, atol=1e-5, rtol=0)
            assert out[1, :, 2].abs().max() == 0
        causal = attention(q, k, v, "causal", "sdpa")
        ref_c = torch.softmax(scores.masked_fill(~torch.ones(5, 7, dtype=torch.bool).tril(2), float("-inf")), -1) @ v
        assert_close(causal, ref_c, atol=1e-5, rtol=0)
    assert set(ATTENTION_BACKENDS) == {"sdpa", "flex", "flash"}
    with pytest.raises(ValueError, match="unknown attention backend"):
        attention(q, k, v, None, "nope")
    with pytest.raises(TypeError, match="boolean"):
        attention(q, k, v, mask.float(), "sdpa")


def test_flex_backward_on_cpu_raises_clearly():
    model = make_model(attention="flex").train()
    ids = torch.randint(0, V, (2, 6))
    with pytest.raises(NotImplementedError, match="sdpa"):
        model(ids, attention_mask="causal")
    with torch.no_grad():  # forward only is fine
        model(ids, attention_mask="causal")


def test_flash_backend_rejects_custom_masks():
    q = k = v = torch.randn(1, 2, 4, 8)
    with pytest.raises(ValueError, match="custom"):
        attention(q, k, v, torch.ones(1, 1, 4, 4, dtype=torch.bool), "flash")
    model = make_model(attention="flash")
    with pytest.raises(ValueError, match="custom"):
        model(torch.zeros(1, 4, dtype=torch.long), attention_mask=torch.ones(1, 1, 4, 4, dtype=torch.bool))
    if not HAS_FLASH:
        with pytest.raises(ImportError, match="pip install flash-attn"):
            attention(q, k, v, "causal", "flash")


def test_sdpa_trains_on_cpu():
    model = make_model(dropout=0.1, time_conditioning=True).train()
    ids = torch.randint(0, V + 1, (2, 9))
    levels = torch.rand(2, 9)
    mask = inference_mask(Block(4, 2), 9, 3, "dense", drop_worthless=False).mask
    loss = torch.nn.functional.cross_entropy(
        model(ids, attention_mask=mask, levels=levels).logits.flatten(0, 1), ids.flatten()
    )
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert len(grads) == len(list(model.parameters()))
    assert all(torch.isfinite(g).all() for g in grads)


# ---------------------------------------------------------------------------------------------
# model behaviour
# ---------------------------------------------------------------------------------------------
def test_protocol_and_shapes():
    model = make_model()
    assert isinstance(model, Denoiser) and output_size(model) == V + 1 == model.vocab_size
    out = model(torch.randint(0, V + 2, (3, 5)))
    assert out.logits.shape == (3, 5, V + 1) and out.cache is None


def test_attention_is_really_bidirectional():
    model = make_model()
    ids = torch.randint(0, V, (1, 8))
    changed = ids.clone()
    changed[0, -1] = (ids[0, -1] + 1) % V
    causal_dense = torch.ones(8, 8, dtype=torch.bool).tril()[None, None]
    with torch.no_grad():
        for full in (None, torch.ones(1, 1, 8, 8, dtype=torch.bool)):
            a = model(ids, attention_mask=full).logits[0, 0]
            b = model(changed, attention_mask=full).logits[0, 0]
            assert (a - b).abs().max() > 1e-4
        for causal in ("causal", causal_dense):
            a = model(ids, attention_mask=causal).logits[0, :-1]
            b = model(changed, attention_mask=causal).logits[0, :-1]
            assert torch.equal(a, b)


def test_positions_matter_and_are_explicit():
    model = make_model()
    ids = torch.randint(0, V, (1, 4))
    with torch.no_grad():
        a = model(ids).logits
        b = model(ids, position_ids=torch.tensor([[0, 1, 2, 3]])).logits
        c = model(ids, position_ids=torch.tensor([[0, 1, 5, 9]])).logits
    assert torch.equal(a, b)
    assert (a - c).abs().max() > 1e-4


def test_time_conditioning_uses_levels():
    ids = torch.randint(0, V + 1, (2, 6))
    lv1, lv2 = torch.full((2, 6), 0.2), torch.full((2, 6), 0.8)
    fresh = make_model(time_conditioning=True)  # adaLN-Zero: identical until trained
    with torch.no_grad():
        assert torch.equal(fresh(ids, levels=lv1).logits, fresh(ids, levels=lv2).logits)
    model = make_model(time_conditioning=True, randomize_ada=True)
    with torch.no_grad():
        a = model(ids, levels=lv1).logits
        b = model(ids, levels=lv2).logits
        per_pos = lv1.clone()
        per_pos[:, 3] = 0.8  # one position's level changes: its own logits change
        c = model(ids, levels=per_pos, attention_mask="causal").logits
        d = model(ids, levels=lv1, attention_mask="causal").logits
    assert (a - b).abs().max() > 1e-3
    assert torch.equal(c[:, :3], d[:, :3]) and (c[:, 3] - d[:, 3]).abs().max() > 1e-4
    plain = make_model()
    with torch.no_grad():  # levels given to a model without time conditioning are ignored
        assert torch.equal(plain(ids, levels=lv1).logits, plain(ids).logits)


def test_weighted_embedding():
    model = make_model(weighted_embedding_gamma=1.0)
    ids = torch.randint(0, V, (1, 5))
    with torch.no_grad():
        clean = model(ids, embedding_weight=torch.ones(1, 5)).logits
        masked = model(ids, embedding_weight=torch.zeros(1, 5)).logits
        all_mask = model(torch.full((1, 5), MASK), embedding_weight=torch.ones(1, 5)).logits
        plain = make_model()
        assert torch.equal(clean, plain(ids).logits)  # same seed, same weights
    assert_close(masked, all_mask, atol=1e-6, rtol=0)
    w = model.embedding_weight_from_sigma(torch.tensor([0.0, 2.0]))
    assert_close(w, torch.tensor([1.0, math.exp(-2.0)]))
    with pytest.raises(ValueError, match="embedding_weight"):
        model(ids)


def test_save_load_round_trip(tmp_path):
    for kw in (dict(), dict(time_conditioning=True, randomize_ada=True, tie_embeddings=False)):
        model = make_model(**kw)
        model.save_pretrained(tmp_path / "m")
        assert (tmp_path / "m" / "config.json").is_file() and (tmp_path / "m" / "model.safetensors").is_file()
        loaded = DiffusionTransformer.from_pretrained(tmp_path / "m").eval()
        assert loaded.config == model.config
        ids = torch.randint(0, V + 2, (2, 7))
        extra = {"levels": torch.rand(2, 7)} if model.config.time_conditioning else {}
        with torch.no_grad():
            assert torch.equal(model(ids, **extra).logits, loaded(ids, **extra).logits)
    flex = DiffusionTransformer.from_pretrained(tmp_path / "m", attention="flex")
    assert flex.config.attention == "flex"
    (tmp_path / "m" / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        DiffusionTransformer.from_pretrained(tmp_path / "m")
    with pytest.raises(FileNotFoundError, match="config.json"):
        DiffusionTransformer.from_pretrained(tmp_path / "nowhere")


def test_presets():
    tiny = TransformerConfig.preset("tiny", vocab_size=258)
    assert (tiny.n_layers, tiny.hidden, tiny.n_heads, tiny.vocab_size) == (4, 128, 4, 258)
    small = TransformerConfig.preset("gpt2-small", vocab_size=50258, time_conditioning=True)
    assert (small.n_layers, small.hidden, small.n_heads, small.time_conditioning) == (12, 768, 12, True)
    assert 0.7e6 < DiffusionTransformer(tiny).num_parameters() < 1.0e6
    with pytest.raises(ValueError, match="unknown preset"):
        TransformerConfig.preset("huge", vocab_size=10)
    with pytest.raises(ValueError, match="vocab_size"):
        TransformerConfig.preset("tiny")


# ---------------------------------------------------------------------------------------------
# clear errors
# ---------------------------------------------------------------------------------------------
def test_clear_errors():
    model = make_model()
    with pytest.raises(ValueError, match=r"\[0, 22\)"):
        model(torch.tensor([[1, 22]]))
    with pytest.raises(ValueError, match=r"\[0, 22\)"):
        model(torch.tensor([[-1, 2]]))
    with pytest.raises(ValueError, match="max_positions=32"):
        model(torch.zeros(1, 33, dtype=torch.long))
    with pytest.raises(ValueError, match="max_positions=32"):
        model(torch.zeros(1, 3, dtype=torch.long), position_ids=torch.tensor([[0, 1, 32]]))
    cache = model(torch.zeros(1, 30, dtype=torch.long), cache_commit=30).cache
    with pytest.raises(ValueError, match="max_positions=32"):
        model(torch.zeros(1, 3, dtype=torch.long), cache=cache)
    with pytest.raises(ValueError, match=r"expected \[2 or 1, 1 or 4, 5, 5\]"):
        model(torch.zeros(2, 5, dtype=torch.long), attention_mask=torch.ones(1, 1, 5, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"expected \[1 or 1, 1 or 4, 2, 32\]"):  # mask must cover cache too
        model(torch.zeros(1, 2, dtype=torch.long), cache=cache, attention_mask=torch.ones(1, 1, 2, 2, dtype=torch.bool))
    with pytest.raises(TypeError, match="boolean"):
        model(torch.zeros(1, 5, dtype=torch.long), attention_mask=torch.ones(1, 1, 5, 5))
    with pytest.raises(ValueError, match="position_ids"):
        model(torch.zeros(1, 5, dtype=torch.long), position_ids=torch.arange(4)[None])
    with pytest.raises(ValueError, match="cache_commit"):
        model(torch.zeros(1, 5, dtype=torch.long), cache_commit=6)
    tc = make_model(time_conditioning=True)
    with pytest.raises(ValueError, match="time-conditioned: pass levels"):
        tc(torch.zeros(1, 5, dtype=torch.long))
    with pytest.raises(ValueError, match="levels has shape"):
        tc(torch.zeros(1, 5, dtype=torch.long), levels=torch.zeros(1, 4))
    with pytest.raises(ValueError, match="divisible"):
        tiny_config(hidden=30)
    with pytest.raises(ValueError, match="unknown attention backend"):
        tiny_config(attention="xformers")
    with pytest.raises(ValueError, match="mask_id"):
        tiny_config(mask_id=None, weighted_embedding_gamma=1.0)
    with pytest.raises(ValueError, match="embedding_weight needs"):
        make_model(mask_id=None)(torch.zeros(1, 2, dtype=torch.long), embedding_weight=torch.ones(1, 2))
    with pytest.raises(ValueError, match="unknown TransformerConfig fields"):
        TransformerConfig.from_dict({**tiny_config().to_dict(), "colour": "blue"})
    assert TransformerConfig.from_dict(dataclasses.asdict(tiny_config())) == tiny_config()


@pytest.mark.parametrize("layout", ["aligned", "shifted"])
@pytest.mark.parametrize(
    "schedule", [Quench(), Flat(steps=4), Block(4, 2), Slide(3)], ids=lambda s: repr(s)
)
def test_backends_agree_for_every_schedule_and_layout(schedule, layout):
    """The same weights under `sdpa` (dense mask) and `flex` (BlockMask from the same mask_mod)
    give the same logits at every inference step (worthless rows dropped), in both layouts."""
    from diffusionlm.masks import inference_mask, shift_inputs

    d = 11
    torch.manual_seed(0)
    cfg = TransformerConfig.preset("tiny", vocab_size=23, input_vocab_size=24, n_layers=2, hidden=32, n_heads=2)
    sdpa = DiffusionTransformer(cfg).eval()
    flex = DiffusionTransformer(dataclasses.replace(cfg, attention="flex")).eval()
    flex.load_state_dict(sdpa.state_dict())
    x = shift_inputs(torch.randint(0, 22, (2, d), generator=torch.Generator().manual_seed(1)), layout, 23)
    for k in range(1, schedule.num_steps(d) + 1):
        dense = inference_mask(schedule, d, k, "dense")
        block = inference_mask(schedule, d, k, "flex")
        rows = dense.rows
        with torch.no_grad():
            a = sdpa(x[:, rows], position_ids=rows[None], attention_mask=dense.mask).logits
            b = flex(x[:, rows], position_ids=rows[None], attention_mask=block.mask).logits
        assert (a - b).abs().max() < 1e-5, (k, float((a - b).abs().max()))
