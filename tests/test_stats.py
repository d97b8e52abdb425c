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
    assert "| mdlm - ar | 0.1250 +- 0.0000 | 0.0000 | 0.1250 +- 0.0000, 0.1250 +- 0.0000, 0.1250 +- 0.0000 |" in text
    # MC-only s.e.: sqrt(sum of the per-seed paired se^2) / n
    noisy = {s: {"a": {**by_seed[s]["mdlm"], "row_nll": list(rows + s + 2 + np.random.default_rng(s).normal(0, 1, 8))},
                 "b": by_seed[s]["ar"]} for s in (0, 1, 2)}
    per = [paired_difference(noisy[s]["a"]["row_nll"], noisy[s]["b"]["row_nll"], [16] * 8) for s in (0, 1, 2)]
    mc_only = math.sqrt(sum(p["se"] ** 2 for p in per)) / 3
    over = seed_summary([p["diff"] for p in per])
    assert f"| a - b | {over['mean']:.4f} +- {over['se']:.4f} | {mc_only:.4f} |" in seed_and_paired_tables(noisy)


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
    with pytest.raises(ValueError, match="seeds must be a non-empty list of distinct ints"):
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


def test_a_seeds_job_runs_a_seed_at_a_time_with_reuse(tmp_path, monkeypatch):
    """compare(reuse=True) reads a seed folder whose results.json recorded this very job instead of
    training it again: seeds [0, 1] then [0, 1, 2] trains only seed 2's variants, and the tables
    equal those of the three seeds run at once; a changed setting (eval_samples) re-runs every seed."""
    import diffusionlm
    from diffusionlm.compare import run as cmp
    from test_compare import small_spec

    variants = [{"name": "ar", "process": {"name": "absorb"}, "schedule": {"name": "quench"}, "layout": "shifted",
                 "samplers": [{"name": "ar"}]},
                {"name": "mdlm", "process": {"name": "absorb"}, "schedule": {"name": "flat"},
                 "samplers": [{"name": "mdlm", "steps": [4]}]}]
    trained = []
    real_train = cmp._train
    monkeypatch.setattr(cmp, "_train", lambda cfg, e, *a: trained.append((cfg.seed, e.name)) or real_train(cfg, e, *a))
    out = tmp_path / "cmp"
    diffusionlm.compare(small_spec(variants, seeds=[0, 1], judge={"name": "none"}), out_dir=str(out), reuse=True)
    assert trained == [(0, "ar"), (0, "mdlm"), (1, "ar"), (1, "mdlm")]
    res = diffusionlm.compare(small_spec(variants, seeds=[0, 1, 2], judge={"name": "none"}), out_dir=str(out), reuse=True)
    assert trained[4:] == [(2, "ar"), (2, "mdlm")]  # seeds 0 and 1 read from their folders
    assert "Over 3 training seeds (0, 1, 2)" in res["tables"] and "seeds.png" in res["written"]
    at_once = diffusionlm.compare(small_spec(variants, seeds=[0, 1, 2], judge={"name": "none"}), out_dir=str(tmp_path / "once"))
    assert at_once["tables"] == res["tables"]
    del trained[:]
    diffusionlm.compare(small_spec(variants, seeds=[0, 1], judge={"name": "none"}, eval_samples=3), out_dir=str(out), reuse=True)
    assert trained == [(0, "ar"), (0, "mdlm"), (1, "ar"), (1, "mdlm")]  # another job: nothing reused


def _results_with_error_bars() -> dict:
    """A compare results dict (as results.json holds it) with Monte-Carlo and bootstrap errors."""
    def row(steps, ppl, ent):
        return {"sampler": "mdlm", "steps": steps, "gen_ppl": ppl, "gen_ppl_se": ppl / 10, "entropy": ent,
                "entropy_se": ent / 50}

    lk = {"nll_per_token": 3.0, "stderr_per_token": 0.1, "ppl": math.exp(3.0), "ppl_low": math.exp(2.9),
          "ppl_high": math.exp(3.1)}
    return {"variants": {"mdlm": {"likelihood": lk, "sampling": [row(8, 50.0, 2.5), row(16, 40.0, 2.6)]},
                         "lad": {"likelihood": {"ppl": None}, "sampling": [row(8, 90.0, 3.0)]}},
            "reference": {"gen_ppl": 6.0, "entropy": 3.0}}


def test_the_plots_draw_the_standard_errors(tmp_path, monkeypatch):
    """ppl.png's bars are exp(nats -+ the Monte-Carlo stderr); genppl_vs_entropy.png and
    quality_vs_steps.png draw the bootstrap s.e. of gen PPL (and entropy) as error bars: the
    values handed to matplotlib are the results' own."""
    import matplotlib.axes

    from diffusionlm.compare.report import bound_bars, plot, sample_points

    results = _results_with_error_bars()
    bars = bound_bars(results)
    assert list(bars) == ["mdlm"]  # no bound (Structural): no bar
    assert bars["mdlm"]["below"] == pytest.approx(math.exp(3.0) - math.exp(2.9))
    assert bars["mdlm"]["above"] == pytest.approx(math.exp(3.1) - math.exp(3.0))
    pts = sample_points(results)
    assert pts["mdlm / mdlm"]["gen_ppl_se"] == [5.0, 4.0] and pts["mdlm / mdlm"]["entropy_se"] == pytest.approx([0.05, 0.052])
    drawn = {"bar": [], "errorbar": []}
    real_bar, real_err = matplotlib.axes.Axes.bar, matplotlib.axes.Axes.errorbar
    monkeypatch.setattr(matplotlib.axes.Axes, "bar", lambda self, *a, **k: drawn["bar"].append(k) or real_bar(self, *a, **k))
    monkeypatch.setattr(matplotlib.axes.Axes, "errorbar",
                        lambda self, *a, **k: drawn["errorbar"].append((a, k)) or real_err(self, *a, **k))
    assert plot(results, tmp_path) == ["ppl.png", "genppl_vs_entropy.png", "quality_vs_steps.png"]
    assert np.allclose(drawn["bar"][0]["yerr"], [[bars["mdlm"]["below"]], [bars["mdlm"]["above"]]])
    points = [c for c in drawn["errorbar"] if c[1].get("fmt") != "none"]  # bar() draws its yerr through errorbar too
    vs_entropy, vs_steps = points[:2], points[2:]
    assert vs_entropy[0][1]["yerr"] == [5.0, 4.0] and vs_entropy[0][1]["xerr"] == pytest.approx([0.05, 0.052])
    assert vs_entropy[1][1]["yerr"] == [9.0] and vs_steps[0][1]["yerr"] == [5.0, 4.0]
    assert all((tmp_path / f).stat().st_size > 0 for f in ("ppl.png", "genppl_vs_entropy.png", "quality_vs_steps.png"))


def test_the_seed_plot_draws_the_standard_error_over_seeds(tmp_path):
    """seeds.png: exp(mean bound -+ its s.e. over the seeds); the sample points are the means over
    the seeds with their s.e. (eval.stats.seed_summary)."""
    from diffusionlm.compare.report import plot_seeds, seed_points

    vals = {0: 3.0, 1: 3.2, 2: 3.1}
    by_seed = {s: {"mdlm": {"nll_per_token": v}, "lad": {"nll_per_token": None}} for s, v in vals.items()}
    samples = {s: {"mdlm": [{"sampler": "mdlm", "steps": 8, "gen_ppl": 40.0 + s, "entropy": 2.5 + s / 10}]} for s in vals}
    bars, points = seed_points(by_seed, samples)
    m = seed_summary(list(vals.values()))
    assert list(bars) == ["mdlm"] and bars["mdlm"]["nats"] == pytest.approx(m["mean"])
    assert bars["mdlm"]["above"] == pytest.approx(math.exp(m["mean"] + m["se"]) - math.exp(m["mean"]))
    p = points["mdlm / mdlm"]
    assert p["gen_ppl"] == [pytest.approx(41.0)] and p["gen_ppl_se"] == [pytest.approx(seed_summary([40, 41, 42])["se"])]
    assert plot_seeds(by_seed, samples, tmp_path) == ["seeds.png", "seeds_genppl_vs_entropy.png"]
