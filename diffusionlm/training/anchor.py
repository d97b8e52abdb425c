"""The AR anchor: keep an adapted model's AR-order conditionals where the base had them.

A block-diffusion adaptation (docs/smollm2/block.md) trades the base's AR skill for in-block
orders: the model's own AR-order NLL drifts while the block cost falls. At some rows of every
two-halves step the base's next-token distribution is the exact target. A masked position j is an
*AR row* when the masked positions of its segment are exactly j and everything after it (the
revealed ones are a prefix): the row then sees x_<j and nothing more (later rows read MASK), so
the true conditional there is p(x_j | x_<j), which the frozen base gives in one causal forward.
The anchor adds, to the training loss of a batch [B, d],

    lambda * sum_{j AR row} w_j * KL( p_base(. | x_<j) || p_theta(. | row j) ) / (B d)

with w_j the process's own ELBO weight of that row (`Absorb.token_weight`), so that at an AR row
the loss is w_j [CE(x_j) + lambda KL]: its gradient in the logits, w_j [(p - onehot) + lambda
(p - p_base)], vanishes at p = (onehot(x_j) + lambda p_base) / (1 + lambda) -- the data's target
mixed with the base's (distillation at the rows where the base is the right teacher). lambda = 0
is plain training. The base is the backbone with its LoRA adapters switched off (peft's
`disable_adapter`), so the anchor needs LoRA, the two-halves layout and Absorb (the process whose
loss is a per-token weight times -log p_theta(x_j)); each is checked with its name in the error.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..masks import Layout, categories_from_levels, causal_mask_mod, dense_mask, shift_inputs
from ..models.base import bare
from ..models.lora import peft_model_of
from ..schedules.hyper import ACTIVE

__all__ = ["ar_rows", "base_logits", "ar_anchor", "check_ar_anchor"]


def ar_rows(masked: Tensor, segment: Tensor) -> Tensor:
    """[B, d] bool: masked positions whose segment's masked set is exactly them and every
    position after them in the segment (the revealed ones a prefix). `segment` [B or 1, d] holds
    contiguous, non-decreasing segment ids (a two-halves draw)."""
    B, d = masked.shape
    seg = segment.to(masked.device).long().expand(B, d)
    seg = seg - seg[:, :1]  # ids from 0, for scatter
    m = masked.long()
    before = m.cumsum(1) - m  # masked strictly before j (in the row)
    start = torch.full((B, int(seg.max()) + 1), d * 2, dtype=torch.long, device=masked.device)
    start = start.scatter_reduce(1, seg, before, "amin")  # ... before the segment's first position
    kept_to = (1 - m).cumsum(1)  # revealed up to j (inclusive)
    end = torch.zeros_like(start).scatter_reduce(1, seg, kept_to, "amax")  # ... up to the segment's end
    first = (before - start.gather(1, seg)) == 0  # nothing masked before j in its segment
    rest = (end.gather(1, seg) - kept_to) == 0  # nothing revealed after j in its segment
    return masked & first & rest


def base_logits(lm: Any, x0: Tensor) -> Tensor:
    """[B, d, V]: the base's next-token logits at every position, p_base(x_j | x_<j), from one
    causal forward of the backbone with its LoRA adapters off (rows read BOS, x_0, ..., x_{d-2}:
    the base is an AR model whatever the composition's layout), without gradients."""
    B, d = x0.shape
    ids = shift_inputs(x0, Layout.SHIFTED, lm.bos_id)
    pos = torch.arange(d, device=x0.device)[None].expand(B, d)
    mask = dense_mask(causal_mask_mod(), 1, d, device=x0.device)
    peft_model = peft_model_of(bare(lm.model))
    # peft re-enables requires_grad on every adapter tensor when the context exits, also on those
    # the recipe froze (the MASK row's trainable-token delta): put the flags back as they were
    frozen = [p for p in peft_model.parameters() if not p.requires_grad]
    try:
        with torch.no_grad(), peft_model.disable_adapter():
            return lm._call(ids, pos, mask, torch.zeros(B, d, device=x0.device))
    finally:
        for p in frozen:
            p.requires_grad_(False)


def ar_anchor(lm: Any, x0: Tensor, out: Any, weight: float, response_mask: "Tensor | None" = None) -> Tensor:
    """The anchor term (module docstring) of one batch: `out` the composition's two-halves
    `LossOutput` for x0 (its logits, corruption and draw); with a `response_mask` [B, d] only the
    rows the loss scores there (instruction data: not the prompt)."""
    if out.logits is None:
        raise ValueError("the AR anchor needs the loss's logits: train with train.two_halves=true")
    B, d = x0.shape
    rows = ar_rows(out.corruption.masked, out.draw.segment)
    w = lm.process.token_weight(out.draw.level, out.draw).to(out.logits.dtype).expand(B, d)
    # only the rows the loss scores (a segment's settled / worthless edges are not)
    rows = rows & (w > 0) & (categories_from_levels(out.draw.level, out.draw.next_level).expand(B, d) == ACTIVE)
    if response_mask is not None:
        rows = rows & response_mask.bool()
    if not bool(rows.any()):
        return out.logits.sum() * 0.0  # keeps the graph (and the device) of the loss
    N = lm.process.vocab_size
    teacher = torch.log_softmax(base_logits(lm, x0)[rows][:, :N].float(), -1)
    student = torch.log_softmax(out.logits[rows][:, :N].float(), -1)
    kl = (teacher.exp() * (teacher - student)).sum(-1)
    return weight * (w[rows].float() * kl).sum() / (B * d)


def check_ar_anchor(lm: Any, weight: float, two_halves: bool) -> None:
    """Refuse, in one line naming the part, a composition the anchor (of this weight; 0: none)
    cannot serve."""
    if not weight:
        return
    if not two_halves:
        raise ValueError("train.ar_anchor needs train.two_halves=true (its AR rows are read from the two-halves draw)")
    if not callable(getattr(lm.process, "token_weight", None)):
        raise ValueError(f"train.ar_anchor needs a process whose loss is a per-token weight times -log p (absorb), "
                         f"not {type(lm.process).__name__}")
    try:
        peft_model_of(bare(lm.model))
    except ValueError as e:
        raise ValueError(f"train.ar_anchor needs a LoRA backbone (the base is the model with its adapters off): {e}") from None

