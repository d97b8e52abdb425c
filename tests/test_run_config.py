"""Run configs in the one composition format (issue 23): a run config's "composition" section is
DiffusionLM.to_dict()'s format, built by DiffusionLM.from_dict and nothing else; old-format configs
and run.json files (model / process / schedule / layout sections) load through one converter that
says so in one line, and train exactly as their converted form."""
import dataclasses
import json
import warnings
from pathlib import Path

import pytest
import torch

from diffusionlm import DiffusionLM
from diffusionlm.config import RunConfig, TrainConfig
from diffusionlm.config import legacy
from diffusionlm.data import data_path
from diffusionlm.io.runs import build, build_tokenizer, composition_spec, load_run
from diffusionlm.training import Trainer

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted((ROOT / "recipes").glob("*.json"))
SCRATCH, DIFFUGPT = ROOT / "recipes" / "scratch.json", ROOT / "recipes" / "diffugpt.json"
TINY = ['composition.backbone={"name": "transformer", "preset": "tiny", "n_layers": 1, "hidden": 32, "n_heads": 2, '
        '"cond_dim": 16}', "data.tokenizer=byte", "data.length=16", "data.val_batches=0"]
GPT2 = {"model_type": "gpt2", "vocab_size": 259, "n_embd": 16, "n_layer": 1, "n_head": 2, "n_positions": 64,
        "bos_token_id": 257, "eos_token_id": 256, "pad_token_id": 258}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_text(data_path("tinyshakespeare", "input.txt").read_text(encoding="utf-8")[:6000])
    return path


def _weights(lm) -> dict:
    return {k: v.detach().clone() for k, v in lm.model.state_dict().items()}


def _same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _old_form(path: Path) -> dict:
    """The old-format dict a new-format recipe stands for (the inverse of the converter, by hand)."""
    new = json.loads(path.read_text())
    comp = new.pop("composition")
    backbone = dict(comp["backbone"])
    if backbone.pop("name") == "transformer":
        model = {"kind": "transformer", "preset": backbone.pop("preset"), "overrides": backbone}
    else:
        model = {"kind": "hf", **backbone}
    if comp.get("annealing"):
        model["annealing_steps"] = comp["annealing"]["warmup_steps"]
    return {"model": model, "process": comp["process"], "schedule": comp["schedule"], "layout": comp["layout"], **new}


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_every_recipe_is_in_the_new_format_and_round_trips_through_json(path):
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)  # no converter notice: the recipe is in the new form
        run = RunConfig.from_file(path)
        again = RunConfig.from_dict(json.loads(json.dumps(run.to_dict())))
    assert again.to_dict() == run.to_dict()
    assert set(run.to_dict()) == {"composition", "init", "data", "train", "stages"}
    assert set(run.composition) <= {"name", *DiffusionLM.spec_fields()} and run.composition["name"] == "diffusion_lm"
    # the converter gives the recipe back from its old form, in one line naming the file
    with pytest.warns(FutureWarning) as notes:
        old = RunConfig.from_dict(_old_form(path), source="old.json")
    assert len(notes) == 1 and "\n" not in str(notes[0].message) and str(notes[0].message).startswith("old.json ")
    assert old.composition == run.composition


@pytest.mark.parametrize("overrides", [[], ['composition.backbone={"name": "hf", "hf_config": ' + json.dumps(GPT2) + "}"]],
                         ids=["transformer", "hf"])
def test_the_run_composition_is_from_dict_of_its_section(overrides):
    """build(run).lm and DiffusionLM.from_dict(composition_spec(run, tokenizer)) are the same
    composition (same to_dict) with the same weights under one seed."""
    run = RunConfig.from_file(SCRATCH, TINY + overrides)
    torch.manual_seed(0)
    built = build(run, data=False)
    spec = composition_spec(run, build_tokenizer(run.data))
    torch.manual_seed(0)
    lm = DiffusionLM.from_dict(spec)
    assert lm.to_dict() == built.lm.to_dict()
    assert _same_weights(_weights(lm), _weights(built.lm))
    assert lm.process.vocab_size == 259 and lm.bos_id == 257  # filled in from the byte tokenizer


def _old_run_json(tmp_path: Path) -> Path:
    """A run.json as the previous code wrote it (every section in full; /work/main/runs/smollm2-block's
    shape, with a tiny random Llama in place of the fetched SmolLM2)."""
    llama = {"model_type": "llama", "vocab_size": 259, "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
             "num_attention_heads": 2, "num_key_value_heads": 1, "max_position_embeddings": 64,
             "bos_token_id": 257, "eos_token_id": 256}
    old = {
        "model": {"kind": "hf", "preset": "tiny", "overrides": {}, "path": None, "hf_config": llama,
                  "attn_implementation": "sdpa", "mask": "add",
                  "lora": {"r": 4, "target_modules": ["q_proj", "v_proj"]}, "annealing_steps": 3},
        "process": {"name": "absorb", "noise": {"name": "linear"}},
        "schedule": {"name": "block", "width": 4, "steps_per_block": 4},
        "layout": "shifted",
        "data": {**dataclasses.asdict(RunConfig().data), "tokenizer": "byte", "length": 16, "val_batches": 0},
        "train": {**dataclasses.asdict(TrainConfig(steps=3, batch_size=2, progress=False)), "betas": [0.9, 0.999]},
        "stages": [],
    }
    (tmp_path / "run.json").write_text(json.dumps(old, indent=2))
    return tmp_path / "run.json"


def test_an_old_run_json_loads_with_one_line_and_builds_its_converted_composition(tmp_path):
    path = _old_run_json(tmp_path)
    with pytest.warns(FutureWarning) as notes:
        old = RunConfig.from_dict(json.loads(path.read_text()), source=str(path))
    assert len(notes) == 1
    line = str(notes[0].message)
    assert "\n" not in line and line.startswith(f"{path} is an old-format run config") and '"composition"' in line
    assert old.composition["backbone"]["lora"] == {"r": 4, "target_modules": ["q_proj", "v_proj"]}
    assert old.composition["annealing"] == {"name": "attention_annealing", "warmup_steps": 3}
    converted = tmp_path / "new.json"
    converted.write_text(json.dumps(old.to_dict()))
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        new = RunConfig.from_dict(json.loads(converted.read_text()))
    assert new.to_dict() == old.to_dict()
    built = []
    for run in (old, new):
        torch.manual_seed(0)
        built.append(build(run, data=False).lm)
    assert built[0].to_dict() == built[1].to_dict() and _same_weights(_weights(built[0]), _weights(built[1]))
    # a run directory with that run.json and no weights: load_run reads it (one line) and says what is missing
    with pytest.warns(FutureWarning, match="old-format run config"), pytest.raises(FileNotFoundError, match="no trained weights"):
        load_run(tmp_path)


def _losses(config: Path, corpus: Path, extra: list, steps: int = 3) -> list:
    run = RunConfig.from_file(config, [*extra, f"data.corpus={corpus}", "train.batch_size=2", "stages=[]"])
    torch.manual_seed(run.train.seed)
    built = build(run)
    train = {**dataclasses.asdict(run.train), "steps": steps, "out_dir": None, "progress": False, "eval_every": 0,
             "save_every": 0, "warmup_steps": 0}
    return [m["loss"] for m in Trainer(built.lm, TrainConfig(**train), built.train_stream).fit()]


@pytest.mark.parametrize("recipe, extra", [
    (SCRATCH, TINY),
    (DIFFUGPT, ["model.path=null", "model.hf_config=" + json.dumps(GPT2), "model.annealing_steps=2", "data.tokenizer=byte",
                "data.length=16", "data.val_batches=0"]),
], ids=["scratch", "diffugpt"])
def test_a_new_format_recipe_and_its_old_form_train_identically(tmp_path, corpus, recipe, extra):
    old = tmp_path / "old.json"
    old.write_text(json.dumps(_old_form(recipe)))
    new_losses = _losses(recipe, corpus, extra)
    with pytest.warns(FutureWarning, match=f"{old} is an old-format run config"):
        old_losses = _losses(old, corpus, extra)
    assert len(new_losses) == 3 and all(map(lambda v: v == v, new_losses))
    assert new_losses == old_losses


def test_overrides_reach_into_the_composition_and_the_old_keys_still_work():
    run = RunConfig.from_file(SCRATCH, TINY + ['composition.schedule={"name": "block", "width": 4}',
                                               "composition.schedule.width=8", "composition.backbone.n_layers=2",
                                               "composition.settled_weight=0.5"])
    assert run.composition["schedule"] == {"name": "block", "width": 8}
    assert run.composition["backbone"]["n_layers"] == 2 and run.composition["settled_weight"] == 0.5
    lm = build(run, data=False).lm
    assert lm.schedule.width(16) == 8 and lm.model.config.n_layers == 2 and lm.settled_weight == 0.5
    # the old keys: process / schedule / layout are composition fields, model.* the backbone's old form
    old = RunConfig.from_file(SCRATCH, TINY + ['schedule={"name": "block", "width": 4}', "schedule.width=8", "layout=shifted",
                                               'process={"name": "absorb"}', "model.overrides.n_layers=2"])
    assert old.composition["schedule"] == {"name": "block", "width": 8} and old.composition["layout"] == "shifted"
    assert old.composition["process"] == {"name": "absorb"} and old.composition["backbone"]["n_layers"] == 2
    hf = RunConfig.from_file(DIFFUGPT, ["model.path=gpt2-medium", "model.annealing_steps=null", 'model.lora={"r": 2}'])
    assert hf.composition["backbone"]["path"] == "gpt2-medium" and hf.composition["backbone"]["lora"] == {"r": 2}
    assert hf.composition["annealing"] is None
    for bad, message in (
        (["composition.schedul={}"], r"unknown config key composition\.schedul; did you mean composition\.schedule\?"),
        (["composition.backbone.n_layer=1"], r"did you mean composition\.backbone\.n_layers\?"),
        (["composition.layout=sideways"], r"composition\.layout = 'sideways': must be one of aligned, shifted"),
        (['composition.schedule={"name": "block", "width": 512}'], r"composition\.schedule: .*width 512 exceeds"),
        (["model.hf_cofig={}"], r"did you mean model\.hf_config\?"),
    ):
        with pytest.raises(ValueError, match=message):
            RunConfig.from_file(SCRATCH, bad)


def test_a_config_in_both_forms_is_refused():
    with pytest.raises(ValueError, match="either a composition section or the old process section"):
        RunConfig.from_dict({"composition": {"name": "diffusion_lm"}, "process": {"name": "absorb"}})
    assert legacy.is_old({"model": {}}) and not legacy.is_old({"composition": {}})
