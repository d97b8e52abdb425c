"""The lm-evaluation-harness adapter, called directly (no harness run, no network).

Absorb + Quench + SHIFTED is autoregression: there the adapter's log-likelihood must equal the
exact AR log-likelihood of the continuation from one causal forward, and is_greedy the argmax
check. Generation is checked with a deterministic "next byte" denoiser.
"""
from __future__ import annotations

import os
import types

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

from diffusionlm.data import ByteTokenizer
from diffusionlm.eval.lm_eval_adapter import HAVE_LM_EVAL, DiffusionLMEval
from diffusionlm.lm import DiffusionLM
from diffusionlm.masks import causal_mask_mod, dense_mask
from diffusionlm.models import DiffusionTransformer, TransformerConfig
from diffusionlm.models.base import DenoiserOutput
from diffusionlm.processes import Absorb
from diffusionlm.samplers import AR, MDLM
from diffusionlm.schedules import Flat, Quench

TOK = ByteTokenizer()  # bytes 0..255, EOS 256, BOS 257, PAD 258
V = TOK.vocab_size  # 259 real tokens; MASK = 259


def tiny(seed: int = 0, max_positions: int = 64) -> DiffusionTransformer:
    torch.manual_seed(seed)
    cfg = TransformerConfig.preset(
        "tiny", vocab_size=V + 1, input_vocab_size=V + 1, n_layers=2, hidden=32, n_heads=2,
        max_positions=max_positions, init_std=0.2,
    )
    return DiffusionTransformer(cfg).eval()


def ar_lm(**kw) -> DiffusionLM:
    return DiffusionLM(tiny(**kw), Absorb(V), Quench(), layout="shifted", bos_id=TOK.bos_id)


class NextByte:
    """A SHIFTED denoiser that is sure the next byte is the one after the byte its row reads
    (after BOS: 'a')."""

    vocab_size = V + 1

    def __call__(self, input_ids, *, position_ids=None, attention_mask=None, levels=None, cache=None):
        nxt = torch.where(input_ids < 256, (input_ids + 1) % 256, torch.full_like(input_ids, ord("a")))
        logits = torch.full((*input_ids.shape, self.vocab_size), -30.0, dtype=torch.float32)
        logits.scatter_(-1, nxt[..., None], 30.0)
        return DenoiserOutput(logits)


def causal_logprob(lm: DiffusionLM, ctx: list, cont: list) -> tuple[float, bool]:
    """log p(cont | ctx) and the greedy check from ONE causal forward of the SHIFTED model."""
    ids = torch.tensor([ctx + cont])
    d = ids.shape[1]
    inputs = torch.cat([torch.tensor([[lm.bos_id]]), ids[:, :-1]], 1)
    with torch.no_grad():
        logits = lm.model(inputs, position_ids=torch.arange(d)[None], attention_mask=dense_mask(causal_mask_mod(), 1, d)).logits
    logp = torch.log_softmax(logits[0, :, :V].double(), -1)
    pos = torch.arange(len(ctx), d)
    lp = float(logp[pos, ids[0, pos]].sum())
    greedy = bool((logits[0, pos, :V].argmax(-1) == ids[0, pos]).all())
    return lp, greedy


def instance(args):
    """A harness Instance when lm_eval is installed, else anything with .args."""
    if HAVE_LM_EVAL:
        from lm_eval.api.instance import Instance

        return Instance(request_type="loglikelihood", doc={}, arguments=args, idx=0)
    return types.SimpleNamespace(args=args)


REQUESTS = [("Hello", " world"), ("The cat ", "sat"), ("", "abc"), ("x" * 30, "yz!")]


def test_loglikelihood_is_the_exact_ar_loglikelihood():
    lm = ar_lm()
    model = DiffusionLMEval(lm, TOK, seed=0)
    got = model.loglikelihood(REQUESTS)
    for (context, continuation), (lp, greedy) in zip(REQUESTS, got):
        ctx, cont = model._encode_pair(context, continuation)
        ctx = ctx or [TOK.eos_id]  # an empty context is the prefix token (EOS)
        want, want_greedy = causal_logprob(lm, ctx, cont)
        assert lp == pytest.approx(want, abs=1e-4)
        assert greedy == want_greedy
    # trailing spaces of the context belong to the continuation
    assert model._encode_pair("The cat ", "sat") == (list(b"The cat"), list(b" sat"))
    # Instance objects and plain tuples give the same answers; order does not matter
    again = model.loglikelihood([instance(r) for r in reversed(REQUESTS)])
    assert [a for a, _ in again] == pytest.approx([a for a, _ in reversed(got)], abs=1e-12)


def test_is_greedy_follows_the_models_argmax():
    lm = DiffusionLM(NextByte(), Absorb(V), Quench(), layout="shifted", bos_id=TOK.bos_id)
    model = DiffusionLMEval(lm, TOK)
    (lp_yes, g_yes), (lp_no, g_no) = model.loglikelihood([("ab", "cde"), ("ab", "cdx")])
    assert g_yes and not g_no
    assert lp_yes == pytest.approx(0.0, abs=1e-6) and lp_no < -50


def test_loglikelihood_under_a_diffusion_schedule_is_a_seeded_bound():
    lm = DiffusionLM(tiny(), Absorb(V), Flat(steps=4))  # ALIGNED, 4 steps
    model = DiffusionLMEval(lm, TOK, seed=1)
    a = model.loglikelihood(REQUESTS)
    b = model.loglikelihood(list(reversed(REQUESTS)))[::-1]
    assert a == b  # each request has its own seed
    assert all(lp < 0 for lp, _ in a)
    c = DiffusionLMEval(lm, TOK, seed=2).loglikelihood(REQUESTS)
    assert [x for x, _ in a] != [x for x, _ in c]
    # the context is held fixed: a different context changes the continuation's bound
    (x1, _), (x2, _) = model.loglikelihood([("Hello", " world"), ("Goodbye", " world")])
    assert x1 != x2


def test_continuation_is_never_truncated_context_is_cut_from_the_left():
    lm = ar_lm(max_positions=16)
    model = DiffusionLMEval(lm, TOK)
    assert model.max_length == 16
    (lp, _), = model.loglikelihood([("0123456789" * 3, "abc")])
    want, _ = causal_logprob(lm, list(b"0123456789" * 3)[-13:], list(b"abc"))
    assert lp == pytest.approx(want, abs=1e-4)
    with pytest.raises(ValueError, match="never truncated"):
        model.loglikelihood([("a", "b" * 16)])


def test_loglikelihood_rolling():
    lm = ar_lm()
    text = "rolling text, scored whole."
    (lp,) = DiffusionLMEval(lm, TOK).loglikelihood_rolling([(text,)])
    want, _ = causal_logprob(lm, [TOK.eos_id], list(text.encode()))
    assert lp == pytest.approx(want, abs=1e-4)
    # in windows of 8 positions: every token scored once, each window with its own context
    small = DiffusionLMEval(lm, TOK, max_length=8)
    wins = small.rolling_windows(list(text.encode()))
    assert [t for _, c in wins for t in c] == list(text.encode())
    assert all(len(c) + len(s) <= 8 and len(c) >= 1 for c, s in wins)
    (lp8,) = small.loglikelihood_rolling([instance((text,))])
    assert lp8 == pytest.approx(sum(causal_logprob(lm, c, s)[0] for c, s in wins), abs=1e-4)


class Recording:
    """Wraps a sampler and keeps what it returned."""

    def __init__(self, inner):
        self.inner, self.outputs = inner, []

    def sample(self, lm, **kw):
        out = self.inner.sample(lm, **kw)
        self.outputs.append((kw["prompt"].clone(), out.tokens.clone()))
        return out


@pytest.mark.parametrize("sampler", [MDLM(), AR(greedy=True)])
def test_generate_until_stops_at_the_until_string(sampler):
    lm = DiffusionLM(NextByte(), Absorb(V), Quench(), layout="shifted", bos_id=TOK.bos_id)
    rec = Recording(sampler)
    model = DiffusionLMEval(lm, TOK, sampler=rec, max_gen_toks=8)
    out = model.generate_until([
        ("ab", {"until": ["f"], "max_gen_toks": 8}),
        ("ab", {"until": ["zz", "e"]}),
        instance(("ab", {"until": "\n"})),
    ])
    assert out == ["cde", "cd", "cdefghij"]
    for prompt, tokens in rec.outputs:  # the context positions came back unchanged
        assert torch.equal(tokens[:, : prompt.shape[1]], prompt)


def test_generate_until_with_a_diffusion_sampler_keeps_the_context():
    lm = DiffusionLM(tiny(), Absorb(V), Flat(steps=4))
    rec = Recording(MDLM(steps=4))
    model = DiffusionLMEval(lm, TOK, sampler=rec)
    (text,) = model.generate_until([("Once upon a time", {"until": ["\n\n"], "max_gen_toks": 6})])
    prompt, tokens = rec.outputs[0]
    assert torch.equal(tokens[0, : prompt.shape[1]], torch.tensor(list(b"Once upon a time")))
    assert tokens.shape[1] == prompt.shape[1] + 6 and isinstance(text, str) and "\n\n" not in text
    # by registry name, with arguments
    named = DiffusionLMEval(lm, TOK, sampler="mdlm", sampler_kwargs={"steps": 2})
    assert isinstance(named.sampler, MDLM) and named.sampler.steps == 2


def test_a_trained_run_directory(tmp_path):
    """run=<dir of diffusionlm train> (here: its run.json and a fresh tiny model in model/), as the harness
    passes it in model_args."""
    import json

    from diffusionlm.config import RunConfig

    (tmp_path / "corpus.txt").write_text("hello world. " * 100)
    run = RunConfig.from_dict({
        "data": {"corpus": str(tmp_path / "corpus.txt"), "length": 32, "val_batches": 0},
        "model": {"preset": "tiny", "overrides": {"n_layers": 1, "hidden": 32, "n_heads": 2}},
        "schedule": {"name": "flat", "steps": 4},
    })
    (tmp_path / "run.json").write_text(json.dumps(run.to_dict()))
    from diffusionlm.io.runs import build

    build(run, data=False).lm.model.save_pretrained(str(tmp_path / "model"))  # what training leaves
    if HAVE_LM_EVAL:
        model = DiffusionLMEval.create_from_arg_string(f"run={tmp_path},num_samples=2,seed=3", {"batch_size": 4})
    else:
        model = DiffusionLMEval(run=str(tmp_path), num_samples="2", seed="3", batch_size=4)
    assert model.num_samples == 2 and model.seed == 3 and model.batch_size == 4 and model.max_length == 32
    (lp, greedy), = model.loglikelihood([("hello", " world")])
    assert lp < 0 and isinstance(greedy, bool)
    with pytest.raises(FileNotFoundError, match="run.json"):
        DiffusionLMEval(run=str(tmp_path / "nothing"))


def test_clear_errors():
    from diffusionlm.processes.structural import Structural

    with pytest.raises(ValueError, match="no likelihood"):
        DiffusionLMEval(DiffusionLM(tiny(), Structural(V), Flat()), TOK)
    with pytest.raises(ValueError, match="num_samples"):
        DiffusionLMEval(ar_lm(), TOK, num_samples=0)
    with pytest.raises(ValueError, match="tokenizer"):
        DiffusionLMEval(ar_lm())


def test_registered_with_the_harness():
    assert HAVE_LM_EVAL, "lm-eval is a test extra (pip install -e '.[test]')"
    from lm_eval.api.model import LM
    from lm_eval.api.registry import get_model

    assert get_model("diffusionlm") is DiffusionLMEval
    assert issubclass(DiffusionLMEval, LM)
    assert get_model("hf").__name__ == "HFLM"  # the harness's own models are still there
    model = DiffusionLMEval(ar_lm(), TOK, batch_size="auto", max_batch_size=64, device="cpu")
    assert model.batch_size == 16 and model.rank == 0 and model.world_size == 1


def test_works_without_lm_eval(monkeypatch):
    """The module imported with lm_eval unavailable: a standalone class with the same methods."""
    import importlib.util

    import diffusionlm.eval.lm_eval_adapter as mod

    for name in ("lm_eval", "lm_eval.models", "lm_eval.api", "lm_eval.api.model", "lm_eval.api.registry"):
        monkeypatch.setitem(__import__("sys").modules, name, None)  # import -> ImportError
    spec = importlib.util.spec_from_file_location("diffusionlm.eval._adapter_without_lm_eval", mod.__file__)
    standalone = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(standalone)
    assert standalone.HAVE_LM_EVAL is False
    lm = DiffusionLM(NextByte(), Absorb(V), Quench(), layout="shifted", bos_id=TOK.bos_id)
    model = standalone.DiffusionLMEval(lm, TOK, sampler=AR(greedy=True))
    assert model.rank == 0 and model.world_size == 1
    (lp, greedy), = model.loglikelihood([("ab", "cd")])
    assert greedy and lp == pytest.approx(0.0, abs=1e-6)
    assert model.generate_until([("ab", {"until": ["e"], "max_gen_toks": 4})]) == ["cd"]
    assert model.loglikelihood_rolling([("abc",)])[0] == pytest.approx(0.0, abs=1e-6)  # EOS -> a -> b -> c
    assert model.loglikelihood_rolling([("abd",)])[0] < -50
