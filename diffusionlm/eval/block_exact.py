"""The Absorb bound under Block(w, S), computed exactly: no Monte Carlo, 2^w - 1 forwards a row.

Under Block(w, S) the blocks are revealed one after another, each in S steps, and a block's
tokens are predicted from the block's own noisy state and the clean blocks before it (the
two-halves / KV-cache reading that block diffusion trains and samples with). For Absorb the
bound's step term at a masked position i of block b is (:mod:`diffusionlm.processes.absorb`)

    KL_k(i) = w_k(i) * CE_i(x_{k-1}),     w_k(i) = (alpha(l_k) - alpha(l_{k-1})) / (1 - alpha(l_{k-1}))

with l_{k-1} > l_k the levels of i before and after step k (table rows k-1 and k), and
x_{k-1} ~ q(. | y) masking each position j independently with probability 1 - alpha(l_{k-1}(j)).
CE_i depends on x_{k-1} only through the MASK pattern M of i's own block (the clean prefix is
fixed), and Absorb is not time-conditioned, so

    bound(y) = sum_M sum_{i in M} c_i(M) CE_i(M),
    c_i(M)   = sum_k P_k(M) w_k(i) [l_{k-1}(i) > l_k(i)],
    P_k(M)   = prod_{j in block(i)} (1 - alpha(l_{k-1}(j)))^[j in M] alpha(l_{k-1}(j))^[j not in M]

over the 2^w - 1 non-empty patterns M. One two-halves forward scores a pattern in EVERY block of a
row at once, so the whole bound is 2^w - 1 forwards of 2d tokens, where the Monte-Carlo
estimator (:mod:`.bound`) samples steps and corruptions (its s.e. at M = 8 on SmolLM2 rows of
128 tokens under Block(4, 4): +- 0.27 nats/token). CE_i(M) does not depend on S, so one set of
forwards gives the exact bound for every Block(w, S) of the same width (`block_bounds`).
The prior term, KL(q_1 || prior) a token, is added as the Monte-Carlo estimator adds it (0 when
alpha(1) = 0: the l = 1 state is all MASK, the prior itself).

    out = exact_block_bound(lm, x0)            # BoundOutput: nll [B] nats, stderr 0, exact
    per_S = block_bounds(lm, x0, [4, 16, 64])  # {S: [B] nats} under Block(w, S), w = lm.schedule's
"""
from __future__ import annotations

from typing import Dict, Optional, Sequence

import torch
from torch import Tensor

from ..lm import two_halves_logits
from ..processes.absorb import Absorb
from ..processes.base import real_token_nll
from ..schedules.hyper import ACTIVE, Block
from .bound import BoundOutput

__all__ = ["MAX_WIDTH", "block_bounds", "exact_block_bound", "pattern_nll", "pattern_weights"]

MAX_WIDTH = 10  # 1,023 forwards a row: beyond this the Monte-Carlo estimator is the tool


def mask_patterns(width: int) -> Tensor:
    """[2^w - 1, w] bool: every non-empty MASK pattern of a block."""
    m = torch.arange(1, 2 ** width)[:, None]
    return (m >> torch.arange(width)[None, :]) & 1 == 1


def check_exact_block(lm, d: int) -> int:
    """The block width w when `lm` is Absorb (not time-conditioned) under Block(w, S) with w | d and
    w <= MAX_WIDTH; else ValueError naming what does not fit."""
    if type(lm.process) is not Absorb:
        raise ValueError(f"the exact block bound needs the Absorb process, got {type(lm.process).__name__}")
    if not isinstance(lm.schedule, Block):
        raise ValueError(f"the exact block bound needs a Block(w, S) hyperschedule, got {lm.schedule!r}")
    w = lm.schedule.width_
    if w > MAX_WIDTH:
        raise ValueError(f"the exact block bound takes 2^w - 1 forwards a row: width {w} > {MAX_WIDTH}; "
                         "use the Monte-Carlo estimator (conditional_nll_bound)")
    if d % w:
        raise ValueError(f"the exact block bound needs rows of a whole number of blocks: length {d} is not a multiple of width {w}")
    return w


@torch.no_grad()
def pattern_nll(lm, x0: Tensor) -> Tensor:
    """[2^w - 1, B, d] float64: -log p_theta(y_i | pattern M in every block, clean blocks before)
    at the positions M masks, 0 elsewhere (two-halves forwards, one a pattern)."""
    B, d = x0.shape
    w = check_exact_block(lm, d)
    pats = mask_patterns(w).to(x0.device)
    segment = (torch.arange(d, device=x0.device) // w)[None].expand(B, d)
    active = torch.full((B, d), ACTIVE, dtype=torch.long, device=x0.device)
    out = torch.zeros(len(pats), B, d, dtype=torch.float64)
    for m, pat in enumerate(pats):
        masked = pat.repeat(d // w)[None].expand(B, d)
        x_t = torch.where(masked, torch.full_like(x0, lm.process.mask_id), x0)
        logits = two_halves_logits(lm, x_t, x0, segment, active, masked.float())
        nll = real_token_nll(logits.double(), x0, lm.process.vocab_size)
        out[m] = torch.where(masked, nll, torch.zeros_like(nll)).cpu()
    return out


def pattern_weights(process: Absorb, schedule: Block, d: int) -> Tensor:
    """[2^w - 1, d] float64: c_i(M), the bound's coefficient of CE_i(M) (module docstring)."""
    w = schedule.width_
    table = schedule.table(d).double()  # [T+1, d]
    lt, ls = table[:-1], table[1:]
    a_t, a_s = process.noise.alpha(lt), process.noise.alpha(ls)
    step_w = torch.where(lt > ls, (a_s - a_t) / (1.0 - a_t).clamp_min(1e-300), torch.zeros_like(lt))  # [T, d]
    pats = mask_patterns(w).double()  # [P, w]
    T, nb = lt.shape[0], d // w
    keep = a_t.view(T, nb, w)  # probability that a position is NOT masked at step k
    # P_k(M) per block: prod over the block of (1 - a) where masked, a where kept; [P, T, nb]
    prob = torch.where(pats[:, None, None, :] > 0, 1.0 - keep[None], keep[None]).prod(-1)
    prob = prob.repeat_interleave(w, dim=-1)  # [P, T, d]
    masked = pats.repeat(1, nb)  # [P, d]
    return (prob * step_w[None]).sum(1) * masked


def block_bounds(lm, x0: Tensor, steps_per_block: Sequence[int], nll: Optional[Tensor] = None) -> Dict[int, Tensor]:
    """{S: [B] exact bound in nats under Block(w, S)} for each S, from ONE set of 2^w - 1 forwards
    (w = lm.schedule's width); `nll`: those forwards' `pattern_nll(lm, x0)` when already made."""
    w, d = check_exact_block(lm, x0.shape[1]), x0.shape[1]
    nll = pattern_nll(lm, x0) if nll is None else nll  # [P, B, d]
    prior = float(lm.process.prior_kl()) * d
    return {S: (pattern_weights(lm.process, Block(w, S), d)[:, None, :] * nll).sum((0, 2)) + prior for S in steps_per_block}


def exact_block_bound(lm, x0: Tensor) -> BoundOutput:
    """The bound of every row under lm's own Block(w, S), exactly (BoundOutput, stderr 0)."""
    check_exact_block(lm, x0.shape[1])
    S = lm.schedule.steps_per_block
    nll = block_bounds(lm, x0, [S])[S]
    B, d = x0.shape
    prior = torch.full_like(nll, float(lm.process.prior_kl()) * d)
    return BoundOutput(
        nll=nll, stderr=torch.zeros_like(nll), num_tokens=torch.full((B,), d, dtype=torch.long),
        samples=nll[:, None].clone(), steps=torch.full((B,), lm.schedule.num_steps(d), dtype=torch.long), greedy=None,
        terms={"prior": prior, "diffusion": nll - prior}, exact=torch.ones_like(nll, dtype=torch.bool),
        method=f"exact: every MASK pattern of a block (2^{lm.schedule.width_} - 1 two-halves forwards a row)",
    )
