"""EpsilonHybrid(epsilon, lam): substitute once, then mask (hyperschedules paper, section 3.2).

Forward, for l > 0: substitute a uniform real token with probability epsilon, then mask with
probability 1 - alpha(l); at l = 0 the token is clean. Between two positive levels only masking
happens, so the process is Markov and the shared posterior maths of `Process` applies
(the one jump is the substitution, on leaving level 0).

HDCE training loss (paper eq. 8-9), per token, against -log p_theta(y | x), p_mask = 1 - alpha(l):
    masked                    1 / p_mask
    unmasked, substituted     lam (1 - epsilon) / (1 - p_mask)
    unmasked, kept            lam epsilon / (1 - p_mask)
summed and divided by B * d by the composition: one normalisation under every hyperschedule.
HDCE is a surrogate; the reported likelihood comes from the discrete-step bound (`step_kl`):
unmasking terms against the epsilon-mixed clean token, plus the clean-up step to level 0.

The clean-up term of a position (its step from a positive level to 0, where an unmasked and
possibly substituted token becomes y: -log p_theta(y | x) at every unmasked position) dominates
the bound whenever the denoiser is not sure its visible tokens are clean; under Flat(T) all of it
sits in the last step. `exact_terms` marks those (step, position) pairs, and the NLL bound
estimator (`diffusionlm.eval.bound`) computes every step holding one exactly, on its own line
``clean-up``, instead of drawing it with probability 1/T.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from ..schedules.noise import Linear, NoiseSchedule
from .base import Corruption, Process, real_token_nll

__all__ = ["EpsilonHybrid"]


class EpsilonHybrid(Process):
    name = "epsilon_hybrid"
    likelihood = True
    time_conditioned = False

    def __init__(
        self,
        vocab_size: int,
        epsilon: float = 0.01,
        lam: float = 1.0,
        mask_id: Optional[int] = None,
        noise: Optional[NoiseSchedule] = None,
    ):
        if not 0.0 < epsilon < 1.0:
            raise ValueError(f"epsilon must be in (0, 1), got {epsilon}")
        if not lam >= 0.0:
            raise ValueError(f"lam must be >= 0, got {lam}")
        super().__init__(vocab_size, vocab_size if mask_id is None else mask_id, noise or Linear())
        self.epsilon, self.lam = float(epsilon), float(lam)

    def event_probs(self, level_from: Tensor, level_to: Tensor) -> tuple[Tensor, Tensor]:
        p_mask = 1.0 - self._keep_ratio(level_from, level_to)
        leaves_clean = (level_from == 0) & (level_to > 0)
        p_sub = torch.where(leaves_clean, torch.full_like(p_mask, self.epsilon), torch.zeros_like(p_mask))
        return p_mask, p_sub

    #: the name of the bound's line holding the steps `exact_terms` marks
    exact_term_name = "clean-up"

    def exact_terms(self, level_t: Tensor, level_s: Tensor) -> Tensor:
        """Where the step level_t -> level_s holds a clean-up term (a position leaving a positive
        level for 0): bool, the shape of the levels."""
        return (level_t > 0) & (level_s == 0)

    def loss(self, logits: Tensor, x0: Tensor, corruption: Corruption, level: Tensor, draw=None) -> Tensor:
        self._check_loss(logits, x0, corruption, level)
        nll = real_token_nll(logits, x0, self.vocab_size)
        p_mask = (1.0 - self.noise.alpha(level)).to(nll.dtype)
        keep = (1.0 - p_mask).clamp_min(1e-12)
        w = torch.where(
            corruption.masked,
            1.0 / p_mask.clamp_min(1e-12),
            torch.where(corruption.substituted, self.lam * (1 - self.epsilon) / keep, self.lam * self.epsilon / keep),
        )
        return torch.where(level > 0, w * nll, torch.zeros_like(nll))
