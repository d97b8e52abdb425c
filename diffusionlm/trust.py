"""The loader gate: what every loading path checks in a folder it did not write, BEFORE it reads
tensors or builds a model. One refusal is one :class:`UntrustedFolderError` (a ValueError) naming
the file and the problem, so the command line reports it as one line.

    path = confined(folder, "backbone", "backbone.path")   # relative, inside folder, no symlink on the way
    no_symlink(folder / "model.safetensors")               # the file itself is not a link
    check_finite_tree(config, "config.json")                # no NaN / inf anywhere in a JSON config
    header = safetensors_header(file)                       # {name: (dtype, shape)}, read without the data
    check_size(implied, header_numel(header), file)         # the config's parameter count vs the file's
    check_tensors(expected, header, file)                   # exact key set and shapes
    check_hf_config(cfg, file)                              # auto_map / unknown model_type refused
    hf_weight_files(folder)                                 # safetensors only: a pickle is refused
    check_weights_finite(state, what)                       # NaN / inf weights refused

Why a gate. A model folder is data from elsewhere (SECURITY.md): it must not make us read files
outside it (an absolute or `../` path, a symbolic link), allocate what its config says without
the weights to back it (10^6 layers: minutes, then the allocator), load tensors it does not
describe exactly (a removed tensor silently re-initialised, a transposed one), or run code (a
config whose `auto_map` names a `modeling_*.py`). The checks read only JSON and the safetensors
header (8 bytes of length, then at most :data:`MAX_HEADER_BYTES` of JSON), so each refusal takes
milliseconds whatever sizes the config claims.

This module imports only `io.safeio` of the package (which imports nothing of it): it sits in the
lowest layer beside it, so models, the hub and the trainer all use it.
"""
from __future__ import annotations

import json
import math
import os
import struct
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional

import torch
import transformers

from .io.safeio import CorruptFileError, first_non_finite, load_json_object

__all__ = [
    "UntrustedFolderError", "confined", "no_symlink", "check_finite_tree", "safetensors_header", "header_numel",
    "check_size", "check_tensors", "check_hf_config", "hf_weight_files", "hf_min_parameters", "check_weights_finite",
    "MAX_HEADER_BYTES", "PICKLE_SUFFIXES",
]

#: the largest safetensors header read (the format's own readers cap it at 100 MB)
MAX_HEADER_BYTES = 100_000_000
#: weight files that are pickles (torch.save): never opened
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
_DTYPE_BYTES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
                "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}


class UntrustedFolderError(ValueError):
    """A model folder refused by the loader gate: a path out of it, a link, a config out of range,
    sizes the weights do not back, tensors that do not fit, or code it asks to run."""


class _DamagedHeader(UntrustedFolderError, CorruptFileError):
    """A safetensors header that is not one (truncated or damaged): also safeio's CorruptFileError."""


# -- paths -------------------------------------------------------------------------------------
def no_symlink(path: "str | os.PathLike", what: Optional[str] = None) -> Path:
    """`path`, unless it is a symbolic link (which could point anywhere: refused)."""
    path = Path(path)
    if path.is_symlink():
        raise UntrustedFolderError(f"{what or path} is a symbolic link ({path} -> {os.readlink(path)}): refused, "
                                   "a model folder must hold its own files")
    return path


def confined(root: "str | os.PathLike", rel: Any, what: str) -> Path:
    """root / rel, where `rel` (from a file in `root`) is a relative path that stays inside `root`
    with no symbolic link on the way; UntrustedFolderError naming `what` otherwise."""
    root = Path(root)
    if not isinstance(rel, str) or not rel.strip():
        raise UntrustedFolderError(f"{what} = {rel!r}: must be a relative path inside {root}")
    p = Path(rel)
    if p.is_absolute() or rel.startswith("~") or ".." in p.parts:
        raise UntrustedFolderError(f"{what} = {rel!r}: must be a relative path inside {root} (no absolute path, no '..')")
    here = root
    for part in p.parts:
        here = here / part
        no_symlink(here, what)
    if not here.resolve().is_relative_to(root.resolve()):  # pragma: no cover - covered by the checks above
        raise UntrustedFolderError(f"{what} = {rel!r} leads out of {root}")
    return here


# -- config values -----------------------------------------------------------------------------
def check_finite_tree(obj: Any, where: str) -> None:
    """Refuse a NaN or an infinity anywhere in a JSON value (Python's json reads NaN / Infinity)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        raise UntrustedFolderError(f"{where} = {obj}: must be a finite number")
    if isinstance(obj, Mapping):
        for k, v in obj.items():
            check_finite_tree(v, f"{where}.{k}")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            check_finite_tree(v, f"{where}[{i}]")


def read_json_config(file: "str | os.PathLike") -> dict:
    """A JSON object from a file that is no link, with every number finite."""
    doc = load_json_object(no_symlink(file))
    check_finite_tree(doc, Path(file).name)
    return doc


# -- the safetensors header --------------------------------------------------------------------
def safetensors_header(file: "str | os.PathLike") -> "dict[str, tuple[str, tuple[int, ...]]]":
    """{tensor name: (dtype, shape)} of a safetensors file, from its header alone, checked against
    the file's size (the data the header describes must be exactly what follows it)."""
    file = no_symlink(file)
    size = file.stat().st_size
    with open(file, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise _DamagedHeader(f"{file} is not a safetensors file (shorter than its 8-byte header length)")
        (n,) = struct.unpack("<Q", head)
        if n > min(MAX_HEADER_BYTES, size - 8):
            raise _DamagedHeader(f"{file} is not a safetensors file (header of {n} bytes in a file of {size})")
        raw = f.read(n)
    try:
        doc = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise _DamagedHeader(f"{file} is not a safetensors file (its header is not JSON)") from None
    if not isinstance(doc, dict):
        raise _DamagedHeader(f"{file} is not a safetensors file (its header is not a JSON object)")
    out, end = {}, 0
    for name, info in doc.items():
        if name == "__metadata__":
            continue
        try:
            dtype, shape, (lo, hi) = info["dtype"], tuple(int(s) for s in info["shape"]), info["data_offsets"]
            nbytes = math.prod(shape) * _DTYPE_BYTES[dtype]
        except (KeyError, TypeError, ValueError):
            raise _DamagedHeader(f"{file}: tensor {name!r} has a malformed header entry") from None
        if min(shape, default=0) < 0 or hi - lo != nbytes:
            raise _DamagedHeader(f"{file}: tensor {name!r} of shape {list(shape)} does not match its data offsets")
        end = max(end, hi)
        out[name] = (dtype, shape)
    if 8 + n + end != size:
        raise _DamagedHeader(f"{file}: the header describes {end} bytes of tensors but the file holds {size - 8 - n}: "
                                   "truncated or altered")
    return out


def header_numel(header: "Mapping[str, tuple[str, tuple[int, ...]]]") -> int:
    return sum(math.prod(shape) for _, shape in header.values())


def check_size(implied: int, stored: int, what: str, exact: bool = True) -> None:
    """Refuse a config implying `implied` parameters when the weights hold `stored` (exact: must be
    equal; else `implied` is a lower bound)."""
    if implied != stored if exact else implied > stored:
        kind = "" if exact else "at least "
        raise UntrustedFolderError(f"{what}: the config implies {kind}{implied:,d} parameters but the weights hold "
                                   f"{stored:,d}: refused before allocating anything")


def check_tensors(expected: "Mapping[str, tuple[int, ...]]", header: Mapping, what: str,
                  optional: Iterable[str] = ()) -> None:
    """Exactly the tensors `expected` (name -> shape), except those in `optional` (a tied copy
    the model rebuilds from another stored tensor) which may be absent."""
    optional = set(optional)
    have = {k: tuple(v[1]) if isinstance(v, tuple) and len(v) == 2 and isinstance(v[0], str) else tuple(v)
            for k, v in header.items()}
    missing = sorted(set(expected) - set(have) - optional)
    extra = sorted(set(have) - set(expected))
    if missing or extra:
        parts = ([f"lacks {', '.join(missing[:4])}" + (f" (+{len(missing) - 4})" if len(missing) > 4 else "")] if missing else []) \
            + ([f"has unexpected {', '.join(extra[:4])}" + (f" (+{len(extra) - 4})" if len(extra) > 4 else "")] if extra else [])
        raise UntrustedFolderError(f"{what} {' and '.join(parts)}: not the weights of this model's config")
    for k, shape in have.items():
        if tuple(expected[k]) != shape:
            raise UntrustedFolderError(f"{what}: tensor {k} has shape {list(shape)}, the config needs {list(expected[k])}")


# -- Hugging Face folders ----------------------------------------------------------------------
def check_hf_config(cfg: Mapping, where: str) -> None:
    """Refuse what could make transformers run or ask to run code, before it reads the folder:
    an `auto_map` (custom classes in the folder's .py files) or a `model_type` transformers does
    not know (which only remote code could supply); and a non-finite number anywhere."""
    CONFIG_MAPPING = transformers.CONFIG_MAPPING  # transformers loads these on first use
    if "auto_map" in cfg:
        raise UntrustedFolderError(f"{where} has an auto_map (custom model code in the folder): refused, diffusionlm "
                                   "never runs code from a model folder (trust_remote_code is always off)")
    model_type = cfg.get("model_type")
    if not isinstance(model_type, str) or model_type not in CONFIG_MAPPING:
        raise UntrustedFolderError(f"{where}: model_type {model_type!r} is not an architecture transformers knows: "
                                   "refused (it would need custom code, which diffusionlm never runs)")
    check_finite_tree(dict(cfg), where)


def hf_min_parameters(cfg: Any) -> int:
    """A lower bound on the parameter count of an HF causal LM from its config object: the input
    embedding (vocab x hidden) plus one norm (hidden) per layer."""
    hidden = int(getattr(cfg, "hidden_size", 0) or 0)
    layers = int(getattr(cfg, "num_hidden_layers", 0) or 0)
    vocab = int(getattr(cfg, "vocab_size", 0) or 0)
    return vocab * hidden + layers * hidden


def hf_weight_files(folder: "str | os.PathLike") -> "list[Path]":
    """The safetensors files of an HF folder (one, or the shards its index names: each confined and
    no link). A folder whose weights are pickles only is refused without opening them."""
    folder = Path(folder)
    index = folder / "model.safetensors.index.json"
    if (folder / "model.safetensors").exists() or (folder / "model.safetensors").is_symlink():
        return [no_symlink(folder / "model.safetensors")]
    if index.exists() or index.is_symlink():
        doc = read_json_config(index)
        shards = sorted(set((doc.get("weight_map") or {}).values()))
        if not shards:
            raise UntrustedFolderError(f"{index} names no weight files")
        return [confined(folder, s, f"{index.name} shard") for s in shards]
    pickles = sorted(p.name for p in folder.iterdir() if p.name.endswith(PICKLE_SUFFIXES))
    if pickles:
        raise UntrustedFolderError(f"{folder} holds its weights as a pickle ({', '.join(pickles[:3])}), which diffusionlm "
                                   "never opens (unpickling can run code): convert it to model.safetensors")
    raise UntrustedFolderError(f"{folder} holds no model.safetensors (nor a sharded index)")


# -- tensors -----------------------------------------------------------------------------------
def check_weights_finite(tensors: Mapping, what: str) -> None:
    """Refuse weights holding a NaN or an infinity (they would sample garbage, not fail)."""
    bad = first_non_finite(dict(tensors))
    if bad is not None:
        raise UntrustedFolderError(f"{what}: tensor {bad} holds NaN or infinite values: refused")


# -- Hugging Face models, behind the gate -------------------------------------------------------
def _tied_groups(state: Mapping) -> "list[list[str]]":
    """Names of a state dict (kept as variables) that share one tensor."""
    groups: dict = {}
    for k, v in state.items():
        groups.setdefault(id(v), []).append(k)
    return [g for g in groups.values() if len(g) > 1]


def check_hf_folder(folder: "str | os.PathLike") -> None:
    """Every check on a plain Hugging Face model folder, before transformers reads it: config.json
    no link, finite, no auto_map, a known model_type; safetensors weights only (no link, shards
    inside the folder); a parameter count the weights can back (from the headers); and, on a
    model built on the meta device (nothing allocated), exactly its tensors and shapes (a tied
    copy may be absent when its twin is stored)."""
    AutoConfig, AutoModelForCausalLM = transformers.AutoConfig, transformers.AutoModelForCausalLM  # transformers loads these on first use

    folder = Path(folder)
    cfg_file = no_symlink(folder / "config.json")
    cfg = read_json_config(cfg_file)
    check_hf_config(cfg, str(cfg_file))
    files = hf_weight_files(folder)
    header: dict = {}
    for f in files:
        header.update(safetensors_header(f))
    what = str(files[0]) if len(files) == 1 else f"the weights of {folder}"
    try:
        config = AutoConfig.for_model(**cfg)
    except (TypeError, ValueError, KeyError) as err:
        raise UntrustedFolderError(f"{cfg_file}: {str(err).splitlines()[0] if str(err) else type(err).__name__}") from None
    check_size(hf_min_parameters(config), header_numel(header), what, exact=False)
    with torch.device("meta"):
        try:
            meta = AutoModelForCausalLM.from_config(config, trust_remote_code=False)
        except (TypeError, ValueError, KeyError) as err:
            raise UntrustedFolderError(f"{cfg_file}: transformers cannot build this config ({str(err).splitlines()[0]})") from None
        except (RuntimeError, NotImplementedError):  # an architecture that computes on its weights while built:
            return  # no exact pre-check; load_hf_causal_lm still refuses missing / unexpected / mismatched tensors
    state = meta.state_dict(keep_vars=True)
    prefix = getattr(meta, "base_model_prefix", "") or ""
    stored = {}
    for k, v in header.items():  # transformers accepts keys with and without the base model's prefix
        if k not in state and prefix and f"{prefix}.{k}" in state:
            k = f"{prefix}.{k}"
        stored[k] = v
    groups = _tied_groups(state)
    optional = {k for g in groups if any(n in stored for n in g) for k in g}
    check_tensors({k: tuple(v.shape) for k, v in state.items()}, stored, what, optional=optional)


def load_hf_causal_lm(name_or_path: "str | os.PathLike", **kwargs: Any) -> Any:
    """`AutoModelForCausalLM.from_pretrained` behind the gate: a local folder passes
    :func:`check_hf_folder` first; remote code is off everywhere; weights transformers reports
    missing, unexpected or mismatched, and non-finite weights, are refused in one line."""
    AutoModelForCausalLM = transformers.AutoModelForCausalLM  # transformers loads these on first use

    path = Path(os.fspath(name_or_path)).expanduser()
    local = path.is_dir() and not kwargs.get("gguf_file")
    if local:
        check_hf_folder(path)
        kwargs.setdefault("use_safetensors", True)
    try:
        model, info = AutoModelForCausalLM.from_pretrained(str(name_or_path), trust_remote_code=False,
                                                           output_loading_info=True, **kwargs)
    except RuntimeError as err:  # a size mismatch in a hub model (local folders were checked above)
        raise UntrustedFolderError(f"{name_or_path}: {str(err).splitlines()[0]}") from None
    bad = {k: sorted(info.get(k) or []) for k in ("missing_keys", "unexpected_keys", "mismatched_keys")}
    if any(bad.values()):
        shown = "; ".join(f"{k.replace('_', ' ')} {v[:4]}" for k, v in bad.items() if v)
        raise UntrustedFolderError(f"{name_or_path}: the weights do not fit the config ({shown})")
    check_weights_finite(model.state_dict(), str(name_or_path))
    return model
