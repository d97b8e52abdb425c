"""The adaptation corpus of the SmolLM2 recipes: English news, Shakespeare and Python, none of it
an evaluation split the SmolLM2 report scores (those are WikiText-2 and LAMBADA); or the base's own
samples (``--mix base-samples``, self-distillation, no evaluation text at all).

    python scripts/smollm2_data.py [--out runs/smollm2-data/train.jsonl] [--stdlib-chars 1500000]
    python scripts/smollm2_data.py --mix base-samples --tokens 150000 --out runs/smollm2-selfdistil/train.jsonl
    python scripts/smollm2_data.py --mix english+base-samples --base-samples runs/smollm2-selfdistil/train.jsonl \
        --out runs/smollm2-blend/train.jsonl

Writes one JSONL row per document ({"text", "source"}), shuffled with a fixed seed, so that the
JSONL rule of `diffusionlm.data.load_corpus` (rows split 90 / 5 / 5 in file order) gives a
train / validation / test split mixing the three sources:

* ``ag_news``: every row of the stored AG News file (title + " " + description, 7600 rows; only
  the test csv is stored offline, and AG News is not a reported evaluation set here);
* ``tinyshakespeare``: the train part (the first 90% of its paragraphs), one row per paragraph;
* ``stdlib``: train files of the standard-library corpus in sha1(path) order until
  ``--stdlib-chars`` characters (the whole corpus, 12 MB, would drown the English).

Prints the documents and tokens per source (by the sampled model's tokenizer for base-samples, else SmolLM2's when fetched).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import random
import sys
from pathlib import Path


def english_rows() -> list:
    """The block-diffusion recipe's English-only mix (recipes/smollm2-block.json): AG News and the
    stored LM1B heldout sentences (detokenized), grouped 8 sentences to a document; shuffled with a
    fixed seed. LM1B is one of the suite's zero-shot sets: a model trained on this mix must not be
    scored on LM1B (its card says so)."""
    from diffusionlm.data import load_corpus

    rows = [{"text": t, "source": "ag_news"} for t in load_corpus("ag_news", "test")]
    lines = load_corpus("lm1b", "test")
    rows += [{"text": " ".join(lines[i : i + 8]), "source": "lm1b"} for i in range(0, len(lines), 8)]
    random.Random(0).shuffle(rows)
    return rows


def base_sample_rows(model, tokenizer, tokens: int, batch: int = 48, max_new: int = 256, seed: int = 0,
                     progress: bool = True) -> list:
    """Self-distillation data: documents sampled from the base causal LM itself, x ~ p_base, from its
    BOS token, temperature 1, no top-k / top-p, each document ending at the model's own EOS or at
    ``max_new`` tokens, until at least ``tokens`` tokens of text (special tokens dropped). Training
    on them makes the loss's minimiser the base's own joint, E_{x ~ p_base}[-log q(x)] =
    KL(p_base || q) + H(p_base), so every conditional the diffusion model learns (any order, any
    gap) is one of the same distribution's, instead of the AR ones being the base's and the others
    the adaptation corpus's."""
    import torch
    from tqdm import tqdm

    if tokens <= 0 or batch <= 0 or max_new <= 0:
        raise ValueError(f"tokens, batch and max_new must be positive (got {tokens}, {batch}, {max_new})")
    start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    if start is None:
        raise ValueError("the tokenizer has neither a BOS nor an EOS token to start a document from")
    eos = tokenizer.eos_token_id
    special = set(getattr(tokenizer, "all_special_ids", ()) or ()) | {start}
    gen = torch.Generator().manual_seed(seed)
    rows, total = [], 0
    bar = tqdm(total=tokens, unit="tok", desc="base samples", disable=not progress)
    model.eval()
    while total < tokens:
        # `generate` samples from the global RNG: seed it per batch from one generator (the corpus is a
        # function of `seed`) inside fork_rng, so the caller's RNG state is left as it was
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            torch.manual_seed(int(torch.randint(0, 2**62, (1,), generator=gen)))
            ids = torch.full((batch, 1), start, dtype=torch.long)
            out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=True, temperature=1.0,
                                 top_k=0, top_p=1.0, max_new_tokens=max_new, pad_token_id=eos if eos is not None else start)
        before = total
        for row in out[:, 1:].tolist():
            if eos is not None and eos in row:
                row = row[: row.index(eos)]
            row = [t for t in row if t not in special]  # a chat marker mid-document is not text
            text = tokenizer.decode(row).strip()
            if text:
                rows.append({"text": text, "source": "base_samples"})
                total += len(row)
                bar.update(len(row))
        if total == before:  # a model that only ever ends at once would loop here for ever
            raise ValueError(f"all {batch} documents of a batch ended before their first token of text "
                             "(the model samples EOS or special tokens only): no corpus to build from it")
    bar.close()
    return rows


def blend_rows(samples: list, news: list, count, seed: int = 0, news_ratio: float = 1.0) -> list:
    """Every row of ``samples`` (the base's own documents) and the leading rows of ``news`` (already
    shuffled) until their tokens reach ``news_ratio`` times the samples' (``count(text)`` is a
    document's token count; 1.0: half and half), shuffled together with a fixed seed so the JSONL split's 90% training
    part draws from both. The news rows are whole documents, so the news side ends within one
    document of the samples' total."""
    if not news_ratio > 0:
        raise ValueError(f"news_ratio must be positive (got {news_ratio})")
    have = sum(count(r["text"]) for r in samples)
    if have == 0:
        raise ValueError("the base-samples file holds no text to blend with")
    target = news_ratio * have
    taken, total = [], 0
    for r in news:
        if total >= target:
            break
        taken.append(r)
        total += count(r["text"])
    if total < target:
        raise ValueError(f"the news corpus has {total} tokens, fewer than the {target:g} the blend needs "
                         f"({news_ratio:g} x the base samples' {have})")
    rows = list(samples) + taken
    random.Random(seed).shuffle(rows)
    return rows


def read_rows(path: str) -> list:
    """A JSONL corpus this script wrote (one {"text", "source"} object a line), read by the data
    package's own JSONL reader (a missing file and a line that is not JSON named there)."""
    from diffusionlm.data.corpus import _read_jsonl

    rows = []
    for i, r in enumerate(_read_jsonl(Path(path)), 1):
        if not isinstance(r, dict) or not isinstance(r.get("text"), str):
            raise ValueError(f"{path}:{i}: a row must be an object with a text string")
        rows.append({"text": r["text"], "source": r.get("source", "base_samples")})
    return rows


def build_rows(stdlib_chars: int) -> list:
    from diffusionlm.data import load_corpus, stdlib_files

    rows = [{"text": t, "source": "ag_news"} for t in load_corpus("ag_news", "test")]
    rows += [{"text": t, "source": "tinyshakespeare"} for t in load_corpus("tinyshakespeare", "train", unit="paragraph")]
    files = stdlib_files("train")
    texts = load_corpus("stdlib", "train")
    order = sorted(range(len(files)), key=lambda i: hashlib.sha1(files[i].encode()).hexdigest())
    total = 0
    for i in order:
        if total >= stdlib_chars:
            break
        rows.append({"text": texts[i], "source": "stdlib"})
        total += len(texts[i])
    random.Random(0).shuffle(rows)
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="runs/smollm2-data/train.jsonl")
    ap.add_argument("--stdlib-chars", type=int, default=1_500_000)
    ap.add_argument("--mix", choices=("news-shakespeare-python", "english", "base-samples", "english+base-samples"),
                    default="news-shakespeare-python",
                    help="english: AG News + LM1B heldout only (the block-diffusion recipe's data); "
                         "base-samples: documents sampled from --model itself (self-distillation); "
                         "english+base-samples: a --base-samples file and as many english tokens, shuffled together")
    ap.add_argument("--base-samples", help="english+base-samples: the base-samples JSONL to blend")
    ap.add_argument("--news-ratio", type=float, default=1.0,
                    help="english+base-samples: english tokens per base-sample token (1: half and half)")
    ap.add_argument("--model", default="smollm2", help="base-samples: the causal LM to sample (name or folder)")
    ap.add_argument("--tokens", type=int, default=150_000, help="base-samples: at least this many tokens")
    ap.add_argument("--batch", type=int, default=48)
    ap.add_argument("--max-new", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    from diffusionlm.io.fetch import load_causal_lm, load_hf_tokenizer

    tok = None
    if args.mix == "base-samples":
        try:
            tok = load_hf_tokenizer(args.model)
            rows = base_sample_rows(load_causal_lm(args.model), tok, args.tokens, args.batch, args.max_new, args.seed)
        except (ValueError, OSError) as e:  # a bad size, an unknown or missing model: one line, not a traceback
            ap.error(str(e))
    elif args.mix == "english+base-samples":
        if not args.base_samples:
            ap.error("--mix english+base-samples needs --base-samples FILE")
        try:
            samples = read_rows(args.base_samples)
            tok = load_hf_tokenizer(args.model)
            rows = blend_rows(samples, english_rows(), lambda t: len(tok.encode(t, add_special_tokens=False)),
                              news_ratio=args.news_ratio)
        except (ValueError, OSError) as e:
            ap.error(str(e))
    else:
        rows = english_rows() if args.mix == "english" else build_rows(args.stdlib_chars)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    with open(tmp, "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    tmp.replace(out)
    stats = {}
    try:  # tokens by the sampled model's own tokenizer, else SmolLM2's when fetched
        tok = tok or load_hf_tokenizer("smollm2")
        count = lambda t: len(tok.encode(t, add_special_tokens=False))  # noqa: E731
    except ValueError:
        count = None
    for r in rows:
        s = stats.setdefault(r["source"], {"documents": 0, "characters": 0, "tokens": 0})
        s["documents"] += 1
        s["characters"] += len(r["text"])
        if count is not None:
            s["tokens"] += count(r["text"])
    print(json.dumps({"out": str(out), "rows": len(rows), "sources": stats}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
