"""The train section of a run configuration: the trainer's settings, each checked by a rule
(diffusionlm.config.check); `Trainer(lm, TrainConfig(...))` runs them."""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Optional

from ..schedules.curriculum import Curriculum
from .check import Bool, Choice, Int, List, Num, Opt, Pair, Str, check_fields

__all__ = ["TrainConfig", "LR_SCHEDULES"]

#: the transformers schedules the trainer can step without a metric or extra arguments
LR_SCHEDULES = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup",
                "inverse_sqrt")


@dataclass
class TrainConfig:
    steps: int = 1000
    batch_size: int = 8
    grad_accum: int = 1
    lr: float = 3e-4
    lr_schedule: str = "cosine"  # one of LR_SCHEDULES (transformers.get_scheduler)
    warmup_steps: int = 0
    weight_decay: float = 0.0
    betas: tuple = (0.9, 0.999)
    clip: Optional[float] = 1.0  # max gradient norm; None: no clipping
    ema: Optional[float] = None  # EMA decay, e.g. 0.9999
    precision: str = "fp32"  # fp32 | bf16 | fp16 (fp16: CUDA only)
    two_halves: bool = False
    eval_every: int = 0  # 0: never
    eval_batches: int = 4
    eval_samples: int = 8
    save_every: int = 0  # 0: only at the end
    keep_checkpoints: int = 2  # 0: keep all
    out_dir: Optional[str] = None
    log_every: int = 1
    seed: int = 0
    progress: bool = True
    fsdp: bool = False
    #: hyperschedule by step, [{"step": s, "schedule": {...}}, ...] (schedules.curriculum); None: the lm's own
    curriculum: Optional[list] = None
    #: weight lambda of the AR anchor (training.anchor: KL to the LoRA base at the AR-order rows); 0: none
    ar_anchor: float = 0.0

    RULES = {
        "steps": Int(1), "batch_size": Int(1), "grad_accum": Int(1),
        "lr": Num(0, lo_open=True), "lr_schedule": Choice(*LR_SCHEDULES), "warmup_steps": Int(0),
        "weight_decay": Num(0), "betas": Pair(Num(0, 1, hi_open=True)),
        "clip": Opt(Num(0, lo_open=True), "no clipping"), "ema": Opt(Num(0, 1, lo_open=True, hi_open=True), "no EMA"),
        "precision": Choice("fp32", "bf16", "fp16"), "two_halves": Bool(),
        "eval_every": Int(0), "eval_batches": Int(1), "eval_samples": Int(1),
        "save_every": Int(0), "keep_checkpoints": Int(0), "out_dir": Opt(Str(), "no checkpoints or metrics"),
        "log_every": Int(1), "seed": Int(0, 2**31 - 1), "progress": Bool(), "fsdp": Bool(),
        "curriculum": Opt(List(), "the composition's own schedule at every step"),
        "ar_anchor": Num(0),
    }

    def __post_init__(self) -> None:
        check_fields(self, self.RULES, "train")
        self.betas = tuple(self.betas)
        if self.curriculum is not None:
            self.curriculum = Curriculum.from_spec(self.curriculum).to_spec()

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]
