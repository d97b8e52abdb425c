"""The self-distillation corpus (scripts/smollm2_data.py --mix base-samples): documents sampled from
the base causal LM itself. Tiny random Llama, a tokenizer that decodes ids to numbers so the test
reads the sampled tokens back."""
import importlib.util
from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "smollm2_data.py"
BOS, EOS, V = 1, 2, 8


def _script():
    spec = importlib.util.spec_from_file_location("smollm2_data", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


class NumberTokenizer:
    bos_token_id, eos_token_id, all_special_ids = BOS, EOS, [BOS, EOS]

    def decode(self, ids):
        return " ".join(str(i) for i in ids)


@pytest.fixture(scope="module")
def lm():
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=V, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=2, bos_token_id=BOS, eos_token_id=EOS)
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():  # a first-token law far from uniform, so a wrong sampler shows
        model.lm_head.weight.mul_(40.0)
    return model


def _ids(row):
    return [int(t) for t in row["text"].split()]


def test_documents_stop_at_eos_fill_the_budget_and_are_a_function_of_the_seed(lm):
    mod = _script()
    rows = mod.base_sample_rows(lm, NumberTokenizer(), tokens=300, batch=16, max_new=12, seed=3, progress=False)
    again = mod.base_sample_rows(lm, NumberTokenizer(), tokens=300, batch=16, max_new=12, seed=3, progress=False)
    other = mod.base_sample_rows(lm, NumberTokenizer(), tokens=300, batch=16, max_new=12, seed=4, progress=False)
    assert rows == again and rows != other
    assert sum(len(_ids(r)) for r in rows) >= 300
    for r in rows:
        ids = _ids(r)
        assert r["source"] == "base_samples" and 1 <= len(ids) <= 12 and EOS not in ids and BOS not in ids


def test_the_first_token_follows_the_base_distribution(lm):
    """max_new = 1: each document is one draw from softmax(logits | BOS) (EOS and BOS draws leave it
    empty and it is dropped), so the frequencies of the other tokens match p / (1 - p(EOS) - p(BOS))."""
    mod = _script()
    n = 4000
    rows = mod.base_sample_rows(lm, NumberTokenizer(), tokens=n, batch=500, max_new=1, seed=0, progress=False)
    with torch.no_grad():
        p = lm(torch.tensor([[BOS]])).logits[0, -1].double().softmax(-1)
    p[EOS] = p[BOS] = 0
    p = p / p.sum()
    counts = torch.zeros(V, dtype=torch.float64)
    for r in rows:
        counts[_ids(r)[0]] += 1
    freq = counts / counts.sum()
    stderr = (p * (1 - p) / counts.sum()).sqrt()
    assert p.max() > 0.3  # the law is far from uniform, so this can fail
    assert torch.all((freq - p).abs() <= 5 * stderr + 1e-9), (freq, p)


def test_bad_sizes_are_refused_by_name(lm):
    mod = _script()
    with pytest.raises(ValueError, match="must be positive"):
        mod.base_sample_rows(lm, NumberTokenizer(), tokens=0)


class EndsAtOnce:
    """A model whose every document is EOS at once: no text can come of it."""

    def eval(self):
        return self

    def generate(self, ids, max_new_tokens, **kw):
        return torch.cat([ids, torch.full((ids.shape[0], max_new_tokens), EOS)], 1)


def test_a_model_that_only_ends_is_refused_instead_of_looping_for_ever():
    with pytest.raises(ValueError, match="ended before their first token of text"):
        _script().base_sample_rows(EndsAtOnce(), NumberTokenizer(), tokens=10, batch=4, max_new=3, progress=False)


def test_sampling_leaves_the_callers_rng_as_it_was(lm):
    torch.manual_seed(123)
    want = torch.rand(3)
    torch.manual_seed(123)
    _script().base_sample_rows(lm, NumberTokenizer(), tokens=20, batch=4, max_new=4, seed=0, progress=False)
    assert torch.equal(torch.rand(3), want)


def test_the_command_names_a_missing_model_in_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        _script().main(["--mix", "base-samples", "--model", str(tmp_path / "no-such-model"), "--out", str(tmp_path / "c.jsonl")])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and "no-such-model" in err[-1] and not (tmp_path / "c.jsonl").exists(), err


def _words(t):
    return len(t.split())


def test_the_blend_is_half_and_half_by_tokens_and_keeps_every_sample():
    mod = _script()
    samples = [{"text": "a " * n, "source": "base_samples"} for n in (5, 7, 9)]  # 21 tokens
    news = [{"text": "n " * 4, "source": "ag_news"} for _ in range(20)]
    rows = mod.blend_rows(samples, news, _words)
    by = {}
    for r in rows:
        by[r["source"]] = by.get(r["source"], 0) + _words(r["text"])
    assert by == {"base_samples": 21, "ag_news": 24}  # whole news documents until >= 21
    assert sorted(r["text"] for r in rows if r["source"] == "base_samples") == sorted(r["text"] for r in samples)
    assert rows == mod.blend_rows(samples, news, _words)  # a function of the seed
    assert rows != mod.blend_rows(samples, news, _words, seed=1)
    half = mod.blend_rows(samples, news, _words, news_ratio=0.5)  # news up to >= 10.5 tokens: 3 documents
    assert sum(_words(r["text"]) for r in half if r["source"] == "ag_news") == 12
    with pytest.raises(ValueError, match="news_ratio must be positive"):
        mod.blend_rows(samples, news, _words, news_ratio=0)
    # shuffled together: the samples are not all first or all last
    first = [r["source"] for r in rows]
    assert first[:3] != ["base_samples"] * 3 and first[-3:] != ["base_samples"] * 3


def test_the_blend_refuses_too_little_news_and_an_empty_samples_file():
    mod = _script()
    samples = [{"text": "a " * 30, "source": "base_samples"}]
    with pytest.raises(ValueError, match=r"news corpus has 8 tokens, fewer than the 30 the blend needs \(1 x the base samples' 30\)"):
        mod.blend_rows(samples, [{"text": "n " * 4, "source": "ag_news"}] * 2, _words)
    with pytest.raises(ValueError, match="holds no text"):
        mod.blend_rows([{"text": "", "source": "base_samples"}], [], _words)


def test_the_blend_command_names_a_bad_samples_file_in_one_line(tmp_path, capsys):
    mod = _script()
    out = tmp_path / "blend.jsonl"
    with pytest.raises(SystemExit):
        mod.main(["--mix", "english+base-samples", "--out", str(out)])
    assert "needs --base-samples FILE" in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{"text": 3}\n')
    with pytest.raises(SystemExit):
        mod.main(["--mix", "english+base-samples", "--base-samples", str(bad), "--out", str(out)])
    assert f"{bad}:2: a row must be an object with a text string" in capsys.readouterr().err
    bad.write_text("{oops\n")
    with pytest.raises(SystemExit):
        mod.main(["--mix", "english+base-samples", "--base-samples", str(bad), "--out", str(out)])
    assert f"{bad}:1: not a JSON line" in capsys.readouterr().err  # the data package's reader's words
    with pytest.raises(SystemExit):
        mod.main(["--mix", "english+base-samples", "--base-samples", str(tmp_path / "none.jsonl"), "--out", str(out)])
    assert f"{tmp_path / 'none.jsonl'} does not exist" in capsys.readouterr().err
    assert not out.exists()
