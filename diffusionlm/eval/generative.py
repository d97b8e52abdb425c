"""Generative perplexity: how surprised an external causal LM (the judge) is by generated text.

    res = generative_perplexity(texts, judge_model, judge_tokenizer, batch_size=8)
    res["gen_ppl"]                      # exp(total judge NLL / total judged tokens)

    res = sample_and_judge(lm, "mdlm", tokenizer, num_samples=64, length=128,
                           judge_model="path/to/gpt2-large", seed=0)
    res["results"]["float64"]["gen_ppl"], res["results"]["float32"]["gen_ppl"]

Definitions (hyperschedules paper, appendix C.2, Algorithm 2; docs/EVALUATION.md):

* **Retokenization.** Each sample's TEXT is encoded with the JUDGE's tokenizer (no special tokens
  added). A judge that cannot represent the text is refused with ValueError naming the sample:
  an unknown-token id in the encoding (e.g. BERT's [UNK] for an emoji), an empty encoding of a
  non-empty sample, or an id outside the judge model's vocabulary.
* **Scored tokens.** The judge's BOS (``bos_token_id``; GPT-2: ``<|endoftext|>``) is put in
  front, so every token of the sample is predicted and scored (``prepend_bos=False``, or a judge
  without BOS: the first token is context only and not scored).
* **Gen PPL** = exp(sum over samples and scored tokens of -log p_judge(token | prefix) / number
  of scored tokens): TOKEN-WEIGHTED. This is not the average of per-sample perplexities (the
  reference code's definition, which overweights short samples); ``mean_sample_ppl`` is reported
  beside it only for comparison with numbers published that way.
* **Long samples** are scored in sliding WINDOWS, never truncated: with context C
  (``max_length``, default the judge's ``n_positions`` / ``max_position_embeddings``) and stride
  S (default C // 2), windows start at 0, S, 2S, ... and each scores the tokens not yet scored
  that it holds, so every token is scored exactly once, with at least C - S tokens of context
  once the first window is full.
* **Judge.** Any Hugging Face causal LM object (with its tokenizer), or any kind of model by name
  (:func:`diffusionlm.io.hub.load_judge`: an HF directory or hub id as it is; a run directory or
  saved composition trained as AR, Absorb + Quench SHIFTED, read causally); its own tokenizer
  unless one is given.
* **fp64 vs fp32 sampling.** ``sample_and_judge`` draws the samples with the sampler's
  categorical draws in each of ``dtypes`` (float64 is the toolkit's default; float32 truncates
  the low-probability tail and flatters gen PPL, Zheng et al. 2024), from the same seed, and
  reports both side by side, with unigram entropy and distinct-2 of each sample set.
"""
from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

from ..data import load_tokenizer
from ..samplers import get_sampler
from ..specs import provided
from .diversity import distinct_n, unigram_entropy
from .likelihood import _jsonable, describe_model, describe_tokenizer, lm_config

__all__ = ["generative_perplexity", "sample_and_judge", "load_judge", "judge_encode", "score_windows"]


# ----------------------------------------------------------------------------------------------
# the judge

def load_judge(judge_model: Any, judge_tokenizer: Any = None) -> Tuple[Any, Any]:
    """(model, HF-style tokenizer) from an object or a local directory (see the module docstring)."""
    if isinstance(judge_model, (str, Path)):  # any kind of model (diffusionlm.io.hub.load_judge)
        model, own = provided("load_judge")(judge_model)  # the io layer's loader, late-bound
        if judge_tokenizer is None:
            judge_tokenizer = own
    else:
        model = judge_model
    if judge_tokenizer is None:
        raise ValueError("give the judge's tokenizer (judge_tokenizer=...) with a judge model object")
    if isinstance(judge_tokenizer, (str, Path)):
        judge_tokenizer = load_tokenizer(str(judge_tokenizer))
    tok = getattr(judge_tokenizer, "hf", judge_tokenizer)  # unwrap diffusionlm.data.HFTokenizer
    model.eval()
    return model, tok


def _encode(tok: Any, text: str) -> List[int]:
    if hasattr(tok, "__call__") and hasattr(tok, "convert_ids_to_tokens"):  # a Hugging Face tokenizer
        return list(tok(text, add_special_tokens=False)["input_ids"])
    return list(tok.encode(text))


def _judge_vocab(model: Any) -> Optional[int]:
    cfg = getattr(model, "config", None)
    emb = getattr(model, "get_input_embeddings", None)
    if callable(emb):
        try:
            return int(emb().weight.shape[0])
        except Exception:  # pragma: no cover - unusual embeddings
            pass
    return getattr(cfg, "vocab_size", None)


def _bos_id(tok: Any) -> Optional[int]:
    for attr in ("bos_token_id", "bos_id"):
        v = getattr(tok, attr, None)
        if isinstance(v, int):
            return v
    return None


def judge_encode(texts: Sequence[str], judge_tokenizer: Any, judge_vocab: Optional[int] = None) -> List[List[int]]:
    """The judge's ids of each text; ValueError naming the sample when the judge's tokenizer
    cannot represent it (unknown tokens, empty encoding of a non-empty text, ids outside the judge)."""
    tok = getattr(judge_tokenizer, "hf", judge_tokenizer)
    unk = getattr(tok, "unk_token_id", None)
    unk_str = getattr(tok, "unk_token", None)
    bos = _bos_id(tok)
    out = []
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"sample {i} is a {type(text).__name__}, not text: decode samples before judging")
        ids = _encode(tok, text)
        if not ids and text:
            raise ValueError(
                f"the judge's tokenizer cannot retokenize sample {i}: {text[:40]!r} (non-empty) encodes to no "
                "tokens; use a judge whose tokenizer represents the text (e.g. byte-level BPE as GPT-2's)"
            )
        # an UNK id that is also BOS/EOS (GPT-2's <|endoftext|>) is a real token, not a failure
        if unk is not None and unk != bos and unk in ids:
            n = ids.count(unk)
            raise ValueError(
                f"the judge's tokenizer cannot retokenize sample {i}: {n} unknown token(s) {unk_str!r} in the "
                f"encoding of {text[:40]!r}; the judge would score its own [UNK] instead of the text. Use a judge "
                "whose tokenizer represents every character (byte-level BPE as GPT-2's)"
            )
        if judge_vocab is not None and ids and max(ids) >= judge_vocab:
            raise ValueError(
                f"sample {i}: the judge's tokenizer gives id {max(ids)} but the judge model has {judge_vocab} "
                "embeddings: tokenizer and model do not match"
            )
        out.append(ids)
    return out


def _context_size(model: Any) -> Optional[int]:
    cfg = getattr(model, "config", None)
    for attr in ("n_positions", "max_position_embeddings", "n_ctx", "max_sequence_length", "seq_length"):
        v = getattr(cfg, attr, None)
        if isinstance(v, int) and v > 0:
            return v
    return None


def windows(n: int, context: int, stride: int) -> List[Tuple[int, int, int]]:
    """(begin, end, first_scored) windows over a sequence of n ids: tokens [first_scored, end)
    are predicted from the ids [begin, j); every position 1..n-1 is scored exactly once."""
    out = []
    prev_end = 1  # position 0 has no prefix: never scored
    begin = 0
    while prev_end < n:
        end = min(begin + context, n)
        first = max(prev_end, begin + 1)
        if first < end:
            out.append((begin, end, first))
            prev_end = end
        if end == n:
            break
        begin += stride
    return out


@torch.no_grad()
def score_windows(
    model: Any, seqs: Sequence[Sequence[int]], context: int, stride: int, batch_size: int, pad_id: int = 0
) -> List[Tuple[float, int]]:
    """(summed NLL, scored tokens) of each id sequence under the causal LM `model`, windowed."""
    jobs = []  # (seq index, ids of the window, first scored offset in the window)
    for s, ids in enumerate(seqs):
        for begin, end, first in windows(len(ids), context, stride):
            jobs.append((s, list(ids[begin:end]), first - begin))
    totals = [[0.0, 0] for _ in seqs]
    dev = next(iter(model.parameters())).device if hasattr(model, "parameters") else torch.device("cpu")
    jobs.sort(key=lambda j: -len(j[1]))  # similar lengths together: less padding
    for i in range(0, len(jobs), batch_size):
        chunk = jobs[i : i + batch_size]
        L = max(len(j[1]) for j in chunk)
        ids = torch.full((len(chunk), L), pad_id, dtype=torch.long)
        att = torch.zeros(len(chunk), L, dtype=torch.long)
        for r, (_, w, _) in enumerate(chunk):
            ids[r, : len(w)] = torch.tensor(w)
            att[r, : len(w)] = 1
        ids, att = ids.to(dev), att.to(dev)
        logits = model(input_ids=ids, attention_mask=att).logits
        logp = torch.log_softmax(logits[:, :-1].float(), -1)
        tok_lp = logp.gather(-1, ids[:, 1:, None]).squeeze(-1).double().cpu()  # [n, L-1]: predicts ids[:, 1:]
        for r, (s, w, first) in enumerate(chunk):
            scored = tok_lp[r, first - 1 : len(w) - 1]
            totals[s][0] -= float(scored.sum())
            totals[s][1] += int(scored.numel())
    return [(a, b) for a, b in totals]


def generative_perplexity(
    texts: Sequence[str],
    judge_model: Any,
    judge_tokenizer: Any = None,
    batch_size: int = 8,
    max_length: Optional[int] = None,
    stride: Optional[int] = None,
    prepend_bos: bool = True,
) -> Dict[str, Any]:
    """Token-weighted generative perplexity of `texts` under the judge (module docstring)."""
    if isinstance(texts, str):
        raise TypeError("texts must be a sequence of samples, not one string")
    texts = list(texts)
    if not texts:
        raise ValueError("no samples to judge")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    model, tok = load_judge(judge_model, judge_tokenizer)
    ids = judge_encode(texts, tok, _judge_vocab(model))
    bos = _bos_id(tok) if prepend_bos else None
    seqs = [([bos] if bos is not None else []) + x for x in ids]
    C = max_length or _context_size(model)
    if C is None:
        raise ValueError("the judge states no context length: give max_length")
    if C < 2:
        raise ValueError(f"max_length must be >= 2, got {C}")
    S = stride or max(1, C // 2)
    if not 1 <= S <= C - 1:
        raise ValueError(f"stride must lie in [1, {C - 1}], got {S}")
    pad = getattr(tok, "pad_token_id", None)
    pad = pad if isinstance(pad, int) else (bos if bos is not None else 0)
    per = score_windows(model, seqs, C, S, batch_size, pad)
    total_nll = sum(a for a, _ in per)
    total_tok = sum(b for _, b in per)
    if total_tok == 0:
        raise ValueError("no token was scored: samples of one token need prepend_bos=True and a judge with BOS")
    nll = total_nll / total_tok
    sample_ppl = [math.exp(a / b) for a, b in per if b > 0]
    return _jsonable({
        "gen_ppl": math.exp(nll),
        "nll": nll,
        "tokens": total_tok,
        "samples": len(texts),
        "mean_sample_ppl": sum(sample_ppl) / len(sample_ppl),
        "per_sample": [{"nll": a, "tokens": b} for a, b in per],
        "judge": describe_model(model),
        "judge_tokenizer": repr(tok)[:200],
        "context": C,
        "stride": S,
        "windowed_samples": sum(1 for s in seqs if len(s) > C),
        "prepend_bos": bos is not None,
        "definition": "exp(sum of judge NLL over all scored tokens / number of scored tokens) (token-weighted)",
    })


# ----------------------------------------------------------------------------------------------
# sampling, then judging

def _decode(tokenizer: Any, ids: List[int], skip_special_tokens: bool) -> str:
    try:
        return tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)
    except TypeError:
        return tokenizer.decode(ids)


def _sampler_with_dtype(sampler: Any, sampler_kwargs: Optional[dict]) -> Any:
    """The sampler (built from its registry name and `sampler_kwargs`, or given), which must have
    a categorical `dtype` field for fp64 / fp32 to be compared."""
    if isinstance(sampler, str):
        sampler = get_sampler(sampler)(**(sampler_kwargs or {}))
    elif sampler_kwargs:
        raise ValueError("sampler_kwargs go with a sampler name, not an instance")
    if not dataclasses.is_dataclass(sampler) or "dtype" not in {f.name for f in dataclasses.fields(sampler)}:
        raise ValueError(f"{type(sampler).__name__} has no categorical `dtype` option: fp64 / fp32 cannot be compared")
    return sampler


def sample_and_judge(
    lm: Any,
    sampler: Any,
    tokenizer: Any,
    num_samples: int,
    length: int,
    judge_model: Any,
    judge_tokenizer: Any = None,
    *,
    dtypes: Sequence[torch.dtype] = (torch.float64, torch.float32),
    seed: int = 0,
    batch_size: int = 8,
    judge_batch_size: int = 8,
    max_length: Optional[int] = None,
    sampler_kwargs: Optional[dict] = None,
    skip_special_tokens: bool = True,
) -> Dict[str, Any]:
    """Draw `num_samples` unconditional samples of `length` tokens per categorical dtype, decode
    them with `tokenizer` (special tokens dropped unless skip_special_tokens=False), and report
    the judge's gen PPL, unigram entropy and distinct-2 per dtype.

    sampler: a registry name (``get_sampler(name)(**sampler_kwargs)``) or a sampler instance; it
    must have a ``dtype`` field (MDLM, ACS, SEDD, AR). Every dtype starts from
    ``torch.Generator().manual_seed(seed)``, so the two sample sets share their random numbers.
    Entropy and distinct-2 are computed on the GENERATOR's token ids (`tokenizer`'s), and the
    entropy also on the judge's ids (``unigram_entropy_judge``).
    """
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError(f"num_samples must be an int >= 1, got {num_samples!r}")
    sampler = _sampler_with_dtype(sampler, sampler_kwargs)
    dtypes = list(dtypes)
    if not dtypes:
        raise ValueError("give at least one dtype")
    tok = load_tokenizer(tokenizer)
    model, jtok = load_judge(judge_model, judge_tokenizer)
    results: Dict[str, Any] = {}
    for dt in dtypes:
        s = dataclasses.replace(sampler, dtype=dt)
        g = torch.Generator().manual_seed(seed)
        rows, seconds = [], 0.0
        for i in range(0, num_samples, batch_size):
            n = min(batch_size, num_samples - i)
            out = s.sample(lm, batch_size=n, length=length, generator=g)
            rows.extend(out.tokens.cpu().tolist())
            seconds += out.seconds
        texts = [_decode(tok, r, skip_special_tokens) for r in rows]
        gp = generative_perplexity(texts, model, jtok, batch_size=judge_batch_size, max_length=max_length)
        jids = judge_encode(texts, jtok)
        name = str(dt).replace("torch.", "")
        results[name] = {
            "gen_ppl": gp["gen_ppl"],
            "nll": gp["nll"],
            "judged_tokens": gp["tokens"],
            "mean_sample_ppl": gp["mean_sample_ppl"],
            "unigram_entropy": unigram_entropy(rows),
            "unigram_entropy_judge": unigram_entropy(jids),
            "distinct_2": distinct_n(rows, 2),
            "sampling_seconds": seconds,
            "samples": texts,
        }
    config = {
        **lm_config(lm),
        "sampler": _jsonable(sampler.to_dict() if hasattr(sampler, "to_dict") else repr(sampler)),
        "dtypes": [str(d).replace("torch.", "") for d in dtypes],
        "num_samples": num_samples,
        "length": length,
        "seed": seed,
        "seeding": "each dtype samples from torch.Generator().manual_seed(seed), batch by batch",
        "batch_size": batch_size,
        "tokenizer": describe_tokenizer(tok),
        "skip_special_tokens": skip_special_tokens,
        "judge": describe_model(model),
        "judge_tokenizer": repr(jtok)[:200],
        "entropy_unit": "nats; unigram_entropy over the generator's token ids, unigram_entropy_judge over the judge's",
        "gen_ppl": "token-weighted: exp(total judge NLL / judged tokens), judge BOS prepended",
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    return {"results": _jsonable(results), "config": _jsonable(config)}
