"""What a first-time user hits (issue 25, items 10-14): defaults that work, names that mean what
they say, facts recorded where they are read."""
import os
import stat
from importlib.metadata import version

import pytest
import torch

import diffusionlm
from diffusionlm.io.safeio import save_safetensors


def test_version_is_the_installed_distributions():
    assert diffusionlm.__version__ == version("diffusionlm")
    from diffusionlm.io.hub import library_version

    assert library_version() == diffusionlm.__version__


@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_weight_files_get_the_mode_the_umask_gives(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        path = save_safetensors(tmp_path / "w.safetensors", {"a": torch.ones(2)})
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == mode


def test_schedule_is_an_alias_of_hyperschedule():
    from diffusionlm.specs import build, registry

    assert registry("schedule") is registry("hyperschedule")
    assert build("schedule", {"name": "block", "width": 4}).to_dict() == build("hyperschedule", {"name": "block", "width": 4}).to_dict()


def test_judge_none_means_no_judge():
    from diffusionlm.compare import CompareConfig

    assert CompareConfig(judge="none").judge == {"name": "none"}
    assert CompareConfig(judge="some/model").judge == {"name": "model", "path": "some/model"}


def test_lm_eval_refuses_unknown_model_args():
    from diffusionlm.eval.lm_eval_adapter import DiffusionLMEval
    from test_lm_eval_adapter import TOK, ar_lm

    with pytest.raises(ValueError, match="unknown model_args bogus for diffusionlm; its arguments: lm, tokenizer, pretrained"):
        DiffusionLMEval(ar_lm(), TOK, bogus=1)
    DiffusionLMEval(ar_lm(), TOK, max_batch_size=None)  # what the harness itself adds


def test_a_train_override_applies_to_every_stage():
    from pathlib import Path

    from diffusionlm.config import RunConfig

    recipe = Path(__file__).resolve().parents[1] / "recipes" / "scratch.json"
    run = RunConfig.from_file(recipe, ["train.steps=10", "train.lr=1e-3"])
    assert run.train.steps == 10 and [s.get("steps", run.train.steps) for s in run.stages] == [10, 10]
    assert run.stages[1]["lr"] == 1e-3 and run.stages[1]["warmup_steps"] == 50  # keys not given keep the stage's
    assert RunConfig.from_file(recipe).stages[1]["steps"] == 500


def test_a_compare_variant_records_what_it_trained_and_its_card_says_so(tmp_path, capsys):
    import json

    from diffusionlm.cli import main
    from diffusionlm.compare import CompareConfig, save_variant
    from test_demo import tiny_model

    cfg = CompareConfig(length=16, batch_size=16, train_steps=5)
    training = {"data": {"corpus": "stdlib", "tokenizer": "byte", "length": 16}, "steps": 5, "tokens": 1280,
                "batch_size": 16, "seconds": 1.0}
    save_variant(tmp_path / "run", cfg, "mdlm", tiny_model().lm, training=training)
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert (run["train"]["steps"], run["train"]["batch_size"]) == (5, 16)
    assert main(["export", "--model", str(tmp_path / "run"), str(tmp_path / "out")]) == 0
    card = (tmp_path / "out" / "README.md").read_text()
    assert "Not recorded" not in card and "| steps | 5 |" in card, card


def test_hf_backbone_spec_and_loader_share_the_mask_default_and_its_fields_are_documented():
    import dataclasses
    import inspect
    import re
    from pathlib import Path

    from diffusionlm.config import ModelSpec
    from diffusionlm.models.hf import HFDenoiser
    from diffusionlm.specs import build

    hc = {"model_type": "gpt2", "vocab_size": 11, "n_positions": 16, "n_embd": 8, "n_layer": 1, "n_head": 2}
    den = build("backbone", {"name": "hf", "hf_config": hc})
    assert ModelSpec().mask == "add" and den.mask_added and den.mask_id == 11
    again = build("backbone", den.to_dict())
    assert again.mask_id == den.mask_id and again.input_vocab_size == den.input_vocab_size  # the spec round-trips
    bare = build("backbone", {"name": "hf", "hf_config": hc, "mask": "none"})
    assert bare.mask_id is None and build("backbone", bare.to_dict()).mask_id is None
    doc = (Path(__file__).resolve().parents[1] / "docs" / "TRAINING.md").read_text()
    section = doc.split("## The hf backbone", 1)[1].split("\n## ", 1)[0]
    fields = set(inspect.signature(HFDenoiser.from_spec).parameters) - {"cls"}
    fields |= {f.name for f in dataclasses.fields(ModelSpec) if f.name not in ("kind", "preset", "overrides")}
    undocumented = [f for f in sorted(fields) if not re.search(rf"\\| `{f}` \\|", section)]
    assert not undocumented, undocumented


GPT2_16 = {"model_type": "gpt2", "vocab_size": 300, "n_positions": 16, "n_embd": 8, "n_layer": 1, "n_head": 2}


def test_two_halves_beyond_an_hf_models_positions_fails_before_training():
    from diffusionlm.config import RunConfig
    from diffusionlm.io.runs import build

    for where in (["train.two_halves=true"], ['stages=[{}, {"two_halves": true}]']):
        run = RunConfig.from_file(None, ["model.kind=hf", f"model.hf_config={__import__('json').dumps(GPT2_16)}",
                                         "data.length=12", "data.val_batches=0", *where])
        with pytest.raises(ValueError, match="2 x 12 = 24 rows per sequence, more than the 16 positions"):
            build(run, data=False)
    run = RunConfig.from_file(None, ["model.kind=hf", f"model.hf_config={__import__('json').dumps(GPT2_16)}",
                                     "data.length=8", "data.val_batches=0", "train.two_halves=true"])
    build(run, data=False)  # 16 rows fit


def test_compare_refuses_two_halves_beyond_an_hf_backbones_positions_before_training():
    from diffusionlm.compare import CompareConfig, Variant
    from diffusionlm.compare.spec import _resolve
    from diffusionlm.data import load_tokenizer

    tok = load_tokenizer("byte")
    v = Variant(name="hf2", process={"name": "absorb"}, schedule={"name": "block", "width": 4}, layout="shifted",
                backbone={"name": "hf", "hf_config": GPT2_16}, train={"two_halves": True})
    with pytest.raises(ValueError, match="variant 'hf2''s hf backbone"):
        _resolve(CompareConfig(length=12, train_steps=1), v, tok, 0)
    _resolve(CompareConfig(length=8, train_steps=1), v, tok, 0)


def test_the_readmes_first_example_runs_as_written():
    """The 'What exists' block of README.md, eq. 12 line included, executed as it stands."""
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = text.split("## What exists", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    assert "weighted_embedding=True" in block
    block = block.replace("num_samples=32", "num_samples=2").replace("(8, 128)", "(2, 32)")  # the same code, smaller
    exec(compile(block, "README.md", "exec"), {})


def test_a_variant_composed_in_python_is_seeded_like_its_spec():
    from diffusionlm import DiffusionLM
    from diffusionlm.compare import CompareConfig, Variant
    from diffusionlm.compare.run import _build_lm
    from diffusionlm.compare.spec import _resolve
    from diffusionlm.data import load_tokenizer

    tok = load_tokenizer("byte")
    cfg = CompareConfig(length=16, train_steps=1)
    spec = Variant(name="spec", process={"name": "absorb"}, schedule={"name": "flat"}, layout="aligned",
                   backbone={"n_layers": 1, "hidden": 32, "n_heads": 2, "cond_dim": 16},
                   samplers=[{"name": "mdlm", "steps": 4}])
    e_spec = _resolve(cfg, spec, tok, 0)
    torch.manual_seed(12345)  # whatever state the user's session is in
    lm = DiffusionLM.from_dict(e_spec.composition)
    e_py = _resolve(cfg, Variant(name="py", lm=lm, samplers=[{"name": "mdlm", "steps": 4}]), tok, 0)
    a, b = _build_lm(cfg, e_spec).model.state_dict(), _build_lm(cfg, e_py).model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_loss_spike_is_warned_in_one_line(tmp_path, capsys):
    from diffusionlm.training import Trainer
    from test_trainer import Stream, cfg, make_lm

    lm = make_lm(dropout=0.0)
    loss = lm.loss
    spike_at = {15}
    t = Trainer(lm, cfg(tmp_path, steps=20, save_every=0, ema=None), Stream())

    def spiky(*a, **k):
        out = loss(*a, **k)
        return out._replace(loss=out.loss * 100) if t.step + 1 in spike_at else out

    lm.loss = spiky
    history = t.fit()
    err = [l for l in capsys.readouterr().err.splitlines() if "loss spike" in l]
    assert len(err) == 1 and err[0].startswith("diffusionlm train: warning: step 15: loss "), err
    assert [m["step"] for m in history if m.get("loss_spike")] == [15]


def test_smollm2_is_said_to_be_dequantised_in_fetch_output_and_model_cards(tmp_path, capsys, monkeypatch):
    from transformers import LlamaConfig, LlamaForCausalLM

    from diffusionlm.io import fetch
    from diffusionlm.data import load_tokenizer
    from diffusionlm.lm import DiffusionLM
    from diffusionlm.models.hf import HFDenoiser
    from diffusionlm.processes import Absorb
    from diffusionlm.schedules import Flat

    monkeypatch.setattr(fetch, "fetch", lambda name, cache=None, convert=True: fetch.Fetched(name, tmp_path / "x.gguf", tmp_path / "hf"))
    fetch.main_fetch("smollm2")
    assert "de-quantised to float32 from a 4-bit (Q4_1) GGUF, not the published weights" in capsys.readouterr().out
    tok = load_tokenizer("byte")
    torch.manual_seed(0)
    hf = LlamaForCausalLM(LlamaConfig(vocab_size=tok.vocab_size, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                      num_attention_heads=2, max_position_embeddings=32))
    hf.config._name_or_path = "smollm2"  # what fetch.load_causal_lm sets on the fetched model
    lm = DiffusionLM(HFDenoiser.from_model(hf, mask="add"), Absorb(tok.vocab_size), Flat(), layout="shifted", bos_id=tok.bos_id)
    lm.save_pretrained(tmp_path / "out", tokenizer=tok)
    card = (tmp_path / "out" / "README.md").read_text()
    assert "Q4_1" in card and "not the published weights" in card
