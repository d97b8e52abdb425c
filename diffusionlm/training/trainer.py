"""Trainer: AdamW, warmup + schedule (transformers), clipping, accumulation, EMA, autocast,
periodic validation of the NLL bound, progress bar, JSONL metrics, atomic checkpoints and exact
resume, a writer lock on the run directory, and a one-line stop on anything non-finite.

    trainer = Trainer(lm, TrainConfig(steps=1000, out_dir="runs/x"), train_stream, val_batches)
    trainer.fit()          # resumes from runs/x/LATEST when it exists

`train_stream` yields [B, d] id tensors (or dicts with "input_ids" and optional
"response_mask") and has `state_dict()` / `load_state_dict()` (the data position), e.g.
`diffusionlm.data.BatchStream`. Exact resume: a checkpoint after step k holds the weights,
optimizer, LR scheduler, EMA, every rank's RNG states (the corruption generator, torch, python,
numpy, CUDA) and the data position, so training k steps, stopping and resuming gives the same
weights and losses as training straight through (CPU, deterministic kernels). A model with frozen
parameters (LoRA, a frozen HF base) checkpoints only its trainable ones, with a checksum of the
frozen base that a resume compares (see `diffusionlm.training.checkpoint`).

Seeding: `seed_everything(seed)` (python, numpy, torch) before anything random, so a model built
after it is the same every run (`diffusionlm train` seeds before it builds the model); the
Trainer seeds again with seed + rank, and its corruption generator with seed + rank.

Non-finite values: a NaN / infinite loss stops before its backward pass, a non-finite gradient
norm before the optimizer step, non-finite weights after it; each raises NonFiniteError with one
line naming the step and the last checkpoint, which is kept: nothing non-finite is ever saved.

Distributed: launched by `torchrun` (see docs/TRAINING.md), the trainer joins the process group
(gloo on CPU, nccl on GPU), wraps the model in DistributedDataParallel, or shards it with FSDP2
(`fully_shard`, `fsdp=True`; CPU with gloo works too), and seeds each rank with seed + rank. Each
rank reads its own shard of the stream (the caller builds it with `rank` / `world_size`).
Checkpoints gather a full state dict (`torch.distributed.checkpoint.state_dict`, the same code
path for one process, DDP and FSDP); rank 0 writes it; every rank reads it back on resume (one
machine or a shared filesystem), and the run must resume with the same number of ranks.
Decisions the ranks take (stop on a non-finite value, a refused lock) are agreed by all-reduce so
that no rank is left waiting in a collective.
"""
from __future__ import annotations

import base64
import contextlib
import math
import random
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Iterable, Optional

import numpy as np
import torch
import transformers
from torch import Tensor
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_state_dict,
)
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from tqdm.auto import tqdm

from ..config.train import LR_SCHEDULES, TrainConfig
from ..io.safeio import first_non_finite
from ..schedules.curriculum import Curriculum
from .anchor import ar_anchor, check_ar_anchor
from .checkpoint import (
    NonFiniteError,
    check_frozen,
    check_weights,
    drop_frozen_aliases,
    frozen_digest,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
    trainable_only,
)
from .distributed import Distributed
from .rundir import MetricsLog, RunDirInUse

__all__ = ["TrainConfig", "Trainer", "NonFiniteError", "NonFiniteLossError", "RunDirInUse", "seed_everything",
           "LR_SCHEDULES"]

#: earlier name, kept for callers: the error covers the loss, the gradients and the weights
NonFiniteLossError = NonFiniteError


def seed_everything(seed: int) -> None:
    """Seed python's, numpy's and torch's global generators (CUDA included)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


#: a step's loss over SPIKE_FACTOR x the median of the last SPIKE_WINDOW losses is warned about
#: (after SPIKE_MIN_STEPS steps)
SPIKE_FACTOR, SPIKE_WINDOW, SPIKE_MIN_STEPS = 10.0, 50, 10


def loss_spike(recent: list, loss: float, step: int, warn: bool = True) -> bool:
    """Whether `loss` is over SPIKE_FACTOR times the median of `recent` (the last SPIKE_WINDOW
    steps' losses, once SPIKE_MIN_STEPS are known; `loss` is appended to it); warns in one line
    on stderr when it is and `warn` (rank 0). A spike is not an error (training goes on), but
    nobody should miss it. A function of the window, so the Trainer class stays small."""
    spike = len(recent) >= SPIKE_MIN_STEPS and loss > SPIKE_FACTOR * max(float(np.median(recent)), 1e-12)
    if spike and warn:
        print(f"diffusionlm train: warning: step {step}: loss {loss:.4g} is {loss / float(np.median(recent)):.0f}x "
              f"the median of the last {len(recent)} steps ({float(np.median(recent)):.4g}): a loss spike",
              file=sys.stderr, flush=True)
    recent.append(loss)
    del recent[:-SPIKE_WINDOW]
    return spike


def _b64(t: Tensor) -> str:
    return base64.b64encode(t.cpu().numpy().tobytes()).decode()


def _unb64(s: str) -> Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(s)), dtype=torch.uint8)


def _local(t: Tensor) -> Tensor:
    return t.to_local() if hasattr(t, "to_local") else t


def _full(t: Tensor) -> Tensor:
    return t.full_tensor() if hasattr(t, "full_tensor") else t


class Trainer(Distributed):
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
        if config.precision == "fp16" and self.device.type != "cuda":
            raise ValueError("fp16 training needs a CUDA device; use bf16 or fp32 on CPU")
        check_ar_anchor(lm, config.ar_anchor, config.two_halves)
        self._init_distributed()
        model = lm.model
        if isinstance(model, torch.nn.parallel.DistributedDataParallel):
            model = model.module  # a later stage on the same lm: wrap the bare model, not the DDP
        self.module = model.to(self.device)
        #: the module holds shards (FSDP): its own state_dict is DTensors; model_state_dict() gathers
        self.sharded = self.world > 1 and config.fsdp
        if self.world > 1:
            self._wrap_distributed()
        params = [p for p in self.module.parameters() if p.requires_grad]
        if not params:
            raise ValueError("the model has no trainable parameters")
        #: only the trainable parameters are checkpointed when some are frozen (LoRA, a frozen base)
        self.partial = any(not p.requires_grad for p in self.module.parameters())
        self._trainable = params
        decay = [p for p in params if p.dim() >= 2]
        no_decay = [p for p in params if p.dim() < 2]
        self.optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=config.lr, betas=config.betas,
        )
        get_scheduler = transformers.get_scheduler  # transformers loads these on first use

        self.scheduler = get_scheduler(
            config.lr_schedule, self.optimizer, num_warmup_steps=config.warmup_steps, num_training_steps=config.steps
        )
        self.ema = None
        if config.ema is not None:
            self.ema = AveragedModel(self._bare(), multi_avg_fn=get_ema_multi_avg_fn(config.ema), use_buffers=True)
        self.generator = torch.Generator().manual_seed(config.seed + self.rank)
        seed_everything(config.seed + self.rank)
        self.step = 0
        self.history: list[dict] = []
        self.last_checkpoint: Optional[Path] = None
        self._frozen_sha256: Optional[str] = None
        self.curriculum = Curriculum.from_spec(config.curriculum) if config.curriculum is not None else None
        self._recent_losses: list[float] = []  # for the loss-spike warning (loss_spike)
        self.scaler = torch.amp.GradScaler("cuda") if config.precision == "fp16" else None
        self.metrics = MetricsLog(config.out_dir) if config.out_dir and self.rank == 0 else None
        if config.out_dir:
            ckpt = latest_checkpoint(config.out_dir)
            if ckpt is not None:
                self.resume(ckpt)

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

    def _stop(self, what: str) -> NonFiniteError:
        where = self.last_checkpoint or "none (no checkpoint was saved yet)"
        return NonFiniteError(f"{what}; training stopped. Last good checkpoint: {where}")

    def _non_finite_weight(self, include_ema: bool = False) -> Optional[str]:
        """The name of a trained weight holding a NaN / infinity on any rank (None: all finite)."""
        trainable = {n for n, p in self.module.named_parameters() if p.requires_grad}
        named = {n: _local(p) for n, p in self.module.named_parameters() if n in trainable}
        if include_ema and self.ema is not None:
            named.update({"ema." + n: _local(p) for n, p in self.ema.module.named_parameters() if n in trainable})
        bad = first_non_finite(named)
        return bad if not self._any_rank(bad is not None) else (bad or "a weight on another rank")

    def train_step(self) -> dict:
        cfg = self.config
        self.module.train()
        if hasattr(self.lm, "training_step"):
            self.lm.training_step = self.step
        if self.curriculum is not None:
            self.lm.schedule = self.curriculum.at(self.step)
        self.optimizer.zero_grad(set_to_none=True)
        total, anchored, tokens = 0.0, 0.0, 0
        for micro in range(cfg.grad_accum):
            x0, resp = self._next_batch()
            sync = contextlib.nullcontext()
            if self.world > 1 and micro < cfg.grad_accum - 1 and hasattr(self.lm.model, "no_sync"):
                sync = self.lm.model.no_sync()
            with sync, self._autocast():
                out = self.lm.loss(x0, generator=self.generator, response_mask=resp, two_halves=cfg.two_halves)
                anchor = ar_anchor(self.lm, x0, out, cfg.ar_anchor, resp) if cfg.ar_anchor else None
            objective = out.loss if anchor is None else out.loss + anchor
            loss = objective / cfg.grad_accum
            if self._any_rank(not bool(torch.isfinite(loss))):
                raise self._stop(f"non-finite loss ({float(objective.detach())}) at step {self.step + 1} (micro-batch {micro}), "
                                 f"not applied")
            if self.scaler is not None:
                self.scaler.scale(loss).backward()
            else:
                loss.backward()
            # "loss" stays the process's own (the bound's) loss, comparable across runs; the anchor is logged beside it
            total += float(out.loss.detach()) / cfg.grad_accum
            if anchor is not None:
                anchored += float(anchor.detach()) / cfg.grad_accum
            tokens += x0.numel()
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        grad_norm = None
        if cfg.clip is not None:
            grad_norm = float(_full(torch.nn.utils.clip_grad_norm_(self._trainable, cfg.clip)))
            if self.scaler is None and not math.isfinite(grad_norm):  # (fp16: the scaler skips the step)
                raise self._stop(f"non-finite gradient norm ({grad_norm}) at step {self.step + 1}, not applied")
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        bad = self._non_finite_weight()
        if bad is not None:
            raise self._stop(f"non-finite weights ({bad}) after step {self.step + 1}, not saved")
        self.scheduler.step()
        if self.ema is not None:
            self.ema.update_parameters(self._bare())
        self.step += 1
        extra = {"schedule": repr(self.lm.schedule)} if self.curriculum is not None else {}
        if cfg.ar_anchor:
            extra["ar_anchor"] = anchored
        out = {**extra, "step": self.step, "loss": total, "lr": self.scheduler.get_last_lr()[0], "grad_norm": grad_norm, "tokens": tokens * self.world}
        if loss_spike(self._recent_losses, total, self.step, warn=self.rank == 0):
            out["loss_spike"] = True
        return out

    # -- loop ---------------------------------------------------------------------------
    def fit(self, steps: Optional[int] = None) -> list[dict]:
        """Train until `steps` (default: config.steps) optimizer steps have been taken."""
        cfg = self.config
        target = min(steps if steps is not None else cfg.steps, cfg.steps)
        with self._writing():
            if self.metrics is not None:
                # lines an interrupted run wrote after its last checkpoint (or before its first)
                self.metrics.keep_until(self.step)
            bar = None
            if cfg.progress and self.rank == 0:
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
                    if self.metrics is not None and (self.step % cfg.log_every == 0 or "val_nll" in m):
                        self.metrics.append(m)
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

    # -- checkpoints --------------------------------------------------------------------
    def _rng_state(self) -> dict:
        """This rank's RNG states, as JSON."""
        kind, keys, pos, has_gauss, gauss = np.random.get_state()
        return {
            "generator": _b64(self.generator.get_state()),
            "torch": _b64(torch.get_rng_state()),
            "python": random.getstate(),
            "numpy": [kind, keys.tolist(), pos, has_gauss, gauss],
            "cuda": [_b64(s) for s in torch.cuda.get_rng_state_all()] if torch.cuda.is_available() else None,
        }

    def _set_rng_state(self, rng: dict) -> None:
        self.generator.set_state(_unb64(rng["generator"]))
        torch.set_rng_state(_unb64(rng["torch"]))
        random.setstate(_tuple(rng["python"]))
        kind, keys, pos, has_gauss, gauss = rng["numpy"]
        np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))
        if rng.get("cuda") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all([_unb64(s) for s in rng["cuda"]])

    def _state_options(self, **kw):
        return StateDictOptions(full_state_dict=True, ignore_frozen_params=self.partial, **kw)

    def model_state_dict(self) -> dict:
        """The full (gathered) weights on every rank: what `save_pretrained` writes. Collective
        under FSDP: every rank calls it."""
        return get_model_state_dict(self.module, options=StateDictOptions(full_state_dict=True))

    def _ema_state(self) -> Optional[dict]:
        if self.ema is None:
            return None
        sd = self.ema.state_dict()
        if self.partial:  # the EMA of the trained weights; its frozen copy equals the base
            keep = {"module." + n for n, p in self._bare().named_parameters() if p.requires_grad}
            sd = {k: v for k, v in sd.items() if k in keep or not k.startswith("module.")}
        return sd

    def save(self) -> Optional[Path]:
        """Write an atomic checkpoint of everything a resume needs. Every rank calls it (FSDP
        gathers the shards, RNG states are gathered); rank 0 writes."""
        if not self.config.out_dir:
            raise ValueError("no out_dir configured: nowhere to save")

        bad = self._non_finite_weight(include_ema=True)
        if bad is not None:
            raise self._stop(f"non-finite weights ({bad}) at step {self.step}, not saved")
        model_sd, optim_sd = get_state_dict(self.module, self.optimizer, options=self._state_options(cpu_offload=True))
        if self.partial:  # a tied frozen parameter's second name slips through ignore_frozen_params
            model_sd = trainable_only(self._bare(), model_sd)
        rng = self._gather_json(self._rng_state())
        if self.partial and self._frozen_sha256 is None:
            self._frozen_sha256 = frozen_digest(self._bare())
        with self._writing():  # re-entrant: already held inside fit()
            if self.rank == 0:
                state = {
                    "step": self.step,
                    "data": self.stream.state_dict() if hasattr(self.stream, "state_dict") else None,
                    "config": asdict(self.config),
                    "weights": "trainable" if self.partial else "full",
                    "frozen_sha256": self._frozen_sha256,
                    "world": self.world,
                    "metrics_tail": self.history[-5:],
                }
                tree = {"optimizer": optim_sd, "scheduler": self.scheduler.state_dict(), "rng": rng}
                if self.scaler is not None:
                    tree["scaler"] = self.scaler.state_dict()
                self.last_checkpoint = save_checkpoint(
                    self.config.out_dir, self.step, model_sd, tree, state,
                    ema_state=self._ema_state(), keep=self.config.keep_checkpoints,
                )
        if self.world > 1:
            torch.distributed.barrier()
        return self.last_checkpoint

    def resume(self, path: "str | Path") -> None:
        """Restore everything `save` wrote (every rank reads the checkpoint itself)."""
        ck = load_checkpoint(path)
        st = ck["trainer_state"]
        if st.get("world", 1) != self.world:
            raise ValueError(
                f"checkpoint {path} was written by {st.get('world', 1)} processes; resume it with the same number "
                f"(got {self.world}): each rank's random streams and data shard are part of the exact resume"
            )
        partial = st.get("weights") == "trainable"
        if partial:
            ck["model"] = drop_frozen_aliases(self._bare(), ck["model"])
        check_weights(self._bare(), ck["model"], path, partial)
        if partial:
            check_frozen(self._bare(), st, path)
            self._frozen_sha256 = st["frozen_sha256"]
        tree = ck["optimizer"]
        weights = {k: v.to(self.device) for k, v in ck["model"].items()}
        set_state_dict(self.module, self.optimizer, model_state_dict=weights, optim_state_dict=tree["optimizer"],
                       options=self._state_options(strict=False))
        self.scheduler.load_state_dict(tree["scheduler"])
        if self.scaler is not None and "scaler" in tree:
            self.scaler.load_state_dict(tree["scaler"])
        if self.ema is not None and "ema" in ck:
            self.ema.load_state_dict(ck["ema"], strict=not partial)
        self._set_rng_state(tree["rng"][self.rank])
        self.step = st["step"]
        if st.get("data") is not None:
            self.stream.load_state_dict(st["data"])
        self.last_checkpoint = Path(path)


def _tuple(x):
    return tuple(_tuple(v) for v in x) if isinstance(x, list) else x
