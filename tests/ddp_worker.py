"""Helper for tests/test_distributed.py: train a tiny model through the real config / Trainer path
and save the final weights (rank 0) and every rank's losses.

    torchrun --nproc_per_node 2 --master_port P tests/ddp_worker.py --out DIR --batch 4 --steps 4
    python tests/ddp_worker.py --out DIR --batch 8 --steps 4          # one process, doubled batch
    torchrun ... tests/ddp_worker.py --resumable --out DIR --batch 4 --steps 4 [--fsdp] [--die-at 3]

`--resumable` (see `run_resumable`): one stage under Flat, whose corruption draws are random and
differ per rank, checkpointing every 2 steps; with `--die-at k` every rank SIGKILLs itself when
step k + 1 asks for its batch (step k trained and logged, its checkpoint perhaps not written);
run again without it, the job resumes from LATEST and must end exactly as an uninterrupted run.

Under torchrun the Trainer joins the process group itself (WORLD_SIZE > 1: gloo on CPU) and wraps
the model in DistributedDataParallel; `build(run, rank, world_size)` gives each rank its shard of
the BatchStream (global batch k = rows perm[k*B*W : (k+1)*B*W], rank r takes rows r*B .. r*B+B-1
of it), so W ranks at batch B read exactly the rows one process reads at batch B*W.

Two stages on the same DiffusionLM, as `diffusionlm train` runs a recipe's `stages` (a new Trainer
per stage: the second must wrap the bare model again, not the first stage's DDP wrapper).

The objective is deterministic: Absorb + Quench + two_halves=True (every position is its own
segment, drawn at its only step: level 1 -> fully masked, weight 1), then Absorb + Block(4) +
two_halves=True (one step per block: each noisy block fully masked, weight 1), so no random draw
depends on how the batch is split across ranks. Each rank's loss is a mean over its own B rows (sum / (B d));
DDP averages the gradients over ranks, which is the gradient of the mean over all B*W rows: the
single process on the doubled batch computes the same gradient, so (Adam being elementwise) the
weights agree up to floating-point summation order.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path

import torch


def write_corpus(path: Path) -> Path:
    """A deterministic text file: ~6000 bytes -> 300+ train blocks of 16 byte tokens."""
    g = torch.Generator().manual_seed(1234)
    words = ["alpha", "beta", "gamma", "delta", "noise", "level", "mask", "token", "step", "block"]
    idx = torch.randint(0, len(words), (1600,), generator=g).tolist()
    path.write_text(" ".join(words[i] for i in idx) + "\n")
    return path


def overrides(corpus: Path, batch: int, steps: int) -> list[str]:
    return [
        "model.preset=tiny",
        'model.overrides={"n_layers": 2, "hidden": 32, "n_heads": 2, "cond_dim": 16, "dropout": 0.0}',
        'process={"name": "absorb"}',
        'schedule={"name": "quench"}',
        'stages=[{"schedule": {"name": "quench"}, "steps": %d}, {"schedule": {"name": "block", "width": 4}, "steps": %d, "lr": 1e-3}]'
        % (steps, steps),
        "layout=aligned",
        "data.tokenizer=byte",
        f"data.corpus={corpus}",
        "data.length=16",
        "data.val_batches=0",
        f"train.batch_size={batch}",
        f"train.steps={steps}",
        "train.lr=3e-3",
        "train.warmup_steps=1",
        "train.weight_decay=0.01",
        "train.clip=0.5",
        "train.two_halves=true",
        "train.progress=false",
        "train.seed=5",
    ]


def run(out: Path, batch: int, steps: int) -> dict:
    """Train on this process's shard (RANK / WORLD_SIZE from the environment); rank 0 writes
    init.pt, weights.pt and each stage's checkpoint (stage-<i>/); every rank writes
    losses-<rank>.json (its losses and the rows it read)."""
    from diffusionlm.config import RunConfig
    from diffusionlm.io.runs import build
    from diffusionlm.schedules import hyperschedule
    from diffusionlm.training import TrainConfig, Trainer

    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    out.mkdir(parents=True, exist_ok=True)
    corpus = write_corpus(out / f"corpus-{rank}.txt")
    cfg = RunConfig.from_file(None, overrides(corpus, batch, steps))
    torch.manual_seed(0)  # the same initial weights in every process (DDP also broadcasts rank 0's)
    built = build(cfg, rank=rank, world_size=world)

    rows: list[list[int]] = []
    stream = built.train_stream

    class Recording:
        """The rank's BatchStream, remembering which rows each step read."""

        def __next__(self):
            b = next(stream)
            rows.append(b["index"].tolist())
            return b["input_ids"]

        def state_dict(self):
            return stream.state_dict()

        def load_state_dict(self, s):
            stream.load_state_dict(s)

    init = {k: v.detach().clone() for k, v in built.lm.model.state_dict().items()}
    losses = []
    for i, stage in enumerate(cfg.stages):  # as diffusionlm.cli.cmd_train runs them
        stage = dict(stage)
        built.lm.schedule = hyperschedule(stage.pop("schedule"))
        stage["out_dir"] = str(out / f"stage-{i + 1}")  # checkpoints: rank 0 writes, all ranks meet at a barrier
        trainer = Trainer(built.lm, TrainConfig(**{**dataclasses.asdict(cfg.train), **stage}), Recording())
        assert trainer.world == world, (trainer.world, world)
        if world > 1:
            assert type(built.lm.model).__name__ == "DistributedDataParallel", type(built.lm.model)
            assert type(trainer.module).__name__ != "DistributedDataParallel", "a DDP wrapped in DDP"
        losses += [m["loss"] for m in trainer.fit()]
    record = {"rank": rank, "world": world, "loss": losses, "rows": rows}
    (out / f"losses-{rank}.json").write_text(json.dumps(record))
    if rank == 0:
        torch.save({k: v.detach().clone() for k, v in trainer.module.state_dict().items()}, out / "weights.pt")
        torch.save(init, out / "init.pt")
    if world > 1:
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    return record


def run_resumable(out: Path, batch: int, steps: int, fsdp: bool, die_at: int = 0) -> dict:
    """Absorb + Flat (random levels, drawn by each rank's own generator), DDP (with EMA) or FSDP2,
    a checkpoint every 2 steps. Writes losses-<rank>.json (this launch's steps and losses) and,
    at the end, rank 0 writes weights.safetensors (the gathered full weights)."""
    import signal

    from diffusionlm.config import RunConfig
    from diffusionlm.io.runs import build
    from diffusionlm.io.safeio import save_safetensors
    from diffusionlm.training import Trainer, seed_everything

    rank, world = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    out.mkdir(parents=True, exist_ok=True)
    corpus = write_corpus(out / f"corpus-{rank}.txt")
    over = [o for o in overrides(corpus, batch, steps) if not o.startswith(("stages=", "schedule=", "train.two_halves"))]
    over += ['schedule={"name": "flat"}', "train.save_every=2", f"train.out_dir={out / 'run'}",
             f"train.fsdp={'true' if fsdp else 'false'}", f"train.ema={'null' if fsdp else '0.9'}"]
    cfg = RunConfig.from_file(None, over)
    seed_everything(cfg.train.seed)  # as `diffusionlm train`: the same initial weights on every rank
    built = build(cfg, rank=rank, world_size=world)
    stream = built.train_stream
    asked = []

    class Stream:
        def __next__(self):
            asked.append(1)
            if die_at and len(asked) == die_at + 1:  # (after a resume: counts this launch's steps)
                os.kill(os.getpid(), signal.SIGKILL)
            return next(stream)["input_ids"]

        def state_dict(self):
            return stream.state_dict()

        def load_state_dict(self, s):
            stream.load_state_dict(s)

    trainer = Trainer(built.lm, cfg.train, Stream())
    start = trainer.step
    if world > 1:
        kind = "FSDPModule" if fsdp else "DistributedDataParallel"
        assert any(c.__name__ == kind for c in type(built.lm.model).__mro__), type(built.lm.model)
    hist = trainer.fit()
    record = {"rank": rank, "world": world, "start": start, "steps": [m["step"] for m in hist],
              "loss": [m["loss"] for m in hist]}
    (out / f"losses-{rank}.json").write_text(json.dumps(record))
    weights = trainer.model_state_dict()  # every rank: FSDP gathers
    if rank == 0:
        save_safetensors(out / "weights.safetensors", weights)
    if world > 1:
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    return record


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--batch", type=int, required=True, help="per-process batch size")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--resumable", action="store_true", help="the checkpoint / kill / resume job")
    ap.add_argument("--fsdp", action="store_true")
    ap.add_argument("--die-at", type=int, default=0)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    if args.resumable:
        run_resumable(Path(args.out), args.batch, args.steps, args.fsdp, args.die_at)
    else:
        run(Path(args.out), args.batch, args.steps)
    return 0


if __name__ == "__main__":
    sys.exit(main())
