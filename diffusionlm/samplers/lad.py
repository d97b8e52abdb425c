"""LAD iterative refinement (LAD paper, section 2.5, appendix C; DESIGN.md "Samplers").

For a denoiser trained to predict the CLEAN sequence at every position from a masked and
structurally corrupted one (the Structural process; Absorb-like processes also fit), with full
bidirectional attention:

    x <- prompt / fixed positions, MASK everywhere else
    for k = 1 .. N (N = `iterations`):
        x_hat <- a draw of every non-fixed position from the model's prediction on x
                 (temperature, EOS bias, top-k, top-p; only the N real tokens, never MASK)
        x     <- x_hat with round(eta(k) n) of its n non-fixed positions re-masked
                 (drawn uniformly without replacement, or the least confident ones)
        stop early once x_hat has been unchanged for `patience` (3) consecutive iterations
    return x_hat of the last iteration (never MASK)

    eta(k) = eta0 (e^{-s k/N} - e^{-s}) / (1 - e^{-s})        (s = `sharpness`)

    sampler = LAD(iterations=16, eta0=1.0, top_k=1)
    out = sampler.sample(lm, batch_size=4, length=256, prompt=ids, generator=g)

Indexing of the schedule. Iterations (model calls) are numbered k = 1 .. N, as
`StepRecord.step` is; after iteration k, round(eta(k) * n) positions are re-masked. So eta(0)
= eta0 is the noise of the starting point (fully masked: the paper's "initial noise level at
i = 0") and eta(N) = 0: "the final iteration N, at which point no tokens are re-masked". (The
0-based alternative, re-masking eta(i) after iteration i = 0..N-1, would with the paper's
eta0 = 1 re-mask *everything* after the first call, wasting it, and would re-mask at the last
iteration, whose output must be clean.)

Rounding rule: the count re-masked after iteration k in a row with n eligible positions is
round-half-up, floor(eta(k) * n + 0.5) (see `LAD.remask_count`); exactly that many distinct
positions are re-masked (fewer only when the row has just converged, see early stopping).

Modes (the paper's two inference methods, plus the two options of its advanced interface):

* `remask=True`: scheduled re-masking, as above. `remask=False`: self-refinement, the whole
  previous output x_hat is fed back unmasked and every position is re-predicted (eta0 = 0 is
  the same thing).
* `confidence=True`: re-mask the positions whose sampled token had the lowest model
  probability (ties broken at random) instead of a uniform random subset. The probability is
  the model's own: softmax of the raw logits over the N real tokens, before temperature, EOS
  bias and top-k / top-p truncation (after top-k = 1 every kept token would have probability
  1 and the ranking would carry no information).
* `block_size=b`: semi-autoregressive generation (the paper follows Nie et al. 2025, LLaDA).
  The non-fixed positions of each row, in left-to-right order, are cut into blocks of b; block j
  is generated and refined while the blocks to its right stay MASK (the model still sees them
  as MASK). The `iterations` budget is split over the blocks as in LLaDA: each of the K blocks
  gets N // K iterations and the first N % K get one more (appendix C: 256 iterations, blocks
  of 4, 256 tokens -> 4 per block); N < K is an error. The schedule eta restarts in every
  block with N replaced by that block's count, and only the current block's n positions are
  re-masked. `edit_previous=False`: earlier blocks are frozen once done. `edit_previous=True`:
  they are re-predicted (re-sampled) at every iteration, so the model may amend them, but
  never re-masked.

Early stopping (section 2.5): a row has converged when its sampled output x_hat (over the
positions being generated) equals the previous iteration's for `patience` consecutive
iterations; the first iteration of a block has no previous output and never counts. With
patience 3 and a model whose prediction no longer changes from iteration k on, iterations
k+1, k+2, k+3 are unchanged and the run stops after iteration k+3. A converged row keeps its
x_hat (not re-masked) and is no longer updated; when every row has converged the block ends
(the whole run, without blocks); a block's unused iterations are not carried over to the
next. The counter restarts in every block. `patience=None` disables early stopping.

Model inputs: one full bidirectional forward (mask None) per iteration through `lm.forward`
(which applies the layout). Levels are zeros (the Structural convention, as in its training);
for a time-conditioned process they are 1 at MASK positions and 0 elsewhere.

History: a StepRecord per iteration (model call), step = the call number (1-based over the
whole run): tokens = x after re-masking (MASK where re-masked), changed = positions whose id
differs from the previous record's, confidence = this call's model probability of the id now
at each position (nan at fixed positions and at MASK), levels None.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from numbers import Integral, Real
from typing import Any, ClassVar, Optional

import torch
from torch import Tensor

from ..masks import Layout
from .base import SampleOutput, SampleRequest, Sampler, StepRecord, categorical, prepare_fixed
from .driver import model_device, resolve_length

__all__ = ["LAD"]

_DTYPES = {"float64": torch.float64, "float32": torch.float32}


def _is_int(v: Any) -> bool:
    return isinstance(v, Integral) and not isinstance(v, bool)


def _is_real(v: Any) -> bool:
    return isinstance(v, Real) and not isinstance(v, bool) and math.isfinite(float(v))


@dataclass
class LAD(Sampler):
    """LAD iterative refinement with scheduled / confidence-guided re-masking or self-refinement,
    semi-autoregressive blocks, top-k / top-p / temperature / EOS bias, and early stopping.
    See the module docstring.

    Args:
        iterations: N, the maximum number of model calls (split over blocks with block_size).
        eta0: initial re-masking fraction, in [0, 1] (the paper's eta_0; appendix C: 1.0, or
            0.0 for GSM8K).
        sharpness: s > 0, the decay sharpness of the schedule (appendix C: 1.0).
        remask: scheduled re-masking (True) or self-refinement without re-masking (False).
        confidence: re-mask the least confident positions instead of random ones.
        block_size: semi-autoregressive block length b >= 1 (None: the whole response at once).
        edit_previous: with blocks, let the model re-predict earlier blocks (True) or freeze
            them (False).
        temperature: > 0, divides the logits.
        top_k: keep the k most likely tokens (>= 1; None: all). top_k = 1 is greedy argmax.
        top_p: nucleus, in (0, 1]: keep the smallest most-likely set with mass >= top_p.
        eos_id: id of the end-of-sequence token (needed for eos_bias).
        eos_bias: added to the EOS logit after temperature (multiplies EOS's odds by e^bias).
        patience: stop when the output is unchanged for this many consecutive iterations
            (the paper: 3); None disables early stopping.
        precision: "float64" (default) or "float32" for the categorical draws.
    """

    name: ClassVar[str] = "lad"
    steps_field: ClassVar[Optional[str]] = "iterations"

    iterations: int = 64
    eta0: float = 1.0
    sharpness: float = 1.0
    remask: bool = True
    confidence: bool = False
    block_size: Optional[int] = None
    edit_previous: bool = False
    temperature: float = 1.0
    top_k: Optional[int] = None
    top_p: float = 1.0
    eos_id: Optional[int] = None
    eos_bias: float = 0.0
    patience: Optional[int] = 3
    precision: str = "float64"

    def __post_init__(self) -> None:
        if not _is_int(self.iterations) or self.iterations < 1:
            raise ValueError(f"iterations must be an int >= 1, got {self.iterations!r}")
        if not _is_real(self.eta0) or not 0.0 <= float(self.eta0) <= 1.0:
            raise ValueError(f"eta0 (initial re-masking fraction) must be in [0, 1], got {self.eta0!r}")
        if not _is_real(self.sharpness) or float(self.sharpness) <= 0.0:
            raise ValueError(f"sharpness must be a finite number > 0, got {self.sharpness!r}")
        for flag in ("remask", "confidence", "edit_previous"):
            if not isinstance(getattr(self, flag), bool):
                raise ValueError(f"{flag} must be a bool, got {getattr(self, flag)!r}")
        if self.block_size is not None and (not _is_int(self.block_size) or self.block_size < 1):
            raise ValueError(f"block_size must be an int >= 1 or None, got {self.block_size!r}")
        if not _is_real(self.temperature) or float(self.temperature) <= 0.0:
            raise ValueError(f"temperature must be a finite number > 0, got {self.temperature!r}")
        if self.top_k is not None and (not _is_int(self.top_k) or self.top_k < 1):
            raise ValueError(f"top_k must be an int >= 1 or None, got {self.top_k!r}")
        if not _is_real(self.top_p) or not 0.0 < float(self.top_p) <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p!r}")
        if self.eos_id is not None and (not _is_int(self.eos_id) or self.eos_id < 0):
            raise ValueError(f"eos_id must be a non-negative int or None, got {self.eos_id!r}")
        if not _is_real(self.eos_bias):
            raise ValueError(f"eos_bias must be a finite number, got {self.eos_bias!r}")
        if self.eos_bias != 0 and self.eos_id is None:
            raise ValueError(f"eos_bias={self.eos_bias!r} needs eos_id (the token to bias)")
        if self.patience is not None and (not _is_int(self.patience) or self.patience < 1):
            raise ValueError(f"patience must be an int >= 1 or None (no early stopping), got {self.patience!r}")
        if self.precision not in _DTYPES:
            raise ValueError(f"precision must be one of {sorted(_DTYPES)}, got {self.precision!r}")

    # -- schedule --------------------------------------------------------------------------
    def eta(self, k: int, num_iterations: Optional[int] = None) -> float:
        """eta(k) = eta0 (e^{-s k/N} - e^{-s}) / (1 - e^{-s}): eta(0) = eta0, eta(N) = 0."""
        N = self.iterations if num_iterations is None else num_iterations
        if k >= N:
            return 0.0
        s = float(self.sharpness)
        return float(self.eta0) * (math.exp(-s * k / N) - math.exp(-s)) / (1.0 - math.exp(-s))

    def remask_count(self, k: int, n: int, num_iterations: Optional[int] = None) -> int:
        """Positions re-masked after iteration k (1-based) of n: round half up, floor(eta n + 0.5)."""
        if not self.remask:
            return 0
        return int(math.floor(self.eta(k, num_iterations) * n + 0.5))

    # -- fit -------------------------------------------------------------------------------
    def check_fits(self, lm: Any) -> None:
        process = getattr(lm, "process", None)
        if getattr(process, "mask_id", None) is None:
            pname = getattr(process, "name", type(process).__name__)
            raise ValueError(
                f"the LAD sampler needs a process with a MASK token (Structural, Absorb-like); "
                f"{type(process).__name__} ({pname!r}) has none"
            )

    # -- refinement from given text --------------------------------------------------------
    @torch.no_grad()
    def refine(self, lm: Any, ids: "Tensor | list", iterations: Optional[int] = None,
               real: Optional[int] = None, min_probability: Optional[float] = None) -> tuple[Tensor, int]:
        """Greedy self-refinement of given text (LAD without re-masking, started from `ids`
        instead of MASK): every position re-predicted by argmax over the real tokens from the
        whole previous output (under the SHIFTED layout with one MASK row appended, so that the last
        given token is read too), until a fixed point or `iterations` calls (default: this
        sampler's). `ids`: [B, d] or [d] ids (a list is read as one row); `real`: the argmax runs
        over the first `real` ids (default: the process's N real tokens). `min_probability` = tau:
        a position takes its argmax only where the model gives that argmax probability >= tau
        (softmax over the real tokens) and keeps its token otherwise, so only confident edits are
        made (None: every position, the paper's update). Returns (ids of the same shape, model calls).

            fixed, calls = LAD().refine(lm, tok.encode("a line wiht a typo"), iterations=8)"""
        x = torch.as_tensor(ids, device=model_device(lm.model))
        one_row = x.dim() == 1
        x = x[None] if one_row else x
        self.check_fits(lm)
        limit = self.iterations if iterations is None else iterations
        if not _is_int(limit) or limit < 1:
            raise ValueError(f"iterations must be an int >= 1, got {limit!r}")
        if min_probability is not None and (not _is_real(min_probability) or not 0.0 <= float(min_probability) <= 1.0):
            raise ValueError(f"min_probability must be in [0, 1] or None, got {min_probability!r}")
        calls = 0
        for _ in range(limit):
            logits = self.edit_logits(lm, x, real)
            new = logits.argmax(-1)
            if min_probability is not None:  # keep the token where the model is not sure enough
                sure = torch.softmax(logits.double(), -1).amax(-1) >= float(min_probability)
                new = torch.where(sure, new, x)
            calls += 1
            if torch.equal(new, x):
                break
            x = new
        return (x[0] if one_row else x), calls

    @staticmethod
    @torch.no_grad()
    def edit_logits(lm: Any, x: Tensor, real: Optional[int] = None) -> Tensor:
        """[B, d, real] the model's clean-token logits at every position of given text x [B, d] (no
        MASK added), one full bidirectional forward: what `refine` takes its argmax of."""
        N, mask_id = lm.process.vocab_size if real is None else real, lm.process.mask_id
        # SHIFTED: row j reads token j-1, so the last given token is read by no row of a d-row
        # forward and would be re-predicted blind; one extra MASK row reads it (its output dropped)
        extra = int(Layout(lm.layout) is Layout.SHIFTED)
        inp = torch.cat([x, x.new_full((x.shape[0], extra), mask_id)], 1)
        time_levels = bool(getattr(lm.process, "time_conditioned", False))
        levels = (inp == mask_id).float() if time_levels else torch.zeros(inp.shape, device=x.device)
        return lm.forward(inp, levels, None)[:, :x.shape[1], :N]

    # -- one draw --------------------------------------------------------------------------
    def _draw(self, logits: Tensor, generator: Optional[torch.Generator]) -> Tensor:
        """One id per row of real-token logits [M, N] (temperature, EOS bias, top-k, top-p)."""
        z = logits.double() / float(self.temperature)
        if self.eos_id is not None and self.eos_bias != 0:
            z[..., self.eos_id] += float(self.eos_bias)
        V = z.shape[-1]
        if self.top_k == 1:  # greedy: exactly argmax, no random draw
            return z.argmax(-1)
        if self.top_k is not None and self.top_k < V:
            keep = torch.zeros_like(z, dtype=torch.bool).scatter_(-1, z.topk(self.top_k, -1).indices, True)
            z = z.masked_fill(~keep, float("-inf"))
        probs = torch.softmax(z, -1)
        if float(self.top_p) < 1.0:
            sp, si = probs.sort(-1, descending=True)
            before = sp.cumsum(-1) - sp  # mass strictly more likely than each token
            drop_sorted = before >= float(self.top_p)  # the top token always stays
            drop = torch.zeros_like(drop_sorted).scatter_(-1, si, drop_sorted)
            probs = probs.masked_fill(drop, 0.0)
        return categorical(probs, generator, _DTYPES[self.precision])

    @staticmethod
    def _prob(logits: Tensor, lse: Tensor, ids: Tensor) -> Tensor:
        """Model probability (softmax of the raw real-token logits) of ids [B, d] (MASK -> junk)."""
        return torch.exp(logits.gather(-1, ids.clamp(max=logits.shape[-1] - 1)[..., None]).squeeze(-1) - lse)

    # -- sampling: set-up, blocks, iterations, re-masking ------------------------------------
    def _sample(self, lm: Any, request: SampleRequest) -> SampleOutput:
        t0 = time.perf_counter()
        run = self._start(lm, request)
        for j in range(run.num_blocks):
            self._run_block(run, j)
        # every generated position ends clean: the last iteration of each block re-masks nothing
        # and converged rows keep their x_hat
        if bool((run.x == run.mask_id).any()):  # pragma: no cover - a bug, not a user error
            raise RuntimeError("LAD left a MASK in its output")
        return SampleOutput(run.x, run.history, run.calls, time.perf_counter() - t0)

    def _start(self, lm: Any, request: SampleRequest) -> "_LADRun":
        """Checks, the starting point (fixed positions, MASK elsewhere) and the blocks."""
        process = lm.process
        N, mask_id = process.vocab_size, process.mask_id
        if self.eos_id is not None and self.eos_id >= N:
            raise ValueError(f"eos_id {self.eos_id} is not a real token (vocab_size {N})")
        length = resolve_length(lm, request.length, request.prompt, request.fixed)
        values, fixed_mask = prepare_fixed(request.prompt, request.fixed, request.batch_size, length, N)
        device = model_device(lm.model)
        values, fixed_mask = values.to(device), fixed_mask.to(device)
        free = ~fixed_mask
        x = torch.where(fixed_mask, values, torch.full_like(values, mask_id))
        block, per_block = self._blocks(free)
        return _LADRun(lm, request, N, mask_id, device, free, block, per_block, x,
                       bool(getattr(process, "time_conditioned", False)))

    def _blocks(self, free: Tensor) -> tuple[Tensor, list]:
        """Block index of each free position (-1 where fixed) and the iterations of each block."""
        # rank of each free position among its row's free positions, cut into b's
        rank = free.long().cumsum(1) - 1
        max_free = int(free.sum(1).max()) if free.shape[0] else 0
        if self.block_size is None:
            block = torch.where(free, torch.zeros_like(rank), torch.full_like(rank, -1))
            num_blocks = 1 if max_free else 0
        else:
            block = torch.where(free, rank // self.block_size, torch.full_like(rank, -1))
            num_blocks = -(-max_free // self.block_size)
        if num_blocks > self.iterations:
            raise ValueError(
                f"{num_blocks} blocks of {self.block_size} need iterations >= {num_blocks} "
                f"(one call per block at least), got {self.iterations}"
            )
        return block, [self.iterations // num_blocks + (j < self.iterations % num_blocks) for j in range(num_blocks)]

    def _run_block(self, run: "_LADRun", j: int) -> None:
        """Generate and refine block j (module docstring: modes, early stopping)."""
        B = run.x.shape[0]
        target = run.free & (run.block == j)  # generated and re-masked in this block
        active = run.free & ((run.block <= j) if self.edit_previous else (run.block == j))  # re-predicted
        n_row = target.sum(1)
        done = n_row == 0  # rows with nothing to generate in this block
        unchanged = torch.zeros(B, dtype=torch.long, device=run.device)
        prev_hat: Optional[Tensor] = None
        Nj = run.per_block[j]
        for k in range(1, Nj + 1):
            logits, lse, x_hat = self._predict(run, active & ~done[:, None])
            # early stopping: x_hat unchanged (over the generated positions) for `patience` calls
            if prev_hat is not None:
                same = ((x_hat != prev_hat) & active).sum(1) == 0
                unchanged = torch.where(same, unchanged + 1, torch.zeros_like(unchanged))
            prev_hat = x_hat
            converged = ~done & (unchanged >= self.patience) if self.patience is not None else torch.zeros_like(done)
            new_x = x_hat
            if self.remask and k < Nj:
                # re-masking of the current block (not of rows converged now or before)
                counts = torch.tensor(
                    [self.remask_count(k, int(n), Nj) for n in n_row.tolist()], dtype=torch.long, device=run.device
                )
                counts = torch.where(done | converged, torch.zeros_like(counts), counts)
                if int(counts.max()) > 0:
                    new_x = self._remask(x_hat, target, counts, logits, lse, run)
            self._record(run, new_x, logits, lse)
            done = done | converged
            if bool(done.all()):
                break

    def _predict(self, run: "_LADRun", upd: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """One model call on x; x_hat = x with a draw at the positions `upd` (real tokens only)."""
        x, B, d = run.x, run.x.shape[0], run.x.shape[1]
        levels = (x == run.mask_id).float() if run.time_levels else torch.zeros(B, d, device=run.device)
        logits = run.lm.forward(x, levels, None)[..., : run.N]  # real tokens only: never MASK
        run.calls += 1
        if logits.dtype != torch.float64:
            logits = logits.float()
        lse = torch.logsumexp(logits, -1)  # model probability of id t: exp(logit_t - lse)
        where = upd.nonzero(as_tuple=True)  # draw only where something is generated
        x_hat = x.clone()
        x_hat[where] = self._draw(logits[where], run.request.generator).to(run.device)
        return logits, lse, x_hat

    def _remask(self, x_hat: Tensor, target: Tensor, counts: Tensor, logits: Tensor, lse: Tensor, run: "_LADRun") -> Tensor:
        """x_hat with counts[b] of row b's target positions set to MASK: uniformly without
        replacement, or the least confident ones (random tie-break)."""
        B, d = x_hat.shape
        u = torch.rand(B, d, generator=run.request.generator, dtype=torch.float64).to(run.device)
        if self.confidence:
            conf_hat = self._prob(logits, lse, x_hat).double()
            perm = u.argsort(1)  # random tie-break, then stable sort by confidence
            key = torch.where(target, conf_hat, torch.full_like(conf_hat, math.inf)).gather(1, perm)
            order = perm.gather(1, key.argsort(dim=1, stable=True))
        else:
            order = torch.where(target, u, torch.full_like(u, math.inf)).argsort(dim=1, stable=True)
        pos_rank = torch.empty_like(order).scatter_(1, order, torch.arange(d, device=run.device).expand(B, d))
        sel = target & (pos_rank < counts[:, None])
        return torch.where(sel, torch.full_like(x_hat, run.mask_id), x_hat)

    def _record(self, run: "_LADRun", new_x: Tensor, logits: Tensor, lse: Tensor) -> None:
        """Move x to new_x and emit the iteration's StepRecord (module docstring: History)."""
        nan = torch.tensor(float("nan"), dtype=torch.float64, device=run.device)
        real = new_x != run.mask_id
        conf = torch.where(real & run.free, self._prob(logits, lse, new_x).double(), nan)
        record = StepRecord(run.calls, new_x.clone(), new_x != run.x, conf)
        run.x = new_x
        run.request.emit(record, run.history)


@dataclass
class _LADRun:
    """The state of one LAD run (see LAD._start)."""

    lm: Any
    request: SampleRequest
    N: int
    mask_id: int
    device: torch.device
    free: Tensor
    block: Tensor
    per_block: list
    x: Tensor
    time_levels: bool
    calls: int = 0
    history: list = field(default_factory=list)

    @property
    def num_blocks(self) -> int:
        return len(self.per_block)
