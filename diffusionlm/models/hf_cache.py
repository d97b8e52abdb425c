"""The HF adapter's masks and cache: how an HFDenoiser checks a call's ids, positions and cache,
turns the toolkit's masks (None, "causal", a bool tensor, a FlexAttention BlockMask) into the 4-D
mask HF attention honours (an additive float mask under "eager": see DESIGN, facts checked), and
keeps an exact KV cache on transformers' DynamicCache whose rows live in preallocated buffers.
A mixin of :class:`diffusionlm.models.hf.HFDenoiser` (reading an HF model as a denoiser)."""
from __future__ import annotations

import copy
from typing import Any, Optional

import torch
import transformers
from torch import Tensor
from transformers.cache_utils import DynamicLayer

from ..masks import additive_mask
from .attention import _dense_from_block_mask, _is_block_mask, causal_mask
from .cache import _Store

__all__ = ["MasksAndCache", "SUPPORTED_ATTENTION"]

#: attention implementations whose dense 4-D masks are honoured (and how they are passed)
SUPPORTED_ATTENTION = ("sdpa", "eager")


def _cache_length(cache: Any) -> int:
    return int(cache.get_seq_length()) if cache is not None else 0


def _cache_batch(cache: Any) -> Optional[int]:
    for layer in getattr(cache, "layers", ()):
        keys = getattr(layer, "keys", None)
        if getattr(layer, "is_initialized", False) and isinstance(keys, Tensor) and keys.numel():
            return int(keys.shape[0])
    return None


def _stored_layer_class():
    """`_StoredLayer` (defined on first use: transformers is imported lazily)."""
    global _STORED_LAYER
    if _STORED_LAYER is not None:
        return _STORED_LAYER

    class _StoredLayer(DynamicLayer):
        """transformers' DynamicLayer whose K/V rows live in a preallocated buffer (a one-layer
        `models.cache._Store`, x2 growth) instead of being concatenated into new tensors at every
        call: `keys` / `values` are views buffer[:, :, :length]. The rules of `models.cache` hold:
        rows [0, filled) are never written again, and a layer writes into the buffer only when it
        is the newest layer on it (length = filled and its keys are that buffer's view); otherwise
        (an older cache extended again, a crop, keys replaced by HF's own batch methods) its rows
        are copied into a new buffer first. So every cache handed out keeps its values."""

        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self._store = None

        def get_seq_length(self) -> int:
            return 0 if not self.is_initialized or self.keys is None else int(self.keys.shape[-2])

        def _owns_tail(self, k: Tensor) -> bool:
            st, L = self._store, self.get_seq_length()
            if st is None or st.filled != L:
                return False
            buf = st.keys[0]
            return (buf.shape[:2] == k.shape[:2] and buf.shape[3] == k.shape[3] and buf.dtype == k.dtype
                    and buf.device == k.device and (L == 0 or self.keys.data_ptr() == buf.data_ptr()))

        def update(self, key_states: Tensor, value_states: Tensor, *args, **kwargs) -> tuple[Tensor, Tensor]:
            L, n = self.get_seq_length(), key_states.shape[-2]
            if not self._owns_tail(key_states):
                keys, values = (self.keys, self.values) if L else (key_states, value_states)
                self._store = _Store.of([keys], [values], L, L + n)
                self.device, self.is_initialized = key_states.device, True
            self.keys, self.values = self._store.write(0, L, key_states, value_states)
            self._store.filled = L + n
            return self.keys, self.values

        def release(self, committed: int) -> None:
            """Rows past `committed` of the newest layer on the buffer are scratch again (the
            caller cropped them right after writing them; no cache shows them)."""
            if self._store is not None and self._store.filled >= committed == self.get_seq_length():
                self._store.filled = committed

    _STORED_LAYER = _StoredLayer
    return _StoredLayer


_STORED_LAYER = None


def _copy_cache(cache: Any) -> Any:
    """A shallow copy whose layer objects are new (sharing the K/V tensors): HF's in-place update
    of the copy then leaves the caller's cache untouched."""
    new = copy.copy(cache)
    new.layers = [copy.copy(layer) for layer in cache.layers]
    return new


class MasksAndCache:
    """Checks of a call (ids, positions, cache), its 4-D mask, and the exact KV cache of an
    HFDenoiser (which provides `model`, `input_vocab_size`, `max_positions`, `mask_id` and
    `attn_implementation`)."""

    def empty_cache(self) -> Any:
        """An empty `transformers.DynamicCache` for this model, its full-attention layers keeping
        their rows in preallocated buffers (`_StoredLayer`: no copy of the prefix per call)."""
        DynamicCache = transformers.DynamicCache  # transformers loads these on first use

        cache = DynamicCache(config=self.model.config)
        stored = _stored_layer_class()
        cache.layers = [stored() if type(layer) is DynamicLayer else layer for layer in cache.layers]
        return cache

    def _check(self, input_ids: Tensor, position_ids: Optional[Tensor], cache: Any, cache_commit: int):
        if not isinstance(input_ids, Tensor) or input_ids.dim() != 2:
            raise ValueError(f"input_ids must be a [B, L] tensor, got {getattr(input_ids, 'shape', type(input_ids))}")
        if input_ids.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
            raise TypeError(f"input_ids must be an integer tensor, got {input_ids.dtype}")
        B, L = input_ids.shape
        if L < 1:
            raise ValueError("input_ids has no rows")
        n_in = self.input_vocab_size
        lo, hi = (int(t) for t in torch.aminmax(input_ids)) if input_ids.numel() else (0, 0)
        if lo < 0 or hi >= n_in:
            raise ValueError(
                f"input ids out of range: found [{lo}, {hi}], allowed [0, {n_in - 1}]"
                + ("" if self.mask_id is not None else " (this model has no MASK token: see HFDenoiser.from_model)")
            )
        if cache is not None:
            DynamicCache = transformers.DynamicCache  # transformers loads these on first use

            if not isinstance(cache, DynamicCache):
                raise TypeError(f"cache must be a transformers.DynamicCache (see empty_cache()), got {type(cache).__name__}")
            for i, layer in enumerate(cache.layers):
                if not getattr(layer, "is_croppable", False) or getattr(layer, "is_sliding", False):
                    raise TypeError(f"cache layer {i} ({type(layer).__name__}) cannot be cropped exactly; only full-attention DynamicLayers are supported")
            cb = _cache_batch(cache)
            if cb is not None and cb != B:
                raise ValueError(f"the cache holds batch size {cb}, but input_ids has batch size {B}")
        past = _cache_length(cache)
        if not isinstance(cache_commit, int) or isinstance(cache_commit, bool) or not 0 <= cache_commit <= L:
            raise ValueError(f"cache_commit must be an int in [0, {L}] (rows of this call), got {cache_commit!r}")
        if position_ids is None:
            position_ids = torch.arange(past, past + L, device=input_ids.device)[None]
        else:
            position_ids = torch.as_tensor(position_ids, device=input_ids.device)
            if position_ids.dim() == 1:
                position_ids = position_ids[None]
            if position_ids.dim() != 2 or position_ids.shape[0] not in (1, B) or position_ids.shape[1] != L:
                raise ValueError(f"position_ids must be [B or 1, L] = [{B} or 1, {L}], got {tuple(position_ids.shape)}")
            if position_ids.is_floating_point() or position_ids.dtype == torch.bool:
                raise TypeError(f"position_ids must be an integer tensor, got {position_ids.dtype}")
            position_ids = position_ids.long()
        limit = self.max_positions
        p_lo, p_hi = (int(t) for t in torch.aminmax(position_ids)) if position_ids.numel() else (0, 0)
        if limit is not None:
            if past + L > limit:
                raise ValueError(
                    f"sequence too long: {past} cached + {L} new rows exceed the model's {limit} positions "
                    "(max_position_embeddings / n_positions)"
                )
            if p_hi >= limit:
                raise ValueError(
                    f"position id {p_hi} is out of range: the model has {limit} positions, "
                    f"allowed [0, {limit - 1}]"
                )
        if p_lo < 0:
            raise ValueError(f"position ids must be >= 0, found {p_lo}")
        return position_ids.expand(B, L), past

    def _prepare_mask(self, attention_mask: Any, B: int, L: int, kv: int, device, dtype) -> Tensor:
        impl = self.attn_implementation
        if impl not in SUPPORTED_ATTENTION:
            raise ValueError(
                f"attn_implementation {impl!r} cannot take an arbitrary 4-D mask; use one of {SUPPORTED_ATTENTION} "
                "(model.set_attn_implementation('sdpa'))"
            )
        if attention_mask is None:
            mask = torch.ones(1, 1, L, kv, dtype=torch.bool, device=device)  # FULL bidirectional attention
        elif isinstance(attention_mask, str):
            if attention_mask != "causal":
                raise ValueError(f"the only named mask is 'causal', got {attention_mask!r}")
            mask = causal_mask(L, kv, device)
        else:
            if _is_block_mask(attention_mask):
                attention_mask = _dense_from_block_mask(attention_mask, device)
            if not isinstance(attention_mask, Tensor):
                raise TypeError(
                    f"attention_mask must be None (full), 'causal', a bool tensor or a BlockMask, got {type(attention_mask).__name__}"
                )
            if attention_mask.dtype != torch.bool:
                raise TypeError(f"attention_mask must be a boolean tensor (True = may attend), got {attention_mask.dtype}")
            shape = tuple(attention_mask.shape)
            if len(shape) != 4 or shape[0] not in (1, B) or shape[1] != 1 or shape[2] != L or shape[3] != kv:
                raise ValueError(
                    f"attention_mask has shape {list(shape)}; expected [{B} or 1, 1, {L}, {kv}] "
                    f"(queries x keys: {kv - L} cached + {L} new rows)"
                )
            mask = attention_mask.to(device)
            if not bool(mask.any(-1).all()):
                raise ValueError("attention_mask has a row that may attend to nothing; HF attention cannot zero it")
        if impl == "eager":
            return additive_mask(mask, dtype)
        return mask

    def _commit(self, work: Any, L: int, past: int, cache_commit: int) -> Any:
        """The cache after a call: HF appended the call's L rows to `work` in place; keep the first
        `cache_commit` of them (the rest are scratch again)."""
        drop = L - cache_commit
        if drop:
            work.crop(-drop)  # transformers 5.x: crop(-k) removes the last k rows
            for layer in work.layers:
                if hasattr(layer, "release"):
                    layer.release(past + cache_commit)
        if _cache_length(work) != past + cache_commit:  # pragma: no cover - defensive
            raise RuntimeError(f"the cache holds {_cache_length(work)} rows after the call, expected {past + cache_commit}")
        return work
