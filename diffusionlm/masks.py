"""Attention masks derived from a hyperschedule: one source of truth, two materializations.
At the top level, as in DESIGN's map: a part of its own between hyperschedules and models.

Every mask here is a ``mask_mod(b, h, q_idx, kv_idx) -> bool`` function (FlexAttention's
signature; True = the query row may attend the key row). The same function is materialized as

* a dense boolean tensor ``[B, 1, Lq, Lkv]`` (:func:`dense_mask`), by evaluating it once on
  broadcast index tensors — for ``scaled_dot_product_attention`` and everything else that takes
  a tensor mask (use :func:`additive_mask` for Hugging Face "eager" attention, which *adds* the
  mask), and
* a FlexAttention ``BlockMask`` (:func:`flex_block_mask`), via ``create_block_mask``.

Masks live in ROW space: the output of row j predicts token j in every layout (:class:`Layout`);
the layout only changes which token row j *reads* (ALIGNED: token j; SHIFTED: token j-1, row 0
reads BOS). So the masks do not depend on the layout; the inputs do (:func:`shift_inputs`,
:func:`two_halves_inputs`). The one exception is SHIFTED_LAST, which adds a READER row per step
(per segment in the two-halves layout: ``readers=True``, :func:`segment_readers`; per inference
step: :func:`reader_of`) reading the last fed position's token, an ACTIVE row whose output is
dropped.

Rules (categories are the hyperschedule's SETTLED / ACTIVE / WORTHLESS codes at one step):

* inference: a settled row attends settled rows causally (kv <= q), so settled K/V can be cached
  exactly; an active row attends every settled and active row; a worthless row attends only
  itself (no row is ever fully masked: SDPA would give NaN) and no row attends a worthless one.
* two halves (efficient training, papers' appendix B.3): input ``[x_noisy ; x_clean]`` of length
  2d; a noisy row attends the noisy rows of its own segment and the clean rows of earlier
  segments; a clean row attends clean rows causally (or block-causally); clean rows never attend
  noisy rows.

Inference masks are built anew on each call; whoever reuses them keeps them in its own bounded
:class:`MaskCache` (the sampler driver does). Training masks are remembered for the last 16
distinct batches of draws; the tensors a cache returns are shared: do not modify them in place.
"""
from __future__ import annotations

import hashlib
from collections import OrderedDict
from enum import Enum
from typing import Callable, NamedTuple, Optional, Union

import torch
from torch import Tensor
from torch.nn.attention.flex_attention import create_block_mask

from .checks import check_ids, check_levels
from .schedules.hyper import ACTIVE, SETTLED, WORTHLESS, Hyperschedule

__all__ = [
    "Layout",
    "MaskMod",
    "StepMask",
    "shift_inputs",
    "reader_of",
    "segment_readers",
    "inference_mask_mod",
    "two_halves_mask_mod",
    "causal_mask_mod",
    "full_mask_mod",
    "dense_mask",
    "flex_block_mask",
    "additive_mask",
    "categories_from_levels",
    "step_categories",
    "inference_mask",
    "training_mask",
    "two_halves_mask",
    "two_halves_inputs",
    "clear_caches",
    "MaskCache",
]

MaskMod = Callable[[Tensor, Tensor, Tensor, Tensor], Tensor]
Device = Union[torch.device, str, None]


class Layout(str, Enum):
    """Which token row j reads. ALIGNED: token j. SHIFTED: token j-1 (row 0 reads BOS).
    SHIFTED_LAST: as SHIFTED, plus one READER row per step (per segment in the two-halves
    layout) that reads the last fed position's token.

    In every layout row j's output predicts token j; SHIFTED is the autoregressive convention
    (output i predicts token i+1 of the *input*), needed to adapt AR checkpoints. Its price: the
    last token p of a block is read only by row p + 1, which belongs to the next block, so no row
    of its own block ever reads it (docs/smollm2/block.md: revealing it changes nothing).
    SHIFTED_LAST adds that row: at every step a reader at position p + 1 reads token p (MASK or
    revealed), p the step's last non-worthless position; it attends and is attended as an ACTIVE
    row, and its output is discarded. The model then needs positions up to d (:func:`reader_of`).
    """

    ALIGNED = "aligned"
    SHIFTED = "shifted"
    SHIFTED_LAST = "shifted_last"

    @property
    def shifted(self) -> bool:
        """Whether row j reads token j - 1 (and row 0 reads BOS)."""
        return self is not Layout.ALIGNED

    @property
    def reads_last(self) -> bool:
        """Whether each step (segment) adds a reader row of its last token."""
        return self is Layout.SHIFTED_LAST

    @property
    def extra_positions(self) -> int:
        """Positions beyond the sequence's d that a forward may use (the reader's d)."""
        return int(self.reads_last)


class StepMask(NamedTuple):
    """The attention mask of one inference step.

    rows:  [L'] LongTensor, the positions fed to the model at this step, ascending (the
           non-worthless positions when worthless ones are dropped, else all d positions)
    mask:  dense bool [1, 1, L', L'] or a FlexAttention BlockMask over those rows
    """

    rows: Tensor
    mask: object


# ----------------------------------------------------------------------------------------
# validation helpers
# ----------------------------------------------------------------------------------------
def _integer_rows(t: Tensor, not_integer: str, bad_shape: str) -> Tensor:
    """`t` as an integer [n, L] tensor (a [L] one gains its row axis); ValueError with
    `not_integer` / `bad_shape` (plus what was given) for a bool / float tensor or another shape."""
    t = torch.as_tensor(t)
    if t.dtype == torch.bool or t.is_floating_point() or t.is_complex():
        raise ValueError(f"{not_integer}, got {t.dtype}")
    if t.dim() == 1:
        t = t[None]
    if t.dim() != 2 or t.shape[0] < 1 or t.shape[1] < 1:
        raise ValueError(f"{bad_shape}, got {tuple(t.shape)}")
    return t


def _check_categories(categories: Tensor, name: str = "categories") -> Tensor:
    """Return `categories` as a long [n, L] tensor; ValueError unless integer codes 0..2."""
    categories = _integer_rows(categories, f"{name} must be an integer tensor of SETTLED/ACTIVE/WORTHLESS codes",
                               f"{name} must have shape [B or 1, L] with L >= 1")
    bad = (categories < SETTLED) | (categories > WORTHLESS)
    if bad.any():
        v = int(categories[bad][0])
        raise ValueError(
            f"{name} holds the code {v}; allowed: SETTLED={SETTLED}, ACTIVE={ACTIVE}, WORTHLESS={WORTHLESS}"
        )
    return categories.long()


def _check_segment(segment: Tensor) -> Tensor:
    """Return `segment` as a long [n, d] tensor; ValueError unless each row is non-decreasing."""
    segment = _integer_rows(segment, "segment ids must be an integer tensor", "segment must have shape [B or 1, d] with d >= 1")
    drops = segment[:, 1:] < segment[:, :-1]
    if drops.any():
        b, i = (int(v) for v in drops.nonzero()[0])
        raise ValueError(
            "segment ids must be contiguous and non-decreasing along the sequence: row "
            f"{b} goes from {int(segment[b, i])} at position {i} to {int(segment[b, i + 1])} at {i + 1}"
        )
    return segment.long()


def _lookup(table: Tensor) -> Callable[[Tensor, Tensor], Tensor]:
    """``table[b, i]`` for broadcast index tensors (also inside FlexAttention's vmap); a table
    with one row is shared by every batch index."""
    # aten.index directly: what FlexAttention turns `table[i]` into anyway, minus a per-call
    # autograd-function wrapper that made create_block_mask ~3x slower on CPU.
    index = torch.ops.aten.index
    if table.shape[0] == 1:
        row = table[0]
        return lambda b, i: index(row, [i])
    return lambda b, i: index(table, [b, i])


def _annotate(fn: MaskMod, batch: Optional[int], q_len: Optional[int], kv_len: Optional[int], device) -> MaskMod:
    """Record the sizes a mask_mod was built for (None: any), for the materializers to check."""
    fn.batch_size = batch  # type: ignore[attr-defined]
    fn.q_len = q_len  # type: ignore[attr-defined]
    fn.kv_len = kv_len  # type: ignore[attr-defined]
    fn.device = device  # type: ignore[attr-defined]
    return fn


# ----------------------------------------------------------------------------------------
# layouts
# ----------------------------------------------------------------------------------------
def shift_inputs(x: Tensor, layout: "Layout | str", bos_id: Optional[int] = None) -> Tensor:
    """What each row reads: ALIGNED row j reads x[..., j] (x unchanged); SHIFTED row j reads
    x[..., j-1] and row 0 reads `bos_id`, i.e. ``cat([bos], x[..., :-1])``.

    Raises ValueError for SHIFTED without a `bos_id`.
    """
    layout = Layout(layout)
    check_ids(x, None, "x (token ids)")
    if not layout.shifted:
        return x
    if bos_id is None:
        raise ValueError(f"the {layout.name} layout needs bos_id (the token row 0 reads)")
    bos = x.new_full((*x.shape[:-1], 1), bos_id)
    return torch.cat([bos, x[..., :-1]], dim=-1)


def reader_of(categories: Tensor) -> Tensor:
    """[n] the position each row's reader reads (SHIFTED_LAST, one inference step): the last
    position that is not WORTHLESS. The reader sits at that position + 1."""
    cats = _check_categories(categories)
    fed = cats != WORTHLESS
    if not bool(fed.any(1).all()):
        raise ValueError("a step with every position worthless has nothing for a reader to read")
    idx = torch.arange(cats.shape[1], device=cats.device)
    return torch.where(fed, idx, -1).amax(1)


def segment_readers(
    segment: Tensor, categories: Optional[Tensor] = None, num_readers: Optional[int] = None
) -> tuple[Tensor, Tensor, Tensor]:
    """The readers of the two-halves layout under SHIFTED_LAST, one per segment of each row.

    Returns (source [n, R], valid [n, R], rank [n, d]): reader r of row b reads position
    source[b, r], the last position of b's r-th segment that is not WORTHLESS (every position with
    no `categories`); `valid` is False where b has fewer than r + 1 segments or the segment is all
    worthless (then the reader is padding: it attends only itself, nobody attends it); rank[b, i]
    is the segment number (0, 1, ...) of position i within its row. R = the most segments a row
    has, or `num_readers` (at least that) to pad every batch to one size.
    """
    seg, cats = _two_halves_rows(segment, categories)
    n, d = seg.shape
    first = torch.ones_like(seg, dtype=torch.bool)
    first[:, 1:] = seg[:, 1:] != seg[:, :-1]
    rank = first.long().cumsum(1) - 1
    R = int(rank.max()) + 1
    if num_readers is not None:
        if num_readers < R:
            raise ValueError(f"num_readers = {num_readers}, but a row has {R} segments")
        R = num_readers
    fed = torch.ones_like(seg, dtype=torch.bool) if cats is None else cats != WORTHLESS
    idx = torch.arange(d, device=seg.device).expand(n, d)
    source = torch.full((n, R), -1, dtype=torch.long, device=seg.device)
    source = source.scatter_reduce(1, rank, torch.where(fed, idx, -1), reduce="amax")
    valid = source >= 0
    return source.clamp_min(0), valid, rank


# ----------------------------------------------------------------------------------------
# mask_mods
# ----------------------------------------------------------------------------------------
def _inference_rule(qc: Tensor, kc: Tensor, q: Tensor, kv: Tensor) -> Tensor:
    """Settled q: settled kv with kv <= q. Active q: any non-worthless kv. Worthless q: kv == q."""
    settled_q = (qc == SETTLED) & (kc == SETTLED) & (kv <= q)
    active_q = (qc == ACTIVE) & (kc != WORTHLESS)
    worthless_q = (qc == WORTHLESS) & (kv == q)
    return settled_q | active_q | worthless_q


def inference_mask_mod(categories: Tensor) -> MaskMod:
    """Mask of one inference step from per-row category codes ``[B or 1, L]`` (or ``[L]``).

    Rule: a SETTLED query attends SETTLED keys at kv <= q (causal among settled, so their K/V
    can be cached exactly); an ACTIVE query attends every non-WORTHLESS key (dense over settled
    and active); a WORTHLESS query attends only itself (kv == q), so that no row is fully masked,
    and no query attends a WORTHLESS key. Indices outside 0..L-1 (FlexAttention padding) are
    masked. With a single row of categories the mask does not depend on the batch index.
    """
    cats = _check_categories(categories)
    n, L = cats.shape
    lookup = _lookup(cats)

    def mask_mod(b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
        qc = lookup(b, q_idx.clamp(0, L - 1))
        kc = lookup(b, kv_idx.clamp(0, L - 1))
        inside = (q_idx < L) & (kv_idx < L)
        return inside & _inference_rule(qc, kc, q_idx, kv_idx)

    return _annotate(mask_mod, n if n > 1 else None, L, L, cats.device)


def _two_halves_rows(segment: Tensor, categories: Optional[Tensor]) -> tuple[Tensor, Optional[Tensor]]:
    """Segment ids and categories checked and, when both are given, broadcast to one [n, d]."""
    seg = _check_segment(segment)
    if categories is None:
        return seg, None
    n, d = seg.shape
    cats = _check_categories(categories).to(seg.device)
    if cats.shape[1] != d or (cats.shape[0] != n and 1 not in (n, cats.shape[0])):
        raise ValueError(f"categories {tuple(cats.shape)} do not match segment ids {tuple(seg.shape)}")
    n = max(n, cats.shape[0])
    return seg.expand(n, d), cats.expand(n, d)


def two_halves_mask_mod(
    segment: Tensor,
    block_causal: bool = False,
    categories: Optional[Tensor] = None,
    readers: bool = False,
    num_readers: Optional[int] = None,
) -> MaskMod:
    """Mask of the two-halves training layout (papers' appendix B.3), length 2d (+ R readers).

    The input is ``[x_noisy (rows 0..d-1) ; x_clean (rows d..2d-1)]``; `segment` ``[B or 1, d]``
    holds contiguous, non-decreasing segment ids. Rule:

    * a noisy row q attends the noisy keys of its own segment (segment[kv] == segment[q]) and the
      clean keys kv-d of strictly earlier segments (segment[kv-d] < segment[q]);
    * a clean row attends only clean keys, causally (kv <= q), or block-causally
      (segment[kv-d] <= segment[q-d]) with `block_causal`;
    * clean rows never attend noisy rows.

    Optional `categories` ``[B or 1, d]`` (each position's SETTLED/ACTIVE/WORTHLESS code at its
    segment's drawn step, e.g. :func:`categories_from_levels` of a ``draw_segments`` draw) refine
    the noisy-to-noisy part with the inference rule, so that a segment that also holds settled or
    worthless positions (Slide near the ends) sees exactly what the inference step shows: inside
    a segment, settled rows attend settled rows causally, nobody attends a worthless row, a
    worthless row attends only itself (and no clean row).

    `readers` (the SHIFTED_LAST layout): R more rows 2d..2d+R-1, reader r standing for segment r
    of its row (:func:`segment_readers`; `num_readers` pads R). A reader is an ACTIVE row of its segment: it attends
    the segment's non-worthless noisy keys, the clean keys of earlier segments and itself, and
    the segment's active rows attend it; nothing else does. A padding reader attends only itself.
    """
    seg, cats = _two_halves_rows(segment, categories)
    n, d = seg.shape
    if cats is not None:
        cat_of = _lookup(cats)
    seg_of = _lookup(seg)
    R, reader_rule = _two_halves_reader_rule(seg, cats, num_readers) if readers else (0, None)
    L = 2 * d + R

    def mask_mod(b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
        q_noisy = q_idx < d
        kv_noisy = kv_idx < d
        q_clean = ~q_noisy & (q_idx < 2 * d)
        kv_clean = ~kv_noisy & (kv_idx < 2 * d)
        qp = torch.where(q_noisy, q_idx, q_idx - d).clamp(0, d - 1)
        kp = torch.where(kv_noisy, kv_idx, kv_idx - d).clamp(0, d - 1)
        sq = seg_of(b, qp)
        sk = seg_of(b, kp)
        if cats is None:
            noisy_noisy = sk == sq
            noisy_clean = sk < sq
        else:
            qc = cat_of(b, qp)
            kc = cat_of(b, kp)
            noisy_noisy = (sk == sq) & _inference_rule(qc, kc, qp, kp)
            noisy_clean = (sk < sq) & (qc != WORTHLESS)
        noisy_q = q_noisy & torch.where(kv_noisy, noisy_noisy, kv_clean & noisy_clean)
        clean_clean = (sk <= sq) if block_causal else (kp <= qp)
        clean_q = q_clean & kv_clean & clean_clean
        allowed = noisy_q | clean_q
        if R:
            allowed = allowed | reader_rule(b, q_idx, kv_idx)
        inside = (q_idx < L) & (kv_idx < L)
        return inside & allowed

    return _annotate(mask_mod, n if n > 1 else None, L, L, seg.device)


def _two_halves_reader_rule(seg: Tensor, cats: Optional[Tensor], num_readers: Optional[int]):
    """(R, rule): the reader rows' part of :func:`two_halves_mask_mod` (rows 2d..2d+R-1), `rule(b,
    q_idx, kv_idx)` True where a reader is involved and the pair may attend (the docstring there)."""
    d = seg.shape[1]
    _, valid, rank = segment_readers(seg, cats, num_readers)
    R = valid.shape[1]
    rank_of, valid_of = _lookup(rank), _lookup(valid)
    cat_of = _lookup(cats) if cats is not None else None

    def rule(b: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
        q_noisy, kv_noisy = q_idx < d, kv_idx < d
        kv_clean = ~kv_noisy & (kv_idx < 2 * d)
        qp = q_idx.clamp(0, d - 1)
        kp = torch.where(kv_noisy, kv_idx, kv_idx - d).clamp(0, d - 1)
        qr = (q_idx - 2 * d).clamp(0, R - 1)
        kr = (kv_idx - 2 * d).clamp(0, R - 1)
        q_reader = q_idx >= 2 * d
        kv_reader = kv_idx >= 2 * d
        kv_fed = torch.ones_like(kv_noisy) if cat_of is None else cat_of(b, kp) != WORTHLESS
        q_active = torch.ones_like(q_noisy) if cat_of is None else cat_of(b, qp) == ACTIVE
        # a noisy row of segment r attends reader r when it is active (the inference rule)
        noisy_reader = q_noisy & kv_reader & valid_of(b, kr) & (rank_of(b, qp) == kr) & q_active
        # reader r: its segment's fed noisy keys, the clean keys before the segment, itself
        of_reader = torch.where(
            kv_noisy, kv_fed & (rank_of(b, kp) == qr), kv_clean & (rank_of(b, kp) < qr)
        ) & valid_of(b, qr)
        reader_q = q_reader & ((kv_reader & (kv_idx == q_idx)) | (~kv_reader & of_reader))
        return noisy_reader | reader_q

    return R, rule


def causal_mask_mod() -> MaskMod:
    """Causal mask: row q attends kv <= q."""

    def mask_mod(b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
        return kv_idx <= q_idx

    return _annotate(mask_mod, None, None, None, None)


def full_mask_mod() -> MaskMod:
    """Full (bidirectional) mask: every row attends every row."""

    def mask_mod(b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
        return (q_idx >= 0) & (kv_idx >= 0)

    return _annotate(mask_mod, None, None, None, None)


# ----------------------------------------------------------------------------------------
# materialization
# ----------------------------------------------------------------------------------------
def _check_sizes(mask_mod: MaskMod, batch: Optional[int], q_len: int, kv_len: int) -> None:
    for name, v in (("q_len", q_len), ("kv_len", kv_len)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ValueError(f"{name} must be a positive int, got {v!r}")
    mb = getattr(mask_mod, "batch_size", None)
    if mb is not None and batch is not None and batch != mb:
        raise ValueError(f"this mask_mod was built for batch {mb}, not {batch}")
    mq, mk = getattr(mask_mod, "q_len", None), getattr(mask_mod, "kv_len", None)
    if mq is not None and q_len != mq:
        raise ValueError(f"this mask_mod was built for {mq} query rows, not {q_len}")
    if mk is not None and kv_len != mk:
        raise ValueError(f"this mask_mod was built for {mk} key rows, not {kv_len}")


def _device(mask_mod: MaskMod, device: Device) -> torch.device:
    if device is not None:
        return torch.device(device)
    dev = getattr(mask_mod, "device", None)
    return torch.device(dev) if dev is not None else torch.device("cpu")


def dense_mask(
    mask_mod: MaskMod, batch: int, q_len: int, kv_len: Optional[int] = None, device: Device = None
) -> Tensor:
    """Materialize `mask_mod` as a dense bool tensor [batch, 1, q_len, kv_len] (True = attend).

    The mask_mod is evaluated once on broadcast index tensors (b [batch,1,1,1], h [1,1,1,1],
    q [1,1,q_len,1], kv [1,1,1,kv_len]); no Python loop over rows. Suitable for SDPA's
    boolean `attn_mask`; see :func:`additive_mask` for attention that adds its mask.
    """
    kv_len = q_len if kv_len is None else kv_len
    if not isinstance(batch, int) or isinstance(batch, bool) or batch < 1:
        raise ValueError(f"batch must be a positive int, got {batch!r}")
    _check_sizes(mask_mod, batch, q_len, kv_len)
    dev = _device(mask_mod, device)
    b = torch.arange(batch, device=dev).view(batch, 1, 1, 1)
    h = torch.zeros(1, 1, 1, 1, dtype=torch.long, device=dev)
    q = torch.arange(q_len, device=dev).view(1, 1, q_len, 1)
    kv = torch.arange(kv_len, device=dev).view(1, 1, 1, kv_len)
    out = torch.as_tensor(mask_mod(b, h, q, kv), device=dev)
    return out.to(torch.bool).expand(batch, 1, q_len, kv_len).contiguous()


def flex_block_mask(
    mask_mod: MaskMod,
    batch: Optional[int],
    q_len: int,
    kv_len: Optional[int] = None,
    device: Device = None,
    block_size: int = 128,
):
    """Materialize `mask_mod` as a FlexAttention BlockMask (``create_block_mask``).

    `batch` None: one mask shared by every batch row (the mask_mod must not depend on b).
    Lengths need not be multiples of `block_size` (the block mask is padded; the mask_mods here
    mask every padded index).
    """
    kv_len = q_len if kv_len is None else kv_len
    if batch is None and getattr(mask_mod, "batch_size", None) is not None:
        raise ValueError(f"this mask_mod depends on the batch row (batch {mask_mod.batch_size}); pass batch")
    if batch is not None and (not isinstance(batch, int) or isinstance(batch, bool) or batch < 1):
        raise ValueError(f"batch must be a positive int or None, got {batch!r}")
    _check_sizes(mask_mod, batch, q_len, kv_len)
    return create_block_mask(
        mask_mod, batch, None, q_len, kv_len, device=_device(mask_mod, device), BLOCK_SIZE=block_size
    )


def _materialize(mask_mod: MaskMod, batch: Optional[int], length: int, kind: str, device: Device, block_size: int):
    if kind == "dense":
        return dense_mask(mask_mod, batch or 1, length, device=device)
    if kind == "flex":
        return flex_block_mask(mask_mod, batch, length, device=device, block_size=block_size)
    raise ValueError(f"kind must be 'dense' or 'flex', got {kind!r}")


def additive_mask(bool_mask: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    """Float mask for attention that *adds* its mask (HF "eager"): 0 where `bool_mask` is True
    (may attend), ``torch.finfo(dtype).min`` where it is False. A 0/1 float mask would mask nothing.
    """
    if bool_mask.dtype != torch.bool:
        raise ValueError(f"additive_mask expects a bool mask, got {bool_mask.dtype}")
    if not torch.empty((), dtype=dtype).is_floating_point():
        raise ValueError(f"additive_mask needs a floating dtype, got {dtype}")
    out = torch.zeros(bool_mask.shape, dtype=dtype, device=bool_mask.device)
    return out.masked_fill_(~bool_mask, torch.finfo(dtype).min)


# ----------------------------------------------------------------------------------------
# hyperschedule-driven builders
# ----------------------------------------------------------------------------------------
def categories_from_levels(level: Tensor, next_level: Optional[Tensor] = None) -> Tensor:
    """int8 codes of a training draw: SETTLED where level == 0, WORTHLESS where level == 1 and
    next_level == 1, ACTIVE otherwise (the same split as ``Hyperschedule.split`` at that step).

    `next_level` None (continuous time): every position with level > 0 is ACTIVE.
    """
    level = check_levels(level, what="level")
    if next_level is not None:
        next_level = check_levels(next_level, what="next_level")
        if next_level.shape != level.shape:
            raise ValueError(f"level {tuple(level.shape)} and next_level {tuple(next_level.shape)} differ in shape")
    out = torch.full(level.shape, ACTIVE, dtype=torch.int8, device=level.device)
    out[level == 0] = SETTLED
    if next_level is not None:
        out[(level == 1) & (next_level == 1)] = WORTHLESS
    return out


def step_categories(schedule: Hyperschedule, d: int, k: int) -> Tensor:
    """int8 [d] SETTLED/ACTIVE/WORTHLESS codes at generation step k in 1..T (the move from
    levels l[k-1] to l[k]): ``schedule.split(d).categories()[k-1]``, built from the schedule's
    own (cached) split in O(d).
    """
    split = schedule.split(d)
    T = split.active.shape[0]
    if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= T:
        raise ValueError(f"step k must be an int in 1..{T} for {schedule!r} at d={d}, got {k!r}")
    out = torch.full((d,), ACTIVE, dtype=torch.int8)
    out[split.settled[k - 1]] = SETTLED
    out[split.worthless[k - 1]] = WORTHLESS
    return out


def inference_mask(
    schedule: Hyperschedule,
    d: int,
    k: int,
    kind: str = "dense",
    drop_worthless: bool = True,
    device: Device = None,
    block_size: int = 128,
) -> StepMask:
    """The attention mask of inference step k (1..T) of `schedule` at length d (built anew; a
    caller that loops over steps keeps the ones it reuses in its own :class:`MaskCache`).

    Applies :func:`inference_mask_mod` to the step's categories. With `drop_worthless` the
    worthless positions are not fed at all: `rows` lists the settled and active positions
    (ascending) and the mask covers only those; otherwise `rows` is 0..d-1 and worthless rows
    attend only themselves. `kind` "dense" gives bool [1, 1, L', L'], "flex" a BlockMask
    (batch-independent).
    """
    if kind not in ("dense", "flex"):
        raise ValueError(f"kind must be 'dense' or 'flex', got {kind!r}")
    cats = step_categories(schedule, d, k)
    dev = torch.device(device) if device is not None else torch.device("cpu")
    if drop_worthless:
        rows = (cats != WORTHLESS).nonzero().squeeze(1)
    else:
        rows = torch.arange(d)
    kept = cats[rows].to(dev)
    mask = _materialize(inference_mask_mod(kept[None]), None, int(rows.numel()), kind, dev, block_size)
    return StepMask(rows.to(dev), mask)


class MaskCache:
    """A bounded least-recently-used store of built masks, owned by the code that reuses them
    (a sampler run, a benchmark loop, the training-mask builders below): nothing grows without
    bound and nothing outlives its owner.

        cache = MaskCache(maxsize=8)
        m = cache.get(key, lambda: build(...))          # built once per key while remembered
        step = cache.inference_mask(schedule, d, k)     # inference_mask, remembered

    Returned tensors are shared between the callers of one cache: do not modify them in place.
    """

    def __init__(self, maxsize: int = 16):
        if not isinstance(maxsize, int) or isinstance(maxsize, bool) or maxsize < 1:
            raise ValueError(f"MaskCache maxsize must be an int >= 1, got {maxsize!r}")
        self.maxsize = maxsize
        self._items: "OrderedDict[object, object]" = OrderedDict()

    def get(self, key: object, build: Callable[[], object]) -> object:
        """The value remembered under `key`, else `build()` (remembered, evicting the oldest)."""
        try:
            self._items.move_to_end(key)
            return self._items[key]
        except KeyError:
            value = build()
            self._items[key] = value
            if len(self._items) > self.maxsize:
                self._items.popitem(last=False)
            return value

    def inference_mask(self, schedule: Hyperschedule, d: int, k: int, **options) -> StepMask:
        """:func:`inference_mask` (same keyword options), remembered per (schedule, d, k, options)."""
        key = ("inference", schedule, d, k, tuple(sorted((n, str(v)) for n, v in options.items())))
        return self.get(key, lambda: inference_mask(schedule, d, k, **options))

    def clear(self) -> None:
        self._items.clear()

    def __len__(self) -> int:
        return len(self._items)


#: dense training masks of the last few distinct sets of batch rows (see _dense_per_row)
_TRAINING_MASKS = MaskCache(maxsize=16)


def _dense_per_row(key: Tensor, tag: tuple, build: Callable[[Tensor], Tensor]) -> Tensor:
    """Dense masks [B, 1, L, L] that depend on each batch row only through its `key` row [B, K].

    Built once per distinct row (``torch.unique``) and remembered for the last few distinct sets
    (`_TRAINING_MASKS`, 16 entries): where the draws repeat (two-halves under Block, Quench or
    Flat: one mask for every row of every batch) the mask is paid for once, not per batch (at
    d = 4096 a dense [8, 1, 2d, 2d] build is seconds). `build(unique_rows)` returns the
    [U, 1, L, L] masks of the unique rows. When all rows agree the result is an expanded
    (read-only) view of one cached mask.
    """
    uniq, inv = torch.unique(key, dim=0, return_inverse=True)
    ck = (tag, tuple(uniq.shape), str(uniq.device), hashlib.sha1(uniq.cpu().numpy().tobytes()).hexdigest())
    m = _TRAINING_MASKS.get(ck, lambda: build(uniq))
    B = key.shape[0]
    return m.expand(B, *m.shape[1:]) if m.shape[0] == 1 else m[inv]


def clear_caches() -> None:
    """Forget the remembered training masks (inference masks are remembered by their callers'
    own :class:`MaskCache`)."""
    _TRAINING_MASKS.clear()


def training_mask(
    categories: Tensor, kind: str = "dense", device: Device = None, block_size: int = 128
):
    """Mask for per-sequence training draws: :func:`inference_mask_mod` of each row's categories
    ``[B, d]`` (from :func:`categories_from_levels` of a ``draw``), worthless rows kept (they
    attend only themselves and nobody attends them). Dense bool [B, 1, d, d] (built once per
    distinct row of categories, see :func:`_dense_per_row`) or a BlockMask.
    """
    cats = _check_categories(categories)
    if device is not None:
        cats = cats.to(device)
    B, d = cats.shape
    if kind == "dense":
        return _dense_per_row(cats, ("training", d), lambda u: dense_mask(inference_mask_mod(u), u.shape[0], d, device=device))
    mod = inference_mask_mod(cats)
    return _materialize(mod, B if B > 1 else None, d, kind, device, block_size)


def two_halves_mask(
    segment: Tensor,
    kind: str = "dense",
    block_causal: bool = False,
    categories: Optional[Tensor] = None,
    device: Device = None,
    block_size: int = 128,
    readers: bool = False,
):
    """Mask of the two-halves layout (:func:`two_halves_mask_mod`) for segment ids ``[B or 1, d]``:
    dense bool [B, 1, 2d + R, 2d + R] (R = 0 without `readers`; built once per distinct row of
    segment ids and categories, see :func:`_dense_per_row`) or a BlockMask (batch-independent
    when one row of ids is given).
    """
    if device is not None:
        segment = torch.as_tensor(segment).to(device)
        categories = None if categories is None else torch.as_tensor(categories).to(device)
    if kind == "dense":
        seg, cats = _two_halves_rows(segment, categories)
        d = seg.shape[1]
        key = seg if cats is None else torch.cat([seg, cats], 1)

        R = segment_readers(seg, cats)[1].shape[1] if readers else None  # one R for the batch

        def build(u: Tensor) -> Tensor:
            cats_u = None if cats is None else u[:, d:]
            mod = two_halves_mask_mod(u[:, :d], block_causal, cats_u, readers=readers, num_readers=R)
            return dense_mask(mod, u.shape[0], mod.q_len, device=device)

        return _dense_per_row(key, ("two_halves", d, bool(block_causal), R), build)
    mod = two_halves_mask_mod(segment, block_causal=block_causal, categories=categories, readers=readers)
    return _materialize(mod, mod.batch_size, mod.q_len, kind, device, block_size)


def two_halves_inputs(
    x_noisy: Tensor,
    x_clean: Tensor,
    segment: Tensor,
    layout: "Layout | str",
    bos_id: Optional[int] = None,
    categories: Optional[Tensor] = None,
) -> tuple[Tensor, Tensor]:
    """Token ids and position ids [B, 2d] of the two-halves layout ([B, 2d + R] under SHIFTED_LAST).

    ALIGNED: ``cat([x_noisy, x_clean])``. SHIFTED: the clean half is ``shift_inputs(x_clean)``;
    noisy row i reads x_noisy[i-1], except the first row of each segment, which reads the clean
    token x_clean[i-1] (BOS for i = 0): the token before a segment is settled at the segment's
    step, so each noisy segment reads exactly what the inference step shows. Position ids are
    ``[0..d-1, 0..d-1]``. SHIFTED_LAST appends one reader a segment (:func:`segment_readers` of
    `segment` and the draw's `categories`): reader r reads x_noisy[source_r] at position
    source_r + 1; a padding reader reads BOS at position 0.
    """
    layout = Layout(layout)
    check_ids(x_noisy, None, "x_noisy (token ids)")
    check_ids(x_clean, None, "x_clean (token ids)")
    if x_noisy.shape != x_clean.shape or x_noisy.dim() != 2:
        raise ValueError(
            f"x_noisy {tuple(x_noisy.shape)} and x_clean {tuple(x_clean.shape)} must both be [B, d]"
        )
    B, d = x_noisy.shape
    seg = _check_segment(segment).to(x_noisy.device)
    if seg.shape[1] != d or seg.shape[0] not in (1, B):
        raise ValueError(f"segment {tuple(seg.shape)} does not match tokens [B={B}, d={d}]")
    if layout is Layout.ALIGNED:
        ids = torch.cat([x_noisy, x_clean], dim=1)
    else:
        clean = shift_inputs(x_clean, layout, bos_id)
        noisy = shift_inputs(x_noisy, layout, bos_id)
        first = torch.ones_like(seg, dtype=torch.bool)
        first[:, 1:] = seg[:, 1:] != seg[:, :-1]
        ids = torch.cat([torch.where(first, clean, noisy), clean], dim=1)
    pos = torch.arange(d, device=x_noisy.device).repeat(2)[None].expand(B, 2 * d)
    if layout.reads_last:
        cats = None if categories is None else torch.as_tensor(categories).to(x_noisy.device)
        source, valid, _ = segment_readers(seg, cats)
        source, valid = source.expand(B, -1), valid.expand(B, -1)
        read = torch.where(valid, x_noisy.gather(1, source), torch.full_like(source, bos_id))
        ids = torch.cat([ids, read], dim=1)
        pos = torch.cat([pos, torch.where(valid, source + 1, 0)], dim=1)
    return ids, pos.contiguous()
