"""diffusionlm.eval.stats against closed forms and brute force: mean +- s.e. over seeds, the paired
difference's standard error (and that pairing removes the rows' shared variation), bootstrap s.e.
of a mean (closed form) and of a PPL (delta method), and the report's seed / paired tables."""
import math

import numpy as np
import pytest

from diffusionlm.eval import distinct_n, unigram_entropy
from diffusionlm.eval.stats import bootstrap_se, paired_difference, seed_and_paired_tables, seed_summary


def test_seed_summary_is_mean_and_sd_over_sqrt_n():
    v = [3.1, 3.4, 2.9, 3.3]
    s = seed_summary(v)
    assert s["mean"] == pytest.approx(np.mean(v)) and s["sd"] == pytest.approx(np.std(v, ddof=1))
    assert s["se"] == pytest.approx(np.std(v, ddof=1) / 2) and s["n"] == 4
    assert seed_summary([1.0])["se"] is None
    with pytest.raises(ValueError, match="no values"):
        seed_summary([])


def test_paired_difference_matches_brute_force_and_removes_row_variation():
    rng = np.random.default_rng(0)
    n, t = 200, 128
    hardness = rng.normal(3.0, 1.0, n) * t  # rows differ a lot; both variants see the same rows
    a = hardness + rng.normal(0.02 * t, 0.05 * t, n)
    b = hardness + rng.normal(0.0, 0.05 * t, n)
    p = paired_difference(a, b, [t] * n)
    d = (a - b) / t
    assert p["diff"] == pytest.approx(d.mean()) and p["se"] == pytest.approx(d.std(ddof=1) / math.sqrt(n))
    unpaired = math.sqrt(np.var(a / t, ddof=1) / n + np.var(b / t, ddof=1) / n)
    assert p["se"] < unpaired / 10  # the rows' own spread cancels
    assert p["z"] > 3  # a true difference of 0.02 nats/token, found
    # unequal row lengths: the ratio estimator (total difference over total tokens)
    tok = rng.integers(50, 150, n).astype(float)
    q = paired_difference(a, b, tok)
    D = (a - b).sum() / tok.sum()
    assert q["diff"] == pytest.approx(D)
    assert q["se"] == pytest.approx(math.sqrt(n / (n - 1) * (((a - b) - D * tok) ** 2).sum()) / tok.sum())
    # its coverage: over many independent data sets the true difference is inside +- 1.96 se ~95%
    hits = 0
    for k in range(400):
        r = np.random.default_rng(k + 1)
        h = r.normal(3, 1, 60)
        q = paired_difference(h + r.normal(0.1, 0.3, 60), h + r.normal(0, 0.3, 60))
        hits += abs(q["diff"] - 0.1) < 1.96 * q["se"]
    assert 0.90 < hits / 400 < 0.99


def test_bootstrap_se_of_a_mean_is_the_closed_form():
    x = list(np.random.default_rng(3).exponential(2.0, 400))
    b = bootstrap_se(x, lambda s: float(np.mean(s)), draws=2000, seed=1)
    closed = np.std(x, ddof=1) / math.sqrt(len(x))
    assert b["value"] == pytest.approx(np.mean(x)) and b["se"] == pytest.approx(closed, rel=0.08)


def test_bootstrap_se_of_gen_ppl_matches_the_delta_method_and_text_metrics_run():
    rng = np.random.default_rng(4)
    samples = [(float(rng.normal(3.0, 0.5) * n), int(n)) for n in rng.integers(20, 60, 300)]  # (total NLL, tokens)

    def ppl(s):
        return math.exp(sum(x for x, _ in s) / sum(n for _, n in s))

    b = bootstrap_se(samples, ppl, draws=2000, seed=0)
    nll = np.array([x for x, _ in samples])
    tok = np.array([n for _, n in samples], dtype=float)
    m = nll.sum() / tok.sum()
    se_m = math.sqrt(len(tok) / (len(tok) - 1) * ((nll - m * tok) ** 2).sum()) / tok.sum()
    assert b["value"] == pytest.approx(math.exp(m)) and b["se"] == pytest.approx(math.exp(m) * se_m, rel=0.1)
    rows = [[int(t) for t in rng.integers(0, 8, 12)] for _ in range(40)]  # generated token ids
    for stat in (unigram_entropy, lambda s: distinct_n(s, 2)):
        r = bootstrap_se(rows, stat, draws=200)
        assert r["se"] > 0 and math.isfinite(r["value"])


def test_seed_and_paired_tables():
    rows = np.random.default_rng(5).normal(3, 1, 8) * 16
    by_seed = {s: {"mdlm": {"nll_per_token": 3.1 + 0.01 * s, "stderr_per_token": 0.05, "row_nll": list(rows + s + 2),
                            "row_tokens": [16] * 8},
                   "ar": {"nll_per_token": 2.9 + 0.02 * s, "stderr_per_token": 0.0, "row_nll": list(rows + s),
                          "row_tokens": [16] * 8}} for s in (0, 1, 2)}
    text = seed_and_paired_tables(by_seed)
    assert "Over 3 training seeds (0, 1, 2)" in text
    assert "| mdlm | 3.1100 +- 0.0058 | 0.0500 | 3.1000, 3.1100, 3.1200 |" in text
    assert "| mdlm - ar | 0.1250 +- 0.0000 | 0.1250 +- 0.0000, 0.1250 +- 0.0000, 0.1250 +- 0.0000 |" in text


def test_a_compare_spec_with_three_seeds_gives_the_seed_and_paired_tables(tmp_path):
    """shared.seeds = [0, 1, 2]: the job runs once per seed; seeds.md holds the mean +- s.e. over
    seeds of each variant's bound and the paired differences of each pair on the same rows, equal
    to eval.stats applied to the per-seed results by hand."""
    import json

    import diffusionlm
    from test_compare import small_spec

    variants = [{"name": "ar", "process": {"name": "absorb"}, "schedule": {"name": "quench"}, "layout": "shifted",
                 "samplers": [{"name": "ar"}]},
                {"name": "mdlm", "process": {"name": "absorb"}, "schedule": {"name": "flat"},
                 "samplers": [{"name": "mdlm", "steps": [4]}]}]
    out = tmp_path / "cmp"
    res = diffusionlm.compare(small_spec(variants, seeds=[0, 1, 2], judge={"name": "none"}), out_dir=str(out))
    assert res["seeds"] == [0, 1, 2] and (out / "seeds.md").read_text().strip() == res["tables"]
    per = {s: json.loads((out / f"seed-{s}" / "results.json").read_text())["variants"] for s in (0, 1, 2)}
    assert len({per[s]["mdlm"]["final_loss"] for s in per}) == 3  # three different trainings
    ar = [per[s]["ar"]["likelihood"] for s in (0, 1, 2)]
    assert all(a["stderr_per_token"] == 0.0 and a["method"].startswith("exact: causal NLL") for a in ar)
    mean = seed_summary([a["nll_per_token"] for a in ar])
    assert f"| ar | {mean['mean']:.4f} +- {mean['se']:.4f} |" in res["tables"]
    diffs = [paired_difference(per[s]["ar"]["likelihood"]["row_nll"], per[s]["mdlm"]["likelihood"]["row_nll"],
                               per[s]["ar"]["likelihood"]["row_tokens"]) for s in (0, 1, 2)]
    over = seed_summary([d["diff"] for d in diffs])
    assert f"| ar - mdlm | {over['mean']:.4f} +- {over['se']:.4f} |" in res["tables"]
    ent = seed_summary([per[s]["mdlm"]["sampling"][0]["entropy"] for s in (0, 1, 2)])
    assert f"| mdlm | mdlm | 4 | n/a | {ent['mean']:.3f} +- {ent['se']:.3f} |" in res["tables"]  # no judge: no gen PPL
    assert per[0]["mdlm"]["sampling"][0]["entropy_se"] > 0
    with pytest.raises(ValueError, match="seeds must be a list of at least 2 distinct ints"):
        diffusionlm.compare(small_spec(variants, seeds=[1, 1]), out_dir=str(tmp_path / "bad"))


def test_sample_bootstrap_gives_the_three_error_bars():
    from diffusionlm.eval.stats import sample_bootstrap

    rng = np.random.default_rng(6)
    rows = [[int(t) for t in rng.integers(0, 20, 32)] for _ in range(16)]
    judged = [(float(rng.normal(3, 0.4) * 32), 32) for _ in range(16)]
    out = sample_bootstrap(rows, judged)
    ppl = bootstrap_se(judged, lambda s: math.exp(sum(n for n, _ in s) / sum(c for _, c in s)), 200, 0)
    assert out["gen_ppl_se"] == ppl["se"] and out["entropy_se"] > 0 and out["distinct2_se"] >= 0
    assert sample_bootstrap(rows, None)["gen_ppl_se"] is None
