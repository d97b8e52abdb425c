"""DiffuGPT's attention-mask annealing: causal -> bidirectional attention over training, a
registrable part (kind "annealing") the composition applies where its schedule asks for full
attention."""
from __future__ import annotations

from typing import Any, Optional

import torch
from torch import Tensor

from ..specs import registry
from .attention import causal_mask
from .base import Annealing

__all__ = ["AttentionAnnealing", "annealed_mask", "ANNEALINGS"]


def annealed_mask(
    batch: int,
    length: int,
    ratio: float,
    generator: Optional[torch.Generator] = None,
    device: Any = None,
    shared: bool = False,
) -> Tensor:
    """DiffuGPT's annealed attention mask: ``causal OR Bernoulli(ratio)`` per (q, kv) entry.

    Dense bool [batch, 1, length, length] (True = may attend). Ratio 0 gives the causal mask,
    ratio 1 full attention; in between each non-causal entry (kv > q) is opened independently with
    probability `ratio`. `shared` draws one pattern for the whole batch (as DiffuGPT's code does);
    by default every sequence gets its own.
    """
    if not isinstance(batch, int) or batch < 1 or not isinstance(length, int) or length < 1:
        raise ValueError(f"batch and length must be positive ints, got {batch!r}, {length!r}")
    ratio = float(ratio)
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"the annealing ratio must lie in [0, 1], got {ratio}")
    dev = torch.device(device) if device is not None else (generator.device if generator is not None else torch.device("cpu"))
    causal = causal_mask(length, length, dev)
    n = 1 if shared else batch
    if ratio >= 1.0:
        return torch.ones(batch, 1, length, length, dtype=torch.bool, device=dev)
    if ratio <= 0.0:
        return causal.expand(batch, 1, length, length).contiguous()
    u = torch.rand(n, 1, length, length, generator=generator, device=dev)
    return (causal | (u < ratio)).expand(batch, 1, length, length).contiguous()


class AttentionAnnealing(Annealing):
    """Causal -> bidirectional attention over training (DiffuGPT's attention-mask annealing).

    ratio(step) = min(1, step / warmup_steps) (1 from the start when warmup_steps = 0);
    mask(batch, length, step, generator) = annealed_mask(batch, length, ratio(step), ...).
    The object holds no state: the trainer passes its step.
    """

    name = "attention_annealing"

    def __init__(self, warmup_steps: int, shared: bool = False):
        if not isinstance(warmup_steps, int) or isinstance(warmup_steps, bool) or warmup_steps < 0:
            raise ValueError(f"warmup_steps must be an int >= 0, got {warmup_steps!r}")
        self.warmup_steps = warmup_steps
        self.shared = shared

    def ratio(self, step: int) -> float:
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        if self.warmup_steps == 0:
            return 1.0
        return min(1.0, step / self.warmup_steps)

    def mask(
        self, batch: int, length: int, step: int, generator: Optional[torch.Generator] = None, device: Any = None
    ) -> Tensor:
        return annealed_mask(batch, length, self.ratio(step), generator=generator, device=device, shared=self.shared)

    def __repr__(self) -> str:
        return f"AttentionAnnealing(warmup_steps={self.warmup_steps}, shared={self.shared})"


#: registry of the training-time attention annealings (diffusionlm.specs kind "annealing")
ANNEALINGS = registry("annealing")
