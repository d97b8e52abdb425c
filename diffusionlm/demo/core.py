"""What the demo does, without a browser: settings -> sampler -> step-by-step frames -> views.

    model = load_demo_model("runs/compare/models/mdlm")     # or an HF directory / hub id, or None
    settings = DemoSettings(prompt="def ", length=64, sampler="acs", steps=32, eta=0.1)
    run = generate(model, settings)                          # raises DemoInputError on bad input
    run.frames[k]          # Frame after step k (frames[0]: the prompt and MASK everywhere else)
    run.text               # the final text;  run.seconds, run.model_calls
    frame_html(run.frames[k], model)     # tokens coloured by confidence, MASK shown, changes marked
    frame_text(run.frames[k], model)     # the same frame for a terminal (`diffusionlm sample --show-steps`)

One `DemoSettings` holds every knob of every registered sampler; `sampler_kwargs` keeps the ones
the chosen sampler declares (its dataclass fields), so a sampler added to the registry shows up in
the demo with its own knobs and nothing here changes. The frames are the sampler's own history
(`keep_history=True`), batch row 0: what the page shows is what the sampler did.
"""
from __future__ import annotations

import dataclasses
import html
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch

from ..samplers import SAMPLERS, get_sampler
from ..samplers.lad import LAD

__all__ = [
    "DemoInputError",
    "DemoModel",
    "DemoSettings",
    "DemoRun",
    "Frame",
    "SCHEDULE_CHOICES",
    "DEFAULT_MODEL_DIR",
    "load_demo_model",
    "sampler_kwargs",
    "sampler_knobs",
    "generate",
    "frame_html",
    "frame_text",
]

#: hyperschedules offered for sampling; "trained" keeps the one the model was trained with
SCHEDULE_CHOICES = ("trained", "flat", "block", "slide", "quench")
#: where the main job (`diffusionlm compare`) saves its MDLM variant: the demo's default model
DEFAULT_MODEL_DIR = "runs/compare/models/mdlm"


class DemoInputError(ValueError):
    """A setting the demo cannot run with; the message is shown to the user as it is."""


@dataclass
class DemoModel:
    lm: Any
    tokenizer: Any
    name: str

    @property
    def max_length(self) -> int:
        return int(self.lm.max_positions)

    @property
    def mask_id(self) -> Optional[int]:
        return self.lm.process.mask_id


@dataclass
class DemoSettings:
    """Every knob the demo offers. Sampler knobs not declared by the chosen sampler are ignored."""

    prompt: str = ""
    chat_template: bool = False  # wrap the prompt in the tokenizer's chat template (instruction models)
    length: int = 64
    sampler: str = "mdlm"
    steps: int = 32  # MDLM / ACS / SEDD steps, LAD iterations (AR: one per new token, not used)
    schedule: str = "trained"  # one of SCHEDULE_CHOICES
    width: int = 16  # block / slide width
    rate: Optional[float] = None  # tokens per step along the hyperschedule (given: replaces steps)
    seed: int = 0
    precision: str = "float64"  # categorical draws
    # ACS
    eta: float = 0.1
    # LAD (its own defaults)
    eta0: float = LAD.eta0
    sharpness: float = LAD.sharpness
    remask: bool = LAD.remask
    confidence: bool = LAD.confidence
    block_size: Optional[int] = LAD.block_size
    edit_previous: bool = LAD.edit_previous
    temperature: float = LAD.temperature
    top_k: Optional[int] = LAD.top_k
    top_p: float = LAD.top_p
    eos_bias: float = LAD.eos_bias
    patience: Optional[int] = LAD.patience
    greedy: bool = False  # AR


@dataclass
class Frame:
    step: int
    tokens: list  # ids of batch row 0 (MASK id where masked)
    changed: list  # bool per position
    confidence: list  # float per position (nan: not predicted)
    fixed: list  # bool per position: prompt tokens

    @classmethod
    def from_record(cls, rec: Any, fixed: list, row: int = 0) -> "Frame":
        """Batch row `row` of a sampler's StepRecord."""
        return cls(int(rec.step), rec.tokens[row].tolist(), rec.changed[row].tolist(),
                   [float(c) for c in rec.confidence[row].tolist()], fixed)


@dataclass
class DemoRun:
    settings: DemoSettings
    sampler: dict
    frames: list = field(default_factory=list)
    text: str = ""
    tokens: list = field(default_factory=list)
    seconds: float = 0.0
    model_calls: int = 0


# ---------------------------------------------------------------------------------------------
# loading
# ---------------------------------------------------------------------------------------------
def load_demo_model(spec: "str | Path | None" = None, default_dir: "str | Path" = DEFAULT_MODEL_DIR, **load_kw: Any) -> DemoModel:
    """Any kind of model (`diffusionlm.hub.load_model`: a run directory, a saved composition, a
    Hugging Face causal LM directory or hub id, read by default as a SHIFTED Absorb denoiser, as
    DiffuGPT does; `load_kw`: process / schedule / layout / base / device). With no spec: the main
    job's MDLM variant in `default_dir`, trained there first if missing."""
    from ..hub import load_model

    if spec is None:
        path = Path(default_dir)
        if not (path / "run.json").exists():
            train_default_model(path)
        spec = path
    loaded = load_model(spec, **{k: v for k, v in load_kw.items() if v is not None})
    return DemoModel(loaded.lm, loaded.tokenizer, str(spec))


def train_default_model(path: "str | Path") -> None:
    """Train the main job's MDLM variant (same config as `diffusionlm compare`) and save it."""
    from ..compare import CompareConfig, save_variant, train_variant
    from ..data import TokenBlocks, load_corpus, load_tokenizer

    cfg = CompareConfig()
    tok = load_tokenizer(cfg.tokenizer)
    print(f"no model given and none in {path}: training the main job's MDLM variant ({cfg.train_steps} steps)", flush=True)
    blocks = TokenBlocks(load_corpus(cfg.corpus, "train"), tok, cfg.length)
    lm, _ = train_variant(cfg, "mdlm", tok, blocks)
    save_variant(Path(path), cfg, "mdlm", lm)


# ---------------------------------------------------------------------------------------------
# settings -> sampler
# ---------------------------------------------------------------------------------------------
def sampler_knobs(name: str) -> list:
    """The DemoSettings fields the sampler `name` takes (its own dataclass fields)."""
    cls = _sampler_class(name)
    own = {f.name for f in dataclasses.fields(cls)}
    if "iterations" in own or "steps" in own:
        own.add("steps")
    if "dtype" in own:
        own.add("precision")
    return [f.name for f in dataclasses.fields(DemoSettings) if f.name in own]


def sampler_kwargs(settings: DemoSettings, model: DemoModel, prompt_len: int) -> dict:
    cls = _sampler_class(settings.sampler)
    own = {f.name for f in dataclasses.fields(cls)}
    kw = {k: getattr(settings, k) for k in own if hasattr(settings, k) and k not in ("steps", "rate")}
    if "iterations" in own:
        kw["iterations"] = settings.steps
    if "rate" in own and settings.rate is not None:
        kw["rate"] = settings.rate  # a rate sets the number of steps itself
    elif "steps" in own:
        kw["steps"] = settings.steps
    if "dtype" in own:
        kw["dtype"] = getattr(torch, settings.precision)
    if "max_new_tokens" in own:
        kw["max_new_tokens"] = settings.length - prompt_len
    if "eos_id" in own:
        kw["eos_id"] = getattr(model.tokenizer, "eos_id", None) if settings.eos_bias else None
    return kw


def _sampler_class(name: str):
    if name not in SAMPLERS:
        raise DemoInputError(f"unknown sampler {name!r}; known: {', '.join(sorted(SAMPLERS))}")
    return get_sampler(name)


def _schedule(settings: DemoSettings, model: DemoModel):
    from ..schedules import Block, Flat, Quench, Slide

    s = settings.schedule
    if s == "trained":
        return model.lm.schedule
    if s in ("block", "slide") and (not isinstance(settings.width, int) or settings.width < 1):
        raise DemoInputError(f"the {s} width must be a whole number >= 1, got {settings.width!r}")
    if s == "flat":
        return Flat()
    if s == "block":
        return Block(settings.width)
    if s == "slide":
        return Slide(settings.width)
    if s == "quench":
        return Quench()
    raise DemoInputError(f"unknown hyperschedule {s!r}; choose one of {', '.join(SCHEDULE_CHOICES)}")


def _check(settings: DemoSettings, model: DemoModel, prompt_ids: list) -> None:
    """Bad input as one sentence the page can show (the samplers' own checks follow)."""
    L = settings.length
    if not isinstance(L, int) or isinstance(L, bool) or L < 1:
        raise DemoInputError(f"length must be a whole number >= 1, got {L!r}")
    if L > model.max_length:
        raise DemoInputError(f"length {L} is beyond the model's {model.max_length} positions")
    if "steps" in sampler_knobs(settings.sampler) and (not isinstance(settings.steps, int) or settings.steps < 1):
        raise DemoInputError(f"steps must be a whole number >= 1, got {settings.steps!r}")
    if len(prompt_ids) >= L:
        raise DemoInputError(
            f"the prompt is {len(prompt_ids)} tokens, which leaves nothing to generate in length {L}: "
            f"make the length larger than the prompt"
        )
    if settings.rate is not None and not (isinstance(settings.rate, (int, float)) and settings.rate > 0):
        raise DemoInputError(f"rate must be a number > 0 (tokens per step), got {settings.rate!r}")


# ---------------------------------------------------------------------------------------------
# generation
# ---------------------------------------------------------------------------------------------
def generate(model: DemoModel, settings: DemoSettings) -> DemoRun:
    """Run the chosen sampler once (batch 1, seeded) and keep its history as frames.
    Raises DemoInputError (a ValueError) naming the problem for any setting it cannot run."""
    from ..data.instruct import templated_prompt
    from ..lm import DiffusionLM

    tok = model.tokenizer
    text = settings.prompt
    if settings.chat_template and text:
        text = templated_prompt(tok, text)  # as is when the tokenizer has no template
    prompt_ids = tok.encode(text) if text else []
    _check(settings, model, prompt_ids)
    lm = model.lm
    schedule = _schedule(settings, model)
    if schedule is not lm.schedule:
        lm = DiffusionLM(lm.model, lm.process, schedule, layout=lm.layout, bos_id=lm.bos_id)
    try:
        sampler = _sampler_class(settings.sampler)(**sampler_kwargs(settings, model, len(prompt_ids)))
        prompt = torch.tensor([prompt_ids]) if prompt_ids else None
        with torch.no_grad():
            out = sampler.sample(lm, batch_size=1, length=settings.length, prompt=prompt,
                                 generator=torch.Generator().manual_seed(int(settings.seed)), keep_history=True)
    except DemoInputError:
        raise
    except (ValueError, TypeError) as err:  # the samplers' own checks: knobs out of range, misfits
        raise DemoInputError(str(err)) from err
    d = settings.length
    fixed = [i < len(prompt_ids) for i in range(d)]
    frames = []
    if model.mask_id is not None:  # step 0: the prompt, MASK everywhere else (uniform noise has no picture)
        frames.append(Frame(0, list(prompt_ids) + [model.mask_id] * (d - len(prompt_ids)), [False] * d, [math.nan] * d, fixed))
    frames += [Frame.from_record(rec, fixed) for rec in out.history]
    tokens = out.tokens[0].tolist()
    info = sampler.to_dict() if hasattr(sampler, "to_dict") else {"name": settings.sampler}
    return DemoRun(settings, json.loads(json.dumps(info, default=str)), frames, tok.decode(tokens), tokens,
                   float(out.seconds), int(out.num_model_calls))


# ---------------------------------------------------------------------------------------------
# views of one frame
# ---------------------------------------------------------------------------------------------
def _pieces(frame: Frame, model: DemoModel):
    """(position, id, text, kind, confidence, changed) per position; kind: prompt | mask | token."""
    tok = model.tokenizer
    for i, t in enumerate(frame.tokens):
        if frame.fixed[i]:
            kind = "prompt"
        elif t == model.mask_id:
            kind = "mask"
        else:
            kind = "token"
        text = "" if kind == "mask" else tok.decode([t])
        if kind != "mask" and text == "":
            text = f"<{t}>"  # special tokens decode to nothing: show the id
        yield i, t, text, kind, frame.confidence[i], bool(frame.changed[i])


def _colour(conf: float) -> str:
    """Low confidence red, high green (HSL hue 0..120)."""
    if conf != conf:  # nan
        return "#eeeeee"
    return f"hsl({int(120 * max(0.0, min(1.0, conf)))}, 75%, 82%)"


def frame_html(frame: Frame, model: DemoModel) -> str:
    spans, masked = [], 0
    for i, t, text, kind, conf, changed in _pieces(frame, model):
        masked += kind == "mask"
        shown = "[MASK]" if kind == "mask" else html.escape(text).replace("\n", "↵").replace(" ", "&nbsp;")
        cls = f"tok {kind}" + (" changed" if changed else "")
        bg = "#d0d0d0" if kind == "mask" else ("#dbe8ff" if kind == "prompt" else _colour(conf))
        title = "MASK" if kind == "mask" else ("prompt" if kind == "prompt" else f"p = {conf:.3f}")
        spans.append(f'<span class="{cls}" data-pos="{i}" data-id="{t}" title="{title}" style="background:{bg}">{shown}</span>')
    head = f'<div class="frame-head" data-step="{frame.step}">step {frame.step} · {masked} masked</div>'
    return head + '<div class="frame">' + "".join(spans) + "</div>"


def frame_text(frame: Frame, model: DemoModel, colour: bool = False) -> str:
    """One line for a terminal: MASK as `_`; with `colour`, changed tokens in reverse video."""
    out = []
    for _i, _t, text, kind, _conf, changed in _pieces(frame, model):
        s = "_" if kind == "mask" else text
        out.append(f"\x1b[7m{s}\x1b[0m" if colour and changed else s)
    body = "".join(out)
    return f"[step {frame.step:>4}] {body if colour else repr(body)}"


#: the CSS the page needs for frames (legend colours match _colour)
FRAME_CSS = """
.frame { font-family: monospace; line-height: 1.9; white-space: normal; word-break: break-all; }
.frame .tok { padding: 1px 0; border-radius: 3px; }
.frame .tok.mask { color: #555; font-size: 0.8em; margin: 0 1px; display: inline-block; }
.frame .tok.changed { outline: 2px solid #1f5fd6; }
.frame-head { font-weight: 600; margin-bottom: 4px; }
"""
