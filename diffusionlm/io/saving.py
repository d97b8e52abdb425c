"""Saved compositions: the folder `DiffusionLM.save_pretrained` writes and `from_pretrained`
reads (format in diffusionlm.io.hub's docstring), its model card, and huggingface_hub's mixin.
`DiffusionLM.save_pretrained / from_pretrained / push_to_hub` are this module's functions,
late-bound (diffusionlm.specs.provide): the composition does not import the io layer."""
from __future__ import annotations

import json
import os
import shutil
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from huggingface_hub import ModelCard, ModelHubMixin
from safetensors import SafetensorError

from ..data import as_tokenizer, check_vocab, load_tokenizer
from ..lm import DiffusionLM
from ..models import DiffusionTransformer
from ..models.base import bare
from ..models.hf import HFDenoiser
from ..specs import UnknownPartError, provide
from ..trust import check_finite_tree, confined, no_symlink
from .client import _hub_snapshot, library_version, resolve_model_path
from .fetch import SOURCES as FETCH_SOURCES
from .safeio import CorruptFileError

FORMAT = "diffusionlm-composition"
#: 2: "composition" is DiffusionLM.to_dict() (name, parts, backbone); 1: the parts without
#: name or backbone (still read, by :func:`composition_from_v1`)
FORMAT_VERSION = 2
CONFIG_NAME = "config.json"
BACKBONE_DIR = "backbone"
HUB_TAGS = ["diffusionlm", "discrete-diffusion", "text-generation"]
CARD_MARK = "saved by diffusionlm"  # in every generated model card
#: what tokenizers write (diffusionlm.data.tokenizers; Hugging Face's save_pretrained)
TOKENIZER_FILES = ("byte_tokenizer.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "added_tokens.json", "vocab.json", "merges.txt", "vocab.txt", "tokenizer.model", "chat_template.jinja")


# ---------------------------------------------------------------------------------------------
# the composition dict: DiffusionLM.to_dict / from_dict, and the reader of format 1
# ---------------------------------------------------------------------------------------------
def composition_from_v1(old: dict) -> dict:
    """A format-1 config.json's "composition" (no name, no backbone, an older Uniform's
    "mask_id": null) as the one composition format (the backbone comes from the folder)."""
    spec = {"name": DiffusionLM.name, **{k: v for k, v in old.items() if k != "name"}}
    proc = spec.get("process")
    if isinstance(proc, dict) and proc.get("name") == "uniform" and proc.get("mask_id", 0) is None:
        spec["process"] = {k: v for k, v in proc.items() if k != "mask_id"}
    return spec


def _composition(config: dict, directory: Path) -> dict:
    """The composition dict of a checked config.json, format 1 converted (said in one line)."""
    comp = config["composition"]
    if config["format_version"] == 1:
        warnings.warn(f"{directory} was saved in composition format 1: read by its converter (save it again to write "
                      f"format {FORMAT_VERSION})", FutureWarning, stacklevel=3)
        return composition_from_v1(comp)
    return comp


def composition_dict(lm: Any) -> dict:
    """Deprecated: ``lm.to_dict()`` (the one composition format)."""
    warnings.warn("diffusionlm.io.hub.composition_dict(lm) is deprecated: use lm.to_dict()", DeprecationWarning, stacklevel=2)
    return lm.to_dict()


def build_composition(spec: dict, model: Any) -> Any:
    """Deprecated: ``DiffusionLM.from_dict(spec, model=model)``."""
    warnings.warn("diffusionlm.io.hub.build_composition(spec, model) is deprecated: use DiffusionLM.from_dict(spec, model=model)",
                  DeprecationWarning, stacklevel=2)
    return DiffusionLM.from_dict(spec if "name" in spec else composition_from_v1(spec), model=model)


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


def _backbone_kind(model: Any) -> str:
    if isinstance(model, DiffusionTransformer):
        return "transformer"
    if isinstance(model, HFDenoiser):
        return "hf"
    raise TypeError(
        f"cannot save a {type(model).__name__} backbone: saved compositions hold a DiffusionTransformer or an HFDenoiser"
    )


def safetensors_errors() -> tuple:
    """What a corrupt or truncated weights file raises: safetensors' own error, and
    diffusionlm.io.safeio's (a damaged file, or one failing its checksum)."""
    return (SafetensorError, CorruptFileError)


def _write(directory: Path, p: _Payload) -> None:
    if p.tokenizer is None:
        raise ValueError("save_pretrained needs the tokenizer of the model's ids: pass tokenizer=... "
                         "(from_pretrained keeps it as lm.tokenizer)")
    tok = as_tokenizer(p.tokenizer)
    check_vocab(tok, p.lm.process.vocab_size)
    model = bare(p.lm.model)
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
        if source in FETCH_SOURCES:
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
    tok = as_tokenizer(p.tokenizer)
    return {
        "format": FORMAT, "format_version": FORMAT_VERSION, "library_version": library_version(),
        "composition": p.lm.to_dict(), "classes": _classes(p.lm), "backbone": p.backbone or {"kind": _backbone_kind(bare(p.lm.model))},
        "tokenizer": {"class": type(tok).__name__, "vocab_size": tok.vocab_size, "eos_id": tok.eos_id,
                      "bos_id": getattr(tok, "bos_id", None), "name": getattr(tok, "name", None)},
        "training": p.training or {}, "evaluation": p.evaluation or {},
    }


def _classes(lm: Any) -> dict:
    """{part: "module.Class"} of the composition's parts: what a loader without them must import."""
    parts = {"process": lm.process, "schedule": lm.schedule, "annealing": lm.annealing, "backbone": bare(lm.model)}
    return {k: f"{type(v).__module__}.{type(v).__qualname__}" for k, v in parts.items() if v is not None}


def _unknown_part(directory: Path, config: dict, err: Exception) -> UnknownPartError:
    """The one line of a folder whose part is not registered here: the class it was saved with."""
    own = {k: v for k, v in (config.get("classes") or {}).items() if not v.startswith("diffusionlm.")}
    saved = "; ".join(f"its {k} is the class {v}" for k, v in own.items()) or "its parts are not diffusionlm's own"
    return UnknownPartError(f"{directory}: {err.args[0].split('; a part defined')[0]}; {saved}: import the module that "
                            "defines it (diffusionlm.register(cls)), install the package whose 'diffusionlm.parts' entry "
                            "point names it, or pass --plugin FILE on the command line")


def read_config(directory: Path) -> dict:
    """config.json of a saved composition, checked: FileNotFoundError naming the missing file,
    ValueError for another format or a format newer than this package."""
    cfg_file = directory / CONFIG_NAME
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
    config = read_config(directory)
    backbone = config.get("backbone") or {}
    path = confined(directory, backbone.get("path", BACKBONE_DIR), f"{directory / CONFIG_NAME}: backbone.path")
    if not path.is_dir():
        raise FileNotFoundError(f"{path} is missing: the backbone of the composition in {directory}")
    kind = backbone.get("kind")
    try:
        if kind == "transformer":
            if base is not None:
                raise ValueError("base= applies to a LoRA adapter on a Hugging Face base; this backbone is our transformer")
            model = DiffusionTransformer.from_pretrained(path)
        elif kind == "hf":
            model = HFDenoiser.from_pretrained(path, base=base, resolve=lambda name: str(resolve_model_path(name)))
        else:
            raise ValueError(f"{directory / CONFIG_NAME}: unknown backbone kind {kind!r} (known: transformer, hf)")
    except safetensors_errors() as err:
        raise ValueError(f"{path}: a weights file is corrupt or truncated ({err})") from None
    tokenizer = load_tokenizer(directory)
    spec = {k: v for k, v in _composition(config, directory).items() if k != "backbone"}  # the folder's weights
    try:
        lm = DiffusionLM.from_dict(spec, model=model)
    except UnknownPartError as err:
        raise _unknown_part(directory, config, err) from None
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


def _card_backbone(backbone: dict, num_parameters: Optional[int]) -> str:
    """The model card's backbone cell."""
    if backbone.get("kind") == "transformer":
        c = backbone.get("config", {})
        bb = f"DiffusionTransformer: {c.get('n_layers')} layers, hidden {c.get('hidden')}, {c.get('n_heads')} heads"
    elif backbone.get("weights") == "adapter":
        bb = f"Hugging Face {backbone.get('model_type')} + LoRA adapter (peft) on the base `{backbone.get('base')}`"
    else:
        bb = f"Hugging Face {backbone.get('model_type')} (full weights)"
    if num_parameters:
        bb += f", {num_parameters:,d} parameters"
    origin = FETCH_SOURCES.get(backbone.get("source") or backbone.get("base"))
    if origin is not None and origin.provenance:
        bb += f". Its weights: {origin.provenance}"
    return bb


def _card_training(training: dict, data: dict) -> list:
    """The model card's training table (or the line saying it was not recorded)."""
    lines: list = []
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
    return lines


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
    bb = _card_backbone(backbone, num_parameters)
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
    lines += _card_training(training, data)
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
        n = sum(p.numel() for p in bare(self.payload.lm.model).parameters())
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


def _payload(lm: Any, tokenizer: Any, merge: bool, training: Optional[dict], evaluation: Optional[dict]) -> _Payload:
    info = lm.card_info or {}
    return _Payload(lm, tokenizer if tokenizer is not None else lm.tokenizer, bool(merge),
                    training if training is not None else info.get("training"),
                    evaluation if evaluation is not None else info.get("evaluation"))


def save_pretrained(lm: Any, save_directory: "str | os.PathLike", *, tokenizer: Any = None, merge: bool = False,
                    training: Optional[dict] = None, evaluation: Optional[dict] = None, **hub_kwargs: Any) -> Optional[str]:
    """`lm.save_pretrained(dir)`: write the saved composition into `save_directory` (created if
    needed). `tokenizer`: the tokenizer of the ids (default `lm.tokenizer`); `merge`: LoRA merged
    into full HF weights; `training` / `evaluation`: facts for config.json and the model card.
    Other keywords are `ModelHubMixin.save_pretrained`'s (`push_to_hub=True, repo_id=...`)."""
    return SavedComposition(_payload(lm, tokenizer, merge, training, evaluation)).save_pretrained(save_directory, **hub_kwargs)


def from_pretrained(cls: Any, pretrained_model_name_or_path: "str | os.PathLike", *, base: Any = None,
                    device: Any = None, **hub_kwargs: Any) -> Any:
    """`DiffusionLM.from_pretrained(dir_or_id)`: a saved composition from a local folder or a hub id
    (`revision=`, `token=`, ...: the mixin's). `base`: another location of a LoRA adapter's base
    (checked against it)."""
    src = str(pretrained_model_name_or_path)
    path = Path(src).expanduser()
    if not path.is_dir():
        path = resolve_model_path(src, **{k: hub_kwargs[k] for k in ("revision", "token", "cache_dir") if k in hub_kwargs})
    return SavedComposition.from_pretrained(path, base=base, device=device, **hub_kwargs).payload.lm


def push_to_hub(lm: Any, repo_id: str, *, tokenizer: Any = None, merge: bool = False, training: Optional[dict] = None,
                evaluation: Optional[dict] = None, **hub_kwargs: Any) -> str:
    """`lm.push_to_hub(repo_id)`: upload the saved composition to the Hub repository `repo_id`
    (created if needed) in one commit: `ModelHubMixin.push_to_hub` (`private`, `token`, `branch`,
    `create_pr`, `commit_message`, ...). Returns the commit URL."""
    kw = dict(hub_kwargs)
    kw.setdefault("model_card_kwargs", {"repo_id": repo_id})
    return SavedComposition(_payload(lm, tokenizer, merge, training, evaluation)).push_to_hub(repo_id, **kw)


class CompositionHubMixin:
    """Deprecated (one release): `DiffusionLM` has save_pretrained / from_pretrained / push_to_hub
    itself (late-bound to this module's functions); a class deriving from this mixin gets the same."""

    tokenizer = None
    card_info = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        warnings.warn("CompositionHubMixin is deprecated: DiffusionLM provides save_pretrained / from_pretrained / "
                      "push_to_hub (diffusionlm.io.saving)", DeprecationWarning, stacklevel=2)
        super().__init_subclass__(**kwargs)

    def save_pretrained(self, save_directory: "str | os.PathLike", **kwargs: Any) -> Optional[str]:
        return save_pretrained(self, save_directory, **kwargs)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: "str | os.PathLike", **kwargs: Any) -> Any:
        return from_pretrained(cls, pretrained_model_name_or_path, **kwargs)

    def push_to_hub(self, repo_id: str, **kwargs: Any) -> str:
        return push_to_hub(self, repo_id, **kwargs)


provide("save_pretrained", save_pretrained)
provide("from_pretrained", from_pretrained)
provide("push_to_hub", push_to_hub)
