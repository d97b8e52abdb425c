"""A run directory's writer lock and its metrics log.

Lock. The process that trains into a run directory holds an exclusive `flock` on `<dir>/.lock`
(and writes its PID there); a second writer is refused with "run dir <dir> in use by PID <n>".
The kernel drops the lock when its holder exits, however it exits, so a killed run never leaves a
stale lock. Within one process the lock is re-entrant per directory (the CLI holds it for a whole
recipe while each stage's Trainer takes it again). POSIX only (fcntl).

Metrics. `metrics.jsonl` holds one JSON object per logged step. Each line is appended with a
single `write` on an O_APPEND descriptor, so concurrent readers never see two lines interleaved;
a kill can still cut the last line short. Reading is tolerant of exactly that: a last line without
its newline, or one that does not parse, is dropped and said so; a damaged line anywhere else is an
error naming the line. `MetricsLog.keep_until(step)` rewrites the file (atomically) with only the
lines of steps <= step: the trainer calls it when it starts, so the lines an interrupted run wrote
after its last checkpoint (or before its first) are never duplicated.
"""
from __future__ import annotations

import fcntl
import json
import os
import sys
import threading
from pathlib import Path
from typing import Optional

from ..io.safeio import atomic_write

__all__ = ["RunDirInUse", "RunDirLock", "MetricsLog", "LOCK_NAME"]

LOCK_NAME = ".lock"


class RunDirInUse(RuntimeError):
    """Another process is writing into this run directory."""


_held: dict[str, list] = {}  # realpath -> [fd, depth]
_held_guard = threading.Lock()


class RunDirLock:
    """Exclusive writer lock on a run directory (re-entrant within one process).

        with RunDirLock(out_dir):      # RunDirInUse if another process holds it
            ...write checkpoints, metrics...
    """

    def __init__(self, directory: "str | os.PathLike"):
        self.directory = Path(directory)
        self._key: Optional[str] = None

    def acquire(self) -> "RunDirLock":
        if self._key is not None:
            return self
        self.directory.mkdir(parents=True, exist_ok=True)
        key = os.path.realpath(self.directory)
        with _held_guard:
            if key in _held:
                _held[key][1] += 1
                self._key = key
                return self
            path = os.path.join(key, LOCK_NAME)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
                os.close(fd)
                raise RunDirInUse(
                    f"run dir {self.directory} in use by PID {holder}: another training writes there; "
                    f"wait for it to end or choose another train.out_dir"
                ) from None
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            _held[key] = [fd, 1]
            self._key = key
        return self

    def release(self) -> None:
        if self._key is None:
            return
        with _held_guard:
            entry = _held[self._key]
            entry[1] -= 1
            if entry[1] == 0:
                fcntl.flock(entry[0], fcntl.LOCK_UN)
                os.close(entry[0])
                del _held[self._key]
        self._key = None

    @property
    def held(self) -> bool:
        return self._key is not None

    def __enter__(self) -> "RunDirLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


class MetricsLog:
    """`<dir>/metrics.jsonl`: atomic line appends, tolerant reads, truncation on restart."""

    NAME = "metrics.jsonl"

    def __init__(self, directory: "str | os.PathLike"):
        self.path = Path(directory) / self.NAME

    def append(self, record: dict) -> None:
        data = (json.dumps(record) + "\n").encode()
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            written = os.write(fd, data)
            if written != len(data):  # a full disk: the reader drops the torn line
                raise OSError(f"{self.path}: wrote {written} of {len(data)} bytes")
        finally:
            os.close(fd)

    def read(self, warn: bool = True) -> "tuple[list[dict], bool]":
        """(records, torn): a torn last line is dropped (and said so on stderr when `warn`)."""
        if not self.path.exists():
            return [], False
        raw = self.path.read_bytes()
        lines = raw.split(b"\n")
        complete, tail = lines[:-1], lines[-1]  # tail: what follows the last newline ("" if none)
        records, torn = [], bool(tail.strip())
        for i, line in enumerate(complete):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except (json.JSONDecodeError, UnicodeDecodeError):
                if i == len(complete) - 1 and not tail.strip():
                    torn = True  # the last line, damaged: the same accident as a missing newline
                    break
                raise ValueError(f"{self.path} line {i + 1} is not JSON: {line[:60]!r}...") from None
        if torn and warn:
            print(f"diffusionlm: {self.path}: dropped a torn last line (a write cut short, e.g. by a kill)", file=sys.stderr)
        return records, torn

    def keep_until(self, step: int) -> int:
        """Keep only the lines of steps <= `step` (and drop a torn last line); returns how many
        lines were dropped. Rewrites the file atomically, and only when something changes."""
        if not self.path.exists():
            return 0
        records, torn = self.read()
        keep = [r for r in records if r.get("step", 0) <= step]
        dropped = len(records) - len(keep)
        if dropped or torn:
            text = "".join(json.dumps(r) + "\n" for r in keep)
            atomic_write(self.path, lambda tmp: tmp.write_text(text))
        return dropped
