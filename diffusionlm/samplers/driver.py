"""The shared step driver of every level-based sampler (MDLM, ACS, SEDD, AR, ...).

A sampler supplies a *step function*; the driver runs the hyperschedule around it:

    out = drive(lm, schedule, step_fn, request, cache=True)   # request: a base.SampleRequest

For a hyperschedule with level table l [T+1, d] (`schedule.table(d)`), at each step k = 1..T:

1. Levels. Fixed / prompt positions are clean from the start: their level is 0 in every row of
   the table (so they are *settled* at every step) and their ids never change. Per batch row,
   a position is settled where l[k-1] = 0, worthless where l[k-1] = l[k] = 1, active otherwise.
   A step with no active position in any row is skipped (no model call, no record): e.g. the
   first P steps of Quench under a P-token prompt.
2. Rows. The rows fed are the positions that are not worthless in some batch row (ascending);
   the step's inference mask (`masks.inference_mask_mod` of the per-row categories: settled rows
   attend settled rows causally, active rows attend every settled and active row, nobody attends
   a worthless row) covers them; `None` (full attention) when every fed row is active. Row j
   reads token j in the ALIGNED layout and token j-1 (BOS for j = 0) in the SHIFTED one
   (`shift_inputs`); SHIFTED_LAST also feeds a reader row at position p + 1 that reads token p,
   p the last fed row, as an ACTIVE row whose output is dropped (`masks.Layout`; the two-halves
   layout trains the same reader, one a segment); the model gets `position_ids` = the true positions, `levels` = l[k-1]
   of the fed rows, and whatever the process asks for at those levels (`lm.model_inputs`:
   eq. 12's `embedding_weight` for a weighted-embedding GammaHybrid).
3. KV cache (`cache=True` and a model with `empty_cache()`). The longest prefix 0..s-1 settled in
   every batch row is cached (`models.cache.plan_cached_step`, non-strict: fixed positions after
   the cursor are fed, not cached; cache.py explains why that is exact): feed rows[cached:] (the
   newly settled rows first, then the rest) with `mask[..., cached:, :]` and commit the
   s - cached newly settled rows. Uncached: one full forward over the fed rows with the same mask. Both give the
   same logits up to floating-point summation order. Where the fed ids, rows, mask and cache did
   not change since the last call and the model ignores its `levels` input, the previous logits
   are reused without a call (MDLM's caching trick for Flat, whose steps often change nothing).
4. The step function gets a `Step` (the ids x_t, levels l[k-1] and l[k] of every position, which
   positions are active, and the model's logits at the active columns) and returns the new ids of
   those columns and the model's confidence in them; the driver writes them at the active
   positions only.
5. A `StepRecord` goes to `callback` and, with `keep_history`, to the history.

Step functions draw their random numbers from the one `generator`, so a run is reproducible
from its seed, with or without the cache.
"""
from __future__ import annotations

import inspect
import time
from typing import Any, Callable, NamedTuple, Optional

import torch
from torch import Tensor

from ..masks import Layout, MaskCache, dense_mask, inference_mask_mod, shift_inputs
from ..models.base import logits_of
from ..models.cache import CachedStep, plan_cached_step
from ..schedules.hyper import ACTIVE, SETTLED, WORTHLESS, Hyperschedule
from .base import SampleOutput, SampleRequest, StepRecord, prepare_fixed

__all__ = [
    "Step",
    "StepFn",
    "drive",
    "resolve_schedule",
    "resolve_length",
    "check_steps",
    "check_dtype",
    "unit_interval",
    "model_device",
    "ignores_levels",
    "takes_keyword",
    "inverse_cdf",
    "logits_of",
]


class Step(NamedTuple):
    """What a step function sees at generation step k (levels as float64, [B, d]).

    k:        the step, 1..T
    x:        [B, d] ids before the step (x_t)
    level_t:  [B, d] l[k-1] (0 at fixed positions)
    level_s:  [B, d] l[k]
    active:   [B, d] bool, the positions that move at this step (never fixed ones)
    cols:     [A] positions active in some batch row, ascending
    logits:   [B, A, V] the model's logits at those positions
    """

    k: int
    x: Tensor
    level_t: Tensor
    level_s: Tensor
    active: Tensor
    cols: Tensor
    logits: Tensor


#: step_fn(step, generator) -> (new ids [B, A] at step.cols, confidence [B, A])
StepFn = Callable[[Step, Optional[torch.Generator]], "tuple[Tensor, Tensor]"]


# ---------------------------------------------------------------------------------------------
# small helpers shared by the samplers
# ---------------------------------------------------------------------------------------------
def check_steps(steps: Optional[int], name: str = "steps") -> None:
    if steps is None:
        return
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise ValueError(f"{name} must be an int >= 1, got {steps!r}")


def unit_interval(value: Any, what: str) -> float:
    """`value` as a float in [0, 1], else ValueError naming `what` (bools and NaN refused)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= float(value) <= 1.0:
        raise ValueError(f"{what} must be a number in [0, 1], got {value!r}")
    return float(value)


def check_dtype(dtype: torch.dtype) -> None:
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"categorical sampling dtype must be torch.float64 or torch.float32, got {dtype!r}")


def resolve_schedule(schedule: Hyperschedule, steps: Optional[int] = None, rate: Optional[float] = None) -> Hyperschedule:
    """The lm's hyperschedule, run in `steps` steps or at `rate` tokens per step if given."""
    check_steps(steps)
    if steps is not None and rate is not None:
        raise ValueError("give at most one of steps and rate")
    if steps is not None:
        schedule = schedule.with_steps(steps)
    elif rate is not None:
        if not isinstance(rate, (int, float)) or not rate > 0:
            raise ValueError(f"rate must be a number > 0, got {rate!r}")
        schedule = schedule.at_rate(float(rate))
    if schedule.continuous:
        raise ValueError(f"{schedule!r} is continuous-time: give the sampler a number of steps (steps=T)")
    return schedule


def resolve_length(lm: Any, length: Optional[int], prompt: Optional[Tensor], fixed: Optional[Tensor], schedule: Optional[Hyperschedule] = None) -> int:
    """The sequence length: `length`, else the length of a prompt given with `fixed`, else the
    width of a Custom table."""
    if length is None:
        if fixed is not None and prompt is not None:
            length = int(torch.as_tensor(prompt).shape[-1])
        elif schedule is not None and getattr(schedule, "table_", None) is not None:
            length = int(schedule.table_.shape[1])
        else:
            raise ValueError("give the sequence length (length=d)")
    if not isinstance(length, int) or isinstance(length, bool) or length < 1:
        raise ValueError(f"length must be an int >= 1, got {length!r}")
    max_pos = getattr(lm, "max_positions", None)
    layout = getattr(lm, "layout", None)
    extra = Layout(layout).extra_positions if layout is not None else 0
    if max_pos is not None and length + extra > max_pos:
        why = f" (the {Layout(layout).value} layout's reader of the last position sits at position {length})" if extra else ""
        raise ValueError(f"length {length} exceeds the model's {max_pos} positions{why}")
    return length


def model_device(model: Any) -> torch.device:
    params = getattr(model, "parameters", None)
    if callable(params):
        for p in params():
            return p.device
    return torch.device("cpu")


def ignores_levels(model: Any) -> bool:
    """Whether the model's output does not depend on its `levels` input (known cases only)."""
    flag = getattr(model, "ignores_levels", None)
    if isinstance(flag, bool):
        return flag
    tc = getattr(getattr(model, "config", None), "time_conditioning", None)
    if isinstance(tc, bool):
        return not tc
    return False


def takes_keyword(model: Any, name: str) -> bool:
    """Whether the model's forward (or call) declares the keyword argument `name`."""
    fn = getattr(model, "forward", None) if isinstance(model, torch.nn.Module) else getattr(model, "__call__", None)
    try:
        return name in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


def inverse_cdf(probs: Tensor, u: Tensor, dtype: torch.dtype = torch.float64) -> Tensor:
    """`categorical` with given uniforms u (probs [..., V], u [...]): the index whose CDF bin holds u."""
    p = probs.to(dtype)
    p = p / p.sum(-1, keepdim=True)
    cdf = p.cumsum(-1)
    uu = u.to(dtype).to(p.device)[..., None] * cdf[..., -1:]
    idx = torch.searchsorted(cdf, uu, right=True).squeeze(-1).clamp(max=p.shape[-1] - 1)
    bad = p.gather(-1, idx[..., None]).squeeze(-1) <= 0
    if bad.any():
        idx = torch.where(bad, p.argmax(-1), idx)
    return idx


def _categories(settled: Tensor, worthless: Tensor) -> Tensor:
    cats = torch.full(settled.shape, ACTIVE, dtype=torch.int8, device=settled.device)
    cats[settled] = SETTLED
    cats[worthless] = WORTHLESS
    return cats


# ---------------------------------------------------------------------------------------------
# the driver
# ---------------------------------------------------------------------------------------------
class _StepView(NamedTuple):
    """Step k of a run as the driver splits it (module docstring, point 1-2)."""

    k: int
    level_t: Tensor  # [B, d] l[k-1], 0 at fixed positions
    level_s: Tensor  # [B, d] l[k]
    active: Tensor  # [B, d] bool
    rows: Tensor  # [L'] positions not worthless in some batch row, ascending (then the reader's)
    cols: Tensor  # [A] positions active in some batch row, ascending
    row_cats: Tensor  # [1 or B, L'] SETTLED / ACTIVE / WORTHLESS codes of those rows
    reader: bool  # whether rows[-1] is a SHIFTED_LAST reader (reads token rows[-1] - 1)


def step_view(layout: Layout, k: int, level_t: Tensor, level_s: Tensor, active: Tensor, rows: Tensor, cols: Tensor,
              row_cats: Tensor) -> _StepView:
    """The step's view; under SHIFTED_LAST with the reader of the last fed row appended (an
    ACTIVE row at that row's position + 1)."""
    if layout.reads_last:
        rows = torch.cat([rows, rows[-1:] + 1])
        row_cats = torch.cat([row_cats, torch.full_like(row_cats[:, :1], ACTIVE)], 1)
    return _StepView(k, level_t, level_s, active, rows, cols, row_cats, layout.reads_last)


class _Call(NamedTuple):
    """One model call: what was fed (to decide whether the next step may reuse its logits)."""

    feed: Tensor
    start: int
    mask_key: Any
    inputs: Tensor
    logits: Tensor


class _Run:
    """The state of one `drive` call: the inputs resolved once, then x and the KV cache moving
    step by step. Each method is one numbered point of the module docstring."""

    def __init__(self, lm: Any, schedule: Hyperschedule, step_fn: StepFn, request: SampleRequest, cache: bool):
        self.lm, self.step_fn, self.request = lm, step_fn, request
        self.d = resolve_length(lm, request.length, request.prompt, request.fixed, schedule)
        self.B = B = request.batch_size
        self.process, self.model = lm.process, lm.model
        self.layout = Layout(lm.layout)
        self.dev = dev = model_device(self.model)
        self.table = schedule.table(self.d).to(dev)  # float64 [T+1, d]
        values, fix = prepare_fixed(request.prompt, request.fixed, B, self.d, self.process.vocab_size)
        self.fix = fix.to(dev)
        self.shared = bool((self.fix == self.fix[:1]).all())  # one mask for the whole batch
        x = self.process.prior((B, self.d), generator=request.generator).to(dev)
        self.x = torch.where(self.fix, values.to(dev), x)
        self.use_cache = bool(cache) and callable(getattr(self.model, "empty_cache", None))
        self.reuse_ok = bool(cache) and ignores_levels(self.model) and not getattr(lm, "process_asks_embedding_weight", False)
        self.masks = MaskCache(maxsize=4)
        self.kv: Any = None
        self.cached = 0
        self.calls = 0
        self.history: list = []
        self.prev: Optional[_Call] = None

    # 1. levels and the settled / active / worthless split -----------------------------------
    def split(self, k: int) -> Optional[_StepView]:
        B, d = self.B, self.d
        lt = self.table[k - 1].expand(B, d).masked_fill(self.fix, 0.0)
        ls = self.table[k].expand(B, d).masked_fill(self.fix, 0.0)
        settled = lt == 0
        worthless = (lt == 1) & (ls == 1)
        active = ~settled & ~worthless
        if not bool(active.any()):
            return None
        rows = (~worthless).any(0).nonzero().squeeze(1)
        cols = active.any(0).nonzero().squeeze(1)
        cats = _categories(settled[:1], worthless[:1]) if self.shared else _categories(settled, worthless)
        return step_view(self.layout, k, lt, ls, active, rows, cols, cats[:, rows])

    # 2. the step's inference mask over its rows ----------------------------------------------
    def mask(self, view: _StepView) -> tuple[Any, Any]:
        row_cats = view.row_cats
        key = (tuple(view.rows.tolist()), row_cats.cpu().numpy().tobytes(), row_cats.shape[0])

        def build() -> Any:
            if bool((row_cats == ACTIVE).all()):
                return None
            return dense_mask(inference_mask_mod(row_cats), row_cats.shape[0], int(view.rows.numel()), device=self.dev)

        return self.masks.get(key, build), key

    # 3. the rows to feed after the cached prefix, and the model's logits ----------------------
    def plan(self, view: _StepView, mask: Any) -> CachedStep:
        if not self.use_cache:
            return CachedStep(view.rows, mask, 0, 0)
        return plan_cached_step(view.rows, view.row_cats, mask, self.cached, strict=False)

    def logits(self, view: _StepView, plan: CachedStep, mask_key: Any) -> Tensor:
        start = self.cached if self.use_cache else 0
        feed = plan.rows
        x = torch.cat([self.x, self.x[:, -1:]], 1) if view.reader else self.x  # the reader may sit at d
        inputs = shift_inputs(x, self.layout, self.lm.bos_id)[:, feed]
        # each row's level is its own position's; the reader's that of the token it reads
        at = torch.cat([feed[:-1], feed[-1:] - 1]) if view.reader else feed
        prev = self.prev
        if (
            self.reuse_ok
            and prev is not None
            and plan.commit == 0
            and prev.start == start
            and prev.mask_key == mask_key
            and torch.equal(prev.feed, feed)
            and torch.equal(prev.inputs, inputs)
        ):
            return prev.logits
        logits = self.call_model(inputs, feed, plan.mask, view.level_t[:, at].float(), plan)
        self.prev = _Call(feed, start, mask_key, inputs, logits) if not plan.commit else None  # the cache changed
        return logits

    def call_model(self, inputs: Tensor, feed: Tensor, mask: Any, levels: Tensor, plan: CachedStep) -> Tensor:
        """The one place where the driver calls the model."""
        kwargs: dict = dict(position_ids=feed[None].expand(self.B, -1), attention_mask=mask, levels=levels)
        # inputs the process asks for (eq. 12's embedding weight): they follow the levels
        if callable(getattr(self.lm, "model_inputs", None)):
            kwargs.update(self.lm.model_inputs(levels))
        with_cache = self.use_cache and (self.kv is not None or plan.commit > 0)
        if with_cache:
            if self.kv is None:
                self.kv = self.model.empty_cache()
            kwargs.update(cache=self.kv, cache_commit=plan.commit)
        out = self.model(inputs, **kwargs)
        self.calls += 1
        if with_cache:
            self.kv = out.cache
            self.cached = plan.cached
        return logits_of(out)

    def output(self, t0: float, calls_per_sample: Optional[Tensor] = None) -> SampleOutput:
        """The run's SampleOutput (x must hold no MASK by now); every row took every call unless
        `calls_per_sample` says otherwise."""
        mask_id = self.process.mask_id
        if mask_id is not None and bool((self.x == mask_id).any()):  # pragma: no cover - a bug
            raise RuntimeError("sampler left MASK in its output: the schedule's last level must be 0")
        if calls_per_sample is None:
            calls_per_sample = torch.full((self.B,), self.calls, dtype=torch.long)
        return SampleOutput(self.x, self.history, self.calls, time.perf_counter() - t0, calls_per_sample)

    # 4-5. the step function's ids at the active positions, and the step's record ---------------
    def advance(self, view: _StepView, feed: Tensor, logits: Tensor) -> None:
        idx = torch.searchsorted(feed, view.cols)
        x, cols = self.x, view.cols
        step = Step(view.k, x, view.level_t, view.level_s, view.active, cols, logits[:, idx])
        new, conf = self.step_fn(step, self.request.generator)
        act_c = view.active[:, cols]
        x_new = x.clone()
        x_new[:, cols] = torch.where(act_c, new.to(x.dtype), x[:, cols])
        if self.request.wants_records:
            confidence = torch.full((self.B, self.d), float("nan"), dtype=torch.float64, device=self.dev)
            nan = torch.full_like(conf, float("nan"), dtype=torch.float64)
            confidence[:, cols] = torch.where(act_c, conf.to(torch.float64), nan)
            self.request.emit(StepRecord(view.k, x_new, x_new != x, confidence, view.level_s), self.history)
        self.x = x_new


@torch.no_grad()
def drive(lm: Any, schedule: Hyperschedule, step_fn: StepFn, request: SampleRequest, cache: bool = True) -> SampleOutput:
    """Run `step_fn` over every step of `schedule` for `request` (see the module docstring)."""
    t0 = time.perf_counter()
    run = _Run(lm, schedule, step_fn, request, cache)
    for k in range(1, run.table.shape[0]):
        view = run.split(k)
        if view is None:
            continue
        mask, key = run.mask(view)
        plan = run.plan(view, mask)
        logits = run.logits(view, plan, key)
        run.advance(view, plan.rows, logits)
    return run.output(t0)
