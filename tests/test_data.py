"""diffusionlm.data: tokenizers, corpora, blocks / batch streams, instruction data.

Reads the real offline files in $DIFFUSIONLM_DATA (default ../shared/data beside the checkout);
nothing is downloaded. Expected counts were verified against the files themselves (and are
re-derived from the raw bytes here where that is cheap).
"""
from __future__ import annotations

import json
import os
import random
import sys
from pathlib import Path

import pytest
import torch

from diffusionlm.data import (
    DATASETS,
    BatchStream,
    ByteTokenizer,
    HFTokenizer,
    InstructionCollator,
    SequenceTooLong,
    TokenBlocks,
    as_tokenizer,
    check_vocab,
    data_dir,
    describe_datasets,
    format_instruction,
    format_instructions,
    hf_dataset,
    load_corpus,
    load_tokenizer,
    stdlib_files,
    templated_prompt,
    train_bpe,
)
from diffusionlm.data import corpus as corpus_mod
from diffusionlm.data.paths import ENV_VAR, repo_root

DATA = data_dir()

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m.role }}|>\n{{ m.content }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


@pytest.fixture(scope="module")
def gpt2():
    return load_tokenizer(DATA / "tokenizers" / "gpt2")


@pytest.fixture(scope="module")
def chat_gpt2():
    tok = load_tokenizer(DATA / "tokenizers" / "gpt2")
    tok.hf.chat_template = CHAT_TEMPLATE
    return tok


@pytest.fixture(scope="module")
def gsm8k():
    with open(DATA / "gsm8k" / "test.jsonl", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


# ---------------------------------------------------------------------------------------------
# paths

def test_data_dir_default_and_env(monkeypatch, tmp_path):
    monkeypatch.delenv(ENV_VAR, raising=False)
    assert data_dir() == (repo_root() / ".." / "shared" / "data").resolve()
    assert (repo_root() / "diffusionlm" / "data" / "corpus.py").is_file()
    monkeypatch.setenv(ENV_VAR, str(tmp_path))
    assert data_dir() == tmp_path.resolve()
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "ptb" / "ptb.test.txt")):
        load_corpus("ptb", "test")


# ---------------------------------------------------------------------------------------------
# stdlib corpus

def test_stdlib_corpus_offline_disjoint_deterministic():
    splits = {s: stdlib_files(s) for s in ("train", "validation", "test")}
    allf = stdlib_files("all")
    sets = {s: set(v) for s, v in splits.items()}
    assert not (sets["train"] & sets["validation"]) and not (sets["train"] & sets["test"])
    assert not (sets["validation"] & sets["test"])
    assert sets["train"] | sets["validation"] | sets["test"] == set(allf)
    assert len(allf) > 300 and len(splits["validation"]) >= 1 and len(splits["test"]) >= 1
    assert len(splits["train"]) > 0.9 * len(allf)
    excluded = corpus_mod.STDLIB_EXCLUDED_DIRS
    assert not any(set(p.split("/")[:-1]) & excluded for p in allf)
    assert all(p.endswith(".py") for p in allf) and allf == sorted(allf)
    # the split of a file depends only on its relative path
    for s, files in splits.items():
        assert all(corpus_mod.hash_split(p) == s for p in files)

    train = load_corpus("stdlib", "train")
    assert len(train) == len(splits["train"]) and sum(map(len, train)) > 2_000_000
    val = load_corpus("stdlib", "validation")
    assert sum(map(len, val)) > 10_000
    assert load_corpus("stdlib", "valid") == val  # alias
    assert load_corpus() == train  # the default corpus is stdlib/train
    assert "def " in "".join(val)


def test_stdlib_listing_independent_of_filesystem_order(monkeypatch):
    root = corpus_mod._stdlib_root()
    forward = corpus_mod._scan_python_files(root)
    real_walk = os.walk

    def reversed_walk(top, *a, **k):
        for dirpath, dirnames, filenames in real_walk(top, *a, **k):
            dirnames.reverse()
            yield dirpath, dirnames, list(reversed(filenames))

    monkeypatch.setattr(corpus_mod.os, "walk", reversed_walk)
    assert corpus_mod._scan_python_files(root) == forward
    corpus_mod._stdlib_docs.cache_clear()
    try:
        assert stdlib_files("validation") == [p for p in forward if corpus_mod.hash_split(p) == "validation"]
    finally:
        corpus_mod._stdlib_docs.cache_clear()


# ---------------------------------------------------------------------------------------------
# evaluation sets from the real files

def _count_lines(path: Path) -> int:
    return path.read_bytes().count(b"\n")


@pytest.mark.parametrize(
    "name, count, file",
    [
        ("ptb", 3761, "ptb/ptb.test.txt"),
        ("wikitext2", 4358, "wikitext-2/test.txt"),
        ("wikitext2-raw", 4358, "wikitext-2/test.txt"),
        ("lm1b", 12105, "lm1b/1b_benchmark.test.tokens"),
        ("lambada", 5153, "lambada/lambada_test.jsonl"),
        ("ag_news", 7600, None),
    ],
)
def test_eval_sets_document_counts(name, count, file):
    docs = load_corpus(name, "test")
    assert len(docs) == count
    assert all(isinstance(d, str) for d in docs)
    if file is not None:
        assert _count_lines(DATA / file) == count  # the count is the file's own line count
    assert load_corpus(name, "all") == docs
    assert name in DATASETS and str(count) in DATASETS[name]["documents"]


def test_eval_sets_detokenization_rules():
    ptb_raw = load_corpus("ptb", "test", detokenize=False)
    ptb = load_corpus("ptb", "test")
    assert ptb_raw[0] == "no it was n't black monday"
    assert ptb[0] == "no it wasn't black monday"
    assert any("<unk>" in d for d in ptb)  # <unk> kept
    assert not any(" n't" in d or " 's" in d for d in ptb)

    wt_raw = load_corpus("wikitext2", "test", detokenize=False)
    wt = load_corpus("wikitext2", "test")
    assert sum(1 for r in wt_raw if r == "") == 4358 - 2891  # blank lines are empty rows (as HF)
    assert any(" @-@ " in r for r in wt_raw) and not any(" @-@ " in r for r in wt)
    assert wt_raw[0] == "" and wt_raw[1] == " = Robert <unk> = \n" and wt[1] == " = Robert <unk> =\n"

    raw = load_corpus("wikitext2-raw", "test", detokenize=False)
    assert [r == "" for r in raw] == [r == "" for r in wt_raw]  # the SOURCES.md layout recipe
    assert sum(1 for r in raw if r) == 2891
    assert raw[1] == " = Robert Boulter = \n"
    assert sum(r.count("<unk>") for r in raw) < sum(r.count("<unk>") for r in wt_raw)

    lm1b = load_corpus("lm1b", "test")
    assert lm1b[1].startswith("Too soon to tell but I'm not going")

    lam = load_corpus("lambada", "test")
    with open(DATA / "lambada" / "lambada_test.jsonl", encoding="utf-8") as f:
        first = json.loads(f.readline())["text"]
    assert lam[0] == first  # the text field, unchanged

    ag = load_corpus("ag_news", "test")
    assert ag[0].startswith("Fears for T N pension after talks Unions representing workers")


def test_eval_sets_only_test_split_offline():
    with pytest.raises(ValueError, match="only the test split"):
        load_corpus("ptb", "train")


def test_unknown_dataset_lists_known_names():
    with pytest.raises(ValueError) as e:
        load_corpus("not_a_dataset", "train")
    for name in ("stdlib", "tinyshakespeare", "ptb", "wikitext2", "lm1b", "lambada", "ag_news"):
        assert name in str(e.value)
    with pytest.raises(ValueError, match="unknown split"):
        load_corpus("stdlib", "holdout")


def test_missing_local_file_named(tmp_path):
    missing = tmp_path / "nope" / "corpus.txt"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        load_corpus(str(missing), "train")


def test_describe_datasets_table():
    table = describe_datasets()
    for name in DATASETS:
        assert f"| {name} |" in table
    for info in DATASETS.values():
        assert {"file", "unit", "detokenization", "rule", "splits"} <= set(info)


# ---------------------------------------------------------------------------------------------
# local files

def test_tinyshakespeare_fraction_split():
    text = (DATA / "tinyshakespeare" / "input.txt").read_text(encoding="utf-8")
    parts = [load_corpus("tinyshakespeare", s) for s in ("train", "validation", "test")]
    assert all(len(p) == 1 for p in parts)
    assert "".join(p[0] for p in parts) == text
    assert len(parts[0][0]) == int(0.9 * len(text))
    assert len(parts[1][0]) == int(0.95 * len(text)) - int(0.9 * len(text))


def test_local_text_jsonl_and_folder(tmp_path):
    lines = [f"line number {i}" for i in range(100)]
    txt = tmp_path / "a.txt"
    txt.write_text("\n".join(lines) + "\n\n", encoding="utf-8")
    assert load_corpus(str(txt), "all") == [txt.read_text()]
    by_line = [load_corpus(str(txt), s, unit="line") for s in ("train", "validation", "test")]
    assert [len(x) for x in by_line] == [90, 5, 5] and sum(by_line, []) == lines

    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(json.dumps({"body": f"doc {i}", "id": i}) + "\n" for i in range(20)))
    assert load_corpus(str(rows), "all", field="body") == [f"doc {i}" for i in range(20)]
    assert len(load_corpus(str(rows), "train", field="body")) == 18
    with pytest.raises(KeyError, match="text"):
        load_corpus(str(rows), "all")

    folder = tmp_path / "docs"
    (folder / "sub").mkdir(parents=True)
    names = [f"f{i}.txt" for i in range(30)] + [f"sub/g{i}.txt" for i in range(30)]
    for n in names:
        (folder / n).write_text(f"text of {n}", encoding="utf-8")
    splits = {s: load_corpus(str(folder), s) for s in ("train", "validation", "test")}
    assert sorted(sum(splits.values(), [])) == sorted(f"text of {n}" for n in names)
    for s, docs in splits.items():
        assert all(corpus_mod.hash_split(d[len("text of "):]) == s for d in docs)


def test_hf_datasets_local_text_and_json(tmp_path, monkeypatch):
    import datasets
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True, raising=False)
    txt = tmp_path / "notes.txt"
    txt.write_text("first line\nsecond line\n\nfourth\n", encoding="utf-8")
    assert hf_dataset("text", "train", data_files=str(txt), cache_dir=str(tmp_path / "c")) == [
        "first line", "second line", "", "fourth"]
    js = tmp_path / "rows.jsonl"
    js.write_text("".join(json.dumps({"prompt": f"q{i}", "text": f"t{i}"}) + "\n" for i in range(5)))
    assert hf_dataset("json", "train", data_files=str(js), cache_dir=str(tmp_path / "c"), field="prompt") == [
        f"q{i}" for i in range(5)]
    streamed = hf_dataset("json", "train", data_files=str(js), streaming=True)
    assert list(streamed) == [f"t{i}" for i in range(5)]


# ---------------------------------------------------------------------------------------------
# tokenizers

def test_gpt2_from_local_files(gpt2):
    assert isinstance(gpt2, HFTokenizer)
    assert gpt2.encode("Hello world") == [15496, 995]
    assert gpt2.vocab_size == 50257 and gpt2.eos_id == 50256
    assert gpt2.decode([15496, 995]) == "Hello world"
    for spec in ("data:tokenizers/gpt2", str(DATA / "tokenizers" / "gpt2" / "vocab.json")):
        assert load_tokenizer(spec).encode("Hello world") == [15496, 995]
    assert gpt2.encode_batch(["Hello world", " Hello"]) == [[15496, 995], [18435]]


def test_bert_vocab_txt():
    bert = load_tokenizer(DATA / "tokenizers" / "bert-base-uncased")
    assert bert.vocab_size == 30522 and bert.eos_id == 102 and bert.bos_id == 101 and bert.pad_id == 0
    # the SOURCES.md check, without the [CLS] / [SEP] that encode never adds
    assert bert.encode("Hello world, unaffable!") == [7592, 2088, 1010, 14477, 20961, 3468, 999]


def test_tokenizer_missing_files_named(tmp_path):
    missing = tmp_path / "no_such_tokenizer"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        load_tokenizer(str(missing))
    half = tmp_path / "half"
    half.mkdir()
    (half / "vocab.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match=str(half / "merges.txt")):
        load_tokenizer(half)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match=str(empty)):
        load_tokenizer(empty)


def _random_unicode(rng: random.Random, n: int) -> str:
    """Any code point except surrogates (which have no UTF-8 form), mostly low planes."""
    out = []
    for _ in range(n):
        hi = rng.choice((0x80, 0x800, 0x10000, sys.maxunicode + 1))
        c = rng.randrange(hi)
        out.append(chr(c if not 0xD800 <= c <= 0xDFFF else c - 0x800))
    return "".join(out)


def test_byte_tokenizer_roundtrip_unicode():
    tok = ByteTokenizer()
    assert (tok.vocab_size, tok.eos_id, tok.bos_id, tok.pad_id) == (259, 256, 257, 258)
    rng = random.Random(0)
    for _ in range(500):
        s = _random_unicode(rng, rng.randrange(0, 40))
        ids = tok.encode(s)
        assert all(0 <= i < 256 for i in ids) and len(ids) == len(s.encode("utf-8"))
        assert tok.decode(ids) == s
        assert tok.decode(ids + [tok.eos_id]) == s
    s = "naïve 日本語 🙂 \x00\n\t"
    assert tok.decode(tok.encode(s)) == s
    assert tok.decode([104, 105, 256, 104], skip_special_tokens=False) == "hi<|eos|>h"
    assert tok.decode([0xFF, 104]) == "\ufffdh"  # invalid UTF-8 is replaced, not an error
    with pytest.raises(ValueError, match="outside"):
        tok.decode([300])
    small = ByteTokenizer(separate_pad=False)
    assert small.vocab_size == 258 and small.pad_id == small.eos_id == 256


def test_byte_tokenizer_save_load(tmp_path):
    tok = ByteTokenizer(separate_pad=False)
    tok.save(tmp_path / "tok")
    again = load_tokenizer(str(tmp_path / "tok"))
    assert isinstance(again, ByteTokenizer) and again == tok and again.vocab_size == 258
    assert load_tokenizer("byte") == ByteTokenizer()
    assert as_tokenizer(tok) is tok


def test_train_bpe_on_tinyshakespeare(tmp_path):
    text = (DATA / "tinyshakespeare" / "input.txt").read_text(encoding="utf-8")
    docs = text[:400_000].split("\n\n")
    hf = train_bpe(docs, vocab_size=700, save_dir=tmp_path / "bpe")
    tok = as_tokenizer(hf)
    assert len(hf) == 700 and tok.vocab_size == 700
    assert tok.eos_id == 0 and tok.pad_id == 1 and hf.eos_token == "<|endoftext|>"
    for s in (text[500_000:502_000], "Unseen: naïve 日本語 🙂\n\n  double  spaces\t", ""):
        ids = tok.encode(s)
        assert max(ids, default=0) < 700
        assert tok.decode(ids) == s
    sample = text[600_000:610_000]
    assert len(tok.encode(sample)) < 0.6 * len(sample.encode())  # it actually merged something
    again = load_tokenizer(tmp_path / "bpe")
    assert again.encode(sample) == tok.encode(sample) and again.vocab_size == 700
    with pytest.raises(ValueError, match="below"):
        train_bpe(docs, vocab_size=100)


# ---------------------------------------------------------------------------------------------
# blocks

def test_wrap_rule_counts_eos_and_dropped():
    tok = ByteTokenizer()
    docs = ["abc", "", "hello world", "xy" * 20]
    L = 8
    b = TokenBlocks(docs, tok, L, rule="wrap")
    flat = []
    for d in docs:
        flat += tok.encode(d) + [tok.eos_id]
    assert b.num_tokens == len(flat) == 3 + 1 + 1 + 11 + 1 + 40 + 1
    assert len(b) == len(flat) // L and b.dropped_tokens == len(flat) % L
    assert b.ids.shape == (len(flat) // L, L) and b.ids.dtype == torch.long
    assert b.ids.flatten().tolist() == flat[: len(b) * L]
    assert bool(b.attention.all())
    eos_positions = [i for i, t in enumerate(flat[: len(b) * L]) if t == tok.eos_id]
    assert (b.ids.flatten() == tok.eos_id).nonzero().flatten().tolist() == eos_positions
    assert b.doc_index.tolist() == [0, 2, 2, 3, 3, 3, 3][: len(b)]

    kept = TokenBlocks(docs, tok, L, rule="wrap", remainder="pad")
    assert len(kept) == len(b) + 1 and kept.dropped_tokens == 0
    assert kept.ids[kept.attention].tolist() == flat  # nothing lost
    assert kept.pad_tokens == L - len(flat) % L
    assert bool((kept.ids[~kept.attention] == tok.pad_id).all())

    no_eos = TokenBlocks(["abcd", "efgh"], tok, 4, add_eos=False)
    assert no_eos.ids.tolist() == [tok.encode("abcd"), tok.encode("efgh")] and no_eos.dropped_tokens == 0


def test_pad_rule_rows_eos_and_no_truncation():
    tok = ByteTokenizer()
    docs = ["hi", "a" * 7, "b" * 8, "c" * 20, ""]
    L = 8
    b = TokenBlocks(docs, tok, L, rule="pad")
    # rows: "hi"+EOS; 7 a's+EOS (exactly 8); 8 b's+EOS -> 2 rows; 20 c's+EOS -> 3 rows; ""+EOS
    assert b.doc_index.tolist() == [0, 1, 2, 2, 3, 3, 3, 4]
    assert b.split_docs == 2 and b.dropped_tokens == 0
    assert b.ids[0].tolist() == tok.encode("hi") + [tok.eos_id] + [tok.pad_id] * 5
    assert b.attention[0].tolist() == [True] * 3 + [False] * 5
    assert b.ids[1].tolist() == tok.encode("a" * 7) + [tok.eos_id] and bool(b.attention[1].all())
    for i, d in enumerate(docs):  # every document comes back whole, EOS last
        rows = b.doc_index == i
        assert b.ids[rows][b.attention[rows]].tolist() == tok.encode(d) + [tok.eos_id]
    assert b.ids[-1, 0].item() == tok.eos_id
    assert b.pad_tokens == int((~b.attention).sum())

    with pytest.raises(SequenceTooLong, match="document 2 has 9 tokens"):
        TokenBlocks(docs, tok, L, rule="pad", long_docs="raise")
    TokenBlocks(docs[:2], tok, L, rule="pad", long_docs="raise")  # fits: no error


def test_blocks_on_real_ptb_with_gpt2(gpt2):
    docs = load_corpus("ptb", "test")
    b = TokenBlocks(docs, gpt2, 1024, rule="wrap")
    total = sum(len(x) for x in gpt2.encode_batch(docs)) + len(docs)
    assert b.num_tokens == total and len(b) * 1024 + b.dropped_tokens == total
    assert int((b.ids == gpt2.eos_id).sum()) <= len(docs)
    assert int((b.ids == gpt2.eos_id).sum()) >= len(docs) - b.dropped_tokens
    b.check(50257)
    p = TokenBlocks(docs[:200], gpt2, 128, rule="pad")
    assert len(p) == 200 and p.split_docs == 0  # PTB sentences fit 128 GPT-2 tokens


def test_check_vocab_errors(gpt2):
    with pytest.raises(ValueError, match="tokenizer has 50257 ids but the model takes 258"):
        check_vocab(gpt2, 258)
    check_vocab(gpt2, 50257)
    check_vocab(ByteTokenizer(separate_pad=False), 258)
    with pytest.raises(ValueError, match="tokenizer has 259 ids but the model takes 258"):
        check_vocab(ByteTokenizer(), 258)
    b = TokenBlocks(["some text"] * 4, ByteTokenizer(), 5)
    b.check(259)
    with pytest.raises(ValueError, match="model takes 256"):
        b.check(256)


def test_batch_stream_resume_exact():
    blocks = TokenBlocks(["doc %d " % i * (i % 7 + 1) for i in range(200)], ByteTokenizer(), 16)
    n = len(blocks)
    bs = 7
    ref = BatchStream(blocks, bs, seed=123)
    assert len(ref) == n // bs
    reference = [next(ref) for _ in range(3 * len(ref) + 5)]  # crosses epoch boundaries

    for k in (0, 1, len(ref) - 1, len(ref), len(ref) + 3):
        s = BatchStream(blocks, bs, seed=123)
        for _ in range(k):
            next(s)
        state = json.loads(json.dumps(s.state_dict()))  # survives a checkpoint file
        fresh = BatchStream(blocks, bs, seed=999)  # the saved seed wins
        fresh.load_state_dict(state)
        for j in range(k, len(reference)):
            got = next(fresh)
            assert torch.equal(got["index"], reference[j]["index"])
            assert torch.equal(got["input_ids"], reference[j]["input_ids"])
            assert got["epoch"] == reference[j]["epoch"]

    # each epoch is a permutation (minus the dropped tail); epochs differ; seeds differ
    e0 = torch.cat([b["index"] for b in reference[: len(ref)]])
    e1 = torch.cat([b["index"] for b in reference[len(ref) : 2 * len(ref)]])
    assert len(set(e0.tolist())) == len(ref) * bs and not torch.equal(e0, e1)
    other = next(BatchStream(blocks, bs, seed=124))
    assert not torch.equal(other["index"], reference[0]["index"])
    ordered = BatchStream(blocks, bs, shuffle=False)
    assert next(ordered)["index"].tolist() == list(range(bs))

    finite = list(BatchStream(blocks, bs, seed=1, epochs=2))
    assert len(finite) == 2 * (n // bs)

    with pytest.raises(ValueError, match="batch_size"):
        BatchStream(blocks, bs + 1).load_state_dict(ref.state_dict())
    with pytest.raises(ValueError, match="no full batch"):
        BatchStream(blocks, n + 1)


def test_batch_stream_shards_partition_global_batches():
    rows = torch.arange(40 * 4).view(40, 4)
    ranks = [BatchStream(rows, 5, seed=3, rank=r, world_size=2) for r in range(2)]
    for _ in range(4):
        a, b = (next(s)["index"] for s in ranks)
        assert not set(a.tolist()) & set(b.tolist())
    single = BatchStream(rows, 10, seed=3)
    first_global = torch.cat([BatchStream(rows, 5, seed=3, rank=r, world_size=2).__next__()["index"] for r in range(2)])
    assert torch.equal(first_global, next(single)["index"])


# ---------------------------------------------------------------------------------------------
# instruction data

def test_instruction_format_gsm8k_chat_template(chat_gpt2, gsm8k):
    tok = chat_gpt2
    for ex in gsm8k[:8]:
        q, a = ex["question"], ex["answer"]
        ids, mask = format_instruction(tok, q, a)
        p_text = templated_prompt(tok, q)
        assert p_text == f"<|user|>\n{q}\n<|assistant|>\n"
        start = len(tok.encode(p_text))
        assert ids[:start].tolist() == tok.encode(p_text)
        assert not mask[:start].any() and mask[start:].all()  # response starts at the prompt's length
        assert ids[-1].item() == tok.eos_id and mask[-1]
        full = tok.hf.apply_chat_template(
            [{"role": "user", "content": q}, {"role": "assistant", "content": a}], tokenize=False)
        assert ids[:-1].tolist() == tok.encode(full)  # same ids as encoding the conversation whole
        assert tok.decode(ids[start:-1]) == a + "\n"
        ids2, mask2 = format_instruction(tok, q, a, all_tokens=True)
        assert torch.equal(ids2, ids) and mask2.all()
    sys_ids, sys_mask = format_instruction(tok, "Hi", "Hello", system="Be brief.")
    assert tok.decode(sys_ids[: int((~sys_mask).sum())]) == "<|system|>\nBe brief.\n<|user|>\nHi\n<|assistant|>\n"


def test_instruction_format_without_template(gpt2, gsm8k):
    q, a = gsm8k[0]["question"], gsm8k[0]["answer"]
    assert not gpt2.chat_template
    ids, mask = format_instruction(gpt2, q, a)
    start = len(gpt2.encode(q))
    assert ids.tolist() == gpt2.encode(q) + gpt2.encode(a) + [gpt2.eos_id]
    assert not mask[:start].any() and mask[start:].all()
    bt = ByteTokenizer()
    ids, mask = format_instruction(bt, "Q: 2+2?\nA: ", "4")
    assert ids.tolist() == list(b"Q: 2+2?\nA: 4") + [bt.eos_id]
    assert mask.tolist() == [False] * 11 + [True, True]


def test_instruction_eos_not_doubled_and_too_long(chat_gpt2, gsm8k):
    eos_template = (
        "{% for m in messages %}<|{{ m.role }}|>\n{{ m.content }}"
        "{% if m.role == 'assistant' %}<|endoftext|>{% else %}\n{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
    )
    ids, mask = format_instruction(chat_gpt2, "Hi", "Hello", chat_template=eos_template)
    assert ids[-1].item() == chat_gpt2.eos_id and ids[-2].item() != chat_gpt2.eos_id
    assert mask[-2:].all()

    q, a = gsm8k[0]["question"], gsm8k[0]["answer"]
    n = len(format_instruction(chat_gpt2, q, a)[0])
    format_instruction(chat_gpt2, q, a, max_length=n)
    with pytest.raises(SequenceTooLong, match=f"{n} tokens"):
        format_instruction(chat_gpt2, q, a, max_length=n - 1)
    data = format_instructions(
        chat_gpt2, gsm8k[:20], max_length=n, on_long="skip", prompt_field="question", response_field="answer")
    lengths = [len(format_instruction(chat_gpt2, e["question"], e["answer"])[0]) for e in gsm8k[:20]]
    assert data.skipped == [i for i, m in enumerate(lengths) if m > n]
    assert len(data) + len(data.skipped) == 20 and len(data.skipped) > 0
    with pytest.raises(SequenceTooLong):
        format_instructions(chat_gpt2, gsm8k[:20], max_length=n, prompt_field="question", response_field="answer")


def test_instruction_collator():
    bt = ByteTokenizer()
    exs = [format_instruction(bt, "ab", "c"), format_instruction(bt, "abcd", "efg")]
    batch = InstructionCollator(bt)(exs)
    assert batch["input_ids"].shape == (2, 8) and batch["lengths"].tolist() == [4, 8]
    assert batch["input_ids"][0].tolist() == list(b"abc") + [bt.eos_id] + [bt.pad_id] * 4
    assert batch["response_mask"][0].tolist() == [False, False, True, True] + [False] * 4
    assert batch["attention"][0].tolist() == [True] * 4 + [False] * 4
    lad = InstructionCollator.lad(bt, length=10)(exs)
    assert lad["input_ids"].shape == (2, 10)
    assert lad["input_ids"][0, 4:].tolist() == [bt.eos_id] * 6
    assert lad["response_mask"][0].tolist() == [False, False] + [True] * 8 and lad["attention"].all()
    with pytest.raises(SequenceTooLong):
        InstructionCollator(bt, length=5)(exs)
