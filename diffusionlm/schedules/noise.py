"""Scalar noise schedules: alpha(l), the probability that a token is untouched at noise level l.

Every process reads its noise through one of these. A schedule maps a level l in [0, 1]
(0 clean, 1 the prior) to

    alpha(l)          keep probability, alpha(0) = 1, non-increasing, alpha(1) = eps
    alpha_prime(l)    d alpha / d l
    sigma_bar(l)      total noise, -log alpha(l)   (SEDD's integrated rate)
    sigma_bar_prime   d sigma_bar / d l = -alpha'(l) / alpha(l)

Implemented:
    Linear(eps)     alpha = 1 - (1 - eps) l                         (MDLM; eps = 0 gives an exact prior)
    LogLinear(eps)  sigma_bar = -log(1 - (1 - eps) l)               (SEDD; same alpha, stated as noise)
    Cosine(eps)     alpha = eps + (1 - eps) cos(pi l / 2)
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from ..specs import Part, build, registry

__all__ = ["NoiseSchedule", "Linear", "LogLinear", "Cosine", "NOISE_SCHEDULES", "noise_schedule"]


def _check_eps(eps: float) -> None:
    if not 0.0 <= eps < 1.0:
        raise ValueError(f"eps must be in [0, 1), got {eps}")


@dataclass(frozen=True)
class NoiseSchedule(Part, kind="noise_schedule"):
    """Base class: subclasses define alpha and alpha_prime; sigma_bar follows."""

    eps: float = 0.0
    name: ClassVar[str] = "base"

    def __post_init__(self) -> None:
        _check_eps(self.eps)

    def alpha(self, level: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def alpha_prime(self, level: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def sigma_bar(self, level: Tensor) -> Tensor:
        return -torch.log(self.alpha(level))

    def sigma_bar_prime(self, level: Tensor) -> Tensor:
        return -self.alpha_prime(level) / self.alpha(level)


@dataclass(frozen=True)
class Linear(NoiseSchedule):
    name: ClassVar[str] = "linear"

    def alpha(self, level: Tensor) -> Tensor:
        return 1.0 - (1.0 - self.eps) * level

    def alpha_prime(self, level: Tensor) -> Tensor:
        return torch.full_like(level, -(1.0 - self.eps))


@dataclass(frozen=True)
class LogLinear(Linear):
    """SEDD's log-linear total noise; alpha is Linear's, sigma_bar computed stably with log1p."""

    eps: float = 1e-3
    name: ClassVar[str] = "loglinear"

    def sigma_bar(self, level: Tensor) -> Tensor:
        return -torch.log1p(-(1.0 - self.eps) * level)


@dataclass(frozen=True)
class Cosine(NoiseSchedule):
    name: ClassVar[str] = "cosine"

    def alpha(self, level: Tensor) -> Tensor:
        return self.eps + (1.0 - self.eps) * torch.cos(0.5 * math.pi * level)

    def alpha_prime(self, level: Tensor) -> Tensor:
        return -(1.0 - self.eps) * 0.5 * math.pi * torch.sin(0.5 * math.pi * level)


#: the registry of noise schedules (diffusionlm.specs; a subclass with a name registers itself)
NOISE_SCHEDULES: dict[str, type[NoiseSchedule]] = registry("noise_schedule")


def noise_schedule(spec: "str | dict | NoiseSchedule") -> NoiseSchedule:
    """Build a schedule from a name, a dict from `to_dict()`, or pass one through
    (`diffusionlm.specs.build("noise_schedule", spec)`)."""
    return build("noise_schedule", spec)
