"""Backbones (denoisers): the from-scratch DiT-style transformer, its KV cache and attention backends."""
from .attention import ATTENTION_BACKENDS, AttentionBackend, attention, get_backend
from .base import Annealing, Backbone, Denoiser, DenoiserOutput, bare, logits_of, output_size
from .cache import CachedStep, KVCache, plan_cached_step
from .packed import PackedLinears
from .transformer import DiffusionTransformer, TransformerConfig

__all__ = [
    "ATTENTION_BACKENDS",
    "AttentionBackend",
    "attention",
    "get_backend",
    "Annealing",
    "Backbone",
    "bare",
    "logits_of",
    "Denoiser",
    "DenoiserOutput",
    "output_size",
    "KVCache",
    "CachedStep",
    "plan_cached_step",
    "PackedLinears",
    "DiffusionTransformer",
    "TransformerConfig",
]

# Hugging Face causal LMs as denoisers, and LoRA (peft) for the LAD recipe; transformers and peft
# are imported lazily, when first used.
from .hf import AttentionAnnealing, HFDenoiser, annealed_mask
from .lora import apply_lora, load_adapters, lora_audit, save_adapters

__all__ += ["HFDenoiser", "AttentionAnnealing", "annealed_mask", "apply_lora", "lora_audit", "save_adapters", "load_adapters"]

#: registry of backbones by spec name (diffusionlm.specs kind "backbone")
from ..specs import registry

BACKBONES = registry("backbone")
__all__ += ["BACKBONES"]
