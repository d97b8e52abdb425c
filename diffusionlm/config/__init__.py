"""Configuration, together: the run configuration (`RunConfig`: model / data / train sections,
JSON files, `section.key=value` overrides) in :mod:`.run`, the train section in :mod:`.train`,
and the rules every section's fields are checked by in :mod:`.check`.

    run = RunConfig.from_file("recipes/scratch.json", ["train.lr=1e-4", "data.length=256"])
    parts = build(run)                      # tokenizer, lm, train stream, validation batches
"""
from .check import check_fields
from .train import LR_SCHEDULES, TrainConfig
from .run import BuiltRun, DataSpec, ModelSpec, RunConfig, build, build_model, build_process, build_tokenizer, load_run, safetensors_errors

__all__ = ["BuiltRun", "DataSpec", "LR_SCHEDULES", "ModelSpec", "RunConfig", "TrainConfig", "build", "build_model",
           "build_process", "build_tokenizer", "check_fields", "load_run", "safetensors_errors"]
