"""The exact one-forward path of autoregressive compositions (diffusionlm.eval.causal), and
`diffusionlm eval --dataset PATH` on local files.

* Absorb + Quench + SHIFTED on a tiny random Llama: the default bound (one causal forward) equals
  the enumerated bound (the d steps drawn one by one, exact_causal=False) and transformers' own
  loss to 1e-6 per token, stderr 0, with and without a fixed prefix and padding; the composition
  test refuses a time-conditioned backbone, the ALIGNED layout, Block and EpsilonHybrid.
* `diffusionlm eval --dataset FILE` equals the same rows through evaluate_likelihood, prints one
  summary line last, writes the JSON only with --out; a missing split is one line naming the
  ones there are.
"""
from __future__ import annotations

import json

import pytest
import torch

from transformers import LlamaConfig, LlamaForCausalLM

from diffusionlm.eval.bound import conditional_nll_bound, corpus_bound
from diffusionlm.eval.causal import CAUSAL_METHOD, causal_composition
from diffusionlm.lm import DiffusionLM
from diffusionlm.masks import causal_mask_mod, dense_mask
from diffusionlm.models.hf import HFDenoiser
from diffusionlm.processes import Absorb, EpsilonHybrid
from diffusionlm.schedules import Block, Quench

V, D = 40, 12


def tiny_llama(seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=64, initializer_range=0.2, bos_token_id=0,
                      eos_token_id=0, pad_token_id=None, attn_implementation="sdpa")
    return LlamaForCausalLM(cfg).eval()


def ar_lm(hf, schedule=None, layout="shifted", process=None) -> DiffusionLM:
    den = HFDenoiser.from_model(hf, mask="add")
    return DiffusionLM(den, process or Absorb(V, mask_id=den.mask_id), schedule or Quench(), layout=layout, bos_id=1)


def hf_nll(hf, ids: torch.Tensor, bos: int = 1) -> torch.Tensor:
    """transformers' own per-row summed NLL (its labels= loss) of ids after BOS."""
    with_bos = torch.cat([torch.full((ids.shape[0], 1), bos), ids], 1)
    with torch.no_grad():
        return torch.tensor([float(hf(with_bos[i : i + 1], labels=with_bos[i : i + 1]).loss) * ids.shape[1]
                             for i in range(ids.shape[0])], dtype=torch.float64)


def test_default_bound_is_one_forward_and_equals_enumeration_and_transformers():
    hf, lm = tiny_llama(), ar_lm(tiny_llama())  # the reference never gets the MASK row
    assert causal_composition(lm)
    x0 = torch.randint(0, V, (3, D), generator=torch.Generator().manual_seed(0))
    calls = []
    hook = lm.model.register_forward_hook(lambda *a: calls.append(1))
    fast = conditional_nll_bound(lm, x0, num_samples=2)
    hook.remove()
    assert len(calls) == 1  # one forward for the three rows, whatever M
    slow = conditional_nll_bound(lm, x0, num_samples=D, exact_causal=False)  # the d steps, one by one
    assert fast.method == CAUSAL_METHOD and bool(fast.exact.all()) and bool((fast.stderr == 0).all())
    assert bool(slow.exact.all()) and bool((slow.stderr == 0).all())
    assert torch.allclose(fast.nll, slow.nll, atol=1e-6 * D, rtol=0)
    assert torch.allclose(fast.nll, hf_nll(hf, x0), atol=1e-6 * D, rtol=0)
    assert torch.equal(fast.steps, torch.full((3,), D))
    assert set(fast.terms) == {"prior", "diffusion"} and torch.allclose(fast.terms["diffusion"], fast.nll)


def test_prefix_padding_and_greedy_agree_with_the_enumerated_bound():
    lm = ar_lm(tiny_llama(1))
    x0 = torch.randint(0, V, (2, D), generator=torch.Generator().manual_seed(1))
    fixed = torch.zeros(2, D, dtype=torch.bool)
    fixed[0, :3], fixed[1, :5] = True, True
    count = ~fixed
    count[1, -2:] = False  # padding at the end of row 1: corrupted, not counted
    fast = conditional_nll_bound(lm, x0, 1, fixed=fixed, count=count, track_greedy=True)
    slow = conditional_nll_bound(lm, x0, D, fixed=fixed, count=count, track_greedy=True, exact_causal=False)
    assert fast.method == CAUSAL_METHOD and slow.method != CAUSAL_METHOD
    assert torch.allclose(fast.nll, slow.nll, atol=1e-6 * D, rtol=0)
    assert torch.equal(fast.num_tokens, slow.num_tokens) and torch.equal(fast.greedy, slow.greedy)
    # greedy rows: the continuation is the model's own argmax continuation
    greedy = x0.clone()
    with torch.no_grad():
        for i in range(3, D):
            causal = dense_mask(causal_mask_mod(), 1, i + 1)
            greedy[0, i] = lm.forward(greedy[:1, : i + 1], torch.zeros(1, i + 1), causal)[0, i, :V].argmax()
    fixed1 = torch.zeros(1, D, dtype=torch.bool)
    fixed1[0, :3] = True
    assert bool(conditional_nll_bound(lm, greedy[:1], 1, fixed=fixed1, track_greedy=True).greedy[0])
    # fixed positions that are not a prefix: the step draws (no shortcut)
    holes = torch.zeros(2, D, dtype=torch.bool)
    holes[:, 4] = True
    assert conditional_nll_bound(lm, x0, D, fixed=holes).method != CAUSAL_METHOD


def test_corpus_bound_takes_the_exact_path_by_default():
    hf, lm = tiny_llama(2), ar_lm(tiny_llama(2))
    ids = torch.randint(0, V, (5, D), generator=torch.Generator().manual_seed(2))
    res = corpus_bound(lm, ids, num_samples=4, batch_size=2)
    assert res["exact"] and res["stderr_per_token"] == 0.0 and res["method"] == CAUSAL_METHOD
    assert res["nll_total"] == pytest.approx(float(hf_nll(hf, ids).sum()), abs=1e-6 * ids.numel())


def test_only_autoregressive_compositions_take_the_shortcut():
    from diffusionlm.models import DiffusionTransformer, TransformerConfig

    hf = tiny_llama()
    assert not causal_composition(ar_lm(hf, layout="aligned"))
    assert not causal_composition(ar_lm(hf, schedule=Block(4, 4)))
    den = HFDenoiser.from_model(tiny_llama(), mask="add")
    assert not causal_composition(DiffusionLM(den, EpsilonHybrid(V, mask_id=den.mask_id), Quench(), layout="shifted",
                                              bos_id=1))
    for time_conditioning in (False, True):
        cfg = TransformerConfig(vocab_size=V + 1, hidden=32, n_layers=1, n_heads=2, max_positions=32,
                                time_conditioning=time_conditioning)
        lm = DiffusionLM(DiffusionTransformer(cfg), Absorb(V), Quench(), layout="shifted", bos_id=1)
        assert causal_composition(lm) is (not time_conditioning)


def test_lm_eval_adapter_scores_an_ar_composition_with_one_exact_forward_per_request():
    from diffusionlm.data import load_tokenizer
    from diffusionlm.eval.lm_eval_adapter import DiffusionLMEval

    tok = load_tokenizer("byte")  # ids < 259: a Llama of that vocabulary
    cfg = LlamaConfig(vocab_size=tok.vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64, bos_token_id=tok.bos_id,
                      eos_token_id=tok.eos_id, initializer_range=0.2, attn_implementation="sdpa")
    torch.manual_seed(3)
    ref = LlamaForCausalLM(cfg).eval()
    torch.manual_seed(3)
    den = HFDenoiser.from_model(LlamaForCausalLM(cfg).eval(), mask="add")  # the same weights, plus a MASK row
    lm = DiffusionLM(den, Absorb(tok.vocab_size, mask_id=den.mask_id), Quench(), layout="shifted", bos_id=tok.bos_id)
    calls = []
    hook = lm.model.register_forward_hook(lambda *a: calls.append(1))
    (ll, greedy), = DiffusionLMEval(lm, tok, num_samples=8).loglikelihood([("Hello", " world")])
    hook.remove()
    assert len(calls) == 1
    ids = tok.encode("Hello world")
    P = len(tok.encode("Hello"))
    with torch.no_grad():
        logp = torch.log_softmax(ref(torch.tensor([[tok.bos_id] + ids[:-1]])).logits[0].double(), -1)
    want = float(sum(logp[i, ids[i]] for i in range(P, len(ids))))
    assert abs(ll - want) < 1e-6 * len(ids)
