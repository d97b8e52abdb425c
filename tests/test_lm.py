"""The composition: training loss and Monte-Carlo NLL bound for (model, process, schedule, layout)."""
import pytest
import torch

from diffusionlm.lm import DiffusionLM
from diffusionlm.masks import Layout, categories_from_levels, causal_mask_mod, dense_mask
from diffusionlm.models import DiffusionTransformer, TransformerConfig
from diffusionlm.processes import Absorb, EpsilonHybrid, GammaHybrid, Uniform
from diffusionlm.processes.structural import Structural
from diffusionlm.schedules import Block, Flat, Quench, Slide
from oracle import Oracle, toy_distribution

N = 11


def tiny(vocab_out: int, time_conditioning: bool = False, seed: int = 0) -> DiffusionTransformer:
    torch.manual_seed(seed)
    cfg = TransformerConfig.preset(
        "tiny", vocab_size=vocab_out, input_vocab_size=N + 2, n_layers=2, hidden=32, n_heads=2,
        max_positions=64, time_conditioning=time_conditioning,
    )
    return DiffusionTransformer(cfg).eval()


def batch(B=3, d=9, seed=0):
    return torch.randint(0, N, (B, d), generator=torch.Generator().manual_seed(seed))


def test_absorb_quench_shifted_is_autoregressive_lm():
    """The Quench bound of an Absorb / SHIFTED composition is the AR NLL of one causal forward."""
    model = tiny(N + 1)
    lm = DiffusionLM(model, Absorb(N), Quench(), layout="shifted", bos_id=N + 1)
    x0 = batch()
    B, d = x0.shape
    bound = lm.nll_bound(x0, num_samples=d, generator=torch.Generator().manual_seed(0))
    inputs = torch.cat([torch.full((B, 1), N + 1), x0[:, :-1]], 1)
    mask = dense_mask(causal_mask_mod(), 1, d)
    with torch.no_grad():
        logits = model(inputs, position_ids=torch.arange(d)[None].expand(B, d), attention_mask=mask).logits
    ar = -torch.log_softmax(logits[..., :N].double(), -1).gather(-1, x0[..., None]).squeeze(-1).sum(1)
    assert torch.allclose(bound.nll, ar, atol=1e-5)
    # the training loss at step k is the AR loss of token k-1 (weight T, over B * d)
    for k in (1, 4, 9):
        u = torch.full((B,), (k - 0.5) / d, dtype=torch.float64)
        with torch.no_grad():
            out = lm.loss(x0, u=u)
        tok = -torch.log_softmax(logits[:, k - 1, :N], -1).gather(-1, x0[:, k - 1 : k]).squeeze(-1)
        assert torch.allclose(out.loss, d * tok.sum() / (B * d), atol=1e-5)


def test_mc_bound_with_oracle_is_exact_for_quench():
    ys, p = toy_distribution(3, 4)
    proc = Absorb(3)
    lm = DiffusionLM(Oracle(proc, ys, p), proc, Quench())
    out = lm.nll_bound(ys[:20], num_samples=4, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(out.nll, -torch.log(p[:20]), atol=1e-9)


def test_mc_bound_stderr_shrinks_with_more_samples():
    """The stderr (R = 2 replicates: one degree of freedom per row, so averaged over seeds here)
    falls as M grows, and estimates at different M agree within their error bars."""
    model = tiny(N + 1)
    lm = DiffusionLM(model, Absorb(N), Flat())
    x0 = batch(B=4, d=12)

    def rms_stderr(m):
        v = [lm.nll_bound(x0, num_samples=m, generator=torch.Generator().manual_seed(s)).stderr.pow(2).mean() for s in range(8)]
        return float(torch.stack(v).mean().sqrt())

    se = [rms_stderr(m) for m in (4, 16, 64)]
    assert se[0] > se[1] > se[2] > 0
    a = lm.nll_bound(x0, num_samples=64, generator=torch.Generator().manual_seed(3))
    assert a.ppl > 1 and not a.exact.any() and a.samples.shape == (4, 2)
    # agreement within the error bars needs error bars with some degrees of freedom: R = 2 gives
    # each row's stderr one, and a 1-dof stderr is near 0 by chance often enough (a 5-sigma check
    # then fails for ~4% of rows); 8 replicates give 7
    a, b = (lm.nll_bound(x0, num_samples=64, replicates=8, generator=torch.Generator().manual_seed(s)) for s in (3, 4))
    assert ((a.nll - b.nll).abs() < 5 * (a.stderr**2 + b.stderr**2).sqrt()).all()


@pytest.mark.parametrize("layout", ["aligned", "shifted"])
@pytest.mark.parametrize("schedule", [Block(3, 1), Quench()], ids=repr)
def test_two_halves_equals_the_average_of_per_step_training(layout, schedule):
    """With one step per block (deterministic Absorb corruption), one two-halves forward gives
    exactly the average over every step of the per-sequence loss: the efficient layout trains
    the same objective."""
    model = tiny(N + 1)
    lm = DiffusionLM(model, Absorb(N), schedule, layout=layout, bos_id=N + 1)
    x0 = batch(B=2, d=8)
    B, d = x0.shape
    T = schedule.num_steps(d)
    with torch.no_grad():
        fast = lm.loss(x0, two_halves=True).loss
        slow = sum(lm.loss(x0, u=torch.full((B,), (k + 0.5) / T, dtype=torch.float64)).loss for k in range(T)) / T
    assert torch.allclose(fast, slow, atol=1e-5)


@pytest.mark.parametrize(
    "make",
    [lambda: Absorb(N), lambda: Uniform(N), lambda: GammaHybrid(N, 0.1), lambda: EpsilonHybrid(N, 0.05)],
    ids=["absorb", "uniform", "gamma", "epsilon"],
)
@pytest.mark.parametrize("schedule", [Flat(), Flat(steps=5), Block(4, 2), Slide(3), Quench()], ids=repr)
def test_every_process_trains_under_every_schedule(make, schedule):
    proc = make()
    if schedule == Flat() and isinstance(proc, EpsilonHybrid):
        schedule = Flat(steps=5)
    model = tiny(proc.model_vocab_size, time_conditioning=proc.time_conditioned).train()
    lm = DiffusionLM(model, proc, schedule)
    x0 = batch(B=4, d=10)
    out = lm.loss(x0, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(out.loss) and out.loss > 0
    out.loss.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    bound = lm.nll_bound(x0, num_samples=3, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(bound.nll).all() and (bound.nll > 0).all()


def test_epsilon_hybrid_refuses_the_continuous_bound():
    lm = DiffusionLM(tiny(N + 1), EpsilonHybrid(N, 0.05), Flat())
    with pytest.raises(NotImplementedError, match="discrete schedule"):
        lm.nll_bound(batch(), num_samples=2)


def test_structural_trains_but_has_no_likelihood():
    proc = Structural(N)
    lm = DiffusionLM(tiny(N + 1), proc, Flat())
    x0 = batch(B=4, d=10)
    resp = torch.zeros_like(x0, dtype=torch.bool)
    resp[:, 4:] = True
    out = lm.loss(x0, generator=torch.Generator().manual_seed(0), response_mask=resp)
    assert torch.isfinite(out.loss) and (out.per_token[:, :4] == 0).all()
    with pytest.raises(ValueError, match="no likelihood"):
        lm.nll_bound(x0)


def test_composition_errors():
    with pytest.raises(ValueError, match="does not fit"):
        DiffusionLM(tiny(N), Absorb(N), Flat())  # no room for MASK
    with pytest.raises(ValueError, match="bos_id"):
        DiffusionLM(tiny(N + 1), Absorb(N), Quench(), layout="shifted")
    lm = DiffusionLM(tiny(N + 1), Absorb(N), Flat())
    with pytest.raises(ValueError, match="num_samples"):
        lm.nll_bound(batch(), num_samples=0)
    with pytest.raises(ValueError, match="out of range"):
        lm.loss(torch.tensor([[0, N]]))
    with pytest.raises(ValueError, match="exceeds the model's 64 positions"):
        lm.loss(torch.zeros(1, 65, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\[B, d\]"):
        lm.loss(torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError):
        DiffusionLM(tiny(N + 1), Absorb(N), Flat(), layout="sideways")


# ----------------------------------------------------------------------------------------------
# GammaHybrid as in the hyperschedules paper: eq. 12 weighted embedding, eq. 10 / 11 settled CE


GAMMA = 0.3


def eq12_model(seed: int = 0, **over) -> DiffusionTransformer:
    torch.manual_seed(seed)
    kw = dict(vocab_size=N + 1, input_vocab_size=N + 2, n_layers=2, hidden=32, n_heads=2, max_positions=64,
              time_conditioning=True, mask_id=N, weighted_embedding_gamma=GAMMA)
    cfg = TransformerConfig.preset("tiny", **{**kw, **over})
    return DiffusionTransformer(cfg)


class Spy:
    """Records the keyword inputs of every call of a backbone."""

    def __init__(self, model):
        self.model, self.calls = model, []
        self.vocab_size, self.config = model.vocab_size, model.config

    def forward(self, ids, *, position_ids=None, attention_mask=None, levels=None, cache=None, cache_commit=0,
                embedding_weight=None):
        self.calls.append({"levels": levels, "embedding_weight": embedding_weight})
        return self.model(ids, position_ids=position_ids, attention_mask=attention_mask, levels=levels, cache=cache,
                          cache_commit=cache_commit, embedding_weight=embedding_weight)

    __call__ = forward

    def empty_cache(self):
        return self.model.empty_cache()


def test_the_eq12_embedding_weight_reaches_the_backbone_in_loss_bound_and_sampling():
    """w = e^{-gamma sigma_bar(l)} of the levels of every call: training (per-sequence and
    two-halves), the bound and the samplers' driver (cached and not)."""
    from diffusionlm.samplers import get_sampler

    proc = GammaHybrid(N, GAMMA, weighted_embedding=True)
    spy = Spy(eq12_model())
    x0 = batch(B=2, d=8)
    for schedule in (Flat(), Block(4, 2)):
        lm = DiffusionLM(spy, proc, schedule)
        lm.loss(x0, generator=torch.Generator().manual_seed(0))
        if schedule != Flat():
            lm.loss(x0, generator=torch.Generator().manual_seed(0), two_halves=True)
        lm.nll_bound(x0, num_samples=2, generator=torch.Generator().manual_seed(0))
        for cache in (True, False):
            out = get_sampler("sedd_analytic")(steps=4, cache=cache).sample(lm, 2, 8, generator=torch.Generator().manual_seed(1))
            assert not (out.tokens == N).any()
    assert len(spy.calls) > 10
    for call in spy.calls:
        lv, w = call["levels"], call["embedding_weight"]
        assert w is not None and w.shape == lv.shape
        expect = torch.exp(-GAMMA * proc.noise.sigma_bar(lv.double()))
        assert torch.allclose(w.double(), expect, atol=1e-6)
    assert any(float(c["levels"].min()) == 0 and float(c["embedding_weight"].max()) == 1 for c in spy.calls)


def test_the_eq12_model_trains_and_samples():
    """GammaHybrid(weighted_embedding=True) + Block, trained end to end: its seeded loss falls
    over a few dozen steps and the SEDD sampler gives tokens, never MASK."""
    from diffusionlm.samplers import get_sampler

    proc = GammaHybrid(N, GAMMA, weighted_embedding=True)
    lm = DiffusionLM(eq12_model(), proc, Block(4, 2), settled_weight=0.1, settled_weighting="eq11")
    x0 = torch.arange(16)[None].expand(8, 16) % N  # a fixed pattern to learn

    def seeded_loss():
        with torch.no_grad():
            return sum(float(lm.loss(x0, generator=torch.Generator().manual_seed(s)).loss) for s in range(6)) / 6

    before = seeded_loss()
    opt = torch.optim.Adam(lm.model.parameters(), lr=3e-3)
    lm.model.train()
    g = torch.Generator().manual_seed(0)
    for _ in range(40):
        opt.zero_grad()
        lm.loss(x0, generator=g).loss.backward()
        opt.step()
    lm.model.eval()
    after = seeded_loss()
    assert after < 0.7 * before, (before, after)
    out = get_sampler("sedd_analytic")(steps=8).sample(lm, 4, 16, generator=torch.Generator().manual_seed(0))
    assert out.tokens.shape == (4, 16) and not (out.tokens == N).any() and (out.tokens < N).all()
    assert torch.isfinite(lm.nll_bound(x0[:2], num_samples=4, generator=torch.Generator().manual_seed(0)).nll).all()


def test_eq12_composition_errors():
    proc = GammaHybrid(N, GAMMA, weighted_embedding=True)
    with pytest.raises(ValueError, match="does not provide it"):  # the backbone raised deep inside before
        DiffusionLM(eq12_model(), GammaHybrid(N, GAMMA), Flat())
    with pytest.raises(ValueError, match="takes no embedding_weight"):
        DiffusionLM(Oracle(proc, *toy_distribution(N, 2)), proc, Flat())
    with pytest.raises(ValueError, match="gamma 0.5 is not the process's gamma 0.3"):
        DiffusionLM(eq12_model(weighted_embedding_gamma=0.5), proc, Flat())
    with pytest.raises(ValueError, match="mask_id"):
        DiffusionLM(eq12_model(mask_id=N + 1, weighted_embedding_gamma=None), proc, Flat())
    with pytest.raises(ValueError, match="Uniform has no MASK"):
        GammaHybrid(N, _uniform=True, weighted_embedding=True)
    with pytest.raises(ValueError, match="weighted_embedding"):
        GammaHybrid(N, GAMMA, weighted_embedding="yes")
    assert proc.config()["weighted_embedding"] is True
    from diffusionlm.processes import process

    assert process(proc.config()).config() == proc.config()


def test_eq11_weights():
    from diffusionlm.lm import eq11_weights

    assert eq11_weights(12, 4).tolist() == [0.0] * 4 + [0.5] * 4 + [1.0] * 4
    assert eq11_weights(10, 4).tolist() == [0.0] * 4 + [0.5] * 4 + [1.0] * 2  # ceil(10 / 4) = 3 blocks
    assert eq11_weights(8, 8).tolist() == [1.0] * 8  # one block: w = 1
    assert eq11_weights(5, 1).tolist() == [0.0, 0.25, 0.5, 0.75, 1.0]  # Quench: omega = 1


@pytest.mark.parametrize("weighting", ["uniform", "eq11"])
def test_settled_ce_is_beta1_times_w_i(weighting):
    """Eq. 10: the loss adds beta_1 * w(i) * CE at the settled positions of the drawn step."""
    from diffusionlm.lm import eq11_weights
    from diffusionlm.processes.base import real_token_nll

    model = tiny(N + 1)
    x0 = batch(B=3, d=12)
    u = torch.tensor([0.4, 0.7, 0.9], dtype=torch.float64)  # steps 2, 3, 3 of Block(4, 1): blocks 1, 2, 2
    plain = DiffusionLM(model, Absorb(N), Block(4))
    beta = DiffusionLM(model, Absorb(N), Block(4), settled_weight=0.7, settled_weighting=weighting)
    with torch.no_grad():
        a, b = plain.loss(x0, u=u), beta.loss(x0, u=u)
        draw = b.draw
        settled = draw.level == 0
        logits = plain.step_forward(b.corruption.ids, draw.level, categories_from_levels(draw.level, draw.next_level))
    w = eq11_weights(12, 4) if weighting == "eq11" else torch.ones(12)
    extra = torch.where(settled, 0.7 * w * real_token_nll(logits, x0, N), torch.zeros(3, 12))
    assert settled.any(1).all()
    assert torch.allclose(b.per_token - a.per_token, extra, atol=1e-5)


def test_settled_weight_errors():
    lm = DiffusionLM(tiny(N + 1), Absorb(N), Block(4), settled_weight=0.5)
    with pytest.raises(ValueError, match="two-halves layout"):
        lm.loss(batch(), two_halves=True)
    with pytest.raises(ValueError, match="settled_weighting"):
        DiffusionLM(tiny(N + 1), Absorb(N), Block(4), settled_weighting="eq12")
    with pytest.raises(ValueError, match="beta_1"):
        DiffusionLM(tiny(N + 1), Absorb(N), Block(4), settled_weight=-1.0)


def test_an_eq12_composition_round_trips_through_its_saved_dict():
    """The weighted-embedding process, beta_1 and the eq. 11 weighting survive the composition
    dict that save_pretrained writes (diffusionlm.io.hub)."""
    import json

    lm = DiffusionLM(eq12_model().eval(), GammaHybrid(N, GAMMA, weighted_embedding=True), Block(4, 2),
                     settled_weight=0.2, settled_weighting="eq11")
    back = DiffusionLM.from_dict(json.loads(json.dumps(lm.to_dict())), model=lm.model)
    assert back.process.config() == lm.process.config() and back.process.weighted_embedding
    assert (back.settled_weight, back.settled_weighting) == (0.2, "eq11")
    x0 = batch(B=2, d=12)
    with torch.no_grad():
        a = lm.loss(x0, generator=torch.Generator().manual_seed(3)).loss
        b = back.loss(x0, generator=torch.Generator().manual_seed(3)).loss
    assert torch.equal(a, b)


def test_ar_judge_scores_a_continuation_given_its_prompt():
    """`ar_judge_nll(start=P)` scores positions P.. given everything before each: equal to scoring
    each position j alone as the last of a sequence cut after it (a causal model sees only 0..j-1)."""
    from diffusionlm.compare import ar_judge_nll

    lm = DiffusionLM(tiny(N + 1), Absorb(N), Quench(), layout="shifted", bos_id=N + 1)
    x0 = batch(B=2, d=10)
    with torch.no_grad():
        nll, n = ar_judge_nll(lm, x0, start=4)
        one_by_one = sum(ar_judge_nll(lm, x0[:, : j + 1], start=j)[0] for j in range(4, 10))
        whole, _ = ar_judge_nll(lm, x0)
        prompt, _ = ar_judge_nll(lm, x0[:, :4])
    assert n == 2 * 6
    # float32 forwards of different lengths take different matmul paths (on this AMD EPYC they
    # differ in the 9th digit): equal to float32's precision
    assert nll == pytest.approx(one_by_one, rel=1e-6)
    assert nll == pytest.approx(whole - prompt, rel=1e-6)
    with pytest.raises(ValueError, match="start 10 must lie in"):
        ar_judge_nll(lm, x0, start=10)
