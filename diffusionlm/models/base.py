"""What the rest of the toolkit expects of a backbone (a "denoiser").

    out = model(input_ids,            # [B, L] long
                position_ids=...,     # [B, L] long: true positions (worthless rows may be dropped)
                attention_mask=...,   # bool [B or 1, 1, L, L_kv] (True = may attend) or a
                                      #   FlexAttention BlockMask; None = full attention
                levels=...,           # [B, L] float noise levels, or None (for time conditioning)
                cache=...)            # KVCache or None: settled prefix K/V, passed in and returned
    out.logits                        # [B, L, model.vocab_size]
    out.cache                         # the (new) KVCache, or None

`model.vocab_size` is the output size; a composition checks it against the process.
Processes never import models and models never import processes.

Beside the protocol: :class:`Backbone` and :class:`Annealing`, the registrable bases of the
backbone and annealing kinds (diffusionlm.specs), and the two helpers every caller of a backbone
needs: :func:`bare` (the module under torch.compile / DDP / FSDP wrappers) and :func:`logits_of`
(the logits of any backbone's output: a DenoiserOutput, an HF output, a tuple or a tensor).
"""
from __future__ import annotations

from typing import Any, NamedTuple, Optional, Protocol, TypedDict, Unpack, runtime_checkable

from torch import Tensor, nn

from ..specs import Part

__all__ = ["Annealing", "Backbone", "Denoiser", "DenoiserInputs", "DenoiserOutput", "bare", "logits_of", "output_size"]


class Backbone(Part, kind="backbone"):
    """Registrable base of backbones: a subclass with a `name` is the backbone spec of that name
    (`from_spec(**fields)` builds one, `to_dict()` writes it). Any torch module passes through
    `specs.build("backbone", module)` as it is."""

    passes_through = (nn.Module,)


class Annealing(Part, kind="annealing"):
    """Registrable base of training-time attention annealings (`mask(batch, length, step)`)."""


def bare(model: Any) -> Any:
    """The module under wrappers: torch.compile's `_orig_mod`, DistributedDataParallel's `module`."""
    for attr in ("_orig_mod", "module"):
        inner = getattr(model, attr, None)
        if isinstance(inner, nn.Module):
            model = inner
    return model


def logits_of(out: Any) -> Tensor:
    """The logits of a backbone's output: `.logits` (DenoiserOutput, HF), the first item of a
    tuple, or the tensor itself."""
    return out.logits if hasattr(out, "logits") else out[0] if isinstance(out, tuple) else out


class DenoiserOutput(NamedTuple):
    logits: Tensor
    cache: Optional[Any] = None


class DenoiserInputs(TypedDict, total=False):
    """The keyword inputs every backbone takes (module docstring), each optional."""

    position_ids: Optional[Tensor]
    attention_mask: Any
    levels: Optional[Tensor]
    cache: Any


@runtime_checkable
class Denoiser(Protocol):
    """`model(input_ids, **inputs)` -> DenoiserOutput, `model.vocab_size` its output size."""

    vocab_size: int

    def __call__(self, input_ids: Tensor, **inputs: Unpack[DenoiserInputs]) -> DenoiserOutput: ...


def output_size(model: Any) -> int:
    """The output vocabulary size of a denoiser, read from `vocab_size` or `config.vocab_size`."""
    size = getattr(model, "vocab_size", None)
    if size is None and getattr(model, "config", None) is not None:
        size = getattr(model.config, "vocab_size", None)
    if not isinstance(size, int):
        raise TypeError(f"{type(model).__name__} does not state its output size (vocab_size)")
    return size
