"""ReMDM: re-masking ancestral sampling for Absorb (Wang et al. 2025, "Remasking Discrete Diffusion
Models with Inference-Time Scaling"), under any hyperschedule.

    ReMDM(eta=0.02, schedule="cap", steps=None, rate=None, cache=True, dtype=torch.float64)

At step k every active position i moves from level l_t = l[k-1, i] to l_s = l[k, i]; with
a_t = alpha(l_t), a_s = alpha(l_s) the ReMDM posterior (the paper's eq. 6 with the model's
clean-token prediction x_theta) is

    decoded z_t = y:   z_s = y with prob 1 - sigma,   MASK with prob sigma
    z_t = MASK:        z_s ~ x_theta with prob (a_s - (1 - sigma) a_t) / (1 - a_t),  else MASK

whose marginals are the forward process's q(z_s | y) for every sigma in [0, sigma_max],
sigma_max = min(1, (1 - a_s) / a_t) (1 where a_t = 0). sigma = 0 is MDLM. The remasking schedule:

    "cap"      sigma = min(eta, sigma_max)   (ReMDM-cap; eta in [0, 1])
    "rescale"  sigma = eta * sigma_max       (ReMDM-rescale; eta in [0, 1])

At a position's last step a_s = 1, so sigma_max = 0 and every MASK unmasks: the output never
holds MASK. A re-masked token is predicted again at a later step, so more steps buy quality
(the paper's inference-time scaling): with few steps sigma_max is large and remasking undoes
progress; with many it revisits early mistakes. Fixed positions are never active, never remasked.

The draw uses the same random numbers as MDLM (one categorical over the posterior, then MDLM's
two uniforms per position), so ReMDM(eta=0) gives MDLM's samples for the same seed.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Optional

import torch
from torch import Tensor

from .base import categorical
from .driver import Step, StepFn, unit_interval
from .mdlm import StepsSampler, clean_confidence

__all__ = ["ReMDM", "remask_step", "remask_sigma", "remask_posterior", "REMASK_SCHEDULES"]

REMASK_SCHEDULES = ("cap", "rescale")


def remask_sigma(a_t: Tensor, a_s: Tensor, eta: float, schedule: str) -> Tensor:
    """sigma per position (module docstring), in [0, sigma_max]."""
    sigma_max = torch.where(a_t > 0, ((1.0 - a_s) / a_t.clamp_min(1e-300)).clamp(0.0, 1.0), torch.ones_like(a_t))
    if schedule == "cap":
        return sigma_max.clamp(max=eta)
    return eta * sigma_max


def remask_posterior(x_t: Tensor, a_t: Tensor, a_s: Tensor, sigma: Tensor, clean_probs: Tensor, mask_id: int, vocab: int) -> Tensor:
    """p(z_s | z_t) [..., vocab] float64 of the module docstring; clean_probs [..., N] is x_theta."""
    n = clean_probs.shape[-1]
    is_mask = x_t == mask_id
    unmask = torch.where(a_t < 1, (a_s - (1.0 - sigma) * a_t) / (1.0 - a_t).clamp_min(1e-300), torch.ones_like(a_t))
    unmask = unmask.clamp(0.0, 1.0)
    keep = torch.nn.functional.one_hot(x_t.clamp(max=n - 1), n).double() * (1.0 - sigma)[..., None]
    post = torch.zeros(*x_t.shape, vocab, dtype=torch.float64, device=clean_probs.device)
    post[..., :n] = torch.where(is_mask[..., None], unmask[..., None] * clean_probs.double(), keep)
    post[..., mask_id] = torch.where(is_mask, 1.0 - unmask, sigma)
    return post


def remask_step(process: Any, eta: float, schedule: str, dtype: torch.dtype = torch.float64) -> StepFn:
    """The ReMDM step function for the driver."""

    def step_fn(step: Step, generator: Optional[torch.Generator]) -> tuple[Tensor, Tensor]:
        cols = step.cols
        x_t = step.x[:, cols]
        a_t = process.noise.alpha(step.level_t[:, cols].double())
        a_s = process.noise.alpha(step.level_s[:, cols].double())
        p = process.clean_probs(step.logits)  # [B, A, N] float64
        sigma = remask_sigma(a_t, a_s, eta, schedule)
        post = remask_posterior(x_t, a_t, a_s, sigma, p, process.mask_id, process.model_vocab_size)
        new = categorical(post, generator, dtype)
        torch.rand(new.shape + (2,), generator=generator, dtype=torch.float64)  # MDLM's uniforms (module docstring)
        return new, clean_confidence(p, new)

    return step_fn


@dataclass
class ReMDM(StepsSampler):
    """Re-masking ancestral sampler for Absorb (module docstring)."""

    name: ClassVar[str] = "remdm"
    eta: float = 0.02
    schedule: str = "cap"

    def __post_init__(self) -> None:
        self.eta = unit_interval(self.eta, "ReMDM eta")
        if self.schedule not in REMASK_SCHEDULES:
            raise ValueError(f"ReMDM schedule must be one of {REMASK_SCHEDULES}, got {self.schedule!r}")
        super().__post_init__()

    def check_fits(self, lm: Any) -> None:
        super().check_fits(lm)
        if getattr(lm.process, "name", None) != "absorb":
            raise ValueError(
                f"ReMDM's re-masking posterior is Absorb's (keep or MASK); {lm.process!r} is not Absorb "
                "(use MDLM or ACS)"
            )

    def step_fn(self, lm: Any) -> StepFn:
        return remask_step(lm.process, self.eta, self.schedule, self.dtype)
