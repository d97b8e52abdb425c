"""Training rows packed on the fly from a streamed source: constant memory, sharded by rank, exact resume.

    stream = TokenStream("big.txt", tok, length=256, batch_size=32, unit="line", rank=r, world_size=W)
    batch = next(stream)          # {"input_ids": [32, 256], "attention", "index", "epoch"} as BatchStream
    state = stream.state_dict()   # JSON-able; load_state_dict(state) on a new stream resumes exactly

**Rows.** Documents come one at a time from :func:`.sources.stream_documents` (``datasets`` in
streaming mode: nothing is read ahead beyond its own buffers), each is encoded and followed by
EOS, and the token sequence is cut into consecutive rows of ``length`` -- the wrap rule of
:class:`.blocks.TokenBlocks`, without shuffling (a stream has no permutation: shuffle the files,
or pre-shuffle the data). Only the tokens of the current global batch and the remainder of the
last document read are held in memory.

**Ranks.** Row g of the stream belongs to global batch g // (B W); rank r takes rows
r B .. (r + 1) B - 1 of each global batch (BatchStream's rule). Every rank reads the same stream,
so every rank's state is the same and the trainer's rank-0 copy resumes all of them.

**Epochs.** At the end of the source the stream starts again (``epochs=None``: forever) with
``epoch + 1``; the leftover tokens carry over into the next epoch's first row (wrap).

**State.** ``(epoch, rows taken, the datasets iterator state after the last document read, the
leftover token ids)``: a stream restored from it yields exactly the batches the uninterrupted one
would have (tests kill a stream mid-epoch and compare).
"""
from __future__ import annotations

from typing import Any, Dict, Iterator, List, Optional

import numpy as np
import torch

from .sources import stream_documents
from .tokenizers import as_tokenizer, encode_arrays

__all__ = ["TokenStream"]

_DOCS_PER_ENCODE = 64  # documents tokenized together (a batched tokenizer call)


class TokenStream:
    """Resumable batches of rows packed from a streamed source (module docstring)."""

    def __init__(self, source: str, tokenizer: Any, length: int, batch_size: int, *, split: str = "train",
                 field: str = "text", files: Optional[str] = None, unit: str = "line", rank: int = 0,
                 world_size: int = 1, epochs: Optional[int] = None):
        if length < 1 or batch_size < 1:
            raise ValueError(f"length and batch_size must be >= 1, got {length} and {batch_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, world_size={world_size})")
        self.tokenizer = as_tokenizer(tokenizer)
        self.length, self.batch_size, self.rank, self.world_size = int(length), int(batch_size), int(rank), int(world_size)
        self.epochs = epochs
        self.dataset, self.description = stream_documents(source, split, field=field, files=files, unit=unit)
        self.field = self.description["field"]
        self.epoch, self.rows = 0, 0
        self._buffer: List[np.ndarray] = []
        self._buffered = 0
        self._resume: Optional[dict] = None
        self._docs: Optional[Iterator[dict]] = None
        self._epoch_docs = 0  # documents read in this epoch (0 at its end: the split is empty)

    # -- reading -----------------------------------------------------------------------
    def _open(self) -> None:
        self.dataset.set_epoch(self.epoch)
        if self._resume is not None:
            self.dataset.load_state_dict(self._resume)
            self._resume = None
        self._docs = iter(self.dataset)

    def _read(self) -> bool:
        """Encode up to _DOCS_PER_ENCODE more documents into the buffer; False at the end of the data."""
        if self._docs is None:
            self._open()
        texts = []
        for row in self._docs:
            texts.append(row[self.field])
            if len(texts) == _DOCS_PER_ENCODE:
                break
        if not texts:
            self._docs = None
            return False
        self._epoch_docs += len(texts)
        eos = np.array([self.tokenizer.eos_id], dtype=np.int64)
        for ids in encode_arrays(self.tokenizer, texts):
            self._buffer.append(np.concatenate([ids, eos]))
            self._buffered += ids.size + 1
        return True

    def _take(self, n: int) -> np.ndarray:
        joined = np.concatenate(self._buffer) if len(self._buffer) > 1 else self._buffer[0]
        out, rest = joined[:n], joined[n:]
        self._buffer = [rest] if rest.size else []
        self._buffered = int(rest.size)
        return out

    def __iter__(self) -> "TokenStream":
        return self

    def __next__(self) -> Dict[str, Any]:
        need = self.batch_size * self.world_size * self.length
        while self._buffered < need:
            if self.epochs is not None and self.epoch >= self.epochs:
                raise StopIteration
            if not self._read():
                if not self._epoch_docs:
                    raise ValueError(f"{self.description['where']}: no documents in the {self.description['split']!r} "
                                     f"split (field {self.field!r})")
                self._epoch_docs = 0
                self.epoch += 1
        rows = torch.from_numpy(self._take(need).copy()).view(self.batch_size * self.world_size, self.length)
        mine = slice(self.rank * self.batch_size, (self.rank + 1) * self.batch_size)
        index = torch.arange(self.rows, self.rows + rows.shape[0])[mine]
        self.rows += rows.shape[0]
        ids = rows[mine]
        return {"input_ids": ids, "attention": torch.ones_like(ids, dtype=torch.bool), "index": index, "epoch": self.epoch}

    # -- resuming ----------------------------------------------------------------------
    def state_dict(self) -> Dict[str, Any]:
        """JSON-able: where the stream is (module docstring)."""
        ds_state = self.dataset.state_dict() if self._docs is not None else self._resume
        leftover = np.concatenate(self._buffer).tolist() if self._buffer else []
        return {"kind": "token_stream", "epoch": self.epoch, "rows": self.rows, "dataset": ds_state,
                "leftover": leftover, "length": self.length, "batch_size": self.batch_size,
                "world_size": self.world_size, "source": self.description["name"]}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        for key in ("length", "batch_size", "world_size", "source"):
            mine = self.description["name"] if key == "source" else getattr(self, key)
            if state.get(key) != mine:
                raise ValueError(f"cannot resume: the saved stream had {key}={state.get(key)!r}, this one has {mine!r} "
                                 "(a resumed run must see the same data and batching)")
        self.epoch, self.rows = int(state["epoch"]), int(state["rows"])
        self._buffer = [np.asarray(state["leftover"], dtype=np.int64)] if state["leftover"] else []
        self._buffered = len(state["leftover"])
        self._resume = state["dataset"]
        self._docs = None
        self._epoch_docs = 1 if state["dataset"] else 0
