"""Prepacked weights for few-row CPU inference: every `nn.Linear` of a model through MKL's packed GEMM.

    with PackedLinears(model, rows=(16, 32)):      # CPU, float32, no grad
        out = sampler.sample(lm, ...)               # the same tokens, faster cached steps

Why: a cached decoding step feeds few rows (16 per sequence under Block(16)), so each linear layer
is a skinny GEMM [M, K] x [K, N] with small M. MKL's sgemm re-packs the whole weight into its
panel layout at every call; for M = 16 that copy costs as much as the product (measured at 1
thread on gpt2-small's 48 layer weights: 21-26 GFLOP/s plain, 31-36 GFLOP/s prepacked). Here each
weight is packed once per row count M (`cblas_sgemm_pack`, through `torch.ops.mkl`) and the call
is `cblas_sgemm_compute` on the packed panels: the same kernel on the same panels, so the result
is bitwise equal to `F.linear` (tested).

Scope and safety:
    * only while the context is open: the modules' `forward` is replaced on entry and restored on
      exit (also on an error); the packs belong to this object, never to the model;
    * a call packs only for M in `rows` (a pack holds ~2.2x the weight's bytes; len(rows) packs
      per layer at most); any other M, a tensor needing grad, a weight that changed since it was
      packed (its version counter moved: a training step) or a non-CPU / non-float32 weight goes
      through plain `F.linear`;
    * without MKL (not an x86 build of torch) nothing is replaced.
"""
from __future__ import annotations

import types
from typing import Iterable

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

__all__ = ["PackedLinears", "mkl_packing_available"]


def mkl_packing_available() -> bool:
    """Whether this torch build has MKL's packed GEMM (x86 builds with MKL)."""
    return bool(torch.backends.mkl.is_available()) and hasattr(torch.ops.mkl, "_mkl_linear")


class PackedLinears:
    """Context manager: the model's `nn.Linear` layers use weights prepacked for `rows` (module docstring)."""

    def __init__(self, model: nn.Module, rows: Iterable[int] = (16, 32)):
        rows = tuple(rows)
        if not rows or any(not isinstance(r, int) or isinstance(r, bool) or r < 1 for r in rows):
            raise ValueError(f"rows must be positive ints (the row counts to pack for), got {rows!r}")
        if len(rows) > 8:
            raise ValueError(f"at most 8 row counts (each pack holds ~2.2x the weights), got {len(rows)}")
        self.model, self.rows = model, frozenset(rows)
        self._packs: dict = {}  # (id(module), M) -> (weight version, packed weight)
        self._patched: list = []
        self.packed_calls = 0  # calls that went through a pack (for tests and benchmarks)

    def __enter__(self) -> "PackedLinears":
        if self._patched:
            raise RuntimeError("PackedLinears is already open")
        if mkl_packing_available():
            for module in self.model.modules():
                if type(module) is nn.Linear:
                    module.forward = types.MethodType(self._forward_of(), module)
                    self._patched.append(module)
        return self

    def __exit__(self, *exc) -> None:
        for module in self._patched:
            del module.forward  # the class's forward again
        self._patched.clear()
        self._packs.clear()

    def _forward_of(self):
        ctx = self

        def forward(module: nn.Linear, x: Tensor) -> Tensor:
            return ctx._linear(module, x)

        return forward

    def _linear(self, module: nn.Linear, x: Tensor) -> Tensor:
        w, b = module.weight, module.bias
        K = w.shape[1]
        M = x.numel() // K if x.shape[-1] == K else -1
        if (M not in self.rows or torch.is_grad_enabled() and (x.requires_grad or w.requires_grad)
                or w.device.type != "cpu" or w.dtype != torch.float32 or x.dtype != torch.float32
                or (b is not None and b.dtype != torch.float32)):
            return F.linear(x, w, b)
        key = (id(module), M)
        entry = self._packs.get(key)
        if entry is None or entry[0] != w._version:
            entry = (w._version, torch.ops.mkl._mkl_reorder_linear_weight(w.detach(), M))
            self._packs[key] = entry
        self.packed_calls += 1
        y = torch.ops.mkl._mkl_linear(x.reshape(M, K), entry[1], w.detach(), None if b is None else b.detach(), M)
        return y.reshape(*x.shape[:-1], w.shape[0])
