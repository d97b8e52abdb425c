"""The comparison spec: shared settings and named variants, resolved into compositions and
sampler runs and checked before anything trains (one-line errors). Variants are the one
composition format (`DiffusionLM.to_dict`) plus training overrides and samplers; see the package
docstring (diffusionlm.compare) for the spec's keys."""
from __future__ import annotations

import dataclasses
import difflib
import json
import math
import types
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import Any, Optional

from .. import specs
from ..io.hub import _json, load_model
from ..lm import DiffusionLM, check_two_halves_rows
from ..masks import Layout
from ..models.hf import spec_max_rows
from ..training import TrainConfig

DEFAULT_SPEC = "resources/default_compare.json"
#: TrainConfig fields a variant may not override: they are what makes the comparison fair (or
#: what the job itself sets)
FIXED_TRAIN = ("steps", "batch_size", "grad_accum", "seed", "out_dir", "progress")


def default_spec() -> dict:
    """The default comparison (package data): AR, MDLM, block diffusion, GammaHybrid, EpsilonHybrid."""
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
    #: seeds and paired differences on the same rows (eval.stats; seeds.md, seeds.png); one seed
    #: gives the same layout without an over-seeds error bar; None: `seed` only, in out_dir
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
    #: {"name": "model", "path": P} (any causal LM `diffusionlm.io.hub.load_model` takes: an HF
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
        if self.seeds is not None and (not isinstance(self.seeds, list) or not self.seeds or len(set(self.seeds)) != len(
                self.seeds) or any(isinstance(x, bool) or not isinstance(x, int) for x in self.seeds)):
            raise ValueError(f"seeds must be a non-empty list of distinct ints (training seeds), got {self.seeds!r}")
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
        if isinstance(self.judge, str):  # --judge none: no judge; any other string names a model
            self.judge = {"name": "none"} if self.judge == "none" else {"name": "model", "path": self.judge}
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
    #: a DiffusionLM composed in Python (then process / schedule / layout / backbone are its own);
    #: with our transformer as backbone its weights are re-drawn from the variant's seed before
    #: training, so that it and the same composition given as a spec are the same run
    lm: Any = None
    #: an already-trained model (any path `hub.load_model` takes: a run directory, a saved
    #: composition): evaluated only, never trained (its parts are its own)
    model: Optional[str] = None

    REQUIRED = ("process", "schedule", "samplers")

    @classmethod
    def from_spec(cls, d: Any, index: int = 0) -> "Variant":
        """A variant from its spec dict, a DiffusionLM, or {"name", "lm", ...}; one-line errors
        name the variant and the field."""
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
    if v.lm is not None:
        try:
            return v.lm.to_dict()
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
    where = f"variant {v.name!r}:"
    if v.model is not None and v.lm is None:
        try:
            v.lm = load_model(v.model, device=cfg.device).lm
        except (FileNotFoundError, ValueError) as err:
            raise ValueError(f"{where} field 'model': {err}") from err
    comp = _composition(cfg, v, tok)
    try:
        proc = v.lm.process if v.lm is not None else specs.build("process", comp["process"])
        sched = v.lm.schedule if v.lm is not None else specs.build("hyperschedule", comp["schedule"])
        layouts = [layout.value for layout in Layout]
        if comp["layout"] not in layouts:
            raise ValueError(f"unknown layout {comp['layout']!r}; known: {', '.join(layouts)}")
        if v.lm is None and comp["backbone"].get("name") not in specs.registry("backbone"):
            raise ValueError(f"unknown backbone {comp['backbone'].get('name')!r}; known: {', '.join(sorted(specs.registry('backbone')))}")
    except ValueError as err:
        raise ValueError(f"{where} {err}") from err
    if proc.vocab_size != tok.vocab_size:
        raise ValueError(f"{where} its process has {proc.vocab_size} real tokens, the {cfg.tokenizer} tokenizer {tok.vocab_size}")
    if not sched.continuous:
        sched.table(cfg.length)  # a Custom table for another length fails here

    for what, given in (("shared", cfg.train), (f"variant {v.name!r}", v.train)):
        for key in given:
            if key not in TrainConfig.field_names():
                close = difflib.get_close_matches(key, TrainConfig.field_names(), n=1)
                hint = f"did you mean {close[0]}?" if close else f"its keys: {', '.join(TrainConfig.field_names())}"
                raise ValueError(f"{what} train: unknown key(s) {key}; {hint}")
    try:
        train = TrainConfig(**{**cfg.train, **v.train, "steps": 1, "batch_size": cfg.batch_size})
    except ValueError as err:
        raise ValueError(f"{where} field 'train': {err}") from err
    backbone = comp.get("backbone") or {}
    if train.two_halves and v.lm is None and backbone.get("name") == "hf":  # before any variant trains
        check_two_halves_rows(cfg.length, spec_max_rows(backbone.get("hf_config"), backbone.get("path")),
                              f"{where.rstrip(':')}'s hf backbone", readers=Layout(comp["layout"]).reads_last)
    elif train.two_halves and v.lm is not None:
        v.lm.check_two_halves_length(cfg.length)
    fit = types.SimpleNamespace(process=proc, schedule=sched, layout=comp["layout"])
    runs = [] if is_judge else _sampler_runs(v, fit, where)
    return _Entry(v, comp, runs, seed, is_judge)


def _judge_variant() -> Variant:
    return Variant(name="judge", process={"name": "absorb"}, schedule={"name": "quench"}, layout="shifted",
                   label="judge: AR (Absorb+Quench)", train={"two_halves": True}, samplers=[{"name": "ar"}])
