"""The studies of experiments/ cannot rot: every spec runs end to end at toy size, in the order the
studies depend on each other (1's AR model judges 2-4; 4 evaluates 3's saved models without
retraining them); plus the pieces they added: nanoGPT's character split and vocabulary, the
shared train overrides and min_lr, the evaluate-only variant, the no-judge option and the
one-forward AR bound."""
import hashlib
import json
from pathlib import Path

import pytest
import torch

from diffusionlm.compare import run as C
from diffusionlm.data import CharTokenizer, load_corpus, load_tokenizer

ROOT = Path(__file__).resolve().parents[1]
EXP = ROOT / "experiments"
STUDIES = ["01_ar_sanity", "02_block_size", "03_hybrid", "04_sampling", "05_lad"]
#: toy sizes: one layer of width 32, 2 steps, 2 test blocks, 1 sample
TOY = {"backbone": {"name": "transformer", "preset": "tiny", "n_layers": 1, "n_heads": 2, "hidden": 32, "dropout": 0.0},
       "length": 32, "batch_size": 2, "train_steps": 2, "eval_blocks": 2, "eval_samples": 1, "eval_batch_size": 2,
       "num_samples": 1, "progress": False}


def _spec(study: str) -> dict:
    return json.loads((EXP / study / "spec.json").read_text())


def _state_sha(lm) -> str:
    h = hashlib.sha1()
    for k, v in sorted(lm.model.state_dict().items()):
        h.update(k.encode() + v.detach().cpu().numpy().tobytes())
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------
# data: nanoGPT's split and vocabulary
# ---------------------------------------------------------------------------------------------
def test_shakespeare_char_is_nanogpts_split_and_vocabulary():
    tok = load_tokenizer("shakespeare_char")
    text = (Path(__import__("diffusionlm").data.data_dir()) / "tinyshakespeare" / "input.txt").read_text()
    assert tok.chars == "".join(sorted(set(text))) and len(tok.chars) == 65  # nanoGPT's vocab_size
    assert tok.vocab_size == 66 and tok.eos_id == tok.bos_id == tok.pad_id == 65
    train, val, test = (load_corpus("shakespeare_char", s) for s in ("train", "validation", "test"))
    n = len(text)
    assert train == [text[: int(0.9 * n)]] and val == test == [text[int(0.9 * n):]]
    assert (len(train[0]), len(val[0])) == (1003854, 111540)  # the counts nanoGPT's prepare.py prints
    # the existing tinyshakespeare corpus keeps its meaning (90 / 5 / 5)
    assert load_corpus("tinyshakespeare", "test")[0] == text[int(0.95 * n):]
    ids = tok.encode(val[0][:200])
    assert tok.decode(ids) == val[0][:200] and ids == [tok.stoi[c] for c in val[0][:200]]


def test_char_tokenizer_refuses_unknown_characters_and_round_trips_on_disk(tmp_path):
    tok = CharTokenizer("ab\n", name="toy")
    with pytest.raises(ValueError, match=r"character 'z' \(position 2\) is not in the 3-character vocabulary"):
        tok.encode("abz")
    with pytest.raises(ValueError, match="outside the character tokenizer's 4 ids"):
        tok.decode([4])
    with pytest.raises(ValueError, match="must be distinct"):
        CharTokenizer("aba")
    assert tok.decode([0, 3, 1], skip_special_tokens=False) == "a<|eos|>b"
    tok.save(tmp_path)
    assert load_tokenizer(str(tmp_path)) == tok


# ---------------------------------------------------------------------------------------------
# compare additions the studies use
# ---------------------------------------------------------------------------------------------
def test_shared_train_overrides_and_min_lr_give_nanogpts_schedule():
    spec = _spec("01_ar_sanity")
    cfg = C._shared(spec, {**TOY, "train_steps": 40})
    tok = load_tokenizer(cfg.tokenizer)
    entry = C._resolve(cfg, C._variants(spec, None)[0], tok, 0)
    from diffusionlm.data import TokenBlocks

    blocks = TokenBlocks(load_corpus(cfg.corpus, "validation"), tok, cfg.length)
    _, trainer, _ = C._trainer(cfg, entry, blocks, 40)
    assert trainer.config.warmup_steps == 100 and trainer.config.weight_decay == 0.1 and trainer.config.betas == (0.9, 0.99)
    assert trainer.config.two_halves  # the variant's own override on top of the shared ones
    cfg = C._shared(spec, {**TOY, "train_steps": 40, "train": {"warmup_steps": 10}})
    _, trainer, _ = C._trainer(cfg, entry, blocks, 40)
    lrs = []
    for _ in range(40):
        lrs.append(trainer.scheduler.get_last_lr()[0])
        trainer.optimizer.step()
        trainer.scheduler.step()
    assert lrs[0] == 0.0 and lrs[10] == pytest.approx(1e-3)  # linear warmup to lr
    assert lrs[-1] == pytest.approx(1e-4 + 0.5 * (1e-3 - 1e-4) * (1 + torch.cos(torch.tensor(torch.pi * 29 / 30)).item()))
    assert min(lrs[10:]) > 1e-4 - 1e-12  # the cosine floors at min_lr, not 0
    with pytest.raises(ValueError, match="min_lr is the floor of the cosine decay: it needs lr_schedule 'cosine'"):
        C._shared(spec, {"lr_schedule": "constant"})
    with pytest.raises(ValueError, match=r"min_lr must be a number in \[0, lr = 0.001\)"):
        C._shared(spec, {"min_lr": 0.01})
    with pytest.raises(ValueError, match="shared train: may not set steps"):
        C._shared(spec, {"train": {"steps": 3}})
    with pytest.raises(ValueError, match="shared train: unknown key.s. warmup; did you mean warmup_steps"):
        C._resolve(C._shared(spec, {"train": {"warmup": 3}}), C._variants(spec, None)[0], tok, 0)


def test_ar_bound_in_one_forward_equals_the_estimators_exact_bound():
    spec = _spec("01_ar_sanity")
    cfg = C._shared(spec, TOY)
    tok = load_tokenizer(cfg.tokenizer)
    torch.manual_seed(0)
    lm = C._build_lm(cfg, C._resolve(cfg, C._variants(spec, None)[0], tok, 0))
    lm.model.eval()
    ids = torch.tensor([tok.encode(load_corpus(cfg.corpus, "test")[0][i * 32:(i + 1) * 32]) for i in range(3)])
    fast = C._likelihood(lm, ids, cfg)
    from diffusionlm.eval.bound import corpus_bound

    slow = corpus_bound(lm, ids, num_samples=32, batch_size=2, seed=0)
    assert fast["method"].startswith("exact: causal NLL, one forward")
    assert fast["nll_per_token"] == pytest.approx(slow["nll_per_token"], abs=1e-5) and slow["stderr_per_token"] == 0


def test_evaluate_only_variant_is_checked():
    with pytest.raises(ValueError, match="variant 'm' is an already-trained model .* its process, train are its own"):
        C.Variant.from_spec({"name": "m", "model": "x", "process": {"name": "absorb"}, "train": {}, "samplers": ["mdlm"]})
    with pytest.raises(ValueError, match="variant 'm': missing key samplers"):
        C.Variant.from_spec({"name": "m", "model": "x"})
    spec = {"shared": {**TOY, "corpus": "shakespeare_char", "tokenizer": "shakespeare_char", "judge": {"name": "none"}},
            "variants": [{"name": "m", "model": "/nonexistent/run", "samplers": [{"name": "mdlm", "steps": 4}]}]}
    with pytest.raises(ValueError, match="variant 'm': field 'model':"):
        C.compare(spec)
    with pytest.raises(ValueError, match="judge must be"):
        C.CompareConfig(judge={"name": "nobody"})


# ---------------------------------------------------------------------------------------------
# every study's spec, end to end at toy size
# ---------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_every_study_spec_runs_at_toy_size(tmp_path):
    """The five specs as shipped (parts, samplers, step lists, dependencies), toy sizes only."""
    assert sorted(p.name for p in EXP.iterdir() if (p / "spec.json").is_file()) == STUDIES
    out = {s: tmp_path / s for s in STUDIES}
    ar_model = str(out["01_ar_sanity"] / "models" / "ar")
    results = {}
    for study in STUDIES:
        spec = _spec(study)
        assert (EXP / study / "README.md").is_file()
        if study in ("02_block_size", "03_hybrid"):  # three training seeds as shipped; one at toy size
            assert spec["shared"]["seeds"] == [0, 1, 2]
        shared = {**TOY, "seeds": None, "out_dir": str(out[study])}
        if spec["shared"]["judge"].get("name") == "model":
            assert spec["shared"]["judge"]["path"] == "experiments/01_ar_sanity/run/models/ar"
            shared["judge"] = {"name": "model", "path": ar_model}
        for v in spec["variants"]:
            if "model" in v:  # study 4: study 3's saved models, from the toy run
                assert v["model"].startswith("experiments/03_hybrid/run/seed-0/models/")
                v["model"] = str(out["03_hybrid"] / "models" / Path(v["model"]).name)
        before = {v["name"]: v["model"] for v in spec["variants"] if "model" in v}
        shas = {n: _state_sha(__import__("diffusionlm.io.hub").io.hub.load_model(p).lm) for n, p in before.items()}
        r = C.compare(spec, **shared)
        results[study] = r
        assert (out[study] / "results.md").is_file() and (out[study] / "ppl.png").is_file() or study == "05_lad"
        for name, p in before.items():  # evaluated only: never trained, weights unchanged
            row = r["variants"][name]
            assert row["evaluated_only"] and row["train_steps"] == 0 and row["model_path"] == p
            assert _state_sha(__import__("diffusionlm").hub.load_model(p).lm) == shas[name]
    # a model judge (a saved run) scores like the AR model itself: total NLL, not NLL per token
    from diffusionlm.io.hub import load_model

    cfg = C._shared(_spec("02_block_size"), {**TOY, "judge": {"name": "model", "path": ar_model}})
    tok = load_tokenizer(cfg.tokenizer)
    judge, _ = C._judge_fn(cfg, None, tok)
    ids = torch.tensor([tok.encode(load_corpus(cfg.corpus, "test")[0][i * 16:(i + 1) * 16]) for i in range(3)])
    nll, n = judge(ids)
    direct, m = C.ar_judge_nll(load_model(ar_model).lm, ids)
    assert n == m == 48 and nll == pytest.approx(direct, rel=1e-4)
    assert results["01_ar_sanity"]["judge"].startswith("none")
    assert results["01_ar_sanity"]["variants"]["ar"]["likelihood"]["method"].startswith("exact: causal NLL")
    assert set(results["03_hybrid"]["variants"]) == {"absorb", "absorb_linear", "uniform", "epsilon", "epsilon_linear",
                                                     "gamma0.5"} | {f"gamma{g}{w}" for g in (0.01, 0.1) for w in ("", "_we")}
    # study 3 matches noise and time conditioning across processes (the *_linear rows measure the confound)
    hybrid = {n: v["composition"] for n, v in results["03_hybrid"]["variants"].items()}
    for n, c in hybrid.items():
        linear = n.endswith("_linear")
        assert c["process"]["noise"] == ({"name": "linear", "eps": 0.0} if linear else {"name": "loglinear", "eps": 0.001}), n
        assert c["backbone"]["time_conditioning"] is (not linear), n
    s4 = results["04_sampling"]["variants"]["epsilon"]["sampling"]
    assert {(s["sampler"], s["steps"]) for s in s4} == {
        (f"{n}-{d}", k) for n in ("mdlm", "acs") for d in ("f64", "f32") for k in (8, 16, 32, 64, 128)}
    assert all(s["gen_ppl"] is not None for s in s4)  # judged by study 1's (toy) AR model


# ---------------------------------------------------------------------------------------------
# study 5, the refinement half: experiments/05_lad/self_correct.py on tiny random models
# ---------------------------------------------------------------------------------------------
def _self_correct():
    import importlib.util

    spec = importlib.util.spec_from_file_location("self_correct", EXP / "05_lad" / "self_correct.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _edit_distance_by_search(a: tuple, b: tuple) -> int:
    """Breadth-first search over single insertions / deletions / substitutions (letters of a and b)."""
    letters = set(a) | set(b) or {0}
    seen, frontier, d = {a}, [a], 0
    while b not in seen:
        d += 1
        nxt = []
        for s in frontier:
            cands = [s[:i] + s[i + 1:] for i in range(len(s))]
            cands += [s[:i] + (c,) + s[i:] for i in range(len(s) + 1) for c in letters]
            cands += [s[:i] + (c,) + s[i + 1:] for i in range(len(s)) for c in letters]
            for t in cands:
                if t not in seen and len(t) <= max(len(a), len(b)) + 1:
                    seen.add(t)
                    nxt.append(t)
        frontier = nxt
    return d


def test_self_correct_edit_distance_is_the_searched_minimum():
    sc = _self_correct()
    g = torch.Generator().manual_seed(0)
    for _ in range(40):
        a, b = (tuple(torch.randint(0, 3, (int(torch.randint(0, 5, (1,), generator=g)),), generator=g).tolist())
                for _ in range(2))
        assert sc.levenshtein(list(a), list(b)) == _edit_distance_by_search(a, b), (a, b)


def test_self_correct_corruption_hits_its_rate_with_structural_edits_only():
    sc = _self_correct()
    tok = load_tokenizer("shakespeare_char")
    lines = sc.validation_lines(tok, 60)
    assert len(lines) == 60 and all(16 <= len(x) <= 64 for x in lines)
    assert tok.decode(lines[0]) in load_corpus("shakespeare_char", "validation")[0].split("\n")
    for target in (0.10, 0.20):
        p = sc.calibrate(lines, target, tok.vocab_size)
        noisy = sc.corrupt(lines, p, tok.vocab_size)
        assert [len(y) for y in noisy] == [len(x) for x in lines]  # edits move tokens, never add / drop
        assert all(t < len(tok.chars) for y in noisy for t in y)  # no MASK, no special id
        rate = sum(sc.changed_fraction(lines, noisy)) / len(lines)
        assert abs(rate - target) < 0.01, (target, rate)
    assert sc.corrupt(lines, p, tok.vocab_size) == noisy  # same seed, same corruption
    with pytest.raises(ValueError, match="above what p_max = 1 gives"):
        sc.calibrate(lines, 0.9, tok.vocab_size)


def test_self_correct_repairs_run_on_tiny_random_models(tmp_path):
    from diffusionlm.lm import DiffusionLM
    from diffusionlm.models.transformer import DiffusionTransformer, TransformerConfig
    from diffusionlm.processes import Absorb, Structural
    from diffusionlm.schedules.hyper import Flat

    sc = _self_correct()
    N = 12
    torch.manual_seed(0)
    lms = {name: DiffusionLM(DiffusionTransformer(TransformerConfig.preset("tiny", vocab_size=N + 1)).eval(), proc(N), Flat())
           for name, proc in (("lad", Structural), ("mdlm", Absorb))}
    g = torch.Generator().manual_seed(1)
    lines = [torch.randint(0, N - 2, (n,), generator=g).tolist() for n in (16, 20, 24, 30)]
    n_out = N - 2  # the last two real ids are never predicted
    # confidence: p(y_i | y with only i masked), position by position
    y = lines[0]
    conf = sc.confidence(lms["mdlm"], y, n_out)
    x = torch.tensor([y])
    x[0, 5] = N
    with torch.no_grad():
        ref = torch.softmax(lms["mdlm"].forward(x, torch.zeros(x.shape), None)[0, 5, :n_out].float(), -1)[y[5]]
    assert conf[5] == pytest.approx(float(ref), rel=1e-5)
    # re-masking: round(r n) least confident positions change at most; the rest are kept
    out, pos = sc.remask_fill(lms["mdlm"], y, n_out, 0.2)
    assert pos == sorted(conf.argsort(stable=True)[:3].tolist())  # floor(0.2 * 16 + 0.5) = 3
    assert all(out[i] == y[i] for i in range(len(y)) if i not in pos) and max(out) < n_out
    _, rpos = sc.remask_fill(lms["mdlm"], y, n_out, 0.5, "random", torch.Generator().manual_seed(0))
    assert len(rpos) == 8
    with pytest.raises(ValueError, match="how must be 'confidence' or 'random'"):
        sc.remask_fill(lms["mdlm"], y, n_out, 0.2, "lowest")
    # greedy refinement: a fixed point of the argmax map, or the call budget spent
    z, calls = sc.refine(lms["lad"], y, n_out, iterations=3)
    assert 1 <= calls <= 3 and len(z) == len(y)
    if calls < 3:
        with torch.no_grad():
            assert lms["lad"].forward(torch.tensor([z]), torch.zeros(1, len(z)), None)[0, :, :n_out].argmax(-1).tolist() == z
    res = sc.run(lms["lad"], lms["mdlm"], lines, levels=(0.1,), n_out=n_out, iterations=2)["0.10"]
    assert {m for m in sc.METHODS} <= set(res) and res["lines"] == 4
    before = {res[m]["edit_before"] for m in sc.METHODS}
    assert len(before) == 1  # every method repairs the same corrupted lines
    for m in sc.METHODS:
        r = res[m]
        assert r["improved"] + r["worsened"] <= 4 and len(r["examples"]) == min(3, 4 - res["uncorrupted"])
        assert r["delta"] == pytest.approx(r["edit_after"] - r["edit_before"])
    assert "| 10% target" in sc.table({"0.10": res})
    # the refinement is the toolkit's LAD sampler (LAD.refine), not a copy of it
    from diffusionlm.samplers.lad import LAD

    fixed, n_calls = LAD().refine(lms["lad"], y, 3, real=n_out)
    assert (fixed.tolist(), n_calls) == (z, calls)
    # over training seeds: mean +- s.e. of each method's after - before (seed_summary)
    import copy

    other = copy.deepcopy(res)
    other["lad_refine"]["delta"] = res["lad_refine"]["delta"] + 0.02
    text = sc.over_seeds({0: {"0.10": res}, 1: {"0.10": other}})
    mean = res["lad_refine"]["delta"] + 0.01
    assert "Over 2 training seeds (0, 1)" in text and f"| lad_refine | {res['lad_refine']['edit_before']:.4f} |" in text
    assert f"{mean:+.4f} +- 0.0100 |" in text
    # --resume reads a seed's results only when measured with the same models, lines, iterations and seed
    import argparse

    out = tmp_path / "seed-0"
    out.mkdir()
    (out / "self_correct.json").write_text(json.dumps({"meta": {"models": "m/seed-0/models", "lines": 4, "iterations": 2,
                                                                "seed": 0}, "results": {"0.10": res}}))
    args = argparse.Namespace(resume=True, lines=4, iterations=2, seed=0)
    assert sc._done(args, Path("m/seed-0/models"), out) == json.loads(json.dumps({"0.10": res}))
    assert sc._done(argparse.Namespace(resume=True, lines=4, iterations=3, seed=0), Path("m/seed-0/models"), out) is None
    assert sc._done(argparse.Namespace(resume=False, lines=4, iterations=2, seed=0), Path("m/seed-0/models"), out) is None
    sc.plot({"0.10": res}, tmp_path / "p.png")
    assert (tmp_path / "p.png").stat().st_size > 1000


@pytest.mark.slow
def test_study1_architecture_check_spec_runs_at_toy_size_on_study1s_token_stream(tmp_path):
    """spec_gpt2.json (nanoGPT's GPT-2 architecture, and GPT-2 with RoPE, in our loop beside study 1's saved model) as
    shipped, toy sizes: the GPT-2 variant keeps its own backbone (learned positions, 128 rows for
    the two-halves input), study 1's model is evaluated only, and the GPT-2 trains on exactly the
    tokens study 1's AR trains on (same shared settings, same stream)."""
    spec1, spec = _spec("01_ar_sanity"), json.loads((EXP / "01_ar_sanity" / "spec_gpt2.json").read_text())
    assert {k: v for k, v in spec["shared"].items() if k != "out_dir"} == {k: v for k, v in spec1["shared"].items() if k != "out_dir"}
    ar, gpt2, neox = spec["variants"]
    assert ar["model"] == "experiments/01_ar_sanity/run/models/ar"
    assert {k: v for k, v in gpt2.items() if k not in ("name", "label", "backbone")} == {
        k: v for k, v in spec1["variants"][0].items() if k not in ("name", "label")} == {
        k: v for k, v in neox.items() if k not in ("name", "label", "backbone")}
    r1 = C.compare(spec1, **{**TOY, "out_dir": str(tmp_path / "s1")})
    ar["model"] = str(tmp_path / "s1" / "models" / "ar")
    r = C.compare(spec, **{**TOY, "out_dir": str(tmp_path / "s1g")})
    assert r["variants"]["ar_study1"]["evaluated_only"]
    row = r["variants"]["gpt2"]
    hc = row["composition"]["backbone"]["hf_config"]
    assert hc["model_type"] == "gpt2" and hc["n_positions"] == 128 and hc["n_embd"] == 128 and hc["n_layer"] == 4
    assert row["train_tokens_sha1"] == r1["variants"]["ar"]["train_tokens_sha1"] and row["train_steps"] == 2
    assert row["likelihood"]["method"].startswith("exact: causal NLL")
    # the RoPE variant: GPT-2's weights less its position table, every head dimension rotary
    from diffusionlm.io.hub import load_model

    g, n = (load_model(tmp_path / "s1g" / "models" / v).lm.model.model for v in ("gpt2", "neox_rope"))
    assert sum(p.numel() for p in g.parameters()) - sum(p.numel() for p in n.parameters()) == 128 * 128
    assert n.config.rope_parameters["partial_rotary_factor"] == 1.0 and not n.config.use_parallel_residual
    assert r["variants"]["neox_rope"]["train_tokens_sha1"] == row["train_tokens_sha1"]
