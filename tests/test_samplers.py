"""Samplers: MDLM, ACS, SEDD (analytic, Euler) and AR over the shared step driver.

Correct by definition: with an oracle denoiser (exact clean-token conditionals of a toy
distribution) the samples of the exact samplers follow that distribution (chi-square over all
sequences). Then the contracts: ACS(eta=0) == MDLM, no MASK ever, fixed positions never change,
cached == uncached, AR greedy == Hugging Face generate() greedy, clear errors.
"""
from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here may touch the network

import pytest
import torch
from scipy import stats

from diffusionlm.lm import DiffusionLM
from diffusionlm.masks import causal_mask_mod, dense_mask
from diffusionlm.models import DiffusionTransformer, TransformerConfig
from diffusionlm.models.base import DenoiserOutput
from diffusionlm.processes import Absorb, EpsilonHybrid, GammaHybrid, Uniform
from diffusionlm.processes.structural import Structural
from diffusionlm.samplers import (
    ACS, AR, MDLM, SAMPLERS, SEDDAnalytic, SEDDEuler, StepRecord, get_sampler,
)
from diffusionlm.samplers.sedd import euler_probs
from diffusionlm.schedules import Block, Custom, Flat, Quench, Slide
from oracle import Oracle, all_sequences, toy_distribution

N = 11  # real tokens of the tiny transformer tests; MASK = N, BOS = N + 1


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def tiny(vocab_out: int, time_conditioning: bool = False, seed: int = 0) -> DiffusionTransformer:
    """A tiny random transformer; time-conditioned ones get random (not zero) adaLN weights, so
    that the levels really change the output."""
    torch.manual_seed(seed)
    cfg = TransformerConfig.preset(
        "tiny", vocab_size=vocab_out, input_vocab_size=N + 2, n_layers=2, hidden=32, n_heads=2,
        max_positions=64, time_conditioning=time_conditioning, init_std=0.2,
    )
    model = DiffusionTransformer(cfg).eval()
    if time_conditioning:
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "ada" in name:
                    p.normal_(0.0, 0.1)
    return model


def process(kind: str):
    return {
        "absorb": lambda: Absorb(N),
        "epsilon": lambda: EpsilonHybrid(N, epsilon=0.2),
        "gamma": lambda: GammaHybrid(N, gamma=0.3),
        "uniform": lambda: Uniform(N),
    }[kind]()


def make_lm(proc, schedule, layout="aligned", time_conditioning=False, seed=0) -> DiffusionLM:
    return DiffusionLM(tiny(proc.model_vocab_size, time_conditioning, seed), proc, schedule, layout=layout, bos_id=N + 1)


# ---------------------------------------------------------------------------------------------
# correct by definition: the oracle on a toy distribution
# ---------------------------------------------------------------------------------------------
class FullRows:
    """The oracle reads every position: scatter the fed rows back into a full-length sequence
    (dropped worthless rows: the level-1 prior value, MASK or token 0, at level 1). Evaluates
    the oracle once per distinct (ids, levels) row: a toy batch holds few distinct states."""

    def __init__(self, oracle: Oracle, d: int):
        self.oracle, self.d, self.vocab_size = oracle, d, oracle.vocab_size
        mask_id = oracle.process.mask_id
        self.fill = 0 if mask_id is None else mask_id

    def __call__(self, input_ids, *, position_ids=None, attention_mask=None, levels=None, cache=None):
        B, L = input_ids.shape
        pos = position_ids.expand(B, L)
        full = torch.full((B, self.d), self.fill, dtype=torch.long).scatter(1, pos, input_ids)
        lv = torch.ones(B, self.d, dtype=torch.float64).scatter(1, pos, levels.double())
        keys, inverse = torch.unique(torch.cat([full.double(), lv], 1), dim=0, return_inverse=True)
        logits = self.oracle(keys[:, : self.d].long(), levels=keys[:, self.d :]).logits[inverse]
        return DenoiserOutput(logits.gather(1, pos[..., None].expand(B, L, logits.shape[-1])))


def seq_index(tokens: torch.Tensor, n: int) -> torch.Tensor:
    """Index of each sequence [S, d] in the itertools.product order of all n^d sequences."""
    d = tokens.shape[-1]
    return (tokens * (n ** torch.arange(d - 1, -1, -1))).sum(-1)


def chi_square_p(tokens: torch.Tensor, p: torch.Tensor, n: int) -> float:
    """p-value of the samples [S, d] against probabilities p of all n^d sequences; cells
    expected below 5 are pooled."""
    counts = torch.bincount(seq_index(tokens, n), minlength=n ** tokens.shape[1]).double()
    expected = tokens.shape[0] * p / p.sum()
    small = expected < 5
    obs = torch.cat([counts[~small], counts[small].sum()[None]])
    exp = torch.cat([expected[~small], expected[small].sum()[None]])
    if exp[-1] == 0:
        obs, exp = obs[:-1], exp[:-1]
    return float(stats.chisquare(obs.numpy(), exp.numpy() * obs.sum().item() / exp.sum().item()).pvalue)


D_TOY = 3
YS, P_TOY = toy_distribution(3, D_TOY)
S_TOY = 20_000


def toy_process(kind: str):
    return {"absorb": Absorb(3), "epsilon": EpsilonHybrid(3, epsilon=0.3), "gamma": GammaHybrid(3, gamma=0.3),
            "uniform": Uniform(3)}[kind]


def toy_lm(kind: str, schedule) -> DiffusionLM:
    proc = toy_process(kind)
    return DiffusionLM(FullRows(Oracle(proc, YS, P_TOY), D_TOY), proc, schedule)


def posterior_kernel(proc, x, lt, ls, clean):
    return proc.posterior_probs(x, lt, ls, clean)


def exact_law(proc, schedule, kernel=posterior_kernel, d: int = D_TOY) -> torch.Tensor:
    """The exact law of a factorised sampler's output under `schedule`, with the oracle: push the
    distribution over all V^d states through every step's kernel (the product over positions
    of kernel(...) at the active positions, the identity elsewhere)."""
    V, n = proc.model_vocab_size, proc.vocab_size
    states = all_sequences(V, d)
    oracle = Oracle(proc, YS, P_TOY)
    m = float(proc.marginal(torch.ones((), dtype=torch.float64))[0])
    prior = torch.full((V,), (1 - m) / n, dtype=torch.float64)
    if proc.mask_id is not None:
        prior[proc.mask_id] = m
    dist = prior[states].prod(1)
    table = schedule.table(d)
    eye = torch.nn.functional.one_hot(states, V).double()
    for k in range(1, table.shape[0]):
        lt, ls = table[k - 1].expand(len(states), d), table[k].expand(len(states), d)
        active = (lt > 0) & ~((lt == 1) & (ls == 1))
        probs = torch.where(active[..., None], kernel(proc, states, lt, ls, oracle.clean_probs(states, lt)), eye)
        K = torch.ones(len(states), len(states), dtype=torch.float64)
        for i in range(d):
            K = K * probs[:, i, states[:, i]]
        dist = torch.nan_to_num(K).T @ dist  # impossible states (MASK at level 0) have no mass
    real = (states < n).all(1)
    law = torch.zeros(n**d, dtype=torch.float64)
    law[seq_index(states[real], n)] = dist[real]
    return law


def tv(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().sum() / 2)


EXACT_CASES = [
    # one position moves at a time: the factorised sampler is exact (up to the prior's residual
    # information at level 1 for GammaHybrid / Uniform)
    ("absorb", MDLM(), Quench()),
    ("absorb", MDLM(), Block(1, 3)),
    ("absorb", ACS(0.0), Slide(1)),
    ("epsilon", MDLM(), Block(1, 3)),
    ("gamma", SEDDAnalytic(), Quench()),
    ("gamma", MDLM(), Block(1, 2)),
    ("uniform", SEDDAnalytic(), Block(1, 2)),
]


@pytest.mark.parametrize("kind,sampler,schedule", EXACT_CASES, ids=repr)
def test_oracle_samples_follow_the_true_distribution(kind, sampler, schedule):
    assert tv(exact_law(toy_process(kind), schedule), P_TOY) < 2e-4
    out = sampler.sample(toy_lm(kind, schedule), batch_size=S_TOY, length=D_TOY, generator=gen(1))
    assert out.tokens.shape == (S_TOY, D_TOY) and bool((out.tokens < 3).all())
    assert chi_square_p(out.tokens, P_TOY, 3) > 1e-3


@pytest.mark.parametrize(
    "kind,kernel", [("absorb", posterior_kernel), ("gamma", posterior_kernel), ("uniform", posterior_kernel),
                    ("gamma", euler_probs), ("uniform", euler_probs)], ids=lambda v: getattr(v, "__name__", v),
)
def test_flat_law_converges_to_the_true_distribution(kind, kernel):
    """Flat moves every position at once from factorised marginals: not exact in few steps, but
    simultaneous moves vanish with many steps; the exact law of the analytic (posterior) and the
    Euler sampler approaches the truth at first order in 1/T."""
    proc = toy_process(kind)
    tv50, tv200 = (tv(exact_law(proc, Flat(T), kernel), P_TOY) for T in (50, 200))
    assert tv200 < 5e-3 and tv200 < tv50 / 3


FLAT_CASES = [
    ("absorb", MDLM(), posterior_kernel),
    ("epsilon", MDLM(), posterior_kernel),
    ("gamma", SEDDAnalytic(), posterior_kernel),
    ("uniform", SEDDEuler(), euler_probs),
]


@pytest.mark.parametrize("kind,sampler,kernel", FLAT_CASES, ids=repr)
def test_oracle_flat_samples_follow_the_samplers_exact_law(kind, sampler, kernel):
    """Under Flat(T) the samples follow the factorised chain's exact law (computed above)."""
    schedule = Flat(12)
    law = exact_law(toy_process(kind), schedule, kernel)
    out = sampler.sample(toy_lm(kind, schedule), batch_size=S_TOY, length=D_TOY, generator=gen(2))
    assert chi_square_p(out.tokens, law, 3) > 1e-3
    assert chi_square_p(out.tokens, P_TOY, 3) < 1e-3  # and Flat(12) is visibly not exact


def test_chi_square_detects_a_wrong_sampler():
    """Power check: Flat in 2 steps unmasks positions together from factorised marginals."""
    out = MDLM().sample(toy_lm("absorb", Flat(2)), batch_size=S_TOY, length=D_TOY, generator=gen(1))
    assert chi_square_p(out.tokens, P_TOY, 3) < 1e-6


def test_oracle_conditional_generation_follows_the_conditional():
    """A fixed first token: the samples follow p(y_1, y_2 | y_0)."""
    lm = toy_lm("absorb", Block(1, 2))
    out = MDLM().sample(lm, batch_size=S_TOY, length=D_TOY, prompt=torch.tensor([[2]]), generator=gen(3))
    assert bool((out.tokens[:, 0] == 2).all())
    cond = torch.where(YS[:, 0] == 2, P_TOY, torch.zeros_like(P_TOY))
    assert chi_square_p(out.tokens, cond / cond.sum(), 3) > 1e-3


# ---------------------------------------------------------------------------------------------
# ACS
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("layout", ["aligned", "shifted", "shifted_last"])
@pytest.mark.parametrize("schedule", [Flat(6), Block(4, 3), Slide(3), Quench()], ids=repr)
def test_acs_eta0_is_mdlm(layout, schedule):
    lm = make_lm(Absorb(N), schedule, layout)
    a = MDLM().sample(lm, batch_size=4, length=10, generator=gen(5)).tokens
    b = ACS(0.0).sample(lm, batch_size=4, length=10, generator=gen(5)).tokens
    assert torch.equal(a, b)
    for proc in (EpsilonHybrid(N, 0.2), GammaHybrid(N, 0.3)):
        lm = make_lm(proc, schedule, layout, time_conditioning=True)
        a = MDLM().sample(lm, batch_size=4, length=10, generator=gen(6)).tokens
        b = ACS(0.0).sample(lm, batch_size=4, length=10, generator=gen(6)).tokens
        assert torch.equal(a, b)


@pytest.mark.parametrize("layout", ["aligned", "shifted", "shifted_last"])
@pytest.mark.parametrize("schedule", [Flat(8), Block(4, 4), Slide(4)], ids=repr)
def test_acs_corrects_decoded_tokens(layout, schedule):
    """With Absorb, MDLM never changes a decoded token; ACS (eta > 0) does, in both layouts."""
    lm = make_lm(Absorb(N), schedule, layout)

    def rewrites(sampler) -> int:
        out = sampler.sample(lm, batch_size=8, length=12, generator=gen(2), keep_history=True)
        prev, n = torch.full((8, 12), N), 0
        for rec in out.history:
            n += int((rec.changed & (prev != N)).sum())
            prev = rec.tokens
        return n

    assert rewrites(MDLM()) == 0
    assert rewrites(ACS(1.0)) > 0


# ---------------------------------------------------------------------------------------------
# no MASK, fixed positions
# ---------------------------------------------------------------------------------------------
SCHEDULES = [Quench(), Flat(4), Block(4, 2), Slide(3), Quench().with_steps(5),
             Custom([[1, 1, 1, 1, 1, 1, 1, 1, 1], [1, .5, 1, 1, 0, 1, 1, 1, .3], [.5, 0, 1, .7, 0, 1, .2, 1, 0],
                     [0, 0, 0, 0, 0, 0, 0, 0, 0]])]


def samplers_for(kind: str):
    out = [MDLM(dtype=torch.float32 if kind == "epsilon" else torch.float64)]
    if kind != "uniform":
        out += [ACS(1.0)]
    if kind in ("gamma", "uniform"):
        out += [SEDDAnalytic(), SEDDEuler()]
    if kind == "absorb":
        out += [SEDDAnalytic(), AR(temperature=2.0)]
    return out


@pytest.mark.parametrize("layout", ["aligned", "shifted", "shifted_last"])
@pytest.mark.parametrize("kind", ["absorb", "epsilon", "gamma", "uniform"])
def test_no_sampler_emits_mask(kind, layout):
    proc = process(kind)
    for si, schedule in enumerate(SCHEDULES):
        lm = make_lm(proc, schedule, layout, time_conditioning=kind in ("gamma", "uniform"))
        for j, sampler in enumerate(samplers_for(kind)):
            out = sampler.sample(lm, batch_size=16, length=9, generator=gen(100 * si + j))  # a seed per run
            assert out.tokens.shape == (16, 9)
            assert bool((out.tokens >= 0).all() and (out.tokens < N).all()), (sampler, schedule)


@pytest.mark.parametrize("layout", ["aligned", "shifted", "shifted_last"])
def test_fixed_positions_never_change(layout):
    d, B = 12, 5
    prompt = torch.randint(0, N, (1, 4), generator=gen(9))
    scattered = torch.zeros(B, d, dtype=torch.bool)
    scattered[:, [1, 5, 6, 11]] = True
    scattered[2, 8] = True  # one batch row fixes one more position
    values = torch.randint(0, N, (B, d), generator=gen(10))
    cases = [(prompt, None), (values, scattered)]
    for kind in ("absorb", "gamma"):
        proc = process(kind)
        for schedule in (Quench(), Flat(5), Block(4, 2), Slide(3)) if kind == "absorb" else (Flat(5), Slide(3)):
            lm = make_lm(proc, schedule, layout, time_conditioning=kind == "gamma")
            samplers = [MDLM(), ACS(1.0), AR()] + ([SEDDEuler()] if kind == "gamma" else [])
            for sampler in samplers:
                for pr, fx in cases:
                    fixed = fx if fx is not None else torch.zeros(B, d, dtype=torch.bool).index_fill(1, torch.arange(4), True)
                    want = values if fx is not None else torch.cat([pr.expand(B, 4), torch.zeros(B, d - 4, dtype=torch.long)], 1)
                    seen = []
                    out = sampler.sample(lm, B, d, prompt=pr, fixed=fx, generator=gen(4), callback=seen.append)
                    for rec in seen:
                        assert torch.equal(rec.tokens[fixed], want[fixed])
                        assert not bool(rec.changed[fixed].any())
                        assert bool((rec.levels[fixed] == 0).all())
                    assert torch.equal(out.tokens[fixed], want[fixed]), (sampler, schedule)
                    assert bool((out.tokens < N).all())


def test_prompt_prefix_skips_its_quench_steps():
    lm = make_lm(Absorb(N), Quench(), "shifted")
    prompt = torch.tensor([[1, 2, 3]])
    out = MDLM().sample(lm, 2, 8, prompt=prompt, generator=gen(0), keep_history=True)
    assert [r.step for r in out.history] == [4, 5, 6, 7, 8]
    assert out.num_model_calls == 5


# ---------------------------------------------------------------------------------------------
# KV cache
# ---------------------------------------------------------------------------------------------
class Counting:
    """Counts the rows fed to a transformer (forwards everything else)."""

    def __init__(self, model):
        self.model, self.config, self.vocab_size, self.rows = model, model.config, model.vocab_size, 0

    def empty_cache(self):
        return self.model.empty_cache()

    def __call__(self, ids, **kw):
        self.rows += ids.shape[1]
        return self.model(ids, **kw)


@pytest.mark.parametrize("time_conditioning", [False, True])
@pytest.mark.parametrize("layout", ["aligned", "shifted", "shifted_last"])
@pytest.mark.parametrize("schedule", [Quench(), Block(4, 2), Slide(3)], ids=repr)
def test_cached_equals_uncached(schedule, layout, time_conditioning):
    proc = GammaHybrid(N, 0.3) if time_conditioning else Absorb(N)
    model = Counting(tiny(proc.model_vocab_size, time_conditioning, seed=1))
    lm = DiffusionLM(model, proc, schedule, layout=layout, bos_id=N + 1)
    samplers = [MDLM(), ACS(0.5)] + ([SEDDEuler()] if time_conditioning else [AR()])
    for sampler in samplers:
        fixed = torch.zeros(3, 16, dtype=torch.bool)
        fixed[:, [0, 1, 9]] = True
        for pr, fx in ((None, None), (torch.randint(0, N, (3, 16), generator=gen(1)), fixed)):
            runs = {}
            for cache in (True, False):
                sampler.cache = cache
                model.rows = 0
                out = sampler.sample(lm, 3, 16, prompt=pr, fixed=fx, generator=gen(7))
                runs[cache] = (out.tokens, model.rows)
            sampler.cache = True
            assert torch.equal(runs[True][0], runs[False][0]), sampler
            assert runs[True][1] < runs[False][1]  # the cache fed fewer rows


@pytest.mark.parametrize("layout", ["shifted", "shifted_last"])
@pytest.mark.parametrize("schedule", [Block(4, 4), Flat(6), Slide(3)], ids=repr)
def test_each_step_sees_what_the_composition_computes_for_that_step(schedule, layout):
    """The driver's logits at every step (worthless rows dropped, the settled prefix cached, under
    SHIFTED_LAST the reader row added) equal the composition's own forward of the same step
    (`DiffusionLM.step_forward`: every row fed, the step's categories), with and without a prompt."""
    from diffusionlm.masks import categories_from_levels
    from diffusionlm.samplers.base import SampleRequest
    from diffusionlm.samplers.driver import drive

    lm = make_lm(Absorb(N), schedule, layout, seed=3)
    seen = []

    def step_fn(step, generator):
        cats = categories_from_levels(step.level_t.float(), step.level_s.float())
        want = lm.step_forward(step.x, step.level_t.float(), cats)[:, step.cols]
        seen.append(float((step.logits - want).abs().max()))
        new = torch.randint(0, N, step.logits.shape[:2], generator=generator)
        return new, torch.ones(new.shape, dtype=torch.float64)

    for prompt in (None, torch.randint(0, N, (2, 5), generator=gen(4))):
        request = SampleRequest(2, 12, prompt, None, gen(3), None, False)
        drive(lm, schedule, step_fn, request, cache=True)
    assert len(seen) > 4 and max(seen) < 1e-4, seen


def test_flat_reuses_logits_where_nothing_changed():
    """MDLM's caching trick: with many steps most Flat steps change nothing; a level-blind model
    is then not called again, and the samples are those of the uncached run."""
    lm = make_lm(Absorb(N), Flat(60), "aligned")
    a = MDLM().sample(lm, 2, 6, generator=gen(3))
    b = MDLM(cache=False).sample(lm, 2, 6, generator=gen(3))
    assert torch.equal(a.tokens, b.tokens)
    assert b.num_model_calls == 60 and a.num_model_calls < 30


# ---------------------------------------------------------------------------------------------
# AR
# ---------------------------------------------------------------------------------------------
def greedy_loop(model, prompt: torch.Tensor, new: int, bos: int) -> torch.Tensor:
    """Plain greedy decoding: one full causal forward per token over [BOS, tokens so far]."""
    seq = prompt.clone()
    for _ in range(new):
        ids = torch.cat([torch.full((seq.shape[0], 1), bos), seq], 1)
        L = ids.shape[1]
        with torch.no_grad():
            logits = model(ids, position_ids=torch.arange(L)[None], attention_mask=dense_mask(causal_mask_mod(), 1, L)).logits
        seq = torch.cat([seq, logits[:, -1, :N].argmax(-1, keepdim=True)], 1)
    return seq


@pytest.mark.parametrize("cache", [True, False])
def test_ar_greedy_equals_a_greedy_loop_of_full_causal_forwards(cache):
    lm = make_lm(Absorb(N), Flat(), "shifted")  # AR ignores the lm's own schedule
    prompt = torch.randint(0, N, (3, 4), generator=gen(0))
    out = AR(max_new_tokens=10, greedy=True, cache=cache).sample(lm, 3, prompt=prompt)
    assert torch.equal(out.tokens, greedy_loop(lm.model, prompt, 10, N + 1))
    assert out.num_model_calls == 10


def test_ar_paths_agree():
    """The one-row-per-step path (SHIFTED, level-blind model) and the driver path give the same
    samples; ALIGNED and time-conditioned models take the driver path."""
    prompt = torch.randint(0, N, (1, 3), generator=gen(0))
    lm = make_lm(Absorb(N), Quench(), "shifted")
    fast = AR(max_new_tokens=9, temperature=0.7).sample(lm, 4, prompt=prompt, generator=gen(1), keep_history=True)
    slow = MDLM().sample(lm, 4, 12, prompt=prompt, generator=gen(1))  # Absorb + Quench: the same law
    assert fast.tokens.shape == (4, 12) and len(fast.history) == 9
    assert bool((fast.tokens[:, :3] == prompt).all())
    un = AR(max_new_tokens=9, temperature=0.7, cache=False).sample(lm, 4, prompt=prompt, generator=gen(1))
    assert torch.equal(fast.tokens, un.tokens)
    assert slow.tokens.shape == fast.tokens.shape
    for layout, tc in (("aligned", False), ("shifted", True)):
        lm = make_lm(GammaHybrid(N, 0.3) if tc else Absorb(N), Quench(), layout, time_conditioning=tc)
        a = AR(max_new_tokens=6, greedy=True).sample(lm, 2, prompt=prompt)
        b = AR(max_new_tokens=6, greedy=True, cache=False).sample(lm, 2, prompt=prompt)
        assert torch.equal(a.tokens, b.tokens)


def test_ar_greedy_equals_hf_generate():
    import transformers
    from diffusionlm.models.hf import HFDenoiser

    V, bos = 40, 0
    for kind in ("gpt2", "llama"):
        for impl in ("sdpa", "eager"):
            torch.manual_seed(0)
            if kind == "gpt2":
                cfg = transformers.GPT2Config(
                    vocab_size=V, n_positions=48, n_embd=32, n_layer=2, n_head=4, resid_pdrop=0.0, embd_pdrop=0.0,
                    attn_pdrop=0.0, initializer_range=0.3, bos_token_id=bos, eos_token_id=bos, attn_implementation=impl,
                )
                hf = transformers.GPT2LMHeadModel(cfg).eval()
            else:
                cfg = transformers.LlamaConfig(
                    vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                    num_key_value_heads=2, max_position_embeddings=48, initializer_range=0.3, bos_token_id=bos,
                    eos_token_id=bos, pad_token_id=None, attn_implementation=impl,
                )
                hf = transformers.LlamaForCausalLM(cfg).eval()
            model = HFDenoiser.from_model(hf, mask="add")  # MASK = V: suppressed in generate below
            lm = DiffusionLM(model, Absorb(V, mask_id=model.mask_id), Quench(), layout="shifted", bos_id=bos)
            prompt = torch.randint(1, V, (3, 5), generator=gen(1))
            new = 20
            out = AR(max_new_tokens=new, greedy=True).sample(lm, 3, prompt=prompt)
            with torch.no_grad():
                ref = hf.generate(
                    torch.cat([torch.full((3, 1), bos), prompt], 1), attention_mask=torch.ones(3, 6, dtype=torch.long),
                    max_new_tokens=new, min_new_tokens=new, do_sample=False, suppress_tokens=[model.mask_id],
                    pad_token_id=bos, eos_token_id=None,
                )
            assert torch.equal(out.tokens, ref[:, 1:]), (kind, impl)
            assert out.num_model_calls == new


# ---------------------------------------------------------------------------------------------
# interface and errors
# ---------------------------------------------------------------------------------------------
def test_registry_and_to_dict():
    for name, cls in (("mdlm", MDLM), ("acs", ACS), ("sedd_analytic", SEDDAnalytic), ("sedd_euler", SEDDEuler), ("ar", AR)):
        assert SAMPLERS[name] is cls and get_sampler(name) is cls
    assert get_sampler("acs")(eta=0.5, steps=8).to_dict() == {
        "name": "acs", "eta": 0.5, "steps": 8, "rate": None, "cache": True, "dtype": "float64"}
    assert AR(max_new_tokens=3, greedy=True).to_dict()["dtype"] == "float64"


def test_seeds_batches_steps_rate_and_history():
    lm = make_lm(Absorb(N), Block(4, 2), "shifted")
    a = MDLM().sample(lm, 5, 12, generator=gen(0))
    b = MDLM().sample(lm, 5, 12, generator=gen(0))
    c = MDLM().sample(lm, 5, 12, generator=gen(1))
    assert torch.equal(a.tokens, b.tokens) and not torch.equal(a.tokens, c.tokens)
    assert a.num_model_calls == 6 and a.seconds > 0
    records: list[StepRecord] = []
    out = MDLM(steps=4).sample(lm, 2, 12, generator=gen(0), callback=records.append, keep_history=True)
    assert len(records) == 4 and [r.step for r in out.history] == [1, 2, 3, 4]
    last = out.history[-1]
    assert torch.equal(last.tokens, out.tokens) and bool((last.levels == 0).all())
    moved = torch.stack([r.changed for r in out.history]).any(0)
    assert bool(moved.all())  # every position was decoded once
    conf = torch.stack([r.confidence for r in out.history])
    assert bool(((conf > 0) & (conf <= 1) | conf.isnan()).all()) and not bool(conf.isnan().all())
    # rate: Block(4, 2) at 4 tokens per step = one step per block
    assert MDLM(rate=4.0).sample(lm, 2, 12, generator=gen(0)).num_model_calls == 3
    # continuous-time Flat needs steps
    flat = make_lm(Absorb(N), Flat(), "aligned")
    assert MDLM(steps=3).sample(flat, 2, 12, generator=gen(0)).num_model_calls == 3


class Exploding:
    """A model that must never be called."""

    def __init__(self, vocab_size: int = N + 1):
        self.vocab_size = vocab_size

    def __call__(self, *a, **k):  # pragma: no cover - must never run
        raise AssertionError("the model was called before the sampler refused")


def test_errors():
    lm = make_lm(Absorb(N), Quench(), "aligned")
    for make in (lambda: MDLM(steps=0), lambda: ACS(0.5, steps=-1), lambda: SEDDAnalytic(steps=0),
                 lambda: SEDDEuler(steps=0), lambda: MDLM(steps=2.5)):
        with pytest.raises(ValueError, match="steps"):
            make()
    for eta in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="eta"):
            ACS(eta)
    with pytest.raises(ValueError, match="dtype"):
        MDLM(dtype=torch.float16)
    with pytest.raises(ValueError, match="rate"):
        MDLM(rate=0)
    with pytest.raises(ValueError, match="steps and rate"):
        MDLM(steps=3, rate=1.0)
    with pytest.raises(ValueError, match="temperature"):
        AR(temperature=0)
    with pytest.raises(ValueError, match="max_new_tokens"):
        AR(max_new_tokens=0)
    # prompt longer than the sequence
    for sampler in (MDLM(), ACS(0.5), SEDDAnalytic(), AR()):
        with pytest.raises(ValueError, match="longer than the sequence"):
            sampler.sample(lm, 1, 3, prompt=torch.arange(5)[None])
    with pytest.raises(ValueError, match="max_new_tokens"):
        AR().sample(lm, 1, prompt=torch.arange(3)[None])  # no length, no max_new_tokens
    with pytest.raises(ValueError, match="continuous-time"):
        MDLM().sample(make_lm(Absorb(N), Flat(), "aligned"), 1, 4)

    # samplers that do not fit the process: ValueError naming it, before any model call
    structural = DiffusionLM(Exploding(), Structural(N), Flat())
    for sampler in (SEDDAnalytic(), SEDDEuler(), MDLM(), ACS(0.5)):
        with pytest.raises(ValueError, match="Structural"):
            sampler.sample(structural, 2, 6)
    eps = DiffusionLM(Exploding(), EpsilonHybrid(N), Flat(4))
    for sampler in (SEDDAnalytic(), SEDDEuler()):
        with pytest.raises(ValueError, match="EpsilonHybrid"):
            sampler.sample(eps, 2, 6)
    with pytest.raises(ValueError, match="Absorb"):
        SEDDEuler().sample(DiffusionLM(Exploding(), Absorb(N), Flat(4)), 2, 6)
    with pytest.raises(ValueError, match="no MASK"):
        ACS(0.5).sample(DiffusionLM(Exploding(N), Uniform(N), Flat(4)), 2, 6)
