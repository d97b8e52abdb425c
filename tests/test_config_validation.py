"""Configurations validate on construction: a bad value raises naming the field, the value and
what is allowed; nothing is clamped or ignored (diffusionlm.config.check)."""
import json

import pytest

from diffusionlm.cli import main as cli_main
from diffusionlm.config import DataSpec, ModelSpec, RunConfig
from diffusionlm.config.check import unruled
from diffusionlm.schedules import Block, Slide
from diffusionlm.training import TrainConfig

BAD = [
    # (class, field, value, the message, TypeError too?)
    (TrainConfig, "clip", -1, "train.clip = -1: must be a number > 0 (or null: no clipping)", False),
    (TrainConfig, "clip", 0, "train.clip = 0: must be a number > 0 (or null: no clipping)", False),
    (TrainConfig, "warmup_steps", -5, "train.warmup_steps = -5: must be an int >= 0", False),
    (TrainConfig, "eval_every", -1, "train.eval_every = -1: must be an int >= 0", False),
    (TrainConfig, "batch_size", True, "train.batch_size = true: must be an int >= 1, not a bool", True),
    (TrainConfig, "batch_size", 2.0, "train.batch_size = 2.0: must be an int >= 1, not a float", True),
    (TrainConfig, "log_every", 0, "train.log_every = 0: must be an int >= 1", False),
    (TrainConfig, "steps", -1, "train.steps = -1: must be an int >= 1", False),
    (TrainConfig, "grad_accum", 0, "train.grad_accum = 0: must be an int >= 1", False),
    (TrainConfig, "lr", 0.0, "train.lr = 0.0: must be a number > 0", False),
    (TrainConfig, "lr", float("nan"), "train.lr = nan: must be a finite number > 0", False),
    (TrainConfig, "lr", "1e-4", "train.lr = '1e-4': must be a number > 0, not a str", True),
    (TrainConfig, "lr_schedule", "cosine_with_min_lr", "train.lr_schedule = 'cosine_with_min_lr': must be one of linear, cosine", False),
    (TrainConfig, "weight_decay", -0.1, "train.weight_decay = -0.1: must be a number >= 0", False),
    (TrainConfig, "betas", [0.9, 1.0], "train.betas = [0.9, 1.0]: must be a list of two numbers, each in [0, 1)", False),
    (TrainConfig, "betas", [0.9], "train.betas = [0.9]: must be a list of two numbers", False),
    (TrainConfig, "ema", 1.0, "train.ema = 1.0: must be a number in (0, 1) (or null: no EMA)", False),
    (TrainConfig, "precision", "fp8", "train.precision = 'fp8': must be one of fp32, bf16, fp16", False),
    (TrainConfig, "two_halves", 1, "train.two_halves = 1: must be true or false", True),
    (TrainConfig, "eval_batches", 0, "train.eval_batches = 0: must be an int >= 1", False),
    (TrainConfig, "eval_samples", 0, "train.eval_samples = 0: must be an int >= 1", False),
    (TrainConfig, "save_every", -2, "train.save_every = -2: must be an int >= 0", False),
    (TrainConfig, "keep_checkpoints", -1, "train.keep_checkpoints = -1: must be an int >= 0", False),
    (TrainConfig, "out_dir", "", "train.out_dir = '': must be a non-empty string", False),
    (TrainConfig, "seed", -1, "train.seed = -1: must be an int in [0, 2147483647]", False),
    (TrainConfig, "progress", "yes", "train.progress = 'yes': must be true or false", True),
    (TrainConfig, "fsdp", None, "train.fsdp = null: must be true or false", True),
    (DataSpec, "length", 0, "data.length = 0: must be an int >= 1", False),
    (DataSpec, "length", "256", "data.length = '256': must be an int >= 1, not a str", True),
    (DataSpec, "rule", "truncate", "data.rule = 'truncate': must be one of wrap, pad", False),
    (DataSpec, "val_batches", -1, "data.val_batches = -1: must be an int >= 0", False),
    (DataSpec, "corpus", "", "data.corpus = '': must be a non-empty string", False),
    (DataSpec, "all_tokens", "false", "data.all_tokens = 'false': must be true or false", True),
    (DataSpec, "instruct", 3, "data.instruct = 3: must be a string, not an int", True),
    (ModelSpec, "kind", "rnn", "model.kind = 'rnn': must be one of transformer, hf", False),
    (ModelSpec, "preset", "huge", "model.preset = 'huge': must be one of gpt2-small, tiny", False),
    (ModelSpec, "overrides", [], "model.overrides = []: must be an object, not a list", True),
    (ModelSpec, "attn_implementation", "flash_attention_2", "model.attn_implementation = 'flash_attention_2': must be one of sdpa, eager", False),
    (ModelSpec, "annealing_steps", -3, "model.annealing_steps = -3: must be an int >= 0 (or null: no annealing)", False),
    (ModelSpec, "lora", "q_proj", "model.lora = 'q_proj': must be an object, not a str (or null: no LoRA)", True),
]


@pytest.mark.parametrize("cls, name, value, message, type_error", BAD, ids=lambda v: str(v)[:30])
def test_a_bad_value_names_field_value_and_range(cls, name, value, message, type_error):
    with pytest.raises(ValueError) as err:
        cls(**{name: value})
    assert str(err.value).startswith(message), str(err.value)
    assert "\n" not in str(err.value)
    assert isinstance(err.value, TypeError) == type_error


def test_every_field_has_a_rule():
    for cls in (TrainConfig, DataSpec, ModelSpec):
        assert unruled(cls, cls.RULES) == [], f"{cls.__name__}: fields without a validation rule"


def test_good_values_pass_unchanged():
    t = TrainConfig(clip=None, ema=0.999, betas=[0.8, 0.95], warmup_steps=0, keep_checkpoints=0, lr=1)
    assert t.clip is None and t.betas == (0.8, 0.95) and t.lr == 1 and t.keep_checkpoints == 0
    assert DataSpec(length=1, rule="pad").length == 1
    with pytest.raises(ValueError, match='model.hf_config needs a "model_type"'):
        ModelSpec(kind="hf", hf_config={"hidden_size": 8})


def test_a_schedule_wider_than_the_sequence_is_refused():
    for s in (Block(16), Slide(9)):
        with pytest.raises(ValueError, match="width (16|9) exceeds the sequence length 8"):
            s.draw(2, 8)
        with pytest.raises(ValueError, match="exceeds the sequence length 8"):
            s.table(8)
    assert Block(8).table(8).shape == (2, 8) and Slide(8).table(8).shape == (16, 8)
    with pytest.raises(ValueError, match=r"^composition\.schedule: Block\(width=64, steps_per_block=1\): width 64 exceeds the sequence length 32"):
        RunConfig.from_file(None, ['schedule={"name": "block", "width": 64}', "data.length=32"])
    with pytest.raises(ValueError, match=r"^stages\[1\]\.schedule: .*width 16 exceeds the sequence length 8"):
        RunConfig.from_file(None, ["data.length=8", 'stages=[{"steps": 2}, {"schedule": {"name": "block", "width": 16}}]'])
    with pytest.raises(ValueError, match=r"^stage 0: train.clip = -1"):
        RunConfig.from_file(None, ['stages=[{"clip": -1}]'])
    with pytest.raises(ValueError, match="layout = 'sideways': must be one of aligned, shifted"):
        RunConfig.from_file(None, ["layout=sideways"])


@pytest.mark.parametrize("override, message", [
    ("train.clip=-1", "train.clip = -1: must be a number > 0"),
    ("train.batch_size=true", "train.batch_size = true: must be an int >= 1, not a bool"),
    ("data.length=0", "data.length = 0: must be an int >= 1"),
    ("train.warmup_steps=-5", "train.warmup_steps = -5"),
])
def test_the_cli_says_so_in_one_line_before_anything_runs(tmp_path, capsys, override, message):
    out = tmp_path / "never"
    assert cli_main(["train", override, f"train.out_dir={out}"]) == 1
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err
    assert not out.exists()


def test_recipes_still_validate():
    from pathlib import Path

    for recipe in sorted((Path(__file__).resolve().parents[1] / "recipes").glob("*.json")):
        run = RunConfig.from_file(recipe)
        assert RunConfig.from_dict(json.loads(json.dumps(run.to_dict()))).to_dict() == run.to_dict()
