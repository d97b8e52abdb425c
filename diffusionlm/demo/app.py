"""The browser demo (Gradio): type a prompt, pick the sampler and its knobs, watch each step as it
is made.

    diffusionlm demo [--model RUN_DIR | HF_DIR | HUB_ID] [--schedule SPEC] [--port 7860]

    from diffusionlm.demo import build_app, load_demo_model
    app = build_app(load_demo_model(None))       # the main job's MDLM model, trained if missing
    app.launch()

Simple mode shows a prompt, the number of steps and re-masking on / off: re-masking picks ACS
(already decoded tokens may be re-drawn, eta = 0.1) and off picks plain MDLM; a model trained
with a process that has no likelihood (Structural, LAD) uses the LAD sampler with or without
scheduled re-masking, on the prompt wrapped in the tokenizer's chat template (when it has one).
Advanced mode exposes every registered sampler that fits the model (its `check_fits`), the
hyperschedule and its rate, and each sampler's own knobs (only the chosen sampler's knobs are
shown). A line under Generate says what it will run in the mode shown (`form.runs_with`). The
header names the hyperschedule by its spec ("trained (Block(4, 4))", or the one given with
--schedule). Everything the page shows comes from `diffusionlm.demo.core.generate`: the
sampler's own history, drawn as chips under a legend (`views`), with the run's network calls;
Generate sits right under the prompt, above the fold in either mode.

Streaming (stream.py): each frame is drawn as the sampler makes it, under a step counter
("step k / K"); Stop ends the run at its next step and keeps its frames; a refused request
leaves the last result on the page beside its message. Afterwards the slider and the caption
count the same frames ("frame k / F", the caption adding the step it shows).

Under load (`DemoLimits`, shown on the page): a request over a limit gets a message in the page;
Generate runs through Gradio's queue with `concurrency_limit` runs at once and `max_queue`
waiting; each session keeps only its last run's frames, packed (`PackedFrames`), and the heap a
finished run freed is handed back to the OS (`release_freed_memory`). Any cancellation of the
Generate request (an API client's cancel, a closed page) sets the run's cancel flag as well.
"""
from __future__ import annotations

from typing import Any, Optional

from ..samplers import SAMPLERS, get_sampler
from .core import SCHEDULE_CHOICES, DemoLimits, DemoModel, DemoSettings, FRAME_CSS, fitting_samplers, sampler_knobs
from .form import (  # noqa: F401 (re-exported: the app's form, as before)
    ADVANCED_KNOBS,
    FIELD_TYPES,
    FORM,
    HELP,
    api_args,
    extras,
    form_fields,
    form_settings,
    runs_with,
    simple_sampler,
)
from .stream import RunTracker, frame_view, release_freed_memory, slider_label, stream_run  # noqa: F401
from .views import legend_html

__all__ = ["build_app", "launch", "simple_sampler", "api_args", "form_fields", "extras", "release_freed_memory",
           "ADVANCED_KNOBS", "FORM", "OUTPUTS", "RunTracker"]

_settings = form_settings  # the old name (tests, scripts)
#: the Generate event's outputs, in order (stream.py names each); the API's result omits the states (run, frames)
OUTPUTS = ("error", "counter", "run", "frames", "slider", "view", "final", "timing", "timer")


def _extra_component(gr: Any, key: str, typ: str, default: Any):
    """The control for an extra knob (hidden until its sampler is chosen): a checkbox, a number
    (empty: None) or a text box."""
    name, fieldname = key.split(".", 1)
    info = f"{name}: {HELP.get(fieldname, 'its ' + fieldname + ' field')} (default {default!r})"
    kw = dict(label=fieldname, info=info, elem_id=key.replace(".", "-"), visible=False)
    if typ == "bool":
        return gr.Checkbox(value=default, **kw)
    if typ in ("str", "Optional[str]"):
        return gr.Textbox(value="" if default is None else default, **kw)
    return gr.Number(value=default, min_width=180, **kw)


def _header(gr: Any, model: DemoModel, limits: DemoLimits) -> None:
    gr.Markdown(
        f"## diffusionlm: watch a model denoise\n**{model.kind}** · `{model.name}` · schedule "
        f"{model.schedule_label} · {model.lm.layout.value} layout · up to {model.max_length} tokens",
        elem_id="model",
    )
    gr.Markdown(limits.describe(model), elem_id="limits")


def _form(gr: Any, model: DemoModel, limits: DemoLimits, names: list) -> dict:
    """The left column: prompt, Generate / Stop, what Generate runs, steps, re-masking, and the
    Advanced panel; {name: component} (FORM's names, extras' keys, and the buttons)."""
    d0 = DemoSettings()
    c: dict = {"prompt": gr.Textbox(label="Prompt", lines=2, elem_id="prompt")}
    with gr.Row():  # right under the prompt: above the fold in either mode
        c["go"] = gr.Button("Generate", variant="primary", elem_id="generate")
        c["stop"] = gr.Button("Stop", variant="stop", elem_id="stop")
    c["runs_with"] = gr.Markdown(runs_with(model, "Simple", d0.sampler, d0.remask), elem_id="runs-with")
    c["steps"] = gr.Number(value=d0.steps, label=f"Steps (1–{limits.max_steps})", elem_id="steps")
    c["remask"] = gr.Checkbox(value=d0.remask, label="Re-masking", info=HELP["remask"], elem_id="remask")
    with gr.Group(visible=False, elem_id="advanced") as c["advanced"]:
        _advanced(gr, model, limits, names, c)
    return c


def _advanced(gr: Any, model: DemoModel, limits: DemoLimits, names: list, c: dict) -> None:
    """The Advanced panel's controls, into `c`: length, samples, sampler, hyperschedule (the first
    choice named by the model's own schedule: `DemoModel.schedule_label`), width, rate, seed, chat
    template, then every knob."""
    d0 = DemoSettings()
    c["length"] = gr.Number(value=min(64, model.max_length),
                            label=f"Length (tokens, prompt included; 1–{limits.length_for(model)})", elem_id="length")
    c["batch"] = gr.Number(value=d0.batch, label=f"Samples (1–{limits.max_batch}; the steps shown are sample 1's)",
                           elem_id="batch")
    c["sampler"] = gr.Dropdown(names, value=d0.sampler if d0.sampler in names else names[0],
                               label="Sampler (those that fit the model)", elem_id="sampler")
    choices = [(model.schedule_label, "trained")] + [(s, s) for s in SCHEDULE_CHOICES if s != "trained"]
    c["schedule"] = gr.Dropdown(choices, value=d0.schedule, label="Hyperschedule", elem_id="schedule")
    c["width"] = gr.Number(value=d0.width, label="Block / slide width", elem_id="width")
    c["rate"] = gr.Number(value=0, label=f"Rate (tokens per step; 0: use Steps; at most {limits.max_steps} steps)",
                          elem_id="rate")
    c["seed"] = gr.Number(value=d0.seed, label="Seed", elem_id="seed")
    c["chat_template"] = gr.Checkbox(value=d0.chat_template, label="chat template", elem_id="chat_template",
                                     info="wrap the prompt in the tokenizer's chat template (instruction models "
                                          "such as LAD); no effect when the tokenizer has none")
    _knobs(gr, d0, c)


def _knobs(gr: Any, d0: DemoSettings, c: dict) -> None:
    """Every sampler knob, into `c` (each shown only with a sampler that takes it: `_wire_visibility`)."""
    numbers = [k for k in ADVANCED_KNOBS if FIELD_TYPES[k] in ("float", "Optional[int]")]
    flags = [k for k in ADVANCED_KNOBS if FIELD_TYPES[k] == "bool" and k != "remask"]
    with gr.Row():  # the number knobs flow into as many columns as fit
        for k in numbers:
            v = getattr(d0, k)
            c[k] = gr.Number(value=0 if v is None else v, label=k, info=HELP[k], elem_id=k, min_width=180)
    for k in flags:  # remask: the checkbox above serves both modes
        c[k] = gr.Checkbox(value=getattr(d0, k), label=k, info=HELP[k], elem_id=k)
    c["precision"] = gr.Radio(["float64", "float32"], value=d0.precision, label="precision", info=HELP["precision"],
                              elem_id="precision")
    for key, typ, default in extras():  # other samplers' own fields, by type
        c[key] = _extra_component(gr, key, typ, default)


def _result_panel(gr: Any) -> dict:
    """The right column: message, step counter, summary, legend, the frame, playback, final text;
    and the session's states (the run's id, its frames)."""
    p: dict = {"error": gr.Markdown(elem_id="error"), "counter": gr.HTML(elem_id="counter"),
               "timing": gr.Markdown(elem_id="timing")}
    gr.HTML(legend_html(), elem_id="legend")
    p["view"] = gr.HTML(elem_id="frame-view")
    p["slider"] = gr.Slider(0, 1, value=0, step=1, label=slider_label(2), elem_id="step")
    with gr.Row():
        for key, text in (("back", "◀ step"), ("play", "▶ play"), ("pause", "‖ pause"), ("fwd", "step ▶")):
            p[key] = gr.Button(text, elem_id=key)
    p["final"] = gr.Textbox(label="Final text (special tokens such as <|im_end|> left out: the frame marks them)",
                            interactive=False, elem_id="final")
    p["run"], p["frames"] = gr.State(None), gr.State(None)  # this session's last run: its id, its PackedFrames
    p["timer"] = gr.Timer(0.4, active=False)
    return p


def _wire_visibility(gr: Any, model: DemoModel, mode: Any, c: dict) -> None:
    """Which controls each mode and sampler shows, and what Generate will run."""
    knob_keys = [k for k in ADVANCED_KNOBS if k != "remask"]

    def visibility(mode_v, sampler_v, remask_v):
        adv = mode_v == "Advanced"
        own = set(sampler_knobs(sampler_v)) if adv else set()
        shown = {c["advanced"]: adv, c["remask"]: (not adv) or "remask" in own, c["steps"]: (not adv) or "steps" in own}
        shown.update({c[k]: k in own for k in knob_keys})
        shown.update({c[k]: adv and k.split(".", 1)[0] == sampler_v for k, _t, _d in extras()})
        # the hyperschedule drives the level samplers only (those with schedule_for: not LAD, not AR); the rate, those that take one
        level = adv and hasattr(get_sampler(sampler_v), "schedule_for")
        shown.update({c["schedule"]: level, c["width"]: level, c["rate"]: "rate" in own})
        out = {comp: gr.update(visible=v) for comp, v in shown.items()}
        out[c["runs_with"]] = runs_with(model, mode_v, sampler_v, bool(remask_v))
        return out

    toggled = list(dict.fromkeys([c["advanced"], c["remask"], c["steps"], c["schedule"], c["width"], c["rate"],
                                  *(c[k] for k in knob_keys), *(c[k] for k, _t, _d in extras()), c["runs_with"]]))
    for trigger in (mode, c["sampler"], c["remask"]):
        trigger.change(visibility, [mode, c["sampler"], c["remask"]], toggled)


def _as_output(gr: Any, key: str, update: dict) -> Any:
    """One output of a stream update (stream.py) as Gradio takes it: gr.skip() where it is not named."""
    if key not in update:
        return gr.skip()
    if key == "slider":
        return gr.update(**update["slider"])
    return update[key]


def _wire_generate(gr: Any, model: DemoModel, limits: DemoLimits, runs: RunTracker, mode: Any, c: dict, p: dict) -> Any:
    """Generate streams the run's updates (`stream_run`); Stop sets the running run's flag."""
    form = {k: c[k] for k in form_fields()}  # the Generate event's inputs after the mode, in order

    async def on_generate(request, mode_v, *vals):
        owner = getattr(request, "session_hash", None)
        async for update in stream_run(model, limits, runs, mode_v, dict(zip(form, vals)), owner=owner):
            if "counter" in update and 'data-state="running"' in update["counter"] and "view" in update:
                update["timer"] = gr.Timer(active=False)  # a playback of the last run stops
            yield tuple(_as_output(gr, k, update) for k in OUTPUTS)

    # gradio hands the request (its session) to a first parameter annotated gr.Request; set here, not
    # in the source, because `gr` is this function's argument (the annotations are postponed strings)
    on_generate.__annotations__["request"] = gr.Request
    gen = c["go"].click(on_generate, [mode, *form.values()], [p[k] for k in OUTPUTS], show_progress="hidden",
                        concurrency_limit=limits.concurrency, concurrency_id="generate", api_name="generate")

    def stop(request, run_id):  # at once (no queue): the run's sampler stops at its next step, and its stream says so
        runs.stop(run_id, owner=getattr(request, "session_hash", None))

    stop.__annotations__["request"] = gr.Request
    c["stop"].click(stop, [p["run"]], None, queue=False, api_name="stop")
    return gen


def _wire_playback(gr: Any, model: DemoModel, p: dict) -> None:
    """The slider, step buttons and play / pause over the session's last run's frames."""
    frames, step, view, timer = p["frames"], p["slider"], p["view"], p["timer"]

    def show(pages, k):
        if not pages:
            return gr.update(), gr.update()
        k = max(0, min(int(k), len(pages) - 1))
        return gr.update(value=k), frame_view(pages, k, model)

    def start(pages, k):
        k = 0 if pages and int(k) >= len(pages) - 1 else k  # at the end: play from the start
        return (*show(pages, k), gr.Timer(active=bool(pages)))

    def tick(pages, k):
        if not pages or int(k) >= len(pages) - 1:
            return gr.update(), gr.update(), gr.Timer(active=False)
        return (*show(pages, k + 1), gr.Timer(active=True))

    step.input(lambda pages, k: show(pages, k)[1], [frames, step], view)
    p["back"].click(lambda pages, k: show(pages, k - 1), [frames, step], [step, view])
    p["fwd"].click(lambda pages, k: show(pages, k + 1), [frames, step], [step, view])
    p["play"].click(start, [frames, step], [step, view, timer])
    p["pause"].click(lambda: gr.Timer(active=False), None, timer)
    timer.tick(tick, [frames, step], [step, view, timer])


def build_app(model: DemoModel, limits: Optional[DemoLimits] = None):
    """The Gradio Blocks app, its queue configured from `limits` (default DemoLimits());
    `app.demo_runs` is its RunTracker and `app.demo_limits` its limits."""
    import gradio as gr  # optional: gradio, pip install 'diffusionlm[demo]'

    names = fitting_samplers(model)  # only the samplers that fit the model are offered
    if not names:
        raise ValueError(f"no registered sampler fits {model.name} ({model.kind}); known: {', '.join(sorted(SAMPLERS))}")
    limits = limits or DemoLimits()
    runs = RunTracker()
    with gr.Blocks(title="diffusionlm demo", analytics_enabled=False) as app:
        _header(gr, model, limits)
        mode = gr.Radio(["Simple", "Advanced"], value="Simple", label="Mode", elem_id="mode")
        with gr.Row():
            with gr.Column(scale=1):
                controls = _form(gr, model, limits, names)
            with gr.Column(scale=2):
                page = _result_panel(gr)
        _wire_visibility(gr, model, mode, controls)
        _wire_generate(gr, model, limits, runs, mode, controls, page)
        _wire_playback(gr, model, page)
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
