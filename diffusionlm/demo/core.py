"""What the demo does, without a browser: settings -> sampler -> step-by-step frames -> views.

    model = load_demo_model("runs/compare/models/mdlm")     # or an HF directory / hub id, or None
    settings = DemoSettings(prompt="def ", length=64, sampler="acs", steps=32, eta=0.1)
    run = generate(model, settings)                          # raises DemoInputError on bad input
    run.frames[k]          # the k-th frame kept (frames[0]: the prompt and MASK everywhere else)
    run.text               # the final text (sample 0; run.texts: every sample);  run.seconds, run.model_calls
    frame_html(run.frames[k], model)     # one equal-width chip per position (legend_html: what they mean)
    frame_text(run.frames[k], model)     # the same frame for a terminal (`diffusionlm sample --show-steps`)

One `DemoSettings` holds the knobs samplers share and `extra` every other field of a sampler
(`extra_knobs`: "sampler.field"); `sampler_kwargs` keeps the ones the chosen sampler declares (its
dataclass fields), so a sampler added to the registry shows up in the demo with its own knobs and
nothing here changes. The frames are the sampler's own step records (its per-step callback),
batch row 0: what the page shows is what the sampler did.

A server must survive its users, so every size a request sets is bounded (`DemoLimits`): steps,
length, batch, the number of steps a rate implies, the prompt's characters; a request over a
limit is refused with a sentence (never clamped). A run keeps at most `max_frames` frames: frame
i (0 = the prompt frame) is kept while i is a multiple of a stride s; when one more would exceed
the limit, every other kept frame is dropped and s doubles, so the frames kept are always frames
0, s, 2s, ... of the run (s a power of two) plus the last one (`FrameKeeper`). A run stops at the
step after its `cancel` event is set (checked in the sampler's callback), raising DemoCancelled;
the frames it kept are released.

The views (views.py, re-exported here): one chip per position, at least the run's width, a
longer token whole in a wider chip; MASK a dashed grey box; special tokens and bytes that make
no character marked, never raw. The page names what the model is (`model_kind`: an HF causal LM
read as a denoiser without training is an "autoregressive LM (not adapted)"), the hyperschedule
by its spec (`schedule_name`: "trained (Block(4, 4))", or the one given with --schedule), and
offers only the samplers that fit it (`fitting_samplers`).

Streaming: `generate(..., on_frame=f)` calls f(frame, k, total) as each step's frame is made
(k: steps done, total: the steps planned, `planned_steps`), so a page can show the run as it goes.
"""
from __future__ import annotations

import dataclasses
import json
import math
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch

from ..compare import CompareConfig, save_variant, train_variant
from ..data import TokenBlocks, load_corpus, load_tokenizer
from ..data.instruct import templated_prompt
from ..io.fetch import FetchError, shipped_path
from ..io.hub import load_model, parse_part
from ..lm import DiffusionLM
from ..models.hf import HFDenoiser
from ..samplers import SAMPLERS, get_sampler
from ..samplers.lad import LAD
from ..schedules import Block, Flat, Quench, Slide
from ..specs import build
from .views import FRAME_CSS, chip_width, frame_html, frame_text, legend_html, row_text  # noqa: F401 (re-exported)

__all__ = [
    "DemoInputError",
    "DemoCancelled",
    "DemoLimits",
    "DemoModel",
    "DemoSettings",
    "DemoRun",
    "Frame",
    "FrameKeeper",
    "PackedFrames",
    "SCHEDULE_CHOICES",
    "DEFAULT_MODEL_DIR",
    "ADAPTED_MODEL_DIR",
    "load_demo_model",
    "sampler_kwargs",
    "sampler_knobs",
    "extra_knobs",
    "generate",
    "fitting_samplers",
    "model_kind",
    "model_calls",
    "chip_width",
    "frame_html",
    "legend_html",
    "frame_text",
    "planned_steps",
    "schedule_name",
]

#: hyperschedules offered for sampling; "trained" keeps the one the model was trained with
SCHEDULE_CHOICES = ("trained", "flat", "block", "slide", "quench")
#: where the main job (`diffusionlm compare`) saves its MDLM variant: the demo's default model
DEFAULT_MODEL_DIR = "runs/compare/models/mdlm"
#: preferred over it once SmolLM2 has been fetched: the block-diffusion adapter shipped in the
#: package (recipes/smollm2-block.json), so the default shows English being written
SHIPPED_MODEL = "smollm2-block"
#: else, when present: SmolLM2-135M adapted to diffusion by scripts/smollm2_train.sh
ADAPTED_MODEL_DIR = "runs/smollm2-diffullama"


def _shipped_model_ready() -> bool:
    """Whether the shipped SmolLM2 adapter can load here (its base fetched and converted)."""
    try:
        shipped_path(SHIPPED_MODEL)
    except (FetchError, FileNotFoundError):
        return False
    return True


class DemoInputError(ValueError):
    """A setting the demo cannot run with; the message is shown to the user as it is."""


class DemoCancelled(Exception):
    """The run was stopped by its user (its `cancel` event was set); its frames were released."""

    def __init__(self, steps_done: int, total: Optional[int] = None):
        super().__init__(f"stopped after {steps_done} steps")
        self.steps_done, self.total = steps_done, total


def _positive_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 1


@dataclass(frozen=True)
class DemoLimits:
    """What one request may ask for, and how the server shares itself between requests.

    max_steps         steps / LAD iterations, and the steps a rate or hyperschedule implies
    max_length        tokens per sample, prompt included (also capped by the model's positions)
    max_batch         samples drawn at once
    max_prompt_chars  characters of prompt text (before tokenizing)
    max_frames        frames kept per run: evenly spaced, plus the last
    concurrency       runs at once (Gradio's concurrency_limit of the Generate event)
    max_queue         requests waiting beyond those (Gradio's queue max_size); more are refused
    max_sessions      browser / API sessions whose state (kept frames) the server holds
    """

    max_steps: int = 256
    max_length: int = 512
    max_batch: int = 4
    max_prompt_chars: int = 4096
    max_frames: int = 64
    concurrency: int = 2
    max_queue: int = 64
    max_sessions: int = 1000

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if not _positive_int(v):
                raise ValueError(f"DemoLimits.{f.name} must be a whole number >= 1, got {v!r}")
        if self.max_frames < 2:
            raise ValueError(f"DemoLimits.max_frames must be >= 2 (the first and the last frame), got {self.max_frames}")

    def length_for(self, model: "DemoModel") -> int:
        """The longest length this model may be asked for."""
        return min(self.max_length, model.max_length)

    def describe(self, model: "DemoModel") -> str:
        """The limits as one sentence for the page."""
        return (f"Limits: steps 1–{self.max_steps} (a rate may imply at most {self.max_steps} steps), "
                f"length 1–{self.length_for(model)} tokens, samples 1–{self.max_batch}, prompt up to "
                f"{self.max_prompt_chars} characters; a run keeps at most {self.max_frames} of its steps "
                f"(evenly spaced) plus the last; {self.concurrency} runs at a time, up to {self.max_queue} waiting.")


@dataclass
class DemoModel:
    """A model the demo runs. `source`: where it was loaded from ("run", "composition", "hf" as
    `hub.LoadedModel.kind`; "python": built in code); `adapted`: False for a causal LM that was
    never trained as this composition (a plain HF directory, or a saved composition of an HF
    backbone with no training recorded): `kind` then says it is an autoregressive LM."""

    lm: Any
    tokenizer: Any
    name: str
    source: str = "python"
    adapted: bool = True
    #: the hyperschedule the model was trained with, where `lm.schedule` is another one (given
    #: with --schedule); None: lm.schedule is the trained one (or, for a plain HF model, its default)
    trained_schedule: Any = None
    #: each token's text alone, filled as the views read them (views._single)
    texts: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def schedule_given(self) -> bool:
        """Whether the model runs under a hyperschedule given at load time, not its trained one."""
        return self.trained_schedule is not None

    @property
    def schedule_label(self) -> str:
        """The hyperschedule the model runs under, named by what it is: "trained (Block(4, 4))",
        or "Flat() (given with --schedule; trained: Block(4, 4))", or for a plain HF model
        "Flat() (default: no diffusion training)"."""
        own = schedule_name(self.lm.schedule)
        if self.schedule_given:
            return f"{own} (given with --schedule; trained: {schedule_name(self.trained_schedule)})"
        if self.source == "hf":
            return f"{own} (default: no diffusion training)"
        return f"trained ({own})"

    @property
    def max_length(self) -> int:
        return int(self.lm.max_positions)

    @property
    def kind(self) -> str:
        """What the model is, for the page (`model_kind`)."""
        return model_kind(self.lm, self.adapted)

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
    batch: int = 1  # samples drawn at once (the frames are sample 0's)
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
    #: any other field of a sampler (one no knob above covers, or whose name is a request field
    #: here, e.g. a sampler's own "schedule"): "sampler.field" -> value (`extra_knobs`); a field
    #: not given keeps the sampler's default
    extra: dict = field(default_factory=dict)


@dataclass
class Frame:
    step: int  # the sampler's own step number (StepRecord.step; AR numbers steps by position)
    tokens: list  # ids of batch row 0 (MASK id where masked)
    changed: list  # bool per position
    confidence: list  # float per position (nan: not predicted)
    fixed: list  # bool per position: prompt tokens
    levels: Optional[list] = None  # noise level per position after the step (None: the sampler has none, LAD)
    n: Optional[int] = None  # the steps done when it was made (0: the prompt frame), as the page counts them

    @classmethod
    def from_record(cls, rec: Any, fixed: list, row: int = 0, n: Optional[int] = None) -> "Frame":
        """Batch row `row` of a sampler's StepRecord (`n`: the steps done with it)."""
        levels = None if rec.levels is None else [float(v) for v in rec.levels[row].tolist()]
        return cls(int(rec.step), rec.tokens[row].tolist(), rec.changed[row].tolist(),
                   [float(c) for c in rec.confidence[row].tolist()], fixed, levels, n)


@dataclass
class DemoRun:
    """frames: the frames kept (at most DemoLimits.max_frames evenly spaced, plus the last) out of
    `num_frames`; `stride`: kept frames are every stride-th one; text / tokens: sample 0;
    texts: every sample; `model_calls`: the network calls it made (`model_calls`)."""

    settings: DemoSettings
    sampler: dict
    frames: list = field(default_factory=list)
    text: str = ""
    tokens: list = field(default_factory=list)
    seconds: float = 0.0
    model_calls: int = 0
    texts: list = field(default_factory=list)
    num_frames: int = 0
    stride: int = 1
    steps: int = 0  # steps the sampler ran (AR numbers its steps by position: its last step is the length)
    schedule: str = ""  # the hyperschedule it ran under (`schedule_name`)


class FrameKeeper:
    """At most `limit` frames evenly spaced over a run, plus the last one (module docstring).

    `add(item)` takes frames (or anything `convert` turns into one) in order; only kept items
    are converted; `frames()` gives the kept frames plus the latest one.
    """

    def __init__(self, limit: int, convert: Any = None):
        if not _positive_int(limit) or limit < 2:
            raise ValueError(f"limit must be a whole number >= 2, got {limit!r}")
        self.limit, self.convert = limit, convert or (lambda x: x)
        self.kept: list = []
        self.stride, self.seen = 1, 0
        self._last: Any = None

    def add(self, item: Any) -> None:
        i, self.seen = self.seen, self.seen + 1
        self._last = (item, None)
        if i % self.stride == 0:
            frame = self.convert(item)
            self._last = (item, frame)
            self.kept.append(frame)
            if len(self.kept) > self.limit:
                self.kept = self.kept[::2]
                self.stride *= 2

    def frames(self) -> list:
        if self.seen == 0:
            return []
        if (self.seen - 1) % self.stride == 0:  # the latest is kept already
            return list(self.kept)
        item, frame = self._last
        return self.kept + [self.convert(item) if frame is None else frame]

    def clear(self) -> None:
        """Drop every frame held (a cancelled run)."""
        self.kept, self._last = [], None


class PackedFrames:
    """A run's frames as compact tensors (what the page keeps per session): tokens int32, changed
    bool, confidence and levels float32, [F, d] each (levels nan in a frame that has none);
    `self[k]` is Frame k again; `chip`: the run's chip width (`chip_width`), one for all its frames;
    `total`: the run's steps (planned, for a stopped run); `stopped`: the run was stopped."""

    def __init__(self, frames: list, chip: Optional[int] = None, total: Optional[int] = None, stopped: bool = False):
        self.total, self.stopped = total, stopped
        self.steps = [f.step for f in frames]
        self.done = [f.n for f in frames]
        self.tokens = torch.tensor([f.tokens for f in frames], dtype=torch.int32)
        self.changed = torch.tensor([f.changed for f in frames], dtype=torch.bool)
        self.confidence = torch.tensor([f.confidence for f in frames], dtype=torch.float32)
        self.has_levels = [f.levels is not None for f in frames]
        d = len(frames[0].tokens) if frames else 0
        self.levels = torch.tensor([f.levels if f.levels is not None else [math.nan] * d for f in frames],
                                   dtype=torch.float32)
        self.fixed = list(frames[0].fixed) if frames else []
        self.chip = chip

    def __len__(self) -> int:
        return len(self.steps)

    def __getitem__(self, k: int) -> Frame:
        return Frame(self.steps[k], self.tokens[k].tolist(), self.changed[k].tolist(), self.confidence[k].tolist(),
                     self.fixed, self.levels[k].tolist() if self.has_levels[k] else None, self.done[k])


# ---------------------------------------------------------------------------------------------
# loading
# ---------------------------------------------------------------------------------------------
def load_demo_model(spec: "str | Path | None" = None, default_dir: "str | Path" = DEFAULT_MODEL_DIR, **load_kw: Any) -> DemoModel:
    """Any kind of model (`diffusionlm.io.hub.load_model`: a run directory, a saved composition, a
    Hugging Face causal LM directory or hub id, read by default as a SHIFTED Absorb denoiser, as
    DiffuGPT does; `load_kw`: process / schedule / layout / base / device). With no spec: the
    adapted SmolLM2 (ADAPTED_MODEL_DIR) once its training has saved it, when `default_dir` is the
    default one; else the main job's MDLM variant in `default_dir`, trained there first if missing."""
    if spec is None:
        adapted, default = Path(ADAPTED_MODEL_DIR), Path(default_dir) == Path(DEFAULT_MODEL_DIR)
        if default and _shipped_model_ready():
            spec = SHIPPED_MODEL  # SmolLM2 adapted to Block(4, 4) diffusion, shipped in the package
        elif default and (adapted / "model" / "config.json").is_file():
            spec = adapted  # the adapted SmolLM2, saved when its training finished
        else:
            if default:
                print(f"the adapted SmolLM2 ({ADAPTED_MODEL_DIR}) is not there: `bash scripts/smollm2_train.sh` makes it "
                      f"(two LoRA trainings of about 45 minutes each on 2 quiet cores); showing the main job's model from {default_dir}", flush=True)
            path = Path(default_dir)
            if not (path / "run.json").exists():
                train_default_model(path)
            spec = path
    given = load_kw.pop("schedule", None)
    loaded = load_model(spec, **{k: v for k, v in load_kw.items() if v is not None})
    model = DemoModel(loaded.lm, loaded.tokenizer, str(spec), loaded.kind, _adapted(loaded))
    if given is not None:  # run under another hyperschedule: keep the trained one's name for the page
        trained, lm = loaded.lm.schedule, loaded.lm
        model.lm = DiffusionLM(lm.model, lm.process, build("hyperschedule", parse_part(given, "schedule")),
                               layout=lm.layout, bos_id=lm.bos_id)
        model.trained_schedule = None if loaded.kind == "hf" else trained  # a plain HF model has none
    return model


def schedule_name(schedule: Any) -> str:
    """A hyperschedule by what it is: its class and the values of its spec, "Block(4, 4)",
    "Flat()" (fields left at None are left out)."""
    spec = schedule.to_dict() if hasattr(schedule, "to_dict") else {}
    values = [repr(v) for k, v in spec.items() if k != "name" and v is not None]
    return f"{type(schedule).__name__}({', '.join(values)})"


def _adapted(loaded: Any) -> bool:
    """Whether a loaded model was trained as the composition it is read as: not a plain HF causal
    LM, nor a saved composition of an HF backbone with no training recorded (what `diffusionlm
    export` writes from a plain HF model)."""
    if loaded.kind == "hf":
        return False
    if loaded.kind == "composition" and isinstance(_bare(loaded.lm.model), HFDenoiser):
        return bool((loaded.info or {}).get("training"))
    return True


def _bare(model: Any) -> Any:
    """The module under wrappers (torch.compile's, DDP's)."""
    for attr in ("_orig_mod", "module"):
        model = getattr(model, attr, model)
    return model


def model_kind(lm: Any, adapted: bool = True) -> str:
    """What a model is, in words: "autoregressive LM (not adapted)" for a causal LM read as a
    denoiser without training; "LAD (Structural)" for a process with no likelihood; an Absorb model
    trained under Quench is an "autoregressive LM (Absorb + Quench)"; else "diffusion LM (Process +
    Hyperschedule)" (the trained hyperschedule's family, e.g. "diffusion LM (Absorb + Block)")."""
    if not adapted:
        return "autoregressive LM (not adapted)"
    process, schedule = lm.process, getattr(lm.schedule, "base", lm.schedule)  # Retimed: its base's family
    proc, sched = type(process).__name__, type(schedule).__name__
    if not getattr(process, "likelihood", True):
        return f"LAD ({proc})"
    if DiffusionLM.autoregressive(process, schedule, lm.layout):
        return f"autoregressive LM ({proc} + {sched})"
    return f"diffusion LM ({proc} + {sched})"


def train_default_model(path: "str | Path") -> None:
    """Train the main job's MDLM variant (same config as `diffusionlm compare`) and save it."""
    cfg = CompareConfig()
    tok = load_tokenizer(cfg.tokenizer)
    print(f"no model given and none in {path}: training the main job's MDLM variant ({cfg.train_steps} steps)", flush=True)
    blocks = TokenBlocks(load_corpus(cfg.corpus, "train"), tok, cfg.length)
    lm, _ = train_variant(cfg, "mdlm", tok, blocks)
    save_variant(Path(path), cfg, "mdlm", lm)


# ---------------------------------------------------------------------------------------------
# settings -> sampler
# ---------------------------------------------------------------------------------------------
#: DemoSettings fields that belong to the request, not to a sampler field of the same name: steps
#: and rate reach a sampler through `sampler_kwargs`' mapping; a sampler's own field called e.g.
#: "schedule" is an extra knob ("remdm.schedule"), never the demo's hyperschedule
REQUEST_FIELDS = ("prompt", "chat_template", "length", "sampler", "steps", "schedule", "width", "rate", "batch", "seed",
                  "extra")
#: sampler fields the demo sets itself from the request (`sampler_kwargs`)
_DERIVED = ("iterations", "steps", "rate", "dtype", "max_new_tokens", "eos_id")


def sampler_knobs(name: str) -> list:
    """The DemoSettings fields the sampler `name` takes (its own dataclass fields); its other
    fields are `extra_knobs`."""
    cls = _sampler_class(name)
    own = {f.name for f in dataclasses.fields(cls)}
    knobs = own - set(REQUEST_FIELDS)
    if "iterations" in own or "steps" in own:
        knobs.add("steps")
    if "rate" in own:
        knobs.add("rate")
    if "dtype" in own:
        knobs.add("precision")
    return [f.name for f in dataclasses.fields(DemoSettings) if f.name in knobs]


#: the field types an extra knob can have (others keep the sampler's default): how a page shows them
EXTRA_TYPES = ("bool", "int", "float", "str", "Optional[int]", "Optional[float]", "Optional[str]")


def extra_knobs(name: str) -> list:
    """The sampler's dataclass fields that no DemoSettings knob covers (a sampler added to the
    registry brings its own), of a type in EXTRA_TYPES: [(key "name.field", type, default)]; set
    through `DemoSettings.extra[key]`."""
    cls = _sampler_class(name)
    covered = set(sampler_knobs(name)) | set(_DERIVED)
    return [(f"{name}.{f.name}", _type_name(f.type), f.default) for f in dataclasses.fields(cls)
            if f.init and f.name not in covered and _type_name(f.type) in EXTRA_TYPES and f.default is not dataclasses.MISSING]


def _type_name(t: Any) -> str:
    """A dataclass field's type as written ("Optional[int]"), whether annotations are strings or not."""
    if isinstance(t, str):
        return t
    args = [a for a in getattr(t, "__args__", ()) if a is not type(None)]
    if len(args) == 1 and type(None) in getattr(t, "__args__", ()):
        return f"Optional[{getattr(args[0], '__name__', args[0])}]"
    return getattr(t, "__name__", str(t))


def sampler_kwargs(settings: DemoSettings, model: DemoModel, prompt_len: int) -> dict:
    cls = _sampler_class(settings.sampler)
    own = {f.name for f in dataclasses.fields(cls)}
    kw = {k: getattr(settings, k) for k in own if hasattr(settings, k) and k not in REQUEST_FIELDS}
    extras = {key for key, _t, _d in extra_knobs(settings.sampler)}
    unknown = [k for k in settings.extra if k.split(".", 1)[0] == settings.sampler and k not in extras]
    if unknown:
        raise DemoInputError(f"{settings.sampler} has no knob {unknown[0]!r}; its extra knobs: "
                             f"{', '.join(sorted(extras)) or 'none'}")
    kw.update({k.split(".", 1)[1]: v for k, v in settings.extra.items() if k in extras})
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


def fitting_samplers(model: DemoModel) -> list:
    """The registered samplers that fit the model (each one's `check_fits(lm)`, built with the
    demo's default knobs), sorted by name: the only ones the page offers."""
    out = []
    for name in sorted(SAMPLERS):
        settings = DemoSettings(sampler=name, length=min(DemoSettings.length, model.max_length))
        sampler = get_sampler(name)(**sampler_kwargs(settings, model, 0))
        try:
            sampler.check_fits(model.lm)
        except ValueError:
            continue
        out.append(name)
    return out


def _sampler_class(name: str):
    if name not in SAMPLERS:
        raise DemoInputError(f"unknown sampler {name!r}; known: {', '.join(sorted(SAMPLERS))}")
    return get_sampler(name)


def _schedule(settings: DemoSettings, model: DemoModel):
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


def _check_sizes(settings: DemoSettings, model: DemoModel, limits: DemoLimits) -> None:
    """Every size the request sets, against the model and the limits, before any work is done."""
    if not isinstance(settings.prompt, str):
        raise DemoInputError(f"the prompt must be text, got {type(settings.prompt).__name__}")
    if len(settings.prompt) > limits.max_prompt_chars:
        raise DemoInputError(f"the prompt is {len(settings.prompt)} characters; the demo takes at most "
                             f"{limits.max_prompt_chars}")
    L = settings.length
    if not _positive_int(L):
        raise DemoInputError(f"length must be a whole number >= 1, got {L!r}")
    if L > model.max_length:
        raise DemoInputError(f"length {L} is beyond the model's {model.max_length} positions")
    if L > limits.max_length:
        raise DemoInputError(f"length {L} is over the demo's limit of {limits.max_length} tokens")
    if "steps" in sampler_knobs(settings.sampler):
        if not _positive_int(settings.steps):
            raise DemoInputError(f"steps must be a whole number >= 1, got {settings.steps!r}")
        if settings.steps > limits.max_steps:
            raise DemoInputError(f"steps {settings.steps} is over the demo's limit of {limits.max_steps}")
    if not _positive_int(settings.batch):
        raise DemoInputError(f"samples (batch) must be a whole number >= 1, got {settings.batch!r}")
    if settings.batch > limits.max_batch:
        raise DemoInputError(f"samples (batch) {settings.batch} is over the demo's limit of {limits.max_batch}")
    r = settings.rate
    if r is not None and not (isinstance(r, (int, float)) and not isinstance(r, bool) and math.isfinite(r) and r > 0):
        raise DemoInputError(f"rate must be a number > 0 (tokens per step, finite), got {r!r}")
    if settings.schedule in ("block", "slide") and _positive_int(settings.width) and settings.width > L:
        raise DemoInputError(f"the {settings.schedule} width {settings.width} is wider than the length {L}")
    if not (isinstance(settings.seed, int) and not isinstance(settings.seed, bool) and 0 <= settings.seed < 2**63):
        raise DemoInputError(f"seed must be a whole number in [0, 2^63), got {settings.seed!r}")


def _check_prompt(settings: DemoSettings, prompt_ids: list) -> None:
    if len(prompt_ids) >= settings.length:
        raise DemoInputError(
            f"the prompt is {len(prompt_ids)} tokens, which leaves nothing to generate in length {settings.length}: "
            f"make the length larger than the prompt"
        )


def planned_steps(sampler: Any, lm: Any, length: int, prompt_len: int) -> Optional[int]:
    """The steps a run of `sampler` is planned to take (the step counter's K): a level sampler's
    hyperschedule steps, LAD's iterations (at most: patience may end it sooner), AR's new tokens;
    None where the sampler does not say."""
    if hasattr(sampler, "schedule_for"):
        try:
            return int(sampler.schedule_for(lm).num_steps(length))
        except (TypeError, ValueError):  # a sampler whose number of steps is an output
            return None
    field_name = getattr(sampler, "steps_field", None)
    if field_name and isinstance(getattr(sampler, field_name, None), int):
        return getattr(sampler, field_name)
    if getattr(sampler, "max_new_tokens", None) is not None:
        return int(sampler.max_new_tokens)
    return length - prompt_len if getattr(sampler, "name", "") == "ar" else None


def _check_planned_steps(sampler: Any, lm: Any, settings: DemoSettings, limits: DemoLimits) -> None:
    """A level sampler runs its hyperschedule's steps: those a rate (or a schedule) implies count too."""
    if not hasattr(sampler, "schedule_for"):
        return  # LAD: iterations = steps (checked); AR: one step per new token (length checked)
    T = sampler.schedule_for(lm).num_steps(settings.length)
    if T > limits.max_steps:
        how = f"rate {settings.rate} tokens per step" if settings.rate is not None else f"the {settings.schedule} schedule"
        raise DemoInputError(f"{how} means {T} steps at length {settings.length}, over the demo's limit of "
                             f"{limits.max_steps} steps: raise the rate or give fewer steps")


# ---------------------------------------------------------------------------------------------
# generation
# ---------------------------------------------------------------------------------------------
class _Stop(Exception):
    """Raised from the sampler's callback to end a cancelled run at the next step."""


def _prepare(model: DemoModel, settings: DemoSettings, limits: DemoLimits) -> tuple:
    """(lm under the chosen hyperschedule, prompt ids, sampler): every check before any work."""
    _check_sizes(settings, model, limits)
    tok = model.tokenizer
    text = settings.prompt
    if settings.chat_template and text:
        text = templated_prompt(tok, text)  # as is when the tokenizer has no template
    prompt_ids = tok.encode(text) if text else []
    _check_prompt(settings, prompt_ids)
    lm = model.lm
    schedule = _schedule(settings, model)
    try:
        if schedule is not lm.schedule:
            lm = DiffusionLM(lm.model, lm.process, schedule, layout=lm.layout, bos_id=lm.bos_id)
        sampler = _sampler_class(settings.sampler)(**sampler_kwargs(settings, model, len(prompt_ids)))
    except DemoInputError:
        raise
    except (ValueError, TypeError) as err:  # a hyperschedule the process cannot honour; the sampler's own checks
        raise DemoInputError(str(err)) from err
    _check_planned_steps(sampler, lm, settings, limits)
    return lm, prompt_ids, sampler


class _Recorder:
    """A run's frames as they are made: into the keeper (lazily converted unless someone watches),
    and to `on_frame(frame, k, total)`; raises _Stop at the step after `cancel` is set."""

    def __init__(self, keeper: FrameKeeper, fixed: list, total: Optional[int], cancel: Any, on_frame: Any, eager: bool):
        self.keeper, self.fixed, self.total, self.cancel, self.on_frame = keeper, fixed, total, cancel, on_frame
        self.eager, self.done = eager or on_frame is not None, 0

    def convert(self, item: Any) -> "Frame":
        return item if isinstance(item, Frame) else Frame.from_record(item[1], self.fixed, n=item[0])

    def add(self, item: Any) -> None:
        """A Frame (the prompt frame) or a sampler's StepRecord: one more step done."""
        if not isinstance(item, Frame):
            self.done += 1
            item = (self.done, item)
        if self.eager:
            item = self.convert(item)
        self.keeper.add(item)
        if self.on_frame is not None:
            self.on_frame(item, self.done, self.total)

    def __call__(self, rec: Any) -> None:  # the sampler's callback
        self.check()
        self.add(rec)

    def check(self) -> None:
        if self.cancel is not None and self.cancel.is_set():
            raise _Stop


def generate(model: DemoModel, settings: DemoSettings, limits: Optional[DemoLimits] = None,
             cancel: Optional[threading.Event] = None, on_frame: Any = None,
             keeper: Optional[FrameKeeper] = None) -> DemoRun:
    """Run the chosen sampler once (seeded) and keep its step records as frames (module docstring).

    `on_frame(frame, k, total)` is called as each frame is made (k: the steps done, 0 for the
    prompt frame; total: `planned_steps`), from the thread that runs the sampler: the streaming
    hook. `keeper`: a FrameKeeper of the caller's (it is given Frames), which keeps the frames of
    a stopped run for the caller; without one, a stopped run's frames are released.
    Raises DemoInputError (a ValueError) naming the problem for any setting it cannot run or that
    is over `limits` (default: DemoLimits()), and DemoCancelled when `cancel` is set during the run.
    """
    limits = limits or DemoLimits()
    lm, prompt_ids, sampler = _prepare(model, settings, limits)
    d = settings.length
    fixed = [i < len(prompt_ids) for i in range(d)]
    own = keeper is None
    rec = _Recorder(None, fixed, planned_steps(sampler, lm, d, len(prompt_ids)), cancel, on_frame, not own)
    rec.keeper = keeper = keeper if not own else FrameKeeper(limits.max_frames, rec.convert)
    stopped = False
    try:
        rec.check()
        if model.mask_id is not None:  # step 0: the prompt, MASK everywhere else (uniform noise has no picture)
            rec.add(Frame(0, list(prompt_ids) + [model.mask_id] * (d - len(prompt_ids)), [False] * d,
                          [math.nan] * d, fixed, None, 0))
        prompt = torch.tensor([prompt_ids]) if prompt_ids else None
        with torch.no_grad():
            out = sampler.sample(lm, batch_size=settings.batch, length=d, prompt=prompt,
                                 generator=torch.Generator().manual_seed(int(settings.seed)), callback=rec)
    except _Stop:
        stopped = True  # raised outside this block, so the sampler's frames are gone with its traceback
    except (ValueError, TypeError) as err:  # the samplers' own checks at run time
        raise DemoInputError(str(err)) from err
    if stopped:
        if own:
            keeper.clear()
        raise DemoCancelled(rec.done, rec.total)
    texts = [row_text(row, model) for row in out.tokens.tolist()]
    info = sampler.to_dict() if hasattr(sampler, "to_dict") else {"name": settings.sampler}
    label = model.schedule_label if settings.schedule == "trained" else schedule_name(lm.schedule)
    return DemoRun(settings, json.loads(json.dumps(info, default=str)), keeper.frames(), texts[0],
                   out.tokens[0].tolist(), float(out.seconds), model_calls(out, rec.done), texts, keeper.seen,
                   keeper.stride, rec.done, label)


def model_calls(out: Any, steps_run: int) -> int:
    """The network calls a run made: the sampler's own count (`SampleOutput.num_model_calls`)
    where it reports one, else one per step it ran (`steps_run`, from its step records)."""
    calls = getattr(out, "num_model_calls", None)
    return steps_run if calls is None else int(calls)
