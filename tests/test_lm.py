"""The composition: training loss and Monte-Carlo NLL bound for (model, process, schedule, layout)."""
import pytest
import torch

from diffusionlm.lm import DiffusionLM
from diffusionlm.masks import Layout, causal_mask_mod, dense_mask
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
    b = lm.nll_bound(x0, num_samples=64, generator=torch.Generator().manual_seed(4))
    assert ((a.nll - b.nll).abs() < 5 * (a.stderr**2 + b.stderr**2).sqrt()).all()
    assert a.ppl > 1 and not a.exact.any() and a.samples.shape == (4, 2)


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
