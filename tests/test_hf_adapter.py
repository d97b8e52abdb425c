"""HFDenoiser: a Hugging Face causal LM (GPT-2, Llama; tiny configs, CPU) behind the denoiser protocol."""
from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here may touch the network

import pytest
import torch

import transformers  # noqa: E402
from transformers import DynamicCache, GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM  # noqa: E402

from diffusionlm.data.paths import data_dir  # noqa: E402
from diffusionlm.lm import DiffusionLM  # noqa: E402
from diffusionlm.masks import Layout, inference_mask, shift_inputs, step_categories  # noqa: E402
from diffusionlm.models import Denoiser, output_size, plan_cached_step  # noqa: E402
from diffusionlm.models.hf import AttentionAnnealing, HFDenoiser, annealed_mask  # noqa: E402
from diffusionlm.processes import Absorb  # noqa: E402
from diffusionlm.schedules.hyper import SETTLED, WORTHLESS, Block, Quench, Slide  # noqa: E402

V = 96  # vocabulary of the tiny HF models; "add" makes MASK = 96 and the output size 97
MASK = V
BOS = 0  # a real token (GPT-2's <|endoftext|> plays this role)
D = 11
MAX_POS = 32


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a - b).abs().max().item()


def hf_model(kind: str, impl: str = "sdpa", seed: int = 0, vocab: int = V, **kw):
    torch.manual_seed(seed)
    if kind == "gpt2":
        cfg = GPT2Config(
            vocab_size=vocab, n_positions=MAX_POS, n_embd=32, n_layer=2, n_head=4,
            resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, initializer_range=0.1,
            bos_token_id=0, eos_token_id=0, attn_implementation=impl, **kw,
        )
        return GPT2LMHeadModel(cfg).eval()
    cfg = LlamaConfig(
        vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2,  # grouped-query attention
        max_position_embeddings=MAX_POS, initializer_range=0.1,
        bos_token_id=0, eos_token_id=0, pad_token_id=None, attn_implementation=impl, **kw,
    )
    return LlamaForCausalLM(cfg).eval()


def denoiser(kind: str, impl: str = "sdpa", seed: int = 0) -> HFDenoiser:
    return HFDenoiser.from_model(hf_model(kind, impl, seed), mask="add")


KINDS = ["gpt2", "llama"]
IMPLS = ["sdpa", "eager"]


# ---------------------------------------------------------------------------------------------
# the 4-D mask is honoured, under both attention implementations
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("kind", KINDS)
def test_causal_mask_reproduces_hf_causal_forward(kind, impl):
    hf = hf_model(kind, impl)
    assert hf.config._attn_implementation == impl
    model = HFDenoiser(hf)
    assert model.attn_implementation == impl
    ids = torch.randint(0, V, (2, D), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = hf(ids).logits  # HF's own causal forward
        causal_bool = torch.ones(D, D, dtype=torch.bool).tril()[None, None]
        a = model(ids, attention_mask=causal_bool).logits
        b = model(ids, attention_mask="causal", position_ids=torch.arange(D)[None]).logits
        full = model(ids).logits  # attention_mask=None: FULL attention, not HF's causal default
    assert max_diff(a, ref) < 1e-5 and max_diff(b, ref) < 1e-5
    assert max_diff(full, ref) > 1e-3


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("kind", KINDS)
def test_bidirectional_where_the_mask_says_so(kind, impl):
    model = denoiser(kind, impl)
    ids = torch.randint(0, V, (1, D), generator=torch.Generator().manual_seed(2))
    other = ids.clone()
    other[0, -1] = (ids[0, -1] + 1) % V  # change only the last token
    with torch.no_grad():
        full_a, full_b = model(ids).logits, model(other).logits
        causal_a, causal_b = model(ids, attention_mask="causal").logits, model(other, attention_mask="causal").logits
    assert max_diff(full_a[:, 0], full_b[:, 0]) > 1e-4  # full: row 0 sees the last token
    assert max_diff(causal_a[:, :-1], causal_b[:, :-1]) == 0.0  # causal: rows before it do not


def test_sdpa_and_eager_agree_on_a_hyperschedule_mask():
    for kind in KINDS:
        sdpa, eager = denoiser(kind, "sdpa"), denoiser(kind, "eager")
        ids = torch.randint(0, V + 1, (2, D), generator=torch.Generator().manual_seed(3))
        step = inference_mask(Block(4, 2), D, 4, "dense", drop_worthless=False)
        with torch.no_grad():
            a = sdpa(ids, attention_mask=step.mask).logits
            b = eager(ids, attention_mask=step.mask).logits
        assert max_diff(a, b) < 1e-5


def test_block_mask_is_materialized():
    model = denoiser("llama")
    ids = torch.randint(0, V + 1, (2, D), generator=torch.Generator().manual_seed(4))
    dense = inference_mask(Slide(3), D, 5, "dense")
    flex = inference_mask(Slide(3), D, 5, "flex")
    r = dense.rows
    with torch.no_grad():
        a = model(ids[:, r], position_ids=r[None], attention_mask=dense.mask).logits
        b = model(ids[:, r], position_ids=r[None], attention_mask=flex.mask).logits
    assert max_diff(a, b) < 1e-6


# ---------------------------------------------------------------------------------------------
# KV cache: cached logits == uncached logits at every step
# ---------------------------------------------------------------------------------------------
def step_tokens(schedule, d: int, k: int, y: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """x at the start of step k: settled positions hold y, active ones fresh random tokens or MASK
    (redrawn every step), worthless ones MASK."""
    cats = step_categories(schedule, d, k).long()
    noise = torch.randint(0, V + 1, y.shape, generator=gen)  # V == MASK
    x = torch.where(cats == SETTLED, y, noise)
    return torch.where(cats == WORTHLESS, torch.full_like(y, MASK), x)


def run_cached_vs_full(model: HFDenoiser, schedule, layout, seed: int = 0) -> float:
    gen = torch.Generator().manual_seed(seed)
    B = 2
    y = torch.randint(0, V, (B, D), generator=gen)
    T = schedule.num_steps(D)
    cache = model.empty_cache()
    worst = 0.0
    for k in range(1, T + 1):
        x = step_tokens(schedule, D, k, y, gen)
        inputs = shift_inputs(x, layout, BOS)
        step = inference_mask(schedule, D, k, "dense")
        rows = step.rows
        with torch.no_grad():
            full = model(inputs[:, rows], position_ids=rows[None], attention_mask=step.mask).logits
            plan = plan_cached_step(rows, step_categories(schedule, D, k)[rows], step.mask, cache.get_seq_length())
            fed = slice(cache.get_seq_length(), None)
            before = cache.get_seq_length()
            out = model(
                inputs[:, plan.rows],
                position_ids=plan.rows[None],
                attention_mask=plan.mask,
                cache=cache,
                cache_commit=plan.commit,
            )
        assert cache.get_seq_length() == before  # the cache passed in is not modified
        assert isinstance(out.cache, DynamicCache) and out.cache is not cache
        assert out.cache.get_seq_length() == plan.cached
        assert out.logits.shape == (B, len(plan.rows), V + 1)
        worst = max(worst, max_diff(out.logits, full[:, fed]))
        cache = out.cache
    assert cache.get_seq_length() == int((step_categories(schedule, D, T) == SETTLED).sum())
    return worst


SCHEDULES = [Quench(), Block(4, 2), Slide(3)]


@pytest.mark.parametrize("layout", [Layout.ALIGNED, Layout.SHIFTED], ids=["aligned", "shifted"])
@pytest.mark.parametrize("schedule", SCHEDULES, ids=repr)
@pytest.mark.parametrize("kind", KINDS)
def test_cached_logits_equal_uncached(kind, schedule, layout):
    assert run_cached_vs_full(denoiser(kind, "sdpa"), schedule, layout) < 1e-5


@pytest.mark.parametrize("kind", KINDS)
def test_cached_logits_equal_uncached_eager(kind):
    assert run_cached_vs_full(denoiser(kind, "eager"), Block(4, 2), Layout.SHIFTED) < 1e-5


def test_cache_commit_and_crop():
    model = denoiser("gpt2")
    ids = torch.randint(0, V, (2, 7), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        c3 = model(ids[:, :5], attention_mask="causal", cache_commit=3).cache  # no cache in: a new one
        assert c3.get_seq_length() == 3
        c5 = model(ids[:, 3:5], attention_mask="causal", cache=c3, cache_commit=2).cache
        assert c3.get_seq_length() == 3 and c5.get_seq_length() == 5
        full = model(ids[:, :5], attention_mask="causal", cache_commit=5).cache
        for la, lb in zip(c5.layers, full.layers):
            assert max_diff(la.keys, lb.keys) < 1e-6 and max_diff(la.values, lb.values) < 1e-6
        # default positions continue after the cache
        a = model(ids[:, 5:], cache=c5, attention_mask="causal").logits
        b = model(ids[:, 5:], cache=c5, position_ids=torch.tensor([[5, 6]]), attention_mask="causal").logits
        assert max_diff(a, b) == 0.0
        assert model(ids, attention_mask="causal").cache is None  # no cache wanted, none returned
        assert model(ids[:, 5:], cache=c5, attention_mask="causal").cache.get_seq_length() == 5  # commit 0


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_stored_cache_writes_in_place_and_never_changes_a_cache_handed_out(kind):
    """empty_cache()'s layers keep their rows in one preallocated buffer: extending the newest
    cache writes after its rows (no copy of the prefix), while extending an older cache, or one
    cropped from outside, copies first; every cache keeps its values and gives the logits of a
    plain transformers DynamicCache."""
    model = denoiser(kind)
    ids = torch.randint(0, V, (2, 9), generator=torch.Generator().manual_seed(7))
    other = torch.randint(0, V, (2, 9), generator=torch.Generator().manual_seed(8))
    snap = lambda c: [(la.keys.clone(), la.values.clone()) for la in c.layers]  # noqa: E731
    with torch.no_grad():
        c4 = model(ids[:, :4], attention_mask="causal", cache=model.empty_cache(), cache_commit=4).cache
        s4 = snap(c4)
        # the newest cache: rows 4, 5 written in place, row 5 cropped again (scratch)
        c5 = model(ids[:, 4:6], attention_mask="causal", cache=c4, cache_commit=1).cache
        assert c5.layers[0].keys.data_ptr() == c4.layers[0].keys.data_ptr()
        s5 = snap(c5)
        # c4 is older than c5 now: a branch from it copies instead of overwriting c5's row 4
        b6 = model(other[:, 4:6], attention_mask="causal", cache=c4, cache_commit=2).cache
        assert b6.layers[0].keys.data_ptr() != c4.layers[0].keys.data_ptr()
        # c5 is still the newest on its buffer (its scratch row 5 was released): in place again
        c7 = model(ids[:, 5:7], attention_mask="causal", cache=c5, cache_commit=2).cache
        assert c7.layers[0].keys.data_ptr() == c5.layers[0].keys.data_ptr()
        # a crop from outside makes a cache older than its buffer: the next call copies
        c7.crop(-1)
        c8 = model(other[:, 6:8], attention_mask="causal", cache=c7, cache_commit=2).cache
        assert c8.layers[0].keys.data_ptr() != c7.layers[0].keys.data_ptr()
        for c, s in ((c4, s4), (c5, s5)):
            for la, (k, v) in zip(c.layers, s):
                assert torch.equal(la.keys, k) and torch.equal(la.values, v)
        # the same calls on plain transformers caches give the same logits and rows
        plain = DynamicCache(config=model.model.config)
        p4 = model(ids[:, :4], attention_mask="causal", cache=plain, cache_commit=4).cache
        assert type(p4.layers[0]).__name__ == "DynamicLayer"
        a = model(other[:, 4:6], attention_mask="causal", cache=c4, cache_commit=0).logits
        b = model(other[:, 4:6], attention_mask="causal", cache=p4, cache_commit=0).logits
        assert max_diff(a, b) == 0.0
        p8 = model(torch.cat([ids[:, 4:6], other[:, 6:8]], 1), attention_mask="causal", cache=p4, cache_commit=4).cache
        p8.crop(-2)
        p8 = model(other[:, 6:8], attention_mask="causal", cache=p8, cache_commit=2).cache
        for la, lb in zip(c8.layers, p8.layers):
            assert max_diff(la.keys, lb.keys) < 1e-6 and max_diff(la.values, lb.values) < 1e-6


def test_caching_an_active_row_is_detected():
    """Negative control: caching an active row (its token changes later) is not exact."""
    model = denoiser("llama")
    step = inference_mask(Block(4, 2), D, 2, "dense")
    assert step.rows.tolist() == [0, 1, 2, 3]
    x1 = torch.tensor([[MASK, 3, MASK, 5]])
    x2 = torch.tensor([[7, 3, MASK, 5]])
    pos = step.rows[None]
    with torch.no_grad():
        wrong = model(x1, position_ids=pos, attention_mask=step.mask, cache_commit=1).cache
        full = model(x2, position_ids=pos, attention_mask=step.mask).logits
        cached = model(x2[:, 1:], position_ids=pos[:, 1:], attention_mask=step.mask[..., 1:, :], cache=wrong).logits
    assert max_diff(cached, full[:, 1:]) > 1e-3


# ---------------------------------------------------------------------------------------------
# MASK token
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
def test_mask_add_resizes_by_one_mean_row(kind):
    hf = hf_model(kind)
    emb0 = hf.get_input_embeddings().weight.detach().clone()
    head0 = hf.get_output_embeddings().weight.detach().clone()
    model = HFDenoiser.from_model(hf, mask="add")
    assert model.mask_id == V and model.vocab_size == V + 1 and output_size(model) == V + 1
    assert isinstance(model, Denoiser)
    emb = model.model.get_input_embeddings().weight
    head = model.model.get_output_embeddings().weight
    assert emb.shape == (V + 1, emb0.shape[1]) and head.shape[0] == V + 1
    assert torch.equal(emb[:V], emb0) and torch.allclose(emb[V], emb0.mean(0), atol=1e-7)
    assert torch.equal(head[:V], head0) and torch.allclose(head[V], head0.mean(0), atol=1e-7)
    ids = torch.full((1, 3), MASK)
    assert model(ids).logits.shape == (1, 3, V + 1)


@pytest.fixture(scope="module")
def gpt2_tokenizer():
    path = data_dir() / "tokenizers" / "gpt2"
    from transformers import GPT2TokenizerFast

    # NB: in transformers 5.x, GPT2TokenizerFast(vocab_file=..., merges_file=...) silently builds an
    # EMPTY tokenizer (the constructor takes vocab= / merges=); from_pretrained on the folder works.
    tok = GPT2TokenizerFast.from_pretrained(str(path))
    assert len(tok) == 50257
    tok.add_special_tokens({"additional_special_tokens": ["<|reserved_special_token_0|>"]})
    return tok


def test_mask_from_a_reserved_token(gpt2_tokenizer):
    tok = gpt2_tokenizer
    (rid,) = tok.encode("<|reserved_special_token_0|>", add_special_tokens=False)
    torch.manual_seed(0)
    hf = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_positions=16, n_embd=8, n_layer=1, n_head=2))
    model = HFDenoiser.from_model(hf, mask="<|reserved_special_token_0|>", tokenizer=tok)
    assert model.mask_id == rid == 50257 and model.vocab_size == len(tok)  # no resize
    with pytest.raises(ValueError, match="exactly one id"):
        HFDenoiser.from_model(hf, mask="<|reserved_special_token_1|>", tokenizer=tok)  # not a token: many ids
    with pytest.raises(ValueError, match="exactly one id"):
        HFDenoiser.from_model(hf, mask=" hello world", tokenizer=tok)
    with pytest.raises(ValueError, match="tokenizer"):
        HFDenoiser.from_model(hf, mask="<|reserved_special_token_0|>")
    # a single-id token that does not fit a small model's vocabulary
    with pytest.raises(ValueError, match=r"allowed \[0, 95\]"):
        HFDenoiser.from_model(hf_model("gpt2"), mask="<|endoftext|>", tokenizer=tok)


def test_mask_id_argument():
    model = HFDenoiser.from_model(hf_model("llama"), mask_id=V - 1)
    assert model.mask_id == V - 1 and model.vocab_size == V
    with pytest.raises(ValueError, match=r"allowed \[0, 95\]"):
        HFDenoiser.from_model(hf_model("llama"), mask_id=V)
    with pytest.raises(ValueError, match="not both"):
        HFDenoiser.from_model(hf_model("llama"), mask="add", mask_id=3)
    assert HFDenoiser.from_model(hf_model("llama")).mask_id is None


# ---------------------------------------------------------------------------------------------
# composition with the toolkit
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", KINDS)
def test_diffusion_lm_composition_trains(kind):
    model = denoiser(kind)
    model.train()
    lm = DiffusionLM(model, Absorb(V), Block(4), layout="shifted", bos_id=BOS)
    x0 = torch.randint(0, V, (3, D), generator=torch.Generator().manual_seed(6))
    out = lm.loss(x0, generator=torch.Generator().manual_seed(7))
    assert torch.isfinite(out.loss) and out.loss.item() > 0
    out.loss.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads) and any(g.abs().sum() > 0 for g in grads)
    # the two-halves layout feeds 2d rows with repeated positions
    model.zero_grad()
    out2 = lm.loss(x0, generator=torch.Generator().manual_seed(8), two_halves=True)
    assert torch.isfinite(out2.loss)
    out2.loss.backward()
    with torch.no_grad():
        assert torch.isfinite(lm.nll_bound(x0, num_samples=2, generator=torch.Generator().manual_seed(9)).nll).all()


@pytest.mark.parametrize("kind", KINDS)
def test_shifted_last_on_hf_two_halves_equal_each_step_and_sampling_caches_exactly(kind):
    """The SHIFTED_LAST layout on a real HF backbone (learned GPT-2 positions, Llama's rotary
    ones): the two-halves forward's noisy rows of block b equal the composition's own forward of
    block b's step (clean blocks before, MASK after, the reader of b's last token); it trains
    (finite gradients); MDLM gives the same tokens with and without the KV cache."""
    from diffusionlm.lm import two_halves_logits
    from diffusionlm.samplers import MDLM
    from diffusionlm.schedules.hyper import ACTIVE

    w, d = 4, 12
    lm = DiffusionLM(denoiser(kind), Absorb(V), Block(w, w), layout="shifted_last", bos_id=BOS)
    g = torch.Generator().manual_seed(3)
    x0 = torch.randint(0, V, (2, d), generator=g)
    masked = torch.rand(2, d, generator=g) < 0.5
    x_t = torch.where(masked, torch.full_like(x0, lm.process.mask_id), x0)
    segment = (torch.arange(d) // w)[None].expand(2, d)
    with torch.no_grad():
        both = two_halves_logits(lm, x_t, x0, segment, torch.full((2, d), ACTIVE), masked.float())
        for b in range(d // w):
            block = (torch.arange(d) // w) == b
            before, after = torch.arange(d) < b * w, torch.arange(d) >= (b + 1) * w
            x_step = torch.where(before, x0, torch.where(after, torch.full_like(x0, lm.process.mask_id), x_t))
            cats = torch.where(before, SETTLED, torch.where(after, WORTHLESS, ACTIVE)).expand(2, d)
            levels = torch.where(before, 0.0, torch.where(after, 1.0, masked.float()))
            step = lm.step_forward(x_step, levels, cats)
            assert max_diff(both[:, block], step[:, block]) < 1e-5, b
    lm.model.train()
    out = lm.loss(x0, generator=torch.Generator().manual_seed(8), two_halves=True)
    out.loss.backward()
    grads = [p.grad for p in lm.model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(gr).all() for gr in grads)
    lm.model.eval()
    runs = [MDLM(cache=c).sample(lm, 2, d, generator=torch.Generator().manual_seed(5)).tokens for c in (True, False)]
    assert torch.equal(runs[0], runs[1])
    with pytest.raises(ValueError, match="reader of the last position sits at position"):
        MDLM().sample(lm, 1, MAX_POS, generator=torch.Generator().manual_seed(5))


def test_composition_checks_the_vocabulary():
    no_mask = HFDenoiser(hf_model("llama"))  # 96 outputs: no room for MASK
    with pytest.raises(ValueError, match="does not fit"):
        DiffusionLM(no_mask, Absorb(V), Block(4), layout="shifted", bos_id=BOS)
    with pytest.raises(ValueError, match="does not fit"):
        DiffusionLM(denoiser("llama"), Absorb(V + 3), Block(4), layout="shifted", bos_id=BOS)


# ---------------------------------------------------------------------------------------------
# attention-mask annealing
# ---------------------------------------------------------------------------------------------
def test_annealing_goes_from_causal_to_full():
    ann = AttentionAnnealing(warmup_steps=100)
    B, L = 8, 48
    causal = torch.ones(L, L, dtype=torch.bool).tril()
    assert ann.ratio(0) == 0.0 and ann.ratio(50) == 0.5 and ann.ratio(100) == 1.0 and ann.ratio(1000) == 1.0
    m0 = ann.mask(B, L, 0, torch.Generator().manual_seed(0))
    assert m0.shape == (B, 1, L, L) and m0.dtype == torch.bool and torch.equal(m0, causal.expand(B, 1, L, L))
    assert bool(ann.mask(B, L, 100).all())
    upper = ~causal
    for step in (25, 50, 75):
        m = ann.mask(B, L, step, torch.Generator().manual_seed(step))
        assert bool(m[..., causal].all())  # always at least causal
        frac = m[..., upper].float().mean().item()
        assert abs(frac - ann.ratio(step)) < 0.03, (step, frac)
        assert not torch.equal(m[0], m[1])  # independent per sequence by default
    # reproducible with a generator; shared draws one pattern for the batch
    a = annealed_mask(2, L, 0.3, torch.Generator().manual_seed(1))
    b = annealed_mask(2, L, 0.3, torch.Generator().manual_seed(1))
    assert torch.equal(a, b)
    s = annealed_mask(3, L, 0.3, torch.Generator().manual_seed(1), shared=True)
    assert torch.equal(s[0], s[2])
    assert AttentionAnnealing(0).ratio(0) == 1.0
    with pytest.raises(ValueError, match="ratio"):
        annealed_mask(1, 4, 1.5)
    with pytest.raises(ValueError, match="warmup_steps"):
        AttentionAnnealing(-1)


def test_annealed_mask_drives_the_adapter():
    model = denoiser("gpt2")
    ids = torch.randint(0, V, (2, D), generator=torch.Generator().manual_seed(10))
    with torch.no_grad():
        causal = model(ids, attention_mask="causal").logits
        full = model(ids).logits
        assert max_diff(model(ids, attention_mask=annealed_mask(2, D, 0.0)).logits, causal) == 0.0
        assert max_diff(model(ids, attention_mask=annealed_mask(2, D, 1.0)).logits, full) == 0.0


# ---------------------------------------------------------------------------------------------
# clear errors
# ---------------------------------------------------------------------------------------------
def test_clear_errors():
    model = denoiser("gpt2")
    ids = torch.randint(0, V, (2, 5))
    with pytest.raises(ValueError, match=r"out of range.*allowed \[0, 96\]"):
        model(torch.tensor([[1, 97]]))
    with pytest.raises(ValueError, match=r"out of range.*allowed \[0, 96\]"):
        model(torch.tensor([[-1, 2]]))
    with pytest.raises(TypeError, match="integer"):
        model(ids.float())
    with pytest.raises(ValueError, match="32 positions"):
        model(torch.zeros(1, MAX_POS + 1, dtype=torch.long))
    with pytest.raises(ValueError, match=r"position id 32 .*allowed \[0, 31\]"):
        model(ids[:, :2], position_ids=torch.tensor([[0, 32]]))
    with pytest.raises(ValueError, match="32 positions"):  # cached rows count too
        c = model(torch.zeros(1, 30, dtype=torch.long), attention_mask="causal", cache_commit=30).cache
        model(torch.zeros(1, 3, dtype=torch.long), cache=c, position_ids=torch.tensor([[29, 30, 31]]))
    with pytest.raises(ValueError, match=r"shape \[1, 1, 5, 4\]; expected \[2 or 1, 1, 5, 5\]"):
        model(ids, attention_mask=torch.ones(1, 1, 5, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="expected"):
        model(ids, attention_mask=torch.ones(5, 5, dtype=torch.bool))
    with pytest.raises(TypeError, match="boolean"):
        model(ids, attention_mask=torch.ones(1, 1, 5, 5))
    with pytest.raises(ValueError, match="'causal'"):
        model(ids, attention_mask="bidirectional")
    empty_row = torch.ones(1, 1, 5, 5, dtype=torch.bool)
    empty_row[..., 2, :] = False
    with pytest.raises(ValueError, match="attend to nothing"):
        model(ids, attention_mask=empty_row)
    with pytest.raises(ValueError, match="position_ids must be"):
        model(ids, position_ids=torch.arange(4)[None])
    with pytest.raises(ValueError, match="cache_commit"):
        model(ids, cache_commit=6)
    cache = model(ids, attention_mask="causal", cache_commit=2).cache
    with pytest.raises(ValueError, match="batch size"):
        model(ids[:1, 2:], cache=cache)
    with pytest.raises(ValueError, match=r"expected \[2 or 1, 1, 3, 5\]"):  # keys = cached + new rows
        model(ids[:, 2:], cache=cache, attention_mask=torch.ones(1, 1, 3, 3, dtype=torch.bool))
    with pytest.raises(TypeError, match="DynamicCache"):
        model(ids, cache=object())
    with pytest.raises(TypeError, match="Hugging Face"):
        HFDenoiser(torch.nn.Linear(2, 2))
    model.model.config._attn_implementation = "flex_attention"
    with pytest.raises(ValueError, match="sdpa"):
        model(ids)


def test_reserved_mask_token_in_the_middle_is_exposed_after_the_real_ids():
    """Llama 3 style: MASK is a reserved id inside the vocabulary. The adapter exposes it as the
    virtual id V so that Absorb(N = V) composes; the model itself is fed the reserved id."""
    from diffusionlm.lm import DiffusionLM
    from diffusionlm.processes import Absorb
    from diffusionlm.schedules import Block

    hf = hf_model("llama")
    reserved = 7
    model = HFDenoiser.from_model(hf, mask_id=reserved)
    assert model.reserved_id == reserved and model.mask_id == V and model.vocab_size == V + 1
    ids = torch.tensor([[3, V, 5, V]])
    with torch.no_grad():
        ours = model(ids, attention_mask=None).logits
        raw = model.model(input_ids=torch.tensor([[3, reserved, 5, reserved]]),
                          attention_mask=torch.ones(1, 1, 4, 4, dtype=torch.bool)).logits
    keep = [i for i in range(V) if i != reserved]
    assert torch.allclose(ours[..., keep], raw[..., keep], atol=1e-6)
    assert torch.allclose(ours[..., V], raw[..., reserved], atol=1e-6)
    assert (torch.softmax(ours, -1)[..., reserved] == 0).all()
    lm = DiffusionLM(model, Absorb(V), Block(2))
    x0 = torch.randint(0, V, (2, 6), generator=torch.Generator().manual_seed(0))
    x0[x0 == reserved] = 0
    out = lm.loss(x0, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(out.loss)
    out.loss.backward()


@pytest.mark.parametrize("kind", KINDS)
def test_logits_to_keep_and_the_unmasked_decoding_row(kind):
    """logits_to_keep=n gives the last n rows of the full logits; one decoding row whose mask
    allows every key (handed to HF with no mask) equals the same row under the explicit mask."""
    model = denoiser(kind)
    ids = torch.randint(0, V, (2, 7), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        full = model(ids, attention_mask="causal", cache_commit=6)
        last = model(ids, attention_mask="causal", logits_to_keep=2)
        assert last.logits.shape[1] == 2 and max_diff(last.logits, full.logits[:, -2:]) < 1e-5
        row = ids[:, 6:]
        free = model(row, position_ids=torch.tensor([[6]]), attention_mask=None, cache=full.cache).logits
        masked = model(row, position_ids=torch.tensor([[6]]), attention_mask=torch.ones(1, 1, 1, 7, dtype=torch.bool),
                       cache=full.cache, logits_to_keep=1).logits
        assert max_diff(free, full.logits[:, 6:]) < 1e-5 and max_diff(masked, free) < 1e-5
        with pytest.raises(ValueError, match="logits_to_keep"):
            model(ids, logits_to_keep=8)
