"""Saved compositions (diffusionlm.io.hub): save / load round trips, LoRA adapters that peft loads
alone, merged exports that AutoModelForCausalLM loads, the model card, push_to_hub with the
network replaced, one loader for every kind of model, and each bad input as one clear error."""
import json
import os
from pathlib import Path

import pytest
import torch

import peft  # noqa: E402  (required: the suite installs it)
import transformers  # noqa: E402
from transformers import AutoModelForCausalLM, GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM  # noqa: E402

from diffusionlm.io import client, hub  # noqa: E402
from diffusionlm.data import load_tokenizer  # noqa: E402
from diffusionlm.io.hub import FORMAT_VERSION, ModelNotFoundError, load_model  # noqa: E402
from diffusionlm.lm import DiffusionLM  # noqa: E402
from diffusionlm.models import DiffusionTransformer, TransformerConfig  # noqa: E402
from diffusionlm.models.hf import HFDenoiser  # noqa: E402
from diffusionlm.models.lora import apply_lora  # noqa: E402
from diffusionlm.processes import Absorb  # noqa: E402
from diffusionlm.samplers import get_sampler  # noqa: E402
from diffusionlm.schedules import Block, Flat, Quench  # noqa: E402

TOK = load_tokenizer("byte")
N = TOK.vocab_size  # 259 real ids; MASK = 259


def seeded(seed=0):
    return torch.Generator().manual_seed(seed)


def tiny_composition(schedule=None) -> DiffusionLM:
    torch.manual_seed(0)
    cfg = TransformerConfig.preset("tiny", vocab_size=N + 1, n_layers=1, hidden=32, n_heads=2, cond_dim=16, max_positions=64)
    return DiffusionLM(DiffusionTransformer(cfg).eval(), Absorb(N), schedule or Block(8), layout="shifted", bos_id=TOK.bos_id)


def same_samples(a: DiffusionLM, b: DiffusionLM, sampler="mdlm", length=24, **kw) -> None:
    s = get_sampler(sampler)(**kw)
    x = s.sample(a, batch_size=2, length=length, generator=seeded(3)).tokens
    y = s.sample(b, batch_size=2, length=length, generator=seeded(3)).tokens
    assert torch.equal(x, y)


def dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


@pytest.fixture(scope="module")
def llama_base(tmp_path_factory) -> Path:
    """A tiny random Llama saved locally (the 'pretrained' base of the LoRA tests)."""
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=N, hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=64, bos_token_id=TOK.bos_id, eos_token_id=TOK.eos_id)
    path = tmp_path_factory.mktemp("llama-base")
    LlamaForCausalLM(cfg).save_pretrained(path)
    return path


def lora_composition(base_dir: Path) -> DiffusionLM:
    """LoRA on the base (MASK row added first), with the adapters and the MASK rows moved off their
    initial values, as training would (a MASK row equal to its mean init would prove nothing)."""
    den = apply_lora(HFDenoiser.from_model(AutoModelForCausalLM.from_pretrained(base_dir), mask="add"), r=2)
    g = seeded(1)
    with torch.no_grad():
        for name, p in den.named_parameters():
            if "lora_B" in name or "trainable_tokens_delta" in name:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
    return DiffusionLM(den.eval(), Absorb(N, mask_id=den.mask_id), Flat(steps=8), layout="shifted", bos_id=TOK.bos_id)


# ---------------------------------------------------------------------------------------------
# round trips
# ---------------------------------------------------------------------------------------------
def test_composition_round_trip_same_loss_and_samples(tmp_path):
    lm = tiny_composition()
    lm.save_pretrained(tmp_path, tokenizer=TOK)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["README.md", "backbone", "byte_tokenizer.json", "config.json"]
    assert sorted(p.name for p in (tmp_path / "backbone").iterdir()) == ["config.json", "model.safetensors"]
    cfg = json.loads((tmp_path / "config.json").read_text())
    assert cfg["format"] == "diffusionlm-composition" and cfg["format_version"] == FORMAT_VERSION
    assert cfg["composition"] == lm.to_dict()

    back = DiffusionLM.from_pretrained(tmp_path)
    assert back.process.config() == lm.process.config() and back.schedule == lm.schedule
    assert (back.layout, back.bos_id, back.max_positions) == (lm.layout, lm.bos_id, lm.max_positions)
    assert back.tokenizer == TOK and not back.model.training
    x = torch.randint(0, N, (4, 32), generator=seeded(0))
    assert back.loss(x, generator=seeded(5)).loss.item() == lm.loss(x, generator=seeded(5)).loss.item()
    same_samples(lm, back, steps=6)
    # a second save into the same folder (the tokenizer now remembered) replaces the first
    back.save_pretrained(tmp_path, training={"steps": 3})
    assert json.loads((tmp_path / "config.json").read_text())["training"] == {"steps": 3}
    assert "| steps | 3 |" in (tmp_path / "README.md").read_text()


def test_a_folder_of_format_1_still_loads_and_says_so_in_one_line(tmp_path):
    """Format 1 wrote the parts without a name or backbone (and an older Uniform's "mask_id": null):
    its converter reads it into the one composition format, with one warning line."""
    lm = tiny_composition(Quench())
    lm.save_pretrained(tmp_path, tokenizer=TOK)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["format_version"] = 1
    cfg["composition"] = {k: v for k, v in cfg["composition"].items() if k not in ("name", "backbone", "annealing")}
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.warns(FutureWarning) as record:
        back = DiffusionLM.from_pretrained(tmp_path)
    (line,) = [str(w.message) for w in record if "format 1" in str(w.message)]
    assert "\n" not in line and f"format {FORMAT_VERSION}" in line
    assert back.to_dict() == lm.to_dict() and back.is_autoregressive
    x = torch.randint(0, N, (2, 16), generator=seeded(0))
    assert back.loss(x, generator=seeded(1)).loss.item() == lm.loss(x, generator=seeded(1)).loss.item()
    uniform = hub.composition_from_v1({"process": {"name": "uniform", "vocab_size": 5, "mask_id": None}, "schedule": {"name": "flat"}})
    assert uniform["name"] == "diffusion_lm" and "mask_id" not in uniform["process"]


def test_lora_llama_saves_the_adapter_not_the_base(tmp_path, llama_base):
    lm = lora_composition(llama_base)
    lm.save_pretrained(tmp_path / "out", tokenizer=TOK)
    out = tmp_path / "out"
    weights = sorted(str(p.relative_to(out)) for p in out.rglob("*.safetensors"))
    assert weights == ["backbone/adapter_model.safetensors"]
    from safetensors.torch import load_file

    saved = load_file(str(out / "backbone" / "adapter_model.safetensors"))
    assert all("lora_" in k or "trainable_tokens_delta" in k for k in saved)  # no base tensor
    assert dir_bytes(out) < 0.05 * dir_bytes(llama_base), (dir_bytes(out), dir_bytes(llama_base))
    meta = json.loads((out / "backbone" / "denoiser.json").read_text())
    assert meta["weights"] == "adapter" and meta["base"] == str(llama_base) and meta["mask_added"]

    back = DiffusionLM.from_pretrained(out)
    assert isinstance(back.model, HFDenoiser) and back.model.mask_id == N == back.process.mask_id
    x = torch.randint(0, N, (3, 24), generator=seeded(0))
    assert back.loss(x, generator=seeded(5)).loss.item() == lm.loss(x, generator=seeded(5)).loss.item()
    same_samples(lm, back, steps=4, length=16)


def test_peft_alone_loads_the_adapter_with_its_mask_row(tmp_path, llama_base):
    lm = lora_composition(llama_base)
    lm.save_pretrained(tmp_path, tokenizer=TOK)
    base = AutoModelForCausalLM.from_pretrained(llama_base)
    base.resize_token_embeddings(N + 1)  # transformers' own (random) init of the new row: peft restores it
    alone = peft.PeftModel.from_pretrained(base, tmp_path / "backbone").eval()
    ids = torch.tensor([[TOK.bos_id, 5, N, 7, N, 9]])  # MASK inputs read the saved row
    with torch.no_grad():
        assert torch.equal(alone(input_ids=ids).logits, lm.model.model(input_ids=ids).logits)


def test_merged_export_loads_with_auto_model_and_gives_the_same_logits(tmp_path, llama_base):
    lm = lora_composition(llama_base)
    lm.save_pretrained(tmp_path, tokenizer=TOK, merge=True)
    assert json.loads((tmp_path / "backbone" / "denoiser.json").read_text())["weights"] == "full"
    plain = AutoModelForCausalLM.from_pretrained(tmp_path, subfolder="backbone").eval()
    assert not isinstance(plain, peft.PeftModel) and plain.get_input_embeddings().weight.shape[0] == N + 1
    ids = torch.tensor([[TOK.bos_id, 5, N, 7, N, 9]])
    with torch.no_grad():
        ref = lm.model.model(input_ids=ids).logits
        assert torch.allclose(plain(input_ids=ids).logits, ref, atol=1e-5)
    back = DiffusionLM.from_pretrained(tmp_path)
    x = torch.randint(0, N, (3, 24), generator=seeded(0))
    assert back.loss(x, generator=seeded(5)).loss.item() == pytest.approx(lm.loss(x, generator=seeded(5)).loss.item(), abs=1e-5)


def test_a_base_built_from_a_config_can_only_be_saved_merged(tmp_path):
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=N, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                      num_key_value_heads=1, max_position_embeddings=32)
    den = apply_lora(HFDenoiser.from_model(LlamaForCausalLM(cfg), mask="add"), r=2)
    lm = DiffusionLM(den, Absorb(N, mask_id=den.mask_id), Flat(), layout="shifted", bos_id=TOK.bos_id)
    with pytest.raises(ValueError, match="built from a config.*save it merged"):
        lm.save_pretrained(tmp_path / "a", tokenizer=TOK)
    lm.save_pretrained(tmp_path / "b", tokenizer=TOK, merge=True)
    assert DiffusionLM.from_pretrained(tmp_path / "b").model.mask_id == N


def test_hf_backbone_without_lora_and_a_reserved_mask_token(tmp_path):
    torch.manual_seed(0)
    hf = GPT2LMHeadModel(GPT2Config(vocab_size=N + 1, n_positions=32, n_embd=16, n_layer=1, n_head=2))
    den = HFDenoiser(hf, mask_id=3)  # a reserved id in the middle: MASK becomes the virtual id N + 1
    lm = DiffusionLM(den.eval(), Absorb(N + 1, mask_id=den.mask_id), Quench(), layout="shifted", bos_id=TOK.bos_id)
    lm.save_pretrained(tmp_path, tokenizer=TOK)
    back = DiffusionLM.from_pretrained(tmp_path)
    assert (back.model.reserved_id, back.model.mask_id) == (3, N + 1)
    ids = torch.randint(0, N + 2, (2, 10), generator=seeded(0))
    with torch.no_grad():
        assert torch.equal(back.model(ids).logits, den(ids).logits)


# ---------------------------------------------------------------------------------------------
# the model card and the Hub
# ---------------------------------------------------------------------------------------------
def test_model_card_names_process_schedule_data_steps_and_figures(tmp_path):
    lm = tiny_composition()
    training = {"data": {"corpus": "stdlib", "tokenizer": "byte", "length": 32}, "steps": 150, "tokens": 76800}
    lm.save_pretrained(tmp_path, tokenizer=TOK, training=training, evaluation={"val_nll": 1.2345, "val_ppl": 3.437})
    card = (tmp_path / "README.md").read_text()
    header = card.split("---")[1]
    assert "library_name: diffusionlm" in header and "- absorb" in header and "- block" in header
    for needle in ("| process | absorb", "| hyperschedule | block (width 8", "| data | corpus stdlib", "| steps | 150 |",
                   "| tokens | 76,800 |", "| val_nll | 1.234 |", 'DiffusionLM.from_pretrained("path/to/this/folder")'):
        assert needle in card, needle
    from huggingface_hub import ModelCard

    assert ModelCard.load(tmp_path / "README.md").data.library_name == "diffusionlm"  # the Hub's parser reads it


def test_push_to_hub_with_the_network_replaced(tmp_path, monkeypatch):
    calls = []

    class FakeApi:
        def __init__(self, token=None):
            calls.append(("init", token))

        def create_repo(self, repo_id, private=None, exist_ok=False):
            calls.append(("create_repo", repo_id, private, exist_ok))
            from types import SimpleNamespace

            return SimpleNamespace(repo_id=repo_id)

        def upload_folder(self, repo_id, repo_type, folder_path, **kw):
            folder = Path(folder_path)
            files = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
            calls.append(("upload_folder", repo_id, repo_type, files, (folder / "README.md").read_text()))
            return f"https://huggingface.co/{repo_id}/commit/abc"

    import huggingface_hub.hub_mixin

    monkeypatch.setattr(huggingface_hub.hub_mixin, "HfApi", FakeApi)
    lm = tiny_composition()
    url = lm.push_to_hub("me/tiny-mdlm", tokenizer=TOK, private=True, token="hf_x")
    assert url == "https://huggingface.co/me/tiny-mdlm/commit/abc"
    assert calls[0] == ("init", "hf_x") and calls[1] == ("create_repo", "me/tiny-mdlm", True, True)
    _, repo, kind, files, card = calls[2]
    assert (repo, kind) == ("me/tiny-mdlm", "model")
    assert files == ["README.md", "backbone/config.json", "backbone/model.safetensors", "byte_tokenizer.json", "config.json"]
    assert 'DiffusionLM.from_pretrained("me/tiny-mdlm")' in card  # the card names the repository


# ---------------------------------------------------------------------------------------------
# one loader for every kind of model
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory) -> Path:
    """A plain HF causal-LM directory (tiny random GPT-2 + the GPT-2 tokenizer), as from the Hub."""
    hf_tok = load_tokenizer("data:tokenizers/gpt2").hf
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("hf-gpt2")
    GPT2LMHeadModel(GPT2Config(vocab_size=len(hf_tok), n_positions=64, n_embd=16, n_layer=1, n_head=2)).save_pretrained(path)
    hf_tok.save_pretrained(path)
    return path


def test_plain_hf_directory_with_process_and_schedule_options(hf_dir):
    m = load_model(hf_dir, process="absorb", schedule="quench", layout="shifted")
    assert m.kind == "hf" and m.length is None and isinstance(m.lm.schedule, Quench)
    assert m.lm.process.name == "absorb" and m.lm.layout.value == "shifted" and m.lm.model.mask_id == m.tokenizer.vocab_size
    with pytest.raises(ValueError, match="plain Hugging Face model with no training length: give --length"):
        m.require_length(None)
    # absorb + quench + shifted is the AR model itself (BOS first): AR decoding is the HF head's greedy argmax
    prompt = torch.tensor([m.tokenizer.encode("Hello")])
    out = get_sampler("ar")(greedy=True).sample(m.lm, batch_size=1, length=prompt.shape[1] + 4, prompt=prompt).tokens
    ids = torch.cat([torch.tensor([[m.lm.bos_id]]), prompt], 1)
    with torch.no_grad():
        for _ in range(4):
            nxt = m.lm.model.model(input_ids=ids).logits[:, -1, : m.tokenizer.vocab_size].argmax(-1, keepdim=True)
            ids = torch.cat([ids, nxt], 1)
    assert torch.equal(out, ids[:, 1:])
    m2 = load_model(hf_dir, process='{"name": "absorb", "noise": {"name": "loglinear"}}', schedule='{"name": "block", "width": 8}')
    assert m2.lm.schedule == Block(8) and m2.lm.process.config()["noise"]["name"] == "loglinear"


def test_run_directory_and_composition_load_alike(tmp_path):
    from diffusionlm.compare import CompareConfig, save_variant

    lm = tiny_composition()
    save_variant(tmp_path / "run", CompareConfig(length=48), "block", lm)  # an older run: model/ is the backbone
    lm.save_pretrained(tmp_path / "comp", tokenizer=TOK, training={"data": {"length": 48}})
    a, b = load_model(tmp_path / "run"), load_model(tmp_path / "comp")
    assert (a.kind, b.kind, a.length, b.length) == ("run", "composition", 48, 48)
    same_samples(a.lm, b.lm, steps=4)
    c = load_model(tmp_path / "comp", schedule="flat")  # any model runs under another hyperschedule
    assert c.lm.schedule == Flat()
    with pytest.raises(ValueError, match="--process apply to a plain Hugging Face model"):
        load_model(tmp_path / "comp", process="uniform")


def test_lm_eval_adapter_and_judge_take_any_kind_of_model(tmp_path, hf_dir):
    from diffusionlm.eval.generative import generative_perplexity
    from diffusionlm.eval.lm_eval_adapter import DiffusionLMEval

    lm = tiny_composition(schedule=Quench())
    lm.save_pretrained(tmp_path / "ar", tokenizer=TOK)
    ev = DiffusionLMEval(pretrained=str(tmp_path / "ar"))
    direct = DiffusionLMEval(lm, TOK)
    assert ev.loglikelihood([("abc", "de")]) == direct.loglikelihood([("abc", "de")])
    # the AR composition as a judge: its exact causal NLL, read through the SHIFTED layout
    texts = ["hello world", "def f(x): return x"]
    res = generative_perplexity(texts, str(tmp_path / "ar"))
    from diffusionlm.compare import ar_judge_nll

    ids = [[TOK.bos_id] + TOK.encode(t) for t in texts]
    nll = sum(ar_judge_nll(lm, torch.tensor([s[1:]]))[0] for s in ids)
    assert res["nll"] == pytest.approx(nll / sum(len(s) - 1 for s in ids), rel=1e-6)
    assert generative_perplexity(texts, str(hf_dir))["tokens"] > 0  # a plain HF directory judges as itself
    lm_flat = tiny_composition(schedule=Flat())
    lm_flat.save_pretrained(tmp_path / "mdlm", tokenizer=TOK)
    with pytest.raises(ValueError, match="absorb \\+ flat.*must be a causal LM"):
        generative_perplexity(texts, str(tmp_path / "mdlm"))


def test_resolvers_map_short_names(tmp_path, monkeypatch):
    lm = tiny_composition()
    lm.save_pretrained(tmp_path / "m", tokenizer=TOK)
    monkeypatch.setattr(client, "MODEL_RESOLVERS", [])
    hub.register_resolver(lambda name: tmp_path / "m" if name == "tiny-demo" else None)
    assert load_model("tiny-demo").path == tmp_path / "m"


# ---------------------------------------------------------------------------------------------
# bad input: one clear line each
# ---------------------------------------------------------------------------------------------
def test_a_directory_with_no_config_names_the_missing_file(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="holds neither run.json .* nor config.json"):
        load_model(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match=r"config.json is missing: .* is not a saved composition"):
        DiffusionLM.from_pretrained(tmp_path / "empty")
    lm = tiny_composition()
    lm.save_pretrained(tmp_path / "c", tokenizer=TOK)
    (tmp_path / "c" / "backbone" / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        load_model(tmp_path / "c")


def test_a_format_newer_than_the_package_is_refused(tmp_path):
    tiny_composition().save_pretrained(tmp_path, tokenizer=TOK)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["format_version"] = FORMAT_VERSION + 1
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=f"composition format {FORMAT_VERSION + 1}.*newer than this diffusionlm .* upgrade"):
        DiffusionLM.from_pretrained(tmp_path)


def test_an_adapter_on_another_base_names_both(tmp_path, llama_base):
    lm = lora_composition(llama_base)
    lm.save_pretrained(tmp_path / "out", tokenizer=TOK)
    torch.manual_seed(7)  # same architecture, other weights
    other = tmp_path / "other-base"
    LlamaForCausalLM(AutoModelForCausalLM.from_pretrained(llama_base).config).save_pretrained(other)
    with pytest.raises(ValueError, match=f"trained on base '{llama_base}' but the base given, '{other}', differs in embedding_sha256"):
        DiffusionLM.from_pretrained(tmp_path / "out", base=str(other))
    small = tmp_path / "small-base"
    LlamaForCausalLM(LlamaConfig(vocab_size=N, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                 num_attention_heads=2, num_key_value_heads=1)).save_pretrained(small)
    with pytest.raises(ValueError, match="differs in embedding_sha256, hidden_size, num_hidden_layers"):
        load_model(tmp_path / "out", base=str(small))
    # peft's own folder on a base of other shapes (no fingerprint): load_adapters names both
    from diffusionlm.models.lora import load_adapters

    with pytest.raises(ValueError, match=f"trained on base '{llama_base}'.*does not fit the base given .*small-base.*size mismatch"):
        load_adapters(HFDenoiser.from_model(AutoModelForCausalLM.from_pretrained(small), mask="add"), tmp_path / "out" / "backbone")


def test_a_hub_id_with_no_network(monkeypatch):
    monkeypatch.setattr(client, "_hub_reachable", lambda timeout=3.0: False)  # the Hub client (diffusionlm.io.client)
    with pytest.raises(ModelNotFoundError, match="^diffusionlm-tests/no-such-model: not found locally and no network: pass a local directory$"):
        load_model("diffusionlm-tests/no-such-model")
    with pytest.raises(ModelNotFoundError, match="not found locally and no network"):
        DiffusionLM.from_pretrained("diffusionlm-tests/no-such-model")


def test_a_corrupt_weights_file_is_one_error(tmp_path):
    tiny_composition().save_pretrained(tmp_path, tokenizer=TOK)
    w = tmp_path / "backbone" / "model.safetensors"
    w.write_bytes(w.read_bytes()[:40])
    with pytest.raises(ValueError, match="backbone: a weights file is corrupt or truncated"):
        load_model(tmp_path)
