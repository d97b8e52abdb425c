"""GammaHybrid(gamma) and Uniform: SEDD-style processes trained by score entropy.

Rate matrix Q = (1 - gamma) Q_Absorb + gamma Q_Uniform (Q[to, from]); Uniform is gamma = 1 with
no MASK. Q_Absorb and Q_Uniform commute (paper, appendix A), so with D = sigma_bar(l) -
sigma_bar(l'):

    exp(D Q) = 1 + (1 - e^{-(1-gamma) D}) Q_A + (e^{-(1-gamma) D} - e^{-D}) Q_U

i.e. a real token is masked with probability 1 - e^{-(1-gamma) D} and, if not, redrawn
uniformly with probability 1 - e^{-gamma D}. With e^{-D} = alpha(l) / alpha(l') this is
`event_probs`.

DWDSE (diffusion-weighted denoising score entropy, Lou et al. 2024), per position, times
d sigma_bar / d l:

    sum_{z != x} Q[x, z] (s_z - r_z log s_z + K(r_z)),   K(r) = r (log r - 1),
    r_z = q_l(z | y) / q_l(x | y)                 (exact marginals: k, u, m of `marginal`)

x = MASK sums over real z with rate 1 - gamma; x = real a over real b != a with rate gamma / N.
Scores come from the model's clean-token distribution p (mean parametrisation), exactly:

    s_z = sum_c p(c) q_l(z | c) / q_l(x | c)
        x = MASK:  s_z = (u + p_z (k - u)) / m
        x = a:     s_b = p_a u / k + p_b k / u + (1 - p_a - p_b)

so an oracle p gives the true ratios. Everything is O(N) per position.

Weighted token embedding (hyperschedules paper, appendix B.5, eq. 12), `weighted_embedding=True`:
a real input token at level l was left unperturbed by the uniform part with probability
e^{-gamma sigma_bar(l)}, so the backbone embeds it as

    w f(x) + (1 - w) f(MASK),   w = e^{-gamma sigma_bar(l)} = (e^{-sigma_bar(l)})^gamma

`embedding_weight(level)` gives w per position (1 at level 0); the composition (`DiffusionLM`:
training loss and bound) and the samplers' driver pass it to the backbone as `embedding_weight`
on every call, whenever the process asks for it (None otherwise).
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from ..schedules.noise import LogLinear, NoiseSchedule
from .base import Corruption, Process, mc_weight

__all__ = ["GammaHybrid", "Uniform"]


def _K(r: Tensor) -> Tensor:
    return torch.where(r > 0, r * (torch.log(r.clamp_min(1e-300)) - 1.0), torch.zeros_like(r))


class GammaHybrid(Process):
    name = "gamma_hybrid"
    likelihood = True
    time_conditioned = True
    continuous_time_loss = True

    def __init__(
        self,
        vocab_size: int,
        gamma: float = 0.01,
        mask_id: Optional[int] = None,
        noise: Optional[NoiseSchedule] = None,
        weighted_embedding: bool = False,
        _uniform: bool = False,
    ):
        if _uniform:
            gamma = 1.0
        elif not 0.0 < gamma < 1.0:
            raise ValueError(f"gamma must be in (0, 1), got {gamma}")
        if not isinstance(weighted_embedding, bool):
            raise ValueError(f"weighted_embedding must be True or False, got {weighted_embedding!r}")
        if weighted_embedding and _uniform:
            raise ValueError("Uniform has no MASK: the eq. 12 weighted embedding mixes in f(MASK)")
        super().__init__(vocab_size, None if _uniform else (vocab_size if mask_id is None else mask_id), noise or LogLinear())
        self.gamma = float(gamma)
        self.weighted_embedding = weighted_embedding

    def config(self) -> dict:
        return {
            "name": self.name, "vocab_size": self.vocab_size, "gamma": self.gamma,
            "mask_id": self.mask_id, "noise": self.noise.to_dict(), "weighted_embedding": self.weighted_embedding,
        }

    def embedding_weight(self, level: Tensor) -> Optional[Tensor]:
        """Eq. 12's w = e^{-gamma sigma_bar(l)} per position (float32, like `level`), or None when
        the process does not use the weighted embedding."""
        if not self.weighted_embedding:
            return None
        return self.noise.alpha(level.double()).clamp_min(0.0).pow(self.gamma).to(torch.float32)

    def event_probs(self, level_from: Tensor, level_to: Tensor) -> tuple[Tensor, Tensor]:
        ratio = self._keep_ratio(level_from, level_to)  # e^{-D}
        p_mask = 1.0 - ratio.pow(1.0 - self.gamma)
        p_sub = 1.0 - ratio.pow(self.gamma)
        return p_mask, p_sub

    # -- training levels: the continuous-time path inside a discrete step ----------------
    def training_level(self, draw, generator: Optional[torch.Generator] = None) -> Tensor:
        """Score entropy is a continuous-time objective: inside step l[k-1] -> l[k] draw the level
        uniformly on the segment, one fraction per sequence (weights follow in `loss`)."""
        if draw.next_level is None:
            return draw.level
        v = 1.0 - torch.rand(draw.level.shape[0], 1, generator=generator).to(draw.level.device)
        return draw.next_level + v * (draw.level - draw.next_level)

    def dwdse(self, logits: Tensor, x0: Tensor, x_t: Tensor, level: Tensor) -> Tensor:
        """Per-position score-entropy sum (not yet weighted by d sigma_bar / d l): [B, d]."""
        n = self.vocab_size
        dtype = logits.dtype if logits.dtype == torch.float64 else torch.float32
        moving = level > 0
        lv = torch.where(moving, level, torch.ones_like(level)).to(dtype)
        m, k, u = (t[..., None] for t in self.marginal(lv))
        logp = torch.log_softmax(logits[..., :n].to(dtype), dim=-1)
        p = logp.exp()
        y1 = F.one_hot(x0, n).bool()
        out = torch.zeros(x0.shape, dtype=dtype, device=logits.device)

        if self.mask_id is not None:
            is_mask = x_t == self.mask_id
            # x = MASK: s_z = (u + p_z (k - u)) / m, r_z = (k if z == y else u) / m.
            s = (u + p * (k - u)) / m
            r = torch.where(y1, k / m, u / m)
            term = s - r * torch.log(s.clamp_min(1e-300))
            const = _K(k / m) + (n - 1) * _K(u / m)
            mask_term = (1.0 - self.gamma) * (term.sum(-1) + const.squeeze(-1))
            out = torch.where(is_mask, mask_term, out)
        else:
            is_mask = torch.zeros_like(x0, dtype=torch.bool)

        # x = real a: over real b != a, s_b = p_a u/k + p_b k/u + (1 - p_a - p_b).
        a = torch.where(is_mask, torch.zeros_like(x_t), x_t).clamp(max=n - 1)
        a1 = F.one_hot(a, n).bool()
        logp_a = logp.gather(-1, a[..., None])
        log_uk, log_ku = torch.log(u) - torch.log(k), torch.log(k) - torch.log(u)
        rest = (1.0 - p.gather(-1, a[..., None]) - p).clamp_min(0.0)
        log_s = torch.logaddexp(logp_a + log_uk, logp + log_ku)
        log_s = torch.logaddexp(log_s, torch.log(rest.clamp_min(1e-300)))
        log_s = torch.where(rest > 0, log_s, torch.logaddexp(logp_a + log_uk, logp + log_ku))
        y_is_a = (x0 == a)[..., None]
        r = torch.where(y_is_a, u / k, torch.where(y1, k / u, torch.ones_like(p)))
        term = torch.exp(log_s) - r * log_s + _K(r)
        real_term = (self.gamma / n) * torch.where(a1, torch.zeros_like(term), term).sum(-1)
        out = torch.where(is_mask, out, real_term)
        return torch.where(moving, out, torch.zeros_like(out))

    def loss(self, logits: Tensor, x0: Tensor, corruption: Corruption, level: Tensor, draw=None) -> Tensor:
        """DWDSE at the corruption level, weighted by d sigma_bar / d l; inside a discrete step
        also by the step's level span and the Monte-Carlo step weight."""
        self._check_loss(logits, x0, corruption, level)
        lv = torch.where(level > 0, level, torch.ones_like(level))
        w = self.noise.sigma_bar_prime(lv)
        if draw is not None and draw.next_level is not None:
            w = w * (draw.level - draw.next_level) * mc_weight(draw)
        return w.to(logits.dtype if logits.dtype == torch.float64 else torch.float32) * self.dwdse(
            logits, x0, corruption.ids, level
        )

    def continuous_bound(self, logits: Tensor, x0: Tensor, corruption: Corruption, level: Tensor) -> Tensor:
        return self.loss(logits, x0, corruption, level, None)


class Uniform(GammaHybrid):
    """SEDD's uniform process: redraw uniformly from the N real tokens; no MASK."""

    name = "uniform"

    def __init__(self, vocab_size: int, noise: Optional[NoiseSchedule] = None):
        super().__init__(vocab_size, noise=noise, _uniform=True)

    def config(self) -> dict:
        return {"name": self.name, "vocab_size": self.vocab_size, "noise": self.noise.to_dict()}
