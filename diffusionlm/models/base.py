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
"""
from __future__ import annotations

from typing import Any, NamedTuple, Optional, Protocol, runtime_checkable

from torch import Tensor

__all__ = ["Denoiser", "DenoiserOutput", "output_size"]


class DenoiserOutput(NamedTuple):
    logits: Tensor
    cache: Optional[Any] = None


@runtime_checkable
class Denoiser(Protocol):
    vocab_size: int

    def __call__(
        self,
        input_ids: Tensor,
        *,
        position_ids: Optional[Tensor] = None,
        attention_mask: Any = None,
        levels: Optional[Tensor] = None,
        cache: Any = None,
    ) -> DenoiserOutput: ...


def output_size(model: Any) -> int:
    """The output vocabulary size of a denoiser, read from `vocab_size` or `config.vocab_size`."""
    size = getattr(model, "vocab_size", None)
    if size is None and getattr(model, "config", None) is not None:
        size = getattr(model.config, "vocab_size", None)
    if not isinstance(size, int):
        raise TypeError(f"{type(model).__name__} does not state its output size (vocab_size)")
    return size
