"""The one reader of old-format run configs: `model` / `process` / `schedule` / `layout` sections
(what `run.json` held before issue 23, and every recipe then) made into the one composition format.

Old form:                                   New form (RunConfig):
    "model": {"kind": "hf", "path": "gpt2",     "composition": {"name": "diffusion_lm",
              "mask": "add", "lora": {...},         "process": {...}, "schedule": {...},
              "annealing_steps": 1000},             "layout": "shifted",
    "process": {...}, "schedule": {...},            "annealing": {"name": "attention_annealing",
    "layout": "shifted"                                           "warmup_steps": 1000},
                                                    "backbone": {"name": "hf", "path": "gpt2",
                                                                 "mask": "add", "lora": {...}}},
                                                "init": null   (model.kind=transformer's model.path)

:func:`convert` reads a whole old-format dict (saying so in one line, naming the file and the new
form); :func:`model_override` keeps the command line's old keys working on a new-format config
(`model.path=...`, `model.lora.r=8`, `model.annealing_steps=null`, `model.kind=hf`, ...): the
composition's backbone is read back as an old `model` section, the override applied to it with
its old meaning, and the result converted again (one converter both ways). `ModelSpec` is the
old section's schema, kept for that (its fields are checked by their rules as before).
"""
from __future__ import annotations

import dataclasses
import difflib
import warnings
from dataclasses import dataclass, field
from typing import Any, Optional

from ..models.transformer import TransformerConfig
from .check import Choice, Dict, Int, Opt, Str, check_fields

__all__ = ["ModelSpec", "OLD_SECTIONS", "backbone_of", "is_old", "convert", "model_override", "reject_unknown"]

#: the top-level keys of the old form that the composition section replaces
OLD_SECTIONS = ("model", "process", "schedule", "layout")
#: what the old form's missing sections meant
_OLD_DEFAULTS = {"process": {"name": "absorb"}, "schedule": {"name": "flat"}, "layout": "aligned"}
_HF_KEYS = ("path", "hf_config", "attn_implementation", "mask", "lora")


@dataclass
class ModelSpec:
    """The old `model` section (read by :func:`convert`; the new form is composition.backbone)."""

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


def reject_unknown(d: Any, valid: list, prefix: str) -> None:
    """One line naming an unknown key of section `prefix` and the closest valid one."""
    if not isinstance(d, dict):
        raise ValueError(f"config section {prefix.rstrip('.') or '<top>'} must be an object")
    for k in d:
        if k not in valid:
            close = difflib.get_close_matches(k, valid, n=1)
            hint = f"; did you mean {prefix}{close[0]}?" if close else f"; valid keys: {', '.join(prefix + v for v in valid)}"
            raise ValueError(f"unknown config key {prefix}{k}{hint}")


def is_old(d: dict) -> bool:
    """Whether a run config dict is in the old form (ValueError when it mixes both forms)."""
    old = [k for k in OLD_SECTIONS if k in d]
    if old and "composition" in d:
        raise ValueError(f"a run config has either a composition section or the old {', '.join(old)} "
                         "section(s), not both (the composition holds the process, schedule, layout and backbone)")
    return bool(old)


def _model_spec(section: Any) -> ModelSpec:
    section = {k: v for k, v in (section or {}).items() if not (isinstance(k, str) and k.startswith("_"))}
    reject_unknown(section, [f.name for f in dataclasses.fields(ModelSpec)], "model.")
    spec = ModelSpec(**section)
    reject_unknown(spec.overrides, [f.name for f in dataclasses.fields(TransformerConfig)], "model.overrides.")
    return spec


def backbone_of(spec: ModelSpec) -> tuple[dict, Optional[str]]:
    """(composition.backbone, init) of an old model section."""
    if spec.kind == "transformer":
        if spec.path:  # the saved folder decides the architecture, as it did
            return {"name": "transformer"}, spec.path
        return {"name": "transformer", "preset": spec.preset, **spec.overrides}, None
    source = {"hf_config": spec.hf_config} if spec.hf_config is not None else {"path": spec.path}  # hf_config won
    out = {"name": "hf", **source, "attn_implementation": spec.attn_implementation, "mask": spec.mask}
    if spec.lora is not None:
        out["lora"] = spec.lora
    return out, None


def _annealing(steps: Optional[int]) -> Optional[dict]:
    return None if steps is None else {"name": "attention_annealing", "warmup_steps": steps}


def convert(d: dict, source: str = "a run config") -> dict:
    """The new form of an old-format run config dict `d` (read from `source`), said in one line."""
    warnings.warn(f"{source} is an old-format run config (model / process / schedule / layout sections): read by its "
                  "converter; the new form has one \"composition\" section (DiffusionLM.to_dict(): process, schedule, "
                  "layout, annealing, backbone) beside init / data / train / stages (docs/TRAINING.md)",
                  FutureWarning, stacklevel=3)
    spec = _model_spec(d.get("model"))
    backbone, init = backbone_of(spec)
    comp = {"name": "diffusion_lm", **{k: d.get(k, v) for k, v in _OLD_DEFAULTS.items()}}
    if spec.annealing_steps is not None:
        comp["annealing"] = _annealing(spec.annealing_steps)
    comp["backbone"] = backbone
    out = {k: v for k, v in d.items() if k not in OLD_SECTIONS}
    return {**out, "composition": comp, **({"init": init} if init is not None else {})}


def _as_model_section(base: dict) -> dict:
    """The old `model` section a new-format config's backbone / annealing / init stand for."""
    comp = base["composition"]
    b = comp.get("backbone") or {"name": "transformer"}
    a = comp.get("annealing")
    name = b.get("name") if isinstance(b, dict) else b
    simple_annealing = a is None or (isinstance(a, dict) and a.get("name") == "attention_annealing"
                                     and set(a) <= {"name", "warmup_steps", "shared"} and not a.get("shared"))
    if name not in ("transformer", "hf") or (name == "hf" and not set(b) <= {"name", *_HF_KEYS}) or not simple_annealing:
        raise ValueError("the model.* keys are the old form of a transformer or hf backbone with attention annealing: "
                         "this config's composition is not one; set composition.backbone.KEY / composition.annealing")
    out = {**dataclasses.asdict(ModelSpec()), "kind": name, "annealing_steps": None if a is None else a.get("warmup_steps", 0)}
    if name == "transformer":
        fields = {k: v for k, v in b.items() if k not in ("name", "preset")}
        return {**out, "preset": b.get("preset") or "tiny", "overrides": fields, "path": base.get("init")}
    return {**out, **{k: b[k] for k in _HF_KEYS if k in b}}


def model_override(base: dict, parts: list, value: Any, set_key) -> None:
    """Apply the old key model.<parts> = value to the new-format dict `base` (see the module
    docstring); `set_key(node, parts, value, key)` is the ordinary override of a dict."""
    if not parts:
        raise ValueError("the override model=... names no key: use model.KEY=VALUE or composition.backbone=...")
    section = _as_model_section(base)
    set_key({"model": section}, ["model", *parts], value, "model." + ".".join(parts))
    spec = _model_spec(section)
    backbone, init = backbone_of(spec)
    if spec.kind == "transformer" and "preset" not in (base["composition"].get("backbone") or {}) and parts[0] != "preset":
        backbone.pop("preset", None)  # a backbone written out in full keeps no preset
    base["composition"]["backbone"] = backbone
    base["composition"]["annealing"] = _annealing(spec.annealing_steps)
    base["init"] = init
