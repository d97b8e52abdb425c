"""Adaptive parallel decoding: confidence-threshold unmasking under any hyperschedule (Fast-dLLM),
its budgeted variant, and the approximate prefix / dual caches for full-attention models.

    Threshold(threshold=0.9, max_per_step=None, block=None, approx_cache=None, refresh_every=None,
              cache=True, dtype=torch.float64, order_by="drawn")

    out = Threshold(0.9).sample(lm, batch_size=4, length=128, generator=g)
    out.num_model_calls        # network calls of the run
    out.calls_per_sample       # [B]: the calls each sample needed (rows finish at different calls)

Absorb-family processes only (a MASK to unmask: Absorb, EpsilonHybrid, GammaHybrid with MASK).

Which positions may move: the hyperschedule
    From the level table l [T+1, d], each position i has a start step s_i = min{k >= 1 : l[k, i] < 1}
    (the step it stops being worthless) and a finish step f_i = min{k : l[k, i] = 0}. Per batch row,
    the *stage* is the earliest finish step of a still-masked position, K = min f_i over them. At
    that stage a position is
        settled    fixed, or decoded with f_i < K (its group is finished);
        active     not settled, s_i <= K (decoded or still masked);
        worthless  s_i > K (not started; dropped, as in the fixed-step driver).
    So Flat has one stage (every position active, full attention), Block(w) one stage per block
    (earlier blocks settled, later ones dropped), Slide(w) a window of w positions starting at the
    first masked one, Quench one position (it is AR decoding). A call that finishes the stage's
    last masked position moves the row on. The mask, rows and exact KV cache of a call are the
    fixed-step driver's (`driver._Run`): with cache=True settled rows are cached exactly where they
    form a prefix, and a call whose rows, inputs and cache did not change is not repeated (the
    SHIFTED layout's last row reads no token); cache=False does neither (same tokens, tested).
    `block` further restricts unmasking to one block of `block` positions at a time, the lowest
    block holding a movable position in some row (semi-autoregressive decoding, as LLaDA /
    Fast-dLLM decode a Flat model), batch-wide, without changing what the model attends to.

How many finish per call: the threshold
    Every masked movable position draws a token from the model's clean-token distribution
    (categorical in `dtype`) with confidence c = p(drawn token). Those with c > threshold are
    unmasked, and in any case the most confident one of the row (at least one token per call
    and row). threshold is in [0, 1]: 0 unmasks every movable position in one call (c > 0 always
    holds for a drawn token); 1 unmasks exactly one (the most confident) per call, since no
    confidence exceeds 1: "a threshold above 1 falls back to one token per step" is threshold = 1.
    Outside [0, 1] is an error.
    What "confidence" is (`order_by`): "drawn" (the default, Fast-dLLM's) is p of the token the
    position drew, so which position goes first depends on its draw: a draw of the mode is
    preferred, and the tokens written are not draws from the model's conditionals (they lean
    towards each position's most likely token, lowering the text's entropy). "max" (max_t p) and
    "margin" (the top probability minus the second: Dream's top-k margin) are functions of the
    position's distribution only, so the order is chosen before the value and each written token
    is an exact draw from the model's conditional at temperature 1 given what is already written.
    Budgeted variant, `max_per_step = k`: at most k per call and row, the k most confident of
    those passing; with threshold 0 exactly min(k, movable) per call: top-k confidence decoding at
    a fixed rate, i.e. the same number of calls as a fixed-step sampler decoding k per step, so
    the two compare at equal calls. Chosen over a total-call budget because a per-call cap bounds
    the error of each parallel step (the quantity Fast-dLLM's analysis controls) and composes with
    every hyperschedule; a total budget cannot be honoured under Quench, whose stages allow one
    position per call.
    The model's `levels` input at an active position is the fraction of its row's active
    positions still masked (the expected level for linear alpha; models without time
    conditioning ignore it); settled positions get 0.

Approximate caches (`approx_cache`, Fast-dLLM), for full-attention models: every position is
fed at every call (a schedule with no worthless position, e.g. Flat), so no row is settled and
the exact cache caches nothing. Decoding goes block by block (`block` required); at a block's
first call (and every `refresh_every` calls within it) the model runs over all d rows and its
K/V of every row are kept (the *refresh*; its logits are used as well). Between refreshes:
    "prefix"  feed rows [a, d) (the block and everything after it) with the K/V of rows [0, a)
              from the last refresh;
    "dual"    feed rows [a, b) (the block only) with the K/V of rows [0, a) and [b, d).
The cached K/V are stale (computed while the block was more masked): approximate; they are
exact right after a refresh, so refresh_every=1 gives exactly the uncached sampler. Rows keep
their true positions (position_ids; rotary keys are cached after rotation), and with full
attention the order of the keys does not matter, so the suffix may follow the prefix in the
cache. A model without a KV cache, a schedule that drops positions (no suffix to cache: use the
exact cache) or a missing `block` is an error naming the mode and what it cannot work with.
"""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from typing import Any, ClassVar, Optional

import torch
from torch import Tensor

from ..masks import Layout, shift_inputs
from ..models.cache import KVCache
from .base import SampleOutput, SampleRequest, StepRecord, categorical
from .driver import _categories, _Run, _StepView, check_dtype, logits_of, step_view, unit_interval
from .mdlm import LevelSampler

__all__ = ["Threshold", "stage_steps", "select_by_confidence", "confidence_of", "cache_rows", "APPROX_CACHES", "CONFIDENCES"]

APPROX_CACHES = ("prefix", "dual")
CONFIDENCES = ("drawn", "max", "margin")


def confidence_of(p: Tensor, drawn: Tensor, kind: str) -> Tensor:
    """[B, A] confidence of each position from its distribution p [B, A, N] and its draw [B, A]:
    "drawn" p[drawn], "max" max_t p[t], "margin" p(first) - p(second) (module docstring)."""
    if kind == "drawn":
        return p.gather(-1, drawn[..., None]).squeeze(-1)
    if kind == "max":
        return p.amax(-1)
    top = p.topk(min(2, p.shape[-1]), -1).values
    return top[..., 0] - (top[..., 1] if top.shape[-1] > 1 else 0.0)


def stage_steps(table: Tensor) -> tuple[Tensor, Tensor]:
    """(start [d], finish [d]) long: s_i = min{k >= 1 : l[k, i] < 1}, f_i = min{k : l[k, i] = 0}."""
    T = table.shape[0] - 1
    ks = torch.arange(T + 1, device=table.device)[:, None].expand_as(table)
    big = torch.full_like(ks, T + 1)
    start = torch.where((table < 1) & (ks >= 1), ks, big).amin(0)
    finish = torch.where(table == 0, ks, big).amin(0)
    return start, finish


def select_by_confidence(conf: Tensor, movable: Tensor, threshold: float, max_per_step: Optional[int]) -> Tensor:
    """[B, A] bool: the positions to unmask (module docstring): c > threshold, plus each row's
    most confident movable position, capped to the max_per_step most confident per row."""
    c = torch.where(movable, conf, torch.full_like(conf, float("-inf")))
    take = movable & (c > threshold)
    best = c.argmax(-1, keepdim=True)
    take.scatter_(-1, best, movable.gather(-1, best))
    if max_per_step is not None:
        c = torch.where(take, c, torch.full_like(c, float("-inf")))
        order = torch.sort(c, dim=-1, descending=True, stable=True).indices
        rank = torch.empty_like(order).scatter_(-1, order, torch.arange(c.shape[-1], device=c.device).expand_as(order))
        take &= rank < max_per_step
    return take


def cache_rows(cache: Any, index: Tensor) -> Any:
    """A new cache holding the cached rows `index` (positions along the sequence axis), for the
    toolkit's KVCache and a transformers DynamicCache alike; the given cache is not modified."""
    if isinstance(cache, KVCache):
        keys = tuple(None if k is None else k.index_select(2, index.to(k.device)) for k in cache.keys)
        values = tuple(None if v is None else v.index_select(2, index.to(v.device)) for v in cache.values)
        return KVCache(keys, values, int(index.numel()))
    layers = getattr(cache, "layers", None)
    if layers is None:
        raise TypeError(f"cannot select rows of a {type(cache).__name__} cache")
    new = copy.copy(cache)
    new.layers = []
    for layer in layers:
        lay = copy.copy(layer)
        lay.keys = layer.keys.index_select(2, index.to(layer.keys.device))
        lay.values = layer.values.index_select(2, index.to(layer.values.device))
        new.layers.append(lay)
    return new


@dataclass
class Threshold(LevelSampler):
    """Confidence-threshold parallel decoding (module docstring)."""

    name: ClassVar[str] = "threshold"
    steps_field: ClassVar[Optional[str]] = None  # the number of calls is an output
    threshold: float = 0.9
    max_per_step: Optional[int] = None
    block: Optional[int] = None
    approx_cache: Optional[str] = None
    refresh_every: Optional[int] = None
    cache: bool = True
    dtype: torch.dtype = torch.float64
    order_by: str = "drawn"  # what "most confident" means (module docstring)

    def __post_init__(self) -> None:
        self.threshold = unit_interval(self.threshold, "threshold (1: one token per call)")
        if self.order_by not in CONFIDENCES:
            raise ValueError(f"order_by (the confidence ranking the positions) must be one of {CONFIDENCES}, got {self.order_by!r}")
        for name in ("max_per_step", "block", "refresh_every"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
                raise ValueError(f"{name} must be an int >= 1 or None, got {v!r}")
        if self.approx_cache is not None:
            if self.approx_cache not in APPROX_CACHES:
                raise ValueError(f"approx_cache must be one of {APPROX_CACHES} or None, got {self.approx_cache!r}")
            if self.block is None:
                raise ValueError(f"approx_cache={self.approx_cache!r} is refreshed per block: give block=<positions>")
        elif self.refresh_every is not None:
            raise ValueError("refresh_every applies to an approximate cache: give approx_cache='prefix' or 'dual'")
        check_dtype(self.dtype)

    def check_fits(self, lm: Any) -> None:
        super().check_fits(lm)
        if lm.process.mask_id is None:
            raise ValueError(f"threshold decoding unmasks MASK tokens; {lm.process!r} has no MASK (use MDLM or SEDDAnalytic)")
        if self.approx_cache is not None and Layout(lm.layout).reads_last:
            raise ValueError(f"approx_cache={self.approx_cache!r} feeds every row without a step mask; the shifted_last "
                             "layout's reader row needs one: use cache=True without approx_cache")
        if self.approx_cache is not None and not callable(getattr(lm.model, "empty_cache", None)):
            raise ValueError(
                f"approx_cache={self.approx_cache!r} needs a model with a KV cache; "
                f"{type(lm.model).__name__} has none (no empty_cache())"
            )

    def schedule_for(self, lm: Any):
        schedule = lm.schedule
        return schedule.with_steps(1) if schedule.continuous else schedule  # only the stage order matters

    def _sample(self, lm: Any, request: SampleRequest) -> SampleOutput:
        return _AdaptiveRun(lm, self.schedule_for(lm), self, request).run()


class _AdaptiveRun(_Run):
    """One Threshold run: the fixed-step driver's state, moved by confidence (module docstring)."""

    def __init__(self, lm: Any, schedule: Any, sampler: Threshold, request: SampleRequest):
        super().__init__(lm, schedule, None, request, cache=sampler.cache)
        self.sampler = sampler
        self.schedule = schedule
        self.start, self.finish = stage_steps(self.table)
        self.mask_id = self.process.mask_id
        self.row_calls = torch.zeros(self.B, dtype=torch.long)
        self.full: Any = None  # the approximate cache: K/V of all d rows at the last refresh
        self.full_block = -1
        self.since_refresh = 0
        self.kept: Any = None  # the rows of `full` the calls between refreshes attend to
        self.prev_approx: Optional[tuple] = None  # (refresh, feed, inputs, logits) of the last approx call
        if sampler.approx_cache is not None and bool((self.start > 1).any()):
            raise ValueError(
                f"approx_cache={sampler.approx_cache!r} caches rows that every call attends to; {schedule!r} "
                "drops not-yet-started positions (no suffix to cache, and its settled prefix is cached "
                "exactly: use cache=True without approx_cache)"
            )

    # which positions are settled / active / worthless, and which may be unmasked ---------------
    def view(self, k: int) -> tuple[_StepView, Tensor]:
        masked = (self.x == self.mask_id) & ~self.fix
        big = self.table.shape[0]
        stage = torch.where(masked, self.finish.expand_as(masked), torch.full_like(masked, big, dtype=torch.long)).amin(1, keepdim=True)
        started = self.start[None] <= stage
        settled = self.fix | (~masked & (self.finish[None] < stage))
        worthless = ~settled & ~started
        active = ~settled & ~worthless
        movable = active & masked
        blk = self.sampler.block
        if blk is not None:
            pos_block = torch.arange(self.d, device=self.dev) // blk
            lowest = torch.where(movable, pos_block.expand_as(movable), torch.full_like(pos_block, self.d).expand_as(movable)).amin()
            movable = movable & (pos_block == lowest)[None]
        n_act = active.sum(1, keepdim=True).clamp_min(1)
        frac = (active & masked).sum(1, keepdim=True).double() / n_act
        level = torch.where(active, frac.expand_as(active), torch.zeros_like(frac).expand_as(active))
        level = torch.where(worthless, torch.ones_like(level), level)
        rows = (~worthless).any(0).nonzero().squeeze(1)
        cols = movable.any(0).nonzero().squeeze(1)
        shared = bool((settled == settled[:1]).all() and (worthless == worthless[:1]).all())
        cats = _categories(settled[:1], worthless[:1]) if shared else _categories(settled, worthless)
        return step_view(self.layout, k, level, level, active, rows, cols, cats[:, rows]), movable

    # the approximate caches: refresh over all rows, else the block (and suffix) on cached K/V ----
    def approx_logits(self, view: _StepView, movable: Tensor) -> tuple[Tensor, Tensor]:
        blk, d = self.sampler.block, self.d
        g = int(view.cols.min()) // blk
        a, b = g * blk, min((g + 1) * blk, d)
        every = self.sampler.refresh_every
        refresh = self.full is None or g != self.full_block or (every is not None and self.since_refresh >= every)
        all_rows = torch.arange(d, device=self.dev)
        if refresh:
            feed, cache, commit = all_rows, None, d
        else:
            if self.kept is None:  # the cached rows of this refresh, selected once
                prefix = self.sampler.approx_cache == "prefix"
                self.kept = cache_rows(self.full, all_rows[:a] if prefix else torch.cat([all_rows[:a], all_rows[b:]]))
            feed = all_rows[a:] if self.sampler.approx_cache == "prefix" else all_rows[a:b]
            cache, commit = self.kept, 0
        inputs = shift_inputs(self.x, self.layout, self.lm.bos_id)[:, feed]
        prev = self.prev_approx
        if self.reuse_ok and prev is not None and prev[0] == refresh and torch.equal(prev[1], feed) and torch.equal(prev[2], inputs):
            # the same rows, inputs and cache as the last call (a change only the shifted layout's
            # last row does not read): its logits, without a call, as the exact driver does
            if refresh:
                self.full_block, self.since_refresh, self.kept = g, 1, None
            return prev[3], feed
        levels = view.level_t[:, feed].float()
        kwargs: dict = dict(position_ids=feed[None].expand(self.B, -1), attention_mask=None, levels=levels)
        if callable(getattr(self.lm, "model_inputs", None)):
            kwargs.update(self.lm.model_inputs(levels))
        if cache is not None or commit:
            kwargs.update(cache=cache if cache is not None else self.model.empty_cache(), cache_commit=commit)
        out = self.model(inputs, **kwargs)
        self.calls += 1
        if refresh:
            self.full, self.full_block, self.since_refresh, self.kept = out.cache, g, 0, None
        self.since_refresh += 1
        self.prev_approx = (refresh, feed, inputs, logits_of(out))
        return logits_of(out), feed

    # one call: draw, select by confidence, write, record --------------------------------------
    def advance_adaptive(self, view: _StepView, movable: Tensor, feed: Tensor, logits: Tensor) -> None:
        cols = view.cols
        idx = torch.searchsorted(feed, cols)
        p = self.process.clean_probs(logits[:, idx])  # [B, A, N] float64
        drawn = categorical(p, self.request.generator, self.sampler.dtype)
        conf = confidence_of(p, drawn, self.sampler.order_by)
        mov = movable[:, cols]
        take = select_by_confidence(conf, mov, self.sampler.threshold, self.sampler.max_per_step)
        x, x_new = self.x, self.x.clone()
        x_new[:, cols] = torch.where(take, drawn.to(x.dtype), x[:, cols])
        self.row_calls += mov.any(1).cpu().long()
        if self.request.wants_records:
            confidence = torch.full((self.B, self.d), float("nan"), dtype=torch.float64, device=self.dev)
            confidence[:, cols] = torch.where(take, conf, torch.full_like(conf, float("nan")))
            level = torch.where(x_new == self.mask_id, torch.ones_like(view.level_s), torch.zeros_like(view.level_s))
            self.request.emit(StepRecord(view.k, x_new, x_new != x, confidence, level), self.history)
        self.x = x_new

    def run(self) -> SampleOutput:
        t0 = time.perf_counter()
        with torch.no_grad():
            k = 0
            while bool(((self.x == self.mask_id) & ~self.fix).any()):
                k += 1
                view, movable = self.view(k)
                if self.sampler.approx_cache is not None:
                    logits, feed = self.approx_logits(view, movable)
                else:
                    mask, key = self.mask(view)
                    plan = self.plan(view, mask)
                    logits = self.logits(view, plan, key)
                    feed = plan.rows
                self.advance_adaptive(view, movable, feed, logits)
        return self.output(t0, self.row_calls)
