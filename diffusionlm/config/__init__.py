"""Configuration, together: the run configuration (`RunConfig`: a composition in the one format
beside init / data / train / stages sections, JSON files, `section.key=value` overrides) in
:mod:`.run`, the one reader of old-format configs in :mod:`.legacy`, the train section in
:mod:`.train`, and the rules every section's fields are checked by in :mod:`.check`.

    run = RunConfig.from_file("recipes/scratch.json", ["train.lr=1e-4", "data.length=256"])
    parts = diffusionlm.io.runs.build(run)  # tokenizer, lm, train stream, validation batches

Building a run and loading a run directory read files and load models: they are the io layer's
(diffusionlm.io.runs); the names `build`, `load_run`, ... here are deprecated aliases of those.
"""
from . import legacy
from .check import check_fields
from .train import LR_SCHEDULES, TrainConfig
from .run import (  # build ... safetensors_errors: deprecated aliases of diffusionlm.io.runs
    DataSpec, ModelSpec, RunConfig, build, build_model, build_process, build_tokenizer, load_run, safetensors_errors,
)

__all__ = ["DataSpec", "LR_SCHEDULES", "ModelSpec", "RunConfig", "TrainConfig", "build", "build_model",
           "build_process", "build_tokenizer", "check_fields", "load_run", "safetensors_errors"]
