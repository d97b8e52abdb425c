"""Keep, load and share models: saved compositions, and ONE loader for every kind of model.

    lm.save_pretrained("out/mdlm", tokenizer=tok)              # a saved composition (below)
    lm = DiffusionLM.from_pretrained("out/mdlm")               # or a hub id; lm.tokenizer is set
    lm.push_to_hub("me/mdlm-stdlib", tokenizer=tok)            # huggingface_hub's upload
    m = load_model("runs/x" | "out/mdlm" | "hf-dir" | "org/name", process="absorb", schedule="quench")
    m.lm, m.tokenizer, m.length, m.kind                        # what every command runs on

A **saved composition** (format version ``FORMAT_VERSION``) is a folder:

    config.json      {"format": "diffusionlm-composition", "format_version", "library_version",
                      "composition": the composition dict (process, schedule, layout, bos_id,
                                     settled_weight, max_positions: :func:`composition_dict`),
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
(HfApi.create_repo + upload_folder). `DiffusionLM` gets them through :class:`CompositionHubMixin`.

**The loader** (:func:`load_model`; `diffusionlm sample / eval / demo / compare --judge / lm-eval`):

1. :data:`MODEL_RESOLVERS`, in order, may map a short name to a local path (the hook where e.g.
   ``smollm2`` becomes a fetched model's directory: :func:`register_resolver`);
2. an existing local path is
   a run directory (``run.json``; its ``model/`` a saved composition, or older runs' backbone, or
   the newest checkpoint: :func:`diffusionlm.config.load_run`), a saved composition
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

import dataclasses
import json
import os
import re
import shutil
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from huggingface_hub import ModelCard, ModelHubMixin

__all__ = [
    "FORMAT", "FORMAT_VERSION", "CompositionHubMixin", "SavedComposition", "composition_dict", "build_composition",
    "model_card", "load_model", "LoadedModel", "MODEL_RESOLVERS", "register_resolver", "resolve_model_path",
    "ModelNotFoundError", "parse_part",
]

FORMAT = "diffusionlm-composition"
FORMAT_VERSION = 1
CONFIG_NAME = "config.json"
BACKBONE_DIR = "backbone"
HUB_TAGS = ["diffusionlm", "discrete-diffusion", "text-generation"]
CARD_MARK = "saved by diffusionlm"  # in every generated model card
#: what tokenizers write (diffusionlm.data.tokenizers; Hugging Face's save_pretrained)
TOKENIZER_FILES = ("byte_tokenizer.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "added_tokens.json", "vocab.json", "merges.txt", "vocab.txt", "tokenizer.model", "chat_template.jinja")


class ModelNotFoundError(FileNotFoundError):
    """A model name that is neither a local path nor reachable on the Hub."""


def library_version() -> str:
    from . import __version__

    return __version__


# ---------------------------------------------------------------------------------------------
# the composition dict (one place: the lead swaps it for diffusionlm.specs when that lands)
# ---------------------------------------------------------------------------------------------
def composition_dict(lm: Any) -> dict:
    """The composition of `lm` as a plain JSON dict (the backbone is saved beside it)."""
    return {
        "process": lm.process.config(),
        "schedule": lm.schedule.to_dict(),
        "layout": lm.layout.value,
        "bos_id": lm.bos_id,
        "settled_weight": lm.settled_weight,
        "settled_weighting": lm.settled_weighting,
        "max_positions": lm.max_positions,
    }


def build_composition(spec: dict, model: Any) -> Any:
    """A DiffusionLM from a :func:`composition_dict` and its backbone."""
    from .config import build_part
    from .lm import DiffusionLM
    from .processes import process
    from .schedules import hyperschedule

    return DiffusionLM(
        model, build_part("process", process, spec["process"]), build_part("schedule", hyperschedule, spec["schedule"]),
        layout=spec.get("layout", "aligned"), bos_id=spec.get("bos_id"), settled_weight=spec.get("settled_weight", 0.0),
        settled_weighting=spec.get("settled_weighting", "uniform"), max_positions=spec.get("max_positions"),
    )


# ---------------------------------------------------------------------------------------------
# writing and reading the folder
# ---------------------------------------------------------------------------------------------
@dataclass
class _Payload:
    lm: Any
    tokenizer: Any
    merge: bool = False
    training: Optional[dict] = None
    evaluation: Optional[dict] = None
    backbone: dict = field(default_factory=dict)  # filled when saved / loaded


def _bare(model: Any) -> Any:
    return getattr(model, "module", model) if type(model).__name__ == "DistributedDataParallel" else model


def _backbone_kind(model: Any) -> str:
    from .models import DiffusionTransformer
    from .models.hf import HFDenoiser

    if isinstance(model, DiffusionTransformer):
        return "transformer"
    if isinstance(model, HFDenoiser):
        return "hf"
    raise TypeError(
        f"cannot save a {type(model).__name__} backbone: saved compositions hold a DiffusionTransformer or an HFDenoiser"
    )


def _write(directory: Path, p: _Payload) -> None:
    from .data import as_tokenizer, check_vocab

    if p.tokenizer is None:
        raise ValueError("save_pretrained needs the tokenizer of the model's ids: pass tokenizer=... "
                         "(from_pretrained keeps it as lm.tokenizer)")
    tok = as_tokenizer(p.tokenizer)
    check_vocab(tok, p.lm.process.vocab_size)
    model = _bare(p.lm.model)
    kind = _backbone_kind(model)
    target = directory / BACKBONE_DIR
    if target.exists():
        shutil.rmtree(target)  # never mix an older save's files (an adapter beside full weights)
    if kind == "transformer":
        if p.merge:
            raise ValueError("merge applies to LoRA on a Hugging Face backbone; this one is our transformer")
        model.save_pretrained(str(target))
        backbone = {"kind": kind, "path": BACKBONE_DIR, "weights": "full", "config": model.config.to_dict()}
    else:
        meta = model.save_pretrained(str(target), merge=p.merge)
        backbone = {"kind": kind, "path": BACKBONE_DIR, "weights": meta["weights"], "base": meta["base"],
                    "model_type": getattr(model.config, "model_type", None), "mask_id": meta["mask_id"]}
        source = getattr(model.config, "_name_or_path", None)  # a fetched name ("smollm2") stays the model's name
        if source in _fetch_sources():
            backbone["source"] = source
    for name in TOKENIZER_FILES:  # an earlier save's tokenizer of another kind must not be read back
        (directory / name).unlink(missing_ok=True)
    tok.save(directory)
    p.backbone = backbone
    (directory / CONFIG_NAME).write_text(json.dumps(_config(p), indent=2, default=str) + "\n")
    card = directory / "README.md"
    if card.is_file() and CARD_MARK in card.read_text(errors="replace"):
        card.unlink()  # our own card of an earlier save: regenerated from the new facts (a hand-written one stays)


def _config(p: _Payload) -> dict:
    """The config.json dict of a payload (module docstring)."""
    from .data import as_tokenizer

    tok = as_tokenizer(p.tokenizer)
    return {
        "format": FORMAT, "format_version": FORMAT_VERSION, "library_version": library_version(),
        "composition": composition_dict(p.lm), "backbone": p.backbone or {"kind": _backbone_kind(_bare(p.lm.model))},
        "tokenizer": {"class": type(tok).__name__, "vocab_size": tok.vocab_size, "eos_id": tok.eos_id,
                      "bos_id": getattr(tok, "bos_id", None), "name": getattr(tok, "name", None)},
        "training": p.training or {}, "evaluation": p.evaluation or {},
    }


def read_config(directory: Path) -> dict:
    """config.json of a saved composition, checked: FileNotFoundError naming the missing file,
    ValueError for another format or a format newer than this package."""
    cfg_file = directory / CONFIG_NAME
    from .trust import check_finite_tree, no_symlink

    if not no_symlink(cfg_file).is_file():
        raise FileNotFoundError(f"{cfg_file} is missing: {directory} is not a saved composition")
    try:
        config = json.loads(cfg_file.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{cfg_file} is not valid JSON: {err}") from None
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise ValueError(f"{cfg_file} is not a diffusionlm composition (no \"format\": \"{FORMAT}\")")
    check_finite_tree(config, cfg_file.name)
    version = config.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ValueError(f"{cfg_file}: format_version must be an int >= 1, got {version!r}")
    if version > FORMAT_VERSION:
        raise ValueError(
            f"{directory} was saved in composition format {version} (diffusionlm {config.get('library_version', '?')}), "
            f"newer than this diffusionlm {library_version()} reads (up to {FORMAT_VERSION}): upgrade diffusionlm"
        )
    return config


def _read(directory: Path, base: Any = None, device: Any = None) -> _Payload:
    from .config import safetensors_errors
    from .data import load_tokenizer
    from .trust import confined

    config = read_config(directory)
    backbone = config.get("backbone") or {}
    path = confined(directory, backbone.get("path", BACKBONE_DIR), f"{directory / CONFIG_NAME}: backbone.path")
    if not path.is_dir():
        raise FileNotFoundError(f"{path} is missing: the backbone of the composition in {directory}")
    kind = backbone.get("kind")
    try:
        if kind == "transformer":
            from .models import DiffusionTransformer

            if base is not None:
                raise ValueError("base= applies to a LoRA adapter on a Hugging Face base; this backbone is our transformer")
            model = DiffusionTransformer.from_pretrained(path)
        elif kind == "hf":
            from .models.hf import HFDenoiser

            model = HFDenoiser.from_pretrained(path, base=base, resolve=lambda name: str(resolve_model_path(name)))
        else:
            raise ValueError(f"{directory / CONFIG_NAME}: unknown backbone kind {kind!r} (known: transformer, hf)")
    except safetensors_errors() as err:
        raise ValueError(f"{path}: a weights file is corrupt or truncated ({err})") from None
    tokenizer = load_tokenizer(directory)
    lm = build_composition(config["composition"], model)
    model.eval()
    if device is not None:
        model.to(device)
    lm.tokenizer = tokenizer
    lm.card_info = {"training": config.get("training") or {}, "evaluation": config.get("evaluation") or {}}
    return _Payload(lm, tokenizer, training=config.get("training"), evaluation=config.get("evaluation"), backbone=backbone)


# ---------------------------------------------------------------------------------------------
# the model card
# ---------------------------------------------------------------------------------------------
def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, dict):
        if "name" in v:
            return _part(v)
        return ", ".join(f"{k} {_fmt(x)}" for k, x in v.items() if x is not None)
    return str(v)


def _part(d: dict) -> str:
    rest = {k: v for k, v in d.items() if k != "name" and v is not None}
    return d.get("name", "?") + (f" ({_fmt(rest)})" if rest else "")


def _fetch_sources() -> dict:
    """The names `diffusionlm fetch` knows, with what their weights are (diffusionlm.fetch.SOURCES)."""
    from .fetch import SOURCES

    return SOURCES


def model_card(config: dict, repo_id: Optional[str] = None, num_parameters: Optional[int] = None) -> str:
    """The README.md of a saved composition: what it is, how it was trained (data, steps,
    tokens), evaluation figures when known, how to load it. `config`: its config.json dict."""
    comp, backbone = config["composition"], config.get("backbone", {})
    training, evaluation = config.get("training") or {}, config.get("evaluation") or {}
    proc, sched = comp["process"], comp["schedule"]
    where = repo_id or "path/to/this/folder"
    meta = {"library_name": "diffusionlm", "tags": HUB_TAGS + [proc["name"], sched["name"]], "pipeline_tag": "text-generation"}
    if backbone.get("weights") == "adapter" and backbone.get("base"):
        meta["base_model"] = backbone["base"]
    data = training.get("data") or {}
    if data.get("corpus") and not str(data["corpus"]).startswith("/"):
        meta["datasets"] = [str(data["corpus"])]
    if backbone.get("kind") == "transformer":
        c = backbone.get("config", {})
        bb = f"DiffusionTransformer: {c.get('n_layers')} layers, hidden {c.get('hidden')}, {c.get('n_heads')} heads"
    elif backbone.get("weights") == "adapter":
        bb = f"Hugging Face {backbone.get('model_type')} + LoRA adapter (peft) on the base `{backbone.get('base')}`"
    else:
        bb = f"Hugging Face {backbone.get('model_type')} (full weights)"
    if num_parameters:
        bb += f", {num_parameters:,d} parameters"
    origin = _fetch_sources().get(backbone.get("source") or backbone.get("base"))
    if origin is not None and origin.provenance:
        bb += f". Its weights: {origin.provenance}"
    tok = config.get("tokenizer", {})
    lines = [
        "---", *_yaml(meta), "---", "",
        f"# {proc['name']} + {sched['name']} diffusion language model",
        "",
        f"A discrete diffusion language model {CARD_MARK} "
        f"(composition format {config['format_version']}, diffusionlm {config.get('library_version')}): the "
        f"**{proc['name']}** corruption process under the **{sched['name']}** hyperschedule, "
        f"{comp['layout']} layout.",
        "",
        "| part | value |", "|---|---|",
        f"| process | {_part(proc)} |",
        f"| hyperschedule | {_part(sched)} |",
        f"| layout | {comp['layout']} (BOS id {comp.get('bos_id')}) |",
        f"| backbone | {bb} |",
        f"| tokenizer | {tok.get('class')}, {tok.get('vocab_size')} ids |",
        f"| positions | {comp.get('max_positions')} |",
        "",
        "## Training",
        "",
    ]
    if training:
        lines += ["| | |", "|---|---|"]
        if data:
            lines.append(f"| data | {_fmt(data)} |")
        for key in ("steps", "tokens", "batch_size", "seconds", "recipe", "stages"):
            if training.get(key) is not None:
                v = training[key]
                if key == "stages":
                    v = "; ".join(f"{s.get('schedule')}: {s.get('steps')} steps" for s in v)
                elif key == "tokens":
                    v = f"{int(v):,d}"
                lines.append(f"| {key} | {_fmt(v)} |")
        lines.append("")
    else:
        lines += ["Not recorded (saved from Python without training information).", ""]
    lines += ["## Evaluation", ""]
    if evaluation:
        lines += ["| metric | value |", "|---|---|"] + [f"| {k} | {_fmt(v)} |" for k, v in evaluation.items()] + [""]
    else:
        lines += ["No evaluation recorded: `diffusionlm eval --model ... --dataset ptb` measures the NLL bound.", ""]
    sub = "AutoModelForCausalLM.from_pretrained" if backbone.get("weights") != "adapter" else "PeftModel.from_pretrained(base, "
    lines += [
        "## How to load",
        "",
        "```python",
        "from diffusionlm.lm import DiffusionLM",
        "",
        f'lm = DiffusionLM.from_pretrained("{where}")   # the composition; lm.tokenizer is its tokenizer',
        "```",
        "",
        "```bash",
        f"diffusionlm sample --model {where} --steps 64 --num 4",
        f"diffusionlm eval --model {where} --dataset wikitext2",
        "```",
        "",
    ]
    if backbone.get("kind") == "hf":
        call = (f'AutoModelForCausalLM.from_pretrained("{where}", subfolder="backbone")' if sub.startswith("Auto")
                else f'PeftModel.from_pretrained(base, "{where}", subfolder="backbone")  # base: `{backbone.get("base")}`, '
                     "its embeddings resized by one row first")
        lines += ["The backbone alone, without diffusionlm: `" + call + "`.", ""]
    return "\n".join(lines)


def _yaml(meta: dict) -> list:
    out = []
    for k, v in meta.items():
        if isinstance(v, list):
            out.append(f"{k}:")
            out += [f"- {json.dumps(x)}" for x in v]
        else:
            out.append(f"{k}: {json.dumps(v)}")
    return out


# ---------------------------------------------------------------------------------------------
# huggingface_hub's mixin
# ---------------------------------------------------------------------------------------------
class SavedComposition(ModelHubMixin, library_name="diffusionlm", tags=list(HUB_TAGS), pipeline_tag="text-generation"):
    """A composition (DiffusionLM + tokenizer + what is known of its training) as a
    `huggingface_hub.ModelHubMixin`: `save_pretrained`, `from_pretrained`, `push_to_hub` are the
    mixin's; the folder is the module docstring's."""

    def __init__(self, payload: _Payload):
        self.payload = payload

    def _save_pretrained(self, save_directory: Path) -> None:
        _write(Path(save_directory), self.payload)

    def generate_model_card(self, *args: Any, repo_id: Optional[str] = None, **kwargs: Any) -> ModelCard:
        config = _config(self.payload)
        n = sum(p.numel() for p in _bare(self.payload.lm.model).parameters())
        return ModelCard(model_card(config, repo_id=repo_id, num_parameters=n))

    @classmethod
    def _from_pretrained(cls, *, model_id: str, revision: Optional[str], cache_dir: Any, force_download: bool,
                         local_files_only: bool, token: Any, config: Optional[dict] = None, base: Any = None,
                         device: Any = None, **ignored: Any) -> "SavedComposition":
        path = Path(model_id)
        if not path.is_dir():
            path = _hub_snapshot(model_id, revision=revision, cache_dir=cache_dir, force_download=force_download,
                                 local_files_only=local_files_only, token=token)
        return cls(_read(path, base=base, device=device))


class CompositionHubMixin:
    """save_pretrained / from_pretrained / push_to_hub for `DiffusionLM` (module docstring).

    `tokenizer` and `card_info` are plain attributes: `from_pretrained` sets them, `save_pretrained`
    and `push_to_hub` use them when no tokenizer / training / evaluation is passed."""

    tokenizer = None
    card_info = None

    def _payload(self, tokenizer: Any, merge: bool, training: Optional[dict], evaluation: Optional[dict]) -> _Payload:
        info = self.card_info or {}
        return _Payload(self, tokenizer if tokenizer is not None else self.tokenizer, bool(merge),
                        training if training is not None else info.get("training"),
                        evaluation if evaluation is not None else info.get("evaluation"))

    def save_pretrained(self, save_directory: "str | os.PathLike", *, tokenizer: Any = None, merge: bool = False,
                        training: Optional[dict] = None, evaluation: Optional[dict] = None, **hub_kwargs: Any) -> Optional[str]:
        """Write the saved composition into `save_directory` (created if needed). `tokenizer`: the
        tokenizer of the ids (default `self.tokenizer`); `merge`: LoRA merged into full HF weights;
        `training` / `evaluation`: facts for config.json and the model card. Other keywords are
        `ModelHubMixin.save_pretrained`'s (`push_to_hub=True, repo_id=...`)."""
        return SavedComposition(self._payload(tokenizer, merge, training, evaluation)).save_pretrained(save_directory, **hub_kwargs)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: "str | os.PathLike", *, base: Any = None, device: Any = None,
                        **hub_kwargs: Any) -> Any:
        """A saved composition from a local folder or a hub id (`revision=`, `token=`, ...: the
        mixin's). `base`: another location of a LoRA adapter's base (checked against it)."""
        src = str(pretrained_model_name_or_path)
        path = Path(src).expanduser()
        if not path.is_dir():
            path = resolve_model_path(src, **{k: hub_kwargs[k] for k in ("revision", "token", "cache_dir") if k in hub_kwargs})
        return SavedComposition.from_pretrained(path, base=base, device=device, **hub_kwargs).payload.lm

    def push_to_hub(self, repo_id: str, *, tokenizer: Any = None, merge: bool = False, training: Optional[dict] = None,
                    evaluation: Optional[dict] = None, **hub_kwargs: Any) -> str:
        """Upload the saved composition to the Hub repository `repo_id` (created if needed) in one
        commit: `ModelHubMixin.push_to_hub` (`private`, `token`, `branch`, `create_pr`,
        `commit_message`, ...). Returns the commit URL."""
        kw = dict(hub_kwargs)
        kw.setdefault("model_card_kwargs", {"repo_id": repo_id})
        return SavedComposition(self._payload(tokenizer, merge, training, evaluation)).push_to_hub(repo_id, **kw)


# ---------------------------------------------------------------------------------------------
# resolving a name to a local folder
# ---------------------------------------------------------------------------------------------
#: short-name resolvers, tried in order: `fn(name) -> local path or None`
MODEL_RESOLVERS: list = []


def register_resolver(fn: Callable[[str], "Optional[str | os.PathLike]"]) -> Callable:
    """Add a resolver (e.g. "smollm2" -> the directory `diffusionlm fetch smollm2` wrote)."""
    if fn not in MODEL_RESOLVERS:
        MODEL_RESOLVERS.append(fn)
    return fn


@register_resolver
def _fetched(name: str) -> "Optional[str]":
    """Names `diffusionlm fetch` knows ("smollm2") -> their converted folder (diffusionlm.fetch)."""
    from .fetch import hub_path

    return hub_path(name)


_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*(/[A-Za-z0-9][A-Za-z0-9_.-]*)?$")


def _hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hub endpoint answers a TCP connection (HF_HUB_OFFLINE: no)."""
    from urllib.parse import urlparse

    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    url = urlparse(constants.ENDPOINT)
    try:
        socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)), timeout=timeout).close()
        return True
    except OSError:
        return False


def _hub_snapshot(repo_id: str, **kw: Any) -> Path:
    """A hub model's local snapshot: the HF cache first, then the Hub (one-line errors)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError

    kw = {k: v for k, v in kw.items() if v is not None}
    only_local = kw.pop("local_files_only", False)
    force = kw.pop("force_download", False)
    if not force:
        try:
            return Path(snapshot_download(repo_id, local_files_only=True, **kw))
        except (LocalEntryNotFoundError, FileNotFoundError, OSError):
            pass
        except ValueError as err:  # an invalid repo id
            raise ModelNotFoundError(f"{repo_id}: not a local path, and not a valid hub id ({err})") from None
    if only_local or not _hub_reachable():
        raise ModelNotFoundError(f"{repo_id}: not found locally and no network: pass a local directory")
    try:
        return Path(snapshot_download(repo_id, force_download=force, **kw))
    except RepositoryNotFoundError:
        raise ModelNotFoundError(f"{repo_id}: no such model on the Hugging Face Hub (private? log in with `hf auth login`)") from None
    except (HfHubHTTPError, OSError) as err:
        raise ModelNotFoundError(f"{repo_id}: could not be downloaded from the Hub ({str(err).splitlines()[0]})") from None


def resolve_model_path(spec: "str | os.PathLike", **hub_kw: Any) -> Path:
    """A local folder (or file) for `spec`: a resolver's answer, an existing path, or a hub id's
    snapshot (module docstring, steps 1-3)."""
    name = os.fspath(spec)
    for fn in MODEL_RESOLVERS:
        out = fn(name)
        if out is not None:
            return Path(out)
    path = Path(name).expanduser()
    if path.exists():
        return path
    if _HUB_ID.match(name) and not name.startswith((".", "~")):
        return _hub_snapshot(name, **hub_kw)
    raise FileNotFoundError(f"{name}: no such file or directory (a model is a run directory with run.json, a saved "
                            "composition, a Hugging Face model directory, or a hub id)")


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
    import torch

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
    from .config import load_run, safetensors_errors

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
            from .trust import check_hf_folder

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
        from .config import build_part
        from .schedules import hyperschedule

        loaded.lm.schedule = build_part("schedule", hyperschedule, schedule)
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
    from .config import DataSpec, ModelSpec, RunConfig, build, safetensors_errors

    run = RunConfig(model=ModelSpec(kind="hf", path=str(path), mask=mask, attn_implementation=impl),
                    process=process or {"name": "absorb"}, schedule=schedule or {"name": "flat"},
                    layout=layout or "shifted", data=DataSpec(tokenizer=str(path), length=1))  # length: training only
    try:
        built = build(run, data=False)
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
        from types import SimpleNamespace

        self.lm = lm
        self.config = SimpleNamespace(max_position_embeddings=lm.max_positions, vocab_size=lm.process.vocab_size)

    def parameters(self):
        return self.lm.model.parameters()

    def eval(self) -> "CausalView":
        self.lm.model.eval()
        return self

    def __call__(self, input_ids: Any, attention_mask: Any = None, **ignored: Any) -> Any:
        import torch
        from types import SimpleNamespace

        from .masks import causal_mask_mod, dense_mask

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
            from .data import load_tokenizer
            from .trust import load_hf_causal_lm

            model = load_hf_causal_lm(path, local_files_only=True)
            if device is not None:
                model.to(_device(device))
            return model.eval(), load_tokenizer(path)
    m = load_model(spec, device=device)
    lm = m.lm
    from .schedules import Quench

    if lm.process.name != "absorb" or not isinstance(lm.schedule, Quench) or lm.layout.value != "shifted":
        raise ValueError(
            f"judge {os.fspath(spec)} is {lm.process.name} + {lm.schedule.name} ({lm.layout.value}): a judge scores text "
            "left to right, so it must be a causal LM (a Hugging Face model, or a model trained as absorb + quench, shifted)"
        )
    return CausalView(lm).eval(), m.tokenizer
