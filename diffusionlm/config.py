"""Run configuration: typed sections, JSON files, `section.key=value` overrides.

    run = RunConfig.from_file("recipes/scratch.json", ["train.lr=1e-4", "data.length=256"])
    parts = build(run)                      # tokenizer, lm, train stream, validation batches

Unknown keys are errors that name the closest valid key; values given on the command line are
parsed as JSON when they parse (numbers, true/false, null, lists, objects) and as strings
otherwise. Every section round-trips through `to_dict()` / JSON.
"""
from __future__ import annotations

import dataclasses
import difflib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from .configcheck import Bool, Choice, Dict, Int, Opt, Str, check_fields
from .models.transformer import TransformerConfig
from .training.trainer import TrainConfig

__all__ = ["ModelSpec", "DataSpec", "RunConfig", "build", "BuiltRun", "load_run"]


@dataclass
class ModelSpec:
    kind: str = "transformer"  # transformer (ours) | hf (any AutoModelForCausalLM)
    preset: str = "tiny"  # transformer presets: tiny | gpt2-small
    overrides: dict = field(default_factory=dict)  # TransformerConfig fields
    path: Optional[str] = None  # transformer: a save_pretrained dir; hf: local dir or hub id
    hf_config: Optional[dict] = None  # hf: build a randomly initialised model from this config
    attn_implementation: str = "sdpa"
    mask: str = "add"  # hf MASK token: "add" (resize by one) or a reserved token string
    lora: Optional[dict] = None  # {"r": 8, "target_modules": ["q_proj", "v_proj"]}
    annealing_steps: Optional[int] = None  # DiffuGPT attention-mask annealing warm-up

    RULES = {
        "kind": Choice("transformer", "hf"), "preset": Choice(*TransformerConfig.presets()), "overrides": Dict(),
        "path": Opt(Str(), "a new model"), "hf_config": Opt(Dict(), "model.path gives the model"),
        "attn_implementation": Choice("sdpa", "eager"), "mask": Str(), "lora": Opt(Dict(), "no LoRA"),
        "annealing_steps": Opt(Int(0), "no annealing"),
    }

    def __post_init__(self) -> None:
        check_fields(self, self.RULES, "model")
        if self.hf_config is not None and not isinstance(self.hf_config.get("model_type"), str):
            raise ValueError(f"model.hf_config needs a \"model_type\" (e.g. \"llama\", \"gpt2\"), got keys {sorted(self.hf_config)}")


@dataclass
class DataSpec:
    corpus: str = "stdlib"
    tokenizer: str = "byte"
    length: int = 128
    rule: str = "wrap"
    val_split: str = "validation"
    val_batches: int = 4
    # instruction data (LAD): a local JSONL with prompt / response fields
    instruct: Optional[str] = None
    prompt_field: str = "prompt"
    response_field: str = "response"
    all_tokens: bool = False
    # how a local / hf: corpus is read (diffusionlm.data.sources): its text column, a folder's
    # file pattern, text files' documents; streaming: tokenized on the fly (data.streaming)
    field: str = "text"
    files: Optional[str] = None
    unit: str = "file"
    streaming: bool = False

    RULES = {
        "corpus": Str(), "tokenizer": Str(), "length": Int(1), "rule": Choice("wrap", "pad"), "val_split": Str(),
        "val_batches": Int(0), "instruct": Opt(Str(), "plain text from data.corpus"), "prompt_field": Str(),
        "response_field": Str(), "all_tokens": Bool(), "field": Str(), "files": Opt(Str(), "every non-hidden file"),
        "unit": Choice("file", "line", "paragraph"), "streaming": Bool(),
    }

    def __post_init__(self) -> None:
        check_fields(self, self.RULES, "data")


@dataclass
class RunConfig:
    model: ModelSpec = field(default_factory=ModelSpec)
    process: dict = field(default_factory=lambda: {"name": "absorb"})
    schedule: dict = field(default_factory=lambda: {"name": "flat"})
    layout: str = "aligned"
    data: DataSpec = field(default_factory=DataSpec)
    train: TrainConfig = field(default_factory=lambda: TrainConfig(steps=200, progress=True))
    #: training stages run one after another; each may override schedule / train keys
    #: (the papers' Flat first, then Block / Slide fine-tuning)
    stages: list = field(default_factory=list)

    SECTIONS = {"model": ModelSpec, "data": DataSpec, "train": TrainConfig}

    def to_dict(self) -> dict:
        out = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            out[f.name] = dataclasses.asdict(v) if dataclasses.is_dataclass(v) else v
        return out

    @classmethod
    def from_dict(cls, d: dict) -> "RunConfig":
        """Keys starting with "_" (e.g. "_comment") are comments, ignored at the top level, in
        the model / data / train sections and in each stage. Stages are checked here, so a typo in
        a late stage fails before the first step, not after the earlier stages have trained."""
        top = [f.name for f in dataclasses.fields(cls)]
        d = _strip_comments(d)
        _reject_unknown(d, top, "")
        kw = {}
        for name, value in d.items():
            sec = cls.SECTIONS.get(name)
            if sec is not None:
                value = _strip_comments(value)
                names = [f.name for f in dataclasses.fields(sec)]
                _reject_unknown(value, names, name + ".")
                kw[name] = sec(**value)
            else:
                kw[name] = value
        run = cls(**kw)
        if run.layout not in ("aligned", "shifted"):
            raise ValueError(f"layout = {run.layout!r}: must be one of aligned, shifted")
        _check_schedule(run.schedule, run.data.length, "schedule")
        run.stages = _check_stages(run.stages, run.train, run.data.length)
        return run

    @classmethod
    def from_file(cls, path: "str | Path | None", overrides: "list[str] | None" = None) -> "RunConfig":
        base = cls().to_dict()
        if path is not None:
            p = Path(path)
            if not p.exists():
                raise FileNotFoundError(f"config file not found: {p}")
            _merge(base, json.loads(p.read_text()))
        for item in overrides or []:
            _apply_override(base, item)
        return cls.from_dict(base)


def _strip_comments(d: Any) -> Any:
    return {k: v for k, v in d.items() if not (isinstance(k, str) and k.startswith("_"))} if isinstance(d, dict) else d


def _check_schedule(spec: Any, length: int, where: str) -> None:
    """The hyperschedule builds and, when discrete, has a level table at the data length (a Block
    or Slide width larger than the length is refused here, before anything is built)."""
    from .schedules import hyperschedule

    try:
        hs = build_part("schedule", hyperschedule, spec)
        if not hs.continuous:
            hs.table(length)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{where}: {err}") from err


def _check_stages(stages: Any, train: TrainConfig, length: int) -> list:
    """Each stage: an optional "schedule" plus TrainConfig keys (overriding `train`)."""
    if not isinstance(stages, list):
        raise ValueError(f"config key stages must be a list of objects, got {type(stages).__name__}")
    out = []
    for i, stage in enumerate(stages):
        prefix = f"stages[{i}]."
        stage = _strip_comments(stage)
        _reject_unknown(stage, ["schedule"] + TrainConfig.field_names(), prefix)
        if "schedule" in stage:
            _check_schedule(stage["schedule"], length, f"{prefix}schedule")
        rest = {k: v for k, v in stage.items() if k != "schedule"}
        try:
            TrainConfig(**{**dataclasses.asdict(train), **rest})
        except (TypeError, ValueError) as err:
            raise ValueError(f"stage {i}: {err}") from err
        out.append(stage)
    return out


def _reject_unknown(d: Any, valid: list, prefix: str) -> None:
    if not isinstance(d, dict):
        raise ValueError(f"config section {prefix.rstrip('.') or '<top>'} must be an object")
    for k in d:
        if k not in valid:
            close = difflib.get_close_matches(k, valid, n=1)
            hint = f"; did you mean {prefix}{close[0]}?" if close else f"; valid keys: {', '.join(prefix + v for v in valid)}"
            raise ValueError(f"unknown config key {prefix}{k}{hint}")


def _merge(base: dict, new: dict) -> None:
    for k, v in new.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict) and k not in ("process", "schedule"):
            _merge(base[k], v)
        else:
            base[k] = v


def _apply_override(base: dict, item: str) -> None:
    if "=" not in item:
        raise ValueError(f"override {item!r} is not of the form key=value")
    key, raw = item.split("=", 1)
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    parts = key.split(".")
    node = base
    for i, p in enumerate(parts[:-1]):
        if p not in node or not isinstance(node[p], dict):
            valid = [k for k, v in node.items() if isinstance(v, dict)]
            close = difflib.get_close_matches(p, valid, n=1)
            where = ".".join(parts[:i])
            raise ValueError(f"unknown config section {key}" + (f"; did you mean {'.'.join(parts[:i] + close)}?" if close else f"; sections{' of ' + where if where else ''}: {valid}"))
        node = node[p]
    leaf = parts[-1]
    free = parts[0] in ("process", "schedule")  # their keys belong to the named class
    if leaf not in node and not free:
        close = difflib.get_close_matches(leaf, list(node), n=1)
        prefix = ".".join(parts[:-1]) + "." if len(parts) > 1 else ""
        raise ValueError(f"unknown config key {key}" + (f"; did you mean {prefix}{close[0]}?" if close else ""))
    node[leaf] = value


# -- building the parts ------------------------------------------------------------------
@dataclass
class BuiltRun:
    tokenizer: Any
    lm: Any
    train_stream: Any
    val_batches: list


def build_tokenizer(spec: DataSpec):
    from .data import load_tokenizer
    from .fetch import resolve_tokenizer

    return load_tokenizer(resolve_tokenizer(spec.tokenizer))  # a fetchable name / .gguf -> its tokenizer


def build_part(kind: str, factory, spec: Any):
    """`factory(spec)` for a registry part ("process", "schedule"), with an unknown or missing
    key reported as one ValueError naming the part, the key and the valid keys."""
    import inspect

    try:
        return factory(spec)
    except TypeError as err:
        name = spec.get("name") if isinstance(spec, dict) else spec
        registry = _registry(kind)
        cls = registry.get(name)
        if cls is None or not isinstance(spec, dict):
            raise ValueError(f"{kind} {spec!r}: {err}") from None
        valid = [p for p in inspect.signature(cls).parameters if p not in ("self", "args", "kwargs")]
        bad = [k for k in spec if k != "name" and k not in valid]
        what = f"unknown key(s) {', '.join(bad)}" if bad else str(err)
        raise ValueError(f"{kind} {name}: {what}; its keys: {', '.join(valid) or '(none)'}") from None


def _registry(kind: str) -> dict:
    if kind == "process":
        from .processes import PROCESSES

        return PROCESSES
    from .schedules import HYPERSCHEDULES

    return HYPERSCHEDULES


def build_process(spec: dict, tokenizer, mask_id: Optional[int] = None):
    from .processes import process

    spec = dict(spec)
    spec.setdefault("vocab_size", tokenizer.vocab_size)
    if mask_id is not None and spec.get("name") != "uniform":
        spec.setdefault("mask_id", mask_id)
    return build_part("process", process, spec)


def build_model(spec: ModelSpec, proc, tokenizer, length: int):
    """Our transformer, or a Hugging Face causal LM wrapped as a denoiser (plus LoRA)."""
    if spec.kind == "transformer":
        from .models import DiffusionTransformer, TransformerConfig

        if spec.path:
            return DiffusionTransformer.from_pretrained(spec.path)
        from .specs import backbone_defaults

        fields = [f.name for f in dataclasses.fields(TransformerConfig)]
        _reject_unknown(spec.overrides, fields, "model.overrides.")
        kw = backbone_defaults(proc, getattr(tokenizer, "bos_id", None), length)  # sizes, MASK / BOS, eq. 12
        kw.update(spec.overrides)  # an explicit override wins (no "multiple values" TypeError)
        return DiffusionTransformer(TransformerConfig.preset(spec.preset, **kw))
    if spec.kind == "hf":
        from transformers import AutoConfig, AutoModelForCausalLM

        from .models.hf import HFDenoiser

        if spec.hf_config is not None:
            hc = dict(spec.hf_config)
            cfg = AutoConfig.for_model(hc.pop("model_type"), **hc)
            model = AutoModelForCausalLM.from_config(cfg, attn_implementation=spec.attn_implementation)
        elif spec.path:
            from .fetch import load_causal_lm

            # a fetchable name ("smollm2"), a .gguf, an HF folder or a hub id (diffusionlm.fetch)
            model = load_causal_lm(spec.path, attn_implementation=spec.attn_implementation)
        else:
            raise ValueError("model.kind=hf needs model.path (a local directory or hub id) or model.hf_config")
        denoiser = HFDenoiser.from_model(model, mask=spec.mask, tokenizer=getattr(tokenizer, "hf", None))
        if spec.lora:  # after the MASK row is added, so that the adapter carries it (models.lora)
            from .models.lora import apply_lora

            apply_lora(denoiser, **spec.lora)
        return denoiser
    raise ValueError(f"unknown model.kind {spec.kind!r}; known: transformer, hf")


def corpus_documents(data: DataSpec, split: str) -> list:
    """The documents of data.corpus's split: a name of the offline corpora (data.load_corpus), else
    any local file / folder / glob or hf: source through datasets (data.sources, with data.field,
    data.files and data.unit)."""
    from .data import known_names, load_corpus
    from .data.sources import read_documents

    if data.corpus in known_names():
        return load_corpus(data.corpus, split)
    return read_documents(data.corpus, split, field=data.field, files=data.files, unit=data.unit)[0]


def _streams(run: RunConfig, tok: Any, rank: int, world_size: int) -> tuple:
    """data.streaming: the training TokenStream of this rank, and the validation one (or None)."""
    from .data.streaming import TokenStream

    d = run.data
    if d.rule != "wrap":
        raise ValueError("data.streaming packs documents into rows (the wrap rule): data.rule=pad needs streaming=false")
    kw = {"field": d.field, "files": d.files, "unit": d.unit}
    train = TokenStream(d.corpus, tok, d.length, run.train.batch_size, rank=rank, world_size=world_size, **kw)
    val = TokenStream(d.corpus, tok, d.length, run.train.batch_size, split=d.val_split, epochs=1, **kw) if d.val_batches else None
    return train, val


def build(run: RunConfig, rank: int = 0, world_size: int = 1, data: bool = True) -> BuiltRun:
    """The tokenizer, the DiffusionLM and (with `data`) the training stream and validation
    batches of a run; `data=False` skips reading the corpus (sampling, evaluation, the demo)."""
    from .data import BatchStream, TokenBlocks, check_vocab
    from .lm import DiffusionLM
    from .schedules import hyperschedule

    tok = build_tokenizer(run.data)
    # the process needs the MASK id the model uses; HF models decide it when wrapped
    if run.model.kind == "hf":
        model = build_model(run.model, None, tok, run.data.length)
        # the real ids the model takes (MASK, added or virtual, is the id after them)
        check_vocab(tok, model.mask_id if model.mask_id is not None else model.vocab_size)
        proc = build_process(run.process, tok, mask_id=model.mask_id)
    else:
        proc = build_process(run.process, tok)
        model = build_model(run.model, proc, tok, run.data.length)
    check_vocab(tok, proc.vocab_size)
    annealing = None
    if run.model.annealing_steps is not None:
        from .models.hf import AttentionAnnealing

        annealing = AttentionAnnealing(run.model.annealing_steps)
    bos = getattr(tok, "bos_id", None)
    if bos is None:
        bos = getattr(tok, "eos_id", None)
    lm = DiffusionLM(model, proc, build_part("schedule", hyperschedule, run.schedule), layout=run.layout, bos_id=bos,
                     annealing=annealing)
    if run.data.length > (lm.max_positions or run.data.length):
        raise ValueError(f"data.length {run.data.length} exceeds the model's {lm.max_positions} positions")
    if not data:
        return BuiltRun(tok, lm, None, [])
    if run.data.instruct:
        stream, val = _instruction_data(run, tok, rank, world_size)
    else:
        if run.data.streaming:
            stream, vs = _streams(run, tok, rank, world_size)
        else:
            train_blocks = TokenBlocks(corpus_documents(run.data, "train"), tok, run.data.length, rule=run.data.rule)
            stream = BatchStream(train_blocks, run.train.batch_size, seed=run.train.seed, rank=rank, world_size=world_size)
            vs = None
            if run.data.val_batches:
                vb = TokenBlocks(corpus_documents(run.data, run.data.val_split), tok, run.data.length, rule=run.data.rule)
                vs = BatchStream(vb, run.train.batch_size, seed=0, shuffle=False, epochs=1, drop_last=False)
        val = []
        if run.data.val_batches:
            for _ in range(run.data.val_batches):
                try:
                    val.append(next(vs)["input_ids"])
                except StopIteration:
                    break
    return BuiltRun(tok, lm, stream, val)


def load_run(path: "str | Path", data: bool = False, base: Any = None) -> "tuple[RunConfig, BuiltRun]":
    """A run directory written by `diffusionlm train` (or `diffusionlm compare`, one per variant),
    in eval mode: its model/ when training ended (a saved composition, or the bare transformer
    of older runs, rebuilt with run.json), else the newest checkpoint's weights on the model
    run.json builds. FileNotFoundError naming what is missing when there is neither. `base`: a
    LoRA adapter's base elsewhere (see diffusionlm.hub)."""
    run_dir = Path(path)
    cfg_file = run_dir / "run.json"
    if not cfg_file.is_file():
        what = "is a directory" if cfg_file.is_dir() else "is missing"
        raise FileNotFoundError(f"{cfg_file} {what}: give a directory written by `diffusionlm train`")
    try:
        run = RunConfig.from_dict(json.loads(cfg_file.read_text()))
    except json.JSONDecodeError as err:
        raise ValueError(f"{cfg_file} is not valid JSON: {err}") from None
    model_dir = run_dir / "model"
    composition = (model_dir / "config.json").is_file() and '"diffusionlm-composition"' in (model_dir / "config.json").read_text()
    if composition:
        from .hub import SavedComposition

        p = SavedComposition.from_pretrained(model_dir, base=base).payload
        return run, BuiltRun(p.tokenizer, p.lm, None, [])
    if base is not None:
        raise ValueError(f"a LoRA base was given, but {run_dir} holds no saved composition with an adapter")
    final = run.model.kind == "transformer" and model_dir.exists()
    if final:
        run.model.path = str(run_dir / "model")
    from .training.trainer import seed_everything

    seed_everything(run.train.seed)  # a random-initialised base (hf_config) is the one training built
    built = build(run, data=data)
    if not final:
        # no final weights (an HF / LoRA run, or training still under way): the newest checkpoint;
        # never a silently untrained model
        from .training.checkpoint import latest_checkpoint

        ckpt = latest_checkpoint(run_dir)
        if ckpt is None:
            raise FileNotFoundError(
                f"{run_dir} holds no trained weights: neither model/ (written when training ends) nor a "
                f"checkpoint (LATEST): train it first, or give the run directory of a finished run"
            )
        from .training.checkpoint import load_model_weights

        load_model_weights(built.lm.model, ckpt)  # verified; adapters only: checked against their base
    built.lm.model.eval()
    return run, built


def safetensors_errors() -> tuple:
    """What a corrupt or truncated weights file raises: safetensors' own error, and
    diffusionlm.safeio's (a damaged file, or one failing its checksum)."""
    from safetensors import SafetensorError

    from .safeio import CorruptFileError

    return (SafetensorError, CorruptFileError)


def _instruction_data(run: RunConfig, tok, rank: int, world_size: int):
    from .data import InstructionCollator, format_instructions

    path = Path(run.data.instruct)
    if not path.exists():
        raise FileNotFoundError(f"instruction data not found: {path}")
    rows = [json.loads(l) for l in path.read_text().splitlines() if l.strip()]
    fm = format_instructions(tok, rows, max_length=run.data.length, on_long="skip",
                             prompt_field=run.data.prompt_field, response_field=run.data.response_field,
                             all_tokens=run.data.all_tokens)
    collate = InstructionCollator.lad(tok, length=run.data.length)
    return _InstructionStream(fm.examples, collate, run.train.batch_size, run.train.seed, rank, world_size), []


class _InstructionStream:
    """Resumable batches of formatted instruction examples (same contract as BatchStream)."""

    def __init__(self, examples, collate, batch_size, seed, rank=0, world_size=1):
        import torch

        if len(examples) < batch_size * world_size:
            raise ValueError(f"{len(examples)} instruction examples are fewer than one global batch ({batch_size * world_size})")
        self.examples, self.collate, self.B = examples, collate, batch_size
        self.seed, self.rank, self.world = seed, rank, world_size
        self.epoch, self.pos = 0, 0
        self._torch = torch

    def _perm(self):
        g = self._torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return self._torch.randperm(len(self.examples), generator=g)

    def __iter__(self):
        return self

    def __next__(self):
        G = self.B * self.world
        if (self.pos + 1) * G > len(self.examples):
            self.epoch, self.pos = self.epoch + 1, 0
        idx = self._perm()[self.pos * G + self.rank * self.B : self.pos * G + (self.rank + 1) * self.B]
        self.pos += 1
        return self.collate([self.examples[int(i)] for i in idx])

    def state_dict(self):
        return {"epoch": self.epoch, "pos": self.pos}

    def load_state_dict(self, s):
        self.epoch, self.pos = s["epoch"], s["pos"]
