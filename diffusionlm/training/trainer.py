"""Trainer: AdamW, warmup + schedule (transformers), clipping, accumulation, EMA, autocast,
periodic validation of the NLL bound, progress bar, JSONL metrics, atomic checkpoints and exact
resume, and a stop with a message on a non-finite loss.

    trainer = Trainer(lm, TrainConfig(steps=1000, out_dir="runs/x"), train_stream, val_batches)
    trainer.fit()          # resumes from runs/x/LATEST when it exists

`train_stream` yields [B, d] id tensors (or dicts with "input_ids" and optional
"response_mask") and has `state_dict()` / `load_state_dict()` (the data position), e.g.
`diffusionlm.data.BatchStream`. Exact resume: a checkpoint after step k holds the weights,
optimizer, LR scheduler, EMA, every RNG state (the corruption generator, torch, python, numpy)
and the data position, so training k steps, stopping and resuming gives the same weights and
losses as training straight through (CPU, deterministic kernels).

Distributed: launched by `torchrun` (or `accelerate launch`), the trainer joins the process
group (gloo on CPU, nccl on GPU), wraps the model in DistributedDataParallel (or FSDP with
`fsdp=True` on GPUs) and seeds each rank's corruption generator with seed + rank. Each rank
reads its own shard of the stream (the caller builds it with `rank` / `world_size`).
"""
from __future__ import annotations

import base64
import contextlib
import json
import math
import os
import random
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Iterable, Optional

import numpy as np
import torch
from torch import Tensor

from ..configcheck import Bool, Choice, Int, Num, Opt, Pair, Str, check_fields
from .checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint

#: the transformers schedules the trainer can step without a metric or extra arguments
LR_SCHEDULES = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup",
                "inverse_sqrt")

__all__ = ["TrainConfig", "Trainer", "NonFiniteLossError"]


class NonFiniteLossError(RuntimeError):
    """Training stopped on a non-finite loss (nothing was saved from the bad step)."""


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

    RULES = {
        "steps": Int(1), "batch_size": Int(1), "grad_accum": Int(1),
        "lr": Num(0, lo_open=True), "lr_schedule": Choice(*LR_SCHEDULES), "warmup_steps": Int(0),
        "weight_decay": Num(0), "betas": Pair(Num(0, 1, hi_open=True)),
        "clip": Opt(Num(0, lo_open=True), "no clipping"), "ema": Opt(Num(0, 1, lo_open=True, hi_open=True), "no EMA"),
        "precision": Choice("fp32", "bf16", "fp16"), "two_halves": Bool(),
        "eval_every": Int(0), "eval_batches": Int(1), "eval_samples": Int(1),
        "save_every": Int(0), "keep_checkpoints": Int(0), "out_dir": Opt(Str(), "no checkpoints or metrics"),
        "log_every": Int(1), "seed": Int(0, 2**31 - 1), "progress": Bool(), "fsdp": Bool(),
    }

    def __post_init__(self) -> None:
        check_fields(self, self.RULES, "train")
        self.betas = tuple(self.betas)

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]


def _gen_state(g: torch.Generator) -> str:
    return base64.b64encode(g.get_state().numpy().tobytes()).decode()


def _set_gen_state(g: torch.Generator, s: str) -> None:
    g.set_state(torch.frombuffer(bytearray(base64.b64decode(s)), dtype=torch.uint8))


def _world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


class Trainer:
    def __init__(
        self,
        lm: Any,
        config: TrainConfig,
        train_stream: Any,
        val_batches: Optional[Iterable[Tensor]] = None,
        device: "str | torch.device | None" = None,
    ):
        self.lm, self.config, self.stream = lm, config, train_stream
        self.val_batches = list(val_batches) if val_batches is not None else None
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self._init_distributed()
        model = lm.model
        if isinstance(model, torch.nn.parallel.DistributedDataParallel):
            model = model.module  # a later stage on the same lm: wrap the bare model, not the DDP
        self.module = model.to(self.device)
        if self.world > 1:
            self._wrap_distributed()
        params = [p for p in self.module.parameters() if p.requires_grad]
        if not params:
            raise ValueError("the model has no trainable parameters")
        decay = [p for p in params if p.dim() >= 2]
        no_decay = [p for p in params if p.dim() < 2]
        self.optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=config.lr, betas=config.betas,
        )
        from transformers import get_scheduler

        self.scheduler = get_scheduler(
            config.lr_schedule, self.optimizer, num_warmup_steps=config.warmup_steps, num_training_steps=config.steps
        )
        self.ema = None
        if config.ema is not None:
            from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

            self.ema = AveragedModel(self._bare(), multi_avg_fn=get_ema_multi_avg_fn(config.ema), use_buffers=True)
        self.generator = torch.Generator().manual_seed(config.seed + self.rank)
        torch.manual_seed(config.seed + self.rank)
        self.step = 0
        self.history: list[dict] = []
        self.last_checkpoint: Optional[Path] = None
        if config.precision == "fp16" and self.device.type != "cuda":
            raise ValueError("fp16 training needs a CUDA device; use bf16 or fp32 on CPU")
        self.scaler = torch.amp.GradScaler("cuda") if config.precision == "fp16" else None
        if config.out_dir and latest_checkpoint(config.out_dir) is not None:
            self.resume(latest_checkpoint(config.out_dir))

    # -- distributed --------------------------------------------------------------------
    def _init_distributed(self) -> None:
        if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.distributed.is_initialized():
            backend = "nccl" if self.device.type == "cuda" else "gloo"
            torch.distributed.init_process_group(backend)
            if self.device.type == "cuda":
                self.device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
                torch.cuda.set_device(self.device)
        self.rank, self.world = _world()

    def _wrap_distributed(self) -> None:
        if self.config.fsdp:
            if self.device.type != "cuda":
                raise ValueError("FSDP is for GPUs; on CPU use DDP (fsdp=False)")
            from torch.distributed.fsdp import fully_shard

            fully_shard(self.module)
            self.lm.model = self.module
        else:
            from torch.nn.parallel import DistributedDataParallel

            self.lm.model = DistributedDataParallel(self.module)

    def _bare(self) -> torch.nn.Module:
        return self.module

    # -- one step -----------------------------------------------------------------------
    def _next_batch(self) -> tuple[Tensor, Optional[Tensor]]:
        batch = next(self.stream)
        if isinstance(batch, dict):
            return batch["input_ids"].to(self.device), (
                batch["response_mask"].to(self.device) if batch.get("response_mask") is not None else None
            )
        return batch.to(self.device), None

    def _autocast(self):
        if self.config.precision == "fp32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.config.precision == "bf16" else torch.float16
        return torch.autocast(self.device.type, dtype=dtype)

    def train_step(self) -> dict:
        cfg = self.config
        self.module.train()
        if hasattr(self.lm, "training_step"):
            self.lm.training_step = self.step
        self.optimizer.zero_grad(set_to_none=True)
        total, tokens = 0.0, 0
        for micro in range(cfg.grad_accum):
            x0, resp = self._next_batch()
            sync = contextlib.nullcontext()
            if self.world > 1 and micro < cfg.grad_accum - 1 and hasattr(self.lm.model, "no_sync"):
                sync = self.lm.model.no_sync()
            with sync, self._autocast():
                out = self.lm.loss(x0, generator=self.generator, response_mask=resp, two_halves=cfg.two_halves)
            loss = out.loss / cfg.grad_accum
            if not torch.isfinite(loss):
                where = self.last_checkpoint or "none: no checkpoint was saved yet"
                raise NonFiniteLossError(
                    f"non-finite loss ({float(out.loss)}) at step {self.step + 1} (micro-batch {micro}); "
                    f"training stopped without applying it. Last good checkpoint: {where}"
                )
            if self.scaler is not None:
                self.scaler.scale(loss).backward()
            else:
                loss.backward()
            total += float(loss.detach())
            tokens += x0.numel()
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        grad_norm = None
        if cfg.clip:
            grad_norm = float(torch.nn.utils.clip_grad_norm_(self.module.parameters(), cfg.clip))
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.scheduler.step()
        if self.ema is not None:
            self.ema.update_parameters(self._bare())
        self.step += 1
        return {"step": self.step, "loss": total, "lr": self.scheduler.get_last_lr()[0], "grad_norm": grad_norm, "tokens": tokens * self.world}

    # -- loop ---------------------------------------------------------------------------
    def fit(self, steps: Optional[int] = None) -> list[dict]:
        """Train until `steps` (default: config.steps) optimizer steps have been taken."""
        cfg = self.config
        target = min(steps if steps is not None else cfg.steps, cfg.steps)
        bar = None
        if cfg.progress and self.rank == 0:
            from tqdm.auto import tqdm

            bar = tqdm(total=target, initial=self.step, desc="train", unit="step", dynamic_ncols=True)
        t0, tok = time.perf_counter(), 0
        try:
            while self.step < target:
                m = self.train_step()
                tok += m["tokens"]
                m["tokens_per_s"] = tok / max(time.perf_counter() - t0, 1e-9)
                if cfg.eval_every and self.step % cfg.eval_every == 0 and self.val_batches:
                    m.update(self.evaluate())
                self.history.append(m)
                if self.step % cfg.log_every == 0 or "val_nll" in m:
                    self._log(m)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{m['loss']:.4f}", **({"val_ppl": f"{m['val_ppl']:.2f}"} if "val_ppl" in m else {}))
                if cfg.save_every and cfg.out_dir and self.step % cfg.save_every == 0:
                    self.save()
        finally:
            if bar is not None:
                bar.close()
        if cfg.out_dir and (not cfg.save_every or self.step % cfg.save_every):
            self.save()
        return self.history

    @torch.no_grad()
    def evaluate(self) -> dict:
        """NLL bound per token on the validation batches (seeded: the same draws every time)."""
        if not self.val_batches or not self.lm.process.likelihood:
            return {}
        self.module.eval()
        g = torch.Generator().manual_seed(self.config.seed + 1_000_003)
        nll, n = 0.0, 0
        for x in self.val_batches[: self.config.eval_batches]:
            b = self.lm.nll_bound(x.to(self.device), num_samples=self.config.eval_samples, generator=g)
            nll += float(b.nll.sum())
            n += int(b.num_tokens.sum())
        self.module.train()
        return {"val_nll": nll / n, "val_ppl": math.exp(nll / n)}

    def _log(self, m: dict) -> None:
        if self.rank != 0 or not self.config.out_dir:
            return
        os.makedirs(self.config.out_dir, exist_ok=True)
        with open(Path(self.config.out_dir) / "metrics.jsonl", "a") as f:
            f.write(json.dumps(m) + "\n")

    # -- checkpoints --------------------------------------------------------------------
    def _rng_state(self) -> dict:
        return {
            "generator": _gen_state(self.generator),
            "torch": base64.b64encode(torch.get_rng_state().numpy().tobytes()).decode(),
            "python": random.getstate(),
            "numpy": np.random.get_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        }

    def save(self) -> Optional[Path]:
        """Write an atomic checkpoint of everything a resume needs (rank 0 writes)."""
        if not self.config.out_dir:
            raise ValueError("no out_dir configured: nowhere to save")
        if self.rank == 0:
            state = {
                "step": self.step,
                "data": self.stream.state_dict() if hasattr(self.stream, "state_dict") else None,
                "config": {k: v for k, v in asdict(self.config).items()},
                "metrics_tail": self.history[-5:],
            }
            opt = {"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(), "rng": self._rng_state()}
            if self.scaler is not None:
                opt["scaler"] = self.scaler.state_dict()
            self.last_checkpoint = save_checkpoint(
                self.config.out_dir, self.step, self._bare().state_dict(), opt, state,
                ema_state=self.ema.state_dict() if self.ema is not None else None, keep=self.config.keep_checkpoints,
            )
        if self.world > 1:
            torch.distributed.barrier()
        return self.last_checkpoint

    def resume(self, path: "str | Path") -> None:
        ck = load_checkpoint(path)
        missing, unexpected = self._bare().load_state_dict(ck["model"], strict=False)
        real_missing = [k for k in missing if k not in ck["model"]]
        if unexpected:
            raise ValueError(f"checkpoint {path} holds weights this model lacks: {unexpected[:5]}")
        tied = {k for k in real_missing if "lm_head" in k or "tok" in k or "emb" in k}
        if set(real_missing) - tied:
            raise ValueError(f"checkpoint {path} lacks weights: {sorted(set(real_missing) - tied)[:5]}")
        self.optimizer.load_state_dict(ck["optimizer"]["optimizer"])
        self.scheduler.load_state_dict(ck["optimizer"]["scheduler"])
        if self.scaler is not None and "scaler" in ck["optimizer"]:
            self.scaler.load_state_dict(ck["optimizer"]["scaler"])
        if self.ema is not None and "ema" in ck:
            self.ema.load_state_dict(ck["ema"])
        rng = ck["optimizer"]["rng"]
        _set_gen_state(self.generator, rng["generator"])
        torch.set_rng_state(torch.frombuffer(bytearray(base64.b64decode(rng["torch"])), dtype=torch.uint8))
        random.setstate(_tuple(rng["python"]))
        np.random.set_state(rng["numpy"])
        if rng.get("cuda") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
        st = ck["trainer_state"]
        self.step = st["step"]
        if st.get("data") is not None:
            self.stream.load_state_dict(st["data"])
        self.last_checkpoint = Path(path)
        # drop metric lines written after this checkpoint by the interrupted run
        log = Path(self.config.out_dir or "") / "metrics.jsonl"
        if self.config.out_dir and log.exists():
            keep = [l for l in log.read_text().splitlines() if l and json.loads(l).get("step", 0) <= self.step]
            log.write_text("".join(l + "\n" for l in keep))


def _tuple(x):
    return tuple(_tuple(v) for v in x) if isinstance(x, list) else x
