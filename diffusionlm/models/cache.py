"""An explicit, immutable KV cache for the settled prefix of a sequence.

The cache is a value, passed into a forward and returned from it, never state hidden in a module:

    cache = KVCache.empty(model.config.n_layers)
    out = model(ids, position_ids=pos, attention_mask=mask, cache=cache, cache_commit=n)
    cache = out.cache            # the old rows plus the first n rows of this call

Per layer it holds K and V of shape [B, H, length, Dh] (keys after the rotary embedding, so a
cached row keeps the position it was computed at), and `length`, the number of cached rows.
`append` and `crop` return new caches; the rows a cache shows never change.

Storage (no copy of the prefix per step). Appending by concatenation copies the whole prefix at
every call, and attention over [cached; new] rows copies it again: O(length) per layer per step,
O(d^2) per generated sequence. Instead the K/V rows live in preallocated buffers [B, H, capacity,
Dh] per layer (a `_Store`), shared by the caches built from one another; each cache's `keys[i]`
is the view buffer[:, :, :length]. The store remembers `filled`, the rows committed by the
newest cache built on it. A cache may write into the buffer only past its own length and only
when length = filled (it is the newest): rows [0, filled) are never written again, so every view
any cache holds keeps its values. Otherwise (an older cache appended to again, a crop, a
selection) the rows are copied into a new store. Capacity grows geometrically (x2, copying the
rows once), so a sequence of d rows copies O(d) rows in all.

    cache.extend(i, k, v)   K/V of layer i for attention: the cached rows then this call's rows
                            (written after the cached rows as scratch, not committed: length and
                            filled do not change)
    cache.append(kvs, n)    a new cache with the first n of this call's rows committed

Which rows may be cached, and why the cache is exact
----------------------------------------------------
At generation step k a hyperschedule splits the rows into settled (level 0 since the last step),
active, and worthless (dropped). The inference mask lets a settled row attend causally to settled
rows only. So the hidden states, and hence the K/V, of a settled row r in every layer are a
function of the settled tokens at rows <= r (their ids, true positions and level 0) and nothing
else. Settled tokens never change again, and a settled row stays settled at every later step;
so the K/V computed for row r at the step it first settled are exactly those a full forward at
any later step would compute. Caching them and feeding only the other rows, with the matching
rows and columns of the same mask, therefore gives the same logits as the full forward (up to
floating-point summation order).

Only rows that (i) are settled and (ii) attend causally to settled rows only may be committed.
Active rows are never cached: their tokens (and levels) change from step to step, and they attend
to each other bidirectionally. Cached rows must form a prefix of the rows fed to the model (the
order of the keys is the order of the rows), which holds for Quench, Block and Slide, whose
settled positions are always a prefix. Flat has no settled prefix, so nothing is cached there.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple, Optional, Sequence

import torch
from torch import Tensor

from ..schedules.hyper import SETTLED

__all__ = ["KVCache", "CachedStep", "plan_cached_step"]


class _Store:
    """Preallocated K/V buffers [B, H, capacity, Dh] per layer, shared by the caches built from
    one another; rows [0, filled) are committed and never written again (module docstring)."""

    __slots__ = ("keys", "values", "filled")

    MIN_CAPACITY = 64

    def __init__(self, keys: list, values: list, filled: int):
        self.keys, self.values, self.filled = keys, values, filled

    @classmethod
    def of(cls, keys: Sequence[Tensor], values: Sequence[Tensor], rows: int, needed: int) -> "_Store":
        """A new store of capacity >= needed holding copies of the first `rows` rows of these
        per-layer [B, H, >= rows, Dh] tensors."""
        store = cls([None] * len(keys), [None] * len(keys), rows)
        for i, (k, v) in enumerate(zip(keys, values)):
            store.keys[i], store.values[i] = cls._grown(k, rows, needed), cls._grown(v, rows, needed)
        return store

    @classmethod
    def _grown(cls, t: Tensor, rows: int, needed: int) -> Tensor:
        """A buffer of capacity >= needed (x2 growth) holding t's first `rows` rows."""
        B, H, _, Dh = t.shape
        buf = t.new_empty(B, H, max(2 * needed, cls.MIN_CAPACITY), Dh)
        buf[:, :, :rows] = t[:, :, :rows]
        return buf

    def ensure(self, i: int, needed: int) -> None:
        """Layer i's buffers hold at least `needed` rows (the committed rows carried over)."""
        if self.keys[i].shape[2] < needed:
            self.keys[i] = self._grown(self.keys[i], self.filled, needed)
            self.values[i] = self._grown(self.values[i], self.filled, needed)

    def write(self, i: int, start: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Write k, v [B, H, n, Dh] at rows start.. of layer i; the views of rows [0, start + n)."""
        end = start + k.shape[2]
        self.ensure(i, end)
        K, V = self.keys[i], self.values[i]
        K[:, :, start:end] = k
        V[:, :, start:end] = v
        return K[:, :, :end], V[:, :, :end]


@dataclass(frozen=True)
class KVCache:
    """K/V of the cached rows per layer: keys[i], values[i] are [B, H, length, Dh] (or None while empty)."""

    keys: tuple[Optional[Tensor], ...]
    values: tuple[Optional[Tensor], ...]
    length: int = 0
    _store: Optional[_Store] = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if len(self.keys) != len(self.values):
            raise ValueError(f"{len(self.keys)} key layers but {len(self.values)} value layers")
        for i, (k, v) in enumerate(zip(self.keys, self.values)):
            if (k is None) != (v is None):
                raise ValueError(f"layer {i}: keys and values must both be set or both be None")
            if k is None:
                if self.length != 0:
                    raise ValueError(f"layer {i} is empty but the cache claims length {self.length}")
                continue
            if k.dim() != 4 or k.shape != v.shape:
                raise ValueError(
                    f"layer {i}: K and V must both be [B, H, L, Dh], got {tuple(k.shape)} and {tuple(v.shape)}"
                )
            if k.shape[2] != self.length:
                raise ValueError(f"layer {i} holds {k.shape[2]} rows but the cache claims length {self.length}")

    # -- construction ------------------------------------------------------------------
    @classmethod
    def empty(cls, num_layers: int) -> "KVCache":
        """A cache with no rows for a model of `num_layers` layers."""
        if not isinstance(num_layers, int) or num_layers < 1:
            raise ValueError(f"num_layers must be a positive int, got {num_layers!r}")
        return cls((None,) * num_layers, (None,) * num_layers, 0)

    # -- queries -----------------------------------------------------------------------
    @property
    def num_layers(self) -> int:
        return len(self.keys)

    @property
    def batch_size(self) -> Optional[int]:
        """Batch size of the cached tensors (None while empty)."""
        k = self.keys[0]
        return None if k is None else k.shape[0]

    def layer(self, i: int) -> tuple[Optional[Tensor], Optional[Tensor]]:
        """(K, V) of layer i, each [B, H, length, Dh], or (None, None) while empty."""
        return self.keys[i], self.values[i]

    def __len__(self) -> int:
        return self.length

    # -- new caches ----------------------------------------------------------------------
    def _owns_tail(self, like: Tensor) -> bool:
        """Whether this cache may write past its rows in its store (it is the newest cache built
        on it) for new rows shaped like `like` [B, H, n, Dh]."""
        st = self._store
        if st is None or st.filled != self.length:
            return False
        k = st.keys[0]
        return k.shape[:2] == like.shape[:2] and k.shape[3] == like.shape[3] and k.dtype == like.dtype and k.device == like.device

    def extend(self, i: int, k_new: Tensor, v_new: Tensor) -> tuple[Tensor, Tensor]:
        """K, V of layer i for one attention call: the cached rows followed by this call's rows
        [B, H, L_new, Dh]. Nothing is committed (this cache and its store's committed rows are
        unchanged); the newest cache of a store writes the new rows after its own as scratch
        instead of concatenating a copy of the whole prefix."""
        k_old, v_old = self.keys[i], self.values[i]
        if k_old is None:
            return k_new, v_new
        if self._owns_tail(k_new):
            return self._store.write(i, self.length, k_new, v_new)
        return torch.cat([k_old, k_new], dim=2), torch.cat([v_old, v_new], dim=2)

    def append(self, layer_kvs: Sequence[tuple[Tensor, Tensor]], n: int) -> "KVCache":
        """A new cache: these rows followed by the first `n` rows of this call's K/V.

        `layer_kvs[i]` is (K, V) of layer i for the rows of one forward, [B, H, L_new, Dh].
        """
        if len(layer_kvs) != self.num_layers:
            raise ValueError(f"got K/V for {len(layer_kvs)} layers, the cache has {self.num_layers}")
        if not isinstance(n, int) or n < 0:
            raise ValueError(f"the number of rows to commit must be an int >= 0, got {n!r}")
        for i, ((k_new, v_new), k_old) in enumerate(zip(layer_kvs, self.keys)):
            if n > k_new.shape[2]:
                raise ValueError(f"cannot commit {n} rows: this call computed only {k_new.shape[2]}")
            if k_old is not None and (k_old.shape[:2] != k_new.shape[:2] or k_old.shape[3] != k_new.shape[3]):
                raise ValueError(
                    f"layer {i}: new K/V {tuple(k_new[:, :, :n].shape)} do not match the cached {tuple(k_old.shape)}"
                )
        if n == 0:
            return self
        end = self.length + n
        if self._owns_tail(layer_kvs[0][0]):
            st = self._store
        elif self.length == 0:
            st = _Store.of([k for k, _ in layer_kvs], [v for _, v in layer_kvs], 0, end)
        else:
            st = _Store.of(self.keys, self.values, self.length, end)
        views = [st.write(i, self.length, k[:, :, :n], v[:, :, :n]) for i, (k, v) in enumerate(layer_kvs)]
        st.filled = end
        return KVCache(tuple(k for k, _ in views), tuple(v for _, v in views), end, st)

    def crop(self, n: int) -> "KVCache":
        """A new cache holding only the first `n` cached rows (n <= length)."""
        if not isinstance(n, int) or not 0 <= n <= self.length:
            raise ValueError(f"crop needs 0 <= n <= {self.length}, got {n!r}")
        if n == self.length:
            return self
        return KVCache(
            tuple(None if k is None else k[:, :, :n] for k in self.keys),
            tuple(None if v is None else v[:, :, :n] for v in self.values),
            n,
        )

    def select(self, index: Tensor) -> "KVCache":
        """A new cache holding the batch rows `index` (e.g. to drop finished sequences)."""
        return KVCache(
            tuple(None if k is None else k.index_select(0, index.to(k.device)) for k in self.keys),
            tuple(None if v is None else v.index_select(0, index.to(v.device)) for v in self.values),
            self.length,
        )

    def __repr__(self) -> str:
        k = self.keys[0]
        shape = "empty" if k is None else f"B={k.shape[0]}, H={k.shape[1]}, Dh={k.shape[3]}"
        return f"KVCache(layers={self.num_layers}, length={self.length}, {shape})"


class CachedStep(NamedTuple):
    """What to feed at one cached inference step (see `plan_cached_step`).

    rows:    [L_new] true positions of the rows to feed (position_ids), ascending
    mask:    the rows of the step mask for those rows, all columns: [.., L_new, cached + L_new]
    commit:  how many of the fed rows (the first ones: the newly settled) to commit to the cache
    cached:  cache length after this step (= the number of settled rows)
    """

    rows: Tensor
    mask: Any
    commit: int
    cached: int


def plan_cached_step(rows: Tensor, row_categories: Tensor, mask: Any, cached: int, *, strict: bool = True) -> CachedStep:
    """Split one inference step into the cached rows and the rows to feed.

    rows            [L'] positions of the rows of this step (the non-worthless ones), ascending
    row_categories  [L'] their SETTLED / ACTIVE codes at this step, or [B, L'] per batch row (a
                    row then counts as settled only where it is settled in every batch row)
    mask            the step's dense bool mask [.., L', L'] over those rows (or None: full)
    cached          rows already in the cache (= rows[:cached], from earlier steps)

    The cacheable prefix is rows[:s], s the length of the run of rows j = 0, 1, ... that hold
    position j and are settled: their K/V never change again and they stay the first keys at
    every later step. The cache may hold only those (s >= cached). Feed rows[cached:] (the newly
    settled rows first, then the others) with mask[..., cached:, :], and commit the s - cached
    newly settled rows.

    strict (default): every settled row must lie in that prefix, else ValueError (nothing else
    can be cached exactly). strict=False: settled rows after it (positions fixed in advance, as
    in infilling) are fed with the active ones and recomputed at each step.

    A FlexAttention BlockMask cannot be sliced: pass the dense mask (the flex backend turns dense
    masks into block masks).
    """
    row_categories = torch.as_tensor(row_categories)
    if rows.dim() != 1 or row_categories.dim() not in (1, 2) or row_categories.shape[-1] != rows.shape[0]:
        raise ValueError(
            f"rows {tuple(rows.shape)} and row_categories {tuple(row_categories.shape)} must be [L'] and [L'] or [B, L']"
        )
    settled = (row_categories == SETTLED).cpu()
    if settled.dim() == 2:
        settled = settled.all(0)
    in_place = rows.cpu() == torch.arange(rows.numel())
    s = int((settled & in_place).long().cumprod(0).sum())
    if strict and bool(settled[s:].any()):
        raise ValueError("the settled rows are not a prefix of this step's rows: nothing can be cached exactly")
    if not 0 <= cached <= s:
        raise ValueError(f"the cache holds {cached} rows but only {s} rows are settled at this step")
    if mask is not None:
        if not isinstance(mask, Tensor):
            raise TypeError("plan_cached_step slices a dense bool mask; pass the dense mask (kind='dense')")
        if mask.shape[-2:] != (rows.numel(), rows.numel()):
            raise ValueError(f"mask {tuple(mask.shape)} does not cover the {rows.numel()} rows of this step")
        mask = mask[..., cached:, :]
    return CachedStep(rows[cached:], mask, s - cached, s)
