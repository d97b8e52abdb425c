"""The README's Python examples run: each ```python block of README.md is executed here, in
order, in one namespace (what a reader would paste), with what a block leaves to the reader
given first: `my_lm` (section "The main job": a DiffusionLM composed in Python), `tok` (section
"Save, load, share"). Two things are made small or local, and said so: the comparison job runs
with a few steps and tiny sizes instead of its 4-minute budget, and the Hub upload is checked
to exist, not run (no network in tests)."""
import re
from pathlib import Path

import pytest
import torch

import diffusionlm
from diffusionlm.data import load_tokenizer
from diffusionlm.lm import DiffusionLM
from diffusionlm.models import DiffusionTransformer, TransformerConfig
from diffusionlm.processes import Absorb
from diffusionlm.schedules import Block

README = Path(__file__).resolve().parents[1] / "README.md"
SMALL = {"train_steps": 1, "budget_minutes": None, "length": 16, "batch_size": 2, "eval_blocks": 2, "eval_samples": 2,
         "eval_batch_size": 2, "num_samples": 2, "progress": False,
         "backbone": {"name": "transformer", "preset": "tiny", "n_layers": 1, "hidden": 32, "n_heads": 2, "cond_dim": 16}}


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_the_readme_has_the_examples_this_test_runs():
    blocks = python_blocks()
    assert len(blocks) == 4
    assert "diffusionlm.compare(" in blocks[0] and "lm.nll_bound" in blocks[1]
    assert "diffusionlm.register" in blocks[2] and "from_pretrained" in blocks[3]


@pytest.fixture
def own_registries():
    """The README registers a sampler of its own: the registries are restored afterwards."""
    from diffusionlm import specs

    saved = {kind: dict(specs.registry(kind)) for kind in specs.KINDS}
    yield
    for kind, reg in saved.items():
        specs.registry(kind).clear()
        specs.registry(kind).update(reg)


def test_every_python_example_of_the_readme_runs(tmp_path, monkeypatch, own_registries):
    monkeypatch.chdir(tmp_path)
    N = load_tokenizer("byte").vocab_size
    torch.manual_seed(0)
    my_lm = DiffusionLM(DiffusionTransformer(TransformerConfig(vocab_size=N + 1, max_positions=16, n_layers=1, hidden=32,
                                                               n_heads=2)), Absorb(N), Block(4, 2))
    real_compare = diffusionlm.compare.compare
    ran = {}

    def small_compare(spec=None, **kw):  # the README's call, with the job made small (module docstring)
        ran.update(real_compare(spec, **{**kw, **SMALL}))
        return ran

    monkeypatch.setattr(type(diffusionlm.compare), "__call__", lambda self, *a, **kw: small_compare(*a, **kw))
    pushed = []
    monkeypatch.setattr(DiffusionLM, "push_to_hub", lambda self, repo_id, **kw: pushed.append(repo_id))
    namespace = {"my_lm": my_lm, "tok": load_tokenizer("byte")}
    blocks = python_blocks()
    for i, block in enumerate(blocks):
        if i == 3:  # "Save, load, share" continues with the model trained in "What exists"
            namespace["lm"] = DiffusionLM(DiffusionTransformer(TransformerConfig.preset("tiny", vocab_size=N + 1)),
                                          Absorb(N), Block(16, 4))
        exec(compile(block, f"README.md python block {i + 1}", "exec"), namespace)
    assert len(ran["variants"]) == 3 and {"gamma_slide", "mdlm"} <= set(ran["variants"])
    assert {r["train_steps"] for r in ran["variants"].values()} == {1}
    bound = namespace["bound"]
    assert bound.nll.shape == (8,) and bool((bound.stderr >= 0).all())
    assert isinstance(namespace["lm"], DiffusionLM) and namespace["lm"].tokenizer is not None
    assert pushed == ["user/mdlm-stdlib"]
    assert (tmp_path / "out" / "mdlm" / "config.json").is_file()
