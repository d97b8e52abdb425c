"""Watch a model denoise, step by step: `diffusionlm demo` (browser, Gradio) and the shared
step views behind `diffusionlm sample --show-steps`. See core.py (no browser needed) and app.py."""
from .app import build_app as _build, launch as _launch
from .core import (
    SCHEDULE_CHOICES,
    DemoCancelled,
    DemoInputError,
    DemoLimits,
    DemoModel,
    DemoRun,
    DemoSettings,
    Frame,
    fitting_samplers,
    frame_html,
    frame_text,
    generate,
    legend_html,
    load_demo_model,
    model_kind,
    sampler_knobs,
    sampler_kwargs,
)

__all__ = [
    "SCHEDULE_CHOICES", "DemoCancelled", "DemoInputError", "DemoLimits", "DemoModel", "DemoRun", "DemoSettings", "Frame", "frame_html",
    "frame_text", "generate", "load_demo_model", "legend_html", "fitting_samplers", "model_kind", "sampler_knobs", "sampler_kwargs", "build_app", "launch",
]


def build_app(model, limits=None):  # gradio is an optional extra: imported only when the app is built

    return _build(model, limits)


def launch(model, **kw):
    return _launch(model, **kw)
