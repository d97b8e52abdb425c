"""The Monte-Carlo NLL upper bound with fixed (clean) positions and chosen counted positions.

    out = conditional_nll_bound(lm, x0, num_samples=M, fixed=ctx_mask, count=None, generator=g)
    out.nll        # [B] bound on -log p(x0[~fixed] | x0[fixed]) in nats, summed over counted tokens
    out.stderr     # [B] Monte-Carlo standard error of out.nll
    out.num_tokens # [B] counted positions
    out.greedy     # [B] bool (track_greedy=True): the model's argmax reproduces every counted token

`DiffusionLM.nll_bound` has no way to hold positions clean, so the conditional bound is built
here from the same primitives (`schedule.table`, `process.corrupt`, `process.step_kl` /
`process.continuous_bound`, `lm.forward`, the training mask of the drawn levels):

* **Fixed positions** are clean at every step: their level is 0 in every row of the level table,
  exactly as the samplers' driver treats a prompt (`samplers/driver.py`). They are settled, so
  they attend causally among themselves and every active position attends to them; they carry
  no term (a position whose level does not change has KL 0).
* **Counted positions** (default: every position that is not fixed) are the ones whose terms are
  summed. Positions that are neither fixed nor counted (padding under ``rule="pad"``) are
  corrupted like any other position -- the model sees what it saw in training -- but their terms
  and their prior KL are left out.
* **Discrete schedule** (table l [T+1, d]): NLL <= sum_i KL(q_1 || prior) + sum_{k in K}
  E KL_k, where K is the set of steps at which some counted position changes level (every other
  step contributes exactly 0 to the counted sum). A draw picks k from K and is weighted by |K|
  (the lm's estimator weights by T and draws from all T steps; with no fixed positions and every
  step moving a counted position, K = 1..T and the two estimators are the same, draw for draw).
* **Continuous time** (``Flat()``): l ~ U(0, 1) at every non-fixed position, fixed positions at 0,
  and the process's ``continuous_bound`` integrand.
* **Draws** are stratified as in ``DiffusionLM.nll_bound``: draw m of row b uses
  u = (m + U_b) / M with one U_b ~ U(0, 1) per row. With M = |K| every step of K is drawn exactly
  once, so for Absorb under Quench (where x_{k-1} is deterministic) the estimate is exact.
* **Standard error**: the sample standard deviation of the M per-draw estimates over sqrt(M),
  the i.i.d. formula, which over-states the error of stratified draws (NaN when M = 1) -- except
  that a row whose estimate has no Monte-Carlo error at all gets 0: a discrete schedule, M a
  multiple of |K| (every step drawn equally often) and every drawn corruption deterministic
  (all event probabilities 0 or 1: Absorb under Quench, whose levels are 0 or 1). ``samples``
  keeps the per-draw estimates for other error estimates. (``DiffusionLM.nll_bound`` reports the
  i.i.d. formula in every case.)
* **Randomness**: ``generator`` is one ``torch.Generator`` (used as ``nll_bound`` uses it: one U
  per row, then one corruption draw per chunk) or a list of one generator per row, in which case a
  row's estimate depends only on its own generator -- not on batch size or on the other rows.
* **Greedy** (``track_greedy=True``): for each counted position, among the draws in which it
  moves (l_t > l_s; continuous time: l > 0) AND is corrupted (its input is not its clean token:
  MASK or a substitute), the one at the LOWEST level is kept, and the position is greedy when
  the model's argmax over the real tokens there equals the token. A row is greedy when all its
  counted positions are; a counted position that no draw corrupted makes it False. Under
  Quench + Absorb + SHIFTED that is exactly "greedy autoregressive decoding reproduces the
  continuation".
"""
from __future__ import annotations

from typing import List, NamedTuple, Optional, Sequence, Union

import torch
from torch import Tensor

from ..masks import categories_from_levels, training_mask
from ..processes.base import Corruption, check_ids
from ..schedules.hyper import ACTIVE

__all__ = [
    "ConditionalBound",
    "conditional_nll_bound",
    "check_likelihood",
    "check_num_samples",
    "relevant_steps",
    "row_generators",
]

GeneratorLike = Union[None, torch.Generator, Sequence[torch.Generator]]


class ConditionalBound(NamedTuple):
    nll: Tensor  # [B] float64: bound on the counted tokens' NLL (nats, summed)
    stderr: Tensor  # [B] float64: Monte-Carlo standard error of nll (NaN when M = 1)
    num_tokens: Tensor  # [B] long: counted positions
    samples: Tensor  # [B, M] float64: the per-draw estimates
    steps: Tensor  # [B] long: |K|, the steps drawn from (0 in continuous time)
    greedy: Optional[Tensor]  # [B] bool, or None without track_greedy

    @property
    def ppl(self) -> Tensor:
        """exp(total NLL / total counted tokens) of the batch."""
        return torch.exp(self.nll.sum() / self.num_tokens.sum().clamp_min(1))


def check_likelihood(lm) -> None:
    """ValueError unless the lm's process has a likelihood bound (Structural has none)."""
    proc = lm.process
    if not getattr(proc, "likelihood", False):
        raise ValueError(
            f"{proc!r} declares no likelihood: no NLL bound or perplexity can be reported for it "
            "(its loss is a plain denoising cross-entropy)"
        )


def check_num_samples(num_samples) -> int:
    """ValueError unless M is an int >= 1."""
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError(f"num_samples (M, Monte-Carlo draws per sequence) must be an int >= 1, got {num_samples!r}")
    return num_samples


def row_generators(seed: int, keys: Sequence) -> List[torch.Generator]:
    """One generator per key, seeded from sha1(f"{seed}:{key}") (independent of batching)."""
    import hashlib

    out = []
    for key in keys:
        h = int.from_bytes(hashlib.sha1(f"{int(seed)}:{key}".encode("utf-8")).digest()[:8], "little") & (2**63 - 1)
        out.append(torch.Generator().manual_seed(h))
    return out


def relevant_steps(schedule, d: int, count: Tensor) -> Tensor:
    """|K| per row: the steps of `schedule` at length d where some counted position ([B, d] bool)
    changes level; 0 for a continuous-time schedule (no steps)."""
    count = torch.as_tensor(count, dtype=torch.bool).cpu()
    if count.dim() == 1:
        count = count[None]
    if schedule.continuous:
        return torch.zeros(count.shape[0], dtype=torch.long)
    table = schedule.table(d)
    moves = table[:-1] != table[1:]
    return (moves[None] & count[:, None, :]).any(-1).sum(1)


def _as_mask(m: Optional[Tensor], B: int, d: int, default: bool, name: str, device) -> Tensor:
    if m is None:
        return torch.full((B, d), default, dtype=torch.bool, device=device)
    m = torch.as_tensor(m, device=device)
    if m.dtype != torch.bool:
        raise TypeError(f"{name} must be a bool tensor, got {m.dtype}")
    if m.dim() == 1:
        m = m[None]
    try:
        return m.expand(B, d).clone()
    except RuntimeError:
        raise ValueError(f"{name} of shape {tuple(m.shape)} does not fit the batch {(B, d)}") from None


def _corrupt(process, x: Tensor, level: Tensor, rows: Tensor, generator: GeneratorLike) -> Corruption:
    if generator is None or isinstance(generator, torch.Generator):
        return process.corrupt(x, level, generator=generator)
    parts = [process.corrupt(x[j : j + 1], level[j : j + 1], generator=generator[int(rows[j])]) for j in range(x.shape[0])]
    return Corruption(
        torch.cat([p.ids for p in parts]),
        torch.cat([p.masked for p in parts]),
        torch.cat([p.substituted for p in parts]),
    )


@torch.no_grad()
def conditional_nll_bound(
    lm,
    x0: Tensor,
    num_samples: int = 16,
    *,
    fixed: Optional[Tensor] = None,
    count: Optional[Tensor] = None,
    generator: GeneratorLike = None,
    chunk_size: Optional[int] = None,
    track_greedy: bool = False,
) -> ConditionalBound:
    """Monte-Carlo NLL upper bound of the counted tokens of x0 [B, d] given its fixed positions
    (see the module docstring). `chunk_size`: (row, draw) pairs per model forward (default B:
    one draw of every row per forward, as ``nll_bound``)."""
    check_likelihood(lm)
    M = check_num_samples(num_samples)
    if not isinstance(x0, Tensor) or x0.dim() != 2:
        raise ValueError(f"expected a [B, d] batch of token ids, got {getattr(x0, 'shape', type(x0))}")
    proc, schedule = lm.process, lm.schedule
    check_ids(x0, proc.vocab_size, "token ids")
    B, d = x0.shape
    max_pos = getattr(lm, "max_positions", None)
    if max_pos is not None and d > max_pos:
        raise ValueError(f"sequence length {d} exceeds the model's {max_pos} positions")
    dev = x0.device
    fixed = _as_mask(fixed, B, d, False, "fixed", dev)
    count = _as_mask(count, B, d, True, "count", dev) & ~fixed
    if generator is not None and not isinstance(generator, torch.Generator):
        generator = list(generator)
        if len(generator) != B:
            raise ValueError(f"give one generator per row: {len(generator)} for {B} rows")
    chunk = int(chunk_size or B)
    if chunk < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size!r}")

    if generator is None or isinstance(generator, torch.Generator):
        U = torch.rand(B, generator=generator, dtype=torch.float64)
    else:
        U = torch.cat([torch.rand(1, generator=g, dtype=torch.float64) for g in generator])

    continuous = schedule.continuous
    if continuous:
        steps = torch.zeros(B, dtype=torch.long)
        K = None
    else:
        table = schedule.table(d)  # float64 [T+1, d]
        moves = table[:-1] != table[1:]  # [T, d]
        rel = (moves[None] & count.cpu()[:, None, :]).any(-1)  # [B, T]
        steps = rel.sum(1)
        # K[b, j]: the j-th relevant step of row b (1-based) for j < steps[b]; irrelevant steps after
        order = torch.sort((~rel).long(), dim=1, stable=True).indices + 1  # relevant steps first
        K = order
    prior = float(proc.prior_kl()) * count.sum(1).double().cpu()
    est = torch.zeros(B, M, dtype=torch.float64)
    N = proc.vocab_size
    best_level = torch.full((B, d), float("inf"), dtype=torch.float64, device=dev)
    best_ok = torch.zeros(B, d, dtype=torch.bool, device=dev)
    random_draw = torch.zeros(B, dtype=torch.bool)  # some draw of the row had a random corruption

    total = B * M
    for start in range(0, total, chunk):
        p = torch.arange(start, min(start + chunk, total))
        m_idx, b_idx = p // B, p % B
        u = (m_idx.double() + U[b_idx]) / M
        x = x0[b_idx.to(dev)]
        fix = fixed[b_idx.to(dev)]
        cnt = count[b_idx.to(dev)]
        if continuous:
            lt = (1.0 - u)[:, None].expand(len(p), d).float().to(dev).masked_fill(fix, 0.0)
            ls = None
            weight = None
        else:
            nk = steps[b_idx].clamp_min(1)
            j = (u * nk.double()).long().clamp(max=nk - 1)
            k = K[b_idx, j]  # [n] steps 1..T
            lt = table[k - 1].float().to(dev).masked_fill(fix, 0.0)
            ls = table[k].float().to(dev).masked_fill(fix, 0.0)
            weight = steps[b_idx].double().to(dev)
        if not continuous:
            # is this draw's corruption deterministic (every event probability 0 or 1)?
            pm, ps = proc.event_probs(torch.zeros_like(lt), lt)
            pm, ps = torch.as_tensor(pm).expand_as(lt), torch.as_tensor(ps).expand_as(lt)
            det = (((pm == 0) | (pm == 1)) & (ps == 0)).all(1).cpu()
            random_draw[b_idx[~det]] = True
        corr = _corrupt(proc, x, lt, b_idx, generator)
        cats = categories_from_levels(lt, ls)
        mask = None if bool((cats == ACTIVE).all()) else training_mask(cats, device=dev)
        logits = lm.forward(corr.ids, lt, mask).double()
        if continuous:
            terms = proc.continuous_bound(logits, x, corr, lt.double())
            moving = lt > 0
        else:
            terms = proc.step_kl(logits, x, corr.ids, lt, ls) * weight[:, None]
            moving = lt > ls
        terms = torch.where(cnt, terms.double(), torch.zeros_like(terms, dtype=torch.float64))
        est[b_idx, m_idx] = terms.sum(1).cpu() + prior[b_idx]
        if track_greedy:
            hit = logits[..., :N].argmax(-1) == x
            cand = cnt & moving & (corr.ids != x)  # the model has to decide this token here
            lv = lt.double()
            for r in range(len(p)):  # rows of a chunk may repeat a sequence: update one by one
                b = int(b_idx[r])
                better = cand[r] & (lv[r] < best_level[b])
                best_level[b] = torch.where(better, lv[r], best_level[b])
                best_ok[b] = torch.where(better, hit[r], best_ok[b])

    nll = est.mean(1)
    stderr = est.std(1, unbiased=True) / M**0.5 if M > 1 else torch.full((B,), float("nan"), dtype=torch.float64)
    if not continuous:
        # every step of K drawn equally often and every corruption deterministic: no MC error
        exact = ~random_draw & (steps > 0) & (M % steps.clamp_min(1) == 0)
        exact |= steps == 0  # nothing counted
        stderr = torch.where(exact, torch.zeros_like(stderr), stderr)
    greedy = None
    if track_greedy:
        covered = torch.isfinite(best_level) | ~count
        greedy = ((best_ok | ~count) & covered).all(1).cpu()
    return ConditionalBound(nll, stderr, count.sum(1).cpu(), est, steps, greedy)
