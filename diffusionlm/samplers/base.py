"""What every sampler shares: one interface, a registry by name, fixed positions, categorical
draws in float64, and a per-step history / callback.

    sampler = get_sampler("mdlm")(steps=64)              # or MDLM(steps=64)
    out = sampler.sample(lm, batch_size=4, length=128,
                         prompt=ids, fixed=mask,          # conditional generation / infilling
                         generator=torch.Generator().manual_seed(0),
                         callback=lambda rec: ...)       # a StepRecord per step
    out.tokens                                           # [B, d], never MASK
    out.history                                          # list[StepRecord] when keep_history

Fixed positions (`fixed` [B, d] bool, values from `prompt`) are clean from the start and are
never changed. A prompt given without `fixed` fixes its first prompt.shape[1] positions.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Callable, ClassVar, NamedTuple, Optional

import warnings

import torch
from torch import Tensor

from ..checks import as_mask, check_ids
from ..specs import Part, encode, lookup, register, registry, spec_fields

__all__ = [
    "Sampler",
    "SampleOutput",
    "SampleRequest",
    "StepRecord",
    "SAMPLERS",
    "register_sampler",
    "get_sampler",
    "categorical",
    "prepare_fixed",
]


class StepRecord(NamedTuple):
    """One generation step, for visualising generation step by step.

    step:        k (1-based)
    tokens:      [B, d] ids after the step (MASK where still masked)
    changed:     [B, d] bool, positions whose id changed in this step
    confidence:  [B, d] model probability of the id now at each position (nan where not predicted)
    levels:      [B, d] noise levels after the step (None where the sampler has no levels)
    """

    step: int
    tokens: Tensor
    changed: Tensor
    confidence: Tensor
    levels: Optional[Tensor] = None


class SampleOutput(NamedTuple):
    """tokens [B, d]; history (StepRecords with keep_history); num_model_calls: the network
    calls of the whole run (every call feeds the whole batch); seconds; calls_per_sample [B]
    (long): the calls each sample needed, which differ per row under adaptive decoding
    (`samplers.adaptive`: a row whose tokens are all decoded needs no further call). None where a
    sampler does not count per row; `calls_of_samples()` then gives num_model_calls for every row."""

    tokens: Tensor
    history: list
    num_model_calls: int
    seconds: float
    calls_per_sample: Optional[Tensor] = None

    def calls_of_samples(self) -> Tensor:
        """[B] long: the network calls each sample needed."""
        if self.calls_per_sample is not None:
            return self.calls_per_sample
        return torch.full((self.tokens.shape[0],), int(self.num_model_calls), dtype=torch.long)


def categorical(probs: Tensor, generator: Optional[torch.Generator] = None, dtype: torch.dtype = torch.float64) -> Tensor:
    """Draw one index per row of `probs` [..., V] by inverse CDF in `dtype`.

    float64 by default: float32 Gumbel / CDF sampling truncates the low-probability tail (Zheng
    et al. 2024), which lowers entropy and flatters generative perplexity; float32 is available
    to compare with numbers published that way.
    """
    p = probs.to(dtype)
    p = p / p.sum(-1, keepdim=True)
    cdf = p.cumsum(-1)
    u = torch.rand(p.shape[:-1] + (1,), generator=generator, dtype=dtype, device="cpu").to(p.device)
    u = u * cdf[..., -1:]
    idx = torch.searchsorted(cdf, u, right=True).squeeze(-1)
    # never land on a zero-probability index through rounding at the top of the CDF
    idx = idx.clamp(max=p.shape[-1] - 1)
    bad = p.gather(-1, idx[..., None]).squeeze(-1) <= 0
    if bad.any():
        idx = torch.where(bad, p.argmax(-1), idx)
    return idx


def prepare_fixed(
    prompt: Optional[Tensor], fixed: Optional[Tensor], batch_size: int, length: int, vocab_size: int
) -> tuple[Tensor, Tensor]:
    """Validate and broadcast (prompt, fixed) to [B, d]; returns (values, fixed_mask)."""
    if prompt is None:
        if fixed is not None:
            raise ValueError("fixed positions given without the prompt holding their values")
        return torch.zeros(batch_size, length, dtype=torch.long), torch.zeros(batch_size, length, dtype=torch.bool)
    prompt = torch.as_tensor(prompt)
    if prompt.dim() == 1:
        prompt = prompt[None]
    check_ids(prompt, vocab_size, "prompt (token ids)")
    if prompt.dim() != 2:
        raise ValueError(f"prompt must be [P] or [B, P] token ids, got shape {tuple(prompt.shape)}")
    if prompt.shape[0] not in (1, batch_size):
        raise ValueError(f"prompt batch {prompt.shape[0]} does not match batch_size {batch_size}")
    if fixed is None:
        P = prompt.shape[1]
        if P > length:
            raise ValueError(f"prompt of {P} tokens is longer than the sequence length {length}")
        values = torch.zeros(prompt.shape[0], length, dtype=torch.long)
        values[:, :P] = prompt
        fixed = torch.zeros(prompt.shape[0], length, dtype=torch.bool)
        fixed[:, :P] = True
    else:
        fixed = as_mask(fixed, batch_size, length, False, "fixed")
        if prompt.shape[-1] != length:
            raise ValueError(f"with `fixed`, the prompt holds a value for every position: it must have the "
                             f"sequence length {length}, got {prompt.shape[-1]}")
        values = prompt.long()
    return values.expand(batch_size, length).clone(), fixed.expand(batch_size, length).clone()


class SampleRequest(NamedTuple):
    """What a sampler is asked for: the arguments of `Sampler.sample` after the common checks."""

    batch_size: int
    length: Optional[int]
    prompt: Optional[Tensor]
    fixed: Optional[Tensor]
    generator: Optional[torch.Generator]
    callback: Optional[Callable[[StepRecord], None]]
    keep_history: bool

    @property
    def wants_records(self) -> bool:
        """Whether anyone reads the per-step records (a callback or the history)."""
        return self.callback is not None or self.keep_history

    def emit(self, record: StepRecord, history: list) -> None:
        """Hand one step's record to the callback and, with keep_history, to `history`."""
        if self.callback is not None:
            self.callback(record)
        if self.keep_history:
            history.append(record)


@dataclass
class Sampler(Part, kind="sampler"):
    """Base class: subclasses set `name` (and `steps_field`), declare which processes they fit
    (`check_fits`) and implement `_sample(lm, request)`; `sample` is the one entry point."""

    name: ClassVar[str] = "sampler"
    #: the field that sets the number of model calls ("steps", LAD's "iterations"); None where
    #: the sampler fixes it itself (AR: one call per generated token)
    steps_field: ClassVar[Optional[str]] = None

    def check_fits(self, lm: Any) -> None:
        """Raise ValueError if this sampler does not fit lm.process (called before sampling)."""

    def sample(
        self,
        lm: Any,
        batch_size: int = 1,
        length: Optional[int] = None,
        prompt: Optional[Tensor] = None,
        fixed: Optional[Tensor] = None,
        generator: Optional[torch.Generator] = None,
        callback: Optional[Callable[[StepRecord], None]] = None,
        keep_history: bool = False,
    ) -> SampleOutput:
        """Generate `batch_size` sequences of `length` (module docstring): checks that the
        sampler fits lm and the batch size, then runs the sampler's own `_sample`."""
        self.check_fits(lm)
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
        return self._sample(lm, SampleRequest(batch_size, length, prompt, fixed, generator, callback, keep_history))

    def _sample(self, lm: Any, request: SampleRequest) -> SampleOutput:  # pragma: no cover - abstract
        raise NotImplementedError

    def to_dict(self) -> dict:
        """{"name": ..., **fields}: the spec that builds this sampler back (dtypes by name), its
        fields in the constructor's order (a StepsSampler's shared fields after its own)."""
        return {"name": self.name, **spec_fields(self)}


#: the registry of samplers (diffusionlm.specs; a subclass with a name registers itself)
SAMPLERS: dict[str, type[Sampler]] = registry("sampler")


def register_sampler(cls: type[Sampler]) -> type[Sampler]:
    """Deprecated: a Sampler subclass with a `name` registers itself (or `diffusionlm.register`)."""
    warnings.warn("register_sampler is deprecated: a Sampler subclass with a name registers itself "
                  "(diffusionlm.register(cls) says so explicitly)", DeprecationWarning, stacklevel=2)
    return register(cls)


def get_sampler(name: str) -> type[Sampler]:
    """The sampler class registered as `name` (one-line ValueError listing the known names)."""
    return lookup("sampler", name)
