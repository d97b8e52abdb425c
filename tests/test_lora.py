"""LoRA through peft (the LAD recipe) on tiny HF models wrapped by HFDenoiser (CPU)."""
from __future__ import annotations

import os
import warnings

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here may touch the network

import pytest
import torch

import peft  # noqa: E402
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM  # noqa: E402

from diffusionlm.lm import DiffusionLM  # noqa: E402
from diffusionlm.models.hf import HFDenoiser  # noqa: E402
from diffusionlm.models.lora import apply_lora, linear_module_names, load_adapters, lora_audit, save_adapters  # noqa: E402
from diffusionlm.processes import Absorb  # noqa: E402
from diffusionlm.schedules.hyper import Block  # noqa: E402

V = 64
BOS = 0
D = 12


@pytest.fixture(autouse=True)
def quiet():
    with warnings.catch_warnings():
        # peft 0.21 calls transformers' deprecated `is_gradient_checkpointing`
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        yield


def llama(seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=V, hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=32, initializer_range=0.1,
        bos_token_id=0, eos_token_id=0, pad_token_id=None, attn_implementation="sdpa",
    )
    return LlamaForCausalLM(cfg).eval()


def lora_denoiser(seed: int = 0, **kw) -> HFDenoiser:
    return apply_lora(HFDenoiser.from_model(llama(seed), mask="add"), **kw)


def test_lora_trains_only_the_adapters():
    model = lora_denoiser(r=8)
    lm = DiffusionLM(model, Absorb(V), Block(4), layout="shifted", bos_id=BOS)
    x0 = torch.randint(1, V, (8, D), generator=torch.Generator().manual_seed(0))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    base_names = [n for n in before if "lora_" not in n]
    lora_names = [n for n in before if "lora_" in n]
    assert base_names and lora_names
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=3e-2, weight_decay=0.0)
    model.train()

    def fixed_loss():  # the same corruption every step: a fixed objective
        return lm.loss(x0, generator=torch.Generator().manual_seed(1)).loss

    losses = []
    for _ in range(30):
        loss = fixed_loss()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    model.eval()
    with torch.no_grad():
        final = fixed_loss().item()
    assert final < 0.8 * losses[0], (losses[0], final)
    after = dict(model.named_parameters())
    for n in base_names:  # every base parameter, the MASK row and the head included
        assert torch.equal(after[n], before[n]), f"base parameter {n} changed"
    assert any(not torch.equal(after[n], before[n]) for n in lora_names if "lora_B" in n)
    assert all(not torch.equal(after[n], before[n]) for n in lora_names)


def test_audit_lists_only_lora_tensors():
    model = lora_denoiser(r=4)
    table = lora_audit(model)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    frozen = [p.numel() for _, p in model.named_parameters() if not p.requires_grad]
    assert trainable and all("lora_A" in n or "lora_B" in n for n in trainable)
    assert all(("q_proj" in n or "v_proj" in n) for n in trainable)
    assert len(trainable) == 2 * 2 * 2  # 2 layers x (q, v) x (A, B)
    listed = table.split("trainable tensors:")[1].split()
    assert set(trainable) <= set(listed)
    assert not any(("lora" not in t and t.startswith("model.")) for t in listed)
    assert f"{sum(frozen):,d}" in table
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert f"{n_train:,d}" in table
    # r (in + out) per adapted projection: q 48 -> 48, v 48 -> 24 (2 kv heads of 12)
    assert n_train == 2 * (4 * (48 + 48) + 4 * (48 + 24))


def test_alpha_defaults_to_r_and_no_dropout():
    model = lora_denoiser(r=8)
    cfg = model.model.peft_config["default"]
    assert cfg.r == 8 and cfg.lora_alpha == 8 and cfg.lora_dropout == 0.0
    assert set(cfg.target_modules) == {"q_proj", "v_proj"}
    layer = model.model.base_model.model.model.layers[0].self_attn.q_proj
    assert layer.scaling["default"] == 1.0
    assert isinstance(layer.lora_dropout["default"], torch.nn.Identity)
    other = lora_denoiser(r=4, alpha=16, dropout=0.1)
    assert other.model.peft_config["default"].lora_alpha == 16
    assert other.model.base_model.model.model.layers[0].self_attn.q_proj.scaling["default"] == 4.0


def test_save_and_load_adapters_round_trip(tmp_path):
    model = lora_denoiser(r=8)
    with torch.no_grad():  # give the adapters non-trivial values (lora_B starts at zero)
        for n, p in model.named_parameters():
            if "lora_" in n:
                p.normal_(0.0, 0.2)
    ids = torch.randint(0, V + 1, (2, D), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref = model(ids).logits
        plain = HFDenoiser.from_model(llama(), mask="add")(ids).logits
    assert (ref - plain).abs().max() > 1e-3  # the adapters matter
    save_adapters(model, tmp_path / "adapters")
    files = sorted(os.listdir(tmp_path / "adapters"))
    assert "adapter_config.json" in files and "adapter_model.safetensors" in files
    from safetensors.torch import load_file

    saved = load_file(str(tmp_path / "adapters" / "adapter_model.safetensors"))
    # the adapters alone, plus the added MASK row of the embeddings and of the untied head (peft
    # trainable tokens, frozen): the adapter is self-contained
    rows = [k for k in saved if "trainable_tokens_delta" in k]
    assert saved and all("lora_" in k for k in saved if k not in rows)
    assert sorted(k.split(".token_adapter")[0].rsplit(".", 1)[-1] for k in rows) == ["embed_tokens", "lm_head"]
    hidden = model.model.get_input_embeddings().weight.shape[1]
    n_lora = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert sum(t.numel() for t in saved.values()) == n_lora + 2 * hidden

    loaded = load_adapters(HFDenoiser.from_model(llama(), mask="add"), tmp_path / "adapters")
    assert isinstance(loaded, HFDenoiser) and loaded.mask_id == V
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, ref)
    assert not any(p.requires_grad for p in loaded.parameters())  # frozen for inference by default
    # onto the raw HF model as well
    raw = load_adapters(HFDenoiser.from_model(llama(), mask="add").model, tmp_path / "adapters")
    with torch.no_grad():
        assert torch.equal(HFDenoiser(raw, mask_id=V)(ids).logits, ref)
    with pytest.raises(FileNotFoundError, match="adapter_config.json"):
        load_adapters(llama(), tmp_path / "missing")


def test_raw_model_path_and_gpt2_targets():
    # raw HF model: apply LoRA first, wrap afterwards
    hf = llama()
    hf_masked = HFDenoiser.from_model(hf, mask="add").model
    peft_model = apply_lora(hf_masked, r=2)
    assert isinstance(peft_model, peft.PeftModel)
    wrapped = HFDenoiser(peft_model, mask_id=V)
    assert wrapped.vocab_size == V + 1
    out = wrapped(torch.randint(0, V + 1, (1, 5)), attention_mask="causal", cache_commit=2)
    assert out.logits.shape == (1, 5, V + 1) and out.cache.get_seq_length() == 2

    # GPT-2 fuses q/k/v in c_attn (a transformers Conv1D)
    torch.manual_seed(0)
    g = GPT2LMHeadModel(GPT2Config(vocab_size=V, n_positions=32, n_embd=32, n_layer=2, n_head=4, bos_token_id=0, eos_token_id=0))
    assert "c_attn" in linear_module_names(g)
    wrapped = HFDenoiser.from_model(g, mask="add")  # resizes g in place
    with pytest.raises(ValueError, match=r"not found.*available: \['c_attn', 'c_fc', 'c_proj', 'lm_head'\].*c_attn"):
        apply_lora(wrapped)
    model = apply_lora(wrapped, r=4, target_modules=("c_attn",))
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("c_attn.lora_" in n for n in trainable)
    loss = DiffusionLM(model, Absorb(V), Block(4), layout="shifted", bos_id=BOS).loss(torch.randint(0, V, (2, 8))).loss
    loss.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_lora_errors():
    with pytest.raises(ValueError, match=r"not found.*available: \[.*'q_proj'.*\]"):
        apply_lora(HFDenoiser.from_model(llama(), mask="add"), target_modules=("query",))
    with pytest.raises(ValueError, match="rank"):
        apply_lora(llama(), r=0)
    model = lora_denoiser(r=2)
    with pytest.raises(ValueError, match="already"):
        apply_lora(model)
    with pytest.raises(ValueError, match="no LoRA adapters"):
        save_adapters(HFDenoiser(llama()), "/tmp/never-written")


def test_trainable_head_as_in_the_lad_paper(tmp_path):
    """LAD keeps the output layer trainable: modules_to_save=('lm_head',) trains and saves a copy."""
    model = lora_denoiser(r=4, modules_to_save=("lm_head",))
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert any("lm_head.modules_to_save" in n for n in trainable)
    assert all("lora_" in n or "lm_head.modules_to_save" in n for n in trainable)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.05)
    ids = torch.randint(0, V + 1, (1, 6), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ref = model(ids).logits
    save_adapters(model, tmp_path)
    loaded = load_adapters(HFDenoiser.from_model(llama(), mask="add"), tmp_path)
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, ref)
