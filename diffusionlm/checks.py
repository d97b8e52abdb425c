"""Input checks shared by the public entry points (processes, masks, samplers, models).
At the top level because it is the bottom layer: every package below uses it.

Bad input raises before it reaches any indexing, as one line naming the argument, what it got
and what is allowed: TypeError for a wrong kind of value (float ids, a non-bool mask), ValueError
for a wrong value or shape.

    check_ids(ids, upper, what)                integer tensor, every value in [0, upper)
    check_levels(level, like, what)            finite, in [0, 1], broadcastable to `like`
    check_scores(scores, like, width, what)    floating [*like.shape, width] (or >= width)
    as_mask(m, B, d, default, what)            bool [d] or [1 or B, d] -> bool [B, d]

This module imports nothing of the package, so processes and models (which never import each
other) both use it.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

__all__ = ["check_ids", "check_levels", "check_scores", "as_mask"]


def check_ids(ids: Tensor, upper: Optional[int], what: str = "token ids") -> None:
    """Raise if ids is not an integer tensor with every value in [0, upper) (upper None: any ids)."""
    if not isinstance(ids, Tensor):
        raise TypeError(f"{what} must be an integer tensor, got {type(ids).__name__}")
    if ids.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
        raise TypeError(f"{what} must be an integer tensor, got {ids.dtype}")
    if upper is not None and ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= upper):
        raise ValueError(
            f"{what} out of range: found [{int(ids.min())}, {int(ids.max())}], allowed [0, {upper - 1}]"
        )


def check_levels(level: Tensor, like: Optional[Tensor] = None, what: str = "noise levels") -> Tensor:
    """Raise unless level is a finite float tensor in [0, 1] (broadcastable to `like`); returns it
    as a float tensor (expanded to `like`'s shape when given)."""
    level = torch.as_tensor(level)
    if not level.is_floating_point():
        level = level.float()
    if level.numel() and (not torch.isfinite(level).all() or (level < 0).any() or (level > 1).any()):
        lo, hi = float(level.min()), float(level.max())
        raise ValueError(f"{what} must lie in [0, 1]; got values in [{lo:g}, {hi:g}]")
    if like is not None:
        try:
            level = level.expand_as(like)
        except RuntimeError:
            raise ValueError(f"{what} of shape {tuple(level.shape)} do not fit ids of shape {tuple(like.shape)}") from None
    return level


def check_scores(scores: Tensor, like: Tensor, width: int, what: str = "logits", exact: bool = False) -> None:
    """Raise unless `scores` (logits or probabilities) is a floating tensor [*like.shape, V] with
    V >= width (V == width when `exact`): one score per token of the vocabulary at each position."""
    if not isinstance(scores, Tensor) or not scores.is_floating_point():
        raise TypeError(f"{what} must be a float tensor, got {getattr(scores, 'dtype', type(scores).__name__)}")
    V = scores.shape[-1] if scores.dim() else 0
    if tuple(scores.shape[:-1]) != tuple(like.shape) or (V != width if exact else V < width):
        want = f"{width}" if exact else f">= {width}"
        raise ValueError(f"{what} of shape {tuple(scores.shape)} do not fit ids of shape {tuple(like.shape)}: "
                         f"expected [{', '.join(map(str, like.shape))}, {want}]")


def as_mask(m: Optional[Tensor], B: int, d: int, default: bool, what: str, device=None) -> Tensor:
    """A bool [B, d] mask from a bool [d] or [1 or B, d] one (None: all `default`)."""
    if m is None:
        return torch.full((B, d), default, dtype=torch.bool, device=device)
    m = torch.as_tensor(m, device=device)
    if m.dtype != torch.bool:
        raise TypeError(f"{what} must be a bool tensor, got {m.dtype}")
    if m.dim() == 1:
        m = m[None]
    try:
        return m.expand(B, d).clone()
    except RuntimeError:
        raise ValueError(f"{what} of shape {tuple(m.shape)} does not fit the batch {(B, d)}") from None
