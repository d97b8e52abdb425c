"""Zero-shot / test likelihood: the Monte-Carlo NLL upper bound and its perplexity on a dataset.

    res = evaluate_likelihood(lm, "ptb", "data:tokenizers/gpt2", length=1024, num_samples=16, seed=0)
    res["results"]["ptb"]        # {"nll", "ppl", "stderr", "tokens", ...}
    res["config"]                # every setting that produced the number

Definitions (docs/EVALUATION.md has them all):

* **Sequences.** The dataset's documents (``load_corpus(name, split)`` with the dataset's
  detokenization from :data:`diffusionlm.data.DATASETS`) are encoded with ``tokenizer``, each
  followed by EOS, and cut into rows of ``length`` tokens by the dataset's rule (``rule=None``:
  the table's rule): ``wrap`` concatenates and drops the final partial row (reported as
  ``dropped_tokens``); ``pad`` gives one document per row (long ones over several rows), padded.
  No BOS is inserted (the SHIFTED layout reads its own BOS at row 0).
* **Bound.** For each row y, NLL(y) <= prior term + sum over the hyperschedule's steps of the
  one-step KLs (continuous time: the integral), with M model evaluations per row by the one
  estimator of the toolkit (:func:`diffusionlm.eval.bound.corpus_bound`, the estimator of
  ``DiffusionLM.nll_bound`` and of the compare job): exact (stderr 0) when every step fits in M
  and the corruption is deterministic (Absorb under Quench with M >= T, Block(w, 1), ...);
  otherwise stratified over steps with R independent random shifts. ``terms`` splits the
  bound into its lines (prior, diffusion, and EpsilonHybrid's clean-up, computed exactly).
* **Tokens.** Every position of a row becomes active at some step of the hyperschedule, so every
  real token is counted: ``length`` per row under ``wrap``; under ``pad`` the document's tokens
  (EOS included) and NOT the padding -- pad positions are corrupted like any other position (as in
  training) but their terms are left out of the NLL and of the count (MDLM's convention).
* **PPL** = exp(total NLL / total tokens), the total over all rows (not a mean of per-row PPLs).
* **Standard error.** Each row's stderr comes from the spread of its R replicate estimates (0
  where exact). Rows are independent, so the standard error of the total NLL is
  sqrt(sum_b stderr_b^2); ``stderr`` is that over the token count (the standard error of
  ``nll``), ``stderr_total`` the one of ``nll_total``; ``ppl_low`` / ``ppl_high`` are
  exp(nll -+ stderr). With M = 1 there is no error estimate and they are None.
* **Seeding.** Row i draws from a generator seeded by sha1(f"{seed}:{i}"), so the numbers
  depend on (seed, M, the data, the model) and not on ``batch_size``.
* **Datasets.** The names of :data:`DATASETS` (stdlib, tinyshakespeare, ptb, wikitext2,
  wikitext2-raw, lm1b, lambada, ag_news: local files under ``$DIFFUSIONLM_DATA``; the evaluation
  sets store only their test split, and asking another is one line saying so), ``wikitext103``
  (its test text is the WikiText-2 raw test text: read from the local wikitext2-raw files), any
  local file, folder or glob that ``datasets`` reads (text, JSON / JSONL, CSV, parquet; ``field``
  names the text column, ``files`` a folder's pattern, ``unit`` how text files split into
  documents: :mod:`diffusionlm.data.sources`), and ``hf:<name>``: a hub id through
  ``datasets.load_dataset`` (``hf:openwebtext``, ``hf:pubmed``, ``hf:arxiv``, ``hf:lm1b``, ...,
  which need the network or its local cache), or a local dataset folder. ``split=None``: test for
  the named sets and for sources whose files name their splits; a local file or a folder without
  named splits is scored whole (the file given is the data). The detokenization applied is in
  ``config.detokenization`` (``none`` for files: their text as read). A pre-tokenized
  ``TokenBlocks`` or a [n, length] LongTensor is also accepted (every position counted).
* **Autoregressive compositions** (Absorb + Quench, SHIFTED, a backbone that ignores the levels)
  are scored exactly by one causal forward per row (:mod:`.causal`): stderr 0, whatever M.
"""
from __future__ import annotations

import dataclasses
import datetime
import math
import platform
from pathlib import Path
from typing import Any, Dict, NamedTuple, Optional, Tuple, Union

import torch
from torch import Tensor

import diffusionlm

from ..data import (
    DATASETS,
    HF_DATASETS,
    TokenBlocks,
    hf_dataset,
    lm1b_detokenize,
    load_corpus,
    load_tokenizer,
    wikitext_detokenize,
)
from ..data.corpus import _looks_like_path
from ..data.sources import NAMED_SPLITS, read_documents, resolve_source
from .bound import check_likelihood, check_num_samples, corpus_bound

__all__ = [
    "evaluate_likelihood",
    "dataset_blocks",
    "known_datasets",
    "ALIASES",
    "HF_EXTRA",
    "describe_model",
    "describe_tokenizer",
    "lm_config",
]

#: other names of locally stored evaluation sets
ALIASES: Dict[str, Tuple[str, str]] = {
    "wikitext103": ("wikitext2-raw", "the WikiText-103 test split is the same 60 articles as WikiText-2's: "
                    "scored from the local wikitext-2-raw test text"),
    "wikitext-103": ("wikitext2-raw", "as wikitext103"),
    "wikitext-2": ("wikitext2", "alias"),
}

#: hub datasets that are not in data.HF_DATASETS: (hf_dataset name, keyword arguments, detokenization)
HF_EXTRA: Dict[str, Dict[str, Any]] = {
    # MDLM reads scientific_papers (a loading script, refused by datasets >= 4); these parquet
    # copies hold the same articles. MDLM detokenizes them with wt_detokenizer then lm1b_detokenizer.
    "pubmed": {"path": "ccdv/pubmed-summarization", "field": "article", "detokenize": "wikitext+lm1b"},
    "arxiv": {"path": "ccdv/arxiv-summarization", "field": "article", "detokenize": "wikitext+lm1b"},
}


def known_datasets() -> list:
    """Every dataset name evaluate_likelihood takes (``hf:<any hub id>`` besides these)."""
    return list(DATASETS) + list(ALIASES) + [f"hf:{n}" for n in list(HF_DATASETS) + list(HF_EXTRA)]


def _scientific_detokenize(x: str) -> str:
    return lm1b_detokenize(wikitext_detokenize(x))


def _load_documents(dataset: str, split: Optional[str], field: str = "text", files: Optional[str] = None,
                    unit: str = "file") -> Tuple[list, Dict[str, Any]]:
    """Documents and a description (file / source / split / detokenization / default rule).
    split None: the dataset's own default -- "test" for the named sets and for sources whose
    files or hub name their splits, "all" (every document) for a local file or a folder without
    named splits (the file given is the data)."""
    note = None
    name = dataset
    if name in ALIASES:
        name, note = ALIASES[name]
    if name in DATASETS:
        info = DATASETS[name]
        docs = load_corpus(name, split or "test", detokenize=True)
        desc = {k: info.get(k) for k in ("file", "unit", "documents", "splits", "detokenization", "rule", "source")}
        desc.update(name=name, split=split or "test")
        if note:
            desc["note"] = note
        return docs, desc
    if name.startswith("hf:") and name[3:] in HF_EXTRA:
        spec = HF_EXTRA[name[3:]]
        raw = hf_dataset(spec["path"], split or "test", field=spec["field"], detokenize=False)
        docs = [_scientific_detokenize(t) for t in raw]
        return docs, {"name": name, "source": f"hub {spec['path']} ({spec['field']})", "split": split or "test",
                      "detokenization": "MDLM scientific_papers: wt_detokenizer then lm1b_detokenizer", "rule": "wrap"}
    if name.startswith("hf:") or any(c in name for c in "*?[") or _looks_like_path(name) or Path(name).exists():
        if split is None:
            source = resolve_source(name, files)
            split = "test" if (source.hub or source.disk or source.how == NAMED_SPLITS) else "all"
        docs, desc = read_documents(name, split, field=field, files=files, unit=unit)
        base = DATASETS.get(name[3:], {}) if name.startswith("hf:") else {}
        if base.get("detokenization") and name[3:] in ("wikitext2", "wikitext103", "ptb", "lm1b"):
            desc["detokenization"] = base["detokenization"]
        return docs, desc
    raise ValueError(
        f"unknown dataset {dataset!r}: not a local file, folder or glob, nor a known name "
        f"({', '.join(known_datasets())}, or hf:<hub dataset id or local dataset folder>)"
    )


def dataset_blocks(
    dataset: Union[str, Any],
    tokenizer: Any,
    length: int,
    split: Optional[str] = "test",
    rule: Optional[str] = None,
    *,
    field: str = "text",
    files: Optional[str] = None,
    unit: str = "file",
) -> Tuple[Any, Dict[str, Any]]:
    """The rows evaluate_likelihood scores: (TokenBlocks, description of the data and its rules).
    split None: the dataset's own default (:func:`_load_documents`); field / files / unit: how a
    local or hub source is read (:mod:`diffusionlm.data.sources`)."""
    if not isinstance(dataset, str):
        raise TypeError(f"dataset must be a name, got {type(dataset).__name__}")
    if rule is not None and rule not in ("wrap", "pad"):
        raise ValueError(f"rule must be 'wrap', 'pad' or None (the dataset's own), got {rule!r}")
    docs, desc = _load_documents(dataset, split, field, files, unit)
    tok = load_tokenizer(tokenizer)
    use_rule = rule or desc.get("rule") or "wrap"
    blocks = TokenBlocks(docs, tok, length, rule=use_rule)
    desc = dict(desc, rule=use_rule, rule_default=desc.get("rule"))
    return blocks, desc


# ----------------------------------------------------------------------------------------------
# descriptions for the config

def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, Tensor):
        return _jsonable(x.tolist())
    if isinstance(x, torch.dtype):
        return str(x).replace("torch.", "")
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if x is None or isinstance(x, (bool, int, float, str)):
        return x
    if hasattr(x, "value") and isinstance(getattr(x, "value"), (str, int)):
        return x.value
    return repr(x)


def describe_model(model: Any) -> Dict[str, Any]:
    """Class, parameter count and configuration of a denoiser (JSON-able)."""
    out: Dict[str, Any] = {"class": f"{type(model).__module__}.{type(model).__qualname__}"}
    params = getattr(model, "parameters", None)
    if callable(params):
        try:
            out["parameters"] = int(sum(p.numel() for p in params()))
            out["dtype"] = str(next(iter(params())).dtype).replace("torch.", "")
        except StopIteration:
            pass
    cfg = getattr(model, "config", None)
    if cfg is not None:
        if hasattr(cfg, "to_dict"):
            cfg = cfg.to_dict()
        elif hasattr(cfg, "__dataclass_fields__"):
            cfg = dataclasses.asdict(cfg)
        out["config"] = _jsonable(cfg)
    out["vocab_size"] = getattr(model, "vocab_size", None)
    return _jsonable(out)


def describe_tokenizer(tok: Any) -> Dict[str, Any]:
    return _jsonable({
        "repr": repr(tok),
        "vocab_size": getattr(tok, "vocab_size", None),
        "eos_id": getattr(tok, "eos_id", None),
        "bos_id": getattr(tok, "bos_id", None),
        "pad_id": getattr(tok, "pad_id", None),
    })


def lm_config(lm: Any) -> Dict[str, Any]:
    """The composition: process, hyperschedule, layout, BOS, model."""
    return _jsonable({
        "process": lm.process.config(),
        "schedule": lm.schedule.to_dict(),
        "layout": getattr(lm.layout, "value", lm.layout),
        "bos_id": lm.bos_id,
        "model": describe_model(lm.model),
        "diffusionlm": getattr(diffusionlm, "__version__", None),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    })


# ----------------------------------------------------------------------------------------------

class _Rows(NamedTuple):
    """What evaluate_likelihood scores: ids [n, d], counted positions, and their descriptions."""

    key: str
    ids: Tensor
    attention: Tensor
    summary: Dict[str, Any]
    data: Dict[str, Any]
    tokenizer: Optional[Dict[str, Any]]


def _check_settings(num_samples, batch_size, max_blocks) -> int:
    M = check_num_samples(num_samples)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    if max_blocks is not None and (not isinstance(max_blocks, int) or max_blocks < 1):
        raise ValueError(f"max_blocks must be an int >= 1 or None, got {max_blocks!r}")
    return M


def _rows(lm: Any, dataset: Any, tokenizer: Any, length: Optional[int], split: Optional[str], rule: Optional[str],
          max_blocks: Optional[int], read: Dict[str, Any]) -> _Rows:
    """The rows of a dataset name, a TokenBlocks or a [n, length] tensor (module docstring)."""
    tok_desc = None
    if isinstance(dataset, str):
        if tokenizer is None:
            raise ValueError("give the tokenizer that turns the dataset's text into the model's ids")
        if length is None:
            raise ValueError("give the row length (length=d)")
        tok = load_tokenizer(tokenizer)
        tok_desc = describe_tokenizer(tok)
        blocks, data_desc = dataset_blocks(dataset, tok, length, split, rule, **read)
        key = dataset
    elif isinstance(dataset, TokenBlocks):
        blocks, key = dataset, "token_blocks"
        data_desc = {"name": key, "rule": blocks.rule, "detokenization": "given pre-tokenized"}
        tok_desc = describe_tokenizer(blocks.tokenizer)
    elif isinstance(dataset, Tensor):
        if dataset.dim() != 2:
            raise ValueError(f"a tensor dataset must be [n, length], got {tuple(dataset.shape)}")
        blocks, key = None, "tensor"
        data_desc = {"name": key, "rule": None, "detokenization": "given pre-tokenized"}
        if tokenizer is not None:
            tok_desc = describe_tokenizer(load_tokenizer(tokenizer))
    else:
        raise TypeError(f"dataset must be a name, a TokenBlocks or a LongTensor, got {type(dataset).__name__}")
    if blocks is not None:
        blocks.check(lm.process.vocab_size)
        ids, att, summary = blocks.ids, blocks.attention, blocks.summary()
    else:
        ids = dataset.long()
        att = torch.ones_like(ids, dtype=torch.bool)
        summary = {"blocks": ids.shape[0], "length": ids.shape[1]}
    if max_blocks is not None:
        ids, att = ids[:max_blocks], att[:max_blocks]
    if ids.shape[0] == 0:
        raise ValueError(f"{key}: no rows to score (the data is shorter than one row of {ids.shape[1]} tokens?)")
    return _Rows(key, ids, att, summary, data_desc, tok_desc)


def _result(bound: Dict[str, Any]) -> Dict[str, Any]:
    """The per-dataset numbers from corpus_bound's (stderr None: no error estimate, M = 1)."""
    nll = bound["nll_per_token"]
    return {
        "nll": nll,
        "ppl": bound["ppl"],
        "stderr": bound["stderr_per_token"],
        "ppl_low": bound["ppl_low"],
        "ppl_high": bound["ppl_high"],
        "tokens": bound["tokens"],
        "nll_total": bound["nll_total"],
        "stderr_total": bound["stderr_total"],
        "bits_per_token": nll / math.log(2),
        "rows": bound["rows"],
        "exact": bound["exact"],
        "terms": bound["terms"],
    }


def evaluate_likelihood(
    lm: Any,
    dataset: Union[str, Any],
    tokenizer: Any = None,
    length: Optional[int] = None,
    split: Optional[str] = None,
    num_samples: int = 16,
    batch_size: int = 8,
    seed: int = 0,
    rule: Optional[str] = None,
    max_blocks: Optional[int] = None,
    progress: bool = True,
    *,
    field: str = "text",
    files: Optional[str] = None,
    unit: str = "file",
    exact_causal: bool = True,
) -> Dict[str, Any]:
    """NLL upper bound and perplexity of ``lm`` on ``dataset`` (module docstring for every rule).

    dataset: a name (:func:`known_datasets`; unknown -> ValueError listing them), a
    ``TokenBlocks``, or a [n, length] LongTensor of token ids. tokenizer: anything
    ``load_tokenizer`` takes (needed for names). length: the row length (names only; a tensor's
    own width otherwise). split: None -> the dataset's own default ("test" for the named sets
    and sources with named splits, "all" for a local file or folder without them). field /
    files / unit: how a local or ``hf:`` source is read (:mod:`diffusionlm.data.sources`).
    num_samples: M >= 1 model evaluations per row (an autoregressive composition takes its
    exact one-forward path, :mod:`.causal`, unless exact_causal=False). max_blocks: score only
    the first rows. Returns ``{"results": {dataset: {...}}, "config": {...}}``.
    """
    check_likelihood(lm)
    M = _check_settings(num_samples, batch_size, max_blocks)
    rows = _rows(lm, dataset, tokenizer, length, split, rule, max_blocks, {"field": field, "files": files, "unit": unit})
    bound = corpus_bound(lm, rows.ids, M, batch_size=batch_size, seed=seed, progress=progress, count=rows.attention,
                         desc=f"NLL bound {rows.key}", exact_causal=exact_causal)
    config = {
        **lm_config(lm),
        "num_samples": M,
        "estimator": bound["method"],
        "seed": seed,
        "seeding": "row i uses torch.Generator().manual_seed(sha1(f'{seed}:{i}')) (batch-size independent)",
        "length": int(rows.ids.shape[1]),
        "split": rows.data.get("split"),
        "rule": rows.data.get("rule"),
        "pad_positions": "corrupted as in training; not counted (rule='pad')",
        "dataset": rows.data,
        "detokenization": rows.data.get("detokenization"),
        "blocks": rows.summary,
        "max_blocks": max_blocks,
        "batch_size": batch_size,
        "tokenizer": rows.tokenizer,
    }
    return {"results": {rows.key: _jsonable(_result(bound))}, "config": _jsonable(config)}
