"""Atomic checkpoints of safe files only: a crash while saving never corrupts the last good one,
and loading one never runs code.

Layout under `out_dir` (format 2):

    checkpoint-000120/          one complete checkpoint
        model.safetensors       the weights the run trains (all of them, or only the trainable
                                ones when a frozen base is kept out: LoRA / HF backbones)
        ema.safetensors         the EMA weights (when train.ema is set)
        optimizer.json          optimizer, LR scheduler, grad scaler and every rank's RNG states:
        optimizer.safetensors   JSON plus their tensors (diffusionlm.io.safeio.save_tree)
        trainer_state.json      {"format": 2, "step", "data" (stream position), "config", "weights",
                                 "frozen_sha256", "world", "metrics_tail"}
    LATEST                      the name of the newest complete checkpoint
    .lock                       the writer's lock (diffusionlm.training.rundir)

Every .safetensors file carries a checksum verified on load (diffusionlm.io.safeio). Nothing is
unpickled: a format-1 checkpoint (optimizer.pt, a pickle) is refused with a message saying so,
without opening that file; its weights still load through `load_model_weights`.

Protocol: everything is written into `checkpoint-000120.tmp-<pid>/`, each file fsynced, the
directory renamed to its final name, and only then `LATEST` replaced (temporary file, fsync,
os.replace: atomic on POSIX). A crash at any point leaves `LATEST` naming a complete checkpoint.
Clean-up removes this process's own temporary files and those of processes that no longer run on
this host, never a live process's. `LATEST` must name a `checkpoint-<step>` directory directly
inside the run directory (no path separators, no symlink): anything else is refused.
"""
from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any, Optional

import torch

from ..io.safeio import (
    atomic_write, first_non_finite, fsync_dir, load_json_object, load_safetensors, load_tree, save_safetensors,
    save_tree, tensor_digest,
)
from ..trust import check_weights_finite, no_symlink

__all__ = [
    "FORMAT", "CheckpointFormatError", "NonFiniteError", "save_checkpoint", "load_checkpoint",
    "latest_checkpoint", "load_model_weights", "frozen_digest",
]

FORMAT = 2
LATEST = "LATEST"
_NAME = re.compile(r"checkpoint-(\d{6,})")
_TMP = re.compile(r".*\.tmp-(\d+)")


class CheckpointFormatError(ValueError):
    """A checkpoint this version cannot (or will not) read."""


class NonFiniteError(RuntimeError):
    """Training stopped on a NaN / infinity in the loss, the gradients or the weights; the last
    checkpoint (written before it) is kept and nothing non-finite is ever saved."""


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _clean_temporaries(out: Path) -> None:
    """Remove `*.tmp-<pid>` left by this process or by processes that are gone."""
    for stray in out.glob("*.tmp-*"):
        m = _TMP.fullmatch(stray.name)
        if m is None:
            continue
        pid = int(m.group(1))
        if pid != os.getpid() and _alive(pid):
            continue  # another live process's file: not ours to touch
        if stray.is_dir() and not stray.is_symlink():
            shutil.rmtree(stray, ignore_errors=True)
        else:
            stray.unlink(missing_ok=True)


def _step_of(p: Path) -> int:
    return int(_NAME.fullmatch(p.name).group(1))


def save_checkpoint(
    out_dir: "str | Path",
    step: int,
    model_state: dict,
    optimizer_state: Any,
    trainer_state: dict,
    ema_state: Optional[dict] = None,
    keep: int = 2,
    _crash_after: Optional[str] = None,
) -> Path:
    """Write checkpoint-{step} atomically and point LATEST at it; keep the newest `keep` (0: all).

    `optimizer_state`: any tree of tensors, numbers, strings, lists, tuples and dicts (optimizer,
    scheduler, RNG...). Refuses (NonFiniteError) weights holding a NaN or an infinity.
    `_crash_after` (tests only) raises after writing the named file, to simulate a kill.
    """
    for what, state in (("weights", model_state), ("EMA weights", ema_state or {})):
        bad = first_non_finite(state)
        if bad is not None:
            raise NonFiniteError(f"not saving step {step}: the {what} hold non-finite values ({bad})")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    name = f"checkpoint-{step:06d}"
    tmp = out / f"{name}.tmp-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    state = {"format": FORMAT, **trainer_state}
    files = [
        ("model.safetensors", lambda: save_safetensors(tmp / "model.safetensors", model_state)),
        ("optimizer.safetensors", lambda: save_tree(tmp / "optimizer", optimizer_state)),
        ("trainer_state.json", lambda: atomic_write(tmp / "trainer_state.json",
                                                    lambda p: p.write_text(json.dumps(state, indent=1)))),
    ]
    if ema_state is not None:
        files.insert(1, ("ema.safetensors", lambda: save_safetensors(tmp / "ema.safetensors", ema_state)))
    final = out / name
    try:
        for fname, write in files:
            write()
            if _crash_after == fname:  # a kill runs no clean-up: the next save removes what it left
                tmp = None
                raise KeyboardInterrupt(f"simulated kill after writing {fname}")
        fsync_dir(tmp)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        fsync_dir(out)
        atomic_write(out / LATEST, lambda p: p.write_text(name))
    except BaseException:  # a full disk, an error, Ctrl-C: this save's temporary files go now
        if tmp is not None and tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    # retention (by step number), and leftovers of interrupted saves
    done = sorted((p for p in out.iterdir() if _NAME.fullmatch(p.name) and p.is_dir() and not p.is_symlink()), key=_step_of)
    for old in done[:-keep] if keep > 0 else []:
        if old != final:
            shutil.rmtree(old, ignore_errors=True)
    _clean_temporaries(out)
    return final


def latest_checkpoint(out_dir: "str | Path") -> Optional[Path]:
    """The checkpoint LATEST names, or None when there is none yet. LATEST must name a complete
    `checkpoint-<step>` directory inside `out_dir` itself."""
    out = Path(out_dir)
    pointer = out / LATEST
    if not pointer.exists() and not pointer.is_symlink():
        return None
    if pointer.is_symlink() or not pointer.is_file():
        raise ValueError(f"{pointer} must be a plain file naming a checkpoint, not a link or a directory")
    name = pointer.read_text(errors="replace").strip()
    if not _NAME.fullmatch(name):
        raise ValueError(
            f"{pointer} names {name[:80]!r}: LATEST must name a checkpoint-<step> directory inside {out}"
        )
    path = out / name
    if path.is_symlink() or (path.exists() and path.resolve().parent != out.resolve()):
        raise ValueError(f"{pointer} names {path}, a link out of the run directory {out}: refused")
    if not (path / "trainer_state.json").is_file():
        raise FileNotFoundError(f"{pointer} names {path}, which is not a complete checkpoint")
    return path


def _trainer_state(path: Path) -> dict:
    f = no_symlink(path / "trainer_state.json", f"checkpoint file {path / 'trainer_state.json'}")
    if not f.is_file():
        raise FileNotFoundError(f"checkpoint {path} lacks trainer_state.json")
    return load_json_object(f)


def _format(path: Path, state: dict) -> int:
    fmt = state.get("format", 1)
    if not isinstance(fmt, int) or fmt > FORMAT:
        raise CheckpointFormatError(
            f"checkpoint {path} has format {fmt!r}, newer than this diffusionlm reads ({FORMAT}): upgrade diffusionlm"
        )
    return fmt


def load_checkpoint(path: "str | Path") -> dict[str, Any]:
    """Read a checkpoint directory: {"model", "optimizer", "trainer_state"[, "ema"]}.

    Only JSON and checksummed safetensors are read. A format-1 checkpoint is refused with
    CheckpointFormatError: its optimizer.pt is a pickle, and is never opened."""
    path = Path(path)
    state = _trainer_state(path)
    if _format(path, state) < FORMAT or (path / "optimizer.pt").exists():
        raise CheckpointFormatError(
            f"checkpoint written by an older format: {path} keeps its optimizer and RNG state in optimizer.pt, "
            f"a pickle, which diffusionlm no longer loads (unpickling can run code). Its weights (model.safetensors) "
            f"still load for sampling and evaluation; training cannot resume from it: start a new run"
        )
    for need in ("model.safetensors", "optimizer.json", "optimizer.safetensors", "ema.safetensors"):
        no_symlink(path / need, f"checkpoint file {path / need}")
        if not (path / need).is_file() and need != "ema.safetensors":
            raise FileNotFoundError(f"checkpoint {path} lacks {need}")
    out = {
        "model": load_safetensors(path / "model.safetensors", require_checksum=True)[0],
        "optimizer": load_tree(path / "optimizer"),
        "trainer_state": state,
    }
    if (path / "ema.safetensors").exists():
        out["ema"] = load_safetensors(path / "ema.safetensors", require_checksum=True)[0]
    for what in ("model", "ema"):  # a checkpoint is never resumed (nor reported as the last good one) with NaN weights
        check_weights_finite(out.get(what, {}), f"checkpoint {path / (what + '.safetensors')}")
    return out


def _full(t: torch.Tensor) -> torch.Tensor:
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def frozen_digest(model: torch.nn.Module) -> Optional[str]:
    """Checksum of the parameters that do not train (None when all do). Collective under FSDP."""
    frozen = {n: _full(p.detach()) for n, p in model.named_parameters() if not p.requires_grad}
    return tensor_digest(frozen) if frozen else None


def drop_frozen_aliases(model: torch.nn.Module, state: dict) -> dict:
    """`state` without the entries that name a FROZEN tensor of `model` holding exactly the stored
    values. torch.distributed.checkpoint's `ignore_frozen_params` drops a frozen parameter under the
    one name `named_parameters` keeps, so a tied one (SmolLM2's head is its embedding, and peft's
    trainable tokens wrap both) used to be written under its second name, 113 MB a checkpoint; such
    entries are the base itself (the frozen checksum is compared too), so they are dropped, never
    loaded. A frozen entry that differs from the model's is kept, for check_weights to refuse."""
    tensors = model.state_dict(keep_vars=True)
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    out = {}
    for k, v in state.items():
        t = tensors.get(k)
        if t is not None and id(t) not in trainable and t.shape == v.shape and torch.equal(t.detach().cpu(), v.cpu()):
            continue
        out[k] = v
    return out


def trainable_only(model: torch.nn.Module, state: dict) -> dict:
    """The entries of `state` that name a trainable tensor of `model` (by tensor, so a tied
    parameter's second name is recognised as what it is)."""
    tensors = model.state_dict(keep_vars=True)
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    return {k: v for k, v in state.items() if k in tensors and id(tensors[k]) in trainable}


def check_weights(model: torch.nn.Module, state: dict, path: "str | Path", partial: bool) -> None:
    """Raise unless `state` fits `model`: every key a weight of it, and (partial) exactly its
    trainable parameters, or (full) all of its weights but perhaps a tied head stored once."""
    own = model.state_dict()
    unexpected = sorted(set(state) - set(own))
    if unexpected:
        raise ValueError(f"checkpoint {path} holds weights this model lacks: {unexpected[:5]}")
    if partial:
        # By tensor, not by name: a tied pair (an embedding and its head) is one parameter with two
        # names, and which name `named_parameters` keeps depends on the order modules were built in.
        tensors = model.state_dict(keep_vars=True)
        saved = {id(tensors[k]) for k in state}
        trainable = {id(p) for p in model.parameters() if p.requires_grad}
        missing = sorted(n for n, p in model.named_parameters() if p.requires_grad and id(p) not in saved)
        extra = sorted(k for k in state if id(tensors[k]) not in trainable)
        if missing or extra:
            raise ValueError(
                f"checkpoint {path} holds the trainable weights of another configuration "
                f"(missing {missing[:3]}, not trainable here {extra[:3]})"
            )
    else:
        # a name may be absent only when its tensor is stored under another name (a tied head saved
        # once): by tensor identity, never by name (a removed embedding must not load as random)
        tensors = model.state_dict(keep_vars=True)
        stored = {id(tensors[k]) for k in state}
        missing = sorted(k for k in set(own) - set(state) if id(tensors[k]) not in stored)
        if missing:
            raise ValueError(f"checkpoint {path} lacks weights: {missing[:5]}")


def check_frozen(model: torch.nn.Module, state: dict, path: "str | Path") -> None:
    """Raise unless the model's frozen parameters are those the checkpoint was trained on."""
    want = state.get("frozen_sha256")
    if want is None:
        return
    have = frozen_digest(model)
    if have != want:
        raise ValueError(
            f"checkpoint {path} trained adapters on another base: the frozen weights here differ from the ones "
            f"it was trained on (sha256 {str(have)[:12]} vs {want[:12]}); build the model exactly as the run did "
            f"(the same model.path / hf_config and train.seed)"
        )


def load_model_weights(model: torch.nn.Module, path: "str | Path") -> dict:
    """Put a checkpoint's weights into `model` (not distributed); returns its trainer state.

    A checkpoint of only the trainable weights (a LoRA / HF-backbone run) needs the same frozen
    base: its checksum is compared first. Format-1 checkpoints load too (their weights are
    safetensors; nothing else is read)."""
    path = Path(path)
    state = _trainer_state(path)
    _format(path, state)
    weights, _ = load_safetensors(no_symlink(path / "model.safetensors", f"checkpoint file {path / 'model.safetensors'}"))
    check_weights_finite(weights, f"checkpoint {path / 'model.safetensors'}")
    partial = state.get("weights") == "trainable"
    if partial:
        weights = drop_frozen_aliases(model, weights)
    check_weights(model, weights, path, partial)
    if partial:
        check_frozen(model, state, path)
    model.load_state_dict(weights, strict=False)
    return state
