"""Specs: every registered class round-trips through its dict (and JSON); bad specs are one line."""
from __future__ import annotations

import json
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here may touch the network

import pytest
import torch

from diffusionlm import specs
from diffusionlm.lm import DiffusionLM
from diffusionlm.processes import Absorb, process
from diffusionlm.samplers import get_sampler
from diffusionlm.schedules import Block, hyperschedule, noise_schedule

THIRD = 1.0 / 3.0  # not exact in binary: the table must come back bit for bit

#: one example per registered class, with values other than the defaults wherever a field has
#: one, and whether the example is already canonical (every field written as to_dict writes it)
EXAMPLES: dict = {
    "noise_schedule": {
        "linear": {"eps": 0.01},
        "loglinear": {"eps": 0.002},
        "cosine": {"eps": 0.05},
    },
    "process": {
        "absorb": {"vocab_size": 7, "mask_id": 9, "noise": {"name": "cosine", "eps": 0.1}},
        "uniform": {"vocab_size": 7, "noise": {"name": "loglinear", "eps": 0.01}},
        "gamma_hybrid": {"vocab_size": 7, "gamma": 0.2, "mask_id": 7, "noise": {"name": "linear", "eps": 0.02},
                         "weighted_embedding": True},
        "epsilon_hybrid": {"vocab_size": 7, "epsilon": 0.05, "lam": 0.5, "mask_id": 8, "noise": {"name": "linear", "eps": 0.0}},
        "structural": {"vocab_size": 7, "mask_id": 7, "p_max": 0.3, "mask_prob": 0.25},
    },
    "hyperschedule": {
        "quench": {},
        "flat": {"steps": 12},
        "block": {"width": 4, "steps_per_block": 3},
        "slide": {"width": 5},
        "custom": {"table": [[1.0, 1.0], [THIRD, 1.0], [0.0, THIRD], [0.0, 0.0]]},
        "retimed": {"base": {"name": "slide", "width": 3}, "steps": None, "speed": 1.5},
    },
    "sampler": {
        "mdlm": {"steps": 8, "rate": None, "cache": False, "dtype": "float32"},
        "acs": {"eta": 0.25, "steps": None, "rate": 2.0, "cache": False, "dtype": "float32"},
        "threshold": {"threshold": 0.7, "max_per_step": 4, "block": 8, "approx_cache": "dual", "refresh_every": 2,
                      "cache": True, "dtype": "float64", "order_by": "max"},
        "remdm": {"eta": 0.05, "schedule": "rescale", "steps": 16, "rate": None, "cache": True, "dtype": "float64"},
        "sedd_analytic": {"steps": 5, "rate": None, "cache": False, "dtype": "float32"},
        "sedd_euler": {"steps": 6, "rate": None, "cache": False, "dtype": "float64"},
        "ar": {"max_new_tokens": 5, "temperature": 0.7, "greedy": True, "cache": False, "dtype": "float32"},
        "lad": {"iterations": 9, "eta0": 0.5, "sharpness": 2.0, "remask": False, "confidence": True, "block_size": 3,
                "edit_previous": True, "temperature": 0.9, "top_k": 5, "top_p": 0.9, "eos_id": 2, "eos_bias": 0.5,
                "patience": None, "precision": "float32"},
    },
    "backbone": {
        "transformer": {"preset": "tiny", "vocab_size": 11, "n_layers": 1, "hidden": 32, "n_heads": 2, "cond_dim": 8,
                        "time_frequency_dim": 8, "max_positions": 16, "time_conditioning": True, "mask_id": 10,
                        "weighted_embedding_gamma": 0.5, "tie_embeddings": False, "bias": True},
        "hf": {"hf_config": {"model_type": "gpt2", "vocab_size": 20, "n_positions": 16, "n_embd": 16, "n_layer": 1,
                             "n_head": 2}, "mask": "add", "lora": {"r": 2, "target_modules": ["c_attn"]}},
    },
    "annealing": {
        "attention_annealing": {"warmup_steps": 7, "shared": True},
    },
    "composition": {
        "diffusion_lm": {
            "process": {"name": "gamma_hybrid", "vocab_size": 9, "gamma": 0.1},
            "schedule": {"name": "block", "width": 4, "steps_per_block": 2},
            "layout": "shifted", "bos_id": 9, "settled_weight": 0.25, "settled_weighting": "eq11", "max_positions": 16,
            "annealing": {"name": "attention_annealing", "warmup_steps": 3, "shared": False},
            "backbone": {"name": "transformer", "n_layers": 1, "hidden": 32, "n_heads": 2, "cond_dim": 8},
        },
    },
}
#: examples written in a shorter form than to_dict's (preset names, "mask": "add", derived backbone fields)
NOT_CANONICAL = {("backbone", "transformer"), ("backbone", "hf"), ("composition", "diffusion_lm")}


def _fields(kind: str, obj) -> set:
    if kind == "composition":
        return set(obj.to_dict()) - {"name"}
    if kind == "backbone" and type(obj).__name__ == "DiffusionTransformer":
        import dataclasses

        from diffusionlm.models import TransformerConfig

        return {f.name for f in dataclasses.fields(TransformerConfig)}
    return set(specs.field_names(obj))


def test_every_registered_class_round_trips_through_its_dict_and_json():
    assert set(EXAMPLES) == set(specs.KINDS)
    for kind in specs.KINDS:
        reg = specs.registry(kind)
        assert set(reg) == set(EXAMPLES[kind]), f"{kind}: every registered class needs an example here"
        for name, fields in EXAMPLES[kind].items():
            spec = {"name": name, **fields}
            torch.manual_seed(0)
            obj = specs.build(kind, spec)
            assert isinstance(obj, reg[name]) or kind == "backbone", (kind, name)
            d = specs.to_dict(obj)
            assert d["name"] == name
            assert set(d) - {"name"} == _fields(kind, obj), (kind, name)  # every field, nothing else
            if (kind, name) not in NOT_CANONICAL:
                assert d == spec, (kind, name)
            text = json.dumps(d)
            again = specs.build(kind, json.loads(text))
            assert type(again) is type(obj)
            assert specs.to_dict(again) == d and json.dumps(specs.to_dict(again)) == text, (kind, name)
            if kind != "backbone" and kind != "composition":
                assert specs.build(kind, again) is again  # objects pass through
            if kind in ("noise_schedule", "hyperschedule", "sampler"):
                assert again == obj  # value types: equal as objects too
            if kind == "process":
                assert obj.config() == d  # the older name says the same


def test_round_trips_keep_dtypes_floats_and_nested_parts_exactly():
    s = specs.build("sampler", {"name": "acs", "eta": 0.1, "dtype": "float32"})
    assert s.dtype is torch.float32 and specs.to_dict(s)["dtype"] == "float32"
    assert specs.build("sampler", specs.to_dict(get_sampler("mdlm")())).dtype is torch.float64
    c = specs.build("hyperschedule", json.loads(json.dumps({"name": "custom", **EXAMPLES["hyperschedule"]["custom"]})))
    assert c.table_.dtype == torch.float64 and c.table_[1, 0].item() == THIRD
    p = specs.build("process", EXAMPLES["process"]["absorb"] | {"name": "absorb"})
    assert p.noise == noise_schedule({"name": "cosine", "eps": 0.1}) and p.config() == p.to_dict()
    # the composition's parts are the parts the spec names, and a given model is used as it is
    lm = DiffusionLM.from_dict({"name": "diffusion_lm", **EXAMPLES["composition"]["diffusion_lm"]})
    assert isinstance(lm, DiffusionLM) and lm.schedule == Block(4, 2) and lm.process.gamma == 0.1
    cfg = lm.model.config  # derived from the process: output size, input ids (BOS), time conditioning
    assert (cfg.vocab_size, cfg.input_vocab_size, cfg.time_conditioning, cfg.max_positions) == (10, 10, True, 16)
    spec = lm.to_dict()
    same = DiffusionLM.from_dict(spec, model=lm.model)
    assert same.model is lm.model and same.to_dict() == spec
    # the eq. 12 weighted embedding: the backbone derived from such a process mixes in f(MASK)
    eq12 = DiffusionLM.from_dict({**EXAMPLES["composition"]["diffusion_lm"], "name": "diffusion_lm",
                                    "process": {"name": "gamma_hybrid", "vocab_size": 9, "gamma": 0.1, "weighted_embedding": True}})
    assert (eq12.model.config.mask_id, eq12.model.config.weighted_embedding_gamma) == (9, 0.1)
    assert set(eq12.model_inputs(torch.full((1, 3), 0.5))) == {"embedding_weight"}


def test_thin_entry_points_still_work():
    assert process({"name": "absorb", "vocab_size": 5}).to_dict() == Absorb(5).to_dict()
    assert process({"name": "uniform", "vocab_size": 5, "mask_id": None}).mask_id is None  # older run.json form
    assert hyperschedule("quench").to_dict() == {"name": "quench"}
    assert noise_schedule("cosine").to_dict() == {"name": "cosine", "eps": 0.0}


@pytest.mark.parametrize("kind, spec, message", [
    ("process", {"name": "absorbb", "vocab_size": 5},
     "unknown process 'absorbb'; known: absorb, epsilon_hybrid, gamma_hybrid, structural, uniform"),
    ("process", {"vocab_size": 5}, "a process spec needs a \"name\"; known: absorb"),
    ("process", {"name": "absorb"}, "process absorb: missing key vocab_size; its keys: vocab_size, mask_id, noise"),
    ("process", {"name": "absorb", "vocab_size": 5, "gama": 0.1}, "process absorb: unknown key(s) gama; its keys: vocab_size, mask_id, noise"),
    ("process", {"name": "absorb", "vocab_size": 5, "noise": {"name": "quadratic"}},
     "unknown noise schedule 'quadratic'; known: cosine, linear, loglinear"),
    ("hyperschedule", "zigzag", "unknown hyperschedule 'zigzag'; known: block, custom, flat, quench, retimed, slide"),
    ("hyperschedule", {"name": "retimed", "base": "blok", "steps": 3}, "unknown hyperschedule 'blok'"),
    ("hyperschedule", {"name": "custom"}, "hyperschedule custom: missing key table"),
    ("sampler", {"name": "mdlm", "dtype": "float8"}, "sampler mdlm field 'dtype': unknown dtype 'float8'; known: float64"),
    ("sampler", {"name": "mdlm", "steps": 0}, "steps must be an int >= 1, got 0"),
    ("backbone", {"name": "transformer", "vocab_size": 5, "layers": 2}, "backbone transformer: unknown key(s) layers; its keys: preset, vocab_size"),
    ("backbone", {"name": "transformer", "preset": "huge", "vocab_size": 5}, "unknown preset 'huge'"),
    ("backbone", {"name": "hf"}, "backbone hf: give exactly one of the keys hf_config"),
    ("backbone", {"name": "bert"}, "unknown backbone 'bert'; known: hf, transformer"),
    ("composition", {"name": "diffusion_lm", "process": {"name": "absorb", "vocab_size": 5}},
     "composition diffusion_lm: missing key schedule"),
    ("composition", {"name": "diffusion_lm", "process": {"name": "absorb", "vocab_size": 5}, "schedule": "flat",
                     "backbone": "transformer", "sampler": "mdlm"}, "composition diffusion_lm: unknown key(s) sampler; its keys: process, schedule"),
    ("composition", {"name": "lm", "process": {}}, "unknown composition 'lm'; known: diffusion_lm"),
    ("gadget", {"name": "x"}, "unknown kind of spec 'gadget'; known: noise_schedule, process"),
])
def test_bad_specs_are_one_line_errors(kind, spec, message):
    with pytest.raises(ValueError) as err:
        specs.build(kind, spec)
    text = str(err.value)
    assert message in text and "\n" not in text


def test_a_given_model_must_agree_with_the_spec_backbone():
    lm = DiffusionLM.from_dict({"name": "diffusion_lm", "process": {"name": "absorb", "vocab_size": 5},
                                  "schedule": "flat", "backbone": {"name": "transformer", "n_layers": 1, "hidden": 32,
                                                                   "n_heads": 2, "max_positions": 8}})
    spec = lm.to_dict()
    spec["backbone"]["n_layers"] = 2
    with pytest.raises(ValueError, match="the given model's backbone field 'n_layers' is 1, the spec says 2"):
        DiffusionLM.from_dict(spec, model=lm.model)


def test_renamed_names_still_work_for_one_release_and_say_where_they_went():
    """The composition builders of specs / hub, the old module paths, config's run builders and
    register_sampler keep working, each with a DeprecationWarning naming the new place."""
    import importlib
    import sys

    import diffusionlm.config
    from diffusionlm.samplers import register_sampler

    spec = {"name": "diffusion_lm", "process": {"name": "absorb", "vocab_size": 5}, "schedule": "flat",
            "backbone": {"name": "transformer", "n_layers": 1, "hidden": 32, "n_heads": 2, "max_positions": 8}}
    with pytest.warns(DeprecationWarning, match="DiffusionLM.from_dict"):
        lm = specs.build_composition(spec)
    with pytest.warns(DeprecationWarning, match=r"lm.to_dict\(\)"):
        assert specs.composition_dict(lm) == lm.to_dict()
    for old, new in [("diffusionlm.hub", "diffusionlm.io.hub"), ("diffusionlm.safeio", "diffusionlm.io.safeio"),
                     ("diffusionlm.fetch", "diffusionlm.io.fetch"), ("diffusionlm.configcheck", "diffusionlm.config.check")]:
        sys.modules.pop(old, None)
        with pytest.warns(DeprecationWarning, match=f"{old} moved to {new}"):
            assert importlib.import_module(old) is importlib.import_module(new)
    with pytest.warns(DeprecationWarning, match="diffusionlm.config.safetensors_errors moved to diffusionlm.io.runs"):
        errors = diffusionlm.config.safetensors_errors()
    assert len(errors) == 2
    with pytest.warns(DeprecationWarning, match="register_sampler is deprecated"):
        assert register_sampler(get_sampler("mdlm")) is get_sampler("mdlm")
