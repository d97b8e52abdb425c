"""The demo's form, without a browser: which fields it has (`FORM`, `form_fields`, `extras`), how a
form's values become DemoSettings (`form_settings`: one sentence for a value it cannot read), the
positional inputs of its `/generate` API (`api_args`), and which sampler each mode runs
(`simple_sampler`, `runs_with`). The Gradio page (app.py) lays these fields out; nothing here
imports Gradio."""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Optional

from ..samplers import SAMPLERS
from .core import DemoInputError, DemoModel, DemoSettings, extra_knobs

__all__ = ["ADVANCED_KNOBS", "FORM", "HELP", "extras", "form_fields", "api_args", "simple_sampler", "runs_with",
           "form_settings", "FIELD_TYPES"]

#: DemoSettings fields shown in advanced mode, in this order, after length / sampler / schedule
ADVANCED_KNOBS = ("eta", "eta0", "sharpness", "remask", "confidence", "block_size", "edit_previous", "temperature",
                  "top_k", "top_p", "eos_bias", "patience", "greedy", "precision")
HELP = {
    "eta": "ACS: re-draw decoded tokens with probability eta (1 - p_transfer)",
    "eta0": "LAD: initial re-masking fraction",
    "sharpness": "LAD: decay sharpness s of the re-masking schedule",
    "remask": "on: decoded tokens may be re-masked and re-drawn (simple mode: ACS, or LAD's schedule); "
              "off: kept once decoded (MDLM; LAD self-refinement)",
    "confidence": "LAD: re-mask the least confident positions",
    "block_size": "LAD: semi-autoregressive block size (0: one block)",
    "edit_previous": "LAD: earlier blocks stay editable",
    "temperature": "divides the logits",
    "top_k": "keep the k most likely tokens (0: all)",
    "top_p": "nucleus mass",
    "eos_bias": "added to the EOS logit",
    "patience": "LAD: stop after this many unchanged iterations (0: never)",
    "greedy": "AR: argmax instead of sampling",
    "precision": "categorical draws in float64 or float32",
    "cache": "reuse the exact KV cache of settled positions (the same tokens, fewer FLOPs)",
}


#: the Generate event's inputs after the mode (the order its API takes them in: see `api_args`)
FORM = ("prompt", "steps", "length", "batch", "sampler", "schedule", "width", "rate", "seed", "chat_template",
        *ADVANCED_KNOBS)


def extras() -> list:
    """Every registered sampler's extra knobs (`core.extra_knobs`): [(key "sampler.field", type, default)]."""
    return [x for name in sorted(SAMPLERS) for x in extra_knobs(name)]


def form_fields() -> tuple:
    """The Generate event's inputs after the mode, in order: FORM, then `extras()`' keys."""
    return FORM + tuple(key for key, _t, _d in extras())


def api_args(mode: str = "Advanced", **values: Any) -> list:
    """The positional inputs of the `/generate` API (gradio_client `predict(*args, api_name="/generate")`):
    `values` by DemoSettings field name (an extra knob by its key, "acs.cache"), the rest as the
    page's defaults (rate 0: use steps)."""
    form = form_fields()
    unknown = set(values) - set(form)
    if unknown:
        raise ValueError(f"unknown demo fields {sorted(unknown)}; known: {', '.join(form)}")
    d0 = DemoSettings()
    out = [mode]
    for k in FORM:
        v = values.get(k, 0 if k == "rate" else getattr(d0, k))
        out.append(0 if v is None else v)
    return out + [values.get(key, default) for key, _t, default in extras()]


def simple_sampler(model: DemoModel, remask: bool) -> str:
    """The sampler simple mode uses for this model."""
    if not getattr(model.lm.process, "likelihood", True):
        return "lad"
    return "acs" if remask else "mdlm"


def runs_with(model: DemoModel, mode: str, sampler: str, remask: bool) -> str:
    """What Generate will run in this mode, for the line under it: Advanced mode its own sampler
    choice, Simple mode the one re-masking picks (never the other mode's)."""
    if mode == "Advanced":
        return f"Generate runs **{sampler}** (Advanced: the sampler chosen below)"
    return f"Generate runs **{simple_sampler(model, remask)}** (Simple: re-masking {'on' if remask else 'off'})"


#: each DemoSettings field's declared type ("float", "Optional[int]", ...): how a form value is read
FIELD_TYPES = {f.name: f.type for f in dataclasses.fields(DemoSettings)}


def _int_or_none(x: Any, name: str) -> Optional[int]:
    if x is None or x == "":
        return None
    f = float(x)
    if not math.isfinite(f) or f != int(f):
        raise DemoInputError(f"{name} must be a whole number, got {x!r}")
    return int(f)


def _read(v: Any, typ: str, name: str, zero_off: bool = False) -> Any:
    """A form value as a field of type `typ` (one of core.EXTRA_TYPES); empty is None for an
    Optional field and refused otherwise; `zero_off`: 0 is None too (the LAD knobs' "0: off")."""
    if typ == "bool":
        return bool(v)
    empty = v is None or v == "" or (zero_off and v == 0)
    if empty and typ.startswith("Optional["):
        return None
    if empty and v != 0:
        raise DemoInputError(f"{name} is empty: give {'a number' if typ in ('int', 'float') else 'a value'}")
    if typ.endswith("int]") or typ == "int":
        return _int_or_none(v, name)
    if typ.endswith("float]") or typ == "float":
        return float(v)
    return str(v)



def form_settings(model: DemoModel, mode: str, values: dict) -> DemoSettings:
    """The settings a form asks for (`values` by FORM / extras key; Simple mode reads prompt, steps
    and remask only); DemoInputError naming a value it cannot read."""
    base = DemoSettings(length=min(64, model.max_length))
    steps = _int_or_none(values["steps"], "steps")
    if steps is None:
        raise DemoInputError("steps is empty: give a whole number >= 1")
    if mode == "Simple":
        sampler = simple_sampler(model, bool(values["remask"]))
        return dataclasses.replace(base, prompt=values["prompt"] or "", steps=steps, remask=bool(values["remask"]),
                                   sampler=sampler, chat_template=sampler == "lad")  # LAD models take instructions
    length = _int_or_none(values["length"], "length")
    if length is None:
        raise DemoInputError("length is empty: give a whole number >= 1")
    rate = values["rate"]
    batch = _int_or_none(values["batch"], "samples (batch)")
    if batch is None:
        raise DemoInputError("samples (batch) is empty: give a whole number >= 1")
    kw = dict(prompt=values["prompt"] or "", chat_template=bool(values["chat_template"]), steps=steps, length=length,
              sampler=values["sampler"], batch=batch,
              schedule=values["schedule"], width=_int_or_none(values["width"], "width"),
              rate=None if rate in (None, "", 0) else float(rate), seed=_int_or_none(values["seed"], "seed") or 0)
    for k in ADVANCED_KNOBS:
        kw[k] = _read(values[k], FIELD_TYPES[k], k, zero_off=True)  # 0 (or empty) is "off"
    kw["extra"] = {key: _read(values[key], typ, key) for key, typ, _d in extra_knobs(kw["sampler"])}
    return dataclasses.replace(base, **kw)


