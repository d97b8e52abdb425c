"""Diversity of generated samples: unigram entropy, distinct-n, MAUVE.

The token unit is whatever ids are passed in: ``sample_and_judge`` reports the entropy on the
GENERATOR's token ids (its tokenizer's; MDLM / ReMDM compute it on GPT-2 ids, which for a GPT-2
tokenized generator is the same thing) and also on the judge's ids, and distinct-2 on the
generator's ids. Text can be given with a tokenizer, which then defines the unit.

* ``unigram_entropy``: per sample, H = -sum_v c_v/n log(c_v/n) over the sample's n tokens
  (c_v: count of id v), in nats; the mean over samples (a sample of 0 tokens is refused).
  A sample that repeats one token has entropy 0; n distinct tokens give log n.
* ``distinct_n``: the number of distinct n-grams over all samples divided by the total number
  of n-grams (n-grams never cross a sample boundary), pooled over the whole sample set
  (``per_sample=True``: the mean of each sample's own ratio). 1 = no n-gram repeats.
* ``mauve_score``: MAUVE (Pillutla et al. 2021) through the optional ``mauve-text`` package
  (``pip install mauve-text``, or the ``eval`` extra); without it an ImportError says so.
  Its default featurizer downloads gpt2-large: offline, pass ``p_features`` / ``q_features``.
"""
from __future__ import annotations

import math
from collections import Counter
from typing import Any, List, Optional, Sequence

import torch

from ..data import load_tokenizer

__all__ = ["unigram_entropy", "distinct_n", "mauve_score", "as_id_lists"]


def as_id_lists(samples: Any, tokenizer: Any = None) -> List[List[int]]:
    """Samples as lists of ids: a [S, d] tensor, a list of id lists, or texts with a tokenizer."""
    if isinstance(samples, torch.Tensor):
        if samples.dim() != 2:
            raise ValueError(f"a tensor of samples must be [S, d], got {tuple(samples.shape)}")
        return samples.tolist()
    if isinstance(samples, str):
        raise TypeError("give a sequence of samples, not one string")
    out = []
    tok = None
    for s in samples:
        if isinstance(s, str):
            if tokenizer is None:
                raise ValueError("text samples need a tokenizer (it defines the token unit)")
            if tok is None:
                tok = load_tokenizer(tokenizer)
            out.append(list(tok.encode(s)))
        else:
            out.append([int(t) for t in (s.tolist() if hasattr(s, "tolist") else s)])
    return out


def unigram_entropy(samples: Any, tokenizer: Any = None) -> float:
    """Mean over samples of each sample's unigram entropy (nats; module docstring)."""
    rows = as_id_lists(samples, tokenizer)
    if not rows:
        raise ValueError("no samples")
    hs = []
    for i, r in enumerate(rows):
        if not r:
            raise ValueError(f"sample {i} has no tokens: its unigram entropy is undefined")
        n = len(r)
        hs.append(-sum(c / n * math.log(c / n) for c in Counter(r).values()))
    return float(sum(hs) / len(hs))


def _ngrams(r: Sequence[int], n: int) -> List[tuple]:
    return [tuple(r[i : i + n]) for i in range(len(r) - n + 1)]


def distinct_n(samples: Any, n: int = 2, tokenizer: Any = None, per_sample: bool = False) -> float:
    """Distinct n-grams / all n-grams, pooled over samples (module docstring)."""
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be an int >= 1, got {n!r}")
    rows = as_id_lists(samples, tokenizer)
    grams = [_ngrams(r, n) for r in rows]
    if per_sample:
        vals = [len(set(g)) / len(g) for g in grams if g]
        if not vals:
            raise ValueError(f"no sample has {n} tokens")
        return float(sum(vals) / len(vals))
    total = sum(len(g) for g in grams)
    if total == 0:
        raise ValueError(f"no sample has {n} tokens")
    return float(len(set(x for g in grams for x in g)) / total)


def mauve_score(
    p_texts: Optional[Sequence[str]] = None,
    q_texts: Optional[Sequence[str]] = None,
    **kwargs: Any,
) -> float:
    """MAUVE between reference texts p and generated texts q (``mauve.compute_mauve``; extra
    keyword arguments are passed through, e.g. ``p_features=``, ``q_features=``, ``device_id=``,
    ``max_text_length=``, ``featurize_model_name=``)."""
    try:
        import mauve  # type: ignore
    except ImportError as err:
        raise ImportError(
            "mauve_score needs the optional package mauve-text: pip install mauve-text "
            "(or pip install 'diffusionlm[eval]')"
        ) from err
    if p_texts is not None:
        kwargs["p_text"] = list(p_texts)
    if q_texts is not None:
        kwargs["q_text"] = list(q_texts)
    out = mauve.compute_mauve(**kwargs)
    return float(out.mauve)
