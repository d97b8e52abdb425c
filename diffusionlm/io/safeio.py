"""Safe files: checksummed safetensors, and trees of tensors + JSON. Nothing is ever unpickled.

    save_safetensors(path, tensors, metadata=None)   atomic write; the checksum goes in the metadata
    tensors, metadata = load_safetensors(path)        verifies it: CorruptFileError naming the file
    save_tree(stem, obj) / obj = load_tree(stem)      nested dicts / lists / tuples / numbers / strings
                                                      / tensors as stem.json + stem.safetensors
    tensor_digest(tensors)                            the checksum itself

Checksum. For the tensors sorted by name,

    sha256( for each name:  name \\0 dtype \\0 shape \\0 raw bytes (C order, native little-endian) )

written as metadata["diffusionlm.sha256"] (hex). It is a function of the tensors alone, not of
the file layout, so it is recomputed from what was loaded and compared: a flipped byte in the data
changes a tensor and so the digest; a damaged header or a truncated file fails safetensors' own
structural checks first. Both are one `CorruptFileError` (a ValueError) naming the file. A file
without the key (written by diffusionlm 0.1, or by another tool) loads unverified unless
`require_checksum=True`. The checksum detects accidents (a cut copy, bit rot), not tampering: whoever
can write the file can rewrite the checksum too (see SECURITY.md).

Trees. `save_tree` stores each tensor of a nested structure in stem.safetensors (checksummed) and
everything else in stem.json, with a tensor as {"__tensor__": key}, a tuple as {"__tuple__": [...]},
a small numpy array as {"__ndarray__": [...], "dtype": ...} and a dict whose keys are not all plain
strings (an optimizer's integer parameter ids) as {"__dict__": [[key, value], ...]}. Loading parses
JSON and tensors only: it cannot run code, whatever the files hold.

Writes are atomic: a temporary file `<name>.tmp-<pid>` in the same folder, fsynced, then
os.replace; an interrupted write leaves the previous file (or none) in place.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor

__all__ = [
    "CHECKSUM_KEY", "CorruptFileError", "tensor_digest", "save_safetensors", "load_safetensors",
    "save_tree", "load_tree", "atomic_write", "tmp_name", "fsync_dir", "first_non_finite", "load_json_object",
]

CHECKSUM_KEY = "diffusionlm.sha256"


class CorruptFileError(ValueError):
    """A file that cannot be what it claims: truncated, damaged, or failing its checksum."""


def tmp_name(path: "str | os.PathLike") -> Path:
    """The temporary name this process writes `path` under before renaming it into place."""
    path = Path(path)
    return path.with_name(f"{path.name}.tmp-{os.getpid()}")


def fsync_dir(path: "str | os.PathLike") -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _umask() -> int:
    """The process's umask (read by setting it and putting it back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write(path: "str | os.PathLike", write: Callable[[Path], None]) -> Path:
    """Call write(tmp) to create the temporary file, fsync it, rename it to `path`."""
    path = Path(path)
    tmp = tmp_name(path)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # what open() would give a new file (some writers make 0600)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        if tmp.exists():
            tmp.unlink()
        raise
    fsync_dir(path.parent)
    return path


# -- checksummed safetensors ------------------------------------------------------------------
def _raw(t: Tensor):
    flat = t.detach().cpu().contiguous().reshape(-1)
    return flat.view(torch.uint8).numpy() if flat.numel() else b""


def tensor_digest(tensors: "dict[str, Tensor]") -> str:
    """sha256 (hex) of the tensors' names, dtypes, shapes and bytes, in name order."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name]
        h.update(f"{name}\0{str(t.dtype).removeprefix('torch.')}\0{list(t.shape)}\0".encode())
        h.update(_raw(t))
    return h.hexdigest()


def _for_safetensors(tensors: "dict[str, Tensor]") -> "dict[str, Tensor]":
    """Detached CPU tensors; a copy only where safetensors needs one (shared storage, views)."""
    out, seen = {}, set()
    for k, v in tensors.items():
        if not isinstance(v, Tensor):
            raise TypeError(f"{k}: expected a tensor, got {type(v).__name__}")
        v = v.detach().cpu()
        if v.numel():
            key = v.untyped_storage().data_ptr()
            whole = v.is_contiguous() and v.storage_offset() == 0 and v.untyped_storage().nbytes() == v.numel() * v.element_size()
            if key in seen or not whole:
                v = v.clone()
            seen.add(key)
        out[k] = v
    return out


def save_safetensors(path: "str | os.PathLike", tensors: "dict[str, Tensor]", metadata: "Optional[dict[str, str]]" = None) -> Path:
    """Write `tensors` to `path` atomically, with their checksum in the metadata."""
    tensors = _for_safetensors(tensors)
    meta = {str(k): str(v) for k, v in (metadata or {}).items()}
    meta.setdefault("format", "pt")
    meta[CHECKSUM_KEY] = tensor_digest(tensors)

    def write(tmp: Path) -> None:
        save_file(tensors, str(tmp), metadata=meta)
        _sort_metadata(tmp)

    return atomic_write(path, write)


def _sort_metadata(path: Path) -> None:
    """Rewrite the header of a safetensors file with its metadata in key order, in place.

    safetensors' writer (Rust) keeps the metadata in a randomly seeded hash map, so the same
    tensors and metadata give files whose bytes differ from one save to the next; sorted, the same
    seed gives byte-identical files. The header is the same JSON reordered, so it is no longer
    than before; it is padded with spaces to its old length (as safetensors pads it), and the
    tensor data is not touched."""
    with open(path, "r+b") as f:
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n))
        if "__metadata__" in header:
            header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
        text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
        if len(text) > n:  # pragma: no cover - serde and json write the same compact JSON
            raise RuntimeError(f"{path}: the sorted safetensors header is longer than the written one")
        f.seek(8)
        f.write(text + b" " * (n - len(text)))


def load_safetensors(
    path: "str | os.PathLike", device: str = "cpu", require_checksum: bool = False
) -> "tuple[dict[str, Tensor], dict[str, str]]":
    """The tensors and metadata of `path`, verified against the checksum it carries."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a directory, not a safetensors file")
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found")
    try:
        with safe_open(str(path), "pt") as f:
            meta = dict(f.metadata() or {})
        tensors = load_file(str(path), device="cpu")
    except SafetensorError as err:
        raise CorruptFileError(f"{path} is not a readable safetensors file ({err}): truncated or damaged") from None
    want = meta.get(CHECKSUM_KEY)
    if want is None:
        if require_checksum:
            raise CorruptFileError(f"{path} carries no checksum ({CHECKSUM_KEY}): not written by this version of diffusionlm")
    elif tensor_digest(tensors) != want:
        raise CorruptFileError(f"{path} fails its checksum: the file was altered or damaged after it was written")
    if device != "cpu":
        tensors = {k: v.to(device) for k, v in tensors.items()}
    return tensors, meta


# -- trees of tensors and JSON -----------------------------------------------------------------
def _plain_key(k: Any) -> bool:
    return isinstance(k, str) and not k.startswith("__")


def _encode(obj: Any, tensors: dict, where: str) -> Any:
    if isinstance(obj, Tensor):
        key = f"t{len(tensors)}"
        tensors[key] = obj
        return {"__tensor__": key}
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj)
    if isinstance(obj, np.ndarray):
        if obj.dtype.kind not in "biuf" or obj.size > 100_000:
            raise TypeError(f"{where}: cannot store a numpy array of {obj.dtype} and size {obj.size} (convert it to a tensor)")
        return {"__ndarray__": obj.tolist(), "dtype": str(obj.dtype), "shape": list(obj.shape)}
    if isinstance(obj, (tuple, torch.Size)):
        return {"__tuple__": [_encode(v, tensors, f"{where}[{i}]") for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [_encode(v, tensors, f"{where}[{i}]") for i, v in enumerate(obj)]
    if isinstance(obj, dict):
        if all(_plain_key(k) for k in obj):
            return {k: _encode(v, tensors, f"{where}.{k}") for k, v in obj.items()}
        return {"__dict__": [[_encode(k, tensors, f"{where} key"), _encode(v, tensors, f"{where}.{k}")] for k, v in obj.items()]}
    raise TypeError(f"{where}: cannot store a {type(obj).__name__} (only tensors, numbers, strings, lists, tuples, dicts)")


def _decode(obj: Any, tensors: dict, where: str) -> Any:
    if isinstance(obj, list):
        return [_decode(v, tensors, where) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if "__tensor__" in obj:
        key = obj["__tensor__"]
        if key not in tensors:
            raise CorruptFileError(f"{where}: refers to tensor {key!r}, which its .safetensors file lacks")
        return tensors[key]
    if "__tuple__" in obj:
        return tuple(_decode(v, tensors, where) for v in obj["__tuple__"])
    if "__ndarray__" in obj:
        return np.asarray(obj["__ndarray__"], dtype=np.dtype(obj["dtype"])).reshape(obj["shape"])
    if "__dict__" in obj:
        out = {}
        for k, v in obj["__dict__"]:
            k = _decode(k, tensors, where)
            out[tuple(k) if isinstance(k, list) else k] = _decode(v, tensors, where)
        return out
    return {k: _decode(v, tensors, where) for k, v in obj.items()}


def save_tree(stem: "str | os.PathLike", obj: Any) -> "tuple[Path, Path]":
    """Write `obj` as stem.json (structure) and stem.safetensors (its tensors, checksummed)."""
    stem = Path(stem)
    tensors: dict[str, Tensor] = {}
    doc = _encode(obj, tensors, stem.name)
    text = json.dumps({"format": 1, "tree": doc})
    st = save_safetensors(stem.with_name(stem.name + ".safetensors"), tensors)
    js = atomic_write(stem.with_name(stem.name + ".json"), lambda tmp: tmp.write_text(text))
    return js, st


def load_json_object(path: "str | os.PathLike") -> dict:
    """A JSON file holding an object; FileNotFoundError, or CorruptFileError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found")
    try:
        doc = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CorruptFileError(f"{path} is not valid JSON ({err}): truncated or damaged") from None
    if not isinstance(doc, dict):
        raise CorruptFileError(f"{path} does not hold a JSON object")
    return doc


def load_tree(stem: "str | os.PathLike", device: str = "cpu") -> Any:
    """Read back what `save_tree(stem, obj)` wrote (JSON and verified tensors only)."""
    stem = Path(stem)
    js = stem.with_name(stem.name + ".json")
    doc = load_json_object(js)
    if doc.get("format") != 1 or "tree" not in doc:
        raise CorruptFileError(f"{js} is not a diffusionlm state file (no format 1 tree)")
    tensors, _ = load_safetensors(stem.with_name(stem.name + ".safetensors"), device=device, require_checksum=True)
    return _decode(doc["tree"], tensors, js.name)


def first_non_finite(tensors: "dict[str, Tensor]") -> Optional[str]:
    """The name of the first floating tensor holding a NaN or an infinity, or None.

    Screened with one fused L2 norm per tensor (torch._foreach_norm: NaN and inf propagate into
    it); only when a norm is not finite are those tensors checked element by element, since a norm
    also overflows for huge finite values (|x| > ~1e19 in float32), which are not reported."""
    named = [(k, v.detach()) for k, v in tensors.items()
             if isinstance(v, Tensor) and v.is_floating_point() and v.numel()]
    if not named:
        return None
    norms = torch._foreach_norm([v for _, v in named], 2)
    if bool(torch.stack([n.float().cpu() for n in norms]).isfinite().all()):
        return None
    for (k, v), n in zip(named, norms):
        if not bool(torch.isfinite(n)) and not bool(torch.isfinite(v).all()):
            return k
    return None
