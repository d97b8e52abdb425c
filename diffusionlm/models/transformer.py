"""A from-scratch DiT-style transformer denoiser (the backbone of SEDD / MDLM, after Peebles & Xie).

Shapes: B batch, L rows fed to this call, P cached rows, E hidden, H heads, Dh = E / H.

    h_0     = emb(x)                                          token embedding [B, L, E]
              (weighted: w * emb(x) + (1 - w) * emb(MASK),    w = e^{-gamma sigma} per position,
               given as `embedding_weight` [B, L])
    per block, pre-LN (without time conditioning: shift = 0, scale = 0, gate = 1):
    a       = LN(h) * (1 + scale_a) + shift_a
    h       = h + gate_a * Attn(a)
    m       = LN(h) * (1 + scale_m) + shift_m
    h       = h + gate_m * MLP(m),                            MLP(m) = W2 GELU(W1 m)
    logits  = W_out (LN(h) * (1 + scale_f) + shift_f)          [B, L, vocab_size]

Attention with rotary position embeddings (RoPE) driven by explicit `position_ids`, so a row keeps
its true position when worthless rows are dropped or a prefix is cached:

    q, k, v = split(W_qkv a);   q, k = rot(q, pos), rot(k, pos)
    rot(u, p) = u * cos(p theta) + rotate_half(u) * sin(p theta),  theta_i = base^{-2i/Dh}
    Attn(a) = W_o concat_heads( softmax(q [K_cache; k]^T / sqrt(Dh) + mask) [V_cache; v] )

Time conditioning (adaLN-Zero, optional, per position): from the per-position noise levels
l [B, L],

    t = time_scale * l;   f(t) = [cos(t w_j), sin(t w_j)]_j,   w_j = 10000^{-j / (F/2)}
    c = SiLU(W_c2 SiLU(W_c1 f(t)))                            [B, L, cond_dim]
    (shift, scale, gate)_{a, m} = W_block c,  (shift, scale)_f = W_final c

with W_block and W_final initialised to zero, so that a freshly built model ignores the levels
until trained (gate = 0 makes every block start as the identity map).

    model = DiffusionTransformer(TransformerConfig.preset("tiny", vocab_size=V))
    out = model(ids, position_ids=pos, attention_mask=mask, levels=lv, cache=cache, cache_commit=n)
    out.logits, out.cache
"""
from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor

from ..checks import check_ids, check_levels
from ..io.safeio import atomic_write, load_safetensors, save_safetensors
from ..trust import (
    UntrustedFolderError, check_size, check_tensors, check_weights_finite, header_numel, no_symlink, read_json_config,
    safetensors_header,
)
from .attention import ATTENTION_BACKENDS, get_backend
from .base import Backbone, DenoiserOutput
from .cache import KVCache

__all__ = ["TransformerConfig", "DiffusionTransformer", "CONFIG_NAME", "WEIGHTS_NAME"]

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
_MODEL_TYPE = "diffusionlm-transformer"


# ---------------------------------------------------------------------------------------------
# configuration
# ---------------------------------------------------------------------------------------------
_PRESETS: dict[str, dict[str, Any]] = {
    # trains in minutes on 2 CPU cores
    "tiny": dict(n_layers=4, n_heads=4, hidden=128, max_positions=1024, cond_dim=64),
    # GPT-2 small / the SEDD & MDLM "small" DiT
    "gpt2-small": dict(n_layers=12, n_heads=12, hidden=768, max_positions=1024, cond_dim=128),
}


@dataclass
class TransformerConfig:
    """Hyperparameters of a DiffusionTransformer (all JSON-serialisable)."""

    vocab_size: int  # output size (logits per row)
    max_positions: int = 1024  # positions 0 .. max_positions - 1
    n_layers: int = 12
    n_heads: int = 12
    hidden: int = 768
    mlp_ratio: float = 4.0
    dropout: float = 0.0  # residual, embedding and attention dropout (training only)
    time_conditioning: bool = False  # adaLN-Zero from per-position levels
    cond_dim: int = 128  # width of the time-conditioning vector c
    time_frequency_dim: int = 256  # F: size of the sinusoidal level embedding
    time_scale: float = 1000.0  # t = time_scale * level (levels in [0, 1] -> DiT's timestep range)
    attention: str = "sdpa"  # attention backend: "sdpa", "flex" or "flash"
    tie_embeddings: bool = True  # output head shares the token embedding (its first vocab_size rows)
    input_vocab_size: Optional[int] = None  # ids accepted as input (None: vocab_size)
    mask_id: Optional[int] = None  # MASK token id (needed by the weighted embedding)
    weighted_embedding_gamma: Optional[float] = None  # gamma of w = e^{-gamma sigma}; None: off
    rope_theta: float = 10000.0
    bias: bool = False  # biases in the linear layers
    layer_norm_eps: float = 1e-5
    init_std: float = 0.02

    def __post_init__(self) -> None:
        def positive(name: str) -> None:
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"TransformerConfig.{name} must be a positive int, got {v!r}")

        for name in ("vocab_size", "max_positions", "n_layers", "n_heads", "hidden", "cond_dim"):
            positive(name)
        if self.input_vocab_size is not None:
            positive("input_vocab_size")
        if self.hidden % self.n_heads:
            raise ValueError(f"hidden ({self.hidden}) must be divisible by n_heads ({self.n_heads})")
        if (self.hidden // self.n_heads) % 2:
            raise ValueError(f"the head size hidden / n_heads = {self.hidden // self.n_heads} must be even (RoPE)")
        if self.time_frequency_dim < 2 or self.time_frequency_dim % 2:
            raise ValueError(f"time_frequency_dim must be an even int >= 2, got {self.time_frequency_dim}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must lie in [0, 1), got {self.dropout}")
        for name in ("mlp_ratio", "layer_norm_eps", "rope_theta", "time_scale", "init_std"):
            v = getattr(self, name)  # NaN passes every comparison, so finiteness is checked first
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0 \
                    or (v == 0 and name != "init_std"):
                raise ValueError(f"TransformerConfig.{name} must be a finite number {'>= 0' if name == 'init_std' else '> 0'}, "
                                 f"got {v!r}")
        if self.attention not in ATTENTION_BACKENDS:
            raise ValueError(f"unknown attention backend {self.attention!r}; known: {sorted(ATTENTION_BACKENDS)}")
        n_in = self.num_input_ids
        if self.tie_embeddings and n_in < self.vocab_size:
            raise ValueError(
                f"tie_embeddings needs input_vocab_size ({n_in}) >= vocab_size ({self.vocab_size})"
            )
        if self.mask_id is not None and not 0 <= self.mask_id < n_in:
            raise ValueError(f"mask_id {self.mask_id} lies outside the input ids [0, {n_in})")
        if self.weighted_embedding_gamma is not None:
            if self.mask_id is None:
                raise ValueError("weighted_embedding_gamma needs mask_id (the embedding mixes in f(MASK))")
            if not math.isfinite(self.weighted_embedding_gamma) or self.weighted_embedding_gamma < 0:
                raise ValueError(f"weighted_embedding_gamma must be >= 0, got {self.weighted_embedding_gamma}")

    @property
    def num_input_ids(self) -> int:
        return self.vocab_size if self.input_vocab_size is None else self.input_vocab_size

    @property
    def head_dim(self) -> int:
        return self.hidden // self.n_heads

    @property
    def mlp_hidden(self) -> int:
        return int(round(self.mlp_ratio * self.hidden))

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> "TransformerConfig":
        """A named size ("tiny": 4 x 128, 4 heads; "gpt2-small": 12 x 768, 12 heads) plus overrides.

        `vocab_size` must be given: TransformerConfig.preset("tiny", vocab_size=258).
        """
        if name not in _PRESETS:
            raise ValueError(f"unknown preset {name!r}; known: {sorted(_PRESETS)}")
        if "vocab_size" not in overrides:
            raise ValueError(f"preset {name!r} needs vocab_size=...")
        return cls(**{**_PRESETS[name], **overrides})

    @staticmethod
    def presets() -> list[str]:
        return sorted(_PRESETS)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TransformerConfig":
        d = {k: v for k, v in d.items() if k not in ("model_type", "format_version")}
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown TransformerConfig fields {unknown}")
        return cls(**d)


# ---------------------------------------------------------------------------------------------
# building blocks
# ---------------------------------------------------------------------------------------------
def rotate_half(u: Tensor) -> Tensor:
    """[u1, u2] -> [-u2, u1] on the last dimension (the RoPE rotation by 90 degrees, paired halves)."""
    u1, u2 = u.chunk(2, dim=-1)
    return torch.cat((-u2, u1), dim=-1)


class RotaryEmbedding(nn.Module):
    """cos / sin tables of RoPE at arbitrary integer positions: theta_i = base^{-2i/Dh}."""

    def __init__(self, head_dim: int, base: float = 10000.0):
        super().__init__()
        inv_freq = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, position_ids: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """position_ids [B, L] -> cos, sin [B, 1, L, Dh] (broadcast over heads)."""
        angles = position_ids.to(torch.float32)[..., None] * self.inv_freq  # [B, L, Dh/2]
        angles = torch.cat((angles, angles), dim=-1)[:, None]
        return angles.cos().to(dtype), angles.sin().to(dtype)


def apply_rotary(u: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    return u * cos + rotate_half(u) * sin


class LevelEmbedder(nn.Module):
    """Per-position noise level l [B, L] -> conditioning vector c [B, L, cond_dim] (see module doc)."""

    def __init__(self, config: TransformerConfig):
        super().__init__()
        self.scale = config.time_scale
        half = config.time_frequency_dim // 2
        freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32) / half)
        self.register_buffer("freqs", freqs, persistent=False)
        self.mlp = nn.Sequential(
            nn.Linear(config.time_frequency_dim, config.cond_dim),
            nn.SiLU(),
            nn.Linear(config.cond_dim, config.cond_dim),
        )

    def forward(self, levels: Tensor, dtype: torch.dtype) -> Tensor:
        args = (self.scale * levels.to(torch.float32))[..., None] * self.freqs
        f = torch.cat((args.cos(), args.sin()), dim=-1).to(dtype)
        return F.silu(self.mlp(f))


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    return x * (1 + scale) + shift


class SelfAttention(nn.Module):
    """Multi-head attention with RoPE; the new K/V follow the cached ones (`KVCache.extend`)."""

    def __init__(self, config: TransformerConfig):
        super().__init__()
        self.n_heads, self.head_dim = config.n_heads, config.head_dim
        self.qkv = nn.Linear(config.hidden, 3 * config.hidden, bias=config.bias)
        self.proj = nn.Linear(config.hidden, config.hidden, bias=config.bias)
        self.dropout = config.dropout

    def forward(
        self,
        x: Tensor,
        cos: Tensor,
        sin: Tensor,
        backend,
        mask: Any,
        extend: Optional[Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]],
    ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """`extend(k, v)`: the cached K/V followed by these rows' (`KVCache.extend` of this
        layer), or None without a cache."""
        q, k, v = rearrange(self.qkv(x), "b l (three h d) -> three b h l d", three=3, h=self.n_heads)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)  # [B, H, L, Dh]
        new_kv = (k, v)
        if extend is not None:
            k, v = extend(k, v)
        y = backend(q, k, v, mask, self.dropout if self.training else 0.0)
        return self.proj(rearrange(y, "b h l d -> b l (h d)")), new_kv


class MLP(nn.Module):
    def __init__(self, config: TransformerConfig):
        super().__init__()
        self.fc = nn.Linear(config.hidden, config.mlp_hidden, bias=config.bias)
        self.proj = nn.Linear(config.mlp_hidden, config.hidden, bias=config.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(F.gelu(self.fc(x), approximate="tanh"))


class Block(nn.Module):
    """Pre-LN transformer block, with adaLN-Zero modulation when time-conditioned."""

    def __init__(self, config: TransformerConfig):
        super().__init__()
        self.norm1 = nn.LayerNorm(config.hidden, eps=config.layer_norm_eps)
        self.attn = SelfAttention(config)
        self.norm2 = nn.LayerNorm(config.hidden, eps=config.layer_norm_eps)
        self.mlp = MLP(config)
        self.drop = nn.Dropout(config.dropout)
        # c -> shift/scale/gate for attention and MLP; zero-initialised (adaLN-Zero)
        self.ada = nn.Linear(config.cond_dim, 6 * config.hidden) if config.time_conditioning else None

    def forward(self, x, cos, sin, backend, mask, extend, c: Optional[Tensor]):
        if self.ada is None:
            a, kv = self.attn(self.norm1(x), cos, sin, backend, mask, extend)
            x = x + self.drop(a)
            x = x + self.drop(self.mlp(self.norm2(x)))
            return x, kv
        shift_a, scale_a, gate_a, shift_m, scale_m, gate_m = self.ada(c).chunk(6, dim=-1)
        a, kv = self.attn(modulate(self.norm1(x), shift_a, scale_a), cos, sin, backend, mask, extend)
        x = x + gate_a * self.drop(a)
        x = x + gate_m * self.drop(self.mlp(modulate(self.norm2(x), shift_m, scale_m)))
        return x, kv


# ---------------------------------------------------------------------------------------------
# the model
# ---------------------------------------------------------------------------------------------
class DiffusionTransformer(nn.Module, Backbone):
    """DiT-style denoiser implementing the `diffusionlm.models.base.Denoiser` protocol."""

    def __init__(self, config: TransformerConfig):
        super().__init__()
        if not isinstance(config, TransformerConfig):
            raise TypeError(f"expected a TransformerConfig, got {type(config).__name__}")
        self.config = config
        self.vocab_size = config.vocab_size
        self.tok_emb = nn.Embedding(config.num_input_ids, config.hidden)
        self.rotary = RotaryEmbedding(config.head_dim, config.rope_theta)
        self.levels_emb = LevelEmbedder(config) if config.time_conditioning else None
        self.drop = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.n_layers))
        self.norm_f = nn.LayerNorm(config.hidden, eps=config.layer_norm_eps)
        self.ada_f = nn.Linear(config.cond_dim, 2 * config.hidden) if config.time_conditioning else None
        self.head = None if config.tie_embeddings else nn.Linear(config.hidden, config.vocab_size, bias=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """nanoGPT init: N(0, std) weights, std / sqrt(2 n_layers) on residual projections, zero
        biases, and zero adaLN modulation (adaLN-Zero)."""
        std = self.config.init_std
        for name, p in self.named_parameters():
            if p.dim() == 1:
                if name.endswith("bias"):
                    nn.init.zeros_(p)
                else:  # LayerNorm weights
                    nn.init.ones_(p)
            elif name.endswith(("attn.proj.weight", "mlp.proj.weight")):
                nn.init.normal_(p, 0.0, std / math.sqrt(2 * self.config.n_layers))
            else:
                nn.init.normal_(p, 0.0, std)
        for m in [b.ada for b in self.blocks] + [self.ada_f]:
            if m is not None:
                nn.init.zeros_(m.weight)
                nn.init.zeros_(m.bias)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    # -- spec (diffusionlm.specs, backbone "transformer") ---------------------------------------
    name = "transformer"
    spec_name = name  # the older attribute

    @classmethod
    def from_spec(cls, preset: Optional[str] = None, **fields: Any) -> "DiffusionTransformer":
        """A freshly initialised model from {"name": "transformer", "preset": ..., **fields}: the
        preset's sizes (`TransformerConfig.preset`) overridden by any TransformerConfig field."""
        known = [f.name for f in dataclasses.fields(TransformerConfig)]
        bad = [k for k in fields if k not in known]
        if bad:
            raise ValueError(f"backbone transformer: unknown key(s) {', '.join(bad)}; its keys: preset, {', '.join(known)}")
        if "vocab_size" not in fields:
            raise ValueError("backbone transformer: missing key vocab_size (a composition derives it from its process)")
        cfg = TransformerConfig.preset(preset, **fields) if preset is not None else TransformerConfig(**fields)
        return cls(cfg)

    def to_dict(self) -> dict[str, Any]:
        """{"name": "transformer", **every TransformerConfig field} (no preset: every size is written)."""
        return {"name": self.name, **self.config.to_dict()}

    def embedding_weight_from_sigma(self, sigma: Tensor) -> Tensor:
        """w = e^{-gamma sigma}: the `embedding_weight` for per-position total noise sigma [B, L]."""
        gamma = self.config.weighted_embedding_gamma
        if gamma is None:
            raise ValueError("this model has no weighted embedding (weighted_embedding_gamma is None)")
        return torch.exp(-gamma * sigma)

    # -- input checks ------------------------------------------------------------------
    def _check_inputs(self, input_ids, position_ids, levels, cache, cache_commit, embedding_weight):
        cfg = self.config
        if not isinstance(input_ids, Tensor) or input_ids.dim() != 2:
            shape = tuple(input_ids.shape) if isinstance(input_ids, Tensor) else type(input_ids).__name__
            raise ValueError(f"input_ids must be a 2-D [B, L] tensor, got {shape}")
        if input_ids.dtype.is_floating_point or input_ids.dtype == torch.bool:
            raise TypeError(f"input_ids must be integer ids, got dtype {input_ids.dtype}")
        B, L = input_ids.shape
        if L == 0:
            raise ValueError("input_ids has no rows (L = 0)")
        lo, hi = int(input_ids.min()), int(input_ids.max())
        if lo < 0 or hi >= cfg.num_input_ids:
            raise ValueError(
                f"input_ids must lie in [0, {cfg.num_input_ids}) (the model's input vocabulary); "
                f"got values in [{lo}, {hi}]"
            )
        past = 0
        if cache is not None:
            if not isinstance(cache, KVCache):
                raise TypeError(f"cache must be a KVCache or None, got {type(cache).__name__}")
            if cache.num_layers != cfg.n_layers:
                raise ValueError(f"the cache has {cache.num_layers} layers, the model {cfg.n_layers}")
            if cache.batch_size not in (None, B):
                raise ValueError(f"the cache holds batch size {cache.batch_size}, input_ids has {B}")
            past = cache.length
        # Positions, not rows, are bounded: the two-halves layout feeds 2d rows at positions 0..d-1 twice.
        if position_ids is None and past + L > cfg.max_positions:
            raise ValueError(
                f"{past} cached + {L} new rows = {past + L} exceeds max_positions={cfg.max_positions}"
            )
        if not isinstance(cache_commit, int) or not 0 <= cache_commit <= L:
            raise ValueError(f"cache_commit must be an int in [0, {L}] (rows of this call), got {cache_commit!r}")
        if position_ids is None:
            position_ids = torch.arange(past, past + L, device=input_ids.device).expand(B, L)
        else:
            if position_ids.dim() == 1:
                position_ids = position_ids[None]
            if position_ids.dim() != 2 or position_ids.shape[1] != L or position_ids.shape[0] not in (1, B):
                raise ValueError(f"position_ids has shape {list(position_ids.shape)}; expected [{B} or 1, {L}]")
            check_ids(position_ids, None, "position_ids")
            plo, phi = int(position_ids.min()), int(position_ids.max())
            if plo < 0 or phi >= cfg.max_positions:
                raise ValueError(
                    f"position_ids must lie in [0, {cfg.max_positions}) (max_positions={cfg.max_positions}); "
                    f"got values in [{plo}, {phi}]"
                )
            position_ids = position_ids.expand(B, L)
        if cfg.time_conditioning:
            if levels is None:
                raise ValueError("this model is time-conditioned: pass levels [B, L] (per-position noise levels)")
            if levels.dim() == 1 and levels.shape[0] == B:
                levels = levels[:, None].expand(B, L)
            if levels.dim() != 2 or levels.shape[1] != L or levels.shape[0] not in (1, B):
                raise ValueError(f"levels has shape {list(levels.shape)}; expected [{B}, {L}]")
            levels = levels.expand(B, L)
        if levels is not None:
            check_levels(levels, what="levels")
        if embedding_weight is not None:
            check_levels(embedding_weight, what="embedding_weight")
            if cfg.mask_id is None:
                raise ValueError("embedding_weight needs a model with mask_id (it mixes in f(MASK))")
            if embedding_weight.dim() != 2 or embedding_weight.shape[1] != L or embedding_weight.shape[0] not in (1, B):
                raise ValueError(f"embedding_weight has shape {list(embedding_weight.shape)}; expected [{B}, {L}]")
        elif cfg.weighted_embedding_gamma is not None:
            raise ValueError(
                "this model uses the weighted token embedding: pass embedding_weight [B, L] = "
                "exp(-gamma * sigma) (see embedding_weight_from_sigma)"
            )
        return position_ids, levels, past

    # -- forward -----------------------------------------------------------------------
    def forward(
        self,
        input_ids: Tensor,
        *,
        position_ids: Optional[Tensor] = None,
        attention_mask: Any = None,
        levels: Optional[Tensor] = None,
        cache: Optional[KVCache] = None,
        cache_commit: int = 0,
        embedding_weight: Optional[Tensor] = None,
        logits_to_keep: int = 0,
    ) -> DenoiserOutput:
        """Logits for the L rows of `input_ids` [B, L] (the last `logits_to_keep` rows only, if > 0:
        the final norm and head skip the others, e.g. a prompt's rows when decoding).

        position_ids     [B or 1, L] true positions (default: cache.length + arange(L))
        attention_mask   None (full), "causal", bool [B or 1, 1 or H, L, P + L] (True = may attend;
                         the P cached rows come first in the key order), or a BlockMask
        levels           [B, L] noise levels; required iff config.time_conditioning (else ignored)
        cache            KVCache of P rows, or None (P = 0)
        cache_commit     how many of this call's rows (the first ones) to append to the cache
        embedding_weight [B, L] w of the weighted embedding w f(x) + (1 - w) f(MASK)

        Returns DenoiserOutput(logits [B, L, vocab_size], cache): the cache holds the P cached rows
        plus the first `cache_commit` rows of this call (None if no cache was given and
        cache_commit = 0).
        """
        cfg = self.config
        position_ids, levels, past = self._check_inputs(
            input_ids, position_ids, levels, cache, cache_commit, embedding_weight
        )
        B, L = input_ids.shape
        if not isinstance(logits_to_keep, int) or isinstance(logits_to_keep, bool) or not 0 <= logits_to_keep <= L:
            raise ValueError(f"logits_to_keep must be an int in [0, {L}] (0: every row), got {logits_to_keep!r}")
        backend = get_backend(cfg.attention)
        mask = backend.prepare(attention_mask, B, cfg.n_heads, L, past + L, input_ids.device)

        h = self.tok_emb(input_ids)
        if embedding_weight is not None:
            w = embedding_weight.to(h.dtype)[..., None]
            h = w * h + (1 - w) * self.tok_emb.weight[cfg.mask_id]
        h = self.drop(h)
        cos, sin = self.rotary(position_ids, h.dtype)
        c = self.levels_emb(levels, h.dtype) if self.levels_emb is not None else None

        want_cache = cache is not None or cache_commit > 0
        new_kvs = []
        for i, block in enumerate(self.blocks):
            extend = functools.partial(cache.extend, i) if cache is not None else None
            h, kv = block(h, cos, sin, backend, mask, extend, c)
            if want_cache:
                new_kvs.append(kv)

        if logits_to_keep:
            h = h[:, -logits_to_keep:]
            c = c[:, -logits_to_keep:] if c is not None else None
        h = self.norm_f(h)
        if self.ada_f is not None:
            shift, scale = self.ada_f(c).chunk(2, dim=-1)
            h = modulate(h, shift, scale)
        if self.head is None:
            logits = F.linear(h, self.tok_emb.weight[: cfg.vocab_size])
        else:
            logits = self.head(h)

        new_cache = None
        if want_cache:
            base = cache if cache is not None else KVCache.empty(cfg.n_layers)
            new_cache = base.append(new_kvs, cache_commit)
        return DenoiserOutput(logits, new_cache)

    def empty_cache(self) -> KVCache:
        return KVCache.empty(self.config.n_layers)

    # -- persistence -------------------------------------------------------------------
    def save_pretrained(self, directory: "str | os.PathLike") -> None:
        """Write `config.json` and `model.safetensors` (checksummed, `diffusionlm.io.safeio`) into
        `directory` (created if needed)."""
        os.makedirs(directory, exist_ok=True)
        meta = {"model_type": _MODEL_TYPE, "format_version": 1, **self.config.to_dict()}
        text = json.dumps(meta, indent=2, sort_keys=True)
        atomic_write(os.path.join(directory, CONFIG_NAME), lambda tmp: tmp.write_text(text))
        save_safetensors(os.path.join(directory, WEIGHTS_NAME), self.state_dict())

    @classmethod
    def from_pretrained(
        cls,
        directory: "str | os.PathLike",
        *,
        device: "torch.device | str" = "cpu",
        dtype: Optional[torch.dtype] = None,
        **config_overrides: Any,
    ) -> "DiffusionTransformer":
        """Load a model written by `save_pretrained`. `config_overrides` may change runtime
        settings such as `attention` or `dropout`. The folder passes the loader gate first
        (`diffusionlm.trust`): no symbolic links, a finite config, a parameter count equal to the
        weights' (read from the safetensors header before anything is allocated), exactly the
        tensors the config needs, finite weights. The weights' checksum is verified (a damaged
        file is a `diffusionlm.io.safeio.CorruptFileError` naming it)."""
        cfg_path = os.path.join(directory, CONFIG_NAME)
        w_path = os.path.join(directory, WEIGHTS_NAME)
        for path in (cfg_path, w_path):
            if not os.path.isfile(no_symlink(path)):
                raise FileNotFoundError(f"no {os.path.basename(path)} in {os.fspath(directory)!r}: {path} is missing")
        meta = read_json_config(cfg_path)
        if meta.get("model_type", _MODEL_TYPE) != _MODEL_TYPE:
            raise ValueError(f"{cfg_path} describes a {meta.get('model_type')!r}, not a {_MODEL_TYPE!r}")
        try:
            config = TransformerConfig.from_dict({**meta, **config_overrides})
        except (TypeError, ValueError) as err:
            raise UntrustedFolderError(f"{cfg_path}: {err}") from None
        header = safetensors_header(w_path)
        check_size(implied_num_weights(config), header_numel(header), w_path, exact=False)  # then the exact check
        model = cls(config)
        check_tensors({k: tuple(v.shape) for k, v in model.state_dict().items()}, header, w_path)
        state = load_safetensors(w_path, device=str(device))[0]
        check_weights_finite(state, w_path)
        model.load_state_dict(state, strict=True)
        model.to(device)
        if dtype is not None:
            model.to(dtype)
        return model

    def extra_repr(self) -> str:
        c = self.config
        return (
            f"vocab_size={c.vocab_size}, layers={c.n_layers}, hidden={c.hidden}, heads={c.n_heads}, "
            f"attention={c.attention!r}, time_conditioning={c.time_conditioning}"
        )


def implied_num_weights(config: TransformerConfig) -> int:
    """The number of values in `DiffusionTransformer(config).state_dict()`, without allocating
    them: the model built on the meta device at 1 and 2 layers, extrapolated linearly in the layer
    count (every layer is the same). The loader gate compares it with a weights file's header."""
    with torch.device("meta"):
        one, two = (sum(v.numel() for v in DiffusionTransformer(dataclasses.replace(config, n_layers=n)).state_dict().values())
                    for n in (1, 2))
    return one + (config.n_layers - 1) * (two - one)
