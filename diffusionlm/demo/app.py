"""The browser demo (Gradio): type a prompt, pick the sampler and its knobs, watch each step.

    diffusionlm demo [--model RUN_DIR | HF_DIR | HUB_ID] [--port 7860]

    from diffusionlm.demo import build_app, load_demo_model
    app = build_app(load_demo_model(None))       # the main job's MDLM model, trained if missing
    app.launch()

Simple mode shows a prompt, the number of steps and re-masking on / off: re-masking picks ACS
(already decoded tokens may be re-drawn, eta = 0.1) and off picks plain MDLM; a model trained
with a process that has no likelihood (Structural, LAD) uses the LAD sampler with or without
scheduled re-masking, on the prompt wrapped in the tokenizer's chat template (when it has one). Advanced mode exposes every registered sampler that fits the model (its `check_fits`), the
hyperschedule and its rate, and each sampler's own knobs (only the chosen sampler's knobs are
shown). Everything the page shows comes from `diffusionlm.demo.core.generate`: the sampler's own
history, drawn as equal-width chips under a legend (`frame_html`, `legend_html`), with the run's
network calls; the header says what the model is (`DemoModel.kind`); Generate sits right under
the prompt, above the fold in either mode.

Under load (`DemoLimits`, shown on the page): a request over a limit gets a message in the page;
Generate runs through Gradio's queue with `concurrency_limit` runs at once and `max_queue`
waiting; each session keeps only its last run's frames, packed (`PackedFrames`), and the heap a
finished run freed is handed back to the OS (`release_freed_memory`); Stop cancels
the Generate event, and any cancellation of it (Stop, an API client's cancel) sets the run's
cancel flag, so the sampler itself stops at its next step and its frames are released.
"""
from __future__ import annotations

import asyncio
import collections
import ctypes
import ctypes.util
import dataclasses
import functools
import math
import threading
from contextlib import contextmanager
from typing import Any, Iterator, Optional

from ..samplers import SAMPLERS, get_sampler
from .core import (
    FRAME_CSS,
    SCHEDULE_CHOICES,
    DemoCancelled,
    DemoInputError,
    DemoLimits,
    DemoModel,
    DemoSettings,
    PackedFrames,
    chip_width,
    extra_knobs,
    fitting_samplers,
    frame_html,
    generate,
    legend_html,
    sampler_knobs,
)

__all__ = ["build_app", "launch", "simple_sampler", "api_args", "form_fields", "extras", "release_freed_memory",
           "ADVANCED_KNOBS", "FORM",
           "RunTracker"]

#: DemoSettings fields shown in advanced mode, in this order, after length / sampler / schedule
ADVANCED_KNOBS = ("eta", "eta0", "sharpness", "remask", "confidence", "block_size", "edit_previous", "temperature",
                  "top_k", "top_p", "eos_bias", "patience", "greedy", "precision")
_HELP = {
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


#: each DemoSettings field's declared type ("float", "Optional[int]", ...): how a form value is read
_FIELD_TYPES = {f.name: f.type for f in dataclasses.fields(DemoSettings)}


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


@functools.lru_cache(maxsize=1)
def _malloc_trim() -> Any:
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc: nothing to trim
        return None


def release_freed_memory() -> bool:
    """Hand the heap pages a finished run freed back to the OS (glibc's malloc_trim; False where
    there is none). glibc keeps freed memory in per-thread arenas: after 10 concurrent runs at
    length 512 a server stayed ~100 MB above idle with no object alive to hold it, and one
    malloc_trim took it back below idle."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True


class RunTracker:
    """The runs in progress (their cancel flags) and how the last ones ended: what the server
    holds for its requests, for monitoring and tests."""

    def __init__(self, history: int = 100):
        self._lock = threading.Lock()
        self._flags: set = set()
        self.ended: collections.deque = collections.deque(maxlen=history)  # (status, steps done or frames kept)

    @property
    def active(self) -> int:
        with self._lock:
            return len(self._flags)

    @contextmanager
    def run(self, flag: threading.Event) -> Iterator[threading.Event]:
        """Count a run as in progress (in the thread that runs it) while the block lasts."""
        with self._lock:
            self._flags.add(flag)
        try:
            yield flag
        finally:
            with self._lock:
                self._flags.discard(flag)


def _settings(model: DemoModel, mode: str, values: dict) -> DemoSettings:
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
        kw[k] = _read(values[k], _FIELD_TYPES[k], k, zero_off=True)  # 0 (or empty) is "off"
    kw["extra"] = {key: _read(values[key], typ, key) for key, typ, _d in extra_knobs(kw["sampler"])}
    return dataclasses.replace(base, **kw)


def _extra_component(gr: Any, key: str, typ: str, default: Any):
    """The control for an extra knob (hidden until its sampler is chosen): a checkbox, a number
    (empty: None) or a text box."""
    name, fieldname = key.split(".", 1)
    info = f"{name}: {_HELP.get(fieldname, 'its ' + fieldname + ' field')} (default {default!r})"
    kw = dict(label=fieldname, info=info, elem_id=key.replace(".", "-"), visible=False)
    if typ == "bool":
        return gr.Checkbox(value=default, **kw)
    if typ in ("str", "Optional[str]"):
        return gr.Textbox(value="" if default is None else default, **kw)
    return gr.Number(value=default, min_width=180, **kw)


def build_app(model: DemoModel, limits: Optional[DemoLimits] = None):
    """The Gradio Blocks app, its queue configured from `limits` (default DemoLimits());
    `app.demo_runs` is its RunTracker and `app.demo_limits` its limits."""
    import gradio as gr  # optional: gradio, pip install 'diffusionlm[demo]'

    names = fitting_samplers(model)  # only the samplers that fit the model are offered
    if not names:
        raise ValueError(f"no registered sampler fits {model.name} ({model.kind}); known: {', '.join(sorted(SAMPLERS))}")
    d0 = DemoSettings()
    limits = limits or DemoLimits()
    runs = RunTracker()
    max_len = limits.length_for(model)

    with gr.Blocks(title="diffusionlm demo", analytics_enabled=False) as app:
        gr.Markdown(
            f"## diffusionlm: watch a model denoise\n**{model.kind}** · `{model.name}` · trained schedule "
            f"`{model.lm.schedule!r}` · {model.lm.layout.value} layout · up to {model.max_length} tokens",
            elem_id="model",
        )
        gr.Markdown(limits.describe(model), elem_id="limits")
        mode = gr.Radio(["Simple", "Advanced"], value="Simple", label="Mode", elem_id="mode")
        with gr.Row():
            with gr.Column(scale=1):
                prompt = gr.Textbox(label="Prompt", lines=2, elem_id="prompt")
                with gr.Row():  # right under the prompt: above the fold in either mode
                    go = gr.Button("Generate", variant="primary", elem_id="generate")
                    stop = gr.Button("Stop", variant="stop", elem_id="stop")
                steps = gr.Number(value=d0.steps, label=f"Steps (1–{limits.max_steps})", elem_id="steps")
                remask = gr.Checkbox(value=d0.remask, label="Re-masking", info=_HELP["remask"], elem_id="remask")
                with gr.Group(visible=False, elem_id="advanced") as advanced:
                    length = gr.Number(value=min(64, model.max_length),
                                       label=f"Length (tokens, prompt included; 1–{max_len})", elem_id="length")
                    batch = gr.Number(value=d0.batch, label=f"Samples (1–{limits.max_batch}; the steps shown are "
                                      "sample 1's)", elem_id="batch")
                    sampler = gr.Dropdown(names, value=d0.sampler if d0.sampler in names else names[0],
                                          label="Sampler (those that fit the model)", elem_id="sampler")
                    schedule = gr.Dropdown(list(SCHEDULE_CHOICES), value=d0.schedule, label="Hyperschedule",
                                           elem_id="schedule")
                    width = gr.Number(value=d0.width, label="Block / slide width", elem_id="width")
                    rate = gr.Number(value=0, label=f"Rate (tokens per step; 0: use Steps; at most "
                                     f"{limits.max_steps} steps)", elem_id="rate")
                    seed = gr.Number(value=d0.seed, label="Seed", elem_id="seed")
                    chat = gr.Checkbox(value=d0.chat_template, label="chat template", elem_id="chat_template",
                                       info="wrap the prompt in the tokenizer's chat template (instruction models "
                                            "such as LAD); no effect when the tokenizer has none")
                    knobs = {}
                    numbers = [k for k in ADVANCED_KNOBS if _FIELD_TYPES[k] in ("float", "Optional[int]")]
                    flags = [k for k in ADVANCED_KNOBS if _FIELD_TYPES[k] == "bool" and k != "remask"]
                    with gr.Row():  # the number knobs flow into as many columns as fit
                        for k in numbers:
                            v = getattr(d0, k)
                            knobs[k] = gr.Number(value=0 if v is None else v, label=k, info=_HELP[k], elem_id=k,
                                                 min_width=180)
                    for k in flags:  # remask: the checkbox above serves both modes
                        knobs[k] = gr.Checkbox(value=getattr(d0, k), label=k, info=_HELP[k], elem_id=k)
                    knobs["precision"] = gr.Radio(["float64", "float32"], value=d0.precision, label="precision",
                                                  info=_HELP["precision"], elem_id="precision")
                    knobs["remask"] = remask
                    for key, typ, default in extras():  # other samplers' own fields, by type
                        knobs[key] = _extra_component(gr, key, typ, default)
            with gr.Column(scale=2):
                error = gr.Markdown(elem_id="error")
                timing = gr.Markdown(elem_id="timing")
                gr.HTML(legend_html(), elem_id="legend")
                view = gr.HTML(elem_id="frame-view")
                step = gr.Slider(0, 1, value=0, step=1, label="Frame (its step is shown above it)", elem_id="step")
                with gr.Row():
                    back = gr.Button("◀ step", elem_id="back")
                    play = gr.Button("▶ play", elem_id="play")
                    pause = gr.Button("‖ pause", elem_id="pause")
                    fwd = gr.Button("step ▶", elem_id="fwd")
                final = gr.Textbox(label="Final text", interactive=False, elem_id="final")
        frames = gr.State(None)  # this session's last run: PackedFrames
        timer = gr.Timer(0.4, active=False)

        # -- which controls are visible ----------------------------------------------------
        def visibility(mode_v, sampler_v):
            adv = mode_v == "Advanced"
            own = set(sampler_knobs(sampler_v)) if adv else set()
            shown = {advanced: adv, remask: (not adv) or "remask" in own, steps: (not adv) or "steps" in own}
            shown.update({knobs[k]: k in own for k in ADVANCED_KNOBS if k != "remask"})
            shown.update({knobs[k]: adv and k.split(".", 1)[0] == sampler_v for k, _t, _d in extras()})
            # the hyperschedule drives the level samplers only (those with schedule_for: not LAD, not
            # AR); the rate, those that take one
            level = adv and hasattr(get_sampler(sampler_v), "schedule_for")
            shown.update({schedule: level, width: level, rate: "rate" in own})
            return {c: gr.update(visible=v) for c, v in shown.items()}

        toggled = list(dict.fromkeys([advanced, remask, steps, schedule, width, rate, *knobs.values()]))
        mode.change(visibility, [mode, sampler], toggled)
        sampler.change(visibility, [mode, sampler], toggled)

        # -- generation ----------------------------------------------------------------------
        fields = {"prompt": prompt, "steps": steps, "length": length, "batch": batch, "sampler": sampler,
                  "schedule": schedule, "width": width, "rate": rate, "seed": seed, "chat_template": chat, **knobs}
        form = {k: fields[k] for k in form_fields()}  # the Generate event's inputs after the mode, in order

        def refused(message: str):
            return (message, None, gr.update(maximum=1, value=0), "", "", "", gr.Timer(active=False))

        def run_one(mode_v, vals, flag: threading.Event):
            """One request, in a worker thread; what it freed goes back to the OS when it ends."""
            try:
                return respond(mode_v, vals, flag)
            finally:
                release_freed_memory()

        def respond(mode_v, vals, flag: threading.Event):
            """settings -> generate -> the page's outputs."""
            try:
                with runs.run(flag):
                    settings = _settings(model, mode_v, dict(zip(form, vals)))
                    run = generate(model, settings, limits, cancel=flag)
            except DemoInputError as err:
                runs.ended.append(("refused", 0))
                return refused(f"**Cannot generate:** {err}")
            except DemoCancelled as err:
                runs.ended.append(("cancelled", err.steps_done))
                return refused(f"**Stopped** after {err.steps_done} steps.")
            runs.ended.append(("done", len(run.frames)))
            packed = PackedFrames(run.frames, chip_width({t for f in run.frames for t in f.tokens}, model))  # one width per run
            last = len(packed) - 1
            knobs_used = ", ".join(f"{k}={v}" for k, v in run.sampler.items() if k != "name")
            kept = "" if run.stride == 1 else (f" · showing {len(run.frames)} of {run.num_frames} frames "
                                               f"(1 in {run.stride}, and the last)")
            info = (f"**{run.model_calls} network calls** · {run.sampler.get('name', settings.sampler)} · "
                    f"{run.steps} steps · {run.seconds:.2f} s · schedule {settings.schedule} · "
                    f"seed {settings.seed}{kept}  \n`{knobs_used}`")
            text = run.text if len(run.texts) == 1 else "\n\n".join(
                f"[sample {i + 1}] {t}" for i, t in enumerate(run.texts))
            return ("", packed, gr.update(minimum=0, maximum=max(last, 1), value=last),
                    frame_html(packed[last], model, packed.chip),
                    text, info, gr.Timer(active=False))

        async def on_generate(mode_v, *vals):
            # The sampler runs in a thread; if Gradio cancels this event (Stop, a client's cancel),
            # the flag stops the sampler at its next step instead of letting it run to the end.
            flag = threading.Event()
            try:
                return await asyncio.to_thread(run_one, mode_v, vals, flag)
            except BaseException:
                flag.set()
                raise

        gen = go.click(on_generate, [mode, *form.values()], [error, frames, step, view, final, timing, timer],
                       show_progress_on=[view], concurrency_limit=limits.concurrency, concurrency_id="generate",
                       api_name="generate")
        stop.click(lambda: "**Stopped.**", None, error, cancels=[gen], queue=False, api_name="stop")

        # -- playback ------------------------------------------------------------------------
        def show(pages, k):
            if not pages:
                return gr.update(), ""
            k = max(0, min(int(k), len(pages) - 1))
            return gr.update(value=k), frame_html(pages[k], model, pages.chip)

        step.input(lambda pages, k: show(pages, k)[1], [frames, step], view)
        back.click(lambda pages, k: show(pages, k - 1), [frames, step], [step, view])
        fwd.click(lambda pages, k: show(pages, k + 1), [frames, step], [step, view])

        def start(pages, k):
            k = 0 if pages and int(k) >= len(pages) - 1 else k  # at the end: play from the start
            return (*show(pages, k), gr.Timer(active=bool(pages)))

        def tick(pages, k):
            if not pages or int(k) >= len(pages) - 1:
                return gr.update(), gr.update(), gr.Timer(active=False)
            return (*show(pages, k + 1), gr.Timer(active=True))

        play.click(start, [frames, step], [step, view, timer])
        pause.click(lambda: gr.Timer(active=False), None, timer)
        timer.tick(tick, [frames, step], [step, view, timer])
    app.queue(max_size=limits.max_queue, default_concurrency_limit=limits.concurrency)
    app.demo_runs, app.demo_limits = runs, limits
    return app


def launch(model: DemoModel, host: str = "127.0.0.1", port: Optional[int] = None, block: bool = True,
           limits: Optional[DemoLimits] = None):
    """Serve the demo; returns (app, local_url). `block=False` returns at once (tests)."""
    import gradio as gr  # optional: gradio, pip install 'diffusionlm[demo]'

    app = build_app(model, limits)
    # system fonts: the default theme fetches Google fonts, which an offline machine cannot reach
    theme = gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"])
    _, url, _ = app.launch(server_name=host, server_port=port, prevent_thread_lock=not block, theme=theme,
                           css=FRAME_CSS, ssr_mode=False, quiet=not block, footer_links=[],
                           state_session_capacity=app.demo_limits.max_sessions, max_file_size=0)
    _no_uploads(app.server_app)
    return app, url


def _no_uploads(server: Any) -> None:
    """Take Gradio's file-upload endpoint (`POST /gradio_api/upload`) off the server: the demo has
    no file input, and the endpoint would otherwise store whatever any page or script sends into
    Gradio's upload folder. (`max_file_size=0` at launch refuses non-empty uploads as well.)"""
    server.router.routes[:] = [r for r in server.router.routes if not getattr(r, "path", "").endswith("/upload")]
