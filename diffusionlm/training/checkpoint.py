"""Atomic checkpoints: a crash while saving never corrupts the last good one.

Layout under `out_dir`:

    checkpoint-000120/        one complete checkpoint (weights, optimizer, schedulers, EMA,
        model.safetensors     RNG states, data position, metrics so far)
        ema.safetensors
        optimizer.pt
        trainer_state.json
    LATEST                    the name of the newest complete checkpoint

Protocol: everything is written into `checkpoint-000120.tmp-<pid>/`, each file flushed and
fsynced, the directory renamed to its final name, and only then `LATEST` replaced (write a
temporary file, fsync, os.replace: atomic on POSIX). A crash at any point leaves `LATEST`
pointing at a complete checkpoint; stray `*.tmp-*` directories are ignored and cleaned up.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Optional

import torch
from safetensors.torch import load_file, save_file

__all__ = ["save_checkpoint", "load_checkpoint", "latest_checkpoint"]

LATEST = "LATEST"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write(path: Path, write) -> None:
    with open(path, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())


def _state_dict_for_safetensors(sd: dict) -> dict:
    # safetensors refuses shared storage (tied embeddings): store contiguous clones
    return {k: v.detach().contiguous().clone() for k, v in sd.items()}


def save_checkpoint(
    out_dir: "str | Path",
    step: int,
    model_state: dict,
    optimizer_state: dict,
    trainer_state: dict,
    ema_state: Optional[dict] = None,
    keep: int = 2,
    _crash_after: Optional[str] = None,
) -> Path:
    """Write checkpoint-{step} atomically and point LATEST at it; keep the newest `keep`.

    `_crash_after` (tests only) raises after writing the named file, to simulate a kill.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    name = f"checkpoint-{step:06d}"
    tmp = out / f"{name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    files = [
        ("model.safetensors", lambda f: f.write(_safetensors_bytes(model_state))),
        ("optimizer.pt", lambda f: torch.save(optimizer_state, f)),
        ("trainer_state.json", lambda f: f.write(json.dumps(trainer_state, indent=1).encode())),
    ]
    if ema_state is not None:
        files.insert(1, ("ema.safetensors", lambda f: f.write(_safetensors_bytes(ema_state))))
    for fname, write in files:
        _write(tmp / fname, write)
        if _crash_after == fname:
            raise KeyboardInterrupt(f"simulated kill after writing {fname}")
    _fsync_dir(tmp)
    final = out / name
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    _fsync_dir(out)
    pointer = out / f"{LATEST}.tmp-{os.getpid()}"
    _write(pointer, lambda f: f.write(name.encode()))
    os.replace(pointer, out / LATEST)
    _fsync_dir(out)
    # retention, and leftovers of interrupted saves
    done = sorted(p for p in out.glob("checkpoint-*") if p.is_dir() and ".tmp-" not in p.name)
    for old in done[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    for stray in out.glob("*.tmp-*"):
        if stray.is_dir():
            shutil.rmtree(stray, ignore_errors=True)
    return final


def _safetensors_bytes(sd: dict) -> bytes:
    from safetensors.torch import save

    return save(_state_dict_for_safetensors(sd))


def latest_checkpoint(out_dir: "str | Path") -> Optional[Path]:
    """The checkpoint LATEST points at, or None when there is none yet."""
    out = Path(out_dir)
    pointer = out / LATEST
    if not pointer.exists():
        return None
    path = out / pointer.read_text().strip()
    if not (path / "trainer_state.json").exists():
        raise FileNotFoundError(f"{pointer} names {path}, which is not a complete checkpoint")
    return path


def load_checkpoint(path: "str | Path") -> dict[str, Any]:
    """Read a checkpoint directory: model / ema state dicts, optimizer state, trainer state."""
    path = Path(path)
    for need in ("model.safetensors", "optimizer.pt", "trainer_state.json"):
        if not (path / need).exists():
            raise FileNotFoundError(f"checkpoint {path} lacks {need}")
    out = {
        "model": load_file(str(path / "model.safetensors")),
        "optimizer": torch.load(path / "optimizer.pt", weights_only=False),
        "trainer_state": json.loads((path / "trainer_state.json").read_text()),
    }
    if (path / "ema.safetensors").exists():
        out["ema"] = load_file(str(path / "ema.safetensors"))
    return out
