"""Prepacked weights for few-row CPU inference: every `nn.Linear` of a model through MKL's packed GEMM.

    with PackedLinears(model, rows=(16, 32)):      # CPU, float32, no grad
        out = sampler.sample(lm, ...)               # the same tokens, faster cached steps
    with PackedLinears(model):                      # rows=None: the first 2 row counts <= 256 seen
        ...

Why: a cached decoding step feeds few rows (16 per sequence under Block(16)), so each linear layer
is a skinny GEMM [M, K] x [K, N] with small M. MKL's sgemm re-packs the whole weight into its
panel layout at every call; for M = 16 that copy costs as much as the product (measured at 1
thread on gpt2-small's 48 layer weights: 21-26 GFLOP/s plain, 31-36 GFLOP/s prepacked). Here each
weight is packed once per row count M (`cblas_sgemm_pack`, through `torch.ops.mkl`) and the call
is `cblas_sgemm_compute` on the packed panels: for M >= 16 the same kernel on the same panels as
`F.linear`, so the result is bitwise equal (tested; measured on every M in 16..39 and 48..256 for
gpt2-small's and smaller layer shapes). Below 16 rows MKL's unpacked sgemm takes another path
that rounds differently, so fewer rows are never packed (MIN_ROWS).

Scope and safety:
    * only while the context is open: the modules' `forward` is replaced on entry and restored on
      exit (also on an error); the packs belong to this object, never to the model;
    * a call packs only for M in `rows` (a pack holds ~2.2x the weight's bytes; len(rows) packs
      per layer at most), or with rows=None for the first `max_packs` distinct M in [16, `max_rows`]
      the model is called with (a cached Block(16) run at batch 1: 16 and 32); any other M, a tensor needing grad, a weight that changed since it was
      packed (its version counter moved: a training step) or a non-CPU / non-float32 weight goes
      through plain `F.linear`;
    * without MKL (not an x86 build of torch) nothing is replaced.
"""
from __future__ import annotations

import types
from typing import Iterable, Optional

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

    #: fewer rows are never packed (module docstring)
    MIN_ROWS = 16

    def __init__(self, model: nn.Module, rows: Optional[Iterable[int]] = None, *, max_packs: int = 2,
                 max_rows: int = 256):
        for name, v in (("max_packs", max_packs), ("max_rows", max_rows)):
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        if max_packs > 8:
            raise ValueError(f"at most 8 row counts (each pack holds ~2.2x the weights), got max_packs={max_packs}")
        if rows is not None:
            rows = tuple(rows)
            if not rows or any(not isinstance(r, int) or isinstance(r, bool) or r < 1 for r in rows):
                raise ValueError(f"rows must be positive ints (the row counts to pack for), got {rows!r}")
            if min(rows) < self.MIN_ROWS:
                raise ValueError(f"rows must be >= {self.MIN_ROWS}, got {min(rows)}: with fewer rows MKL's unpacked "
                                 "GEMM rounds differently, so packing would change the results")
            if len(rows) > 8:
                raise ValueError(f"at most 8 row counts (each pack holds ~2.2x the weights), got {len(rows)}")
        self.model = model
        self.rows = None if rows is None else frozenset(rows)
        self.max_packs, self.max_rows = max_packs, max_rows
        self._auto_rows: set = set()
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
        self._auto_rows.clear()

    def _forward_of(self):
        ctx = self

        def forward(module: nn.Linear, x: Tensor) -> Tensor:
            return ctx._linear(module, x)

        return forward

    def _packs_for(self, M: int) -> bool:
        if self.rows is not None:
            return M in self.rows
        return M in self._auto_rows or (self.MIN_ROWS <= M <= self.max_rows and len(self._auto_rows) < self.max_packs)

    def _linear(self, module: nn.Linear, x: Tensor) -> Tensor:
        w, b = module.weight, module.bias
        K = w.shape[1]
        M = x.numel() // K if x.shape[-1] == K else -1
        if (not self._packs_for(M) or torch.is_grad_enabled() and (x.requires_grad or w.requires_grad)
                or w.device.type != "cpu" or w.dtype != torch.float32 or x.dtype != torch.float32
                or (b is not None and b.dtype != torch.float32)):
            return F.linear(x, w, b)
        self._auto_rows.add(M)
        key = (id(module), M)
        entry = self._packs.get(key)
        if entry is None or entry[0] != w._version:
            entry = (w._version, torch.ops.mkl._mkl_reorder_linear_weight(w.detach(), M))
            self._packs[key] = entry
        self.packed_calls += 1
        y = torch.ops.mkl._mkl_linear(x.reshape(M, K), entry[1], w.detach(), None if b is None else b.detach(), M)
        return y.reshape(*x.shape[:-1], w.shape[0])
