"""Documents -> fixed-length blocks of token ids -> a deterministic, resumable stream of batches.

Rules
-----
* ``rule="wrap"`` (:class:`TokenBlocks`): every document is encoded, followed by EOS when
  ``add_eos`` (so EOS SEPARATES documents and also ends the last one), all are concatenated in
  order and cut into consecutive blocks of ``length``. The final partial block is DROPPED
  (``remainder="drop"``, the default) and ``dropped_tokens`` says how many tokens that was; with
  ``remainder="pad"`` it is kept, padded with ``pad_id`` and marked invalid in ``attention``.
  No BOS is inserted: the SHIFTED layout supplies BOS itself (``masks.shift_inputs``).
* ``rule="pad"``: one document per row (its ids + EOS), right-padded with ``pad_id``;
  ``attention`` is True on the document's tokens (EOS included) and False on padding. A document
  longer than ``length`` (EOS counted) is NEVER truncated: with ``long_docs="split"`` (default)
  it fills several consecutive rows (``split_docs`` counts such documents, ``doc_index`` maps
  each row back to its document); with ``long_docs="raise"`` it raises :class:`SequenceTooLong`.
  A document with no tokens at all (empty text and ``add_eos=False``) gives no row
  (``empty_docs``).
* :func:`check_vocab`: a tokenizer whose ids do not all fit the model raises ValueError
  ("tokenizer has 50257 ids but the model takes 258"); :meth:`TokenBlocks.check` checks the
  actual ids the same way.
* :class:`BatchStream`: epoch ``e`` visits the rows in the order ``torch.randperm(n)`` drawn from
  a generator seeded with ``sha1(f"{seed}:{e}")`` (``shuffle=False``: in order); batch ``k`` of
  the epoch is rows ``perm[k*B*W + r*B : k*B*W + (r+1)*B]`` for rank ``r`` of ``W`` (``W = 1``
  unless sharded). ``drop_last=True`` (default) drops an epoch's final partial batch. The
  whole state is ``(seed, epoch, position)`` (``position`` = batches already taken in the
  epoch), so ``state_dict()`` / ``load_state_dict()`` resume exactly: a restored stream yields
  the same batches the uninterrupted one would have.
"""
from __future__ import annotations

import hashlib
import math
from typing import Any, Dict, Iterator, List, Optional, Sequence, Union

import numpy as np
import torch
from torch import Tensor

from .tokenizers import as_tokenizer, encode_arrays

__all__ = ["TokenBlocks", "BatchStream", "check_vocab", "check_ids", "SequenceTooLong"]


class SequenceTooLong(ValueError):
    """A sequence does not fit the fixed length and the chosen rule refuses to split it."""


def _vocab_size_of(tokenizer_or_size: Any) -> int:
    if isinstance(tokenizer_or_size, (int, np.integer)):
        return int(tokenizer_or_size)
    return int(as_tokenizer(tokenizer_or_size).vocab_size)


def check_vocab(tokenizer: Any, model_vocab_size: int) -> None:
    """Raise ValueError when the tokenizer's ids (0 .. vocab_size-1) do not fit a model that
    takes ``model_vocab_size`` token ids (the real tokens N of the process, MASK not counted)."""
    n = _vocab_size_of(tokenizer)
    if n > int(model_vocab_size):
        raise ValueError(
            f"tokenizer has {n} ids but the model takes {int(model_vocab_size)}: "
            "build the model (and process) with vocab_size >= the tokenizer's, or use its tokenizer"
        )


def check_ids(ids: Tensor, model_vocab_size: int) -> None:
    """Raise ValueError when any id in ``ids`` is negative or >= ``model_vocab_size``."""
    if ids.numel() == 0:
        return
    lo, hi = int(ids.min()), int(ids.max())
    if lo < 0 or hi >= int(model_vocab_size):
        bad = hi if hi >= model_vocab_size else lo
        raise ValueError(f"token id {bad} is outside the model's {int(model_vocab_size)} ids (0..{int(model_vocab_size) - 1})")


class TokenBlocks:
    """Documents as a [num_blocks, length] LongTensor ``ids`` with a bool ``attention`` mask.

    Attributes: ``ids``, ``attention`` (True = a real token), ``doc_index`` ([num_blocks]: the
    document a pad-rule row comes from; for wrap, the document of the row's first token),
    ``num_docs``, ``num_tokens`` (tokens produced, EOS included), ``dropped_tokens`` (wrap),
    ``pad_tokens``, ``split_docs`` and ``empty_docs`` (pad), ``rule``, ``length``, ``eos_id``,
    ``pad_id``, ``vocab_size``.
    """

    def __init__(
        self,
        docs: Sequence[Union[str, Sequence[int]]],
        tokenizer: Any,
        length: int,
        rule: str = "wrap",
        add_eos: bool = True,
        remainder: str = "drop",
        long_docs: str = "split",
    ):
        if length < 1:
            raise ValueError(f"length must be >= 1, got {length}")
        if rule not in ("wrap", "pad"):
            raise ValueError(f"rule must be 'wrap' or 'pad', got {rule!r}")
        if remainder not in ("drop", "pad"):
            raise ValueError(f"remainder must be 'drop' or 'pad', got {remainder!r}")
        if long_docs not in ("split", "raise"):
            raise ValueError(f"long_docs must be 'split' or 'raise', got {long_docs!r}")
        tok = as_tokenizer(tokenizer)
        self.tokenizer = tok
        self.rule, self.length, self.add_eos = rule, int(length), bool(add_eos)
        self.eos_id, self.pad_id, self.vocab_size = tok.eos_id, tok.pad_id, tok.vocab_size
        docs = list(docs)
        self.num_docs = len(docs)
        arrays = self._encode(docs, tok)
        if add_eos:
            eos = np.array([self.eos_id], dtype=np.int64)
            arrays = [np.concatenate([a, eos]) for a in arrays]
        self.num_tokens = int(sum(a.size for a in arrays))
        self.dropped_tokens = 0
        self.pad_tokens = 0
        self.split_docs = 0
        self.empty_docs = 0
        if rule == "wrap":
            self._wrap(arrays, remainder)
        else:
            self._pad(arrays, long_docs)

    @staticmethod
    def _encode(docs: List[Any], tok: Any) -> List[np.ndarray]:
        if all(isinstance(d, str) for d in docs):
            return encode_arrays(tok, docs)
        out = []
        for i, d in enumerate(docs):
            if isinstance(d, str):
                out.append(encode_arrays(tok, [d])[0])
            else:
                out.append(np.asarray(d.tolist() if hasattr(d, "tolist") else list(d), dtype=np.int64).reshape(-1))
        return out

    def _wrap(self, arrays: List[np.ndarray], remainder: str) -> None:
        L = self.length
        flat = np.concatenate(arrays) if arrays else np.zeros(0, dtype=np.int64)
        doc_of_token = np.repeat(np.arange(len(arrays), dtype=np.int64), [a.size for a in arrays])
        n_full = flat.size // L
        rest = flat.size - n_full * L
        if remainder == "drop" or rest == 0:
            self.dropped_tokens = int(rest)
            ids = flat[: n_full * L].reshape(n_full, L)
            att = np.ones_like(ids, dtype=bool)
            starts = doc_of_token[: n_full * L : L]
        else:
            padded = np.full((n_full + 1) * L, self.pad_id, dtype=np.int64)
            padded[: flat.size] = flat
            ids = padded.reshape(n_full + 1, L)
            att = np.zeros((n_full + 1) * L, dtype=bool)
            att[: flat.size] = True
            att = att.reshape(n_full + 1, L)
            self.pad_tokens = int(L - rest)
            starts = doc_of_token[::L]
        self.ids = torch.from_numpy(np.ascontiguousarray(ids))
        self.attention = torch.from_numpy(np.ascontiguousarray(att))
        self.doc_index = torch.from_numpy(np.ascontiguousarray(starts[: ids.shape[0]]))

    def _pad(self, arrays: List[np.ndarray], long_docs: str) -> None:
        L = self.length
        rows_per_doc = []
        for i, a in enumerate(arrays):
            if a.size > L:
                if long_docs == "raise":
                    raise SequenceTooLong(
                        f"document {i} has {a.size} tokens{' (EOS included)' if self.add_eos else ''}, "
                        f"more than length {L}; rule='pad' never truncates: use long_docs='split' "
                        "(several rows) or a longer length"
                    )
                self.split_docs += 1
            if a.size == 0:
                self.empty_docs += 1
            rows_per_doc.append(math.ceil(a.size / L))
        num = int(sum(rows_per_doc))
        ids = np.full((num, L), self.pad_id, dtype=np.int64)
        att = np.zeros((num, L), dtype=bool)
        doc_index = np.repeat(np.arange(len(arrays), dtype=np.int64), rows_per_doc)
        r = 0
        for a, k in zip(arrays, rows_per_doc):
            for j in range(k):
                chunk = a[j * L : (j + 1) * L]
                ids[r, : chunk.size] = chunk
                att[r, : chunk.size] = True
                r += 1
        self.pad_tokens = int(num * L - att.sum())
        self.ids = torch.from_numpy(ids)
        self.attention = torch.from_numpy(att)
        self.doc_index = torch.from_numpy(doc_index)

    # ------------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return int(self.ids.shape[0])

    def __getitem__(self, i: Any) -> Tensor:
        return self.ids[i]

    @property
    def shape(self) -> torch.Size:
        return self.ids.shape

    def check(self, model_vocab_size: int) -> "TokenBlocks":
        """Raise ValueError unless the tokenizer and every id fit ``model_vocab_size``."""
        check_vocab(self.vocab_size, model_vocab_size)
        check_ids(self.ids, model_vocab_size)
        return self

    def summary(self) -> Dict[str, Any]:
        return {
            "rule": self.rule,
            "length": self.length,
            "blocks": len(self),
            "docs": self.num_docs,
            "tokens": self.num_tokens,
            "dropped_tokens": self.dropped_tokens,
            "pad_tokens": self.pad_tokens,
            "split_docs": self.split_docs,
            "empty_docs": self.empty_docs,
        }

    def __repr__(self) -> str:
        return "TokenBlocks(" + ", ".join(f"{k}={v}" for k, v in self.summary().items()) + ")"


def _epoch_seed(seed: int, epoch: int) -> int:
    return int.from_bytes(hashlib.sha1(f"{int(seed)}:{int(epoch)}".encode()).digest()[:8], "little") & (2**63 - 1)


class BatchStream:
    """Deterministic, resumable batches of rows of ``blocks`` (a :class:`TokenBlocks` or a
    [N, L] tensor). Each batch is a dict: ``input_ids`` [B, L], ``attention`` [B, L] bool,
    ``index`` [B] (the rows taken), ``epoch`` (int). ``epochs=None`` streams forever.
    ``rank`` / ``world_size``: every rank builds the same permutation and takes its own
    ``batch_size`` rows of each global batch of ``batch_size * world_size``.
    """

    def __init__(
        self,
        blocks: Union[TokenBlocks, Tensor],
        batch_size: int,
        seed: int = 0,
        shuffle: bool = True,
        drop_last: bool = True,
        epochs: Optional[int] = None,
        rank: int = 0,
        world_size: int = 1,
    ):
        if isinstance(blocks, TokenBlocks):
            self.ids, self.attention = blocks.ids, blocks.attention
        elif isinstance(blocks, Tensor):
            if blocks.dim() != 2:
                raise ValueError(f"blocks must be [N, L], got shape {tuple(blocks.shape)}")
            self.ids, self.attention = blocks, torch.ones_like(blocks, dtype=torch.bool)
        else:
            raise TypeError(f"blocks must be TokenBlocks or a 2-D tensor, got {type(blocks).__name__}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not (0 <= rank < world_size):
            raise ValueError(f"rank {rank} is not in [0, world_size={world_size})")
        self.batch_size, self.seed, self.shuffle = int(batch_size), int(seed), bool(shuffle)
        self.drop_last, self.epochs = bool(drop_last), epochs
        self.rank, self.world_size = int(rank), int(world_size)
        self.num_rows = int(self.ids.shape[0])
        global_bs = self.batch_size * self.world_size
        per_epoch = self.num_rows // global_bs if self.drop_last else math.ceil(self.num_rows / global_bs)
        if per_epoch == 0:
            raise ValueError(
                f"{self.num_rows} rows make no full batch of {global_bs} "
                f"(batch_size {self.batch_size} x world_size {self.world_size}); use drop_last=False or smaller batches"
            )
        self.batches_per_epoch = per_epoch
        self.epoch = 0
        self.position = 0
        self._perm_epoch: Optional[int] = None
        self._perm: Optional[Tensor] = None

    def __len__(self) -> int:
        return self.batches_per_epoch

    def permutation(self, epoch: int) -> Tensor:
        """The row order of ``epoch``."""
        if self._perm_epoch != epoch:
            if self.shuffle:
                g = torch.Generator().manual_seed(_epoch_seed(self.seed, epoch))
                self._perm = torch.randperm(self.num_rows, generator=g)
            else:
                self._perm = torch.arange(self.num_rows)
            self._perm_epoch = epoch
        assert self._perm is not None
        return self._perm

    def __iter__(self) -> Iterator[Dict[str, Any]]:
        return self

    def __next__(self) -> Dict[str, Any]:
        if self.position >= self.batches_per_epoch:
            self.epoch += 1
            self.position = 0
        if self.epochs is not None and self.epoch >= self.epochs:
            raise StopIteration
        perm = self.permutation(self.epoch)
        g0 = self.position * self.batch_size * self.world_size + self.rank * self.batch_size
        idx = perm[g0 : g0 + self.batch_size]
        self.position += 1
        return {"input_ids": self.ids[idx], "attention": self.attention[idx], "index": idx, "epoch": self.epoch}

    def state_dict(self) -> Dict[str, Any]:
        return {
            "seed": self.seed,
            "epoch": self.epoch,
            "position": self.position,
            "batch_size": self.batch_size,
            "num_rows": self.num_rows,
            "shuffle": self.shuffle,
            "drop_last": self.drop_last,
            "world_size": self.world_size,
        }

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        for key in ("batch_size", "num_rows", "shuffle", "drop_last", "world_size"):
            if key in state and state[key] != getattr(self, key):
                raise ValueError(
                    f"cannot resume: the saved stream had {key}={state[key]!r}, this one has {getattr(self, key)!r} "
                    "(a resumed run must see the same data and batching)"
                )
        self.seed = int(state["seed"])
        self.epoch = int(state["epoch"])
        self.position = int(state["position"])
        self._perm_epoch = None
