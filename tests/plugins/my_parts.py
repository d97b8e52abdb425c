"""A researcher's own parts, defined outside the package (tests/test_plugins.py; `--plugin` this file).

Each subclasses a part base and sets a `name`, which registers it; `diffusionlm.register` says so
explicitly. Nothing in diffusionlm/ is edited to use them in specs, comparisons, saved folders and
the command line.
"""
from dataclasses import dataclass
from typing import ClassVar, Optional

import torch

import diffusionlm
from diffusionlm.processes import Absorb
from diffusionlm.samplers.mdlm import MDLM
from diffusionlm.schedules import Hyperschedule
from diffusionlm.schedules.noise import Cosine


@diffusionlm.register
class CosineAbsorb(Absorb):
    """Absorb under a cosine noise schedule whose only field is its eps."""

    name = "cosine_absorb"

    def __init__(self, vocab_size: int, mask_id: Optional[int] = None, eps: float = 0.0):
        super().__init__(vocab_size, mask_id, Cosine(eps))
        self.eps = eps


@dataclass(frozen=True, repr=False)
class Interleave(Hyperschedule):
    """Position i is revealed at step (i mod stride) + 1: every stride-th token first, then the next."""

    stride: int = 2
    name: ClassVar[str] = "interleave"

    def num_steps(self, d: int) -> int:
        return self.stride

    def _build_table(self, d: int) -> torch.Tensor:
        k = torch.arange(self.stride + 1)[:, None]
        i = torch.arange(d)[None, :]
        return ((i % self.stride) >= k).double()

    def segment_width(self, d: int) -> int:
        return d


@dataclass
class TemperedMDLM(MDLM):
    """MDLM drawing from softmax(logits / temperature)."""

    name: ClassVar[str] = "tempered_mdlm"
    temperature: float = 1.0

    def step_fn(self, lm):
        inner = super().step_fn(lm)
        return lambda step, generator: inner(step._replace(logits=step.logits / self.temperature), generator)
