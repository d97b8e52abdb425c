"""The loader gate (diffusionlm.trust; issue 25 items 1-5): folders from elsewhere are refused in
one line, before anything is allocated or any code could run, when they point outside themselves,
hold links, carry non-finite or oversized configs, do not hold exactly the tensors their config
needs, hold non-finite weights, or ask for custom code."""
import json
import math
import os
import shutil
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from diffusionlm.io import hub
from diffusionlm.io.hub import load_model
from diffusionlm.models import DiffusionTransformer, TransformerConfig
from diffusionlm.io.safeio import load_safetensors, save_safetensors
from diffusionlm.training.checkpoint import load_checkpoint, load_model_weights, save_checkpoint
from diffusionlm.trust import UntrustedFolderError

from test_hub import TOK, hf_dir, llama_base, tiny_composition  # noqa: F401  (fixtures too)

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")


@pytest.fixture(scope="module")
def comp(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("comp")
    tiny_composition().save_pretrained(path, tokenizer=TOK, training={"data": {"length": 32}})
    return path


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _edit_json(file: Path, **changes) -> None:
    doc = json.loads(file.read_text())
    for k, v in changes.items():
        *path, last = k.split("__")
        d = doc
        for p in path:
            d = d[p]
        d[last] = v
    file.write_text(json.dumps(doc))


def _refused(spec, fragment: str, seconds: float = 1.0) -> None:
    t = time.perf_counter()
    with pytest.raises(ValueError) as err:
        load_model(spec)
    took = time.perf_counter() - t
    line = str(err.value)
    assert fragment in line and "\n" not in line, line
    assert took < seconds, f"refused after {took:.2f} s"


# -- saved compositions ------------------------------------------------------------------------
def test_backbone_path_out_of_the_folder_is_refused(tmp_path, comp):
    outside = _copy(comp / "backbone", tmp_path / "elsewhere")
    for i, rel in enumerate([str(outside), "../elsewhere"]):
        bad = _copy(comp, tmp_path / f"c{i}")
        _edit_json(bad / "config.json", backbone__path=rel)
        _refused(bad, "must be a relative path inside")


def test_symlinked_backbone_or_weights_are_refused(tmp_path, comp):
    outside = _copy(comp / "backbone", tmp_path / "elsewhere")
    a = _copy(comp, tmp_path / "a")
    shutil.rmtree(a / "backbone")
    (a / "backbone").symlink_to(outside, target_is_directory=True)
    _refused(a, "is a symbolic link")
    b = _copy(comp, tmp_path / "b")
    (b / "backbone" / "model.safetensors").unlink()
    (b / "backbone" / "model.safetensors").symlink_to(outside / "model.safetensors")
    _refused(b, "is a symbolic link")


@pytest.mark.parametrize("changes", [{"n_layers": 10**6}, {"hidden": 10**7}, {"vocab_size": 10**11, "input_vocab_size": 10**11 + 1}])
def test_oversized_backbone_config_is_refused_before_allocating(tmp_path, comp, changes):
    bad = _copy(comp, tmp_path / "big")
    _edit_json(bad / "backbone" / "config.json", **changes)
    _refused(bad, "implies", seconds=1.0)


@pytest.mark.parametrize("field", ["rope_theta", "mlp_ratio", "layer_norm_eps", "init_std"])
def test_non_finite_backbone_config_is_refused(tmp_path, comp, field):
    bad = _copy(comp, tmp_path / "nan")
    text = (bad / "backbone" / "config.json").read_text()
    doc = json.loads(text)
    doc[field] = float("nan")
    (bad / "backbone" / "config.json").write_text(json.dumps(doc))  # json writes NaN
    _refused(bad, field)


@pytest.mark.parametrize("field,value", [("mlp_ratio", math.nan), ("mlp_ratio", math.inf), ("layer_norm_eps", math.inf),
                                         ("layer_norm_eps", math.nan), ("layer_norm_eps", 0.0), ("init_std", math.nan),
                                         ("rope_theta", math.nan), ("rope_theta", -1.0), ("time_scale", math.inf),
                                         ("weighted_embedding_gamma", math.nan)])
def test_transformer_config_refuses_non_finite_values(field, value):
    kw = {"mask_id": 0} if field == "weighted_embedding_gamma" else {}
    with pytest.raises(ValueError, match=field):
        TransformerConfig(vocab_size=8, **kw, **{field: value})


def _resave(file: Path, edit) -> None:
    """Rewrite a weights file with `edit` applied and its checksum recomputed (an attacker's copy)."""
    tensors, _ = load_safetensors(file)
    edit(tensors)
    save_safetensors(file, tensors)


@pytest.mark.parametrize("edit,fragment", [
    # fewer values than the config implies: refused from the header, before the model is built
    (lambda t: t.pop("tok_emb.weight"), "implies at least 20,800 parameters but the weights hold 12,480"),
    (lambda t: t.update({"norm_f.weight": torch.ones(7)}), "implies at least"),
    (lambda t: t.update({"norm_f.weight": torch.ones(33)}), "tensor norm_f.weight has shape [33], the config needs [32]"),
    (lambda t: t.update({"tok_emb.weights": t.pop("tok_emb.weight")}), "lacks tok_emb.weight and has unexpected tok_emb.weights"),
    (lambda t: t.update({"extra": torch.ones(1)}), "has unexpected extra"),
])
def test_composition_weights_must_be_exactly_the_configs(tmp_path, comp, edit, fragment):
    bad = _copy(comp, tmp_path / "w")
    _resave(bad / "backbone" / "model.safetensors", edit)
    _refused(bad, fragment)


def test_transposed_tensor_is_refused(tmp_path, comp):
    bad = _copy(comp, tmp_path / "t")
    w = bad / "backbone" / "model.safetensors"
    key = next(k for k, v in load_safetensors(w)[0].items() if v.dim() == 2 and v.shape[0] != v.shape[1])
    _resave(w, lambda t: t.update({key: t[key].t().contiguous()}))
    _refused(bad, f"tensor {key} has shape")


def test_non_finite_weights_are_refused(tmp_path, comp):
    bad = _copy(comp, tmp_path / "nanw")
    _resave(bad / "backbone" / "model.safetensors", lambda t: t["norm_f.weight"].__setitem__(0, float("nan")))
    _refused(bad, "NaN or infinite")


def test_schedule_with_10_to_12_steps_is_refused(tmp_path, comp):
    bad = _copy(comp, tmp_path / "steps")
    _edit_json(bad / "config.json", composition__schedule={"name": "flat", "steps": 10**12})
    t = time.perf_counter()
    with pytest.raises(ValueError, match="steps"):
        m = load_model(bad)
        m.lm.schedule.table(32)
    assert time.perf_counter() - t < 1.0


# -- plain Hugging Face folders ----------------------------------------------------------------
def test_hf_auto_map_is_refused_before_transformers_could_ask(tmp_path, hf_dir, monkeypatch):  # noqa: F811
    def no_prompt(*a, **k):
        raise AssertionError("transformers prompted")

    monkeypatch.setattr("builtins.input", no_prompt)
    marker = tmp_path / "ran"
    for i, model_type in enumerate(["evil", "gpt2"]):
        bad = _copy(hf_dir, tmp_path / f"remote{i}")
        (bad / "modeling_evil.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
        _edit_json(bad / "config.json", model_type=model_type,
                   auto_map={"AutoConfig": "modeling_evil.EvilConfig", "AutoModelForCausalLM": "modeling_evil.Evil"})
        _refused(bad, "auto_map" if model_type == "gpt2" else "auto_map")
        doc = json.loads((bad / "config.json").read_text())
        doc.pop("auto_map")
        (bad / "config.json").write_text(json.dumps(doc))
        if model_type == "evil":
            _refused(bad, "not an architecture transformers knows")
    assert not marker.exists()


@pytest.mark.parametrize("changes", [{"n_layer": 10**6}, {"n_embd": 10**7}, {"vocab_size": 10**11}])
def test_oversized_hf_config_is_refused_before_allocating(tmp_path, hf_dir, changes):  # noqa: F811
    bad = _copy(hf_dir, tmp_path / "big")
    _edit_json(bad / "config.json", **changes)
    _refused(bad, "implies", seconds=1.0)


def test_hf_non_finite_config_is_refused(tmp_path, hf_dir):  # noqa: F811
    bad = _copy(hf_dir, tmp_path / "nan")
    doc = json.loads((bad / "config.json").read_text())
    doc["layer_norm_epsilon"] = float("nan")
    (bad / "config.json").write_text(json.dumps(doc))
    _refused(bad, "layer_norm_epsilon")


def test_hf_pickle_weights_are_refused_in_one_line(tmp_path, hf_dir):  # noqa: F811
    bad = _copy(hf_dir, tmp_path / "pickle")
    (bad / "model.safetensors").unlink()
    (bad / "pytorch_model.bin").write_bytes(b"\x80\x04not opened")
    _refused(bad, "as a pickle (pytorch_model.bin)")


def test_hf_symlinked_weights_are_refused(tmp_path, hf_dir):  # noqa: F811
    bad = _copy(hf_dir, tmp_path / "link")
    (bad / "model.safetensors").unlink()
    (bad / "model.safetensors").symlink_to(hf_dir / "model.safetensors")
    _refused(bad, "is a symbolic link")


def _hf_resave(file: Path, edit) -> None:
    tensors = load_file(str(file))
    edit(tensors)
    save_file(tensors, str(file), metadata={"format": "pt"})


def test_hf_removed_transposed_and_nan_tensors_are_refused(tmp_path, hf_dir):  # noqa: F811
    key = next(k for k, v in load_file(str(hf_dir / "model.safetensors")).items() if v.dim() == 2 and v.shape[0] != v.shape[1])
    cases = [(lambda t: t.pop(key), f"lacks {key}"),
             (lambda t: t.update({key: t[key].t().contiguous()}), f"tensor {key} has shape"),
             (lambda t: t[key].__setitem__((0, 0), float("inf")), "NaN or infinite")]
    for i, (edit, fragment) in enumerate(cases):
        bad = _copy(hf_dir, tmp_path / f"hf{i}")
        _hf_resave(bad / "model.safetensors", edit)
        _refused(bad, fragment, seconds=10)


# -- run folders and checkpoints ---------------------------------------------------------------
def _tiny_model() -> DiffusionTransformer:
    torch.manual_seed(0)
    return DiffusionTransformer(TransformerConfig.preset("tiny", vocab_size=TOK.vocab_size + 1, n_layers=1, hidden=32,
                                                         n_heads=2, cond_dim=16, max_positions=64))


def _checkpoint(tmp: Path, state: dict) -> Path:
    return save_checkpoint(tmp, 1, state, {"optimizer": {}}, {"step": 1})


def test_checkpoint_without_its_tied_embedding_is_refused(tmp_path):
    model = _tiny_model()
    state = dict(model.state_dict())
    state.pop("tok_emb.weight")
    ck = _checkpoint(tmp_path / "run", state)
    with pytest.raises(ValueError, match="lacks weights.*tok_emb.weight"):
        load_model_weights(_tiny_model(), ck)


def test_checkpoint_with_nan_weights_is_not_resumed(tmp_path):
    model = _tiny_model()
    ck = _checkpoint(tmp_path / "run", model.state_dict())
    state = dict(model.state_dict())
    state["norm_f.weight"] = state["norm_f.weight"].clone()
    state["norm_f.weight"][0] = float("nan")
    save_safetensors(ck / "model.safetensors", state)  # the checksum recomputed: only the gate can see it
    for load in (load_checkpoint, lambda p: load_model_weights(_tiny_model(), p)):
        with pytest.raises(ValueError, match="NaN or infinite"):
            load(ck)


def test_symlinked_checkpoint_file_is_refused(tmp_path):
    model = _tiny_model()
    ck = _checkpoint(tmp_path / "run", model.state_dict())
    other = _checkpoint(tmp_path / "other", model.state_dict())
    (ck / "model.safetensors").unlink()
    (ck / "model.safetensors").symlink_to(other / "model.safetensors")
    for load in (load_checkpoint, lambda p: load_model_weights(_tiny_model(), p)):
        with pytest.raises(ValueError, match="symbolic link"):
            load(ck)


def test_symlinked_run_model_folder_is_refused(tmp_path, comp):
    from diffusionlm.config import RunConfig

    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json").write_text(json.dumps(RunConfig().to_dict()))
    (run / "model").symlink_to(comp, target_is_directory=True)
    _refused(run, "is a symbolic link")


# -- transformers never runs code ---------------------------------------------------------------
def test_every_transformers_loader_call_passes_trust_remote_code_false():
    """Static: each from_pretrained / from_config / for_model call of a transformers Auto class (or
    a tokenizer class) in the package names trust_remote_code=False."""
    import ast

    root = Path(__file__).resolve().parents[1] / "diffusionlm"
    missing = []
    for file in root.rglob("*.py"):
        tree = ast.parse(file.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                    and node.func.attr in ("from_pretrained", "from_config") and isinstance(node.func.value, ast.Name) \
                    and node.func.value.id.startswith(("Auto", "PreTrainedTokenizer")):
                kw = {k.arg: k.value for k in node.keywords}
                v = kw.get("trust_remote_code")
                if not (isinstance(v, ast.Constant) and v.value is False):
                    missing.append(f"{file.relative_to(root)}:{node.lineno}")
    assert not missing, missing


def test_lora_adapter_must_be_safetensors_and_no_link(tmp_path, llama_base):  # noqa: F811
    from test_hub import lora_composition

    good = tmp_path / "good"
    lora_composition(llama_base).save_pretrained(good, tokenizer=TOK)
    a = _copy(good, tmp_path / "a")
    (a / "backbone" / "adapter_model.safetensors").unlink()
    (a / "backbone" / "adapter_model.bin").write_bytes(b"\x80\x04never opened")
    _refused(a, "adapter_model.safetensors", seconds=30)
    b = _copy(good, tmp_path / "b")
    (b / "backbone" / "adapter_model.safetensors").unlink()
    (b / "backbone" / "adapter_model.safetensors").symlink_to(good / "backbone" / "adapter_model.safetensors")
    _refused(b, "is a symbolic link", seconds=30)


def test_security_md_table_names_tests_that_exist():
    """Every test SECURITY.md's attack table cites exists (a renamed test cannot orphan a row)."""
    import re

    root = Path(__file__).resolve().parents[1]
    table = (root / "SECURITY.md").read_text().split("## Attack classes", 1)[1].split("\n## ", 1)[0]
    rows = [l for l in table.splitlines() if re.match(r"\| \d \|", l)]
    assert [int(l.split("|")[1]) for l in rows] == list(range(1, 9))
    missing = []
    for row in rows:
        file = None
        for ref in re.findall(r"`(tests/[\w/]+\.py)?(::\w+)?`", row.split("|")[-2]):
            file = ref[0] or file
            if ref[1] and f"def {ref[1][2:]}(" not in (root / file).read_text():
                missing.append(f"{file}{ref[1]}")
    assert not missing, missing


def test_an_architecture_that_cannot_be_built_on_meta_still_loads_and_is_checked_after(tmp_path, hf_dir, monkeypatch):  # noqa: F811
    import transformers

    real = transformers.AutoModelForCausalLM.from_config

    def no_meta(*a, **k):
        if torch.empty(0).device.type == "meta":
            raise NotImplementedError("Cannot copy out of meta tensor")
        return real(*a, **k)

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_config", no_meta)
    assert load_model(hf_dir).kind == "hf"
    key = next(k for k, v in load_file(str(hf_dir / "model.safetensors")).items() if v.dim() == 2 and v.shape[0] != v.shape[1])
    bad = _copy(hf_dir, tmp_path / "removed")
    _hf_resave(bad / "model.safetensors", lambda t: t.pop(key))
    _refused(bad, f"missing keys ['{key}']", seconds=10)
