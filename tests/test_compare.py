"""The comparison job: a spec with variants the defaults lack runs end to end on equal steps and
tokens; the budget picks the steps before training; bad input is one line and trains nothing."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import diffusionlm
from diffusionlm.compare import run as cmp  # the job itself (private steps patched below)
from diffusionlm.cli import main
from diffusionlm.compare import CompareConfig, default_spec, size_steps
from diffusionlm.io.runs import load_run
from diffusionlm.data import TokenBlocks, load_corpus, load_tokenizer
from diffusionlm.lm import DiffusionLM
from diffusionlm.models import DiffusionTransformer, TransformerConfig
from diffusionlm.processes import Absorb
from diffusionlm.schedules import Block

#: a backbone small enough to train a few steps of several variants in seconds
SMALL = {"name": "transformer", "preset": "tiny", "n_layers": 1, "hidden": 32, "n_heads": 2, "cond_dim": 16}
TINY = dict(length=16, batch_size=2, eval_blocks=2, eval_samples=2, eval_batch_size=2, num_samples=2, progress=False)


def small_spec(variants: list, **shared) -> dict:
    return {"shared": {"backbone": SMALL, "train_steps": 2, "budget_minutes": None, **TINY, **shared}, "variants": variants}


NEW_VARIANTS = [
    {"name": "gamma_slide", "process": {"name": "gamma_hybrid", "gamma": 0.1}, "schedule": {"name": "slide", "width": 8},
     "samplers": [{"name": "acs", "eta": 0.05, "steps": [2, 4, 8, 16]}]},
    {"name": "uniform_block", "process": {"name": "uniform"}, "schedule": {"name": "block", "width": 4, "steps_per_block": 2},
     "samplers": [{"name": "sedd_analytic", "steps": [2, 4, 8, 16]}]},
]


@pytest.fixture
def no_training(monkeypatch):
    """Fail the test if anything is trained (bad input must be refused before training)."""
    def refuse(*args, **kwargs):
        raise AssertionError("trained despite bad input")

    monkeypatch.setattr(cmp, "_train", refuse)
    monkeypatch.setattr(cmp, "_probe", refuse)


def test_a_spec_with_new_variants_and_a_composed_lm_runs_end_to_end_on_equal_steps_and_tokens(tmp_path):
    """GammaHybrid + Slide(8) sampled by ACS, Uniform + Block(4) sampled by SEDD analytic and a
    DiffusionLM composed in Python enter through `diffusionlm.compare(variants=[...])`; the
    budget sizes the steps; every model trains the same steps on the same tokens."""
    N = load_tokenizer("byte").vocab_size
    torch.manual_seed(0)
    model = DiffusionTransformer(TransformerConfig(vocab_size=N + 1, max_positions=16, n_layers=1, hidden=32, n_heads=2))
    mine = DiffusionLM(model, Absorb(N), Block(4, 2))
    out = tmp_path / "cmp"
    gpt2 = {"name": "gpt2_flat", "process": {"name": "absorb"}, "schedule": {"name": "flat"}, "layout": "shifted",
            "backbone": {"name": "hf", "mask": "add", "hf_config": {"model_type": "gpt2", "vocab_size": N, "n_positions": 16,
                                                                     "n_embd": 16, "n_layer": 1, "n_head": 2}},
            "samplers": [{"name": "mdlm", "steps": [2, 4]}]}
    res = diffusionlm.compare(small_spec([]), variants=NEW_VARIANTS + [{"name": "mine", "lm": mine}, gpt2],
                              train_steps=None, budget_minutes=0.1, out_dir=str(out))
    assert set(res["variants"]) == {"gamma_slide", "uniform_block", "mine", "gpt2_flat"}
    f = res["fairness"]
    S = f["train_steps"]
    assert S >= 1 and S == f["train_steps"] and f["budget_minutes"] == 0.1
    assert res["machine"]["cpus"] >= 1 and len(res["machine"]["load_average_1_5_15_min"]) == 3
    assert S * f["seconds_per_step_sum"] <= 0.1 * 60 and set(f["seconds_per_step"]) == {"gamma_slide", "uniform_block", "mine", "gpt2_flat", "judge"}
    models = list(res["variants"].values()) + [res["judge_model"]]
    assert {r["train_steps"] for r in models} == {S}
    assert {r["train_tokens"] for r in models} == {S * 2 * 16} == {f["tokens_per_model"]}
    assert len({r["train_tokens_sha1"] for r in res["variants"].values()}) == 1  # the very same token stream
    assert res["judge_model"]["train_tokens_sha1"] != res["variants"]["mine"]["train_tokens_sha1"]  # its own seed
    assert res["variants"]["mine"]["composition"]["schedule"] == Block(4, 2).to_dict()
    assert mine.model.training is False and res["variants"]["mine"]["train_steps"] == S  # the given object was trained
    for name, r in res["variants"].items():
        lk = r["likelihood"]
        assert lk["ppl_low"] < lk["ppl"] < lk["ppl_high"] and lk["stderr_per_token"] > 0 and lk["tokens"] == 2 * 16
        steps = [s["steps"] for s in r["sampling"]]
        assert steps == {"mine": [8, 16, 32, 64], "gpt2_flat": [2, 4]}.get(name, [2, 4, 8, 16])
        assert all(s["gen_ppl"] > 1 and 0 <= s["distinct2"] <= 1 for s in r["sampling"])
    assert [s["sampler"] for s in res["variants"]["gamma_slide"]["sampling"]] == ["acs"] * 4
    assert res["variants"]["uniform_block"]["sampling"][0]["sampler_spec"]["name"] == "sedd_analytic"
    saved = json.loads((out / "results.json").read_text())
    assert saved["fairness"] == json.loads(json.dumps(f))
    md = (out / "results.md").read_text()
    for text in ("nats per token", "standard error", "exp(nats - stderr)", f"**{S} optimizer steps**", "Judge: an AR model",
                 "seconds per step", "Machine: "):
        assert text in md
    for png in ("ppl.png", "genppl_vs_entropy.png", "quality_vs_steps.png"):
        assert (out / png).stat().st_size > 0
    assert json.loads((out / "models" / "gamma_slide" / "run.json").read_text())["composition"]["process"]["gamma"] == 0.1
    # an HF backbone described by its dict: trained, saved as a composition, loaded back by the one loader
    assert res["variants"]["gpt2_flat"]["composition"]["backbone"]["hf_config"]["vocab_size"] == N + 1  # MASK added
    from diffusionlm.io.hub import load_model

    again = load_model(out / "models" / "gpt2_flat")
    assert again.kind == "composition" and again.lm.process.mask_id == N


def test_budget_sizing_picks_equal_steps_and_refuses_a_budget_below_one_step():
    assert size_steps({"a": 0.5, "b": 1.5, "judge": 1.0}, 30.0) == 10
    assert size_steps({"a": 0.5, "b": 1.5}, 2.0) == 1
    with pytest.raises(ValueError) as err:
        size_steps({"a": 0.5, "b": 1.5}, 1.9)
    text = str(err.value)
    assert "too small for one training step of every model (a 0.50 s, b 1.50 s; 2.00 s in all)" in text and "\n" not in text


def test_a_budget_too_small_trains_nothing(tmp_path, monkeypatch):
    trained = []
    monkeypatch.setattr(cmp, "_train", lambda *a, **k: trained.append(a) or (_ for _ in ()).throw(AssertionError))
    out = tmp_path / "cmp"
    with pytest.raises(ValueError, match="too small for one training step of every model"):
        diffusionlm.compare(small_spec(NEW_VARIANTS[:1]), train_steps=None, budget_minutes=1e-6, out_dir=str(out))
    assert trained == [] and not out.exists()


@pytest.mark.parametrize("variants, shared, message", [
    ([{**NEW_VARIANTS[0], "process": {"name": "gama_hybrid"}}], {},
     "variant 'gamma_slide': unknown process 'gama_hybrid'; known: absorb, epsilon_hybrid, gamma_hybrid, structural, uniform"),
    ([{**NEW_VARIANTS[0], "samplers": [{"name": "acss", "eta": 0.1}]}], {},
     "variant 'gamma_slide': unknown sampler 'acss'; known: acs, ar, lad, mdlm, remdm, sedd_analytic, sedd_euler, threshold"),
    ([{k: v for k, v in NEW_VARIANTS[0].items() if k != "schedule"}], {}, "variant 'gamma_slide': missing key schedule"),
    ([{**NEW_VARIANTS[0], "sampler": []}], {}, "variant 'gamma_slide': unknown key(s) sampler; its keys: name, process"),
    ([{"name": "lad", "process": {"name": "structural"}, "schedule": {"name": "flat"},
       "samplers": [{"name": "sedd_analytic", "steps": [4]}]}], {},
     "variant 'lad': sampler 'sedd_analytic': SEDDAnalytic fits the score-entropy processes"),
    ([{**NEW_VARIANTS[1], "schedule": {"name": "flat"}, "samplers": [{"name": "sedd_analytic"}]}], {},
     "variant 'uniform_block': sampler 'sedd_analytic': Flat(steps=None) is continuous-time: give the sampler a number of steps"),
    ([{**NEW_VARIANTS[0], "samplers": [{"name": "ar", "steps": [4, 8]}]}], {},
     "variant 'gamma_slide': sampler 'ar' fixes its own number of steps"),
    ([{**NEW_VARIANTS[0], "train": {"steps": 10}}], {}, "variant 'gamma_slide' train: may not set steps"),
    ([{**NEW_VARIANTS[0], "train": {"two_halfs": True}}], {}, "variant 'gamma_slide' train: unknown key(s) two_halfs; did you mean two_halves?"),
    ([NEW_VARIANTS[0], NEW_VARIANTS[0]], {}, "variant names must be unique; repeated: gamma_slide"),
    (["mdlm", "bert"], {}, "unknown variant 'bert'; the default spec's variants: ar, mdlm, block, gamma, epsilon"),
    (NEW_VARIANTS, {"eval_samples": 0}, "eval_samples (--eval-samples) must be an int >= 1, got 0"),
    (NEW_VARIANTS, {"budget_minutes": -1, "train_steps": None}, "budget_minutes (--budget-minutes) must be a number > 0, got -1"),
    (NEW_VARIANTS, {"budget_minutes": 1.0}, "give exactly one of train_steps"),
    (NEW_VARIANTS, {"eval_blocks": 10**6}, "eval_blocks (--eval-blocks) is 1000000"),
    (NEW_VARIANTS, {"judge": {"name": "gpt5"}}, "judge must be"),
    (NEW_VARIANTS, {"budget": 3}, "shared settings: unknown key(s) budget; its keys: corpus"),
])
def test_bad_input_is_one_line_and_trains_nothing(no_training, tmp_path, variants, shared, message):
    with pytest.raises(ValueError) as err:
        diffusionlm.compare(small_spec(variants, **shared), out_dir=str(tmp_path / "cmp"))
    text = str(err.value)
    assert message in text and "\n" not in text
    assert not (tmp_path / "cmp").exists()


def test_bad_command_lines_are_one_line_errors(no_training, tmp_path, capsys):
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps(small_spec(NEW_VARIANTS)))
    for argv, message in (
        (["--eval-samples", "0"], "eval_samples (--eval-samples) must be an int >= 1, got 0"),
        (["--budget-minutes", "-1"], "budget_minutes (--budget-minutes) must be a number > 0, got -1.0"),
        (["--variants", "gamma_slide", "nope"], "unknown variant 'nope'; the spec's variants: gamma_slide, uniform_block"),
    ):
        assert main(["compare", "--spec", str(spec), "--out", str(tmp_path / "cmp"), *argv]) == 1
        err = capsys.readouterr().err.strip()
        assert err == f"diffusionlm compare: error: {err.split('error: ', 1)[1]}" and message in err and "\n" not in err
    assert main(["compare", "--spec", str(tmp_path / "missing.json")]) == 1
    assert "comparison spec not found" in capsys.readouterr().err
    (tmp_path / "bad.json").write_text("{\"shared\": ")
    assert main(["compare", "--spec", str(tmp_path / "bad.json")]) == 1
    assert "bad.json is not valid JSON" in capsys.readouterr().err
    assert not (tmp_path / "cmp").exists()


def test_the_default_spec_is_the_five_variants_and_checks_out(no_training):
    spec = default_spec()
    cfg = CompareConfig(**{k: v for k, v in spec["shared"].items() if not k.startswith("_")})
    assert cfg.budget_minutes is not None and cfg.train_steps is None and cfg.judge == {"name": "trained_ar", "seed": 1}
    tok = load_tokenizer(cfg.tokenizer)
    variants = cmp._variants(spec, None)
    assert [v.name for v in variants] == ["ar", "mdlm", "block", "gamma", "epsilon"]
    for v in variants:
        entry = cmp._resolve(cfg, v, tok, cfg.seed)
        counts = [n for _, _, n in entry.runs]
        assert counts == [None] if v.name == "ar" else counts == [8, 16, 32, 64]  # quality against >= 4 step counts
    assert [r[1].name for r in cmp._resolve(cfg, variants[4], tok, 0).runs] == ["acs"] * 4


def test_setup_ships_the_default_spec(tmp_path):
    root = Path(__file__).resolve().parents[1]
    subprocess.run([sys.executable, "setup.py", "-q", "build_py", "--build-lib", str(tmp_path)], cwd=root, check=True,
                   capture_output=True)
    shipped = tmp_path / "diffusionlm" / "resources" / "default_compare.json"
    assert json.loads(shipped.read_text()) == default_spec()


@pytest.mark.slow
def test_the_default_spec_end_to_end_from_the_command_line(tmp_path):
    """The five default variants at tiny sizes through the CLI; each saved variant reloads, and the
    ar variant's exact NLL in the table is its causal likelihood."""
    out = tmp_path / "cmp"
    rc = main(["compare", "--train-steps", "2", "--length", "32", "--batch-size", "4", "--eval-blocks", "4",
               "--eval-samples", "2", "--num-samples", "2", "--steps", "4", "8", "--out", str(out)])
    assert rc == 0
    res = json.loads((out / "results.json").read_text())
    assert set(res["variants"]) == {"ar", "mdlm", "block", "gamma", "epsilon"}
    assert {r["train_steps"] for r in res["variants"].values()} == {2} == {res["judge_model"]["train_steps"]}
    for name, r in res["variants"].items():
        assert [s["steps"] for s in r["sampling"]] == ([32] if name == "ar" else [4, 8])
        run, built = load_run(out / "models" / name)
        comp = r["composition"]
        assert run.composition == comp  # run.json holds the variant's composition, in its one format
    ar = res["variants"]["ar"]["likelihood"]
    assert ar["method"].startswith("exact") and ar["stderr_per_token"] == 0
    _, built = load_run(out / "models" / "ar")
    ids = TokenBlocks(load_corpus("stdlib", "test"), built.tokenizer, 32).ids[:4]
    nll, n = cmp.ar_judge_nll(built.lm, ids)
    assert nll / n == pytest.approx(ar["nll_per_token"], rel=1e-5)
    assert main(["sample", "--run", str(out / "models" / "mdlm"), "--steps", "4", "--length", "16"]) == 0
