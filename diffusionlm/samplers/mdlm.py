"""MDLM ancestral sampling and the Adaptive Correction Sampler (ACS), under any hyperschedule.

    MDLM(steps=None, rate=None, cache=True, dtype=torch.float64)
    ACS(eta, steps=None, rate=None, cache=True, dtype=torch.float64)

    out = MDLM(steps=128).sample(lm, batch_size=4, length=128, generator=g)

Ancestral step (hyperschedules paper, appendix D, Algorithm 3 when the schedule is Flat), with
per-position levels: at step k every active position i draws

    x_s^i ~ p(x_s^i | x_t) = process.posterior_probs(x_t, l[k-1, i], l[k, i], clean_probs(logits))

the exact reverse step of the process given the model's clean-token distribution (mean
parametrisation). For Absorb that is: a MASK unmasks with probability
(alpha(l[k]) - alpha(l[k-1])) / (1 - alpha(l[k-1])) to a token drawn from the model, decoded
tokens stay. It works for every likelihood process (Absorb, EpsilonHybrid, GammaHybrid, Uniform).
The last level is 0, where the posterior puts no mass on MASK: the output never holds MASK.

`steps` runs the lm's hyperschedule in that many steps (`schedule.with_steps`; required for the
continuous-time Flat()), `rate` at that many tokens per step (`schedule.at_rate`); neither: the
schedule as it is.

ACS (Algorithm 4): as MDLM, and in addition every already-decoded (non-MASK, not fixed) active
position is redrawn from the model's clean-token prediction with probability
eta (1 - p_transfer), where p_transfer = 1 - m(l[k]) / m(l[k-1]) is the probability that MDLM
would unmask a MASK at that position in this step (m(l): the process's MASK probability at level
l). It works in both layouts (positions, not rows, are corrected) and under every hyperschedule;
at a position's last step p_transfer = 1, so corrections never leave MASK. The random numbers of
the corrections are drawn at every step by MDLM too, so ACS(eta=0) and MDLM give the same
samples for the same seed.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Optional

import torch
from torch import Tensor

from .base import SampleOutput, SampleRequest, Sampler, categorical
from .driver import Step, StepFn, check_dtype, check_steps, drive, inverse_cdf, resolve_schedule, unit_interval

__all__ = ["MDLM", "ACS", "LevelSampler", "StepsSampler", "ancestral_step", "clean_confidence"]


def clean_confidence(clean_probs: Tensor, ids: Tensor) -> Tensor:
    """The model's clean-token probability of `ids` (nan where an id is not a real token)."""
    n = clean_probs.shape[-1]
    real = ids < n
    c = clean_probs.gather(-1, ids.clamp(max=n - 1)[..., None]).squeeze(-1)
    return torch.where(real, c, torch.full_like(c, float("nan")))


def ancestral_step(process: Any, eta: float = 0.0, dtype: torch.dtype = torch.float64) -> StepFn:
    """The MDLM / ACS step function for the driver (eta = 0: MDLM)."""
    mask_id = process.mask_id

    def step_fn(step: Step, generator: Optional[torch.Generator]) -> tuple[Tensor, Tensor]:
        cols = step.cols
        x_t, lt, ls = step.x[:, cols], step.level_t[:, cols], step.level_s[:, cols]
        p = process.clean_probs(step.logits)  # [B, A, N] float64
        post = process.posterior_probs(x_t, lt, ls, p)
        new = categorical(post, generator, dtype)
        # ACS's coins and redraw uniforms: drawn always, so that eta = 0 is exactly MDLM
        extra = torch.rand(new.shape + (2,), generator=generator, dtype=torch.float64).to(new.device)
        if eta > 0 and mask_id is not None:
            decoded = (x_t != mask_id) & step.active[:, cols]
            m_t = process.marginal(lt)[0].double()
            m_s = process.marginal(ls)[0].double()
            stay = torch.where(m_t > 0, m_s / m_t.clamp_min(1e-300), torch.ones_like(m_t))
            p_transfer = (1.0 - stay).clamp(0.0, 1.0)
            redo = decoded & (extra[..., 0] < eta * (1.0 - p_transfer))
            if bool(redo.any()):
                new = new.clone()
                new[redo] = inverse_cdf(p[redo], extra[..., 1][redo], dtype)
        return new, clean_confidence(p, new)

    return step_fn


@dataclass
class LevelSampler(Sampler, abstract=True):
    """Base of the samplers driven by `driver.drive` over a hyperschedule's level table.

    Subclasses implement `step_fn`; most take their fields `steps`, `rate`, `cache`, `dtype` from
    :class:`StepsSampler`.
    """

    name: ClassVar[str] = "level"
    steps_field: ClassVar[Optional[str]] = "steps"

    def __post_init__(self) -> None:
        check_steps(getattr(self, "steps", None))
        rate = getattr(self, "rate", None)
        if rate is not None and (not isinstance(rate, (int, float)) or isinstance(rate, bool) or not rate > 0):
            raise ValueError(f"rate must be a number > 0, got {rate!r}")
        if getattr(self, "steps", None) is not None and rate is not None:
            raise ValueError("give at most one of steps and rate")
        check_dtype(getattr(self, "dtype", torch.float64))

    def check_fits(self, lm: Any) -> None:
        proc = lm.process
        if not getattr(proc, "likelihood", False):
            raise ValueError(
                f"{type(self).__name__} needs the exact reverse step of a likelihood process; "
                f"{proc!r} has none (use the LAD samplers for Structural)"
            )

    def step_fn(self, lm: Any) -> StepFn:  # pragma: no cover - abstract
        raise NotImplementedError

    def schedule_for(self, lm: Any):
        return resolve_schedule(lm.schedule, getattr(self, "steps", None), getattr(self, "rate", None))

    def _sample(self, lm: Any, request: SampleRequest) -> SampleOutput:
        return drive(lm, self.schedule_for(lm), self.step_fn(lm), request, cache=getattr(self, "cache", True))


@dataclass
class StepsSampler(LevelSampler, abstract=True):
    """A LevelSampler run in `steps` steps or at `rate` tokens per step (neither: the lm's own
    schedule), with the KV cache on or off, drawing its categoricals in `dtype`: the fields these
    samplers share, declared once (keyword-only: they follow a sampler's own fields, as before)."""

    steps: Optional[int] = field(default=None, kw_only=True)
    rate: Optional[float] = field(default=None, kw_only=True)
    cache: bool = field(default=True, kw_only=True)
    dtype: torch.dtype = field(default=torch.float64, kw_only=True)

    def step_fn(self, lm: Any) -> StepFn:
        """The process's exact reverse step, ancestral (MDLM; SEDD's analytic sampler is this
        step too); a subclass with another step overrides it."""
        return ancestral_step(lm.process, 0.0, self.dtype)


@dataclass
class MDLM(StepsSampler):
    """Ancestral sampling with per-position levels (module docstring)."""

    name: ClassVar[str] = "mdlm"


@dataclass
class ACS(StepsSampler):
    """Adaptive Correction Sampler: MDLM plus redraws of decoded tokens with prob eta (1 - p_transfer)."""

    name: ClassVar[str] = "acs"
    eta: float = 0.1  # the demo's default: a light correction (0 is plain MDLM)

    def __post_init__(self) -> None:
        self.eta = unit_interval(self.eta, "ACS eta")
        super().__post_init__()

    def check_fits(self, lm: Any) -> None:
        super().check_fits(lm)
        if lm.process.mask_id is None:
            raise ValueError(
                f"ACS corrects already-decoded (non-MASK) tokens; {lm.process!r} has no MASK token "
                "(use MDLM or SEDDAnalytic)"
            )

    def step_fn(self, lm: Any) -> StepFn:
        return ancestral_step(lm.process, self.eta, self.dtype)
