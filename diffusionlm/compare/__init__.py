"""The main job: train, evaluate and compare compositions on equal footing, from a spec.

    diffusionlm compare                                   # the default spec, shipped with the package
    diffusionlm compare --spec my.json --budget-minutes 10 --out runs/mine
    import diffusionlm
    diffusionlm.compare(variants=[{"name": "mine", "process": {"name": "gamma_hybrid", "gamma": 0.1},
                                   "schedule": {"name": "slide", "width": 8},
                                   "samplers": [{"name": "acs", "eta": 0.05, "steps": [8, 16, 32, 64]}]},
                                  my_diffusion_lm, "mdlm"])

A spec (JSON) is the shared settings and the named variants:

    {"shared":   {CompareConfig fields: corpus, tokenizer, backbone (a backbone spec), length,
                  batch_size, lr, seed, train_steps or budget_minutes, eval_*, num_samples, judge},
     "variants": [{"name": "mdlm", "label": "...", "process": {"name": "absorb"},
                   "schedule": {"name": "flat"}, "layout": "aligned", "backbone": {overrides},
                   "train": {TrainConfig overrides, e.g. "two_halves": true}, "settled_weight": 0.0,
                   "samplers": [{"name": "mdlm", "steps": [8, 16, 32, 64]}]}, ...]}

Additive fields (older specs read unchanged): shared "train" (TrainConfig overrides every model
of the job takes, e.g. {"warmup_steps": 100, "weight_decay": 0.1, "betas": [0.9, 0.99]}; a
variant's own "train" goes on top) and "min_lr" (with lr_schedule "cosine": the cosine decays to
min_lr, not 0, after the warmup: nanoGPT's schedule, transformers' cosine_with_min_lr); a
variant {"name": ..., "model": PATH, "samplers": [...]} is an already-trained model (any path
`hub.load_model` takes: a run directory such as another comparison's models/<variant>, a saved
composition), evaluated only: never trained, its process / schedule / backbone its own, its row
marked "evaluated_only" with 0 steps here.

Parts are specs in the `diffusionlm.specs` convention; a process's vocab_size (and MASK id)
come from the tokenizer, the backbone's sizes from the process (`specs.backbone_defaults`). A
sampler's step field ("steps"; LAD's "iterations") may be a list: one evaluation per entry
(quality against steps). `variants` entries given in Python may also be DiffusionLM objects
(trained as they are, with the shared data, steps and seed), {"name": ..., "lm": obj,
"samplers": [...]} or the name of a default-spec variant. The default spec is
`diffusionlm/resources/default_compare.json` (`default_spec()`).

Fair by construction: every variant (and a trained judge) takes the same number S of optimizer
steps on the same token stream (one BatchStream seed; results record its SHA-1), batch and
seed. With `budget_minutes` S is chosen before training: `probe_steps` steps of a throwaway
copy of each model are timed (after one warm-up step) and

    S = floor(budget_seconds / sum over models of seconds_per_step)

so the whole training fits the budget and no model is cut short; S < 1 is an error before
training. With `train_steps`, S is given.

Measured per variant, on the test split (`eval_blocks` blocks of `length` tokens):

    NLL bound   nats / token of the composition's bound through the one estimator (AR, i.e.
                Absorb + Quench shifted: its exact bound as one causal forward, `ar_judge_nll`)
                (`_likelihood` -> `eval.bound.corpus_bound`): exact (stderr 0) where every step
                is enumerated and deterministic (Absorb + Quench, M = T), else M = `eval_samples`
                evaluations per row, stratified over steps with replicates; dominant terms
                (EpsilonHybrid's clean-up) computed exactly on their own lines; +- one standard
                error; PPL = exp(nats), interval exp(nats -+ stderr). Structural has no likelihood.
    gen PPL     token-weighted exp(mean NLL) of `num_samples` samples under the judge, at each
                number of sampling steps of each sampler; the judge is never a variant: an AR
                (Absorb + Quench) trained like the variants with its own seed, or any causal LM
                the loader takes (an HF directory or hub id, a run / composition trained as AR)
    entropy, distinct-2, seconds / sample, model calls

Writes results.json, results.md (units and what +- means stated), ppl.png (log axis,
asymmetric bars), genppl_vs_entropy.png, quality_vs_steps.png, and each variant under
models/<variant>/ (`save_variant`: a run directory for our transformer, a saved composition
for other backbones; `diffusionlm sample / eval / demo --model` load either).
"""
from __future__ import annotations

import sys
import types
from typing import Any

from .report import markdown_table, plot
from .run import ar_judge_nll, causal_lm_judge, compare, save_variant, size_steps, train_variant
from .spec import CompareConfig, Variant, default_spec, load_spec

__all__ = ["CompareConfig", "Variant", "compare", "default_spec", "load_spec", "size_steps", "ar_judge_nll",
           "causal_lm_judge", "train_variant", "save_variant", "markdown_table", "plot"]


class _CallableModule(types.ModuleType):
    """`diffusionlm.compare(...)` runs `compare(...)`, while `diffusionlm.compare` stays this package."""

    def __call__(self, *args: Any, **kwargs: Any) -> dict:
        return compare(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
