"""Backbones (denoisers): the from-scratch DiT-style transformer, its KV cache and attention backends."""
from .attention import ATTENTION_BACKENDS, AttentionBackend, attention, get_backend
from .base import Denoiser, DenoiserOutput, output_size
from .cache import CachedStep, KVCache, plan_cached_step
from .transformer import DiffusionTransformer, TransformerConfig

__all__ = [
    "ATTENTION_BACKENDS",
    "AttentionBackend",
    "attention",
    "get_backend",
    "Denoiser",
    "DenoiserOutput",
    "output_size",
    "KVCache",
    "CachedStep",
    "plan_cached_step",
    "DiffusionTransformer",
    "TransformerConfig",
]
