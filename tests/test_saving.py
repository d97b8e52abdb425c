"""Saving leaves nothing behind when it fails, and the same tensors give the same bytes (issue 25,
items 6 and 8)."""
import errno
import hashlib

import pytest
import torch

from diffusionlm.models import DiffusionTransformer, TransformerConfig
from diffusionlm.io.safeio import load_safetensors, save_safetensors
from diffusionlm.training import checkpoint
from diffusionlm.training.checkpoint import latest_checkpoint, save_checkpoint


def _model(seed=0) -> DiffusionTransformer:
    torch.manual_seed(seed)
    return DiffusionTransformer(TransformerConfig.preset("tiny", vocab_size=17, n_layers=1, hidden=32, n_heads=2, cond_dim=16))


def _disk_full(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.parametrize("failing", ["save_safetensors", "save_tree", "atomic_write"])
def test_a_failed_checkpoint_save_removes_its_temporaries(tmp_path, monkeypatch, failing):
    state = _model().state_dict()
    good = save_checkpoint(tmp_path, 1, state, {"x": 1}, {"step": 1})
    monkeypatch.setattr(checkpoint, failing, _disk_full)
    with pytest.raises(OSError, match="No space left"):
        save_checkpoint(tmp_path, 2, state, {"x": 1}, {"step": 2})
    assert not list(tmp_path.glob("*.tmp-*")), list(tmp_path.iterdir())
    assert latest_checkpoint(tmp_path) == good
    assert sorted(p.name for p in tmp_path.iterdir()) == ["LATEST", "checkpoint-000001"]


def test_a_failed_safetensors_write_removes_its_temporary(tmp_path, monkeypatch):
    from diffusionlm.io import safeio

    def half_written(tensors, filename, metadata=None):
        open(filename, "wb").write(b"\0" * 100)
        _disk_full()

    monkeypatch.setattr(safeio, "save_file", half_written)  # safetensors' writer, as safeio calls it
    with pytest.raises(OSError, match="No space left"):
        save_safetensors(tmp_path / "w.safetensors", {"a": torch.ones(3)})
    assert list(tmp_path.iterdir()) == []


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_same_tensors_and_metadata_give_byte_identical_files(tmp_path):
    t = {"b": torch.arange(6.0).reshape(2, 3), "a": torch.ones(4, dtype=torch.int64)}
    metas = [{"zeta": "1", "alpha": "2", "mid": "é"}, {"mid": "é", "alpha": "2", "zeta": "1"}]
    hashes = set()
    for i in range(16):  # the Rust writer orders metadata by a randomly seeded hash map
        path = tmp_path / f"{i}.safetensors"
        save_safetensors(path, t, metas[i % 2])
        hashes.add(_sha(path))
        back, meta = load_safetensors(path, require_checksum=True)
        assert meta["mid"] == "é" and all(torch.equal(back[k], t[k]) for k in t)
    assert len(hashes) == 1


def test_same_seed_same_model_file(tmp_path):
    hashes = set()
    for i in range(6):
        _model(seed=3).save_pretrained(tmp_path / str(i))
        hashes.add(_sha(tmp_path / str(i) / "model.safetensors"))
    assert len(hashes) == 1
