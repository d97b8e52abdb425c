"""Hyperschedules: a noise level for every (generation step, position).

A hyperschedule gives, for a sequence of d positions, the table

    l[k, i] in [0, 1],   k = 0..T,   l[0, :] = 1,   l[T, :] = 0,   l[k, i] non-increasing in k

(the papers' tau_t^i / script-T). Generation step k (1..T) moves x from levels l[k-1] to l[k].
At step k a position is

    settled    l[k-1, i] == 0                        (clean; its K/V can be cached)
    worthless  l[k-1, i] == 1 and l[k, i] == 1       (pure prior; dropped from the input)
    active     otherwise

Window width omega = max_k #active(k); rate = d / T (tokens per model call).

    Quench()               l[k, i] = 1 if i >= k else 0                  T = d,            omega = 1
    Flat(steps)            l[k, i] = (T - k) / T                          T = steps,        omega = d
    Block(width, steps_per_block)
                           block b = i // width: l = clip(1 - (k - b S) / S, 0, 1)
                                                                          T = ceil(d/w) S,  omega = w
    Slide(width)           l[k, i] = clip((i + w - k) / w, 0, 1)         T = d + w - 1,    omega = w
    Custom(table)          any validated table
    Retimed(base, speed)   the base table linearly interpolated in k at T' = ceil(T / speed)
                           steps: the same path run at another rate.

Flat(steps=None) is continuous time: it has no table; training and the likelihood bound draw
l ~ U(0, 1) directly, and a sampler must be given a number of steps.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import ClassVar, NamedTuple, Optional, Sequence

import torch
from torch import Tensor

from ..specs import Part, build, registry

__all__ = [
    "Hyperschedule",
    "Quench",
    "Flat",
    "Block",
    "Slide",
    "Custom",
    "Retimed",
    "StepSplit",
    "LevelDraw",
    "SegmentDraw",
    "SETTLED",
    "ACTIVE",
    "WORTHLESS",
    "HYPERSCHEDULES",
    "hyperschedule",
    "validate_table",
]

# Category codes of a position at a generation step (ordered: settled < active < worthless).
SETTLED, ACTIVE, WORTHLESS = 0, 1, 2


class StepSplit(NamedTuple):
    """Boolean [T, d] tensors; row k-1 describes step k."""

    settled: Tensor
    active: Tensor
    worthless: Tensor

    def categories(self) -> Tensor:
        """[T, d] int8 codes SETTLED / ACTIVE / WORTHLESS."""
        cat = torch.full(self.active.shape, ACTIVE, dtype=torch.int8)
        cat[self.settled] = SETTLED
        cat[self.worthless] = WORTHLESS
        return cat


class LevelDraw(NamedTuple):
    """Levels drawn for training or for the likelihood bound, one step per sequence.

    level:       [B, d] level at which x0 is corrupted (l[k-1]; continuous time: u)
    next_level:  [B, d] level after the step (l[k]); None in continuous time
    step:        [B] step index k in 1..T (None in continuous time)
    num_steps:   T (None in continuous time); the Monte-Carlo weight of one step is T
    """

    level: Tensor
    next_level: Optional[Tensor]
    step: Optional[Tensor]
    num_steps: Optional[int]


class SegmentDraw(NamedTuple):
    """Per-segment draws for the efficient two-halves training layout.

    segment:     [B, d] segment id of each position (segments are contiguous, increasing)
    level:       [B, d] level of each position at its segment's drawn step (l[k_s - 1])
    next_level:  [B, d] level after that step (l[k_s])
    weight:      [B, d] Monte-Carlo weight of each position's term: the number of steps the
                 segment could have drawn, times the number of partitions per covered step
    """

    segment: Tensor
    level: Tensor
    next_level: Tensor
    weight: Tensor


def validate_table(table: Tensor) -> Tensor:
    """Check a [T+1, d] level table; return it as float64. Raises ValueError naming the problem."""
    table = torch.as_tensor(table, dtype=torch.float64)
    if table.dim() != 2:
        raise ValueError(f"a level table must be 2-D [T+1, d], got shape {tuple(table.shape)}")
    if table.shape[0] < 2 or table.shape[1] < 1:
        raise ValueError(f"a level table needs at least 2 rows (T >= 1) and 1 column, got {tuple(table.shape)}")
    if not torch.isfinite(table).all():
        raise ValueError("level table holds non-finite values")
    if (table < 0).any() or (table > 1).any():
        raise ValueError(
            f"levels must lie in [0, 1]; table spans [{table.min().item():g}, {table.max().item():g}]"
        )
    if not (table[0] == 1).all():
        raise ValueError("level table row 0 must be all 1 (every position starts at the prior)")
    if not (table[-1] == 0).all():
        raise ValueError("level table's last row must be all 0 (every position ends clean)")
    rises = table[1:] > table[:-1]
    if rises.any():
        k, i = (int(v) for v in rises.nonzero()[0])
        raise ValueError(
            f"levels must be non-increasing in the step: position {i} rises from "
            f"{table[k, i].item():g} at step {k} to {table[k + 1, i].item():g} at step {k + 1}"
        )
    return table


def _check_length(d: int) -> None:
    if not isinstance(d, int) or d < 1:
        raise ValueError(f"sequence length must be a positive int, got {d!r}")


def _check_width(schedule: "Hyperschedule", width: int, d: int) -> None:
    """A block / window wider than the sequence is refused, never silently cut to the length."""
    if width > d:
        raise ValueError(f"{schedule!r}: width {width} exceeds the sequence length {d} (width must be <= length)")


#: the most entries a level table [T + 1, d] may have (float64: 1 GiB), so that a step count from a
#: file or the command line is refused in one line instead of exhausting memory
MAX_TABLE_ENTRIES = 2**27


def _check_positive(name: str, v: int) -> None:
    if not isinstance(v, int) or isinstance(v, bool) or v < 1:
        raise ValueError(f"{name} must be a positive int, got {v!r}")


@functools.lru_cache(maxsize=256)
def _cached_table(schedule: "Hyperschedule", d: int) -> Tensor:
    return validate_table(schedule._build_table(d))


@functools.lru_cache(maxsize=256)
def _cached_split(schedule: "Hyperschedule", d: int) -> StepSplit:
    t = schedule.table(d)
    before, after = t[:-1], t[1:]
    settled = before == 0
    worthless = (before == 1) & (after == 1)
    return StepSplit(settled, ~settled & ~worthless, worthless)


@functools.lru_cache(maxsize=64)
def _segment_plan(schedule: "Hyperschedule", d: int) -> tuple[Tensor, Tensor, Tensor]:
    """Segment ids, step compatibility and weights for every partition offset (see draw_segments)."""
    split = schedule.split(d)
    w = schedule.segment_width(d)
    n_off = schedule.segment_offsets(d)
    pos = torch.arange(d)
    # prefix[k-1]: leading settled positions at step k; suffix[k-1]: start of the worthless tail.
    prefix = torch.cumprod(split.settled.long(), dim=1).sum(1)
    suffix = d - torch.cumprod(split.worthless.long().flip(1), dim=1).sum(1)
    offs = torch.arange(n_off)
    seg = (pos[None, :] + (w - offs[:, None]) % w) // w  # [O, d]; positions [0, off) are segment 0
    seg = seg - seg[:, :1]
    n_seg = int(seg.max()) + 1
    onehot = torch.nn.functional.one_hot(seg, n_seg).bool()  # [O, d, S]
    start = torch.where(onehot, pos[None, :, None], d + 1).amin(1)  # [O, S]
    end = torch.where(onehot, pos[None, :, None] + 1, -1).amax(1)  # [O, S]; -1: segment absent
    compat = (start[..., None] <= prefix) & (end[..., None] >= suffix)
    compat &= torch.einsum("ods,kd->osk", onehot.float(), split.active.float()) > 0
    present = end >= 0
    n_compat = compat.sum(-1)
    if ((n_compat == 0) & present).any():
        raise ValueError(
            f"{schedule!r} at d={d}: a segment of width {w} holds the active positions of no step; "
            "this schedule cannot use the two-halves layout"
        )
    cover = compat.any(1).sum(0)  # [T]: offsets under which each step is reachable
    if (cover == 0).any():
        k = int((cover == 0).nonzero()[0]) + 1
        raise ValueError(f"{schedule!r} at d={d}: step {k} fits no segment; use the per-sequence layout")
    weight = n_compat[..., None].double() * n_off / cover.double()  # [O, S, T]
    return seg, compat, weight


@dataclass(frozen=True)
class Hyperschedule(Part, kind="hyperschedule"):
    """Interface. Subclasses implement `num_steps` and `_build_table`; the rest is derived."""

    name: ClassVar[str] = "base"

    # -- the table and what follows from it ---------------------------------------------
    @property
    def continuous(self) -> bool:
        return False

    def num_steps(self, d: int) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    def _build_table(self, d: int) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def table(self, d: int) -> Tensor:
        """[T+1, d] float64 level table (validated, cached per (schedule, d))."""
        _check_length(d)
        if self.continuous:
            raise ValueError(f"{self!r} is continuous-time and has no level table: give it a number of steps")
        T = self.num_steps(d)
        if (T + 1) * d > MAX_TABLE_ENTRIES:  # refused before allocating (a saved folder may say 10^12 steps)
            raise ValueError(f"{self!r}: {T:,d} steps at length {d} make a level table of {(T + 1) * d:,d} entries, more "
                             f"than the {MAX_TABLE_ENTRIES:,d} allowed: use at most {MAX_TABLE_ENTRIES // d - 1:,d} steps")
        return _cached_table(self, d)

    def levels(self, k: int, d: int) -> Tensor:
        """Row k of the table: the levels after k generation steps."""
        t = self.table(d)
        if not 0 <= k < t.shape[0]:
            raise ValueError(f"step {k} outside 0..{t.shape[0] - 1}")
        return t[k]

    def split(self, d: int) -> StepSplit:
        """Settled / active / worthless masks [T, d] for steps 1..T."""
        self.table(d)
        return _cached_split(self, d)

    def width(self, d: int) -> int:
        """omega: the largest number of active positions at any step."""
        return int(self.split(d).active.sum(1).max())

    def rate(self, d: int) -> float:
        """Tokens per model call at this length, d / T."""
        return d / self.num_steps(d)

    @property
    def nominal_rate(self) -> Optional[float]:
        """Long-sequence limit of d / T (None where it depends on d, as for Flat)."""
        return None

    # -- other rates -------------------------------------------------------------------
    def with_steps(self, steps: int) -> "Hyperschedule":
        """The same level path run in `steps` generation steps."""
        _check_positive("steps", steps)
        return Retimed(self, steps=steps)

    def at_rate(self, rho: float) -> "Hyperschedule":
        """The same path at rho tokens per step (rho > nominal: 'quick draft'; < : 'think hard')."""
        if not rho > 0:
            raise ValueError(f"rate rho must be > 0, got {rho}")
        if self.nominal_rate is None:
            raise ValueError(f"{self!r} has no length-independent rate: use with_steps(T)")
        return Retimed(self, speed=rho / self.nominal_rate)

    # -- training draws ------------------------------------------------------------------
    def draw(
        self,
        batch: int,
        d: int,
        generator: Optional[torch.Generator] = None,
        u: Optional[Tensor] = None,
        device: "torch.device | str | None" = None,
    ) -> LevelDraw:
        """One generation step per sequence, uniform over 1..T (or l ~ U(0,1) in continuous time).

        `u` ([batch] in [0, 1)) replaces the uniform draw; the likelihood bound passes
        stratified values here to get low-discrepancy estimates.
        """
        _check_length(d)
        if u is None:
            u = torch.rand(batch, generator=generator, dtype=torch.float64)
        u = u.to(torch.float64).cpu()
        if u.shape != (batch,) or (u < 0).any() or (u >= 1).any():
            raise ValueError(f"u must be a [{batch}] tensor in [0, 1)")
        if self.continuous:
            # Flip to (0, 1]: level 0 is clean and carries no loss, level 1 is allowed.
            level = (1.0 - u)[:, None].expand(batch, d).float()
            return LevelDraw(level.to(device), None, None, None)
        table = self.table(d)
        T = table.shape[0] - 1
        k = (u * T).long().clamp_(max=T - 1) + 1
        return LevelDraw(table[k - 1].float().to(device), table[k].float().to(device), k.to(device), T)

    def segment_width(self, d: int) -> int:
        """Width of the segments of the two-halves training layout."""
        return self.width(d)

    def segment_offsets(self, d: int) -> int:
        """Number of partition offsets drawn from (1: a fixed partition)."""
        return 1

    def draw_segments(
        self,
        batch: int,
        d: int,
        generator: Optional[torch.Generator] = None,
        device: "torch.device | str | None" = None,
    ) -> SegmentDraw:
        """One step per segment, for the two-halves training layout (papers' appendix B.3).

        The sequence is cut into contiguous segments of `segment_width` (at a random offset when
        `segment_offsets` > 1). A step k is compatible with a segment [a, b) when at step k
        every position before a is settled, every position from b on is worthless, and some
        position of [a, b) is active: the noisy segment attending to itself and to the clean
        positions before it then sees exactly what the inference mask of step k shows. Each
        segment draws one compatible step uniformly. With cover(k) the number of offsets under
        which step k is compatible with some segment, the weight |C_s| * n_offsets / cover(k)
        makes the sum over segments an unbiased estimate of the sum over all T steps.
        """
        _check_length(d)
        table = self.table(d)
        seg_all, compat_all, weight_all = _segment_plan(self, d)  # [O, d], [O, S, T], [O, S, T]
        n_off = seg_all.shape[0]
        pos = torch.arange(d)
        off = (
            torch.randint(0, n_off, (batch,), generator=generator)
            if n_off > 1
            else torch.zeros(batch, dtype=torch.long)
        )
        seg = seg_all[off]  # [B, d]
        S = compat_all.shape[1]
        r = torch.rand((batch, S), generator=generator, dtype=torch.float64)
        # Segment s of a row takes its pick-th compatible step (pick uniform in [0, n_compat)): the
        # first step whose running count of compatible steps reaches pick + 1. Done per partition
        # offset (at most `segment_width` groups) with searchsorted over that offset's [S, T]
        # counts, so no [B, S, T] temporary is made (Quench at d = 4096: 134M entries per batch).
        chosen = torch.zeros(batch, S, dtype=torch.long)
        wsel = torch.zeros(batch, S, dtype=weight_all.dtype)
        srange = torch.arange(S)[:, None]
        for o in off.unique().tolist():
            rows = (off == o).nonzero().squeeze(1)
            counts = torch.cumsum(compat_all[o].int(), -1)  # [S, T]
            n_compat = counts[:, -1]  # [S]
            pick = (r[rows] * n_compat.clamp(min=1)).long()  # [R, S]
            idx = torch.searchsorted(counts, (pick + 1).T.int().contiguous())  # [S, R]
            idx = torch.where((n_compat > 0)[:, None], idx, torch.zeros_like(idx))  # absent segments: step 1
            chosen[rows] = idx.T
            wsel[rows] = weight_all[o][srange, idx].T
        k = chosen.gather(1, seg) + 1  # [B, d]
        weight = wsel.gather(1, seg)
        level = table[k - 1, pos[None, :]]
        next_level = table[k, pos[None, :]]
        return SegmentDraw(
            seg.to(device), level.float().to(device), next_level.float().to(device), weight.float().to(device)
        )

    # -- serialisation -----------------------------------------------------------------
    def __repr__(self) -> str:
        body = ", ".join(f"{k}={v!r}" for k, v in self.to_dict().items() if k != "name")
        return f"{type(self).__name__}({body})"


@dataclass(frozen=True, repr=False)
class Quench(Hyperschedule):
    """Autoregression as a hyperschedule: position i jumps from 1 to 0 at step i + 1."""

    name: ClassVar[str] = "quench"

    def num_steps(self, d: int) -> int:
        return d

    def _build_table(self, d: int) -> Tensor:
        k = torch.arange(d + 1)[:, None]
        i = torch.arange(d)[None, :]
        return (i >= k).double()

    @property
    def nominal_rate(self) -> float:
        return 1.0

    def segment_width(self, d: int) -> int:
        return 1

    def to_dict(self) -> dict:
        return {"name": self.name}


@dataclass(frozen=True, repr=False)
class Flat(Hyperschedule):
    """Every position at the same level (T - k) / T: MDLM / SEDD. steps=None: continuous time."""

    steps: Optional[int] = None
    name: ClassVar[str] = "flat"

    def __post_init__(self) -> None:
        if self.steps is not None:
            _check_positive("steps", self.steps)

    @property
    def continuous(self) -> bool:
        return self.steps is None

    def num_steps(self, d: int) -> int:
        if self.steps is None:
            raise ValueError("continuous-time Flat has no number of steps: use Flat(steps=T) or with_steps(T)")
        return self.steps

    def _build_table(self, d: int) -> Tensor:
        T = self.steps
        lv = (T - torch.arange(T + 1, dtype=torch.float64)) / T
        return lv[:, None].expand(T + 1, d).clone()

    def with_steps(self, steps: int) -> "Hyperschedule":
        return Flat(steps=steps)

    def segment_width(self, d: int) -> int:
        return d

    def to_dict(self) -> dict:
        return {"name": self.name, "steps": self.steps}


@dataclass(frozen=True, repr=False)
class Block(Hyperschedule):
    """Blocks of `width` positions anneal one after another, `steps_per_block` steps each."""

    width_: int = field(default=16, metadata={"alias": "width"})
    steps_per_block: int = 1
    name: ClassVar[str] = "block"

    def __init__(self, width: int = 16, steps_per_block: int = 1):
        _check_positive("width", width)
        _check_positive("steps_per_block", steps_per_block)
        object.__setattr__(self, "width_", width)
        object.__setattr__(self, "steps_per_block", steps_per_block)

    def num_steps(self, d: int) -> int:
        return math.ceil(d / self.width_) * self.steps_per_block

    def _build_table(self, d: int) -> Tensor:
        _check_width(self, self.width_, d)
        S = self.steps_per_block
        k = torch.arange(self.num_steps(d) + 1, dtype=torch.float64)[:, None]
        b = (torch.arange(d) // self.width_).double()[None, :]
        return (1.0 - (k - b * S) / S).clamp(0.0, 1.0)

    @property
    def nominal_rate(self) -> float:
        return self.width_ / self.steps_per_block

    def segment_width(self, d: int) -> int:
        return min(self.width_, d)

    def to_dict(self) -> dict:
        return {"name": self.name, "width": self.width_, "steps_per_block": self.steps_per_block}


@dataclass(frozen=True, repr=False)
class Slide(Hyperschedule):
    """A window of `width` positions with linearly decreasing levels slides one position a step."""

    width_: int = 16
    name: ClassVar[str] = "slide"

    def __init__(self, width: int = 16):
        _check_positive("width", width)
        object.__setattr__(self, "width_", width)

    def num_steps(self, d: int) -> int:
        return d + self.width_ - 1

    def _build_table(self, d: int) -> Tensor:
        w = self.width_
        _check_width(self, w, d)
        k = torch.arange(self.num_steps(d) + 1, dtype=torch.float64)[:, None]
        i = torch.arange(d, dtype=torch.float64)[None, :]
        return ((i + w - k) / w).clamp(0.0, 1.0)

    @property
    def nominal_rate(self) -> float:
        return 1.0

    def segment_width(self, d: int) -> int:
        return min(self.width_, d)

    def segment_offsets(self, d: int) -> int:
        return min(self.width_, d)

    def to_dict(self) -> dict:
        return {"name": self.name, "width": self.width_}


@dataclass(frozen=True, repr=False, eq=False)
class Custom(Hyperschedule):
    """Any user table [T+1, d] (validated: shape, range, monotone, endpoints). Fixed length d."""

    table_: Tensor = None  # type: ignore[assignment]
    name: ClassVar[str] = "custom"

    def __init__(self, table: "Tensor | Sequence[Sequence[float]]"):
        object.__setattr__(self, "table_", validate_table(torch.as_tensor(table, dtype=torch.float64)))

    def _check_d(self, d: int) -> None:
        if d != self.table_.shape[1]:
            raise ValueError(f"this Custom table is for length {self.table_.shape[1]}, not {d}")

    def num_steps(self, d: int) -> int:
        self._check_d(d)
        return self.table_.shape[0] - 1

    def _build_table(self, d: int) -> Tensor:
        self._check_d(d)
        return self.table_

    def __hash__(self) -> int:
        return hash((self.name, tuple(self.table_.flatten().tolist())))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Custom) and torch.equal(self.table_, other.table_)

    def to_dict(self) -> dict:
        return {"name": self.name, "table": self.table_.tolist()}


@dataclass(frozen=True, repr=False)
class Retimed(Hyperschedule):
    """`base`'s level path run in another number of steps: linear interpolation along k.

    Exactly one of `steps` (fixed T') or `speed` (T' = ceil(T / speed)) is given. Endpoints and
    monotonicity carry over from the base table.
    """

    base: Hyperschedule = None  # type: ignore[assignment]
    steps: Optional[int] = None
    speed: Optional[float] = None
    name: ClassVar[str] = "retimed"

    def __post_init__(self) -> None:
        if not isinstance(self.base, Hyperschedule):
            raise ValueError("Retimed needs a base hyperschedule")
        if (self.steps is None) == (self.speed is None):
            raise ValueError("Retimed takes exactly one of steps or speed")
        if self.steps is not None:
            _check_positive("steps", self.steps)
        if self.speed is not None and not self.speed > 0:
            raise ValueError(f"speed must be > 0, got {self.speed}")
        if self.base.continuous:
            raise ValueError("retime a continuous-time schedule with Flat(steps=T)")

    def num_steps(self, d: int) -> int:
        if self.steps is not None:
            return self.steps
        return max(1, math.ceil(self.base.num_steps(d) / self.speed - 1e-9))

    def _build_table(self, d: int) -> Tensor:
        src = self.base.table(d)
        T0, T1 = src.shape[0] - 1, self.num_steps(d)
        # Source coordinate k * T0 / T1 split exactly in integers: floating-point x.floor() put
        # rows that land on a source row one ulp off it (levels 1e-16 / 1 - 1e-16 instead of 0 / 1,
        # which turned settled and worthless positions into active ones).
        num = torch.arange(T1 + 1) * T0
        lo = torch.div(num, T1, rounding_mode="floor").clamp(max=T0)
        hi = (lo + 1).clamp(max=T0)
        frac = ((num - lo * T1).double() / T1)[:, None]
        a, b = src[lo], src[hi]
        out = a + (b - a) * frac  # exactly a where a == b or frac == 0
        out[0], out[-1] = 1.0, 0.0  # exact endpoints despite rounding
        return out

    @property
    def nominal_rate(self) -> Optional[float]:
        if self.speed is not None and self.base.nominal_rate is not None:
            return self.base.nominal_rate * self.speed
        return None

    def to_dict(self) -> dict:
        return {"name": self.name, "base": self.base.to_dict(), "steps": self.steps, "speed": self.speed}


#: the registry of hyperschedules (diffusionlm.specs; a subclass with a name registers itself)
HYPERSCHEDULES: dict[str, type[Hyperschedule]] = registry("hyperschedule")


def hyperschedule(spec: "str | dict | Hyperschedule") -> Hyperschedule:
    """Build a hyperschedule from a name, a `to_dict()` dict, or pass one through
    (`diffusionlm.specs.build("hyperschedule", spec)`)."""
    return build("hyperschedule", spec)
