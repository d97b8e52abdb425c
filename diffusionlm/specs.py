"""Specs: every part of a composition built from a plain dict by its registered name, and back.

One convention for every kind of part:

    {"name": <registered name>, **fields}

    build("hyperschedule", {"name": "block", "width": 16, "steps_per_block": 4})    # Block(16, 4)
    to_dict(Block(16, 4))        # {"name": "block", "width": 16, "steps_per_block": 4}
    registry("sampler")          # {"acs": ACS, "ar": AR, "lad": LAD, "mdlm": MDLM, ...}

For every object x of a registered class, ``build(kind, to_dict(x))`` rebuilds it and
``to_dict(build(kind, to_dict(x))) == to_dict(x)``; the dict holds every constructor field and
survives JSON exactly (torch dtypes by name, "float64" / "float32"; tensors as nested lists of
Python floats, which JSON writes with enough digits to read back the same float64). A field that
holds a part is that part's spec (a process's "noise", Retimed's "base", a composition's
"process", "schedule", "backbone", "annealing").

Kinds and where their registries live:

    noise_schedule  schedules.noise.NOISE_SCHEDULES   linear, loglinear, cosine
    process         processes.PROCESSES               absorb, uniform, gamma_hybrid, epsilon_hybrid, structural
    hyperschedule   schedules.hyper.HYPERSCHEDULES    quench, flat, block, slide, custom, retimed
    sampler         samplers.SAMPLERS                 mdlm, acs, sedd_analytic, sedd_euler, ar, lad, threshold, remdm
    backbone        models.BACKBONES                  transformer (a preset name and/or TransformerConfig
                                                      fields), hf (any causal LM by config or path)
    annealing       models.hf.ANNEALINGS              attention_annealing (DiffuGPT)
    composition     specs.COMPOSITIONS                diffusion_lm: a DiffusionLM and its parts

Compositions (the dict w13 writes as a saved composition's config.json):

    composition_dict(lm) = {"name": "diffusion_lm", "process": {...}, "schedule": {...},
                            "layout": "aligned", "bos_id": ..., "settled_weight": ...,
                            "max_positions": ..., "annealing": null, "backbone": {...}}
    build_composition(spec, model=None)     # a DiffusionLM; `model` replaces the backbone spec

Bad specs are one-line ValueErrors: a name not registered (listing the known names), a field the
class does not take (listing its keys), a required key missing, a dtype not known.
"""
from __future__ import annotations

import dataclasses
import importlib
import inspect
import types
import typing
from enum import Enum
from typing import Any, Optional

import torch

__all__ = [
    "KINDS",
    "COMPOSITIONS",
    "registry",
    "build",
    "to_dict",
    "encode",
    "spec_fields",
    "field_names",
    "composition_dict",
    "build_composition",
    "backbone_defaults",
]

KINDS = ("noise_schedule", "process", "hyperschedule", "sampler", "backbone", "annealing", "composition")
_LABEL = {k: k.replace("_", " ") for k in KINDS}
COMPOSITION_NAME = "diffusion_lm"
_DTYPES = {"float64": torch.float64, "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


#: kind -> ((module, registry), (module, base class)): where each kind lives
_WHERE = {
    "noise_schedule": (("diffusionlm.schedules.noise", "NOISE_SCHEDULES"), ("diffusionlm.schedules.noise", "NoiseSchedule")),
    "process": (("diffusionlm.processes", "PROCESSES"), ("diffusionlm.processes.base", "Process")),
    "hyperschedule": (("diffusionlm.schedules.hyper", "HYPERSCHEDULES"), ("diffusionlm.schedules.hyper", "Hyperschedule")),
    "sampler": (("diffusionlm.samplers", "SAMPLERS"), ("diffusionlm.samplers.base", "Sampler")),
    "backbone": (("diffusionlm.models", "BACKBONES"), ("torch.nn", "Module")),
    "annealing": (("diffusionlm.models.hf", "ANNEALINGS"), ("diffusionlm.models.hf", "AttentionAnnealing")),
    "composition": (("diffusionlm.specs", "COMPOSITIONS"), ("diffusionlm.lm", "DiffusionLM")),
}


def _attr(where: tuple) -> Any:
    module, name = where
    return getattr(importlib.import_module(module), name)


def _composition_class() -> type:
    return _attr(_WHERE["composition"][1])


#: the composition registry: the one class that composes the parts (filled on first use)
COMPOSITIONS: dict = {}


#: other names of a kind ("schedule" is what compositions and configs call a hyperschedule)
KIND_ALIASES = {"schedule": "hyperschedule"}


def registry(kind: str) -> dict:
    """The registry of `kind`: registered name -> class (see the module docstring)."""
    kind = KIND_ALIASES.get(kind, kind)
    if kind not in _WHERE:
        raise ValueError(f"unknown kind of spec {kind!r}; known: {', '.join(KINDS)}")
    if kind == "composition" and not COMPOSITIONS:
        COMPOSITIONS[COMPOSITION_NAME] = _composition_class()
    return _attr(_WHERE[kind][0])


def _base(kind: str) -> type:
    """The class every object of `kind` is an instance of (objects pass through `build`)."""
    return _attr(_WHERE[kind][1])


# ---------------------------------------------------------------------------------------------
# values: objects -> JSON-able, and back by the field's declared type
# ---------------------------------------------------------------------------------------------
def encode(value: Any) -> Any:
    """A field value as it stands in a spec: parts as their dicts, dtypes by name, enums by
    value, tensors and tuples as lists. TypeError for anything else (never a silent repr)."""
    if isinstance(value, Enum):
        return value.value
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, torch.dtype):
        return str(value).replace("torch.", "")
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, (list, tuple)):
        return [encode(v) for v in value]
    if isinstance(value, dict):
        return {str(k): encode(v) for k, v in value.items()}
    if callable(getattr(value, "to_dict", None)):
        return to_dict(value)
    raise TypeError(f"a {type(value).__name__} cannot be written into a spec")


def _dtype(value: str, where: str) -> torch.dtype:
    if value not in _DTYPES:
        raise ValueError(f"{where}: unknown dtype {value!r}; known: {', '.join(_DTYPES)}")
    return _DTYPES[value]


def _hints(maker: Any) -> dict:
    target = maker.__init__ if inspect.isclass(maker) else maker
    try:
        return typing.get_type_hints(target)
    except Exception:  # unresolvable annotations: values are passed as they are
        return {}


def _types(hint: Any) -> list:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return [t for a in typing.get_args(hint) for t in _types(a)]
    return [hint]


def _decode(value: Any, hint: Any, where: str) -> Any:
    for t in _types(hint):
        if t is torch.dtype and isinstance(value, str):
            return _dtype(value, where)
        if inspect.isclass(t) and isinstance(value, (dict, str)):
            for kind in ("noise_schedule", "process", "hyperschedule", "sampler", "annealing"):
                if issubclass(t, _base(kind)):
                    return build(kind, value)
    return value


def _parameters(maker: Any) -> tuple[dict, bool]:
    """Public named parameters of a constructor, and whether it takes **kwargs."""
    sig = inspect.signature(maker)
    named = {
        p.name: p for p in sig.parameters.values()
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and not p.name.startswith("_")
    }
    return named, any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values())


def field_names(obj_or_class: Any) -> list[str]:
    """The fields of a registered class's spec (its constructor's public parameters)."""
    cls = obj_or_class if inspect.isclass(obj_or_class) else type(obj_or_class)
    maker = getattr(cls, "from_spec", None) or cls
    return list(_parameters(maker)[0])


def spec_fields(obj: Any) -> dict:
    """{field: encoded value} for every constructor field of `obj`, read from the attribute of the
    same name: the generic body of `to_dict` (a field without such an attribute is an error)."""
    out = {}
    for name in field_names(obj):
        if not hasattr(obj, name):
            raise TypeError(f"{type(obj).__name__} takes {name!r} but does not keep it: it cannot be written as a spec")
        out[name] = encode(getattr(obj, name))
    return out


# ---------------------------------------------------------------------------------------------
# build / to_dict
# ---------------------------------------------------------------------------------------------
def _split_name(kind: str, spec: Any) -> tuple[str, dict]:
    label = _LABEL[kind]
    if isinstance(spec, str):
        spec = {"name": spec}
    if not isinstance(spec, dict):
        raise ValueError(f"a {label} spec must be a dict {{\"name\": ..., **fields}} or a name, got {type(spec).__name__}")
    spec = dict(spec)
    name = spec.pop("name", None)
    reg = registry(kind)
    if name is None:
        raise ValueError(f"a {label} spec needs a \"name\"; known: {', '.join(sorted(reg))}")
    if name not in reg:
        raise ValueError(f"unknown {label} {name!r}; known: {', '.join(sorted(reg))}")
    return name, spec


def build(kind: str, spec: Any, **context: Any) -> Any:
    """The object of `kind` described by `spec` ({"name": ..., **fields} or a bare name); an
    object of the kind passes through. `context` goes to `build_composition` (model=...)."""
    kind = KIND_ALIASES.get(kind, kind)
    if kind not in KINDS:
        raise ValueError(f"unknown kind of spec {kind!r}; known: {', '.join(KINDS)}")
    if isinstance(spec, _base(kind)):
        return spec
    if kind == "composition":
        return build_composition(spec, **context)
    name, fields = _split_name(kind, spec)
    cls = registry(kind)[name]
    maker = getattr(cls, "from_spec", None) or cls
    params, free = _parameters(maker)
    where = f"{_LABEL[kind]} {name}"
    keys = ", ".join(params) or "(none)"
    bad = [] if free else [k for k in fields if k not in params]
    if bad:
        raise ValueError(f"{where}: unknown key(s) {', '.join(bad)}; its keys: {keys}")
    for p in params.values():
        if p.default is p.empty and p.name not in fields:
            raise ValueError(f"{where}: missing key {p.name}; its keys: {keys}")
    hints = _hints(maker)
    values = {k: _decode(v, hints.get(k), f"{where} field {k!r}") for k, v in fields.items()}
    try:
        return maker(**values)
    except TypeError as err:
        raise ValueError(f"{where}: {err}") from err


def to_dict(obj: Any) -> dict:
    """The spec of a registered object ({"name": ..., **fields}); a DiffusionLM's is its
    composition dict."""
    if isinstance(obj, _composition_class()):
        return composition_dict(obj)
    fn = getattr(obj, "to_dict", None)
    if not callable(fn):
        raise TypeError(f"{type(obj).__name__} is not a registered part: it has no to_dict()")
    return fn()


# ---------------------------------------------------------------------------------------------
# compositions
# ---------------------------------------------------------------------------------------------
#: DiffusionLM fields that are not part of the spec: the model (its spec is "backbone") and
#: training state
_NOT_SPEC = ("model", "training_step")


def _composition_fields() -> list[str]:
    return [f.name for f in dataclasses.fields(_composition_class()) if f.name not in _NOT_SPEC]


def composition_dict(lm: Any) -> dict:
    """The spec of a DiffusionLM: {"name": "diffusion_lm", every field of the composition (parts
    as their specs), "backbone": the model's spec}. Saved compositions write it as config.json."""
    out: dict = {"name": COMPOSITION_NAME}
    for name in _composition_fields():
        out[name] = encode(getattr(lm, name))
    out["backbone"] = to_dict(lm.model)
    return out


def backbone_defaults(process: Any, bos_id: Optional[int] = None, max_positions: Optional[int] = None) -> dict:
    """TransformerConfig fields a composition derives from its process (and BOS id): the output
    size, the input ids (real tokens, MASK and BOS), time conditioning, the length, and for a
    process that asks for the eq. 12 weighted embedding the MASK id and gamma it mixes with."""
    ids = [process.model_vocab_size] + [i + 1 for i in (process.mask_id, bos_id) if i is not None]
    out = {"vocab_size": process.model_vocab_size, "input_vocab_size": max(ids),
           "time_conditioning": bool(process.time_conditioned)}
    if max_positions is not None:
        out["max_positions"] = max_positions
    if getattr(process, "weighted_embedding", False):  # eq. 12: the backbone mixes in f(MASK)
        out.update(mask_id=process.mask_id, weighted_embedding_gamma=process.gamma)
    return out


def _check_model_matches(backbone: dict, model: Any) -> None:
    try:
        have = to_dict(model)
    except TypeError:
        return  # an unregistered model: nothing to compare with
    if backbone.get("name") != have.get("name"):
        raise ValueError(f"the given model is a {have.get('name')!r} backbone, the spec's backbone a {backbone.get('name')!r}")
    for key, value in backbone.items():
        if key in have and have[key] != value:
            raise ValueError(f"the given model's backbone field {key!r} is {have[key]!r}, the spec says {value!r}")


def build_composition(spec: dict, model: Any = None) -> Any:
    """A DiffusionLM from its composition dict. The backbone is built from spec["backbone"]
    (fields a transformer leaves out are derived from the process: `backbone_defaults`; an HF
    backbone decides the MASK id, which the process then takes), or `model` is used as given (a
    "backbone" in the spec must then agree with it). Fresh weights come from torch's global RNG."""
    from .lm import DiffusionLM

    if not isinstance(spec, dict):
        raise ValueError(f"a composition spec must be a dict, got {type(spec).__name__}")
    spec = dict(spec)
    name = spec.pop("name", None)
    if name != COMPOSITION_NAME:
        raise ValueError(f"unknown composition {name!r}; known: {COMPOSITION_NAME}")
    allowed = _composition_fields() + ["backbone"]
    bad = [k for k in spec if k not in allowed]
    if bad:
        raise ValueError(f"composition {COMPOSITION_NAME}: unknown key(s) {', '.join(bad)}; its keys: {', '.join(allowed)}")
    for key in ("process", "schedule") + (() if model is not None else ("backbone",)):
        if key not in spec:
            raise ValueError(f"composition {COMPOSITION_NAME}: missing key {key}; its keys: {', '.join(allowed)}")
    backbone = spec.pop("backbone", None)
    if isinstance(backbone, str):
        backbone = {"name": backbone}
    proc_spec = spec.pop("process")
    if model is None and isinstance(backbone, dict) and backbone.get("name") != "transformer":
        model = build("backbone", backbone)  # an HF model decides its MASK id
        backbone = None
    if model is not None:
        if backbone is not None:
            _check_model_matches(backbone, model)
        mask_id = getattr(model, "mask_id", None)
        proc_cls = registry("process").get(proc_spec.get("name")) if isinstance(proc_spec, dict) else None
        if mask_id is not None and proc_cls is not None and "mask_id" in field_names(proc_cls):
            proc_spec = {"mask_id": mask_id, **proc_spec}
    proc = build("process", proc_spec)
    if model is None:
        if not isinstance(backbone, dict):
            raise ValueError(f"composition field 'backbone' must be a backbone spec, got {type(backbone).__name__}")
        fields = {**backbone_defaults(proc, spec.get("bos_id"), spec.get("max_positions")), **backbone}
        model = build("backbone", fields)
    parts = {
        "schedule": build("hyperschedule", spec.pop("schedule")),
        "annealing": None if spec.get("annealing") is None else build("annealing", spec["annealing"]),
    }
    spec.pop("annealing", None)
    return DiffusionLM(model, proc, **parts, **spec)
