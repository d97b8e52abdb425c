"""Keep, load and share models: saved compositions, and ONE loader for every kind of model.

    lm.save_pretrained("out/mdlm", tokenizer=tok)              # a saved composition (below)
    lm = DiffusionLM.from_pretrained("out/mdlm")               # or a hub id; lm.tokenizer is set
    lm.push_to_hub("me/mdlm-stdlib", tokenizer=tok)            # huggingface_hub's upload
    m = load_model("runs/x" | "out/mdlm" | "hf-dir" | "org/name", process="absorb", schedule="quench")
    m.lm, m.tokenizer, m.length, m.kind                        # what every command runs on

A **saved composition** (format version ``FORMAT_VERSION``) is a folder:

    config.json      {"format": "diffusionlm-composition", "format_version", "library_version",
                      "composition": DiffusionLM.to_dict() (name, process, schedule, layout,
                                     bos_id, settled_weight, ..., backbone: its spec, descriptive;
                                     the weights folder is what is loaded),
                      "backbone": {"kind": "transformer" | "hf", "path": "backbone", ...},
                      "tokenizer": {"class", "vocab_size", ...},
                      "training": data / steps / tokens when known, "evaluation": figures when known}
    backbone/        the backbone's own `save_pretrained` folder:
                       our transformer -> config.json + model.safetensors;
                       an HF model     -> the HF files + denoiser.json (`AutoModelForCausalLM`
                                          loads the folder alone);
                       an HF model with LoRA -> the peft adapter only + denoiser.json (peft loads it
                                          on the base; `merge=True` saves merged HF weights instead)
    tokenizer files  byte_tokenizer.json, or the HF tokenizer's own files (`AutoTokenizer` loads them)
    README.md        the model card (:func:`model_card`)

Saving, loading and uploading follow `huggingface_hub.ModelHubMixin`: :class:`SavedComposition`
is a ModelHubMixin whose `_save_pretrained` / `_from_pretrained` write and read that folder, so
`save_pretrained(dir, push_to_hub=..., repo_id=...)`, `from_pretrained(dir_or_id, revision=...,
token=...)` and `push_to_hub(repo_id, private=..., branch=..., create_pr=...)` are the mixin's own
(HfApi.create_repo + upload_folder). `DiffusionLM.save_pretrained / from_pretrained / push_to_hub` are
:func:`save_pretrained`, :func:`from_pretrained`, :func:`push_to_hub` here, late-bound
(diffusionlm.specs.provide): the composition does not import this module.

**The loader** (:func:`load_model`; `diffusionlm sample / eval / demo / compare --judge / lm-eval`):

1. :data:`MODEL_RESOLVERS`, in order, may map a short name to a local path (the hook where e.g.
   ``smollm2`` becomes a fetched model's directory: :func:`register_resolver`);
2. an existing local path is
   a run directory (``run.json``; its ``model/`` a saved composition, or older runs' backbone, or
   the newest checkpoint: :func:`diffusionlm.io.runs.load_run`), a saved composition
   (``config.json`` with the format marker) or a plain Hugging Face causal-LM directory
   (``config.json`` with a ``model_type``), wrapped as a denoiser (MASK row added) under the
   process / hyperschedule / layout given as options (default absorb, flat, shifted: DiffuGPT's
   reading of an AR checkpoint);
3. anything else is a hub id: the local HF cache first, then the Hub; with neither:
   "not found locally and no network: pass a local directory".

A trained model's process and layout are its own (giving others is an error); any model can be
run under another hyperschedule (`schedule=`).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Optional

import torch

from ..data import load_tokenizer
from ..lm import DiffusionLM
from ..masks import causal_mask_mod, dense_mask
from ..specs import build, provide
from ..trust import check_hf_folder, load_hf_causal_lm
from .client import MODEL_RESOLVERS, ModelNotFoundError, library_version, register_resolver, resolve_model_path
from .runs import DataSpec, RunConfig, build as build_run, load_run
from .saving import (
    BACKBONE_DIR,
    CARD_MARK,
    CONFIG_NAME,
    FORMAT,
    FORMAT_VERSION,
    HUB_TAGS,
    TOKENIZER_FILES,
    CompositionHubMixin,
    SavedComposition,
    build_composition,
    composition_dict,
    composition_from_v1,
    from_pretrained,
    model_card,
    push_to_hub,
    read_config,
    safetensors_errors,
    save_pretrained,
)

__all__ = [
    "FORMAT", "FORMAT_VERSION", "SavedComposition", "save_pretrained", "from_pretrained", "push_to_hub",
    "composition_from_v1", "composition_dict", "build_composition",
    "model_card", "load_model", "LoadedModel", "MODEL_RESOLVERS", "register_resolver", "resolve_model_path",
    "ModelNotFoundError", "parse_part", "load_judge", "library_version", "read_config", "safetensors_errors",
    "BACKBONE_DIR", "CARD_MARK", "CONFIG_NAME", "HUB_TAGS", "TOKENIZER_FILES", "CompositionHubMixin",
]


# ---------------------------------------------------------------------------------------------
# the loader
# ---------------------------------------------------------------------------------------------
@dataclass
class LoadedModel:
    """What a command runs on. `length`: the sequence length it was trained at (None when unknown:
    a plain HF model); `kind`: "run", "composition" or "hf"; `info`: training / evaluation facts."""

    lm: Any
    tokenizer: Any
    name: str
    kind: str
    path: Path
    length: Optional[int] = None
    info: dict = field(default_factory=dict)

    def require_length(self, length: Optional[int], option: str = "--length") -> int:
        """`length` if given, else the trained length; ValueError when neither is known."""
        if length is not None:
            if isinstance(length, bool) or not isinstance(length, int) or length < 1:
                raise ValueError(f"{option} must be an int >= 1, got {length!r}")
            limit = self.lm.max_positions
            if limit is not None and length > limit:
                raise ValueError(f"{option} {length} exceeds the model's {limit} positions")
            return length
        if self.length is None:
            raise ValueError(f"{self.name} is a plain Hugging Face model with no training length: give {option} "
                             f"(it has {self.lm.max_positions} positions)")
        return self.length


def parse_part(value: Any, what: str) -> Any:
    """A process / schedule option: a registry name ("absorb"), a JSON object
    ('{"name": "block", "width": 16}'), or a dict; None stays None."""
    if value is None or isinstance(value, dict):
        return value
    text = str(value).strip()
    if text.startswith("{"):
        try:
            out = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"--{what} {text!r} is not valid JSON: {err}") from None
        if not isinstance(out.get("name"), str):
            raise ValueError(f"--{what} {text!r} needs a \"name\"")
        return out
    return {"name": text}


def _device(device: Any) -> Any:
    if device is None:
        return None

    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"--device {device!r} is not a device (cpu, cuda, cuda:1, mps, ...)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: no CUDA device on this machine (use --device cpu)")
    if dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ValueError(f"--device {device}: MPS is not available on this machine (use --device cpu)")
    return dev


def load_model(
    spec: "str | os.PathLike",
    *,
    process: Any = None,
    schedule: Any = None,
    layout: Optional[str] = None,
    base: Any = None,
    device: Any = None,
    mask: str = "add",
    attn_implementation: str = "sdpa",
) -> LoadedModel:
    """Any kind of model, ready to run, in eval mode (module docstring). `process` / `layout`:
    for a plain HF model (default absorb / shifted); `schedule`: the hyperschedule to run under
    (default: the trained one; flat for a plain HF model); `base`: a LoRA adapter's base
    elsewhere; `device`: where to put the model."""
    dev = _device(device)
    process, schedule = parse_part(process, "process"), parse_part(schedule, "schedule")
    name = os.fspath(spec)
    path = resolve_model_path(name)
    if path.is_file():
        raise ValueError(f"{path} is a file: give a directory (a run directory, a saved composition or a Hugging Face "
                         "model directory) or a hub id")
    if (path / "run.json").is_file():
        _no_overrides(name, "run directory", process, layout)
        try:
            run, built = load_run(path, base=base)
        except safetensors_errors() as err:
            raise ValueError(f"{path}: a weights file is corrupt or truncated ({err})") from None
        loaded = LoadedModel(built.lm, built.tokenizer, name, "run", path, run.data.length,
                             getattr(built.lm, "card_info", None) or {})
    elif (path / CONFIG_NAME).is_file():
        cfg = _json(path / CONFIG_NAME)
        if cfg.get("format") == FORMAT:
            _no_overrides(name, "saved composition", process, layout)
            p = SavedComposition.from_pretrained(path, base=base).payload
            data = (p.training or {}).get("data") or {}
            loaded = LoadedModel(p.lm, p.tokenizer, name, "composition", path, data.get("length"), p.lm.card_info)
        elif cfg.get("model_type") == "diffusion-transformer":
            raise ValueError(f"{path} holds a diffusionlm backbone only (no process or hyperschedule): give the run "
                             "directory or saved composition around it")
        elif "model_type" in cfg:
            check_hf_folder(path)  # before the tokenizer or the model is read (no prompt, no allocation)
            loaded = _load_hf(name, path, process, schedule, layout, mask, attn_implementation)
        else:
            raise ValueError(f"{path / CONFIG_NAME} is neither a diffusionlm composition nor a Hugging Face config "
                             "(no \"format\", no \"model_type\")")
    elif (path / "adapter_config.json").is_file():
        raise ValueError(f"{path} is a peft adapter alone: load the saved composition that holds it (its backbone/ "
                         "folder's parent), or PeftModel.from_pretrained(base, dir)")
    else:
        raise FileNotFoundError(f"{path} holds neither run.json (a run directory) nor config.json (a saved composition "
                                "or a Hugging Face model)")
    if schedule is not None and loaded.kind != "hf":
        loaded.lm.schedule = build("hyperschedule", schedule)
    loaded.lm.model.eval()
    if dev is not None:
        loaded.lm.model.to(dev)
    return loaded


def _json(file: Path) -> dict:
    try:
        out = json.loads(file.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{file} is not valid JSON: {err}") from None
    if not isinstance(out, dict):
        raise ValueError(f"{file} does not hold a JSON object")
    return out


def _no_overrides(name: str, what: str, process: Any, layout: Any) -> None:
    given = [opt for opt, v in (("--process", process), ("--layout", layout)) if v is not None]
    if given:
        raise ValueError(f"{' and '.join(given)} apply to a plain Hugging Face model; {name} is a {what} trained with "
                         "its own (--schedule may change how it is run)")


def _load_hf(name: str, path: Path, process: Any, schedule: Any, layout: Optional[str], mask: str, impl: str) -> LoadedModel:
    backbone = {"name": "hf", "path": str(path), "mask": mask, "attn_implementation": impl}
    run = RunConfig(composition={"name": DiffusionLM.name, "process": process or {"name": "absorb"},
                                 "schedule": schedule or {"name": "flat"}, "layout": layout or "shifted",
                                 "backbone": backbone},
                    data=DataSpec(tokenizer=str(path), length=1))  # length: training only
    try:
        built = build_run(run, data=False)
    except safetensors_errors() as err:
        raise ValueError(f"{path}: a weights file is corrupt or truncated ({err})") from None
    except OSError as err:  # a broken HF directory (transformers raises OSError naming the file)
        raise FileNotFoundError(f"cannot load a Hugging Face model from {path}: {str(err).splitlines()[0]}") from None
    return LoadedModel(built.lm, built.tokenizer, name, "hf", path, None, {})


# ---------------------------------------------------------------------------------------------
# judges: a causal LM from any kind of model (compare --judge, generative perplexity)
# ---------------------------------------------------------------------------------------------
class CausalView:
    """A composition trained as an autoregressive model (Absorb + Quench, SHIFTED layout) seen
    as a Hugging Face-style causal LM: `view(input_ids=ids).logits[:, j]` scores token j + 1 given
    ids[:, :j + 1] (row j reads ids[j] under a causal mask: the SHIFTED layout's reading with the
    BOS the judge puts first), over the N real tokens."""

    def __init__(self, lm: Any):
        self.lm = lm
        self.config = SimpleNamespace(max_position_embeddings=lm.max_positions, vocab_size=lm.process.vocab_size)

    def parameters(self):
        return self.lm.model.parameters()

    def eval(self) -> "CausalView":
        self.lm.model.eval()
        return self

    def __call__(self, input_ids: Any, attention_mask: Any = None, **ignored: Any) -> Any:
        B, L = input_ids.shape
        mask = dense_mask(causal_mask_mod(), 1, L, device=input_ids.device)
        pos = torch.arange(L, device=input_ids.device)[None].expand(B, L)
        out = self.lm.model(input_ids, position_ids=pos, attention_mask=mask)
        logits = out.logits if hasattr(out, "logits") else out[0]
        return SimpleNamespace(logits=logits[..., : self.lm.process.vocab_size])


def load_judge(spec: "str | os.PathLike", device: Any = None) -> tuple:
    """(causal LM, tokenizer) that scores text left to right, from any kind of model: a plain
    HF model as it is; a run or saved composition trained as AR (Absorb + Quench, SHIFTED)
    through :class:`CausalView`. A diffusion-trained model is refused (it is no causal LM)."""
    path = resolve_model_path(spec)
    cfg_file = path / CONFIG_NAME
    if path.is_dir() and not (path / "run.json").is_file() and cfg_file.is_file():
        cfg = _json(cfg_file)
        if cfg.get("format") != FORMAT and "model_type" in cfg:
            model = load_hf_causal_lm(path, local_files_only=True)
            if device is not None:
                model.to(_device(device))
            return model.eval(), load_tokenizer(path)
    m = load_model(spec, device=device)
    lm = m.lm
    if not lm.is_autoregressive:
        raise ValueError(
            f"judge {os.fspath(spec)} is {lm.process.name} + {lm.schedule.name} ({lm.layout.value}): a judge scores text "
            "left to right, so it must be a causal LM (a Hugging Face model, or a model trained as absorb + quench, shifted)"
        )
    return CausalView(lm).eval(), m.tokenizer


provide("load_judge", load_judge)
provide("load_model", load_model)
