"""The exact NLL of an autoregressive composition in ONE causal forward per row.

Absorb under Quench with the SHIFTED layout is autoregressive language modelling: at step k the
only active position is k - 1, it reads BOS and the clean tokens before it (SHIFTED: row j reads
x[j - 1], so its own MASK is never read), every later position is worthless and dropped from
attention, and the step's term is -log p_theta(x[k-1] | x[:k-1]) with weight 1. The sum over the
d steps -- the bound, enumerated, stderr 0 -- is therefore the causal NLL, which one forward of the
backbone under a causal mask gives for every position at once (instead of d forwards).

That holds when the backbone does not read the noise levels (a time-conditioned model sees level
1 at the active position and 0 before it, which one forward cannot give every position at once)
and, with fixed positions (a prompt), when they are a prefix of each row. :func:`causal_composition`
says whether a composition qualifies; :func:`causal_nll` computes the per-row NLL. The estimator of
every caller (:func:`diffusionlm.eval.bound.conditional_nll_bound`) takes this path by default, so
``DiffusionLM.nll_bound``, ``diffusionlm eval``, the lm-eval adapter and the compare job report the
same exact number; tests hold it equal to the enumerated bound and to transformers' own loss.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor

from ..masks import Layout, causal_mask_mod, dense_mask
from ..processes.absorb import Absorb
from ..schedules.hyper import Quench

__all__ = ["causal_composition", "prefix_lengths", "causal_nll", "CAUSAL_METHOD"]

CAUSAL_METHOD = "exact: causal NLL, one forward per row (Absorb + Quench, SHIFTED: its Quench bound, stderr 0)"


def _reads_levels(model) -> bool:
    """Whether the backbone's output depends on the noise levels (conservative: unknown -> True)."""
    if getattr(model, "ignores_levels", False):
        return False
    cfg = getattr(model, "config", None)
    flag = getattr(cfg, "time_conditioning", None)
    return flag is None or bool(flag)


def causal_composition(lm) -> bool:
    """Absorb + Quench + SHIFTED on a backbone that ignores the levels and takes no extra inputs:
    the composition whose bound is exactly the causal NLL (module docstring)."""
    return (type(lm.process) is Absorb and type(lm.schedule) is Quench
            and Layout(getattr(lm.layout, "value", lm.layout)) is Layout.SHIFTED
            and not lm.model_inputs(torch.zeros(1, 1)) and not _reads_levels(lm.model))


def prefix_lengths(fixed: Tensor) -> Optional[Tensor]:
    """P [B] when every row's fixed positions ([B, d] bool) are its first P_b positions, else None."""
    P = fixed.long().sum(1)
    prefix = torch.arange(fixed.shape[1], device=fixed.device)[None] < P[:, None]
    return P if bool((prefix == fixed).all()) else None


@torch.no_grad()
def causal_token_logp(lm, x0: Tensor, chunk_size: Optional[int] = None) -> Tuple[Tensor, Tensor]:
    """(logp [B, d] float64 on CPU, hit [B, d] bool): log p(x_i | x_<i) at every position of each
    row of x0 [B, d], and whether the argmax over the real tokens is x_i there. One causal forward
    per row (chunks of `chunk_size` rows)."""
    B, d = x0.shape
    N = lm.process.vocab_size
    chunk = int(chunk_size or B) or 1
    logps, hits = [], []
    for s in range(0, B, chunk):
        x = x0[s : s + chunk]
        mask = dense_mask(causal_mask_mod(), 1, d, device=x.device)
        logits = lm.forward(x, torch.zeros(x.shape, device=x.device), mask)[..., :N].double()
        logps.append(torch.log_softmax(logits, -1).gather(-1, x[..., None]).squeeze(-1).cpu())
        hits.append((logits.argmax(-1) == x).cpu())
    return torch.cat(logps), torch.cat(hits)


def causal_nll(lm, x0: Tensor, count: Optional[Tensor] = None, chunk_size: Optional[int] = None) -> Tuple[Tensor, Tensor]:
    """(nll [B] float64 on CPU, greedy [B] bool): the summed -log p(x_i | x_<i) over the counted
    positions ([B, d] bool, default all) of each row of x0 [B, d], and whether the argmax over the
    real tokens hits every counted token (`causal_token_logp`, summed)."""
    count = torch.ones_like(x0, dtype=torch.bool) if count is None else count.bool()
    logp, hit = causal_token_logp(lm, x0, chunk_size)
    cnt = count.cpu()
    return torch.where(cnt, -logp, torch.zeros_like(logp)).sum(1), (hit | ~cnt).all(1)
