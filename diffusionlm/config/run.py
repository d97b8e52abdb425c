"""Run configuration: typed sections, JSON files, `section.key=value` overrides.

    run = RunConfig.from_file("recipes/scratch.json", ["train.lr=1e-4", "data.length=256"])
    parts = build(run)                      # tokenizer, lm, train stream, validation batches

Unknown keys are errors that name the closest valid key; values given on the command line are
parsed as JSON when they parse (numbers, true/false, null, lists, objects) and as strings
otherwise. Every section round-trips through `to_dict()` / JSON.
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from .check import Bool, Choice, Dict, Int, Opt, Str, check_fields
from ..specs import build as build_spec, provided
from ..models.transformer import TransformerConfig
from .train import TrainConfig

__all__ = ["ModelSpec", "DataSpec", "RunConfig"]


@dataclass
class ModelSpec:
    kind: str = "transformer"  # transformer (ours) | hf (any AutoModelForCausalLM)
    preset: str = "tiny"  # transformer presets: tiny | gpt2-small
    overrides: dict = field(default_factory=dict)  # TransformerConfig fields
    path: Optional[str] = None  # transformer: a save_pretrained dir; hf: local dir or hub id
    hf_config: Optional[dict] = None  # hf: build a randomly initialised model from this config
    attn_implementation: str = "sdpa"
    mask: str = "add"  # hf MASK token: "add" (resize by one) or a reserved token string
    lora: Optional[dict] = None  # {"r": 8, "target_modules": ["q_proj", "v_proj"]}
    annealing_steps: Optional[int] = None  # DiffuGPT attention-mask annealing warm-up

    RULES = {
        "kind": Choice("transformer", "hf"), "preset": Choice(*TransformerConfig.presets()), "overrides": Dict(),
        "path": Opt(Str(), "a new model"), "hf_config": Opt(Dict(), "model.path gives the model"),
        "attn_implementation": Choice("sdpa", "eager"), "mask": Str(), "lora": Opt(Dict(), "no LoRA"),
        "annealing_steps": Opt(Int(0), "no annealing"),
    }

    def __post_init__(self) -> None:
        check_fields(self, self.RULES, "model")
        if self.hf_config is not None and not isinstance(self.hf_config.get("model_type"), str):
            raise ValueError(f"model.hf_config needs a \"model_type\" (e.g. \"llama\", \"gpt2\"), got keys {sorted(self.hf_config)}")


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


@dataclass
class RunConfig:
    model: ModelSpec = field(default_factory=ModelSpec)
    process: dict = field(default_factory=lambda: {"name": "absorb"})
    schedule: dict = field(default_factory=lambda: {"name": "flat"})
    layout: str = "aligned"
    data: DataSpec = field(default_factory=DataSpec)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(steps=200, progress=True))
    #: training stages run one after another; each may override schedule / train keys
    #: (the papers' Flat first, then Block / Slide fine-tuning)
    stages: list = field(default_factory=list)

    SECTIONS = {"model": ModelSpec, "data": DataSpec, "train": TrainConfig}

    def to_dict(self) -> dict:
        out = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            out[f.name] = dataclasses.asdict(v) if dataclasses.is_dataclass(v) else v
        return out

    @classmethod
    def from_dict(cls, d: dict) -> "RunConfig":
        """Keys starting with "_" (e.g. "_comment") are comments, ignored at the top level, in
        the model / data / train sections and in each stage. Stages are checked here, so a typo in
        a late stage fails before the first step, not after the earlier stages have trained."""
        top = [f.name for f in dataclasses.fields(cls)]
        d = _strip_comments(d)
        _reject_unknown(d, top, "")
        kw = {}
        for name, value in d.items():
            sec = cls.SECTIONS.get(name)
            if sec is not None:
                value = _strip_comments(value)
                names = [f.name for f in dataclasses.fields(sec)]
                _reject_unknown(value, names, name + ".")
                kw[name] = sec(**value)
            else:
                kw[name] = value
        run = cls(**kw)
        if run.layout not in ("aligned", "shifted"):
            raise ValueError(f"layout = {run.layout!r}: must be one of aligned, shifted")
        _check_schedule(run.schedule, run.data.length, "schedule")
        run.stages = _check_stages(run.stages, run.train, run.data.length)
        for i, entry in enumerate(run.train.curriculum or []):
            _check_schedule(entry["schedule"], run.data.length, f"train.curriculum[{i}].schedule")
        return run

    @classmethod
    def from_file(cls, path: "str | Path | None", overrides: "list[str] | None" = None) -> "RunConfig":
        base = cls().to_dict()
        if path is not None:
            p = Path(path)
            if not p.exists():
                raise FileNotFoundError(f"config file not found: {p}")
            _merge(base, json.loads(p.read_text()))
        for item in overrides or []:
            _apply_override(base, item)
        _overrides_reach_stages(base, overrides or [])
        return cls.from_dict(base)


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
        _reject_unknown(stage, ["schedule"] + TrainConfig.field_names(), prefix)
        if "schedule" in stage:
            _check_schedule(stage["schedule"], length, f"{prefix}schedule")
        rest = {k: v for k, v in stage.items() if k != "schedule"}
        try:
            TrainConfig(**{**dataclasses.asdict(train), **rest})
        except (TypeError, ValueError) as err:
            raise ValueError(f"stage {i}: {err}") from err
        out.append(stage)
    return out


def _reject_unknown(d: Any, valid: list, prefix: str) -> None:
    if not isinstance(d, dict):
        raise ValueError(f"config section {prefix.rstrip('.') or '<top>'} must be an object")
    for k in d:
        if k not in valid:
            close = difflib.get_close_matches(k, valid, n=1)
            hint = f"; did you mean {prefix}{close[0]}?" if close else f"; valid keys: {', '.join(prefix + v for v in valid)}"
            raise ValueError(f"unknown config key {prefix}{k}{hint}")


def _merge(base: dict, new: dict) -> None:
    for k, v in new.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict) and k not in ("process", "schedule"):
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


def _apply_override(base: dict, item: str) -> None:
    if "=" not in item:
        raise ValueError(f"override {item!r} is not of the form key=value")
    key, raw = item.split("=", 1)
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    parts = key.split(".")
    node = base
    for i, p in enumerate(parts[:-1]):
        if p not in node or not isinstance(node[p], dict):
            valid = [k for k, v in node.items() if isinstance(v, dict)]
            close = difflib.get_close_matches(p, valid, n=1)
            where = ".".join(parts[:i])
            raise ValueError(f"unknown config section {key}" + (f"; did you mean {'.'.join(parts[:i] + close)}?" if close else f"; sections{' of ' + where if where else ''}: {valid}"))
        node = node[p]
    leaf = parts[-1]
    free = parts[0] in ("process", "schedule")  # their keys belong to the named class
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
