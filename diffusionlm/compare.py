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

import copy
import dataclasses
import difflib
import hashlib
import json
import math
import sys
import time
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch

__all__ = ["CompareConfig", "Variant", "compare", "default_spec", "load_spec", "size_steps", "ar_judge_nll",
           "train_variant", "save_variant", "markdown_table", "plot"]

DEFAULT_SPEC = "resources/default_compare.json"
#: TrainConfig fields a variant may not override: they are what makes the comparison fair (or
#: what the job itself sets)
FIXED_TRAIN = ("steps", "batch_size", "grad_accum", "seed", "out_dir", "progress")


def default_spec() -> dict:
    """The default comparison (package data): AR, MDLM, block diffusion, GammaHybrid, EpsilonHybrid."""
    from importlib.resources import files

    return json.loads(files("diffusionlm").joinpath(DEFAULT_SPEC).read_text())


# ---------------------------------------------------------------------------------------------
# the spec: shared settings and variants
# ---------------------------------------------------------------------------------------------
def _positive_int(v: Any, what: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ValueError(f"{what} must be an int >= 1, got {v!r}")
    return v


@dataclass
class CompareConfig:
    """Settings every variant shares (the spec's "shared" object)."""

    corpus: str = "stdlib"
    tokenizer: str = "byte"
    backbone: dict = field(default_factory=lambda: {"name": "transformer", "preset": "tiny"})
    length: int = 128
    batch_size: int = 16
    lr: float = 1e-3
    lr_schedule: str = "constant"
    #: with lr_schedule "cosine": decay to min_lr instead of 0 (nanoGPT's schedule; transformers'
    #: cosine_with_min_lr after the warmup_steps of `train`); None: the plain schedule
    min_lr: Optional[float] = None
    #: TrainConfig overrides every model of the job takes (the variants and a trained judge), e.g.
    #: warmup_steps, weight_decay, betas; a variant's own "train" goes on top (not FIXED_TRAIN)
    train: dict = field(default_factory=dict)
    seed: int = 0
    #: training seeds: the whole job once per seed (out_dir/seed-S), then mean +- s.e. over the
    #: seeds and paired differences on the same rows (eval.stats; seeds.md); None: `seed` only
    seeds: Optional[list] = None
    #: optimizer steps per variant, or None: sized by budget_minutes (exactly one of the two)
    train_steps: Optional[int] = 150
    budget_minutes: Optional[float] = None
    probe_steps: int = 2  # timed steps per model when sizing by budget (after one warm-up step)
    eval_blocks: int = 32  # test blocks of `length` tokens for the bound
    eval_samples: int = 4  # M, draws of the bound per sequence (where it is not exact)
    eval_batch_size: int = 16
    num_samples: int = 16  # generated sequences per (sampler, steps)
    #: {"name": "trained_ar", "seed": s} (an AR trained like the variants, own seed) or
    #: {"name": "model", "path": P} (any causal LM `diffusionlm.hub.load_model` takes: an HF
    #: directory or hub id, a run / saved composition trained as AR); a bare string is a path;
    #: {"name": "none"}: no judge (samples get entropy and distinct-2, gen PPL is n/a)
    judge: Any = field(default_factory=lambda: {"name": "trained_ar", "seed": 1})
    out_dir: str = "runs/compare"
    device: str = "cpu"
    progress: bool = True

    def __post_init__(self) -> None:
        for name in ("length", "batch_size", "probe_steps", "eval_blocks", "eval_samples", "eval_batch_size", "num_samples"):
            _positive_int(getattr(self, name), f"{name} (--{name.replace('_', '-')})")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f"seed must be an int, got {self.seed!r}")
        if self.seeds is not None and (not isinstance(self.seeds, list) or len(self.seeds) < 2 or len(set(self.seeds)) != len(
                self.seeds) or any(isinstance(x, bool) or not isinstance(x, int) for x in self.seeds)):
            raise ValueError(f"seeds must be a list of at least 2 distinct ints (training seeds), got {self.seeds!r}")
        if not (isinstance(self.lr, (int, float)) and self.lr > 0):
            raise ValueError(f"lr must be a number > 0, got {self.lr!r}")
        if self.min_lr is not None:
            if isinstance(self.min_lr, bool) or not isinstance(self.min_lr, (int, float)) or not 0 <= self.min_lr < self.lr:
                raise ValueError(f"min_lr must be a number in [0, lr = {self.lr}), got {self.min_lr!r}")
            if self.lr_schedule != "cosine":
                raise ValueError(f"min_lr is the floor of the cosine decay: it needs lr_schedule 'cosine', got {self.lr_schedule!r}")
        if not isinstance(self.train, dict):
            raise ValueError(f"train (shared TrainConfig overrides) must be an object, got {self.train!r}")
        fixed = [k for k in self.train if k in FIXED_TRAIN]
        if fixed:
            raise ValueError(f"shared train: may not set {', '.join(fixed)}: the job sets them (every variant trains "
                             "the same steps on the same tokens, batch and seed)")
        if (self.train_steps is None) == (self.budget_minutes is None):
            raise ValueError("give exactly one of train_steps (steps per variant) and budget_minutes (sizes the steps)")
        if self.train_steps is not None:
            _positive_int(self.train_steps, "train_steps (--train-steps)")
        if self.budget_minutes is not None and not (
                isinstance(self.budget_minutes, (int, float)) and not isinstance(self.budget_minutes, bool)
                and math.isfinite(self.budget_minutes) and self.budget_minutes > 0):
            raise ValueError(f"budget_minutes (--budget-minutes) must be a number > 0, got {self.budget_minutes!r}")
        if not isinstance(self.backbone, dict) or "name" not in self.backbone:
            raise ValueError(f"backbone must be a backbone spec {{\"name\": ...}}, got {self.backbone!r}")
        if isinstance(self.judge, str):
            self.judge = {"name": "model", "path": self.judge}
        j = self.judge
        if not isinstance(j, dict) or j.get("name") not in ("trained_ar", "model", "none"):
            raise ValueError(f"judge must be {{\"name\": \"trained_ar\", \"seed\": s}}, {{\"name\": \"model\", \"path\": P}} "
                             f"or {{\"name\": \"none\"}}, got {j!r}")
        allowed = {"trained_ar": {"name", "seed"}, "model": {"name", "path"}, "none": {"name"}}[j["name"]]
        if set(j) != allowed:
            raise ValueError(f"judge {j['name']!r} takes exactly the fields {sorted(allowed)}, got {sorted(j)}")

    @property
    def preset(self) -> Optional[str]:
        return self.backbone.get("preset")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class Variant:
    """One named composition, its training overrides and the samplers that evaluate it."""

    name: str
    process: Optional[dict] = None
    schedule: Optional[dict] = None
    samplers: list = field(default_factory=list)
    layout: str = "aligned"
    label: Optional[str] = None
    backbone: dict = field(default_factory=dict)  # overrides of the shared backbone spec (another "name": replaces it)
    train: dict = field(default_factory=dict)  # TrainConfig overrides (not FIXED_TRAIN)
    settled_weight: float = 0.0
    lm: Any = None  # a DiffusionLM composed in Python (then process / schedule / layout / backbone are its own)
    #: an already-trained model (any path `hub.load_model` takes: a run directory, a saved
    #: composition): evaluated only, never trained (its parts are its own)
    model: Optional[str] = None

    REQUIRED = ("process", "schedule", "samplers")

    @classmethod
    def from_spec(cls, d: Any, index: int = 0) -> "Variant":
        """A variant from its spec dict, a DiffusionLM, or {"name", "lm", ...}; one-line errors
        name the variant and the field."""
        from .lm import DiffusionLM

        if isinstance(d, DiffusionLM):
            d = {"lm": d}
        if not isinstance(d, dict):
            raise ValueError(f"variant {index}: expected a spec object, a DiffusionLM or a default variant's name, got {type(d).__name__}")
        d = {k: v for k, v in d.items() if not k.startswith("_")}
        if d.get("lm") is not None and "name" not in d:
            lm = d["lm"]
            d["name"] = f"{lm.process.name}+{lm.schedule.name}"
        name = d.get("name")
        if not isinstance(name, str) or not name:
            raise ValueError(f"variant {index} needs the field 'name' (a non-empty string)")
        known = [f.name for f in dataclasses.fields(cls)]
        bad = [k for k in d if k not in known]
        if bad:
            raise ValueError(f"variant {name!r}: unknown key(s) {', '.join(bad)}; its keys: {', '.join(known)}")
        v = cls(**d)
        if v.model is not None:
            if not isinstance(v.model, str) or not v.model:
                raise ValueError(f"variant {name!r} field 'model' must be a path (a non-empty string), got {v.model!r}")
            own = [k for k in ("process", "schedule", "backbone", "layout", "settled_weight", "train", "lm") if k in d]
            if own:
                raise ValueError(f"variant {name!r} is an already-trained model (field 'model', evaluated only): "
                                 f"its {', '.join(own)} are its own, not fields")
            if "samplers" not in d:
                raise ValueError(f"variant {name!r}: missing key samplers (an evaluated-only model needs its samplers)")
        elif v.lm is None:
            for key in cls.REQUIRED:
                if d.get(key) is None:
                    raise ValueError(f"variant {name!r}: missing key {key}; its keys: {', '.join(known)}")
        else:
            for key in ("process", "schedule", "backbone", "layout", "settled_weight"):
                if key in d:
                    raise ValueError(f"variant {name!r} is a composed DiffusionLM: its {key} is its own, not a field")
            if "samplers" not in d:
                v.samplers = [_default_sampler(v.lm)]
        if not isinstance(v.samplers, list) or not v.samplers:
            raise ValueError(f"variant {name!r} field 'samplers' must be a non-empty list of sampler specs")
        for key in v.train:
            if key in FIXED_TRAIN:
                raise ValueError(f"variant {name!r} train: may not set {key}: every variant trains the same "
                                 "steps on the same tokens, batch and seed")
        return v


def _default_sampler(lm: Any) -> dict:
    """The sampler a composed DiffusionLM given without samplers is evaluated with."""
    if not lm.process.likelihood:
        return {"name": "lad", "iterations": [8, 16, 32, 64]}
    return {"name": "mdlm", "steps": [8, 16, 32, 64]}


def load_spec(spec: "str | Path | dict | None") -> dict:
    """A spec dict from a JSON file, a dict, or None (the default spec)."""
    if spec is None:
        return default_spec()
    if isinstance(spec, (str, Path)):
        from .hub import _json

        p = Path(spec)
        if not p.exists():
            raise FileNotFoundError(f"comparison spec not found: {p}")
        spec = _json(p)  # ValueError for invalid JSON or anything but an object
    if not isinstance(spec, dict):
        raise ValueError(f"a comparison spec is an object {{\"shared\": ..., \"variants\": [...]}}, got {type(spec).__name__}")
    for key in spec:
        if key not in ("shared", "variants") and not key.startswith("_"):
            raise ValueError(f"a comparison spec: unknown key(s) {key}; its keys: shared, variants")
    return spec


def _shared(spec: dict, overrides: dict) -> CompareConfig:
    shared = {k: v for k, v in dict(spec.get("shared") or {}).items() if not k.startswith("_")}
    known = [f.name for f in dataclasses.fields(CompareConfig)]
    if "train_steps" in overrides and overrides["train_steps"] is not None:
        shared["budget_minutes"] = None  # a given number of steps replaces the spec's budget
    if "budget_minutes" in overrides and overrides["budget_minutes"] is not None:
        shared["train_steps"] = None
    shared.update(overrides)
    bad = [k for k in shared if k not in known]
    if bad:
        raise ValueError(f"shared settings: unknown key(s) {', '.join(bad)}; its keys: {', '.join(known)}")
    return CompareConfig(**shared)


def _variants(spec: dict, given: Optional[list]) -> list:
    entries = given if given is not None else spec.get("variants")
    if not isinstance(entries, list) or not entries:
        raise ValueError("a comparison needs a non-empty list of variants")
    defaults = None
    out = []
    for i, e in enumerate(entries):
        if isinstance(e, str):
            defaults = defaults or {v["name"]: v for v in default_spec()["variants"]}
            if e not in defaults:
                raise ValueError(f"unknown variant {e!r}; the default spec's variants: {', '.join(defaults)}")
            e = defaults[e]
        out.append(Variant.from_spec(e, i))
    names = [v.name for v in out]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"variant names must be unique; repeated: {', '.join(dup)}")
    return out


# ---------------------------------------------------------------------------------------------
# resolving variants: compositions and sampler runs, checked before anything trains
# ---------------------------------------------------------------------------------------------
@dataclass
class _Entry:
    """A variant resolved against the shared settings and the tokenizer."""

    variant: Variant
    composition: dict  # the composition spec to build (before training)
    runs: list  # (sampler label, sampler object, steps label)
    seed: int
    is_judge: bool = False

    @property
    def name(self) -> str:
        return self.variant.name


def _composition(cfg: CompareConfig, v: Variant, tok: Any) -> dict:
    from . import specs

    if v.lm is not None:
        try:
            return specs.composition_dict(v.lm)
        except TypeError:  # a model outside the backbone registry: recorded by its class
            lm = v.lm
            return {"name": "diffusion_lm", "process": specs.to_dict(lm.process), "schedule": specs.to_dict(lm.schedule),
                    "layout": lm.layout.value, "bos_id": lm.bos_id, "backbone": {"name": type(lm.model).__name__}}
    for key in ("process", "schedule"):
        if not isinstance(getattr(v, key), (dict, str)):
            raise ValueError(f"variant {v.name!r} field {key!r} must be a spec {{\"name\": ...}}, got {getattr(v, key)!r}")
    if not isinstance(v.backbone, dict):
        raise ValueError(f"variant {v.name!r} field 'backbone' must be an object of backbone fields, got {v.backbone!r}")
    proc = {"name": v.process} if isinstance(v.process, str) else dict(v.process)
    proc.setdefault("vocab_size", tok.vocab_size)
    same = v.backbone.get("name", cfg.backbone["name"]) == cfg.backbone["name"]
    backbone = {**cfg.backbone, **v.backbone} if same else dict(v.backbone)  # another kind replaces the shared one
    if backbone.get("name") == "transformer":
        backbone.setdefault("max_positions", cfg.length)
    return {"name": "diffusion_lm", "process": proc, "schedule": v.schedule, "layout": v.layout,
            "bos_id": tok.bos_id, "settled_weight": v.settled_weight, "backbone": backbone}


def _sampler_runs(v: Variant, fit: Any, where: str) -> list:
    """One (label, sampler, steps) per sampler and step count; each checked against the process
    and the schedule (`check_fits`, a continuous schedule needs steps) before training."""
    from . import specs

    runs = []
    names = [(sp if isinstance(sp, str) else sp.get("name") if isinstance(sp, dict) else None) for sp in v.samplers]
    for j, spec in enumerate(v.samplers):
        if isinstance(spec, str):
            spec = {"name": spec}
        if not isinstance(spec, dict):
            raise ValueError(f"{where} sampler {j} must be a sampler spec, got {type(spec).__name__}")
        spec = {k: x for k, x in spec.items() if not k.startswith("_")}
        label = spec.pop("label", None) or (spec.get("name") if names.count(spec.get("name")) == 1 else f"{spec.get('name')}#{j}")
        cls = specs.registry("sampler").get(spec.get("name"))
        if cls is None:
            try:
                specs.build("sampler", spec)  # the registry's one-line error
            except ValueError as err:
                raise ValueError(f"{where} {err}") from err
        step_field = cls.steps_field
        if step_field is None and "steps" in spec:
            raise ValueError(f"{where} sampler {spec['name']!r} fixes its own number of steps (one model call per token): "
                             "give it no 'steps'")
        counts = spec.get(step_field) if step_field else None
        counts = counts if isinstance(counts, list) else [counts]
        if not counts:
            raise ValueError(f"{where} sampler {spec['name']!r} field {step_field!r} is an empty list")
        for n in counts:
            one = dict(spec) if step_field is None else {**spec, step_field: n}
            try:
                sampler = specs.build("sampler", one)
                sampler.check_fits(fit)
                if hasattr(sampler, "schedule_for"):
                    sampler.schedule_for(fit)
            except ValueError as err:
                raise ValueError(f"{where} sampler {spec['name']!r}: {err}") from err
            runs.append((label, sampler, n))
    return runs


def _resolve(cfg: CompareConfig, v: Variant, tok: Any, seed: int, is_judge: bool = False) -> _Entry:
    """Check a variant completely (parts, samplers) without building its model."""
    from . import specs

    where = f"variant {v.name!r}:"
    if v.model is not None and v.lm is None:
        from .hub import load_model

        try:
            v.lm = load_model(v.model, device=cfg.device).lm
        except (FileNotFoundError, ValueError) as err:
            raise ValueError(f"{where} field 'model': {err}") from err
    comp = _composition(cfg, v, tok)
    try:
        proc = v.lm.process if v.lm is not None else specs.build("process", comp["process"])
        sched = v.lm.schedule if v.lm is not None else specs.build("hyperschedule", comp["schedule"])
        if comp["layout"] not in ("aligned", "shifted"):
            raise ValueError(f"unknown layout {comp['layout']!r}; known: aligned, shifted")
        if v.lm is None and comp["backbone"].get("name") not in specs.registry("backbone"):
            raise ValueError(f"unknown backbone {comp['backbone'].get('name')!r}; known: {', '.join(sorted(specs.registry('backbone')))}")
    except ValueError as err:
        raise ValueError(f"{where} {err}") from err
    if proc.vocab_size != tok.vocab_size:
        raise ValueError(f"{where} its process has {proc.vocab_size} real tokens, the {cfg.tokenizer} tokenizer {tok.vocab_size}")
    if not sched.continuous:
        sched.table(cfg.length)  # a Custom table for another length fails here
    from .training import TrainConfig

    for what, given in (("shared", cfg.train), (f"variant {v.name!r}", v.train)):
        for key in given:
            if key not in TrainConfig.field_names():
                close = difflib.get_close_matches(key, TrainConfig.field_names(), n=1)
                hint = f"did you mean {close[0]}?" if close else f"its keys: {', '.join(TrainConfig.field_names())}"
                raise ValueError(f"{what} train: unknown key(s) {key}; {hint}")
    try:
        TrainConfig(**{**cfg.train, **v.train, "steps": 1, "batch_size": cfg.batch_size})
    except ValueError as err:
        raise ValueError(f"{where} field 'train': {err}") from err
    fit = types.SimpleNamespace(process=proc, schedule=sched, layout=comp["layout"])
    runs = [] if is_judge else _sampler_runs(v, fit, where)
    return _Entry(v, comp, runs, seed, is_judge)


def _judge_variant() -> Variant:
    return Variant(name="judge", process={"name": "absorb"}, schedule={"name": "quench"}, layout="shifted",
                   label="judge: AR (Absorb+Quench)", train={"two_halves": True}, samplers=[{"name": "ar"}])


# ---------------------------------------------------------------------------------------------
# training
# ---------------------------------------------------------------------------------------------
class _CountingStream:
    """A batch stream that counts the tokens it hands out and hashes them (equal streams, equal
    digests: the record that every variant saw the same tokens)."""

    def __init__(self, stream: Any):
        self.stream, self.tokens, self._sha = stream, 0, hashlib.sha1()

    def __iter__(self):
        return self

    def __next__(self):
        batch = next(self.stream)
        ids = batch["input_ids"] if isinstance(batch, dict) else batch
        self.tokens += int(ids.numel())
        self._sha.update(ids.to(torch.int64).cpu().numpy().tobytes())
        return batch

    @property
    def digest(self) -> str:
        return self._sha.hexdigest()

    def state_dict(self):
        return self.stream.state_dict()

    def load_state_dict(self, s):
        self.stream.load_state_dict(s)


def _build_lm(cfg: CompareConfig, entry: _Entry) -> Any:
    from . import specs

    if entry.variant.lm is not None:
        return entry.variant.lm
    torch.manual_seed(entry.seed)
    return specs.build_composition(entry.composition)


def _trainer(cfg: CompareConfig, entry: _Entry, train_blocks: Any, steps: int, lm: Any = None):
    from .data import BatchStream
    from .training import TrainConfig, Trainer

    lm = _build_lm(cfg, entry) if lm is None else lm
    stream = _CountingStream(BatchStream(train_blocks, cfg.batch_size, seed=entry.seed))
    train = {"lr": cfg.lr, "lr_schedule": cfg.lr_schedule, "clip": 1.0, **cfg.train, **entry.variant.train}
    tcfg = TrainConfig(steps=steps, batch_size=cfg.batch_size, seed=entry.seed, progress=False, **train)
    trainer = Trainer(lm, tcfg, stream, device=cfg.device)
    if cfg.min_lr is not None:  # cosine from lr down to min_lr (not 0) after the warmup
        from transformers import get_scheduler

        trainer.scheduler = get_scheduler("cosine_with_min_lr", trainer.optimizer, num_warmup_steps=tcfg.warmup_steps,
                                          num_training_steps=steps, scheduler_specific_kwargs={"min_lr": cfg.min_lr})
    return lm, trainer, stream


def _probe(cfg: CompareConfig, entry: _Entry, train_blocks: Any) -> float:
    """Seconds per optimizer step of a throwaway copy of the entry's model (after one warm-up step)."""
    lm = _build_lm(cfg, entry)
    if entry.variant.lm is not None:
        lm = copy.deepcopy(lm)  # the given model stays untrained
    _, trainer, _ = _trainer(cfg, entry, train_blocks, cfg.probe_steps + 1, lm=lm)
    trainer.train_step()
    t0 = time.perf_counter()
    for _ in range(cfg.probe_steps):
        trainer.train_step()
    return (time.perf_counter() - t0) / cfg.probe_steps


def size_steps(step_seconds: dict, budget_seconds: float) -> int:
    """S = floor(budget / sum of the per-step seconds): every model trains S steps and the sum
    fits the budget. ValueError when not even one step each fits."""
    total = sum(step_seconds.values())
    steps = int(budget_seconds // total) if total > 0 else 0
    if steps < 1:
        each = ", ".join(f"{k} {v:.2f} s" for k, v in step_seconds.items())
        raise ValueError(f"a budget of {budget_seconds / 60:.3g} min is too small for one training step of every "
                         f"model ({each}; {total:.2f} s in all): give at least --budget-minutes {total / 60:.2g} "
                         "or --train-steps N")
    return steps


def train_variant(cfg: CompareConfig, variant: "Variant | str", tok: Any, train_blocks: Any,
                  steps: Optional[int] = None, seed: Optional[int] = None) -> tuple:
    """Train one variant (a Variant or a default-spec variant's name) for `steps` optimizer steps
    (default cfg.train_steps); returns its DiffusionLM and what the results record."""
    if isinstance(variant, str):
        variant = _variants(default_spec(), [variant])[0]
    steps = cfg.train_steps if steps is None else steps
    if steps is None:
        raise ValueError("train_variant needs the number of steps (cfg.train_steps is None: sized by a budget)")
    entry = _resolve(cfg, variant, tok, cfg.seed if seed is None else seed)
    return _train(cfg, entry, train_blocks, steps)


def _train(cfg: CompareConfig, entry: _Entry, train_blocks: Any, steps: int) -> tuple:
    from . import specs

    lm, trainer, stream = _trainer(cfg, entry, train_blocks, steps)
    bar = _bar(steps, f"train {entry.name}", cfg.progress)
    losses = []
    t0 = time.perf_counter()
    for _ in range(steps):
        m = trainer.train_step()
        losses.append(m["loss"])
        bar.update(1)
        bar.set_postfix(loss=f"{m['loss']:.3f}")
    seconds = time.perf_counter() - t0
    bar.close()
    lm.model.eval()
    tail = losses[-10:]
    info = {"label": entry.variant.label or entry.name, "composition": specs.composition_dict(lm),
            "train_overrides": entry.variant.train, "seed": entry.seed, "train_steps": trainer.step,
            "train_tokens": stream.tokens, "train_tokens_sha1": stream.digest, "train_seconds": seconds,
            "final_loss": sum(tail) / len(tail), "params": sum(p.numel() for p in lm.model.parameters())}
    return lm, info


def _evaluated_only_info(entry: _Entry) -> dict:
    """What the results record of an already-trained variant (field 'model'): not trained here."""
    from . import specs

    lm = entry.variant.lm
    lm.model.eval()
    return {"label": entry.variant.label or entry.name, "composition": specs.composition_dict(lm),
            "evaluated_only": True, "model_path": entry.variant.model, "train_overrides": {}, "seed": entry.seed,
            "train_steps": 0, "train_tokens": 0, "train_tokens_sha1": "-", "train_seconds": 0.0,
            "final_loss": None, "params": sum(p.numel() for p in lm.model.parameters())}


def save_variant(path: Path, cfg: CompareConfig, name: str, lm: Any, training: Optional[dict] = None) -> None:
    """Write a trained variant that `diffusionlm sample / eval / demo --model` load: for our
    transformer a run directory (run.json + model/, which `load_run` reads), for any other
    backbone a saved composition (`DiffusionLM.save_pretrained`, with `training` facts)."""
    from .config import DataSpec, ModelSpec, RunConfig
    from .models import DiffusionTransformer

    path = Path(path)
    if not isinstance(lm.model, DiffusionTransformer):
        from .data import load_tokenizer

        lm.save_pretrained(path, tokenizer=load_tokenizer(cfg.tokenizer), training=training)
        return
    path.mkdir(parents=True, exist_ok=True)
    run = RunConfig(model=ModelSpec(kind="transformer", preset=cfg.preset or "tiny"), process=lm.process.to_dict(),
                    schedule=lm.schedule.to_dict(), layout=lm.layout.value,
                    data=DataSpec(corpus=cfg.corpus, tokenizer=cfg.tokenizer, length=cfg.length))
    lm.model.save_pretrained(str(path / "model"))
    (path / "run.json").write_text(json.dumps({**run.to_dict(), "_comment": f"diffusionlm compare variant {name}"}, indent=2))


# ---------------------------------------------------------------------------------------------
# evaluation
# ---------------------------------------------------------------------------------------------
def _enumerable_exact(lm: Any, d: int) -> Optional[int]:
    """T when the bound is exact with every step evaluated once (levels only 0 / 1 and a
    process that moves a token deterministically between them, e.g. Absorb + Quench), else None:
    then the estimator is given M = T (the bound itself, stderr 0)."""
    if lm.schedule.continuous:
        return None
    table = lm.schedule.table(d)
    if not bool(((table == 0) | (table == 1)).all()):
        return None
    p_mask, p_sub = lm.process.event_probs(torch.zeros((), dtype=torch.float64), torch.ones((), dtype=torch.float64))
    if float(p_sub) != 0.0 or float(p_mask) not in (0.0, 1.0):
        return None
    return table.shape[0] - 1


@torch.no_grad()
def _likelihood(lm: Any, test_ids: torch.Tensor, cfg: CompareConfig) -> dict:
    """The NLL bound of the test blocks, in nats / token, through the one estimator
    (`diffusionlm.eval.bound.corpus_bound`): its stderr (valid for its draws), the PPL interval
    exp(nats -+ stderr), the dominant terms on their own lines. M = cfg.eval_samples evaluations
    per row, or every step (M = T) where the bound is then exact (`_enumerable_exact`: AR)."""
    from .eval.bound import corpus_bound

    if not lm.process.likelihood:
        return {"nll_per_token": None, "stderr_per_token": None, "ppl": None, "ppl_low": None, "ppl_high": None,
                "tokens": int(test_ids.numel()), "method": f"none: {type(lm.process).__name__} declares no likelihood",
                "terms": {}}
    # an autoregressive composition: corpus_bound takes its exact one-forward path (eval.causal)
    T = _enumerable_exact(lm, test_ids.shape[1])
    res = corpus_bound(lm, test_ids, num_samples=T or cfg.eval_samples, batch_size=cfg.eval_batch_size,
                       seed=cfg.seed + 17)
    keys = ("nll_per_token", "stderr_per_token", "ppl", "ppl_low", "ppl_high", "tokens", "method", "terms", "row_nll",
            "row_tokens")
    return {k: res[k] for k in keys}


@torch.no_grad()
def ar_judge_nll(lm_ar: Any, tokens: torch.Tensor, start: int = 0) -> tuple[float, int]:
    """Total NLL and token count of `tokens` [S, d] under an AR composition (Absorb + Quench,
    SHIFTED): one causal forward over [BOS, x[:-1]] (equal to its Quench bound, see tests/test_lm.py).
    With `start` = P, only positions P.. are scored, each given everything before it: the NLL of a
    continuation given its P-token prompt."""
    from .eval.causal import causal_nll

    S, d = tokens.shape
    if not 0 <= start < d:
        raise ValueError(f"start {start} must lie in [0, {d}) for sequences of {d} tokens")
    nll, _ = causal_nll(lm_ar, tokens, torch.arange(d, device=tokens.device)[None].expand(S, d) >= start)
    return float(nll.sum()), S * (d - start)


def _judge_fn(cfg: CompareConfig, judge_lm: Any, tok: Any):
    """tokens [S, d] -> (total NLL, tokens) under the judge, and the judge's name for the table."""
    if cfg.judge["name"] == "none":
        return None, "none (no generative PPL)"
    if cfg.judge["name"] == "trained_ar":
        return (lambda toks: ar_judge_nll(judge_lm, toks),
                f"an AR model (Absorb+Quench, shifted) trained like the variants with seed {cfg.judge['seed']}")
    return causal_lm_judge(cfg.judge["path"], tok), f"the causal LM {cfg.judge['path']}"


def causal_lm_judge(path: str, tok: Any):
    """tokens [S, d] (ids of `tok`) -> (total NLL, tokens) under the causal LM at `path` (any model
    `eval.generative.load_judge` reads), which re-tokenizes the decoded text with its own tokenizer."""
    from .eval.generative import generative_perplexity, load_judge

    model, jtok = load_judge(path)

    def judge(toks):
        r = generative_perplexity([tok.decode(row.tolist()) for row in toks], model, jtok)
        return r["nll"] * r["tokens"], r["tokens"]  # its "nll" is per token; the judge returns the total

    return judge


def _sampling(cfg: CompareConfig, entry: _Entry, lm: Any, judge, tok: Any) -> list:
    from .eval.diversity import distinct_n, unigram_entropy
    from .eval.stats import sample_bootstrap

    rows = []
    N = lm.process.vocab_size
    for label, sampler, steps in entry.runs:
        g = torch.Generator().manual_seed(cfg.seed + 29)
        t0 = time.perf_counter()
        s = sampler.sample(lm, batch_size=cfg.num_samples, length=cfg.length, generator=g)
        secs = (time.perf_counter() - t0) / cfg.num_samples
        toks = s.tokens
        if bool((toks >= N).any()):
            raise RuntimeError(f"{entry.name} / {label} emitted ids outside the vocabulary (MASK?)")
        per = [judge(toks[i : i + 1]) for i in range(len(toks))] if judge is not None else None  # per sample: bootstrap
        nll, cnt = (sum(p[0] for p in per), sum(p[1] for p in per)) if per else (None, None)
        rows.append({"sampler": label, "sampler_spec": sampler.to_dict(), "steps": steps if steps is not None else s.num_model_calls,
                     "model_calls": s.num_model_calls, "gen_nll_per_token": None if nll is None else nll / cnt,
                     "gen_ppl": None if nll is None else math.exp(nll / cnt),
                     "entropy": unigram_entropy(toks), "distinct2": distinct_n(toks, 2), "seconds_per_sample": secs,
                     "example": tok.decode(toks[0].tolist())[:200], **sample_bootstrap(toks.tolist(), per)})
    return rows


def _bar(total, desc, enabled):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, disable=not enabled, dynamic_ncols=True, leave=False)


# ---------------------------------------------------------------------------------------------
# the job
# ---------------------------------------------------------------------------------------------
def compare(spec: "str | Path | dict | CompareConfig | None" = None, *, variants: Optional[list] = None,
            **shared: Any) -> dict:
    """Run a comparison (module docstring). `spec`: a spec file or dict (default: the default
    spec), or a CompareConfig (the shared settings; variants from the default spec unless given);
    `variants`: replaces the spec's variants (specs, DiffusionLM objects, default-spec names);
    `shared`: overrides of the shared settings (e.g. out_dir=..., budget_minutes=...).
    Everything is checked before anything trains."""
    from .data import TokenBlocks, load_corpus, load_tokenizer

    t_start = time.perf_counter()
    machine = _machine()
    if isinstance(spec, CompareConfig):
        shared = {**spec.to_dict(), **shared}
        spec = None
    spec = load_spec(spec)
    cfg = _shared(spec, shared)
    if cfg.seeds:
        return _over_seeds(spec, variants, cfg)
    vs = _variants(spec, variants)
    tok = load_tokenizer(cfg.tokenizer)
    entries = [_resolve(cfg, v, tok, cfg.seed) for v in vs]
    judge_entry = None
    if cfg.judge["name"] == "trained_ar":
        judge_entry = _resolve(cfg, _judge_variant(), tok, cfg.judge["seed"], is_judge=True)
    train_blocks = TokenBlocks(load_corpus(cfg.corpus, "train"), tok, cfg.length)
    test_blocks = TokenBlocks(load_corpus(cfg.corpus, "test"), tok, cfg.length)
    if len(test_blocks.ids) < cfg.eval_blocks:
        raise ValueError(f"the {cfg.corpus} test split holds {len(test_blocks.ids)} blocks of {cfg.length} tokens; "
                         f"eval_blocks (--eval-blocks) is {cfg.eval_blocks}")
    if len(train_blocks.ids) < cfg.batch_size:
        raise ValueError(f"the {cfg.corpus} train split holds {len(train_blocks.ids)} blocks, fewer than one batch ({cfg.batch_size})")
    test_ids = test_blocks.ids[: cfg.eval_blocks]
    models = entries + ([judge_entry] if judge_entry else [])

    # -- the number of steps, before training -------------------------------------------
    sizing: dict = {"train_steps_given": cfg.train_steps}
    if cfg.budget_minutes is not None:
        per_step = {e.name: _probe(cfg, e, train_blocks) for e in models if e.variant.model is None}
        steps = size_steps(per_step, cfg.budget_minutes * 60)
        sizing.update({"budget_minutes": cfg.budget_minutes, "probe_steps": cfg.probe_steps,
                       "seconds_per_step": per_step, "seconds_per_step_sum": sum(per_step.values()),
                       "planned_train_seconds": steps * sum(per_step.values())})
        if cfg.progress:
            print(f"compare: {steps} steps per model (budget {cfg.budget_minutes} min; seconds per step: "
                  + ", ".join(f"{k} {v:.3f}" for k, v in per_step.items()) + ")", file=sys.stderr, flush=True)
    else:
        steps = cfg.train_steps
    sizing["train_steps"] = steps

    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    results: dict = {
        "spec": {"shared": _jsonable(cfg.to_dict()), "variants": [_variant_record(e) for e in entries]},
        "data": {"corpus": cfg.corpus, "tokenizer": cfg.tokenizer, "vocab_size": tok.vocab_size,
                 "train_blocks": len(train_blocks.ids), "test_blocks_used": len(test_ids),
                 "test_tokens": int(test_ids.numel()), "length": cfg.length},
        "machine": machine,
        "fairness": {**sizing, "batch_size": cfg.batch_size, "seed": cfg.seed,
                     "tokens_per_model": steps * cfg.batch_size * cfg.length},
        "variants": {},
    }
    # -- train ------------------------------------------------------------------------
    lms: dict = {}
    for e in entries:
        if e.variant.model is not None:  # already trained: evaluated only
            lms[e.name] = e.variant.lm
            results["variants"][e.name] = _evaluated_only_info(e)
            continue
        lm, info = _train(cfg, e, train_blocks, steps)
        lms[e.name] = lm
        results["variants"][e.name] = info
        save_variant(out / "models" / e.name, cfg, e.name, lm, training={
            "data": {"corpus": cfg.corpus, "tokenizer": cfg.tokenizer, "length": cfg.length}, "steps": steps,
            "tokens": info["train_tokens"], "batch_size": cfg.batch_size, "seconds": round(info["train_seconds"], 1)})
    judge_lm = None
    if judge_entry is not None:
        judge_lm, judge_info = _train(cfg, judge_entry, train_blocks, steps)
        nll, n = ar_judge_nll(judge_lm, test_ids)
        judge_info["likelihood"] = {"nll_per_token": nll / n, "stderr_per_token": 0.0, "ppl": math.exp(nll / n),
                                    "ppl_low": math.exp(nll / n), "ppl_high": math.exp(nll / n), "tokens": n,
                                    "method": "exact: causal NLL, one forward (its Quench bound)", "terms": {}}
        results["judge_model"] = judge_info
    judge, judge_name = _judge_fn(cfg, judge_lm, tok)
    results["judge"] = judge_name
    # -- likelihood, samples ---------------------------------------------------------------
    bar = _bar(len(entries), "bound and samples", cfg.progress)
    for e in entries:
        r = results["variants"][e.name]
        r["likelihood"] = _likelihood(lms[e.name], test_ids, cfg)
        r["sampling"] = _sampling(cfg, e, lms[e.name], judge, tok)
        bar.update(1)
    bar.close()
    ref = test_ids[: cfg.num_samples]
    nll, cnt = judge(ref) if judge is not None else (None, None)
    from .eval.diversity import distinct_n, unigram_entropy

    results["reference"] = {"what": f"the first {len(ref)} test blocks (real text) under the judge",
                            "gen_ppl": None if nll is None else math.exp(nll / cnt), "entropy": unigram_entropy(ref), "distinct2": distinct_n(ref, 2)}
    results["wall_seconds"] = time.perf_counter() - t_start
    (out / "results.json").write_text(json.dumps(results, indent=2))
    (out / "results.md").write_text(markdown_table(results))
    # the files of this run (not results.json's content: the plots are drawn from it)
    results["written"] = ["results.json", "results.md"] + plot(results, out)
    return results


def _over_seeds(spec: dict, variants: Optional[list], cfg: CompareConfig) -> dict:
    """The job once per training seed (out_dir/seed-S), then the seed and paired tables (eval.stats)."""
    from .eval.stats import sampling_seed_table, seed_and_paired_tables

    runs = {s: compare(spec, variants=variants, **{**cfg.to_dict(), "seeds": None, "seed": s,
                                                   "out_dir": str(Path(cfg.out_dir) / f"seed-{s}")}) for s in cfg.seeds}
    by_seed = {s: {n: v["likelihood"] for n, v in r["variants"].items() if "likelihood" in v} for s, r in runs.items()}
    samples = {s: {n: v["sampling"] for n, v in r["variants"].items() if "sampling" in v} for s, r in runs.items()}
    text = seed_and_paired_tables(by_seed) + "\n\nSamples, over the seeds:\n\n" + sampling_seed_table(samples)
    Path(cfg.out_dir, "seeds.md").write_text(text + "\n")
    return {"seeds": cfg.seeds, "runs": {s: str(Path(cfg.out_dir) / f"seed-{s}") for s in cfg.seeds}, "tables": text,
            "out_dir": cfg.out_dir, "written": ["seeds.md"]}


def _machine() -> dict:
    """What the timings were measured on: CPU count, torch threads, load average at the start."""
    import os
    import platform

    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "platform": platform.platform(),
            "load_average_1_5_15_min": None if load is None else [round(x, 2) for x in load]}


def _variant_record(e: _Entry) -> dict:
    v = e.variant
    return {"name": v.name, "label": v.label, "composition": e.composition, "train": v.train, "model": v.model,
            "samplers": [r[1].to_dict() for r in e.runs]}


def _jsonable(x):
    if isinstance(x, tuple):
        return list(x)
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    return x


# ---------------------------------------------------------------------------------------------
# the report
# ---------------------------------------------------------------------------------------------
def _composition_text(c: dict) -> str:
    def part(p: dict) -> str:
        args = ", ".join(f"{k}={v}" for k, v in p.items() if k not in ("name", "vocab_size", "mask_id", "noise") and v is not None)
        return f"{p['name']}({args})" if args else p["name"]

    return f"{part(c['process'])} + {part(c['schedule'])}, {c['layout']}"


def _likelihood_cells(lk: dict) -> tuple:
    """(NLL ± stderr, PPL [low, high], terms) as table cells; "n/a" where there is none."""
    if lk.get("nll_per_token") is None:
        return "n/a", "n/a", ""
    se = lk.get("stderr_per_token")
    nll = f"{lk['nll_per_token']:.4f} ± " + ("n/a" if se is None else f"{se:.4f}")
    ppl = f"{lk['ppl']:.3f}" + ("" if lk.get("ppl_low") is None else f" [{lk['ppl_low']:.3f}, {lk['ppl_high']:.3f}]")
    terms = "; ".join(f"{k} {v:.4f}" for k, v in (lk.get("terms") or {}).items())
    return nll, ppl, terms


def _num(x: Optional[float]) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def markdown_table(results: dict) -> str:
    f = results["fairness"]
    d = results["data"]
    lines = ["# Comparison", "",
             f"Every model trained **{f['train_steps']} optimizer steps** of batch {f['batch_size']} x {d['length']} tokens "
             f"({f['tokens_per_model']:,} tokens, the same stream for every variant: see the SHA-1 column) with seed {f['seed']}.",
             ""]
    if f.get("budget_minutes") is not None:
        per = ", ".join(f"{k} {v:.3f}" for k, v in f["seconds_per_step"].items())
        lines += [f"Steps sized before training by the {f['budget_minutes']} min budget: floor(budget / "
                  f"{f['seconds_per_step_sum']:.3f} s), the sum of the seconds per step timed on each model "
                  f"({f['probe_steps']} steps after a warm-up): {per}.", ""]
    lines += ["## Training and likelihood", "",
              "| variant | composition | steps | tokens | train s | tokens SHA-1 | NLL bound (nats/token) | PPL bound [exp(nats -+ stderr)] | terms (nats/token) | bound |",
              "|---|---|---:|---:|---:|---|---:|---:|---|---|"]
    rows = list(results["variants"].items())
    if "judge_model" in results:
        rows.append(("judge", results["judge_model"]))
    for name, r in rows:
        lk = r.get("likelihood", {})
        nll, ppl, terms = _likelihood_cells(lk)
        lines.append(f"| {r['label']} | {_composition_text(r['composition'])} | {r['train_steps']} | {r['train_tokens']:,} | "
                     f"{r['train_seconds']:.1f} | {r['train_tokens_sha1'][:10]} | {nll} | {ppl} | {terms} | {lk.get('method', '')} |")
    lines += ["", "## Samples", "",
              f"Judge: {results['judge']}. No variant judges its own samples. Steps: model calls of the "
              "sampler (an AR sampler makes one per token, so it has one step count: the length).", "",
              "| variant | sampler | steps | model calls | gen PPL (judge) | entropy (nats) | distinct-2 | s / sample |",
              "|---|---|---:|---:|---:|---:|---:|---:|"]
    for name, r in results["variants"].items():
        for s in r.get("sampling", []):
            lines.append(f"| {r['label']} | {s['sampler']} | {s['steps']} | {s['model_calls']} | {_num(s['gen_ppl'])} | "
                         f"{s['entropy']:.3f} | {s['distinct2']:.3f} | {s['seconds_per_sample']:.4f} |")
    ref = results.get("reference")
    if ref:
        lines.append(f"| reference: real test text | - | - | - | {_num(ref['gen_ppl'])} | {ref['entropy']:.3f} | {ref['distinct2']:.3f} | - |")
    lines += ["",
              "Units: NLL in nats per token of the test blocks; PPL = exp(NLL / token); seconds are wall-clock on "
              "this machine. ± is one standard error of the Monte-Carlo estimate of the bound (0 where every step "
              "is computed exactly); the PPL interval is exp(nats - stderr) .. exp(nats + stderr). gen PPL: "
              "token-weighted exp(mean NLL per token) of the samples under the judge; entropy: unigram entropy "
              "of the sampled ids (nats); distinct-2: unique bigrams / bigrams.",
              "",
              f"Data: {d['corpus']} ({d['tokenizer']} tokenizer, vocabulary {d['vocab_size']}); test: "
              f"{d['test_blocks_used']} blocks, {d['test_tokens']} tokens. Wall time of the whole job: {results['wall_seconds']:.0f} s."]
    m = results.get("machine")
    if m:
        lines.append(f"Machine: {m['cpus']} CPUs, {m['torch_threads']} torch threads, load average "
                     f"{m['load_average_1_5_15_min']} (1 / 5 / 15 min) at the start; {m['platform']}.")
    return "\n".join(lines) + "\n"


def _series(results: dict):
    """(label, [sampling rows]) per (variant, sampler)."""
    for name, r in results["variants"].items():
        by: dict = {}
        for s in r.get("sampling", []):
            by.setdefault(s["sampler"], []).append(s)
        for sampler, rows in by.items():
            yield f"{name} / {sampler}", rows


def _plain_log_axis(axis) -> None:
    from matplotlib.ticker import LogFormatter

    axis.set_major_formatter(LogFormatter(labelOnlyBase=False))
    axis.set_minor_formatter(LogFormatter(labelOnlyBase=False, minor_thresholds=(2, 0.5)))


def plot(results: dict, out: Path) -> list:
    """ppl.png, genppl_vs_entropy.png, quality_vs_steps.png (module docstring; the last two only
    with a judge); returns the names of the files it wrote."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    v = {k: r["likelihood"] for k, r in results["variants"].items() if r["likelihood"].get("ppl") is not None}
    names = list(v)
    fig, ax = plt.subplots(figsize=(7, 3.8))
    ppl = [v[n]["ppl"] for n in names]
    low = [v[n]["ppl"] - v[n]["ppl_low"] if v[n].get("ppl_low") is not None else 0.0 for n in names]  # none: no bar
    high = [v[n]["ppl_high"] - v[n]["ppl"] if v[n].get("ppl_high") is not None else 0.0 for n in names]
    ax.bar(range(len(names)), ppl, yerr=[low, high], capsize=4, color="tab:blue")
    ax.set_yscale("log")
    _plain_log_axis(ax.yaxis)
    ax.set_xticks(range(len(names)), names)
    ax.set_ylabel("test PPL bound (log scale)")
    ax.set_title("Likelihood bound per variant (lower is better)\nbars: exp(nats/token -+ one standard error)")
    fig.tight_layout()
    fig.savefig(out / "ppl.png", dpi=120)
    plt.close(fig)

    ref = results.get("reference")
    if not any(s["gen_ppl"] is not None for _, rows in _series(results) for s in rows):
        return ["ppl.png"]  # no judge: no generative PPL to plot
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for label, rows in _series(results):
        rows = [s for s in rows if s["gen_ppl"] is not None]
        ax.plot([s["entropy"] for s in rows], [s["gen_ppl"] for s in rows], "o-", label=label)
        for s in rows:
            ax.annotate(str(s["steps"]), (s["entropy"], s["gen_ppl"]), fontsize=7)
    if ref and ref["gen_ppl"] is not None:
        ax.plot([ref["entropy"]], [ref["gen_ppl"]], "k*", markersize=12, label="real test text")
    ax.set_yscale("log")
    _plain_log_axis(ax.yaxis)
    ax.set_xlabel("unigram entropy of samples (nats)")
    ax.set_ylabel("generative PPL under the judge (log scale)")
    ax.set_title("Generative PPL against entropy (labels: sampling steps)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "genppl_vs_entropy.png", dpi=120)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for label, rows in _series(results):
        rows = [s for s in rows if s["gen_ppl"] is not None]
        ax.plot([s["steps"] for s in rows], [s["gen_ppl"] for s in rows], "o-", label=label)
    if ref and ref["gen_ppl"] is not None:
        ax.axhline(ref["gen_ppl"], color="k", linestyle=":", label="real test text")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    _plain_log_axis(ax.yaxis)
    ax.set_xlabel("sampling steps")
    ax.set_ylabel("generative PPL under the judge (log scale)")
    ax.set_title("Quality against sampling steps")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "quality_vs_steps.png", dpi=120)
    plt.close(fig)
    return ["ppl.png", "genppl_vs_entropy.png", "quality_vs_steps.png"]


class _CallableModule(types.ModuleType):
    """`diffusionlm.compare(...)` runs `compare(...)`, while `diffusionlm.compare` stays this module."""

    def __call__(self, *args: Any, **kwargs: Any) -> dict:
        return compare(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
