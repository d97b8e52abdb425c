"""A researcher's own Process, Hyperschedule and Sampler, defined outside the package
(tests/plugins/my_parts.py), registered once and then carried through `specs.build`, a
comparison spec, save / load and `diffusionlm sample --plugin`, with nothing in diffusionlm/ edited."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import diffusionlm
from diffusionlm import specs
from diffusionlm.data import load_tokenizer
from diffusionlm.lm import DiffusionLM

ROOT = Path(__file__).resolve().parents[1]
PLUGIN = ROOT / "tests" / "plugins" / "my_parts.py"
TOK = load_tokenizer("byte")
N = TOK.vocab_size
SMALL = {"name": "transformer", "preset": "tiny", "n_layers": 1, "hidden": 32, "n_heads": 2, "cond_dim": 16}
COMPOSITION = {"name": "diffusion_lm", "process": {"name": "cosine_absorb", "vocab_size": N, "eps": 0.01},
               "schedule": {"name": "interleave", "stride": 4}, "layout": "aligned", "max_positions": 16,
               "backbone": SMALL}


@pytest.fixture(scope="module", autouse=True)
def my_parts():
    """What `--plugin` does: import the file, whose classes register; the registries are restored
    after this module (the other tests see the package's own parts only)."""
    saved = {kind: dict(specs.registry(kind)) for kind in specs.KINDS}
    yield specs.load_plugin(PLUGIN)
    for kind, reg in saved.items():
        specs.registry(kind).clear()
        specs.registry(kind).update(reg)


def test_the_new_parts_build_from_their_specs_and_write_them_back_exactly(my_parts):
    for kind, spec, cls in [
        ("process", {"name": "cosine_absorb", "vocab_size": 7, "mask_id": 9, "eps": 0.05}, my_parts.CosineAbsorb),
        ("hyperschedule", {"name": "interleave", "stride": 3}, my_parts.Interleave),
        ("sampler", {"name": "tempered_mdlm", "steps": 4, "rate": None, "cache": False, "dtype": "float32",
                     "temperature": 0.5}, my_parts.TemperedMDLM),
    ]:
        assert specs.registry(kind)[spec["name"]] is cls
        obj = specs.build(kind, json.loads(json.dumps(spec)))
        assert type(obj) is cls and specs.to_dict(obj) == spec and cls.from_dict(spec).to_dict() == spec
    assert diffusionlm.register(my_parts.Interleave) is my_parts.Interleave  # idempotent, also a decorator
    hs = specs.build("hyperschedule", {"name": "interleave", "stride": 2})
    assert hs.table(4).tolist() == [[1, 1, 1, 1], [0, 1, 0, 1], [0, 0, 0, 0]]
    with pytest.raises(ValueError, match="the process name 'absorb' is taken by diffusionlm.processes.absorb.Absorb"):
        diffusionlm.register(my_parts.CosineAbsorb, name="absorb")


def test_an_unknown_name_says_how_to_register_a_part():
    with pytest.raises(specs.UnknownPartError) as err:
        specs.build("sampler", {"name": "nucleus_mdlm"})
    text = str(err.value)
    assert "unknown sampler 'nucleus_mdlm'" in text and "tempered_mdlm" in text
    assert "diffusionlm.register(cls)" in text and "diffusionlm.parts" in text and "--plugin" in text


def test_a_comparison_spec_runs_two_variants_of_the_new_parts(tmp_path):
    shared = {"backbone": SMALL, "train_steps": 2, "budget_minutes": None, "length": 16, "batch_size": 2,
              "eval_blocks": 2, "eval_samples": 2, "eval_batch_size": 2, "num_samples": 2, "progress": False}
    variants = [
        {"name": "cos_interleave", "process": {"name": "cosine_absorb", "eps": 0.01}, "schedule": {"name": "interleave", "stride": 4},
         "samplers": [{"name": "tempered_mdlm", "temperature": 0.8, "steps": [2, 4]}]},
        {"name": "cos_flat", "process": {"name": "cosine_absorb"}, "schedule": {"name": "flat"},
         "samplers": [{"name": "tempered_mdlm", "steps": [2]}]},
    ]
    res = diffusionlm.compare({"shared": shared, "variants": variants}, out_dir=str(tmp_path / "cmp"))
    comp = res["variants"]["cos_interleave"]["composition"]
    assert comp["process"] == {"name": "cosine_absorb", "vocab_size": N, "mask_id": N, "eps": 0.01}
    assert comp["schedule"] == {"name": "interleave", "stride": 4}
    assert res["variants"]["cos_flat"]["composition"]["process"]["eps"] == 0.0
    for name, steps in (("cos_interleave", [2, 4]), ("cos_flat", [2])):
        r = res["variants"][name]
        assert r["train_steps"] == 2 and r["likelihood"]["tokens"] == 2 * 16
        assert [s["steps"] for s in r["sampling"]] == steps
        assert {s["sampler"] for s in r["sampling"]} == {"tempered_mdlm"}


def _saved(tmp_path) -> Path:
    torch.manual_seed(0)
    lm = DiffusionLM.from_dict(COMPOSITION)
    lm.save_pretrained(tmp_path / "saved", tokenizer=TOK)
    return tmp_path / "saved"


def test_save_and_load_keep_the_new_parts(tmp_path, my_parts):
    folder = _saved(tmp_path)
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["composition"]["process"]["name"] == "cosine_absorb" and cfg["classes"]["process"].endswith("my_parts.CosineAbsorb")
    back = DiffusionLM.from_pretrained(folder)
    torch.manual_seed(0)
    lm = DiffusionLM.from_dict(COMPOSITION)
    assert back.to_dict() == lm.to_dict() and type(back.process) is my_parts.CosineAbsorb
    x = torch.randint(0, N, (2, 16), generator=torch.Generator().manual_seed(0))
    g = lambda: torch.Generator().manual_seed(1)  # noqa: E731
    assert back.loss(x, generator=g()).loss.item() == lm.loss(x, generator=g()).loss.item()
    out = my_parts.TemperedMDLM(temperature=0.7, steps=4, cache=False).sample(back, 2, 16, generator=g())
    assert out.tokens.shape == (2, 16) and int(out.tokens.max()) < N


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "diffusionlm.cli", *args], capture_output=True, text=True,
                          timeout=300, env=env)


def test_the_command_line_samples_with_the_plugin_and_names_the_class_without_it(tmp_path):
    folder = _saved(tmp_path)
    done = _cli("sample", "--model", str(folder), "--plugin", str(PLUGIN), "--sampler", "tempered_mdlm",
                "--options", '{"temperature": 0.7, "cache": false}', "--steps", "4", "--length", "16", "--num", "2")
    assert done.returncode == 0, done.stderr[-2000:]
    assert len([line for line in done.stdout.splitlines() if line.strip()]) >= 2
    missing = _cli("sample", "--model", str(folder), "--steps", "4", "--length", "16")
    assert missing.returncode == 1
    (line,) = missing.stderr.strip().splitlines()
    assert "unknown process 'cosine_absorb'" in line and "my_parts.CosineAbsorb" in line and "--plugin" in line


def test_an_entry_point_of_the_group_is_loaded_when_a_name_is_not_found(tmp_path, monkeypatch):
    """An installed package names its parts in the entry point group `diffusionlm.parts`: the first
    lookup of an unknown name imports them (nothing is imported before)."""
    from importlib.metadata import EntryPoint

    (tmp_path / "ep_parts.py").write_text(
        "from dataclasses import dataclass\nfrom typing import ClassVar\nfrom diffusionlm.schedules.noise import Linear\n\n"
        "@dataclass(frozen=True)\nclass Steep(Linear):\n    name: ClassVar[str] = 'steep'\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    asked = []

    def entry_points(group):
        asked.append(group)
        return [EntryPoint(name="steep", value="ep_parts:Steep", group=group)]

    monkeypatch.setattr(specs, "entry_points", entry_points)
    monkeypatch.setattr(specs, "_ENTRY_POINTS_LOADED", False)
    saved = dict(specs.registry("noise_schedule"))
    try:
        assert specs.build("noise_schedule", "linear").name == "linear" and asked == []  # a known name: not read
        steep = specs.build("noise_schedule", {"name": "steep", "eps": 0.1})
        assert asked == ["diffusionlm.parts"] and type(steep).__module__ == "ep_parts" and steep.to_dict() == {"name": "steep", "eps": 0.1}
    finally:
        specs.registry("noise_schedule").clear()
        specs.registry("noise_schedule").update(saved)
