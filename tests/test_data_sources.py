"""Training data through `datasets` (diffusionlm.data.sources, diffusionlm.data.streaming): every
format on small local files, splits, an hf: name through a local dataset (no network), the one
line of each bad case, and the streamed rows -- packed as TokenBlocks packs them, sharded by rank,
resumed at the exact row across a simulated kill."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from diffusionlm.data import TokenBlocks, load_tokenizer
from diffusionlm.data.sources import read_documents
from diffusionlm.data.streaming import TokenStream

TOK = load_tokenizer("byte")
DOCS = [f"row {i}: {'lorem ipsum ' * (1 + i % 7)}dolor" for i in range(60)]


def write(path: Path, fmt: str, docs=DOCS, field="text") -> Path:
    if fmt == "jsonl":
        path.write_text("".join(json.dumps({field: d, "id": i}) + "\n" for i, d in enumerate(docs)))
    elif fmt == "json":
        path.write_text(json.dumps([{field: d, "id": i} for i, d in enumerate(docs)]))
    elif fmt in ("csv", "parquet"):
        df = pd.DataFrame({field: docs, "id": range(len(docs))})
        df.to_csv(path, index=False) if fmt == "csv" else df.to_parquet(path)
    else:
        path.write_text("\n".join(docs) + "\n")
    return path


@pytest.mark.parametrize("fmt", ["jsonl", "json", "csv", "parquet"])
def test_row_formats_read_their_field_and_split_90_5_5(tmp_path, fmt):
    path = write(tmp_path / f"data.{fmt}", fmt, field="content")
    every, desc = read_documents(str(path), "all", field="content")
    assert every == DOCS and desc["format"] == ("json" if fmt == "jsonl" else fmt)
    parts = [read_documents(str(path), s, field="content")[0] for s in ("train", "validation", "test")]
    assert [len(p) for p in parts] == [54, 3, 3] and sum(parts, []) == DOCS


def test_text_units_folders_globs_and_named_splits(tmp_path):
    path = write(tmp_path / "notes.txt", "txt")
    assert read_documents(str(path), "all", unit="line")[0] == DOCS
    whole = path.read_text()
    assert read_documents(str(path), "all")[0] == [whole]  # unit=file: one document
    assert read_documents(str(path), "train")[0] == [whole[: int(len(whole) * 0.9)]]  # by characters, as load_corpus
    para = tmp_path / "p.md"
    para.write_text("one\ntwo\n\nthree\n\n\nfour")
    assert [d.strip() for d in read_documents(str(para), "all", unit="paragraph")[0]] == ["one\ntwo", "three", "four"]
    # a folder of .py files with a pattern: one document per file, split by file (sha1 of the path)
    src = tmp_path / "src"
    (src / "pkg").mkdir(parents=True)
    files = {f"pkg/m{i}.py": f"def f{i}():\n    return {i}\n" for i in range(30)}
    for rel, text in files.items():
        (src / rel).write_text(text)
    (src / "README").write_text("not python")
    docs = read_documents(str(src), "all", files="**/*.py")[0]
    assert sorted(docs) == sorted(files.values())
    from diffusionlm.data.corpus import hash_split

    want = sorted(t for r, t in files.items() if hash_split(r) == "train")
    assert sorted(read_documents(str(src), "train", files="**/*.py")[0]) == want
    # a glob
    for i in range(3):
        write(tmp_path / f"shard-{i}.jsonl", "jsonl", DOCS[i * 20 : (i + 1) * 20])
    assert sorted(read_documents(str(tmp_path / "shard-*.jsonl"), "all")[0]) == sorted(DOCS)
    # files named by split: those splits, and a missing one is one line naming the others
    named = tmp_path / "named"
    named.mkdir()
    write(named / "train.jsonl", "jsonl", DOCS[:50])
    write(named / "validation.jsonl", "jsonl", DOCS[50:])
    assert read_documents(str(named), "validation")[0] == DOCS[50:]
    with pytest.raises(ValueError, match=r"no 'test' split \(its splits: train, validation; named by its files\)"):
        read_documents(str(named), "test")


def test_hf_names_through_local_datasets(tmp_path):
    import datasets

    saved = tmp_path / "saved"
    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": DOCS[:40]}),
                          "test": datasets.Dataset.from_dict({"text": DOCS[40:]})}).save_to_disk(str(saved))
    assert read_documents(f"hf:{saved}", "test")[0] == DOCS[40:]
    with pytest.raises(ValueError, match="no 'validation' split \\(its splits: train, test\\)"):
        read_documents(f"hf:{saved}", "validation")
    repo = tmp_path / "repo" / "data"  # a hub repository's layout, cloned: datasets resolves its splits
    repo.mkdir(parents=True)
    pd.DataFrame({"body": DOCS[:30]}).to_parquet(repo / "train-00000-of-00001.parquet")
    pd.DataFrame({"body": DOCS[30:]}).to_parquet(repo / "test-00000-of-00001.parquet")
    assert read_documents(f"hf:{repo.parent}", "train", field="body")[0] == DOCS[:30]


def test_every_bad_case_is_one_line_naming_the_file_and_field(tmp_path):
    rows = write(tmp_path / "rows.jsonl", "jsonl", field="content")
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"text": "a"}\n{not json\n')
    binary = tmp_path / "weights.txt"
    binary.write_bytes(b"\x00\x01\x02\xff" * 100)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    blank = tmp_path / "blank.txt"
    blank.write_text("\n \n")
    (tmp_path / "mixed").mkdir()
    write(tmp_path / "mixed" / "a.jsonl", "jsonl")
    write(tmp_path / "mixed" / "b.csv", "csv")
    cases = [
        (rows, {}, f"{rows}: no field 'text' (its fields: content, id); choose one with data.field"),
        (rows, {"field": "id"}, f"{rows}: field 'id' of row 0 is int, not text"),
        (broken, {}, f"{broken}: cannot be read as json"),
        (binary, {}, f"{binary}: not UTF-8 text (byte 0xff at offset 3)"),
        (empty, {}, f"{empty}: "),
        (blank, {}, f"{blank}: no text in the 'all' split (field 'text')"),
        (tmp_path / "mixed", {}, "one format per source"),
        (tmp_path / "nope.jsonl", {}, "nope.jsonl: no such file or folder"),
        (tmp_path / "*.xyz", {}, "no files match this pattern"),
    ]
    for path, kw, fragment in cases:
        with pytest.raises(ValueError) as err:
            read_documents(str(path), "all", **kw)
        text = str(err.value)
        assert "\n" not in text and fragment in text, (path, text)


# ---------------------------------------------------------------------------------------------
# streaming
# ---------------------------------------------------------------------------------------------
def test_stream_packs_rows_as_token_blocks_and_shards_by_rank(tmp_path):
    path = write(tmp_path / "rows.jsonl", "jsonl")
    blocks = TokenBlocks(DOCS, TOK, 16)  # wrap, in order
    stream = TokenStream(str(path), TOK, 16, batch_size=4, split="all", epochs=1)
    got = torch.cat([b["input_ids"] for b in stream])
    assert torch.equal(got, blocks.ids[: got.shape[0]]) and got.shape[0] == blocks.ids.shape[0] // 4 * 4
    ranks = [TokenStream(str(path), TOK, 16, batch_size=2, split="all", epochs=1, rank=r, world_size=2) for r in (0, 1)]
    interleaved = torch.cat([torch.cat([next(ranks[0])["input_ids"], next(ranks[1])["input_ids"]]) for _ in range(5)])
    assert torch.equal(interleaved, blocks.ids[:20])
    # one file, streamed: row i mod 20 < 18 is train
    train = TokenStream(str(path), TOK, 16, batch_size=1, split="train", epochs=1)
    assert torch.equal(torch.cat([b["input_ids"] for b in train]).flatten()[:64],
                       TokenBlocks([d for i, d in enumerate(DOCS) if i % 20 < 18], TOK, 16).ids.flatten()[:64])


def test_stream_resumes_at_the_exact_row_across_a_kill(tmp_path):
    path = write(tmp_path / "big.txt", "txt", DOCS[:10])
    make = lambda: TokenStream(str(path), TOK, 24, batch_size=3, split="all", unit="line")  # noqa: E731
    whole = make()
    reference = [next(whole)["input_ids"] for _ in range(40)]  # several epochs: the source is ~610 tokens
    assert whole.epoch >= 2
    for kill_at in (0, 1, 7, 23, 31):
        first = make()
        for _ in range(kill_at):
            next(first)
        state = json.loads(json.dumps(first.state_dict()))  # what a checkpoint holds (JSON)
        del first  # the process dies
        resumed = make()
        resumed.load_state_dict(state)
        for k in range(kill_at, 40):
            b = next(resumed)
            assert torch.equal(b["input_ids"], reference[k]), (kill_at, k)
            assert int(b["index"][0]) == 3 * k
    wrong = TokenStream(str(path), TOK, 12, batch_size=3, split="all", unit="line")
    with pytest.raises(ValueError, match="cannot resume: the saved stream had length=24"):
        wrong.load_state_dict(state)


def test_stream_of_an_empty_split_is_one_line(tmp_path):
    empty = tmp_path / "none.jsonl"
    empty.write_text('{"text": "only one row"}\n')
    with pytest.raises(ValueError, match=r"none.jsonl: no documents in the 'test' split \(field 'text'\)"):
        next(TokenStream(str(empty), TOK, 8, batch_size=1, split="test"))


def test_train_config_streams_a_jsonl_with_its_field(tmp_path):
    from diffusionlm.config import RunConfig
    from diffusionlm.io.runs import build

    path = write(tmp_path / "rows.jsonl", "jsonl", field="content")
    run = RunConfig.from_dict({
        "model": {"preset": "tiny", "overrides": {"n_layers": 1, "hidden": 32, "n_heads": 2, "cond_dim": 16}},
        "data": {"corpus": str(path), "field": "content", "streaming": True, "length": 16, "val_batches": 1},
        "train": {"steps": 1, "batch_size": 2},
    })
    built = build(run)
    assert isinstance(built.train_stream, TokenStream)
    batch = next(built.train_stream)["input_ids"]
    assert torch.equal(batch, TokenBlocks([d for i, d in enumerate(DOCS) if i % 20 < 18], TOK, 16).ids[:2])
    assert len(built.val_batches) == 1 and built.val_batches[0].shape == (2, 16)
    run.data.streaming = False
    assert torch.equal(build(run).train_stream.ids, TokenBlocks(DOCS[:54], TOK, 16).ids)  # not streamed: 90 / 5 / 5 rows


def test_rank_0_state_resumes_every_rank(tmp_path):
    """The trainer saves rank 0's stream state only: every rank's state is the same, so rank 1
    restored from rank 0's state continues exactly where rank 1 was."""
    path = write(tmp_path / "rows.jsonl", "jsonl")
    make = lambda r: TokenStream(str(path), TOK, 16, batch_size=2, split="all", rank=r, world_size=2)  # noqa: E731
    r0, r1 = make(0), make(1)
    for _ in range(5):
        next(r0), next(r1)
    state = json.loads(json.dumps(r0.state_dict()))
    assert state == json.loads(json.dumps(r1.state_dict()))
    expected = [next(r1)["input_ids"] for _ in range(6)]
    restored = make(1)
    restored.load_state_dict(state)
    assert all(torch.equal(next(restored)["input_ids"], e) for e in expected)
