"""The unification, exactly: with an oracle denoiser on a toy distribution (vocabulary 3, length 4),
computed by enumerating every sequence and every corrupted state (no Monte Carlo)."""
import math

import numpy as np
import pytest
import torch

from diffusionlm.processes import Absorb, EpsilonHybrid, GammaHybrid, Uniform
from diffusionlm.schedules import Block, Custom, Flat, Linear, Quench, Slide
from oracle import Oracle, all_sequences, toy_distribution

N, D = 3, 4
YS, P = toy_distribution(N, D)
NLL = -torch.log(P)  # exact NLL of every sequence
ENTROPY = float((P * NLL).sum())


def state_probs(proc, levels: torch.Tensor, states: torch.Tensor) -> torch.Tensor:
    """P(x_t = state | y) for every y and state: [S, X] (positions independent given y)."""
    q = proc.marginal_probs(YS, levels.double().expand(YS.shape))  # [S, d, V]
    return q[:, torch.arange(D)[None, :], states].prod(-1).squeeze(0) if False else torch.stack(
        [q[:, j, states[:, j]] for j in range(D)], -1
    ).prod(-1)


def exact_discrete_bound(proc, schedule) -> torch.Tensor:
    """d * prior KL + sum_k E_{x_{k-1}} sum_i KL(q(x_k | x_{k-1}, y) || p_oracle): [S]."""
    oracle = Oracle(proc, YS, P)
    states = all_sequences(proc.model_vocab_size, D)
    table = schedule.table(D)
    total = torch.full((len(YS),), float(proc.prior_kl()) * D, dtype=torch.float64)
    S, X = len(YS), len(states)
    for k in range(1, table.shape[0]):
        lt, ls = table[k - 1], table[k]
        probs = state_probs(proc, lt, states)  # [S, X]
        keep = probs.sum(0) > 0
        st, pr = states[keep], probs[:, keep]
        logits = oracle(st, levels=lt.expand(st.shape)).logits  # [X', d, V]
        Xk = st.shape[0]
        kl = proc.step_kl(
            logits[None].expand(S, Xk, D, -1).reshape(S * Xk, D, -1),
            YS[:, None].expand(S, Xk, D).reshape(-1, D),
            st[None].expand(S, Xk, D).reshape(-1, D),
            lt.expand(S * Xk, D),
            ls.expand(S * Xk, D),
        ).reshape(S, Xk, D)
        total += (pr * kl.sum(-1)).sum(-1)
    return total


def continuous_integrand(proc, level: float) -> torch.Tensor:
    """E_{x_l}[sum_i continuous_bound_i] for every y: [S]."""
    oracle = Oracle(proc, YS, P)
    states = all_sequences(proc.model_vocab_size, D)
    lv = torch.full((D,), level, dtype=torch.float64)
    probs = state_probs(proc, lv, states)
    keep = probs.sum(0) > 0
    st, pr = states[keep], probs[:, keep]
    logits = oracle(st, levels=lv.expand(st.shape)).logits
    S, Xk = len(YS), st.shape[0]
    mask_id = proc.mask_id if proc.mask_id is not None else -1

    class C:  # the corruption fields the bound reads
        ids = st[None].expand(S, Xk, D).reshape(-1, D)
        masked = ids == mask_id

    terms = proc.continuous_bound(
        logits[None].expand(S, Xk, D, -1).reshape(S * Xk, D, -1),
        YS[:, None].expand(S, Xk, D).reshape(-1, D),
        C,
        lv.expand(S * Xk, D),
    ).reshape(S, Xk, D)
    return (pr * terms.sum(-1)).sum(-1)


def prior_mismatch(proc) -> torch.Tensor:
    """E_{x_1 ~ q_1(.|y)} log(p_1(x_1) / prior(x_1)): what an exact reverse process started from the
    prior instead of the true p_1 adds to -log p(y). Zero when q_1 is the prior (Absorb, linear)."""
    states = all_sequences(proc.model_vocab_size, D)
    q1 = state_probs(proc, torch.ones(D, dtype=torch.float64), states)  # [S, X]
    p1 = (P[:, None] * q1).sum(0)
    m, k, u = proc.marginal(torch.ones((), dtype=torch.float64))
    pbar = (1 - m) / N
    is_mask = states == proc.mask_id if proc.mask_id is not None else torch.zeros_like(states, dtype=torch.bool)
    prior = torch.where(is_mask, m, pbar).prod(-1)
    ok = q1 > 0
    return torch.where(ok, q1 * torch.log(p1 / prior).expand_as(q1), 0.0).sum(-1)


def test_absorb_quench_bound_is_exact_nll():
    bound = exact_discrete_bound(Absorb(N), Quench())
    assert torch.allclose(bound, NLL, atol=1e-9)


def test_absorb_continuous_flat_bound_is_exact_nll():
    """integral_0^1 (1/l) E[CE on masked] dl is a polynomial in l: Gauss-Legendre is exact."""
    nodes, weights = np.polynomial.legendre.leggauss(8)
    total = sum(w / 2 * continuous_integrand(Absorb(N), (x + 1) / 2) for x, w in zip(nodes, weights))
    assert torch.allclose(total, NLL, atol=1e-6)


@pytest.mark.parametrize("proc", [Uniform(N, noise=Linear(0.02)), GammaHybrid(N, 0.3, noise=Linear(0.02))], ids=repr)
def test_score_entropy_bound_with_exact_scores_is_tight(proc):
    """Continuous time with exact ratios reverses the process exactly: the DWDSE bound equals
    -log p(y) plus only the prior mismatch. Quadrature: Gauss-Legendre in x with l = x^2, which
    smooths the integrable log singularity at l = 0 (checked against adaptive quadrature to 1e-11
    while writing this test; 128 nodes agree with it to < 1e-7)."""
    xs, ws = np.polynomial.legendre.leggauss(128)
    xs, ws = (xs + 1) / 2, ws / 2
    integral = sum(w * 2 * x * continuous_integrand(proc, x * x) for x, w in zip(xs, ws))
    bound = integral + float(proc.prior_kl()) * D
    assert torch.allclose(bound, NLL + prior_mismatch(proc), atol=1e-6)
    assert float((P * bound).sum()) >= ENTROPY


SCHEDULES = [Quench(), Flat(steps=3), Block(2, 2), Slide(2), Custom([[1, 1, 1, 1], [0.5, 1, 1, 1], [0, 0.5, 0.5, 1], [0, 0, 0, 0]])]
PROCESSES = [Absorb(N), Uniform(N), GammaHybrid(N, 0.2), EpsilonHybrid(N, 0.1, 1.0)]


@pytest.mark.parametrize("schedule", SCHEDULES, ids=repr)
@pytest.mark.parametrize("proc", PROCESSES, ids=repr)
def test_bound_is_never_below_the_exact_nll(proc, schedule):
    bound = exact_discrete_bound(proc, schedule)
    # The bound is on the oracle-driven model's own NLL, so on average over the data it is
    # >= the entropy (cross-entropy >= entropy).
    assert float((P * bound).sum()) >= ENTROPY - 1e-9
    if isinstance(proc, Absorb) and isinstance(schedule, Quench):
        assert torch.allclose(bound, NLL, atol=1e-9)


def test_more_steps_tighten_the_absorb_flat_bound():
    gaps = [float((P * exact_discrete_bound(Absorb(N), Flat(steps=T))).sum()) - ENTROPY for T in (1, 2, 4, 8)]
    assert all(a > b for a, b in zip(gaps, gaps[1:])) and gaps[-1] > 0
