"""The trainer's distributed side (torchrun): the process group, DDP or FSDP2 around the model,
agreement between ranks (any rank's flag, every rank's JSON) and the run directory's lock held by
rank 0. A mixin of :class:`diffusionlm.training.trainer.Trainer` (which provides `config`,
`device`, `module`, `lm`)."""
from __future__ import annotations

import contextlib
import json
import os
from typing import Any

import torch
from torch.distributed.fsdp import FSDPModule, fully_shard
from torch.nn.parallel import DistributedDataParallel

from .rundir import RunDirInUse, RunDirLock

__all__ = ["Distributed"]


def _world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


class Distributed:
    """Process group, wrapping and rank agreement of a Trainer (module docstring)."""

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
            if self.config.ema is not None:
                raise ValueError("train.ema with train.fsdp is not supported (the EMA copy would need sharding too)")

            if not isinstance(self.module, FSDPModule):  # a later stage: already sharded
                fully_shard(self.module)
            self.lm.model = self.module
        else:
            self.lm.model = DistributedDataParallel(self.module)

    def _bare(self) -> torch.nn.Module:
        return self.module

    def _any_rank(self, flag: bool) -> bool:
        """True when `flag` is true on any rank (an all-reduce under torchrun)."""
        if self.world == 1:
            return flag
        t = torch.tensor([1.0 if flag else 0.0], device=self.device)
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
        return bool(t.item() > 0)

    def _gather_json(self, obj: Any) -> list:
        """Every rank's JSON-able `obj`, on every rank (byte tensors over the process group)."""
        if self.world == 1:
            return [obj]
        data = torch.tensor(list(json.dumps(obj).encode()), dtype=torch.uint8, device=self.device)
        size = torch.tensor([data.numel()], device=self.device)
        sizes = [torch.zeros_like(size) for _ in range(self.world)]
        torch.distributed.all_gather(sizes, size)
        longest = int(max(int(s) for s in sizes))
        padded = torch.zeros(longest, dtype=torch.uint8, device=self.device)
        padded[: data.numel()] = data
        bufs = [torch.zeros_like(padded) for _ in range(self.world)]
        torch.distributed.all_gather(bufs, padded)
        return [json.loads(bytes(b[: int(n)].cpu().tolist())) for b, n in zip(bufs, sizes)]

    @contextlib.contextmanager
    def _writing(self):
        """Rank 0 holds the run directory's lock (the ranks agree whether it got it)."""
        lock, refused = None, None
        if self.config.out_dir and self.rank == 0:
            try:
                lock = RunDirLock(self.config.out_dir).acquire()
            except RunDirInUse as err:
                refused = err
        if self._any_rank(refused is not None):
            raise refused or RunDirInUse(f"run dir {self.config.out_dir} in use (refused on rank 0)")
        try:
            yield
        finally:
            if lock is not None:
                lock.release()
