"""Run configuration: the composition, typed sections, JSON files, `section.key=value` overrides.

    run = RunConfig.from_file("recipes/scratch.json", ["train.lr=1e-4", "composition.schedule.width=8"])
    parts = diffusionlm.io.runs.build(run)  # tokenizer, lm, train stream, validation batches

A run config is {"composition": DiffusionLM.to_dict()'s format, "init": a saved transformer
folder or null, "data": ..., "train": ..., "stages": [...]}. The composition may leave out what
the data decides (the process's vocab_size: the tokenizer's; bos_id: its BOS, else EOS; a
transformer backbone's sizes: derived from the process, max_positions: data.length); the run
builder fills those in and builds it with DiffusionLM.from_dict, nothing else. Old-format configs
(model / process / schedule / layout sections) are read by diffusionlm.config.legacy, in one line.

Unknown keys are errors that name the closest valid key; values given on the command line are
parsed as JSON when they parse (numbers, true/false, null, lists, objects) and as strings
otherwise. Every section round-trips through `to_dict()` / JSON.
"""
from __future__ import annotations

import copy
import dataclasses
import difflib
import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from . import legacy
from .check import Bool, Choice, Int, Opt, Str, check_fields
from .legacy import ModelSpec, reject_unknown
from ..specs import build as build_spec, lookup, provided
from ..masks import Layout
from ..models.transformer import TransformerConfig
from .train import TrainConfig

__all__ = ["DEFAULT_COMPOSITION", "ModelSpec", "DataSpec", "RunConfig"]


@dataclass
class DataSpec:
    corpus: str = "stdlib"
    tokenizer: str = "byte"
    length: int = 128
    rule: str = "wrap"
    val_split: str = "validation"
    val_batches: int = 4
    # instruction data (LAD): a local JSONL with prompt / response fields
    instruct: Optional[str] = None
    prompt_field: str = "prompt"
    response_field: str = "response"
    all_tokens: bool = False
    # how a local / hf: corpus is read (diffusionlm.data.sources): its text column, a folder's
    # file pattern, text files' documents; streaming: tokenized on the fly (data.streaming)
    field: str = "text"
    files: Optional[str] = None
    unit: str = "file"
    streaming: bool = False

    RULES = {
        "corpus": Str(), "tokenizer": Str(), "length": Int(1), "rule": Choice("wrap", "pad"), "val_split": Str(),
        "val_batches": Int(0), "instruct": Opt(Str(), "plain text from data.corpus"), "prompt_field": Str(),
        "response_field": Str(), "all_tokens": Bool(), "field": Str(), "files": Opt(Str(), "every non-hidden file"),
        "unit": Choice("file", "line", "paragraph"), "streaming": Bool(),
    }

    def __post_init__(self) -> None:
        check_fields(self, self.RULES, "data")


#: the composition of a config that names none: MDLM (Absorb, Flat) on the tiny transformer
DEFAULT_COMPOSITION = {"name": "diffusion_lm", "process": {"name": "absorb"}, "schedule": {"name": "flat"},
                       "layout": "aligned", "backbone": {"name": "transformer", "preset": "tiny"}}
#: composition fields whose value is a part's spec: a config file or override replaces it whole
_PARTS = ("process", "schedule", "backbone", "annealing")


@dataclass
class RunConfig:
    """A training run: the composition (DiffusionLM.to_dict()'s format; what the data decides may be
    left out), where its weights start (`init`; an hf backbone's `path` / `lora` are backbone fields),
    the data, the train settings and the stages."""

    composition: dict = field(default_factory=lambda: copy.deepcopy(DEFAULT_COMPOSITION))
    #: a saved DiffusionTransformer folder (save_pretrained) whose architecture and weights the run
    #: starts from (fields composition.backbone gives must agree with it); None: fresh weights
    init: Optional[str] = None
    data: DataSpec = field(default_factory=DataSpec)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(steps=200, progress=True))
    #: training stages run one after another; each may override schedule / train keys
    #: (the papers' Flat first, then Block / Slide fine-tuning)
    stages: list = field(default_factory=list)

    SECTIONS = {"data": DataSpec, "train": TrainConfig}

    def to_dict(self) -> dict:
        out = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            out[f.name] = dataclasses.asdict(v) if dataclasses.is_dataclass(v) else copy.deepcopy(v)
        return out

    @classmethod
    def from_dict(cls, d: dict, source: str = "a run config") -> "RunConfig":
        """Keys starting with "_" (e.g. "_comment") are comments, ignored at the top level, in
        the data / train sections and in each stage. An old-format dict (model / process /
        schedule / layout sections) is read by its converter (diffusionlm.config.legacy), said in
        one line naming `source`. Stages are checked here, so a typo in a late stage fails before
        the first step, not after the earlier stages have trained."""
        d = _strip_comments(d)
        if isinstance(d, dict) and legacy.is_old(d):
            d = legacy.convert(d, source)
        top = [f.name for f in dataclasses.fields(cls)]
        reject_unknown(d, top, "")
        kw = {}
        for name, value in d.items():
            sec = cls.SECTIONS.get(name)
            if sec is not None:
                value = _strip_comments(value)
                reject_unknown(value, [f.name for f in dataclasses.fields(sec)], name + ".")
                kw[name] = sec(**value)
            else:
                kw[name] = value
        run = cls(**kw)
        if run.init is not None and not (isinstance(run.init, str) and run.init.strip()):
            raise ValueError(f"init = {run.init!r}: must be a folder (a string) or null: fresh weights")
        run.composition = _check_composition(run.composition, run.data.length)
        run.stages = _check_stages(run.stages, run.train, run.data.length)
        for i, entry in enumerate(run.train.curriculum or []):
            _check_schedule(entry["schedule"], run.data.length, f"train.curriculum[{i}].schedule")
        return run

    @classmethod
    def from_file(cls, path: "str | Path | None", overrides: "list[str] | None" = None) -> "RunConfig":
        """The run config of a JSON file (old format: converted, said in one line) with
        `section.key=value` overrides on top (old keys: model.*, process, schedule, layout too)."""
        base = cls().to_dict()
        if path is not None:
            p = Path(path)
            if not p.exists():
                raise FileNotFoundError(f"config file not found: {p}")
            new = _strip_comments(json.loads(p.read_text()))
            if isinstance(new, dict) and legacy.is_old(new):
                new = legacy.convert(new, str(p))
            _merge(base, new)
        for item in overrides or []:
            _apply_override(base, item)
        _overrides_reach_stages(base, overrides or [])
        return cls.from_dict(base)


def _check_composition(comp: Any, length: int) -> dict:
    """The composition section's keys (those of DiffusionLM.to_dict()), layout, hyperschedule (at
    the data length) and a transformer backbone's keys, each in one line."""
    if not isinstance(comp, dict):
        raise ValueError(f"config section composition must be an object (DiffusionLM.to_dict()), got {type(comp).__name__}")
    comp = _strip_comments(comp)
    cls = lookup("composition", comp.get("name", "diffusion_lm"))
    reject_unknown(comp, ["name", *cls.spec_fields()], "composition.")
    layouts = [layout.value for layout in Layout]
    if comp.get("layout", "aligned") not in layouts:
        raise ValueError(f"composition.layout = {comp['layout']!r}: must be one of {', '.join(layouts)}")
    _check_schedule(comp.get("schedule", {"name": "flat"}), length, "composition.schedule")
    backbone = comp.get("backbone")
    if isinstance(backbone, dict) and backbone.get("name") == "transformer":
        fields = ["preset"] + [f.name for f in dataclasses.fields(TransformerConfig)]
        reject_unknown(_strip_comments(backbone), ["name"] + fields, "composition.backbone.")
    return comp


def _strip_comments(d: Any) -> Any:
    return {k: v for k, v in d.items() if not (isinstance(k, str) and k.startswith("_"))} if isinstance(d, dict) else d


def _check_schedule(spec: Any, length: int, where: str) -> None:
    """The hyperschedule builds and, when discrete, has a level table at the data length (a Block
    or Slide width larger than the length is refused here, before anything is built)."""
    try:
        hs = build_spec("hyperschedule", spec)
        if not hs.continuous:
            hs.table(length)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{where}: {err}") from err


def _check_stages(stages: Any, train: TrainConfig, length: int) -> list:
    """Each stage: an optional "schedule" plus TrainConfig keys (overriding `train`)."""
    if not isinstance(stages, list):
        raise ValueError(f"config key stages must be a list of objects, got {type(stages).__name__}")
    out = []
    for i, stage in enumerate(stages):
        prefix = f"stages[{i}]."
        stage = _strip_comments(stage)
        reject_unknown(stage, ["schedule"] + TrainConfig.field_names(), prefix)
        if "schedule" in stage:
            _check_schedule(stage["schedule"], length, f"{prefix}schedule")
        rest = {k: v for k, v in stage.items() if k != "schedule"}
        try:
            TrainConfig(**{**dataclasses.asdict(train), **rest})
        except (TypeError, ValueError) as err:
            raise ValueError(f"stage {i}: {err}") from err
        out.append(stage)
    return out


def _merge(base: dict, new: dict) -> None:
    """`new` over `base`, section by section; a part's spec (process, schedule, backbone, annealing)
    is replaced whole (its fields belong to the class it names)."""
    for k, v in new.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict) and k not in _PARTS:
            _merge(base[k], v)
        else:
            base[k] = v


def _overrides_reach_stages(base: dict, overrides: list) -> None:
    """A `train.KEY=VALUE` given on the command line applies to every stage: a stage that sets KEY
    itself (a recipe's stage-2 `"steps": 500`) takes the command line's value, so that
    `train.steps=10` shortens the whole run, not stage 1 alone. (One stage: `stages='[...]'`.)"""
    keys = {item.split("=", 1)[0][len("train."):] for item in overrides if item.startswith("train.") and "=" in item}
    for stage in base.get("stages") or []:
        if isinstance(stage, dict):
            for k in keys & set(stage):
                stage[k] = base["train"][k]


#: old override keys that are composition fields now (model.*: diffusionlm.config.legacy)
_MOVED = ("process", "schedule", "layout")


def _apply_override(base: dict, item: str) -> None:
    """`key=value` (value as JSON when it parses) into the config dict `base`: section.key=value,
    composition.part.field=value (a part's fields belong to the class it names: checked when
    built); the old keys process / schedule / layout (composition.*) and model.* still work."""
    if "=" not in item:
        raise ValueError(f"override {item!r} is not of the form key=value")
    key, raw = item.split("=", 1)
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    parts = key.split(".")
    if parts[0] in _MOVED:
        parts = ["composition", *parts]
    if parts[0] == "model":
        legacy.model_override(base, parts[1:], value, _set_key)
        return
    _set_key(base, parts, value, key)


def _set_key(base: dict, parts: list, value: Any, key: str) -> None:
    node = base
    for i, p in enumerate(parts[:-1]):
        if p not in node or not isinstance(node[p], dict):
            valid = [k for k, v in node.items() if isinstance(v, dict)]
            close = difflib.get_close_matches(p, valid, n=1)
            where = ".".join(parts[:i])
            raise ValueError(f"unknown config section {key}" + (f"; did you mean {'.'.join(parts[:i] + close)}?" if close else f"; sections{' of ' + where if where else ''}: {valid}"))
        node = node[p]
    leaf = parts[-1]
    free = parts[0] == "composition"  # checked by _check_composition and, a part's fields, when built
    if leaf not in node and not free:
        close = difflib.get_close_matches(leaf, list(node), n=1)
        prefix = ".".join(parts[:-1]) + "." if len(parts) > 1 else ""
        raise ValueError(f"unknown config key {key}" + (f"; did you mean {prefix}{close[0]}?" if close else ""))
    node[leaf] = value


# -- moved to diffusionlm.io.runs (building a run reads files and loads models: the io layer) --
def _moved(name: str):
    def alias(*args: Any, **kwargs: Any) -> Any:
        warnings.warn(f"diffusionlm.config.{name} moved to diffusionlm.io.runs.{name}", DeprecationWarning, stacklevel=2)
        return provided(f"runs.{name}")(*args, **kwargs)

    alias.__name__ = alias.__qualname__ = name
    alias.__doc__ = f"Deprecated: diffusionlm.io.runs.{name} (late-bound, so that configuration imports no io)."
    return alias


build, build_model, build_process, build_tokenizer, load_run, safetensors_errors = (
    _moved(n) for n in ("build", "build_model", "build_process", "build_tokenizer", "load_run", "safetensors_errors"))
