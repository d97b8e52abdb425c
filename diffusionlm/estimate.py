"""How long a run will take, from a quick timing of one of its steps on this machine.
At the top level: one small module of the measuring layer that the command line and any caller
use before a run (training, evaluation, sampling alike), part of none of them.

    t = train_step_seconds(lm, batch_size=8, length=1024, device="cpu")   # one forward + backward
    total = t * steps * grad_accum
    if total > LONG_RUN_SECONDS: print(describe("training", total, ...))

Training:   seconds ~= steps x grad_accum x (time of one micro-batch's forward + backward).
Evaluation: seconds ~= ceil(rows / batch_size) x M x (time of one bound forward over a batch).
The timed step runs on random ids of the run's shape (the cost does not depend on the values)
under `torch.random.fork_rng`, and the gradients it leaves are cleared, so the run that follows
is the same with or without the estimate. First calls carry one-off costs (allocation, mask
caches), so the estimate leans high; it says how it was made.
"""
from __future__ import annotations

import math
import time
from typing import Any, Optional

import torch

__all__ = ["LONG_RUN_SECONDS", "train_step_seconds", "bound_forward_seconds", "format_duration", "describe"]

#: runs estimated longer than this print their estimate first (30 minutes)
LONG_RUN_SECONDS = 30 * 60


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _model_device(model: Any) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def _timed(fn, repeat_below: float = 5.0) -> float:
    """Seconds of fn(), timed once, and once more (keeping the faster) when the first was quick."""
    best = math.inf
    for i in range(2):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
        if best > repeat_below:
            break
    return best


def train_step_seconds(lm: Any, batch_size: int, length: int, two_halves: bool = False) -> float:
    """Seconds of one training micro-batch (loss, backward) of `lm` on its model's device."""
    model = lm.model
    dev = _model_device(model)
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, lm.process.vocab_size, (batch_size, length), generator=g).to(dev)
    was_training = model.training
    model.train()

    def step():
        out = lm.loss(x, generator=g, two_halves=two_halves and lm.process.likelihood)
        out.loss.backward()
        _sync(dev)

    try:
        with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
            return _timed(step)
    finally:
        model.zero_grad(set_to_none=True)
        model.train(was_training)


@torch.no_grad()
def bound_forward_seconds(lm: Any, batch_size: int, length: int) -> float:
    """Seconds of one NLL-bound draw (M = 1) over a batch of `batch_size` rows of `length`."""
    dev = _model_device(lm.model)
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, lm.process.vocab_size, (batch_size, length), generator=g).to(dev)

    def fwd():
        lm.nll_bound(x, num_samples=1, generator=g)
        _sync(dev)

    with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
        return _timed(fwd)


def format_duration(seconds: float) -> str:
    s = int(round(seconds))
    if s < 90:
        return f"{s} s"
    if s < 90 * 60:
        return f"{s / 60:.0f} min"
    if s < 48 * 3600:
        return f"{s / 3600:.1f} h"
    return f"{s / 86400:.1f} days"


def describe(what: str, seconds: float, units: int, unit: str, per_unit: float, device: Any,
             note: Optional[str] = None) -> str:
    """One line: '<what> will take about X on <device> (N <unit> x Y s, timed on one)'."""
    line = (f"{what} will take about {format_duration(seconds)} on {device} "
            f"({units:,d} {unit} x {per_unit:.3g} s, timed on one here)")
    return line + (f"; {note}" if note else "")
