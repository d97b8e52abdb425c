"""Specs and the one registry: every part of a composition built from a plain dict by its name.
At the top level: the bottom layer (with checks) that every part registers with.

One convention for every kind of part:

    {"name": <registered name>, **fields}

    build("hyperschedule", {"name": "block", "width": 16, "steps_per_block": 4})    # Block(16, 4)
    to_dict(Block(16, 4))        # {"name": "block", "width": 16, "steps_per_block": 4}
    registry("sampler")          # {"acs": ACS, "ar": AR, "lad": LAD, "mdlm": MDLM, ...}

Every part derives from :class:`Part` (in the spirit of diffusers' ``ConfigMixin``): the base of
each kind says its kind (``class Process(Part, kind="process")``), and every subclass that sets
its own ``name`` is registered under it when the class is defined. ``to_dict`` / ``from_dict``
are generic: every constructor field, read from the attribute of the same name (a class whose
attributes differ overrides ``to_dict``). For every object x of a registered class,
``build(kind, to_dict(x))`` rebuilds it and ``to_dict(build(kind, to_dict(x))) == to_dict(x)``;
the dict survives JSON exactly (torch dtypes by name; tensors as nested lists of Python floats).
A field that holds a part is that part's spec (a process's "noise", Retimed's "base", a
composition's "process", "schedule", "backbone", "annealing").

A part written **outside the package** is registered the same way, by subclassing a base in its
own file; ``diffusionlm.register(cls)`` (also a decorator) says so explicitly (and registers a
class under another name or kind), the entry point group ``diffusionlm.parts`` names classes an
installed package provides (loaded when a name is not found), and ``diffusionlm <cmd> --plugin
my_parts.py`` imports a file that defines some (:func:`load_plugin`).

Kinds: noise_schedule, process, hyperschedule, sampler, backbone (the transformer by preset
and/or TransformerConfig fields; any HF causal LM), annealing, composition (``DiffusionLM``: its
``to_dict`` / ``from_dict`` are the one composition format).

Late-bound operations (:func:`provide` / :func:`provided`): a method of a lower layer whose work
is done by a higher one (``DiffusionLM.nll_bound`` by the bound estimator, ``from_pretrained`` by
the io layer) calls :func:`provided`; the higher module provides it when imported, and the
package's ``__init__`` names which module provides what, so nothing here imports upward.

Bad specs are one-line ValueErrors: a name not registered (listing the known names and how to
register one), a field the class does not take (listing its keys), a required key missing, a
dtype not known.
"""
from __future__ import annotations

import importlib
import importlib.util
import inspect
import sys
import types
import typing
import warnings
from enum import Enum
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, Callable, ClassVar

import torch

__all__ = [
    "KINDS", "Part", "register", "registry", "lookup", "build", "to_dict", "encode", "spec_fields", "field_names",
    "load_plugin", "ENTRY_POINT_GROUP", "provide", "provided", "declare_provider", "UnknownPartError",
    "composition_dict", "build_composition", "COMPOSITIONS",
]

KINDS = ("noise_schedule", "process", "hyperschedule", "sampler", "backbone", "annealing", "composition")
_LABEL = {k: k.replace("_", " ") for k in KINDS}
ENTRY_POINT_GROUP = "diffusionlm.parts"
HOW_TO_REGISTER = ("a part defined outside diffusionlm is registered by subclassing its base and calling "
                   "diffusionlm.register(cls), by the entry point group 'diffusionlm.parts', or by "
                   "--plugin FILE on the command line")
_DTYPES = {"float64": torch.float64, "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

#: kind -> {name: class}; one dict per kind, filled as classes are defined
_REGISTRIES: dict[str, dict[str, type]] = {k: {} for k in KINDS}
#: kind -> the base class every object of the kind is an instance of
_BASES: dict[str, type] = {}


class UnknownPartError(ValueError):
    """A spec names a part that is not registered (the message lists the known names)."""


class Part:
    """Base of every registrable part: processes, noise schedules, hyperschedules, samplers,
    backbones, annealings and the composition.

    ``class Process(Part, kind="process")`` declares a kind; a subclass with its own ``name``
    registers under it (``abstract=True`` keeps a named intermediate base out of the registry).
    """

    name: ClassVar[str] = "part"
    part_kind: ClassVar[str] = ""
    #: further classes whose objects `build` passes through as this kind (a backbone: any module)
    passes_through: ClassVar[tuple] = ()

    def __init_subclass__(cls, kind: str = "", abstract: bool = False, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if kind:
            if kind not in KINDS:
                raise ValueError(f"unknown kind of part {kind!r}; known: {', '.join(KINDS)}")
            cls.part_kind = kind
            _BASES[kind] = cls
            return
        if not abstract and isinstance(cls.__dict__.get("name"), str):
            register(cls)

    def to_dict(self) -> dict:
        """{"name": ..., **every constructor field} (parts as their own specs)."""
        return {"name": self.name, **spec_fields(self)}

    @classmethod
    def from_dict(cls, spec: "dict | str", **context: Any) -> Any:
        """The part described by `spec` (:func:`build` of this class's kind)."""
        return build(cls.part_kind, spec, **context)


def register(cls: type = None, *, name: str | None = None, kind: str | None = None) -> Any:
    """Make `cls` usable in every spec, saved folder and command by its name: ``register(cls)``
    or ``@register`` (a subclass of a part base is registered when defined; this says so
    explicitly and is idempotent), ``register(cls, name="other")`` under another name,
    ``kind=`` for a class that does not derive from a part base."""
    if cls is None:
        return lambda c: register(c, name=name, kind=kind)
    kind = kind or getattr(cls, "part_kind", "")
    if kind not in _REGISTRIES:
        raise ValueError(f"cannot register {cls.__name__}: it derives from no part base (Process, NoiseSchedule, "
                         f"Hyperschedule, Sampler, Backbone, ...) and no kind was given; kinds: {', '.join(KINDS)}")
    key = name or cls.__dict__.get("name") or getattr(cls, "name", None)
    if not isinstance(key, str) or not key:
        raise ValueError(f"cannot register {cls.__name__}: it has no name (set the class attribute `name`)")
    have = _REGISTRIES[kind].get(key)
    if have is not None and have is not cls and _qualname(have) != _qualname(cls):
        raise ValueError(f"the {_LABEL[kind]} name {key!r} is taken by {_qualname(have)}; "
                         f"give {_qualname(cls)} another name")
    _REGISTRIES[kind][key] = cls
    return cls


def _qualname(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _check_kind(kind: str) -> None:
    if kind not in _REGISTRIES:
        raise ValueError(f"unknown kind of spec {kind!r}; known: {', '.join(KINDS)}")


#: other names of a kind ("schedule" is what compositions and configs call a hyperschedule)
KIND_ALIASES = {"schedule": "hyperschedule"}


def registry(kind: str) -> dict:
    """The registry of `kind` (or its alias, KIND_ALIASES): registered name -> class (the live dict)."""
    kind = KIND_ALIASES.get(kind, kind)
    _check_kind(kind)
    return _REGISTRIES[kind]


_ENTRY_POINTS_LOADED = False


def _load_entry_points() -> None:
    """Import every class of the `diffusionlm.parts` entry point group once (registering it)."""
    global _ENTRY_POINTS_LOADED
    if _ENTRY_POINTS_LOADED:
        return
    _ENTRY_POINTS_LOADED = True
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        obj = ep.load()
        if inspect.isclass(obj) and isinstance(getattr(obj, "part_kind", None), str) and obj.part_kind:
            register(obj)


def lookup(kind: str, name: str) -> type:
    """The class registered as `name` of `kind`; the entry points are read on a miss; an unknown
    name is an UnknownPartError listing the known names and how to register one."""
    reg = registry(kind)
    if name not in reg:
        _load_entry_points()
    if name not in reg:
        raise UnknownPartError(f"unknown {_LABEL[kind]} {name!r}; known: {', '.join(sorted(reg))}; {HOW_TO_REGISTER}")
    return reg[name]


def load_plugin(path: "str | Path") -> types.ModuleType:
    """Import the Python file `path` (which defines and so registers parts): `--plugin FILE`."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"plugin {str(path)!r} is not a file")
    module_name = f"diffusionlm_plugin_{path.stem}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise ValueError(f"plugin {str(path)!r} is not a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module


# ---------------------------------------------------------------------------------------------
# late-bound operations
# ---------------------------------------------------------------------------------------------
_PROVIDED: dict[str, Callable] = {}
_PROVIDERS: dict[str, str] = {}


def declare_provider(operation: str, module: str) -> None:
    """Say that importing `module` provides `operation` (the package's __init__ does)."""
    _PROVIDERS[operation] = module


def provide(operation: str, fn: Callable) -> Callable:
    """`fn` does `operation` (called by the providing module at import)."""
    _PROVIDED[operation] = fn
    return fn


def provided(operation: str) -> Callable:
    """The function that does `operation`, importing its declared provider on first use."""
    if operation not in _PROVIDED and operation in _PROVIDERS:
        importlib.import_module(_PROVIDERS[operation])
    if operation not in _PROVIDED:
        raise RuntimeError(f"nothing provides {operation!r}: import the module that implements it")
    return _PROVIDED[operation]


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
        if inspect.isclass(t) and issubclass(t, Part) and t.part_kind and isinstance(value, (dict, str)):
            return build(t.part_kind, value)
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
    if name is None:
        raise ValueError(f"a {label} spec needs a \"name\"; known: {', '.join(sorted(registry(kind)))}")
    return name, spec


def check_keys(where: str, fields: dict, params: dict, free: bool = False) -> None:
    """One-line errors for keys `params` does not take and required keys `fields` lacks."""
    keys = ", ".join(params) or "(none)"
    bad = [] if free else [k for k in fields if k not in params]
    if bad:
        raise ValueError(f"{where}: unknown key(s) {', '.join(bad)}; its keys: {keys}")
    for p in params.values():
        if p.default is p.empty and p.name not in fields:
            raise ValueError(f"{where}: missing key {p.name}; its keys: {keys}")


def build(kind: str, spec: Any, **context: Any) -> Any:
    """The object of `kind` described by `spec` ({"name": ..., **fields} or a bare name); an
    object of the kind passes through. `context` goes to a class's own `from_dict` (the
    composition's: model=...). `kind` may be an alias (KIND_ALIASES: "schedule")."""
    kind = KIND_ALIASES.get(kind, kind)
    _check_kind(kind)
    base = _BASES.get(kind)
    if base is not None and isinstance(spec, (base, *base.passes_through)):
        return spec
    name, fields = _split_name(kind, spec)
    cls = lookup(kind, name)
    own = cls.__dict__.get("from_dict")
    if own is not None:  # a class with its own reader (the composition)
        return cls.from_dict({"name": name, **fields}, **context)
    maker = getattr(cls, "from_spec", None) or cls
    params, free = _parameters(maker)
    where = f"{_LABEL[kind]} {name}"
    check_keys(where, fields, params, free)
    hints = _hints(maker)
    values = {k: _decode(v, hints.get(k), f"{where} field {k!r}") for k, v in fields.items()}
    try:
        return maker(**values)
    except TypeError as err:
        raise ValueError(f"{where}: {err}") from err


def to_dict(obj: Any) -> dict:
    """The spec of a registered object ({"name": ..., **fields})."""
    fn = getattr(obj, "to_dict", None)
    if not callable(fn):
        raise TypeError(f"{type(obj).__name__} is not a registered part: it has no to_dict()")
    return fn()


# ---------------------------------------------------------------------------------------------
# deprecated names (one release): the composition format is DiffusionLM.to_dict / from_dict
# ---------------------------------------------------------------------------------------------
#: the composition registry (deprecated name: registry("composition"))
COMPOSITIONS = _REGISTRIES["composition"]


def composition_dict(lm: Any) -> dict:
    """Deprecated: ``lm.to_dict()``."""
    warnings.warn("diffusionlm.specs.composition_dict(lm) is deprecated: use lm.to_dict()", DeprecationWarning,
                  stacklevel=2)
    return lm.to_dict()


def build_composition(spec: dict, model: Any = None) -> Any:
    """Deprecated: ``DiffusionLM.from_dict(spec, model=model)``."""
    warnings.warn("diffusionlm.specs.build_composition(spec) is deprecated: use DiffusionLM.from_dict(spec)",
                  DeprecationWarning, stacklevel=2)
    return build("composition", spec, model=model)
