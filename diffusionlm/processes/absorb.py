"""Absorb (masked diffusion, MDM / MDLM).

Forward: keep a token with probability alpha(l), else MASK. Between levels l' < l a kept token
is masked with probability 1 - alpha(l) / alpha(l'); MASK stays MASK.

Loss at a masked position, against -log p_theta(y | x):
    one step l -> l' (discrete hyperschedule):  T * (alpha(l') - alpha(l)) / (1 - alpha(l))
    continuous time (l ~ U(0, 1)):              -alpha'(l) / (1 - alpha(l))   (= 1/l for linear alpha)
Both are exact terms of the NLL upper bound: the step weight is KL(q(x_s | x_t, y) || p_theta)
at a masked position (the weight times -log p_theta(y)), and the continuous weight its limit.

The bound's one-step KL in closed form (`step_kl`, what the likelihood estimator sums): a masked
position moving l -> l' stays MASK with probability (1 - alpha(l')) / (1 - alpha(l)) under the
true posterior and the model's alike, and otherwise reveals y (true) or a draw of p_theta (model),
so KL = w (-log p_theta(y)) with w = (alpha(l') - alpha(l)) / (1 - alpha(l)); a kept token stays
under both (KL 0). Equal to the generic [B, d, V] posterior KL of `Process.step_kl` (tested), in
O(B d) memory after the log-softmax instead of several float64 [B, d, V] tensors.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

from ..schedules.noise import Linear, NoiseSchedule
from .base import Corruption, Process, mc_weight, real_token_nll

__all__ = ["Absorb"]


class Absorb(Process):
    name = "absorb"
    likelihood = True
    time_conditioned = False

    def __init__(self, vocab_size: int, mask_id: Optional[int] = None, noise: Optional[NoiseSchedule] = None):
        super().__init__(vocab_size, vocab_size if mask_id is None else mask_id, noise or Linear())

    def event_probs(self, level_from: Tensor, level_to: Tensor) -> tuple[Tensor, Tensor]:
        p_mask = 1.0 - self._keep_ratio(level_from, level_to)
        return p_mask, torch.zeros_like(p_mask)

    def token_weight(self, level: Tensor, draw=None) -> Tensor:
        """The loss's weight of a masked position (module docstring: the step weight times the
        draw's Monte-Carlo weight; the continuous weight when `draw` has no next level)."""
        if draw is None or draw.next_level is None:
            a, da = self.noise.alpha(level), self.noise.alpha_prime(level)
            return -da / (1.0 - a).clamp_min(1e-12)
        a_t, a_s = self.noise.alpha(draw.level), self.noise.alpha(draw.next_level)
        return (a_s - a_t) / (1.0 - a_t).clamp_min(1e-12) * mc_weight(draw)

    def loss(self, logits: Tensor, x0: Tensor, corruption: Corruption, level: Tensor, draw=None) -> Tensor:
        self._check_loss(logits, x0, corruption, level)
        nll = real_token_nll(logits, x0, self.vocab_size)
        return torch.where(corruption.masked, self.token_weight(level, draw).to(nll.dtype) * nll, torch.zeros_like(nll))

    def continuous_bound(self, logits: Tensor, x0: Tensor, corruption: Corruption, level: Tensor) -> Tensor:
        return self.loss(logits, x0, corruption, level, None)

    def step_kl(self, logits: Tensor, x0: Tensor, x_t: Tensor, level_t: Tensor, level_s: Tensor) -> Tensor:
        """KL(q(x_s | x_t, x0) || p_theta(x_s | x_t)) per position, [B, d] float64 (module docstring)."""
        self._check_clean(logits, x0)
        self._check_step(x_t, level_t, level_s, x0)
        a_t, a_s = self.noise.alpha(level_t.double()), self.noise.alpha(level_s.double())
        w = (a_s - a_t) / (1.0 - a_t).clamp_min(1e-300)
        # a clean token of probability 0 (or undefined: an oracle's impossible state) costs
        # -log(1e-300), as the generic KL's clamp has it
        cap = -math.log(1e-300)
        nll = real_token_nll(logits.double(), x0, self.vocab_size).nan_to_num(nan=cap, posinf=cap).clamp_max(cap)
        moves = (x_t == self.mask_id) & (level_t.double() > level_s.double())
        return torch.where(moves, w * nll, torch.zeros_like(nll))
