"""The AR anchor (training.anchor, issue 22): its rows against brute force, its teacher against the
HF base model itself, its value and gradient against their closed forms, and a training run that
logs it and resumes exactly."""
import copy
import json
import math

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from diffusionlm.config import RunConfig
from diffusionlm.io.runs import build
from diffusionlm.masks import shift_inputs, Layout
from diffusionlm.processes.hybrid import GammaHybrid
from diffusionlm.models.lora import peft_model_of
from diffusionlm.training import Trainer, latest_checkpoint, seed_everything
from diffusionlm.training.anchor import ar_anchor, ar_rows, base_logits

from test_curriculum import B4, D, LLAMA, Stream, cfg, lm

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")


def brute_ar_rows(masked, segment):
    B, d = masked.shape
    out = torch.zeros(B, d, dtype=torch.bool)
    for b in range(B):
        seg = segment[0] if segment.shape[0] == 1 else segment[b]
        for j in range(d):
            same = [i for i in range(d) if seg[i] == seg[j]]
            masked_set = {i for i in same if masked[b, i]}
            out[b, j] = bool(masked[b, j]) and masked_set == {i for i in same if i >= j}
    return out


@pytest.mark.parametrize("shared", [True, False])
def test_ar_rows_are_the_masked_positions_that_start_a_masked_suffix_of_their_segment(shared):
    g = torch.Generator().manual_seed(0)
    for trial in range(20):
        B, d = 4, 13
        sizes = torch.randint(1, 5, (B if not shared else 1, d), generator=g)
        segment = torch.stack([torch.repeat_interleave(torch.arange(d), s)[:d] for s in sizes[:, :d]]) + trial
        masked = torch.rand(B, d, generator=g) < 0.6
        assert torch.equal(ar_rows(masked, segment), brute_ar_rows(masked, segment))
    # one segment of four: the suffix patterns only
    seg = torch.zeros(1, 4, dtype=torch.long)
    pats = torch.tensor([[int(c) for c in f"{k:04b}"] for k in range(16)], dtype=torch.bool)
    got = ar_rows(pats, seg)
    suffix = {"1111": 0, "0111": 1, "0011": 2, "0001": 3}
    for row, p in zip(got, pats):
        key = "".join(str(int(v)) for v in p)
        assert row.nonzero().flatten().tolist() == ([suffix[key]] if key in suffix else [])


def _with_nonzero_adapters(model):
    """LoRA B starts at 0 (the adapter is the identity); give it weights so that 'off' differs."""
    g = torch.Generator().manual_seed(3)
    for n, p in model.model.named_parameters():
        if "lora_B" in n:
            p.data = torch.randn(p.shape, generator=g) * 0.5
    return model


def test_the_teacher_is_the_hf_base_model_with_the_adapters_off():
    model = _with_nonzero_adapters(lm())
    x = Stream().__next__()
    trainable = [n for n, p in model.model.named_parameters() if p.requires_grad]
    got = base_logits(model, x)
    assert [n for n, p in model.model.named_parameters() if p.requires_grad] == trainable  # frozen stays frozen
    base = peft_model_of(model.model).get_base_model()
    plain = LlamaForCausalLM(base.config)
    plain.load_state_dict({k.replace(".base_layer", "").replace(".token_adapter", ""): v for k, v in base.state_dict().items()
                           if "lora_" not in k and "trainable_tokens_delta" not in k})
    want = plain(shift_inputs(x, Layout.SHIFTED, model.bos_id)).logits
    assert torch.allclose(got, want, atol=1e-5, rtol=1e-5)
    assert not got.requires_grad
    with torch.no_grad():  # and the adapted model differs: the adapters really were switched off
        ids = shift_inputs(x, Layout.SHIFTED, model.bos_id)
        on = model.model(ids, attention_mask=torch.ones(D, D).tril().bool()[None, None]).logits
    assert (on - want).abs().max() > 1e-2


def _batch():
    model = _with_nonzero_adapters(lm())
    x = Stream().__next__()
    out = model.loss(x, generator=torch.Generator().manual_seed(1), two_halves=True)
    rows = ar_rows(out.corruption.masked, out.draw.segment)
    assert rows.any()
    return model, x, out, rows


def test_the_anchor_is_zero_where_the_model_is_the_base_and_log_n_minus_entropy_where_it_is_uniform():
    model, x, out, rows = _batch()
    B, d = x.shape
    N = model.process.vocab_size
    w = model.process.token_weight(out.draw.level, out.draw).expand(B, d)
    teacher = base_logits(model, x)
    at_teacher = out._replace(logits=torch.where(rows[..., None], teacher, out.logits))
    assert abs(float(ar_anchor(model, x, at_teacher, 2.0).detach())) < 1e-6
    uniform = out._replace(logits=torch.zeros_like(out.logits))
    p = torch.softmax(teacher[..., :N].double(), -1)
    entropy = -(p * p.log()).sum(-1)
    want = 2.0 * (w.double() * (math.log(N) - entropy))[rows].sum() / (B * d)
    assert torch.allclose(ar_anchor(model, x, uniform, 2.0).double(), want, rtol=1e-5)
    response = torch.zeros(B, d, dtype=torch.bool)
    response[:, d // 2:] = True  # instruction data: the prompt's rows carry no loss, nor anchor
    want = 2.0 * (w.double() * (math.log(N) - entropy))[rows & response].sum() / (B * d)
    assert torch.allclose(ar_anchor(model, x, uniform, 2.0, response).double(), want, rtol=1e-5)


def test_the_anchor_gradient_pulls_each_ar_row_toward_the_base_and_touches_no_other_row():
    model, x, out, rows = _batch()
    B, d = x.shape
    N = model.process.vocab_size
    logits = out.logits.detach().clone().requires_grad_(True)
    ar_anchor(model, x, out._replace(logits=logits), 0.5).backward()
    w = model.process.token_weight(out.draw.level, out.draw).expand(B, d)
    want = 0.5 * w[..., None] * (torch.softmax(logits[..., :N].detach(), -1) - torch.softmax(base_logits(model, x)[..., :N], -1)) / (B * d)
    assert torch.allclose(logits.grad[rows][:, :N], want[rows], atol=1e-7)
    assert logits.grad[~rows].abs().max() == 0 and logits.grad[..., N:].abs().max() == 0


def test_training_with_the_anchor_logs_it_changes_the_weights_and_resumes_exactly(tmp_path):
    plain = Trainer(lm(), cfg(tmp_path / "plain", steps=4), Stream())
    plain.fit()
    straight = Trainer(lm(), cfg(tmp_path / "a", steps=4, ar_anchor=1.0), Stream())
    straight.fit()
    assert all(m["ar_anchor"] > 0 for m in straight.history) and "ar_anchor" not in plain.history[0]
    assert straight.history[0]["loss"] == plain.history[0]["loss"]  # "loss" is the process's own, the anchor beside it
    a, p = straight.module.state_dict(), plain.module.state_dict()
    assert any(not torch.equal(a[k], p[k]) for k in a if "lora_" in k)

    out = tmp_path / "b"
    first = Trainer(lm(), cfg(out, steps=4, ar_anchor=1.0), Stream())
    first.fit(steps=2)
    assert latest_checkpoint(out).name.endswith("2")
    second = Trainer(lm(), cfg(out, steps=4, ar_anchor=1.0), Stream())
    second.fit()
    assert [(m["loss"], m["ar_anchor"]) for m in first.history + second.history] == \
        [(m["loss"], m["ar_anchor"]) for m in straight.history]
    b = second.module.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_the_anchor_refuses_what_it_cannot_serve_in_one_line(tmp_path):
    assert RunConfig.from_file(None, ["train.ar_anchor=0.5"]).train.ar_anchor == 0.5  # the CLI's override
    with pytest.raises(ValueError, match=r"train.ar_anchor = -1: must be a number >= 0"):
        RunConfig.from_file(None, ["train.ar_anchor=-1"])
    with pytest.raises(ValueError, match="needs train.two_halves=true"):
        Trainer(lm(), cfg(tmp_path / "a", two_halves=False, curriculum=None, ar_anchor=1.0), Stream())
    other = copy.copy(lm())
    other.process = GammaHybrid(other.process.vocab_size, mask_id=other.process.mask_id)
    with pytest.raises(ValueError, match="needs a process whose loss is a per-token weight .* not GammaHybrid"):
        Trainer(other, cfg(tmp_path / "c", ar_anchor=1.0), Stream())
    run = RunConfig.from_file(None, ["model.kind=hf", "model.path=null", "model.hf_config=" + json.dumps(LLAMA),
                                     "data.tokenizer=byte", f"data.length={D}", 'process={"name": "absorb"}',
                                     "layout=shifted", "schedule=" + json.dumps(B4)])
    seed_everything(0)
    no_lora = build(run, data=False).lm
    with pytest.raises(ValueError, match="needs a LoRA backbone"):
        Trainer(no_lora, cfg(tmp_path / "b", ar_anchor=1.0), Stream())
