"""`diffusionlm eval --dataset PATH`: any local file (text, JSONL with --field, CSV, parquet) or
folder, its rows equal to the same rows through the Python API, one summary line last, the JSON
only with --out, and one line for each bad case."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from diffusionlm.cli import main
from diffusionlm.eval.likelihood import evaluate_likelihood

from test_hub import TOK, tiny_composition

TEXT = [f"document {i}: the quick brown fox {'jumps ' * (i % 5)}over the lazy dog." for i in range(40)]


@pytest.fixture(scope="module")
def comp(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("comp")
    tiny_composition().save_pretrained(path, tokenizer=TOK, training={"data": {"corpus": "stdlib", "length": 32}})
    return path


def run(capsys, argv):
    rc = main([str(a) for a in argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


def write_jsonl(path: Path, rows, field="content") -> Path:
    path.write_text("".join(json.dumps({field: t, "n": i}) + "\n" for i, t in enumerate(rows)))
    return path


@pytest.mark.parametrize("fmt", ["txt", "jsonl", "csv", "parquet"])
def test_eval_on_a_local_file_equals_the_python_api(tmp_path, capsys, comp, fmt):
    import pandas as pd

    path = tmp_path / f"held_out.{fmt}"
    if fmt == "txt":
        path.write_text("\n".join(TEXT))
        opts = ["--unit", "line"]
    elif fmt == "jsonl":
        write_jsonl(path, TEXT)
        opts = ["--field", "content"]
    else:
        df = pd.DataFrame({"body": TEXT, "n": range(len(TEXT))})
        df.to_csv(path, index=False) if fmt == "csv" else df.to_parquet(path)
        opts = ["--field", "body"]
    out_file = tmp_path / "r.json"
    rc, out, err = run(capsys, ["eval", "--model", comp, "--dataset", path, "--samples", "4", "--batch-size", "4",
                                "--max-blocks", "6", "--device", "cpu", "--out", out_file, *opts])
    assert rc == 0, err
    lines = [ln for ln in out.splitlines() if ln.strip()]
    assert len(lines) == 1, out  # the summary line only: the JSON went to --out
    res = json.loads(out_file.read_text())
    r = res["results"][str(path)]
    assert lines[0].startswith(f"{path} [split all, rule wrap, detokenization: none]: {r['nll']:.6f} +- {r['stderr']:.4f} "
                               f"nats/token, PPL {r['ppl']:.4f}, {r['tokens']:,d} tokens")
    # the same rows through the Python API: the same numbers (the whole file: the data given)
    lm = tiny_composition()  # the saved composition's weights
    kw = {"unit": "line"} if fmt == "txt" else {"field": opts[1]}
    api = evaluate_likelihood(lm, str(path), TOK, 32, num_samples=4, batch_size=4, max_blocks=6, progress=False, **kw)
    a = api["results"][str(path)]
    assert (a["nll"], a["stderr"], a["tokens"]) == (r["nll"], r["stderr"], r["tokens"]) and r["tokens"] == 6 * 32
    # the rows are the file's documents, in order, each followed by EOS
    ids = torch.tensor([t for doc in TEXT for t in TOK.encode(doc) + [TOK.eos_id]][: 6 * 32]).view(6, 32)
    t = evaluate_likelihood(lm, ids, num_samples=4, batch_size=4, progress=False)["results"]["tensor"]
    assert t["nll"] == pytest.approx(r["nll"], rel=1e-12)


def test_eval_folder_with_named_splits_and_the_missing_split_line(tmp_path, capsys, comp):
    folder = tmp_path / "corpus"
    folder.mkdir()
    write_jsonl(folder / "train.jsonl", TEXT[:20], "text")
    write_jsonl(folder / "validation.jsonl", TEXT[20:], "text")
    rc, out, err = run(capsys, ["eval", "--model", comp, "--dataset", folder, "--split", "validation", "--samples", "2",
                                "--max-blocks", "2", "--device", "cpu", "--rule", "pad"])
    assert rc == 0, err
    assert out.strip().startswith(f"{folder} [split validation, rule pad,") and len(out.strip().splitlines()) == 1
    rc, out, err = run(capsys, ["eval", "--model", comp, "--dataset", folder, "--max-blocks", "2", "--device", "cpu"])
    assert rc == 1 and err.strip().splitlines()[-1] == (
        f"diffusionlm eval: error: {folder}: no 'test' split (its splits: train, validation; named by its files)")


def test_eval_bad_inputs_are_one_line(tmp_path, capsys, comp):
    rows = write_jsonl(tmp_path / "rows.jsonl", TEXT, "content")
    binary = tmp_path / "blob.txt"
    binary.write_bytes(bytes(range(256)) * 4)
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    cases = [
        (["--dataset", rows], f"{rows}: no field 'text' (its fields: content, n); choose one with data.field"),
        (["--dataset", rows, "--field", "n"], f"{rows}: field 'n' of row 0 is int, not text"),
        (["--dataset", binary], f"{binary}: not UTF-8 text (byte 0x80 at offset 128)"),
        (["--dataset", empty], f"{empty}: no text in the 'all' split (field 'text')"),
        (["--dataset", tmp_path / "missing.txt"], "missing.txt: no such file or folder"),
        (["--dataset", str(tmp_path / "*.nothing")], "no files match this pattern"),
        (["--dataset", "ptb", "--split", "validation"], "only the test split of 'ptb' is stored offline"),
        (["--dataset", "nope"], "unknown dataset 'nope'"),
    ]
    for argv, fragment in cases:
        rc, out, err = run(capsys, ["eval", "--model", comp, "--device", "cpu", "--max-blocks", "1", *argv])
        lines = [ln for ln in err.splitlines() if ln.strip()]
        assert rc == 1 and "Traceback" not in err, err
        assert lines[-1].startswith("diffusionlm eval: error: ") and fragment in lines[-1], (argv, lines[-1])
