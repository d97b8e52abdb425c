"""diffusionlm.io.safeio: checksummed safetensors and tensor + JSON trees (nothing unpickled)."""
import json
import random

import numpy as np
import pytest
import torch

from diffusionlm.models import DiffusionTransformer, TransformerConfig
from diffusionlm.io.safeio import (
    CHECKSUM_KEY, CorruptFileError, load_safetensors, load_tree, save_safetensors, save_tree, tensor_digest,
)


def tensors():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(3, 4, generator=g)
    return {"a": a, "row": a[1], "ids": torch.arange(7), "bf16": torch.randn(5, generator=g).bfloat16(),
            "flag": torch.tensor([True, False]), "scalar": torch.tensor(2.5), "empty": torch.zeros(0, 3)}


def flip(path, offset):
    raw = bytearray(path.read_bytes())
    raw[offset] ^= 0x01
    path.write_bytes(bytes(raw))


def data_start(path):
    return 8 + int.from_bytes(path.read_bytes()[:8], "little")


def test_round_trip_with_views_and_dtypes(tmp_path):
    t = tensors()
    save_safetensors(tmp_path / "x.safetensors", t, {"note": "hi"})
    back, meta = load_safetensors(tmp_path / "x.safetensors", require_checksum=True)
    assert meta["note"] == "hi" and meta[CHECKSUM_KEY] == tensor_digest(t)
    assert back.keys() == t.keys() and all(torch.equal(back[k], t[k]) and back[k].dtype == t[k].dtype for k in t)
    assert not list(tmp_path.glob("*.tmp-*"))


def test_the_digest_sees_values_names_dtypes_and_shapes():
    t = tensors()
    d = tensor_digest(t)
    assert tensor_digest(dict(reversed(list(t.items())))) == d  # order of the dict: irrelevant
    for change in (
        lambda u: u.__setitem__("ids", torch.arange(7).flip(0)),
        lambda u: u.__setitem__("renamed", u.pop("ids")),
        lambda u: u.__setitem__("ids", torch.arange(7).int()),
        lambda u: u.__setitem__("a", u["a"].reshape(4, 3)),
    ):
        u = dict(t)
        change(u)
        assert tensor_digest(u) != d


def test_a_flipped_byte_anywhere_in_the_data_is_reported_naming_the_file(tmp_path):
    f = tmp_path / "w.safetensors"
    save_safetensors(f, tensors())
    size, start = f.stat().st_size, data_start(f)
    for offset in range(start, size, 7):
        save_safetensors(f, tensors())
        flip(f, offset)
        with pytest.raises(CorruptFileError, match=rf"^{f} fails its checksum"):
            load_safetensors(f)


def test_damaged_headers_and_truncations_are_one_clear_error(tmp_path):
    f = tmp_path / "w.safetensors"
    save_safetensors(f, tensors())
    good = f.read_bytes()
    start = data_start(f)
    cases = {"cut in the data": good[:-9], "cut in the header": good[: start - 20], "cut in the length": good[:5],
             "empty": b"", "header length": b"\xff" * 8 + good[8:], "not JSON": good[:8] + b"@" * (start - 8) + good[start:]}
    for what, raw in cases.items():
        f.write_bytes(raw)
        with pytest.raises(CorruptFileError, match=rf"^{f} ") as err:
            load_safetensors(f)
        assert "\n" not in str(err.value), what
    with pytest.raises(IsADirectoryError, match="is a directory"):
        load_safetensors(tmp_path)
    with pytest.raises(FileNotFoundError, match="nope.safetensors not found"):
        load_safetensors(tmp_path / "nope.safetensors")


def test_a_file_without_checksum_loads_unless_one_is_required(tmp_path):
    from safetensors.torch import save_file

    f = tmp_path / "plain.safetensors"
    save_file({"a": torch.ones(2)}, str(f))
    assert torch.equal(load_safetensors(f)[0]["a"], torch.ones(2))
    with pytest.raises(CorruptFileError, match="carries no checksum"):
        load_safetensors(f, require_checksum=True)


def test_trees_round_trip_optimizer_and_rng_state(tmp_path):
    p = torch.nn.Parameter(torch.randn(3, 2))
    opt = torch.optim.AdamW([p], lr=1e-3, betas=(0.8, 0.9))
    p.sum().backward()
    opt.step()
    random.seed(3)
    np.random.seed(3)
    tree = {"optimizer": opt.state_dict(), "python": random.getstate(), "numpy": np.random.get_state(),
            "nested": {"__tensor__": "not a reference", 1: (2, None, float("inf"))}}
    save_tree(tmp_path / "state", tree)
    back = load_tree(tmp_path / "state")
    assert back["optimizer"]["param_groups"] == opt.state_dict()["param_groups"]
    st, st0 = back["optimizer"]["state"][0], opt.state_dict()["state"][0]
    assert all(torch.equal(st[k], st0[k]) for k in st0)
    assert back["python"] == random.getstate()
    assert back["nested"] == {"__tensor__": "not a reference", 1: (2, None, float("inf"))}
    np.random.set_state(back["numpy"])
    assert np.random.rand() == (np.random.seed(3), np.random.rand())[1]
    opt2 = torch.optim.AdamW([torch.nn.Parameter(p.detach().clone())], lr=1e-3)
    opt2.load_state_dict(back["optimizer"])
    # the JSON half is checked too: damage is an error, never code
    js = tmp_path / "state.json"
    js.write_text(js.read_text()[:-3])
    with pytest.raises(CorruptFileError, match="state.json is not valid JSON"):
        load_tree(tmp_path / "state")
    with pytest.raises(TypeError, match=r"state.x: cannot store a object"):
        save_tree(tmp_path / "state", {"x": object()})


def test_save_pretrained_checksums_and_from_pretrained_verifies(tmp_path):
    model = DiffusionTransformer(TransformerConfig(vocab_size=11, n_layers=1, n_heads=2, hidden=16, cond_dim=8,
                                                   max_positions=8))
    model.save_pretrained(tmp_path / "m")
    meta = json.loads((tmp_path / "m" / "config.json").read_text())
    assert meta["vocab_size"] == 11
    _, st_meta = load_safetensors(tmp_path / "m" / "model.safetensors", require_checksum=True)
    back = DiffusionTransformer.from_pretrained(tmp_path / "m")
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), back.state_dict().values()))
    w = tmp_path / "m" / "model.safetensors"
    flip(w, data_start(w) + 3)
    with pytest.raises(CorruptFileError, match=rf"{w} fails its checksum"):
        DiffusionTransformer.from_pretrained(tmp_path / "m")


def test_first_non_finite_is_exact():
    from diffusionlm.io.safeio import first_non_finite

    t = {"a": torch.ones(3), "ids": torch.arange(3), "empty": torch.zeros(0), "huge": torch.full((4,), 1e30)}
    assert first_non_finite(t) is None  # a huge but finite weight overflows a norm: not reported
    for bad in (float("nan"), float("inf"), -float("inf")):
        u = {**t, "b": torch.tensor([1.0, bad]).bfloat16(), "c": torch.tensor([bad])}
        assert first_non_finite(u) == "b"


def test_a_flipped_byte_in_a_saved_composition_is_one_line_naming_the_file(tmp_path, capsys):
    from diffusionlm.cli import main
    from diffusionlm.data import load_tokenizer
    from diffusionlm.lm import DiffusionLM
    from diffusionlm.processes import Absorb
    from diffusionlm.schedules import Flat

    proc = Absorb(259)
    model = DiffusionTransformer(TransformerConfig(vocab_size=proc.model_vocab_size, n_layers=1, n_heads=2, hidden=16,
                                                   cond_dim=8, max_positions=16))
    DiffusionLM(model, proc, Flat()).save_pretrained(tmp_path / "m", tokenizer=load_tokenizer("byte"))
    w = tmp_path / "m" / "backbone" / "model.safetensors"
    flip(w, data_start(w) + 11)
    assert main(["sample", "--model", str(tmp_path / "m"), "--length", "8"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{w} fails its checksum" in err, err
