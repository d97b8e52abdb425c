"""Attention backends, chosen by name.

Every backend computes, per batch b and head h,

    out[i] = sum_j softmax_j( q[i] . k[j] / sqrt(Dh)  over the keys j that row i may attend to ) v[j]

with q [B, H, Lq, Dh], k and v [B, H, Lkv, Dh]. A query row that may attend to nothing gets a
zero output (not uniform attention over everything, not NaN) in every backend.

The mask says which keys a row may attend to:

    None                 full (bidirectional) attention
    "causal"             row i attends to keys j <= i + (Lkv - Lq)  (bottom-right aligned, so that
                         new rows after a cached prefix see the whole prefix)
    bool Tensor          [B or 1, 1 or H, Lq, Lkv], True = may attend
    BlockMask            a FlexAttention block mask (shape (B or 1, 1 or H, Lq, Lkv))

Backends:

    sdpa   torch.nn.functional.scaled_dot_product_attention with a dense boolean mask. Works on
           every device, forward and backward: the only CPU training path. A BlockMask is
           materialized to a dense mask by evaluating its mask_mod.
    flex   torch.nn.attention.flex_attention with a BlockMask (a dense mask is wrapped into one).
           Forward everywhere; backward only on GPU: on CPU, a forward that needs gradients
           raises NotImplementedError up front.
    flash  flash_attn.flash_attn_func (optional extra, CUDA, fp16/bf16): plain causal or full
           attention only; any custom mask raises ValueError.

`ATTENTION_BACKENDS` maps names to backends; `attention(q, k, v, mask, backend)` runs one call.
A model prepares the mask once per forward (`backend.prepare`) and reuses it in every layer.
"""
from __future__ import annotations

import functools
import warnings
from typing import Any, Callable, Union

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn.attention.flex_attention import BlockMask, create_block_mask, create_mask, flex_attention

__all__ = [
    "AttentionBackend",
    "SDPABackend",
    "FlexBackend",
    "FlashBackend",
    "ATTENTION_BACKENDS",
    "get_backend",
    "attention",
    "check_mask_shape",
    "causal_mask",
]

Mask = Union[None, str, Tensor, Any]  # Any: a FlexAttention BlockMask


def _is_block_mask(mask: Any) -> bool:
    return isinstance(mask, BlockMask)


def causal_mask(q_len: int, kv_len: int, device: "torch.device | str | None" = None) -> Tensor:
    """Bool [1, 1, q_len, kv_len]: row i may attend to key j iff j <= i + (kv_len - q_len)."""
    if kv_len < q_len:
        raise ValueError(f"a causal mask needs kv_len >= q_len, got q_len={q_len}, kv_len={kv_len}")
    i = torch.arange(q_len, device=device)[:, None]
    j = torch.arange(kv_len, device=device)[None, :]
    return (j <= i + (kv_len - q_len))[None, None]


def check_mask_shape(mask: Mask, batch: int, heads: int, q_len: int, kv_len: int) -> None:
    """Raise ValueError / TypeError unless `mask` fits queries [batch, heads, q_len] and kv_len keys."""
    if mask is None:
        return
    if isinstance(mask, str):
        if mask != "causal":
            raise ValueError(f"the only named mask is 'causal', got {mask!r}")
        if kv_len < q_len:
            raise ValueError(f"a causal mask needs at least as many keys as queries ({kv_len} < {q_len})")
        return
    expected = f"[{batch} or 1, 1 or {heads}, {q_len}, {kv_len}]"
    if _is_block_mask(mask):
        shape = tuple(mask.shape)
        what = "BlockMask"
    elif isinstance(mask, Tensor):
        if mask.dtype != torch.bool:
            raise TypeError(
                f"attention_mask must be a boolean tensor (True = may attend), got dtype {mask.dtype}"
            )
        shape = tuple(mask.shape)
        what = "attention_mask"
    else:
        raise TypeError(
            f"attention_mask must be None, 'causal', a bool tensor or a BlockMask, got {type(mask).__name__}"
        )
    ok = (
        len(shape) == 4
        and shape[0] in (1, batch)
        and shape[1] in (1, heads)
        and shape[2] == q_len
        and shape[3] == kv_len
    )
    if not ok:
        raise ValueError(f"{what} has shape {list(shape)}; expected {expected} (queries x keys)")


class AttentionBackend:
    """One way of computing attention. `prepare` turns a mask into what `__call__` consumes."""

    name: str = "base"
    #: whether arbitrary masks are supported (flash: only None / "causal")
    custom_masks: bool = True

    def prepare(self, mask: Mask, batch: int, heads: int, q_len: int, kv_len: int, device) -> Any:
        raise NotImplementedError

    def __call__(self, q: Tensor, k: Tensor, v: Tensor, prepared: Any, dropout_p: float = 0.0) -> Tensor:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class SDPABackend(AttentionBackend):
    """torch SDPA with a dense boolean mask; fully masked rows are zeroed explicitly."""

    name = "sdpa"

    def prepare(self, mask, batch, heads, q_len, kv_len, device):
        check_mask_shape(mask, batch, heads, q_len, kv_len)
        if mask is None:
            return None
        if isinstance(mask, str):
            return (causal_mask(q_len, kv_len, device), None)
        if _is_block_mask(mask):
            mask = _dense_from_block_mask(mask, device)
        mask = mask.to(device)
        empty = ~mask.any(-1, keepdim=True)  # rows that may attend to nothing
        if bool(empty.any()):
            # SDPA kernels may return NaN (or uniform attention) for an all-False row: give those
            # rows one dummy key, then zero their output.
            return (mask | empty, empty)
        return (mask, None)

    def __call__(self, q, k, v, prepared, dropout_p=0.0):
        if prepared is None:
            return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p)
        mask, empty = prepared
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)
        if empty is not None:
            out = out.masked_fill(empty, 0.0)
        return out


def _dense_from_block_mask(block_mask, device) -> Tensor:
    """Token-level bool mask [B, H, Lq, Lkv] from a BlockMask's mask_mod (exact, not block level)."""
    B, H, q_len, kv_len = block_mask.shape
    return create_mask(block_mask.mask_mod, B, H, q_len, kv_len, device=device)


@functools.lru_cache(maxsize=1)
def _compiled_flex() -> Callable:
    return torch.compile(flex_attention)


class FlexBackend(AttentionBackend):
    """FlexAttention with a BlockMask. Eager on CPU (forward only), torch.compile'd on GPU."""

    name = "flex"

    def prepare(self, mask, batch, heads, q_len, kv_len, device):
        check_mask_shape(mask, batch, heads, q_len, kv_len)
        if mask is None or _is_block_mask(mask):
            return mask
        if isinstance(mask, str):
            offset = kv_len - q_len

            def mask_mod(b, h, q_idx, kv_idx):
                return kv_idx <= q_idx + offset

            return create_block_mask(mask_mod, None, None, q_len, kv_len, device=device)
        dense = mask.to(device)
        mb, mh = dense.shape[0], dense.shape[1]

        def mask_mod(b, h, q_idx, kv_idx):
            return dense[b if mb > 1 else 0, h if mh > 1 else 0, q_idx, kv_idx]

        return create_block_mask(
            mask_mod, mb if mb > 1 else None, mh if mh > 1 else None, q_len, kv_len, device=device
        )

    def __call__(self, q, k, v, prepared, dropout_p=0.0):
        if dropout_p:
            raise ValueError("the flex backend has no attention dropout; set dropout=0 or use 'sdpa'")
        if q.device.type == "cpu":
            if torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad):
                raise NotImplementedError(
                    "FlexAttention has no backward pass on CPU: train on CPU with the 'sdpa' "
                    "attention backend, or run this forward under torch.no_grad() / "
                    "torch.inference_mode()"
                )
            with warnings.catch_warnings():
                # eager (unfused) flex on CPU is intended here; its 'use torch.compile' hint is noise
                warnings.filterwarnings("ignore", message=".*flex_attention called without torch.compile.*")
                return flex_attention(q, k, v, block_mask=prepared)
        return _compiled_flex()(q, k, v, block_mask=prepared)


class FlashBackend(AttentionBackend):
    """flash_attn.flash_attn_func: full or causal attention only (no custom masks)."""

    name = "flash"
    custom_masks = False

    def prepare(self, mask, batch, heads, q_len, kv_len, device):
        if mask is None:
            return False
        if isinstance(mask, str) and mask == "causal":
            check_mask_shape(mask, batch, heads, q_len, kv_len)
            return True
        raise ValueError(
            "the 'flash' attention backend supports only full attention (mask None) or plain causal "
            "attention (mask 'causal'); this mask is custom: use the 'sdpa' or 'flex' backend"
        )

    def __call__(self, q, k, v, prepared, dropout_p=0.0):
        try:
            from flash_attn import flash_attn_func  # optional: flash-attn, pip install 'diffusionlm[gpu]'
        except ImportError as e:
            raise ImportError(
                "the 'flash' attention backend needs the optional flash-attn package: "
                "pip install flash-attn --no-build-isolation (CUDA only); or use 'sdpa'"
            ) from e
        # flash_attn takes [B, L, H, Dh]; its causal mask is bottom-right aligned like ours.
        out = flash_attn_func(
            q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), dropout_p=dropout_p, causal=prepared
        )
        return out.transpose(1, 2)


ATTENTION_BACKENDS: dict[str, AttentionBackend] = {
    b.name: b for b in (SDPABackend(), FlexBackend(), FlashBackend())
}


def get_backend(name: "str | AttentionBackend") -> AttentionBackend:
    """The backend registered under `name` (or `name` itself if it is a backend)."""
    if isinstance(name, AttentionBackend):
        return name
    try:
        return ATTENTION_BACKENDS[name]
    except KeyError:
        raise ValueError(
            f"unknown attention backend {name!r}; known: {sorted(ATTENTION_BACKENDS)}"
        ) from None


def attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    mask: Mask = None,
    backend: "str | AttentionBackend" = "sdpa",
    dropout_p: float = 0.0,
) -> Tensor:
    """Attention of q [B, H, Lq, Dh] over k, v [B, H, Lkv, Dh] under `mask` (see module doc)."""
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError("q, k, v must be 4-D [B, H, L, Dh]")
    b = get_backend(backend)
    B, H, Lq, _ = q.shape
    prepared = b.prepare(mask, B, H, Lq, k.shape[2], q.device)
    return b(q, k, v, prepared, dropout_p)
