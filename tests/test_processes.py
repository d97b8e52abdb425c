"""Closed forms of every likelihood process against brute force (expm, Bayes, dense DWDSE, sampling)."""
import math

import pytest
import scipy.linalg
import torch
import torch.nn.functional as F

from diffusionlm.processes import Absorb, EpsilonHybrid, GammaHybrid, Uniform, process
from diffusionlm.schedules import Cosine, Linear, LogLinear

torch.set_default_dtype(torch.float32)


def dense_rates(n: int, gamma: float, with_mask: bool) -> torch.Tensor:
    """Dense Q[to, from] = (1 - gamma) Q_A + gamma Q_U over n real tokens (+ MASK last)."""
    V = n + int(with_mask)
    QA = torch.zeros(V, V, dtype=torch.float64)
    if with_mask:
        QA[n, :n] = 1.0
        QA[torch.arange(n), torch.arange(n)] = -1.0
    QU = torch.zeros(V, V, dtype=torch.float64)
    QU[:n, :n] = 1.0 / n
    QU[torch.arange(n), torch.arange(n)] -= 1.0
    return (1 - gamma) * QA + gamma * QU


def expm(M: torch.Tensor) -> torch.Tensor:
    return torch.from_numpy(scipy.linalg.expm(M.numpy()))


PROCS = [
    lambda n: Absorb(n),
    lambda n: Absorb(n, noise=Cosine()),
    lambda n: Uniform(n),
    lambda n: GammaHybrid(n, 0.05),
    lambda n: GammaHybrid(n, 0.5, noise=Linear(1e-3)),
    lambda n: EpsilonHybrid(n, 0.1, 0.7),
]


@pytest.mark.parametrize("n", [2, 3, 5, 8])
@pytest.mark.parametrize("gamma", [0.01, 0.3, 0.5, 0.9])
@pytest.mark.parametrize("levels", [(0.0, 0.2), (0.1, 0.5), (0.4, 0.95), (0.0, 1.0)])
def test_gamma_hybrid_operator_equals_expm(n, gamma, levels):
    p = GammaHybrid(n, gamma)
    lf, lt = (torch.tensor(v, dtype=torch.float64) for v in levels)
    delta = float(p.noise.sigma_bar(lt) - p.noise.sigma_bar(lf))
    Q = dense_rates(n, gamma, with_mask=True)
    brute = expm(delta * Q)
    assert torch.allclose(p.transition_matrix(*levels), brute, atol=1e-12)
    # the paper's closed form (appendix A, eq. 7g) as written in DESIGN.md
    QA = dense_rates(n, 0.0, True)
    QU = dense_rates(n, 1.0, True)
    closed = torch.eye(n + 1, dtype=torch.float64) + (1 - math.exp(-(1 - gamma) * delta)) * QA + (
        math.exp(-(1 - gamma) * delta) - math.exp(-delta)
    ) * QU
    assert torch.allclose(closed, brute, atol=1e-12)


@pytest.mark.parametrize("n", [2, 4, 7])
@pytest.mark.parametrize("levels", [(0.0, 0.3), (0.25, 0.8)])
def test_absorb_and_uniform_operators_equal_expm(n, levels):
    for proc, gamma, with_mask in [(Absorb(n, noise=LogLinear()), 0.0, True), (Uniform(n), 1.0, False)]:
        lf, lt = (torch.tensor(v, dtype=torch.float64) for v in levels)
        delta = float(proc.noise.sigma_bar(lt) - proc.noise.sigma_bar(lf))
        brute = expm(delta * dense_rates(n, gamma, with_mask))
        assert torch.allclose(proc.transition_matrix(*levels), brute, atol=1e-12)


@pytest.mark.parametrize("n", [3, 6])
def test_epsilon_hybrid_marginal_is_substitute_then_mask(n):
    p = EpsilonHybrid(n, 0.2, 1.0)
    for lv in [0.1, 0.5, 0.9]:
        a = float(p.noise.alpha(torch.tensor(lv)))
        QA, QU = dense_rates(n, 0.0, True), dense_rates(n, 1.0, True)
        eye = torch.eye(n + 1, dtype=torch.float64)
        brute = (eye + (1 - a) * QA) @ (eye + 0.2 * QU)  # substitute first, then mask (paper 3.2)
        assert torch.allclose(p.transition_matrix(0.0, lv), brute, atol=1e-12)
    assert torch.equal(p.transition_matrix(0.0, 0.0), torch.eye(n + 1, dtype=torch.float64))


@pytest.mark.parametrize("make", PROCS)
def test_chapman_kolmogorov(make):
    p = make(4)
    for l1, l2, l3 in [(0.0, 0.3, 0.7), (0.1, 0.5, 0.6), (0.2, 0.2, 0.9)]:
        direct = p.transition_matrix(l1, l3)
        composed = p.transition_matrix(l2, l3) @ p.transition_matrix(l1, l2)
        assert torch.allclose(direct, composed, atol=1e-12), (l1, l2, l3)
    # columns are distributions
    T = p.transition_matrix(0.0, 0.6)
    assert torch.allclose(T.sum(0), torch.ones(T.shape[0], dtype=torch.float64))


@pytest.mark.parametrize("make", PROCS)
def test_empirical_corruption_matches_marginal(make):
    """Frequencies of (MASK, same token, each other token) over 200k draws within 5 standard errors."""
    n = 5
    p = make(n)
    g = torch.Generator().manual_seed(1234)
    R = 200_000
    for lv in [0.15, 0.6, 0.95]:
        x0 = torch.randint(0, n, (R, 1), generator=g)
        c = p.corrupt(x0, torch.full((R, 1), lv), generator=g)
        probs = p.marginal_probs(x0[:1], torch.tensor([[lv]]))[0, 0]  # y = x0[0]
        rows = x0[:, 0] == x0[0, 0]
        ids = c.ids[rows, 0]
        emp = torch.bincount(ids, minlength=p.model_vocab_size).double() / ids.numel()
        se = (probs * (1 - probs) / ids.numel()).sqrt()
        assert ((emp - probs).abs() <= 5 * se + 1e-9).all(), (lv, emp, probs)
        # event flags agree with the ids
        assert torch.equal(c.masked, c.ids == p.mask_id) if p.mask_id is not None else not c.masked.any()
        if isinstance(p, Absorb):
            assert not c.substituted.any()


def test_substitution_event_rate():
    p = EpsilonHybrid(7, 0.3, 1.0)
    g = torch.Generator().manual_seed(0)
    x0 = torch.randint(0, 7, (100_000, 2), generator=g)
    c = p.corrupt(x0, torch.full((100_000, 2), 0.4), generator=g)
    alpha = 0.6
    expected = 0.3 * alpha  # substituted and then not masked
    emp = c.substituted.double().mean().item()
    se = math.sqrt(expected * (1 - expected) / x0.numel())
    assert abs(emp - expected) < 5 * se
    # level 0 is clean
    c0 = p.corrupt(x0, torch.zeros(100_000, 2), generator=g)
    assert torch.equal(c0.ids, x0)


def brute_posterior(p, xt, lt, ls, clean):
    """sum_y clean(y) q(x_s | x_t, y) by Bayes on dense matrices."""
    T = p.transition_matrix(ls, lt)
    M = p.transition_matrix(0.0, ls)  # q_s(a | y) = M[a, y]
    out = torch.zeros(p.model_vocab_size, dtype=torch.float64)
    for y in range(p.vocab_size):
        joint = T[xt, :] * M[:, y]
        if joint.sum() > 0:
            out += clean[y] * joint / joint.sum()
    return out


@pytest.mark.parametrize("make", PROCS)
def test_posterior_matches_bayes(make):
    n = 4
    p = make(n)
    g = torch.Generator().manual_seed(3)
    for lt, ls in [(0.9, 0.5), (0.5, 0.0), (1.0, 0.7), (0.3, 0.29)]:
        for xt in range(p.model_vocab_size):
            if xt >= n and xt != p.mask_id:
                continue
            clean = torch.softmax(torch.randn(n, generator=g, dtype=torch.float64), 0)
            want = brute_posterior(p, xt, lt, ls, clean)
            if want.sum() == 0:  # x_t impossible at this level
                continue
            got = p.posterior_probs(torch.tensor([[xt]]), torch.tensor([[lt]]), torch.tensor([[ls]]), clean[None, None])
            assert torch.allclose(got[0, 0], want / want.sum(), atol=1e-10), (lt, ls, xt)


def test_absorb_step_kl_is_weighted_cross_entropy():
    p = Absorb(6)
    g = torch.Generator().manual_seed(0)
    x0 = torch.randint(0, 6, (3, 10), generator=g)
    lt, ls = torch.full((3, 10), 0.8), torch.full((3, 10), 0.3)
    c = p.corrupt(x0, lt, generator=g)
    logits = torch.randn(3, 10, 7, generator=g, dtype=torch.float64)
    kl = p.step_kl(logits, x0, c.ids, lt, ls)
    w = (0.8 - 0.3) / 0.8  # (alpha_s - alpha_t) / (1 - alpha_t), linear alpha
    ce = -torch.log_softmax(logits[..., :6], -1).gather(-1, x0[..., None])[..., 0]
    assert torch.allclose(kl, torch.where(c.masked, w * ce, 0.0), atol=1e-10)

    class Draw:  # a one-step draw with T = 1
        level, next_level, num_steps = lt, ls, 1

    assert torch.allclose(p.loss(logits, x0, c, lt, Draw).double(), kl, atol=1e-6)
    # continuous weight -alpha'/(1 - alpha) = 1/l for linear alpha
    cont = p.loss(logits, x0, c, lt)
    assert torch.allclose(cont.double(), torch.where(c.masked, ce / 0.8, 0.0), atol=1e-5)


def dense_dwdse(p, logits, y, xt, lv):
    """Score entropy by dense matrices: rates from the dense Q, ratios from expm marginals."""
    n, V = p.vocab_size, p.model_vocab_size
    Q = dense_rates(n, p.gamma, p.mask_id is not None)
    marg = expm(float(p.noise.sigma_bar(torch.tensor(lv, dtype=torch.float64))) * Q)  # [to, from]
    pr = torch.softmax(logits[:n].double(), 0)
    total = 0.0
    for z in range(V):
        if z == xt or Q[xt, z] == 0:
            continue
        s = sum(pr[c] * marg[z, c] / marg[xt, c] for c in range(n))
        r = marg[z, y] / marg[xt, y]
        K = r * (math.log(r) - 1) if r > 0 else 0.0
        total += Q[xt, z] * (s - r * math.log(s) + K)
    return float(total)


@pytest.mark.parametrize("make", [lambda n: Uniform(n), lambda n: GammaHybrid(n, 0.2), lambda n: GammaHybrid(n, 0.7)])
@pytest.mark.parametrize("n", [3, 6])
def test_structured_dwdse_equals_dense(make, n):
    p = make(n)
    g = torch.Generator().manual_seed(5)
    for lv in [0.05, 0.4, 0.97]:
        for y in range(n):
            for xt in range(p.model_vocab_size):
                logits = torch.randn(p.model_vocab_size, generator=g, dtype=torch.float64)
                got = p.dwdse(logits[None, None], torch.tensor([[y]]), torch.tensor([[xt]]), torch.tensor([[lv]], dtype=torch.float64))
                want = dense_dwdse(p, logits, y, xt, lv)
                assert math.isclose(float(got), want, rel_tol=1e-9, abs_tol=1e-9), (lv, y, xt, float(got), want)


def test_dwdse_minimised_by_true_ratios():
    """Score entropy is >= 0 and is 0 exactly when the scores are the true ratios (oracle p = delta_y)."""
    p = GammaHybrid(4, 0.3)
    y = torch.tensor([[2]])
    exact = F.one_hot(y, 5).double() * 60 - 30  # p = delta_y to float64 precision
    for xt in [2, 4, 0]:
        v = p.dwdse(exact, y, torch.tensor([[xt]]), torch.tensor([[0.5]], dtype=torch.float64))
        assert abs(float(v)) < 1e-9
        other = p.dwdse(torch.zeros(1, 1, 5, dtype=torch.float64), y, torch.tensor([[xt]]), torch.tensor([[0.5]], dtype=torch.float64))
        assert float(other) > 1e-3


def test_prior_kl_closed_form():
    for p in [Absorb(5), Absorb(5, noise=LogLinear()), Uniform(5), GammaHybrid(5, 0.1), EpsilonHybrid(5, 0.1)]:
        q1 = p.marginal_probs(torch.tensor([0]), torch.tensor([1.0]))[0]
        prior = sum(p.marginal_probs(torch.tensor([y]), torch.tensor([1.0]))[0] for y in range(5)) / 5
        nz = q1 > 0
        brute = (q1[nz] * (q1[nz] / prior[nz]).log()).sum()
        assert torch.allclose(p.prior_kl(), brute, atol=1e-12), p
    assert float(Absorb(5).prior_kl()) == 0.0  # linear alpha: the all-MASK prior is exact


def test_prior_draws():
    g = torch.Generator().manual_seed(0)
    assert (Absorb(5).prior((4, 8), generator=g) == 5).all()
    u = Uniform(5).prior((2000,), generator=g)
    assert u.max() < 5 and torch.bincount(u, minlength=5).min() > 300


def test_config_round_trip():
    import json

    for p in [Absorb(9, noise=Cosine(0.01)), Uniform(9), GammaHybrid(9, 0.05), EpsilonHybrid(9, 0.02, 0.5)]:
        q = process(json.loads(json.dumps(p.config())))
        assert type(q) is type(p) and q.config() == p.config()


def test_bad_input_errors():
    with pytest.raises(ValueError, match="gamma"):
        GammaHybrid(5, 1.5)
    with pytest.raises(ValueError, match="gamma"):
        GammaHybrid(5, 0.0)
    with pytest.raises(ValueError, match="epsilon"):
        EpsilonHybrid(5, 1.2)
    with pytest.raises(ValueError, match="lam"):
        EpsilonHybrid(5, 0.1, -1.0)
    with pytest.raises(ValueError, match="collides"):
        Absorb(5, mask_id=3)
    with pytest.raises(ValueError, match="vocab_size"):
        Absorb(1)
    p = Absorb(5)
    with pytest.raises(ValueError, match=r"out of range.*\[0, 4\]"):
        p.corrupt(torch.tensor([[0, 5]]), torch.tensor([[0.5, 0.5]]))
    with pytest.raises(ValueError, match="levels must lie in"):
        p.corrupt(torch.tensor([[0, 1]]), torch.tensor([[0.5, 1.5]]))
    with pytest.raises(ValueError, match="levels must lie in"):
        p.corrupt(torch.tensor([[0, 1]]), torch.tensor([[-0.1, 0.5]]))
    with pytest.raises(ValueError, match="does not fit"):
        p.check_model_vocab(5)
    p.check_model_vocab(6)
    with pytest.raises(ValueError, match="unknown process"):
        process({"name": "nope"})
