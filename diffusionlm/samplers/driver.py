"""The shared step driver of every level-based sampler (MDLM, ACS, SEDD, AR, ...).

A sampler supplies a *step function*; the driver runs the hyperschedule around it:

    out = drive(lm, schedule, step_fn, batch_size=B, length=d, prompt=..., fixed=...,
                generator=g, callback=cb, keep_history=h, cache=True)

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
   (`shift_inputs`); the model gets `position_ids` = the true positions, `levels` = l[k-1]
   of the fed rows, and whatever the process asks for at those levels (`lm.model_inputs`:
   eq. 12's `embedding_weight` for a weighted-embedding GammaHybrid).
3. KV cache (`cache=True` and a model with `empty_cache()`). The longest prefix 0..s-1 settled in
   every batch row is cached (cache.py explains why that is exact): feed rows[cached:] (the newly
   settled rows first, then the rest) with `mask[..., cached:, :]` and commit the s - cached newly
   settled rows. Uncached: one full forward over the fed rows with the same mask. Both give the
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

import time
from typing import Any, Callable, NamedTuple, Optional

import torch
from torch import Tensor

from ..masks import Layout, dense_mask, inference_mask_mod, shift_inputs
from ..schedules.hyper import ACTIVE, SETTLED, WORTHLESS, Hyperschedule
from .base import SampleOutput, StepRecord, prepare_fixed

__all__ = [
    "Step",
    "StepFn",
    "drive",
    "resolve_schedule",
    "resolve_length",
    "check_steps",
    "check_dtype",
    "model_device",
    "ignores_levels",
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
    if max_pos is not None and length > max_pos:
        raise ValueError(f"length {length} exceeds the model's {max_pos} positions")
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


def logits_of(out: Any) -> Tensor:
    return out.logits if hasattr(out, "logits") else out[0] if isinstance(out, tuple) else out


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
@torch.no_grad()
def drive(
    lm: Any,
    schedule: Hyperschedule,
    step_fn: StepFn,
    *,
    batch_size: int = 1,
    length: Optional[int] = None,
    prompt: Optional[Tensor] = None,
    fixed: Optional[Tensor] = None,
    generator: Optional[torch.Generator] = None,
    callback: Optional[Callable[[StepRecord], None]] = None,
    keep_history: bool = False,
    cache: bool = True,
) -> SampleOutput:
    """Run `step_fn` over every step of `schedule` (see the module docstring)."""
    t0 = time.perf_counter()
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    d = resolve_length(lm, length, prompt, fixed, schedule)
    B = batch_size
    process, model = lm.process, lm.model
    layout = Layout(lm.layout)
    dev = model_device(model)
    table = schedule.table(d).to(dev)  # float64 [T+1, d]
    T = table.shape[0] - 1
    values, fix = prepare_fixed(prompt, fixed, B, d, process.vocab_size)
    values, fix = values.to(dev), fix.to(dev)
    shared = bool((fix == fix[:1]).all())  # one mask for the whole batch

    x = process.prior((B, d), generator=generator).to(dev)
    x = torch.where(fix, values, x)

    use_cache = bool(cache) and callable(getattr(model, "empty_cache", None))
    reuse_ok = bool(cache) and ignores_levels(model) and not getattr(lm, "process_asks_embedding_weight", False)
    kv: Any = None
    cached = 0
    calls = 0
    history: list = []
    last_mask_key: Any = None
    last_mask: Any = None
    prev: Optional[tuple] = None  # (feed, start, mask_key, inputs, logits) of the last call

    for k in range(1, T + 1):
        lt = table[k - 1].expand(B, d).masked_fill(fix, 0.0)
        ls = table[k].expand(B, d).masked_fill(fix, 0.0)
        settled = lt == 0
        worthless = (lt == 1) & (ls == 1)
        active = ~settled & ~worthless
        if not bool(active.any()):
            continue
        rows = (~worthless).any(0).nonzero().squeeze(1)
        cols = active.any(0).nonzero().squeeze(1)
        cats = _categories(settled[:1], worthless[:1]) if shared else _categories(settled, worthless)
        row_cats = cats[:, rows]
        mask_key = (tuple(rows.tolist()), row_cats.cpu().numpy().tobytes(), row_cats.shape[0])
        if mask_key != last_mask_key:
            if bool((row_cats == ACTIVE).all()):
                last_mask = None
            else:
                last_mask = dense_mask(inference_mask_mod(row_cats), row_cats.shape[0], int(rows.numel()), device=dev)
            last_mask_key = mask_key
        mask = last_mask

        # which rows to feed (after the cached prefix) and how many to commit
        if use_cache:
            s = int(settled.all(0).long().cumprod(0).sum())
            start, commit = cached, s - cached
        else:
            s, start, commit = 0, 0, 0
        feed = rows[start:]
        inputs = shift_inputs(x, layout, lm.bos_id)[:, feed]

        if (
            reuse_ok
            and prev is not None
            and commit == 0
            and prev[1] == start
            and prev[2] == mask_key
            and torch.equal(prev[0], feed)
            and torch.equal(prev[3], inputs)
        ):
            logits = prev[4]
        else:
            m = mask[..., start:, :] if mask is not None else None
            kwargs: dict = dict(
                position_ids=feed[None].expand(B, -1),
                attention_mask=m,
                levels=lt[:, feed].float(),
            )
            # inputs the process asks for (eq. 12's embedding weight): they follow the levels
            extra = lm.model_inputs(kwargs["levels"]) if callable(getattr(lm, "model_inputs", None)) else {}
            kwargs.update(extra)
            if use_cache and (kv is not None or commit > 0):
                if kv is None:
                    kv = model.empty_cache()
                kwargs.update(cache=kv, cache_commit=commit)
            out = model(inputs, **kwargs)
            calls += 1
            logits = logits_of(out)
            if use_cache and "cache" in kwargs:
                kv = out.cache
                cached = s
            prev = (feed, start, mask_key, inputs, logits)
            if commit:
                prev = None  # the cache changed: the next call differs
        idx = torch.searchsorted(feed, cols)
        step = Step(k, x, lt, ls, active, cols, logits[:, idx])
        new, conf = step_fn(step, generator)

        act_c = active[:, cols]
        x_new = x.clone()
        x_new[:, cols] = torch.where(act_c, new.to(x.dtype), x[:, cols])
        if callback is not None or keep_history:
            confidence = torch.full((B, d), float("nan"), dtype=torch.float64, device=dev)
            confidence[:, cols] = torch.where(act_c, conf.to(torch.float64), torch.full_like(conf, float("nan"), dtype=torch.float64))
            rec = StepRecord(k, x_new, x_new != x, confidence, ls)
            if callback is not None:
                callback(rec)
            if keep_history:
                history.append(rec)
        x = x_new

    if process.mask_id is not None and bool((x == process.mask_id).any()):  # pragma: no cover - a bug
        raise RuntimeError("sampler left MASK in its output: the schedule's last level must be 0")
    return SampleOutput(x, history, calls, time.perf_counter() - t0)
