"""A training curriculum: which hyperschedule trains each optimizer step (the trainer asks it at
every step; it lives with the schedules so that the run configuration can check it).

    Curriculum([(0, Block(2, 2)), (300, Block(4, 4))])   # steps 1..300 under Block(2, 2), then Block(4, 4)
    TrainConfig(..., curriculum=[{"step": 0, "schedule": {"name": "block", "width": 2, "steps_per_block": 2}},
                                 {"step": 300, "schedule": {"name": "block", "width": 4, "steps_per_block": 4}}])

Entry (s, H) trains every optimizer step taken after s earlier ones (the trainer's step counter k,
before the step: k >= s) until the next entry's start. The schedule is a pure function of k, so a
run resumed from the checkpoint after step k trains step k + 1 under the same schedule as a run
that went straight through: resume stays exact across a change of schedule. One optimizer, one LR
schedule and one run directory serve the whole curriculum (the run config's `stages`, by
contrast, start a fresh Trainer each). This is the route from AR (Absorb + Quench) to block
diffusion: widen the block as training goes (Quench -> Block(2, 2) -> Block(4, 4) -> ...).
"""
from __future__ import annotations

from bisect import bisect_right
from typing import Any, Sequence

from .hyper import Hyperschedule, hyperschedule

__all__ = ["Curriculum"]


class Curriculum:
    """(start step, hyperschedule) entries; the first starts at step 0, starts strictly increase."""

    def __init__(self, entries: Sequence[tuple[int, Hyperschedule]]):
        entries = list(entries)
        if not entries:
            raise ValueError("a curriculum needs at least one (step, schedule) entry")
        starts = [s for s, _ in entries]
        for s in starts:
            if not isinstance(s, int) or isinstance(s, bool) or s < 0:
                raise ValueError(f"curriculum step {s!r}: must be an integer >= 0")
        if starts[0] != 0:
            raise ValueError(f"the curriculum's first entry must start at step 0, got {starts[0]}")
        if any(b <= a for a, b in zip(starts, starts[1:])):
            raise ValueError(f"curriculum steps must strictly increase, got {starts}")
        for _, h in entries:
            if not isinstance(h, Hyperschedule):
                raise TypeError(f"curriculum schedule must be a Hyperschedule, got {type(h).__name__}")
        self.starts = starts
        self.schedules = [h for _, h in entries]

    @classmethod
    def from_spec(cls, spec: Sequence[Any]) -> "Curriculum":
        """From `[{"step": s, "schedule": <hyperschedule dict or name>}, ...]` (a run config's
        `train.curriculum`)."""
        if not isinstance(spec, (list, tuple)):
            raise ValueError(f"train.curriculum must be a list of {{\"step\", \"schedule\"}} objects, got {type(spec).__name__}")
        entries = []
        for i, e in enumerate(spec):
            if not isinstance(e, dict) or set(e) != {"step", "schedule"}:
                got = sorted(e) if isinstance(e, dict) else type(e).__name__
                raise ValueError(f"train.curriculum[{i}] must have exactly the keys step and schedule, got {got}")
            try:
                entries.append((e["step"], hyperschedule(e["schedule"])))
            except (TypeError, ValueError) as err:
                raise ValueError(f"train.curriculum[{i}].schedule: {err}") from err
        return cls(entries)

    def to_spec(self) -> list:
        return [{"step": s, "schedule": h.to_dict()} for s, h in zip(self.starts, self.schedules)]

    def at(self, step: int) -> Hyperschedule:
        """The schedule that trains the optimizer step taken after `step` earlier ones."""
        if step < 0:
            raise ValueError(f"step must be >= 0, got {step}")
        return self.schedules[bisect_right(self.starts, step) - 1]

    def __repr__(self) -> str:
        return "Curriculum(" + ", ".join(f"{s}: {h!r}" for s, h in zip(self.starts, self.schedules)) + ")"
