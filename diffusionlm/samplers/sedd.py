"""SEDD samplers for score-entropy processes (Uniform, GammaHybrid): analytic (tau-leaping) and Euler.

    SEDDAnalytic(steps=None, rate=None, cache=True, dtype=torch.float64)
    SEDDEuler(steps=None, rate=None, cache=True, dtype=torch.float64)

Both run the lm's hyperschedule through the shared driver (per-position levels; `steps` / `rate`
retime it, and the continuous-time Flat() needs `steps`).

SEDDAnalytic. SEDD's analytic sampler ("Tweedie tau-leaping") moves x_t to x_s with

    p(x_s | x_t) ∝ [exp(-(sigma_bar(t) - sigma_bar(s)) Q)]^T(x_t, x_s) * [exp(sigma_bar(t) Q) s_theta(x_t)](x_s)

With the scores in mean parametrisation, s_theta(x_t)_z = sum_y p_theta(y | x_t) q_t(z | y) / q_t(x_t | y),
this is exactly the posterior of the structured transition under the model's clean-token
distribution,

    p(x_s | x_t) = T_{s->t}(x_t | x_s) sum_y p_theta(y) q_s(x_s | y) / q_t(x_t | y)
                 = process.posterior_probs(x_t, l_t, l_s, clean_probs(logits))

so SEDDAnalytic is that step, computed in O(N) per position with the exact marginals (no matrix
exponentials). It fits GammaHybrid, Uniform and Absorb (SEDD-absorb); the last level is 0, where
the posterior is the clean-token prediction itself (SEDD's final "denoise" step).

SEDDEuler. One Euler step of the reverse CTMC from level l_t to l_s = l_t - dt: the reverse rate
of jumping x -> z at level l is sigma_bar'(l) Q[x, z] s_z, i.e. the forward rate of z -> x times
the score s_z = p_l(z) / p_l(x), with the scores from the model's clean probabilities p exactly
as in `GammaHybrid.dwdse` (m, k, u the level-l marginals):

    x = MASK:   rate to real z   (1 - gamma) * (u + p_z (k - u)) / m
    x = real a: rate to real b   (gamma / N) * (p_a u / k + p_b k / u + (1 - p_a - p_b)),  b != a

(a real token never jumps to MASK). Jump probabilities are dt * sigma_bar'(l_t) * rate; the
stay probability 1 - sum is clipped at 0 (the jumps are then renormalised, as in SEDD's
reference code). The step into level 0 (each position's last step) is SEDD's final denoising
step: the analytic posterior to level 0, so no MASK is ever emitted. Euler fits GammaHybrid and
Uniform only.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Optional

import torch
from torch import Tensor

from ..processes.absorb import Absorb
from ..processes.hybrid import GammaHybrid
from .base import categorical
from .driver import Step, StepFn
from .mdlm import StepsSampler, clean_confidence

__all__ = ["SEDDAnalytic", "SEDDEuler", "euler_probs", "euler_step"]


def euler_probs(process: GammaHybrid, x_t: Tensor, level_t: Tensor, level_s: Tensor, clean_probs: Tensor) -> Tensor:
    """Distribution [..., V] (float64) of x_s after one Euler step of the reverse CTMC from
    level_t to level_s (module docstring); the analytic posterior where level_s = 0."""
    n, V = process.vocab_size, process.model_vocab_size
    mask_id, gamma = process.mask_id, process.gamma
    p = clean_probs.double()
    lt, ls = level_t.double(), level_s.double()
    lv = torch.where(lt > 0, lt, torch.ones_like(lt))
    m, k, u = (t.double()[..., None] for t in process.marginal(lv))
    sig = process.noise.sigma_bar_prime(lv).double()
    is_mask = x_t == mask_id if mask_id is not None else torch.zeros_like(x_t, dtype=torch.bool)
    a = torch.where(is_mask, torch.zeros_like(x_t), x_t).clamp(max=n - 1)
    p_a = p.gather(-1, a[..., None])
    tiny = 1e-300
    s_real = p_a * (u / k.clamp_min(tiny)) + p * (k / u.clamp_min(tiny)) + (1.0 - p_a - p).clamp_min(0.0)
    rate = ((gamma / n) * s_real).scatter(-1, a[..., None], 0.0)  # no jump a -> a
    if mask_id is not None:
        s_mask = (u + p * (k - u)) / m.clamp_min(tiny)
        rate = torch.where(is_mask[..., None], (1.0 - gamma) * s_mask, rate)
    jump = ((lt - ls) * sig)[..., None] * rate
    finite = torch.isfinite(jump)
    bad = ~finite.all(-1)  # degenerate rates (e.g. a noise schedule with eps = 0, at level 1)
    jump = torch.where(finite, jump, torch.zeros_like(jump))
    probs = torch.zeros(*x_t.shape, V, dtype=torch.float64, device=p.device)
    probs[..., :n] = jump
    stay = (1.0 - jump.sum(-1)).clamp_min(0.0)
    probs.scatter_(-1, x_t[..., None], stay[..., None])
    analytic = (ls == 0) | bad
    if bool(analytic.any()):
        post = process.posterior_probs(x_t, lt, ls, p)
        probs = torch.where(analytic[..., None], post, probs)
    return probs / probs.sum(-1, keepdim=True).clamp_min(1e-300)


def euler_step(process: GammaHybrid, dtype: torch.dtype = torch.float64) -> StepFn:
    """The SEDD Euler step function for the driver (`euler_probs`, then one categorical draw)."""

    def step_fn(step: Step, generator: Optional[torch.Generator]) -> tuple[Tensor, Tensor]:
        cols = step.cols
        p = process.clean_probs(step.logits)  # [B, A, N] float64
        probs = euler_probs(process, step.x[:, cols], step.level_t[:, cols], step.level_s[:, cols], p)
        new = categorical(probs, generator, dtype)
        return new, clean_confidence(p, new)

    return step_fn


@dataclass
class SEDDAnalytic(StepsSampler):
    """SEDD's analytic (tau-leaping) sampler = the exact structured posterior under mean
    parametrisation, `process.posterior_probs` (module docstring): StepsSampler's ancestral step."""

    name: ClassVar[str] = "sedd_analytic"

    def check_fits(self, lm: Any) -> None:
        if not isinstance(lm.process, (GammaHybrid, Absorb)):
            raise ValueError(
                f"SEDDAnalytic fits the score-entropy processes Uniform / GammaHybrid (and Absorb), "
                f"not {lm.process!r}"
            )


@dataclass
class SEDDEuler(StepsSampler):
    """Euler steps of the reverse CTMC with SEDD's scores (module docstring)."""

    name: ClassVar[str] = "sedd_euler"

    def check_fits(self, lm: Any) -> None:
        if not isinstance(lm.process, GammaHybrid):
            raise ValueError(f"SEDDEuler fits the score-entropy processes Uniform / GammaHybrid, not {lm.process!r}")

    def step_fn(self, lm: Any) -> StepFn:
        return euler_step(lm.process, self.dtype)
