"""The NLL upper bound: ONE estimator for every caller, with an error bar valid for its draws.

    out = conditional_nll_bound(lm, x0, num_samples=M, fixed=ctx_mask, count=None, generator=g)
    out.nll        # [B] bound on -log p(x0[~fixed] | x0[fixed]) in nats, summed over counted tokens
    out.stderr     # [B] its standard error: 0 where exact, NaN where no estimate (one replicate)
    out.terms      # {"prior": [B], "diffusion": [B], "clean-up": [B] (EpsilonHybrid)}: sum = nll
    out.exact      # [B] bool
    out.method     # how it was estimated, in words
    res = corpus_bound(lm, ids, num_samples=M, batch_size=8, seed=0)   # the corpus-level dict

`DiffusionLM.nll_bound`, `diffusionlm eval` (:mod:`.likelihood`), the lm-eval adapter and the
compare job all call this module.

**The bound.** For each row y (d positions), positions are *fixed* (clean at every step, as a
sampler's prompt: level 0 in every row of the table, no term) or not; *counted* positions
(default: every non-fixed one) are those whose terms are summed. Discrete schedule, table
l [T+1, d]:

    NLL <= sum_{i counted} KL(q_1 || prior)  +  sum_{k in K} E_{x_{k-1} ~ q(.|y)} KL_k
    KL_k = sum_{i counted} KL(q(x_k^i | x_{k-1}, y) || p_theta(x_k^i | x_{k-1}))   (process.step_kl)

K = the relevant steps, where some counted position changes level (every other step adds exactly
0). Continuous time (``Flat()``): one l in (0, 1] for every non-fixed position, drawn from the
density p(l) = 1/2 + 1/(4 sqrt(l)) and weighted by 1 / p(l) (:func:`continuous_levels`: the
1 / l tail of a draw's second moment near l -> 0 made integrable), and the process's
``continuous_bound`` integrand. Positions neither fixed nor counted (padding) are corrupted like
any other but their terms and prior are left out.

**Strata.** K splits into E, the steps holding a term marked to be computed exactly
(``process.exact_terms(l_t, l_s)`` at a counted position -- EpsilonHybrid's clean-up step, where
every unmasked token becomes y -- or ``schedule.exact_steps(d)``, a bool [T] a schedule may
define), and the rest K' ("diffusion"). Each is estimated on its own and reported on its own
line in ``terms``.

**Replicates.** The budget is M model evaluations per row. A row is estimated R times
independently (R *replicates*, each with its own random shift U_r ~ U(0, 1) per stratum and its
own corruption draws), each with b = M // R evaluations; the estimate is the mean of the R
replicate estimates, and

    stderr = std(replicate estimates, ddof=1) / sqrt(R)

which is unbiased for the variance of the estimate whatever the draws inside a replicate are
(stratified, enumerated, low-discrepancy) -- the i.i.d. formula on stratified draws is not.
Inside a replicate a stratum of n steps given m draws uses u_j = (j + U_r) / m, j < m, and the
step of index floor(u_j n) with weight n / m (m = n: every step exactly once, "enumerated").
Allocation of b between E and K': both enumerated when b >= |K|; else E enumerated (computed
exactly in every replicate) and K' gets the rest when b >= |E| + 1; else proportional (each
>= 1); with b = 1, one stratum over E and K' together. Each drawn step's weighted term goes to the
line of its step (E or K'), so every line is an unbiased estimate of its part of the bound
whatever the allocation. Continuous time: one stratum, l = continuous_levels(1 - u).

**R.** ``replicates`` if given; else R = M // |K| when M >= 2 |K| (every replicate enumerates
every step, more replicates shrink the corruption noise), else R = 2, else (M = 1) R = 1 and
there is no error estimate: stderr NaN.

**Exact (stderr 0)** exactly when every relevant step fits the budget (|K| <= M) and the
corruption at every relevant step is deterministic, i.e. every non-fixed position has
p_mask in {0, 1} and, where p_mask = 0, p_sub = 0 (the ids do not depend on the draw): Absorb or
EpsilonHybrid under Quench, Block(w, 1), any 0/1 Custom table. Then R = 1 and the sum over all
steps is computed once: the bound itself, no Monte Carlo. Where steps are enumerated but the
corruption is random (Absorb under Flat(T), Block(w, S > 1), Slide), only the step sampling is
exact; the corruption noise remains and is measured by the replicates.

**Randomness.** ``generator`` is one ``torch.Generator`` or one per row; with one per row, a row's
estimate depends only on its own generator (shifts, then the corruption of each of its draws in
order), not on the batch. **Greedy** (``track_greedy=True``): for each counted position, among
the draws in which it moves (l_t > l_s; continuous: l > 0) and is corrupted (its input is not its
clean token), the lowest-level one decides: greedy when the model's argmax over the real tokens
there is the token; a row is greedy when all its counted positions are (one never corrupted
makes it False). Under Quench + Absorb + SHIFTED: greedy decoding reproduces the continuation.
"""
from __future__ import annotations

import hashlib
import math
import sys
from typing import Dict, List, NamedTuple, Optional, Sequence, Union

import torch
from torch import Tensor
from tqdm.auto import tqdm

from ..checks import as_mask as _as_mask
from ..masks import categories_from_levels
from ..processes.base import Corruption, check_ids
from ..samplers.driver import model_device
from ..specs import provide
from .causal import CAUSAL_METHOD, causal_composition, causal_nll, prefix_lengths

__all__ = [
    "BoundOutput",
    "ConditionalBound",
    "conditional_nll_bound",
    "corpus_bound",
    "check_likelihood",
    "check_num_samples",
    "relevant_steps",
    "row_generators",
]

GeneratorLike = Union[None, torch.Generator, Sequence[torch.Generator]]

PRIOR, DIFFUSION = "prior", "diffusion"


class BoundOutput(NamedTuple):
    nll: Tensor  # [B] float64: bound on the counted tokens' NLL (nats, summed)
    stderr: Tensor  # [B] float64: standard error of nll (0 exact, NaN: no estimate)
    num_tokens: Tensor  # [B] long: counted positions
    samples: Tensor  # [B, R] float64: the replicate estimates (NaN beyond a row's R)
    steps: Tensor  # [B] long: |K|, the relevant steps (0 in continuous time)
    greedy: Optional[Tensor]  # [B] bool, or None without track_greedy
    terms: Dict[str, Tensor]  # name -> [B] float64, summing to nll
    exact: Tensor  # [B] bool
    method: str  # the estimator, in words

    @property
    def ppl(self) -> Tensor:
        """exp(total NLL / total counted tokens) of the batch."""
        return torch.exp(self.nll.sum() / self.num_tokens.sum().clamp_min(1))


ConditionalBound = BoundOutput  # the name callers of the conditional bound know


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
        raise ValueError(f"num_samples (M, model evaluations per sequence) must be an int >= 1, got {num_samples!r}")
    return num_samples


def row_generators(seed: int, keys: Sequence) -> List[torch.Generator]:
    """One generator per key, seeded from sha1(f"{seed}:{key}") (independent of batching)."""
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


# ----------------------------------------------------------------------------------------------
# step 1: inputs


def _check_inputs(lm, x0, fixed, count, generator, chunk_size, replicates):
    if not isinstance(x0, Tensor) or x0.dim() != 2:
        raise ValueError(f"expected a [B, d] batch of token ids, got {getattr(x0, 'shape', type(x0))}")
    check_ids(x0, lm.process.vocab_size, "token ids")
    B, d = x0.shape
    max_pos = getattr(lm, "max_positions", None)
    if max_pos is not None and d > max_pos:
        raise ValueError(f"sequence length {d} exceeds the model's {max_pos} positions")
    fixed = _as_mask(fixed, B, d, False, "fixed", x0.device)
    count = _as_mask(count, B, d, True, "count", x0.device) & ~fixed
    if generator is not None and not isinstance(generator, torch.Generator):
        generator = list(generator)
        if len(generator) != B:
            raise ValueError(f"give one generator per row: {len(generator)} for {B} rows")
    chunk = int(chunk_size or B)
    if chunk < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size!r}")
    if replicates is not None and (isinstance(replicates, bool) or not isinstance(replicates, int) or replicates < 1):
        raise ValueError(f"replicates (R, independent estimates per row) must be an int >= 1, got {replicates!r}")
    return fixed, count, generator, chunk


# ----------------------------------------------------------------------------------------------
# step 2: the plan -- strata, replicates and draws of every row


class _Plan(NamedTuple):
    continuous: bool
    table: Optional[Tensor]  # [T+1, d] float64 (discrete)
    strata: List[List[List[int]]]  # [row][stratum]: the stratum's steps (1-based)
    draws: Tensor  # [B, S] long: draws per replicate in each stratum
    R: Tensor  # [B] long: replicates
    exact: Tensor  # [B] bool
    steps: Tensor  # [B] long: |K|
    marked: Optional[Tensor]  # [B, T] bool: the steps of the marked line (E)
    names: List[str]  # the term lines: [marked name, "diffusion"]


def _deterministic_levels(proc, levels: Tensor) -> Tensor:
    """Whether corrupting a clean token to `levels` has one outcome (ids independent of the draw)."""
    pm, ps = proc.event_probs(torch.zeros_like(levels), levels)
    pm, ps = torch.as_tensor(pm).expand_as(levels), torch.as_tensor(ps).expand_as(levels)
    return (pm == 1) | ((pm == 0) & (ps == 0))


def _allocate(nE: int, nK: int, b: int) -> Optional[tuple]:
    """Draws (mE, mK) per replicate for strata of nE and nK steps with budget b; None when b = 1
    cannot serve both (then one stratum over E and K' together)."""
    if nE == 0 or nK == 0:
        return min(nE, b), min(nK, b)
    if b >= nE + nK:
        return nE, nK
    if b >= nE + 1:
        return nE, b - nE
    if b == 1:
        return None
    mE = min(max(int(round(b * nE / (nE + nK))), 1), b - 1)
    return mE, b - mE


def _replicates(n: int, M: int, replicates: Optional[int]) -> int:
    if replicates is not None:
        if M < replicates:
            raise ValueError(f"num_samples M={M} cannot give {replicates} replicates of >= 1 model evaluation each")
        return replicates
    if n and M >= 2 * n:
        return M // n
    return 2 if M >= 2 else 1


def _plan(lm, d: int, fixed: Tensor, count: Tensor, M: int, replicates: Optional[int]) -> _Plan:
    proc, schedule = lm.process, lm.schedule
    B = count.shape[0]
    count, fixed = count.cpu(), fixed.cpu()
    if schedule.continuous:
        counted = count.any(1).tolist()
        R = torch.tensor([_replicates(0, M, replicates) if c else 1 for c in counted], dtype=torch.long)
        draws = torch.tensor([[0, M // int(r) if c else 0] for r, c in zip(R.tolist(), counted)], dtype=torch.long)
        return _Plan(True, None, [[[], [0]] for _ in range(B)], draws.reshape(B, 2), R,
                     ~torch.tensor(counted, dtype=torch.bool).reshape(B), torch.zeros(B, dtype=torch.long), None,
                     ["marked", DIFFUSION])
    table = schedule.table(d)  # float64 [T+1, d]
    T = table.shape[0] - 1
    lt, ls = table[:-1], table[1:]
    rel = ((lt != ls)[None] & count[:, None, :]).any(-1)  # [B, T]
    dom = torch.zeros(B, T, dtype=torch.bool)
    marks = getattr(proc, "exact_terms", None)
    if callable(marks):
        dom |= (marks(lt, ls).bool()[None] & count[:, None, :]).any(-1)
    sched_marks = getattr(schedule, "exact_steps", None)
    if callable(sched_marks):
        dom |= torch.as_tensor(sched_marks(d), dtype=torch.bool).reshape(1, T)
    E, K = rel & dom, rel & ~dom
    det = ((_deterministic_levels(proc, lt)[None] | fixed[:, None, :]).all(-1) | ~rel).all(1)  # [B]
    R = torch.ones(B, dtype=torch.long)
    draws = torch.zeros(B, 2, dtype=torch.long)
    exact = torch.zeros(B, dtype=torch.bool)
    strata = []
    for b in range(B):
        e = (E[b].nonzero().flatten() + 1).tolist()
        k = (K[b].nonzero().flatten() + 1).tolist()
        n = len(e) + len(k)
        strata.append([e, k])
        if n == 0 or (bool(det[b]) and n <= M):
            exact[b] = True
            draws[b] = torch.tensor([len(e), len(k)])
            continue
        R[b] = _replicates(n, M, replicates)
        m = _allocate(len(e), len(k), M // int(R[b]))
        if m is None:  # one draw per replicate: one stratum over every relevant step
            strata[b] = [[], sorted(e + k)]
            m = (0, 1)
        draws[b] = torch.tensor(m)
    name = getattr(proc, "exact_term_name", None) or "marked steps"
    return _Plan(False, table, strata, draws, R, exact, rel.sum(1), E, [name, DIFFUSION])


def _describe(plan: _Plan, M: int) -> str:
    """The estimator of a batch, in words (one phrase per kind of row)."""
    phrases = []
    for b in range(plan.R.shape[0]):
        R, m = int(plan.R[b]), plan.draws[b].tolist()
        if bool(plan.exact[b]):
            p = "exact: every step enumerated, deterministic corruption (stderr 0)"
        else:
            over = "l in (0, 1]" if plan.continuous else "steps"
            sizes = [len(x) for x in plan.strata[b]]
            merged = not sizes[0] and plan.marked is not None and bool(plan.marked[b].any())
            label = [plan.names[0], "all steps" if merged else DIFFUSION]
            enum = [] if plan.continuous else [
                f"{label[s]}: {'all ' if m[s] == sizes[s] else ''}{m[s]} of {sizes[s]} steps"
                for s in range(len(m)) if sizes[s] > 0]
            p = f"stratified over {over}, {R} independent random shift{'s' if R > 1 else ''} x {sum(m)} evaluations" + (
                f" ({'; '.join(enum)})" if enum else "")
            p += "; stderr from the spread of the replicate means" if R > 1 else "; no error estimate (one replicate)"
        if p not in phrases:
            phrases.append(p)
    return " | ".join(phrases) + f" [M = {M}]"


# ----------------------------------------------------------------------------------------------
# step 3: the draws


#: the weight a of the 1 / (2 sqrt(l)) part of the continuous-time level density (continuous_levels)
LEVEL_MIX = 0.5


def continuous_levels(v: Tensor, a: Optional[float] = None) -> tuple:
    """(l, 1 / p(l)) for v in (0, 1]: the inverse CDF of the level density
    p(l) = (1 - a) + a / (2 sqrt(l)) on (0, 1] (CDF (1 - a) l + a sqrt(l); a = LEVEL_MIX), so a
    stratified v gives levels drawn from p, each weighted by 1 / p(l) (unbiased for the integral
    over l). Why: a draw's term carries the weight -alpha'(l) / (1 - alpha(l)) ~ 1 / l at a masked
    position, masked with probability ~ l, so one draw's second moment grows as 1 / l and its
    integral over a uniform l diverges (logarithmically): the spread barely falls with M. Under p
    it integrates (1 / l) / p(l) <= 2 / (a sqrt(l)), finite; p >= 1 - a keeps the draws at high
    levels. (docs/EVALUATION.md: the spread against M before and after.)"""
    a = LEVEL_MIX if a is None else a
    t = (torch.sqrt(a * a + 4.0 * (1.0 - a) * v) - a) / (2.0 * (1.0 - a))  # sqrt(l): (1 - a) t^2 + a t = v
    return t * t, 2.0 * t / (2.0 * (1.0 - a) * t + a)


class _Jobs(NamedTuple):
    row: Tensor  # [J] long
    rep: Tensor  # [J] long: replicate
    line: Tensor  # [J] long: the term line the drawn step belongs to (0: marked, 1: diffusion)
    step: Tensor  # [J] long: 1..T (discrete; 0 in continuous time)
    u: Tensor  # [J] float64: the stratified uniform (continuous: the level is continuous_levels(1 - u))
    weight: Tensor  # [J] float64: n / m of the stratum


def _shifts(plan: _Plan, generator: GeneratorLike) -> Tensor:
    """U [B, R_max, S]: one random shift per (row, replicate, stratum); per-row generators draw
    only their own row's R x S."""
    B, S = plan.draws.shape
    Rmax = int(plan.R.max()) if B else 1
    if generator is None or isinstance(generator, torch.Generator):
        return torch.rand(B, Rmax, S, generator=generator, dtype=torch.float64)
    U = torch.zeros(B, Rmax, S, dtype=torch.float64)
    for b, g in enumerate(generator):
        U[b, : int(plan.R[b])] = torch.rand(int(plan.R[b]), S, generator=g, dtype=torch.float64)
    return U


def _jobs(plan: _Plan, U: Tensor) -> _Jobs:
    """Every (row, replicate, stratum, draw), ordered by its slot within the row, then the row, so
    that a chunk holds the same draw of many rows and a row's draws come in a fixed order."""
    per_row = []
    for b in range(plan.R.shape[0]):
        items = []
        for r in range(int(plan.R[b])):
            for s, steps in enumerate(plan.strata[b]):
                m, n = int(plan.draws[b, s]), len(steps)
                for j in range(m):
                    u = (j + float(U[b, r, s])) / m
                    step = steps[min(int(u * n), n - 1)]
                    line = 1 if plan.continuous or not bool(plan.marked[b, step - 1]) else 0
                    items.append((b, r, line, step, u, n / m))
        per_row.append(items)
    width = max((len(x) for x in per_row), default=0)
    flat = [row[slot] for slot in range(width) for row in per_row if slot < len(row)]
    if not flat:
        z = torch.zeros(0, dtype=torch.long)
        return _Jobs(z, z, z, z, z.double(), z.double())
    cols = list(zip(*flat))
    return _Jobs(*(torch.tensor(c, dtype=torch.long) for c in cols[:4]),
                 torch.tensor(cols[4], dtype=torch.float64), torch.tensor(cols[5], dtype=torch.float64))


# ----------------------------------------------------------------------------------------------
# step 4: evaluate the draws


def _corrupt(process, x: Tensor, level: Tensor, rows: Tensor, generator: GeneratorLike) -> Corruption:
    if generator is None or isinstance(generator, torch.Generator):
        return process.corrupt(x, level, generator=generator)
    parts = [process.corrupt(x[j : j + 1], level[j : j + 1], generator=generator[int(rows[j])]) for j in range(x.shape[0])]
    return Corruption(
        torch.cat([p.ids for p in parts]),
        torch.cat([p.masked for p in parts]),
        torch.cat([p.substituted for p in parts]),
    )


class _Greedy:
    """The lowest-level corrupted draw of each counted position, and whether the argmax hit it."""

    def __init__(self, B: int, d: int, device) -> None:
        self.level = torch.full((B, d), float("inf"), dtype=torch.float64, device=device)
        self.ok = torch.zeros(B, d, dtype=torch.bool, device=device)

    def update(self, rows: Tensor, cand: Tensor, level: Tensor, hit: Tensor) -> None:
        for r in range(len(rows)):  # rows of a chunk may repeat a sequence: update one by one
            b = int(rows[r])
            better = cand[r] & (level[r] < self.level[b])
            self.level[b] = torch.where(better, level[r], self.level[b])
            self.ok[b] = torch.where(better, hit[r], self.ok[b])

    def result(self, count: Tensor) -> Tensor:
        covered = torch.isfinite(self.level) | ~count
        return ((self.ok | ~count) & covered).all(1).cpu()


def _evaluate(lm, x0, fixed, count, plan: _Plan, jobs: _Jobs, generator, chunk: int, greedy: Optional[_Greedy]) -> Tensor:
    """acc [B, R_max, 2]: per replicate and term line, the sum over the draws of weight x (counted terms)."""
    proc, dev = lm.process, x0.device
    B, d = x0.shape
    acc = torch.zeros(B, max(int(plan.R.max()), 1) if B else 1, plan.draws.shape[1], dtype=torch.float64)
    N = proc.vocab_size
    for start in range(0, len(jobs.row), chunk):
        sl = slice(start, start + chunk)
        rows = jobs.row[sl]
        x, fix, cnt = x0[rows.to(dev)], fixed[rows.to(dev)], count[rows.to(dev)]
        weight = jobs.weight[sl]
        if plan.continuous:
            level, inv_density = continuous_levels(1.0 - jobs.u[sl])
            lt = level[:, None].expand(len(rows), d).float().to(dev).masked_fill(fix, 0.0)
            ls, weight = None, weight * inv_density
        else:
            k = jobs.step[sl]
            lt = plan.table[k - 1].float().to(dev).masked_fill(fix, 0.0)
            ls = plan.table[k].float().to(dev).masked_fill(fix, 0.0)
        corr = _corrupt(proc, x, lt, rows, generator)
        cats = categories_from_levels(lt, ls)
        logits = lm.step_forward(corr.ids, lt, cats).double()
        if plan.continuous:
            terms, moving = proc.continuous_bound(logits, x, corr, lt.double()), lt > 0
        else:
            terms, moving = proc.step_kl(logits, x, corr.ids, lt, ls), lt > ls
        total = torch.where(cnt, terms.double(), torch.zeros_like(terms, dtype=torch.float64)).sum(1).cpu()
        acc.index_put_((rows, jobs.rep[sl], jobs.line[sl]), total * weight, accumulate=True)
        if greedy is not None:
            hit = logits[..., :N].argmax(-1) == x
            greedy.update(rows, cnt & moving & (corr.ids != x), lt.double(), hit)
    return acc


# ----------------------------------------------------------------------------------------------
# step 5: combine replicates


def _combine(plan: _Plan, acc: Tensor, prior: Tensor) -> tuple:
    """(nll, stderr, replicate estimates, terms) per row from the replicate sums."""
    B = acc.shape[0]
    Rmax = acc.shape[1]
    valid = torch.arange(Rmax)[None, :] < plan.R[:, None]  # [B, R_max]
    per_rep = acc.sum(-1) + prior[:, None]
    samples = torch.where(valid, per_rep, torch.full_like(per_rep, float("nan")))
    R = plan.R.double()
    nll = torch.where(valid, per_rep, 0.0).sum(1) / R
    dev2 = torch.where(valid, (per_rep - nll[:, None]) ** 2, 0.0).sum(1)
    stderr = torch.where(plan.R > 1, (dev2 / (R - 1).clamp_min(1) / R).sqrt(), torch.full((B,), float("nan"), dtype=torch.float64))
    stderr = torch.where(plan.exact, torch.zeros_like(stderr), stderr)
    terms: Dict[str, Tensor] = {PRIOR: prior.clone()}
    for s, name in enumerate(plan.names):
        if name == DIFFUSION or (plan.marked is not None and bool(plan.marked.any())):
            terms[name] = torch.where(valid, acc[..., s], 0.0).sum(1) / R
    return nll, stderr, samples, terms


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
    replicates: Optional[int] = None,
    exact_causal: bool = True,
) -> BoundOutput:
    """NLL upper bound of the counted tokens of x0 [B, d] given its fixed positions (module
    docstring), with M = `num_samples` model evaluations per row. `chunk_size`: (row, draw) pairs
    per model forward (default B). `replicates`: R (default: see the module docstring).
    `exact_causal`: an autoregressive composition (:mod:`.causal`) with a prefix as its fixed
    positions gets its bound, exactly, from one causal forward per row (False: the step draws)."""
    check_likelihood(lm)
    M = check_num_samples(num_samples)
    fixed, count, generator, chunk = _check_inputs(lm, x0, fixed, count, generator, chunk_size, replicates)
    B, d = x0.shape
    if exact_causal and causal_composition(lm) and prefix_lengths(fixed) is not None:
        return _causal_bound(lm, x0, count, chunk, track_greedy)
    plan = _plan(lm, d, fixed, count, M, replicates)
    jobs = _jobs(plan, _shifts(plan, generator))
    greedy = _Greedy(B, d, x0.device) if track_greedy else None
    acc = _evaluate(lm, x0, fixed, count, plan, jobs, generator, chunk, greedy)
    prior = float(lm.process.prior_kl()) * count.sum(1).double().cpu()
    nll, stderr, samples, terms = _combine(plan, acc, prior)
    return BoundOutput(nll, stderr, count.sum(1).cpu(), samples, plan.steps, greedy.result(count) if greedy else None,
                       terms, plan.exact.clone(), _describe(plan, M))


def _causal_bound(lm, x0: Tensor, count: Tensor, chunk: int, track_greedy: bool) -> BoundOutput:
    """The bound of an autoregressive composition: its d enumerated steps, as one causal forward."""
    nll, greedy = causal_nll(lm, x0, count, chunk)
    prior = float(lm.process.prior_kl()) * count.sum(1).double().cpu()
    nll = nll + prior
    n = count.sum(1).cpu()
    return BoundOutput(nll, torch.zeros_like(nll), n, nll[:, None].clone(), n.clone(),
                       greedy if track_greedy else None, {PRIOR: prior, DIFFUSION: nll - prior},
                       torch.ones_like(n, dtype=torch.bool), CAUSAL_METHOD)


# ----------------------------------------------------------------------------------------------
# the corpus


@torch.no_grad()
def corpus_bound(
    lm,
    ids: Tensor,
    num_samples: int,
    batch_size: int = 8,
    seed: int = 0,
    progress: bool = False,
    *,
    count: Optional[Tensor] = None,
    replicates: Optional[int] = None,
    desc: str = "NLL bound",
    exact_causal: bool = True,
) -> dict:
    """The bound over every row of `ids` [n, d] (counted positions: `count`, default all).

    Rows are independent, so the corpus variance is the sum of the rows' variances:
    stderr_per_token = sqrt(sum_b stderr_b^2) / tokens (None when some row has no error
    estimate). Row i draws from sha1(f"{seed}:{i}"): the numbers do not depend on batch_size.
    Returns {nll_per_token, stderr_per_token, ppl, ppl_low, ppl_high (exp(nats -+ stderr)),
    tokens, method, exact, terms {name: nats per token}, nll_total, stderr_total, rows,
    num_samples, row_nll / row_tokens (each row's bound in nats and its counted tokens: what paired
    comparisons of two models on the same rows need, eval.stats)}.
    """
    check_likelihood(lm)
    M = check_num_samples(num_samples)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    if not isinstance(ids, Tensor) or ids.dim() != 2:
        raise ValueError(f"ids must be a [n, d] LongTensor, got {getattr(ids, 'shape', type(ids))}")
    if ids.shape[0] == 0:
        raise ValueError("no rows to score")
    att = torch.ones_like(ids, dtype=torch.bool) if count is None else _as_mask(count, *ids.shape, True, "count", ids.device)
    dev = model_device(lm.model)
    gens = row_generators(seed, range(ids.shape[0]))
    total, var, tokens, exact = 0.0, 0.0, 0, True
    row_nll: List[float] = []
    row_tokens: List[int] = []
    terms: Dict[str, float] = {}
    methods: List[str] = []
    starts = range(0, ids.shape[0], batch_size)
    if progress:
        starts = tqdm(starts, desc=desc, unit="batch", file=sys.stderr)
    for i in starts:
        out = conditional_nll_bound(lm, ids[i : i + batch_size].to(dev), M, count=att[i : i + batch_size].to(dev),
                                    generator=gens[i : i + batch_size], replicates=replicates,
                                    exact_causal=exact_causal)
        total += float(out.nll.sum())
        row_nll += out.nll.tolist()
        row_tokens += out.num_tokens.tolist()
        var += float((out.stderr**2).sum())
        tokens += int(out.num_tokens.sum())
        exact &= bool(out.exact.all())
        for name, v in out.terms.items():
            terms[name] = terms.get(name, 0.0) + float(v.sum())
        if out.method not in methods:
            methods.append(out.method)
    nats = total / tokens
    se_total = math.sqrt(var) if math.isfinite(var) else None
    se = se_total / tokens if se_total is not None else None
    return {
        "nll_per_token": nats,
        "stderr_per_token": se,
        "ppl": math.exp(nats),
        "ppl_low": math.exp(nats - se) if se is not None else None,
        "ppl_high": math.exp(nats + se) if se is not None else None,
        "tokens": tokens,
        "method": " || ".join(methods),
        "exact": exact,
        "terms": {k: v / tokens for k, v in terms.items()},
        "nll_total": total,
        "stderr_total": se_total,
        "rows": int(ids.shape[0]),
        "num_samples": M,
        "row_nll": row_nll,
        "row_tokens": row_tokens,
    }


#: `DiffusionLM.nll_bound` is this estimator with nothing fixed (late-bound: diffusionlm.specs)
provide("nll_bound", conditional_nll_bound)
