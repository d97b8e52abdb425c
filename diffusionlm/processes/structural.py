"""Structural corruption: the LAD paper's masked-and-structured noising (Algorithm 1).

LAD ("LoRA-adapted diffusion") trains a denoiser to undo two kinds of damage at once: content
damage (MASK tokens, as in masked diffusion) and structural damage (swapped, duplicated and
shifted tokens, the artefacts seen in intermediate outputs of iterative generation). The
corruption is not a time-indexed Markov chain and its structural operators are not invertible,
so there is no tractable forward marginal and no variational bound on the likelihood: the
process declares ``likelihood = False``, its loss is the plain denoising cross-entropy against
the clean sequence, and every bound-related method raises.

Algorithm 1, applied independently to each row, on the row's *response* positions only (one
contiguous span of n tokens; rows with n < 2 are left untouched). Indices below are 1-based
within the span, as in the paper:

    p ~ U[0, p_max]                                   (the paper: p_max = 0.5)
    1. masking, with prob mask_prob (paper: 1/2):
         f ~ U(0, 1) (the row's level, drawn by a Flat hyperschedule),  m = floor(f n);  choose m span positions uniformly without
         replacement and set them to MASK
    2. swapping: for i = 1 .. n-1, in order: with prob p/4 swap x_i and x_{i+1}
         (sequential: a token swapped forward at i can be swapped again at i+1, so it
         "bubbles" to the end of a run of consecutive swap events)
    3. duplication: for i = 1 .. n, in order: with prob p/4 draw d in {-1, +1} uniformly and,
         if i + d lies in [1, n], set x_i <- x_{i+d} (the *current* value, so left copies chain)
    4. span shift, once per row with prob p/4:
         s ~ U{1, 2, 3}, delta ~ U{1..4}, dir ~ U{-1, +1}, start ~ U{1 .. n-s+1},
         span = x[start : start+s-1] (a copy),
         target = clamp(start + dir delta, 1, n-s+1),  x[target : target+s-1] <- span
         (skipped when s > n)

Masking comes first, so MASK tokens can be moved, duplicated or overwritten by steps 2-4.

The process contract: ``corrupt(x0, level, generator, *, response_mask=None)`` and
``loss(logits, x0, corruption, level, draw, *, response_mask=None)`` as every other process. The
hyperschedule is honoured by taking its level as f, which needs one level per row: Flat() (l ~
U(0, 1): exactly Algorithm 1) or Flat(steps=T). Any other hyperschedule, and the two-halves
layout, are refused at composition (``check_schedule`` / ``check_two_halves``) with an error
naming the process and what it cannot honour.

Everything is vectorized over rows and positions (gathers and cumulative maxima; no Python loop
over either):

- swaps: a run of consecutive swap events at i .. j moves the token at i to j+1 and shifts
  i+1 .. j+1 left by one. With c(k) the last index <= k without a swap event (a cummax), a
  position k with an event takes x[k+1]; a position k without one whose left neighbour had one
  takes x[c(k-1) + 1] (the start of that run); every other position keeps its token.
- duplication: after step 2 (values y), a right copy at i takes y[i+1] (position i+1 is still
  untouched when i is processed); a left copy at i takes the final value of the nearest
  position j < i that is not itself a left copy, which is y[j+1] if j made a right copy and
  y[j] otherwise. No-op events (left copy at the first span position, right copy at the last)
  count as "not a copy".
- span shift: one gather per row.
- masking m of n positions without replacement: rank uniform noise restricted to the span and
  keep the ranks < m.
"""
from __future__ import annotations

import math
from numbers import Real
from typing import ClassVar, NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from ..schedules.hyper import Flat
from ..schedules.noise import Linear
from .base import Corruption, Process, check_ids

__all__ = ["Structural"]

_NO_LIKELIHOOD = (
    "Structural (LAD) has no likelihood: its structural corruptions (swaps, duplications, span "
    "shifts) are not a time-indexed Markov chain and are not invertible, so there is no tractable "
    "forward marginal, reverse posterior or variational bound (LAD paper). Its loss is the plain "
    "denoising cross-entropy; use a likelihood process (Absorb, Uniform, hybrids) for NLL / PPL."
)

# Uniform draws per row: p, mask coin, f, shift coin, s, delta, shift direction, start.
_ROW_DRAWS = 8
# Uniform draws per position: mask-selection noise, swap coin, dup coin, dup direction.
_POS_DRAWS = 4


def _rand(shape: tuple, generator: Optional[torch.Generator], device) -> Tensor:
    if generator is None:
        return torch.rand(shape, device=device)
    return torch.rand(shape, generator=generator, device=generator.device).to(device)


def _check_prob(value, what: str, hint: str = "") -> float:
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(float(value)):
        raise ValueError(f"{what} must be a real number in [0, 1]{hint}, got {value!r}")
    if not 0.0 <= float(value) <= 1.0:
        raise ValueError(f"{what} must be in [0, 1]{hint}, got {value!r}")
    return float(value)


class _Span(NamedTuple):
    """Each row's response span: mask [B, d], start lo [B], length n [B], end hi [B], active
    (n >= 2) [B], and the position index [B, d]."""

    mask: Tensor
    lo: Tensor
    n: Tensor
    hi: Tensor
    active: Tensor
    idx: Tensor

    @property
    def in_span(self) -> Tensor:
        return self.mask & self.active[:, None]


def _gather(x: Tensor, src: Tensor) -> Tensor:
    return x.gather(1, src.clamp(0, max(x.shape[1] - 1, 0)))


def _swap_step(x: Tensor, span: _Span, coin: Tensor) -> tuple[Tensor, Tensor]:
    """2. Sequential adjacent swaps at k = lo .. hi-2: a run of events at i .. j moves x[i] to
    j+1 and shifts i+1 .. j+1 left (c(k): the last index <= k without an event)."""
    idx, d = span.idx, x.shape[1]
    swap = span.in_span & (idx < (span.hi - 1)[:, None]) & coin
    last_plain = torch.where(swap, torch.full_like(idx, -1), idx).cummax(1).values
    prev_swap = F.pad(swap, (1, 0))[:, :d]
    prev_last = F.pad(last_plain, (1, 0), value=-1)[:, :d]
    src = torch.where(swap, idx + 1, torch.where(prev_swap, prev_last + 1, idx))
    return _gather(x, src), swap


def _duplicate_step(y: Tensor, span: _Span, coin: Tensor, direction: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """3. Sequential duplication from a neighbour: a right copy reads y[i+1]; a left copy the final
    value of the nearest position before it that is not itself a left copy."""
    idx = span.idx
    dup = span.in_span & coin
    dup_dir = torch.where(direction < 0.5, -torch.ones_like(idx), torch.ones_like(idx))
    left = dup & (dup_dir < 0) & (idx > span.lo[:, None])
    right = dup & (dup_dir > 0) & (idx < (span.hi - 1)[:, None])
    base = _gather(y, torch.where(right, idx + 1, idx))
    anchor = torch.where(left, torch.full_like(idx, -1), idx).cummax(1).values
    return base.gather(1, anchor.clamp(min=0)), dup, dup_dir


def _shift_step(z: Tensor, span: _Span, fired: Tensor, draws: Tensor) -> tuple[Tensor, dict]:
    """4. One span shift per row: copy x[start : start+s] onto x[target : target+s] (skipped when
    s > n); draws = (s, delta, direction, start) uniforms [4, B]."""
    idx, n, lo = span.idx, span.n, span.lo
    s = 1 + torch.floor(draws[0] * 3).long().clamp(max=2)
    delta = 1 + torch.floor(draws[1] * 4).long().clamp(max=3)
    sdir = torch.where(draws[2] < 0.5, -torch.ones_like(s), torch.ones_like(s))
    room = (n - s).clamp(min=0)  # largest 0-based start
    start = torch.minimum(torch.floor(draws[3].double() * (room + 1).double()).long(), room)
    target = torch.minimum((start + sdir * delta).clamp(min=0), room)
    shift = fired & (s <= n)
    tg = (lo + target)[:, None]
    in_target = shift[:, None] & (idx >= tg) & (idx < tg + s[:, None])
    src = torch.where(in_target, (lo + start)[:, None] + (idx - tg), idx)
    info = {"shift": shift, "shift_fired": fired, "shift_len": s, "shift_delta": delta, "shift_dir": sdir,
            "shift_start": start, "shift_target": target}
    return _gather(z, src), info


class Structural(Process):
    """The LAD paper's masked + structural corruption (Algorithm 1); not likelihood-based.

    Args:
        vocab_size: number N of real tokens (ids 0 .. N-1).
        mask_id: id of MASK; defaults to N.
        p_max: per-row structural noise p is drawn from U[0, p_max]; each of swap, duplication
            and span shift fires with prob p/4. The paper uses 0.5; any value in [0, 1] is
            accepted.
        mask_prob: probability that a row gets its masking step (the paper: 0.5).

    See the module docstring for the algorithm.
    """

    name: ClassVar[str] = "structural"
    likelihood: ClassVar[bool] = False
    time_conditioned: ClassVar[bool] = False
    continuous_time_loss: ClassVar[bool] = False

    def __init__(self, vocab_size: int, mask_id: Optional[int] = None, p_max: float = 0.5, mask_prob: float = 0.5):
        if mask_id is None:
            if not isinstance(vocab_size, int) or isinstance(vocab_size, bool):
                raise ValueError(f"vocab_size must be an int >= 2, got {vocab_size!r}")
            mask_id = vocab_size
        Process.__init__(self, vocab_size, mask_id, Linear())
        self.p_max = _check_prob(p_max, "p_max", " (the LAD paper uses p_max = 0.5)")
        self.mask_prob = _check_prob(mask_prob, "mask_prob", " (the LAD paper uses 0.5)")

    def config(self) -> dict:
        return {
            "name": self.name,
            "vocab_size": self.vocab_size,
            "mask_id": self.mask_id,
            "p_max": self.p_max,
            "mask_prob": self.mask_prob,
        }

    # -- prior ----------------------------------------------------------------------------
    def prior(self, shape: tuple, generator: Optional[torch.Generator] = None, device=None) -> Tensor:
        """All MASK: a fully masked input is the starting point of LAD generation."""
        return torch.full(tuple(shape), self.mask_id, dtype=torch.long, device=device)

    # -- response spans ---------------------------------------------------------------------
    @staticmethod
    def response_span(x0: Tensor, response_mask: Optional[Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        """(mask [B, d] bool, start [B], length [B]) of each row's response span.

        Raises ValueError unless every row's response positions form one contiguous span.
        """
        B, d = x0.shape
        idx = torch.arange(d, device=x0.device)
        if response_mask is None:
            mask = torch.ones(B, d, dtype=torch.bool, device=x0.device)
            return mask, torch.zeros(B, dtype=torch.long, device=x0.device), torch.full(
                (B,), d, dtype=torch.long, device=x0.device
            )
        if not isinstance(response_mask, Tensor):
            raise TypeError(f"response_mask must be a bool tensor, got {type(response_mask).__name__}")
        if response_mask.dtype != torch.bool:
            raise TypeError(
                f"response_mask must be a bool tensor, got {response_mask.dtype}; Structural takes no "
                "noise level (pass level= by keyword if your caller needs to)"
            )
        if tuple(response_mask.shape) != (B, d):
            raise ValueError(f"response_mask of shape {tuple(response_mask.shape)} does not fit ids of shape {(B, d)}")
        mask = response_mask.to(x0.device)
        length = mask.sum(1)
        start = torch.where(length > 0, mask.long().argmax(1), torch.zeros_like(length))
        span = (idx >= start[:, None]) & (idx < (start + length)[:, None])
        bad = (span != mask).any(1)
        if bad.any():
            rows = bad.nonzero().flatten().tolist()
            shown = ", ".join(map(str, rows[:10])) + (" ..." if len(rows) > 10 else "")
            raise ValueError(
                f"response_mask must mark one contiguous span per row (the LAD corruption moves tokens "
                f"within the response); rows {shown} are not contiguous"
            )
        return mask, start, length

    # -- the hyperschedule contract ---------------------------------------------------------
    def check_schedule(self, schedule) -> None:
        """Composition-time check: Structural honours only a Flat hyperschedule.

        Algorithm 1 draws ONE masking fraction f ~ U(0, 1) per row; a hyperschedule honoured by
        this process supplies that f as the row's level, which needs the same level at every
        position: Flat() (continuous: l ~ U(0, 1), exactly Algorithm 1) or Flat(steps=T) (f on the
        grid 1/T .. 1). Per-position schedules (Quench, Block, Slide, Custom, Retimed) are refused.
        """
        if not isinstance(schedule, Flat):
            raise ValueError(
                f"{self!r} cannot honour the hyperschedule {schedule!r}: its corruption (LAD Algorithm 1) "
                "takes one masking fraction per row, i.e. the same level at every position, which only "
                "Flat() or Flat(steps=T) gives; compose it with Flat()"
            )

    def check_two_halves(self, schedule=None) -> None:
        """Structural cannot be trained in the two-halves layout (no per-segment levels)."""
        raise ValueError(
            f"{self!r} cannot honour two_halves=True{' under ' + repr(schedule) if schedule is not None else ''}: "
            "the two-halves layout trains one level per segment, while LAD Algorithm 1 corrupts whole "
            "rows with one masking fraction; train it with two_halves=False"
        )

    # -- the forward corruption ---------------------------------------------------------------
    def corrupt(
        self,
        x0: Tensor,
        level: Optional[Tensor] = None,
        generator: Optional[torch.Generator] = None,
        *,
        response_mask: Optional[Tensor] = None,
    ) -> Corruption:
        """Apply Algorithm 1 to every row of x0 [B, d], on its response span only.

        The `Process` signature: `level` is the row's masking fraction f ([B, d] with one value
        per row, [B, 1] or [B]; in [0, 1]), as a Flat hyperschedule draws it; None draws
        f ~ U(0, 1) here (Algorithm 1 on its own). response_mask [B, d] bool (keyword) marks the
        response (None: the whole row); it must be one contiguous span per row.

        Returns Corruption(ids, masked, substituted, info) with
            masked       the final token is MASK,
            substituted  the final token differs from x0 at a non-MASK position,
            info         the draws, for replay: per row ``p``, ``active`` (n >= 2),
                         ``response_start``, ``response_len``, ``mask_fired``, ``mask_frac`` (f),
                         ``m``, ``shift`` (span shift fired and applied), ``shift_fired`` (coin),
                         ``shift_len`` (s), ``shift_delta``, ``shift_dir`` (+-1),
                         ``shift_start`` and ``shift_target`` (0-based, within the span);
                         per position [B, d] ``mask_select`` (the m positions set to MASK),
                         ``swap`` (swap x_k and x_{k+1}), ``dup`` (duplication event at k),
                         ``dup_dir`` (+-1, meaningful where dup) and ``response_mask``.
                         Position flags use row (global) indices.
        """
        if not isinstance(x0, Tensor) or x0.dim() != 2:
            raise ValueError(f"x0 must be a [B, d] tensor, got {getattr(x0, 'shape', type(x0))}")
        check_ids(x0, self.vocab_size, "clean ids")
        x0 = x0.long()
        B, d = x0.shape
        frac = self._row_level(level, B, d, x0.device)
        resp, lo, n = self.response_span(x0, response_mask)
        row = _rand((_ROW_DRAWS, B), generator, x0.device)
        pos = _rand((_POS_DRAWS, B, d), generator, x0.device)
        if frac is None:
            frac = row[2]
        span = _Span(resp, lo, n, lo + n, n >= 2, torch.arange(d, device=x0.device).expand(B, d))
        p = row[0] * self.p_max
        q = (p / 4)[:, None]
        x, masking = self._mask_step(x0, span, row[1], frac, pos[0])
        y, swap = _swap_step(x, span, pos[1] < q)
        z, dup, dup_dir = _duplicate_step(y, span, pos[2] < q, pos[3])
        ids, shifting = _shift_step(z, span, (row[3] < p / 4) & span.active, row[4:8])
        masked = ids == self.mask_id
        substituted = ~masked & (ids != x0)
        info = {
            "p": p,
            "active": span.active,
            "response_mask": resp,
            "response_start": lo,
            "response_len": n,
            **masking,
            "swap": swap,
            "dup": dup,
            "dup_dir": dup_dir,
            **shifting,
        }
        return Corruption(ids, masked, substituted, info)

    @staticmethod
    def _row_level(level: Optional[Tensor], B: int, d: int, device) -> Optional[Tensor]:
        """The masking fraction f [B] from a level tensor holding one value per row (or None)."""
        if level is None:
            return None
        if isinstance(level, Tensor) and level.dtype == torch.bool:
            raise TypeError(
                "Structural.corrupt(x0, level, generator, *, response_mask=None): got a bool tensor as `level`; "
                "pass the response mask by keyword (response_mask=...)"
            )
        lv = torch.as_tensor(level, device=device)
        if not lv.is_floating_point():
            raise TypeError(f"level must be a float tensor (the row's masking fraction), got {lv.dtype}")
        if lv.dim() == 1:
            lv = lv[:, None]
        if lv.dim() != 2 or lv.shape[0] != B or lv.shape[1] not in (1, d):
            raise ValueError(f"level of shape {tuple(lv.shape)} does not fit ids of shape {(B, d)}: give [B, d], [B, 1] or [B]")
        if lv.numel() and (not torch.isfinite(lv).all() or (lv < 0).any() or (lv > 1).any()):
            raise ValueError(f"levels must lie in [0, 1]; got values in [{float(lv.min()):g}, {float(lv.max()):g}]")
        if lv.shape[1] > 1 and (lv != lv[:, :1]).any():
            raise ValueError(
                "Structural takes one level per row (the masking fraction of LAD Algorithm 1, as a Flat "
                "hyperschedule draws it); got levels that vary along a row"
            )
        return lv[:, 0] if lv.shape[1] else torch.zeros(B, device=device)

    def _mask_step(self, x0: Tensor, span: "_Span", coin: Tensor, frac: Tensor, noise: Tensor) -> tuple[Tensor, dict]:
        """1. With prob mask_prob, m = floor(f n) span positions, uniformly without replacement."""
        fired = (coin < self.mask_prob) & span.active
        f = frac.to(coin.dtype)
        m = torch.where(fired, torch.floor(f.double() * span.n.double()).long(), torch.zeros_like(span.n))
        in_span = span.in_span
        key = torch.where(in_span, noise, torch.full_like(noise, 2.0))
        rank = torch.argsort(torch.argsort(key, dim=1, stable=True), dim=1, stable=True)
        select = in_span & (rank < m[:, None])
        x = torch.where(select, torch.full_like(x0, self.mask_id), x0)
        return x, {"mask_fired": fired, "mask_frac": f, "m": m, "mask_select": select}

    # -- training loss ------------------------------------------------------------------------
    def loss(
        self,
        logits: Tensor,
        x0: Tensor,
        corruption: Optional[Corruption],
        level: Optional[Tensor] = None,
        draw=None,
        *,
        response_mask: Optional[Tensor] = None,
    ) -> Tensor:
        """Per-token denoising cross-entropy [B, d] against the CLEAN x0, on response positions.

        The `Process` signature. -log softmax(logits[..., :N])[x0] at every response position
        (whether or not it was corrupted; the LAD objective sums over all of them), zero elsewhere.
        response_mask (keyword) None: the one recorded by `corrupt` in corruption.info, else every
        position. Not a likelihood bound: the CE does not depend on `level` / `draw`.
        """
        check_ids(x0, self.vocab_size, "clean ids")
        if logits.shape[:-1] != x0.shape or logits.shape[-1] < self.vocab_size:
            raise ValueError(
                f"logits of shape {tuple(logits.shape)} do not fit ids of shape {tuple(x0.shape)} "
                f"with {self.vocab_size} real tokens"
            )
        if response_mask is None and corruption is not None and corruption.info is not None:
            response_mask = corruption.info.get("response_mask")
        logp = torch.log_softmax(logits[..., : self.vocab_size].float(), dim=-1)
        ce = -logp.gather(-1, x0.long()[..., None]).squeeze(-1)
        if response_mask is None:
            return ce
        if tuple(response_mask.shape) != tuple(x0.shape):
            raise ValueError(f"response_mask of shape {tuple(response_mask.shape)} does not fit ids of shape {tuple(x0.shape)}")
        return torch.where(response_mask.to(ce.device).bool(), ce, torch.zeros_like(ce))

    # -- no likelihood ---------------------------------------------------------------------------
    def event_probs(self, level_from: Tensor, level_to: Tensor):
        raise NotImplementedError(_NO_LIKELIHOOD)

    def transition(self, level_from: Tensor, level_to: Tensor):
        raise NotImplementedError(_NO_LIKELIHOOD)

    def marginal(self, level: Tensor):
        raise NotImplementedError(_NO_LIKELIHOOD)

    def posterior_probs(self, *args, **kwargs):
        raise NotImplementedError(_NO_LIKELIHOOD)

    def step_kl(self, *args, **kwargs):
        raise NotImplementedError(_NO_LIKELIHOOD)

    def continuous_bound(self, *args, **kwargs):
        raise NotImplementedError(_NO_LIKELIHOOD)

    def prior_kl(self, *args, **kwargs):
        raise NotImplementedError(_NO_LIKELIHOOD)
